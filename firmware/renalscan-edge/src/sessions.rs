//! `renalscan-edge sessions` and `renalscan-edge export`: the exams in a journal, and the
//! folder that takes them off the cart (`records`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::Config;

/// Where the journal and the session store are: flags, else the config, else the defaults.
#[derive(Args, Clone)]
pub struct Places {
    /// TOML configuration (journal.dir, session.dir).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Journal directory (overrides journal.dir).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Session store (overrides session.dir).
    #[arg(long)]
    pub sessions_dir: Option<PathBuf>,
}

impl Places {
    fn resolve(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cfg = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        Ok((
            self.journal.clone().unwrap_or(cfg.journal.dir),
            self.sessions_dir.clone().unwrap_or(cfg.session.dir),
        ))
    }
}

#[derive(Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub places: Places,
    /// JSON lines on stdout instead of text: one object per session.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub places: Places,
    /// Export this session.
    #[arg(long, conflicts_with_all = ["since", "all"])]
    pub session: Option<String>,
    /// Export the sessions started on or after this UTC date (`YYYY-MM-DD` or
    /// `YYYY-MM-DDTHH:MM`).
    #[arg(long, conflicts_with = "all")]
    pub since: Option<String>,
    /// Export every session in the journal.
    #[arg(long)]
    pub all: bool,
    /// Export folder (a USB stick's mount point or a folder on it).
    #[arg(long)]
    pub out: PathBuf,
    /// Leave out patient identifier, accession number and operator.
    #[arg(long)]
    pub deidentify: bool,
}

fn read(journal: &Path) -> anyhow::Result<Vec<records::Session>> {
    anyhow::ensure!(
        journal.is_dir(),
        "no journal at {}: pass --journal or --config",
        journal.display()
    );
    records::read(journal).with_context(|| format!("cannot read the journal {}", journal.display()))
}

pub fn cmd_sessions(a: SessionsArgs) -> anyhow::Result<ExitCode> {
    let (journal, dir) = a.places.resolve()?;
    let sessions = read(&journal)?;
    let store = records::SessionStore::at(&dir);
    if !a.json {
        println!(
            "{:<24} {:<12} {:<24} {:>9} {:>5}  export",
            "session", "state", "started", "decisions", "marks"
        );
    }
    for s in &sessions {
        let exports = store.exports(&s.id).unwrap_or_default();
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "session": s.id,
                    "state": s.state,
                    "started_utc": records::time::utc(s.started_ms),
                    "ended_utc": s.ended_ms.map(records::time::utc),
                    "decisions": s.decisions.len(),
                    "marks": s.marks.len(),
                    "abnormal": s.decisions.iter().filter(|(_, d)| d.abnormal).count(),
                    "exports": exports,
                })
            );
        } else {
            let state = format!("{:?}", s.state).to_lowercase();
            let export = exports.last().map_or("not exported".to_string(), |e| {
                format!(
                    "exported {} to {}{}",
                    records::time::utc(e.unix_ms),
                    e.target,
                    if e.deidentified {
                        " (de-identified)"
                    } else {
                        ""
                    }
                )
            });
            println!(
                "{:<24} {:<12} {:<24} {:>9} {:>5}  {export}",
                s.id,
                state,
                records::time::utc(s.started_ms),
                s.decisions.len(),
                s.marks.len()
            );
        }
    }
    if !a.json && sessions.is_empty() {
        println!("(no session in {})", journal.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let (journal, dir) = a.places.resolve()?;
    let sessions = read(&journal)?;
    let chosen: Vec<&records::Session> = if let Some(id) = &a.session {
        let s = sessions.iter().find(|s| &s.id == id).with_context(|| {
            format!(
                "no session {id} in {} (renalscan-edge sessions lists them)",
                journal.display()
            )
        })?;
        vec![s]
    } else if let Some(since) = &a.since {
        let t = records::time::parse(since).with_context(|| {
            format!("--since {since:?}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)")
        })?;
        sessions.iter().filter(|s| s.started_ms >= t).collect()
    } else if a.all {
        sessions.iter().collect()
    } else {
        anyhow::bail!("say which sessions: --session ID, --since DATE or --all");
    };
    let open: Vec<&str> = chosen
        .iter()
        .filter(|s| s.state == records::SessionState::Open)
        .map(|s| s.id.as_str())
        .collect();
    if !open.is_empty() {
        log::warn!("exporting sessions still open (their later decisions are not in it): {open:?}");
    }
    let opts = records::ExportOptions {
        deidentify: a.deidentify,
        runtime: format!("renalscan-edge {}", env!("CARGO_PKG_VERSION")),
    };
    let store = records::SessionStore::at(&dir);
    let summary = records::export(&chosen, &store, &a.out, &opts)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}
