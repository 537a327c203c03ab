//! `renalscan-edge diagnostics --out FILE`: one `.tar.gz` for a support call, free of
//! patient data. It holds what support asks first (versions, the effective configuration,
//! the latest status, counts of exams and of what retention holds, free disk, the recent
//! system log) and never what identifies a child: no session context, key frames, snapshots,
//! DICOM objects or journal records. The runtime keeps patient data out of its log, so the
//! log lines go in as they are.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Args;

use crate::cli::{apply_model, load_config, ModelArgs};
use crate::config::Config;

/// Arguments of `diagnostics`.
#[derive(Args)]
pub struct DiagnosticsArgs {
    /// TOML configuration (the cart's: `/etc/renalscan/config.toml`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The archive to write (`.tar.gz`); replaced if it exists.
    #[arg(long)]
    pub out: PathBuf,
    /// Lines of the service's system log to include (`journalctl -u renalscan-edge`).
    #[arg(value_parser = argrange::usize_in(0, 100_000), long, default_value_t = 2000)]
    pub log_lines: usize,
}

/// Exams in the journal, by state, and how many retention holds: counts only.
fn exams(cfg: &Config) -> serde_json::Value {
    if !cfg.journal.enabled {
        return serde_json::json!({"journal": "disabled"});
    }
    match records::read(&cfg.journal.dir) {
        Ok(sessions) => {
            let mut by_state = std::collections::BTreeMap::<String, usize>::new();
            for s in &sessions {
                *by_state
                    .entry(format!("{:?}", s.state).to_lowercase())
                    .or_default() += 1;
            }
            let store = records::SessionStore::at(&cfg.session.dir);
            let cutoff = crate::events::unix_ms()
                .saturating_sub(u64::from(cfg.session.retention_days) * 86_400_000);
            let held = if cfg.session.retention_days > 0 {
                records::held_past_retention(&sessions, &store, cutoff).len()
            } else {
                0
            };
            serde_json::json!({
                "sessions": sessions.len(),
                "by_state": by_state,
                "decisions": sessions.iter().map(|s| s.decisions.len()).sum::<usize>(),
                "held_past_retention": held,
            })
        }
        Err(e) => serde_json::json!({"error": format!("{e}")}),
    }
}

/// Free bytes where the runtime writes.
fn disk(cfg: &Config) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    for (name, dir) in [
        ("journal", &cfg.journal.dir),
        ("sessions", &cfg.session.dir),
        ("snapshots", &cfg.snapshot.dir),
        ("outbox", &cfg.pacs.outbox),
    ] {
        v.insert(
            name.into(),
            serde_json::json!({
                "path": dir.display().to_string(),
                "free_bytes": records::export::free_bytes(dir),
            }),
        );
    }
    serde_json::Value::Object(v)
}

/// The service's recent log, or a line saying why there is none.
fn system_log(lines: usize) -> String {
    if lines == 0 {
        return "(not asked for: --log-lines 0)\n".into();
    }
    let out = Command::new("journalctl")
        .args([
            "-u",
            "renalscan-edge",
            "--no-pager",
            "-o",
            "short-iso",
            "-n",
        ])
        .arg(lines.to_string())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => format!(
            "(journalctl failed: {})\n",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("(no journalctl here: {e})\n"),
    }
}

fn add(
    tar: &mut tar::Builder<impl std::io::Write>,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(crate::events::unix_ms() / 1000);
    h.set_cksum();
    tar.append_data(&mut h, name, bytes)
        .with_context(|| format!("adding {name}"))
}

const README: &str = "renalscan-edge diagnostics\n\n\
version.json  runtime, git revision, CPU features, the bundle's identity and threshold\n\
config.json   the effective configuration (file, defaults, flags)\n\
status.json   the latest status the runtime wrote (output.status_file), if any\n\
exams.json    exams by state, decisions, exams held past retention: counts only\n\
disk.json     free space where the runtime writes\n\
log.txt       the service's recent system log\n\n\
No patient data: no session context, key frames, snapshots, DICOM objects or journal\n\
records are included.\n";

/// Writes the archive.
pub fn cmd(a: DiagnosticsArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(a.config.as_deref())?;
    apply_model(&mut cfg, &a.model);
    let version = crate::version::collect(&cfg, a.config.as_deref())
        .unwrap_or_else(|e| serde_json::json!({"error": format!("{e:#}")}));
    let status = cfg
        .output
        .status_file
        .as_deref()
        .map(|p| {
            std::fs::read(p).unwrap_or_else(|e| {
                format!("{{\"error\": {:?}}}\n", format!("{}: {e}", p.display())).into_bytes()
            })
        })
        .unwrap_or_else(|| b"{\"status_file\": null}\n".to_vec());
    let tmp = tmp_name(&a.out);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    add(&mut tar, "README.txt", README.as_bytes())?;
    add(&mut tar, "version.json", &pretty(&version))?;
    add(&mut tar, "config.json", &serde_json::to_vec_pretty(&cfg)?)?;
    add(&mut tar, "status.json", &status)?;
    add(&mut tar, "exams.json", &pretty(&exams(&cfg)))?;
    add(&mut tar, "disk.json", &pretty(&disk(&cfg)))?;
    add(&mut tar, "log.txt", system_log(a.log_lines).as_bytes())?;
    let mut gz = tar.into_inner().context("finishing the archive")?;
    gz.flush()?;
    let file = gz.finish().context("finishing the archive")?;
    file.sync_all()?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
    println!(
        "diagnostics written to {} (no patient data)",
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn tmp_name(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}
