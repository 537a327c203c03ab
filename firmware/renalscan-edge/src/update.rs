//! `renalscan-edge update`: signed A/B updates of the runtime and the bundle on the cart
//! (see the `updater` crate for the slots and why every step is safe to interrupt).
//!
//! `install` verifies the artifact in full, stages it into the free slot, checks the staged
//! slot (a bundle: its signed reference frames through this cart's form; a runtime: the new
//! binary runs and passes the selftest on the current bundle), records it as pending, switches
//! `current` and restarts the service. `guard` runs before every start of the service (as
//! root, from the `good` slot: `ExecStartPre=-+`), `commit` from a timer; `rollback` and
//! `status` are for the integrator.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};
use updater::{Installed, Layout, Set, Step, Verdict};

use crate::config::Config;

/// Name of the environment variable that stops an install after a step (fault-injection
/// tests: the test then kills the process with SIGKILL, as a power cut would).
pub const FAULT_PAUSE_ENV: &str = "RENALSCAN_FAULT_PAUSE_AT";

/// `update` subcommands.
#[derive(Subcommand)]
pub enum UpdateCmd {
    /// Verify a signed update artifact (.rsu) in full, install it into the free slot, check
    /// it, switch to it (pending its health check) and restart the service.
    Install(InstallArgs),
    /// Before every start of the service (as root, from the good slot): clean up after an
    /// interrupted update, commit a healthy pending slot, count a start of an unproven one
    /// and roll back after --max-tries.
    Guard(GuardArgs),
    /// Make the pending slot good once the runtime started from it has proven healthy.
    Commit(RootArgs),
    /// Back to the good slot (a pending update), or to the other slot with a recorded reason.
    Rollback(RollbackArgs),
    /// Slots, releases, the pending update, the bundle floor and the recent update log.
    Status(StatusArgs),
}

/// The cart's root.
#[derive(Args, Clone)]
pub struct RootArgs {
    /// Root of the cart's file system (a staging tree or a test folder instead of /).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

/// Arguments of `update install`.
#[derive(Args)]
pub struct InstallArgs {
    /// The update artifact (`renalscan release runtime|bundle`).
    pub artifact: PathBuf,
    #[command(flatten)]
    pub root: RootArgs,
    /// Trusted keys (default: <root>/etc/renalscan/keys).
    #[arg(long)]
    pub trusted_keys: Option<PathBuf>,
    /// The cart's configuration, for the checks (default: <root>/etc/renalscan/config.toml
    /// when it exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Install an older release on purpose; the reason is recorded in the update log (and,
    /// for a bundle, in the floor file and every decision it makes).
    #[arg(long, value_name = "REASON")]
    pub allow_downgrade: Option<String>,
    /// Largest payload accepted, bytes (with two slots a set never takes more than twice
    /// this on disk).
    #[arg(long, default_value_t = 1 << 30, value_parser = argrange::u64_in(1 << 20, 1 << 40))]
    pub max_bytes: u64,
    /// Switch without restarting the service (image builds, tests).
    #[arg(long)]
    pub no_restart: bool,
    /// The systemctl to restart the service with.
    #[arg(long, default_value = "systemctl")]
    pub systemctl: String,
}

/// Arguments of `update guard`.
#[derive(Args)]
pub struct GuardArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// Starts an unproven slot gets before the guard goes back to the good one.
    #[arg(long, default_value_t = 3, value_parser = argrange::u32_in(1, 100))]
    pub max_tries: u32,
}

/// Which set.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SetArg {
    /// The runtime.
    Runtime,
    /// The model bundle.
    Bundle,
}

/// Arguments of `update rollback`.
#[derive(Args)]
pub struct RollbackArgs {
    /// runtime or bundle.
    #[arg(value_enum)]
    pub set: SetArg,
    #[command(flatten)]
    pub root: RootArgs,
    /// Why (recorded).
    #[arg(long)]
    pub reason: String,
}

/// Arguments of `update status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs an `update` subcommand.
pub fn cmd(c: UpdateCmd) -> anyhow::Result<ExitCode> {
    match c {
        UpdateCmd::Install(a) => install(a),
        UpdateCmd::Guard(a) => {
            let layout = Layout::new(&a.root.root);
            let v = updater::guard(&layout, a.max_tries)?;
            log::info!("update guard: {}", verdict_text(&v));
            if matches!(v, Verdict::Committed(Set::Runtime, _)) {
                // Inside a start job: no daemon-reload here; the new units apply from the next.
                install_units(&layout, false)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        UpdateCmd::Commit(a) => {
            let layout = Layout::new(&a.root);
            let v = updater::commit(&layout)?;
            println!("{}", verdict_text(&v));
            if matches!(v, Verdict::Committed(Set::Runtime, _)) {
                install_units(&layout, true)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        UpdateCmd::Rollback(a) => {
            let set = match a.set {
                SetArg::Runtime => Set::Runtime,
                SetArg::Bundle => Set::Bundle,
            };
            let v = updater::rollback(&Layout::new(&a.root.root), set, &a.reason)?;
            println!("{}", verdict_text(&v));
            Ok(ExitCode::SUCCESS)
        }
        UpdateCmd::Status(a) => status(&a),
    }
}

/// Once a runtime slot has proven healthy, its systemd units and udev rule become the
/// cart's (until then the new runtime runs under the units that proved themselves). Site
/// drop-ins and the site udev rule are never touched.
fn install_units(layout: &Layout, reload: bool) -> anyhow::Result<()> {
    let from = layout.link(Set::Runtime, "good").join("share/deploy");
    let units = layout.root().join("usr/local/lib/systemd/system");
    let rules = layout.root().join("etc/udev/rules.d");
    let mut changed = false;
    for (name, dir) in [
        ("renalscan-edge.service", &units),
        ("renalscan-update-commit.service", &units),
        ("renalscan-update-commit.timer", &units),
        ("99-renalscan-probe.rules", &rules),
    ] {
        let Ok(bytes) = std::fs::read(from.join(name)) else {
            continue;
        };
        let dest = dir.join(name);
        if std::fs::read(&dest).is_ok_and(|old| old == bytes) {
            continue;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        bundle::policy::write_durably(&dest, &bytes)?;
        log::info!("installed {} from the committed runtime", dest.display());
        changed = true;
    }
    if changed && reload && layout.root() == Path::new("/") {
        for (prog, args) in [
            ("systemctl", &["daemon-reload"][..]),
            ("udevadm", &["control", "--reload"][..]),
        ] {
            if let Err(e) = Command::new(prog).args(args).status() {
                log::warn!("{prog} {}: {e}", args.join(" "));
            }
        }
    }
    Ok(())
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Idle => "no update pending".into(),
        Verdict::Waiting(n) => format!("update pending its health check ({n} start(s) so far)"),
        Verdict::Committed(set, slot) => {
            format!(
                "{} slot {} proved healthy: it is now good",
                set.as_str(),
                slot.as_str()
            )
        }
        Verdict::RolledBack(set, slot) => format!(
            "{} slot {} did not prove healthy: rolled back to the good slot",
            set.as_str(),
            slot.as_str()
        ),
        Verdict::Interrupted(set) => {
            format!(
                "the {} update stopped before its switch: staying on the good slot",
                set.as_str()
            )
        }
    }
}

/// `<arch>-<os>` of this build, as runtime artifacts name their target.
pub fn this_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

fn pause_if_asked(step: Step) {
    if std::env::var(FAULT_PAUSE_ENV).is_ok_and(|s| s == step.as_str()) {
        eprintln!("fault injection: paused after step {}", step.as_str());
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

fn install(a: InstallArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&a.root.root);
    let keys_dir = a.trusted_keys.clone().unwrap_or_else(|| layout.keys_dir());
    let keys = bundle::TrustedKeys::from_path(&keys_dir)
        .with_context(|| format!("cannot load the cart's trusted keys {}", keys_dir.display()))?;
    let config_path = a.config.clone().or_else(|| {
        let p = a.root.root.join("etc/renalscan/config.toml");
        p.is_file().then_some(p)
    });
    let cfg = match &config_path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let mut precheck = |set: Set, staged: &Path| -> Result<(), String> {
        match set {
            Set::Bundle => check_bundle(staged, &keys_dir, &cfg).map_err(|e| format!("{e:#}")),
            Set::Runtime => check_runtime(staged, &layout, &keys_dir, config_path.as_deref())
                .map_err(|e| format!("{e:#}")),
        }
    };
    let mut on_step = |s: Step| {
        log::info!("update: step {} done", s.as_str());
        pause_if_asked(s);
    };
    let done = updater::install(
        &layout,
        &a.artifact,
        &keys,
        updater::InstallOptions {
            target: this_target(),
            runtime_version: crate::trace::RUNTIME_VERSION.into(),
            allow_downgrade: a.allow_downgrade.clone(),
            max_payload_bytes: a.max_bytes,
            free_bytes: &records::export::free_bytes,
            precheck: &mut precheck,
            on_step: &mut on_step,
        },
    )?;
    let set = match &done {
        Installed::AlreadyInstalled { set, release } => {
            println!(
                "{} {release} is already installed and good: nothing to do",
                set.as_str()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Installed::First { set, release } => {
            println!(
                "{} {release} installed (first install: good at once)",
                set.as_str()
            );
            *set
        }
        Installed::Switched(p) => {
            println!(
                "{} {} installed in slot {}; pending its health check (the previous slot stays \
                 good until then)",
                p.set.as_str(),
                p.release,
                p.slot.as_str()
            );
            p.set
        }
    };
    if a.no_restart {
        return Ok(ExitCode::SUCCESS);
    }
    let restarted = Command::new(&a.systemctl)
        .args(["restart", "renalscan-edge.service"])
        .status()
        .with_context(|| format!("cannot run {}", a.systemctl))?;
    if restarted.success() {
        println!("service restarted; the update is committed once the runtime proves healthy");
        return Ok(ExitCode::SUCCESS);
    }
    if matches!(done, Installed::Switched(_)) {
        eprintln!(
            "the service did not start on the new {}: rolling back now",
            set.as_str()
        );
        updater::rollback(&layout, set, "the service did not start after the switch")?;
        let _ = Command::new(&a.systemctl)
            .args(["restart", "renalscan-edge.service"])
            .status();
    }
    Ok(ExitCode::FAILURE)
}

/// The form cache the install check fills: the cart's `model.form_cache` (real paths, as the
/// runtime reading the same configuration sees them), when its folder exists. That folder is
/// the service's (its journal): never created here, as root, in its place.
fn install_form_cache(cfg: &Config) -> Option<&Path> {
    cfg.model.form_cache.as_deref().filter(|p| {
        let there = p.parent().is_some_and(Path::is_dir);
        if !there {
            log::warn!(
                "model.form_cache {}: its folder does not exist; the service's first start \
                 will time the forms instead",
                p.display()
            );
        }
        there
    })
}

/// A staged bundle: opened as the runtime will, its signed reference frames answered
/// through this cart's form. Opening it with the cart's form cache makes `auto` time its
/// candidate forms here, once per update, and remember the fastest (keyed by the model's
/// pinned sha256, not the slot): the selftest and every start of the service after the switch
/// then build only that form.
fn check_bundle(staged: &Path, keys: &Path, cfg: &Config) -> anyhow::Result<()> {
    let cache = install_form_cache(cfg);
    let mut c = crate::infer::Classifier::open(staged, Some(keys), cfg.model.form, cache)?;
    let cases = crate::selftest::check_references(&mut c);
    if let Some(bad) = cases.iter().find(|r| !r.ok) {
        anyhow::bail!(
            "selftest reference {} answered {:?} p(abnormal) {:?}, signed {} {:.3} ± {:.3}{}",
            bad.file,
            bad.class,
            bad.p_abnormal,
            bad.expected_class,
            bad.expected_p_abnormal,
            bad.tolerance,
            bad.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    log::info!(
        "staged bundle: {} selftest reference(s) answered as signed",
        cases.len()
    );
    Ok(())
}

/// A staged runtime: it runs on this CPU, and passes the selftest on the current bundle.
fn check_runtime(
    staged: &Path,
    layout: &Layout,
    keys: &Path,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let bin = staged.join("bin/renalscan-edge");
    let out = Command::new(&bin)
        .arg("version")
        .output()
        .with_context(|| format!("{} does not run on this cart", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} version failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let bundle = layout.link(Set::Bundle, "current");
    if bundle.join(bundle::MANIFEST_FILE).is_file() {
        let mut cmd = Command::new(&bin);
        cmd.arg("selftest")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--trusted-keys")
            .arg(keys);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "the new runtime's selftest on the current bundle failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn status(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&a.root.root);
    let state = updater::State::load(&layout)?;
    let set_json = |set: Set| {
        let one = |name: &str| {
            updater::slot_release(&layout, set, name).map(|(slot, r)| {
                serde_json::json!({"slot": slot.as_str(), "release": r.map(|r| r.to_string())})
            })
        };
        serde_json::json!({"current": one("current"), "good": one("good")})
    };
    let floor = bundle::policy::Floor::load(&layout.floor_file())
        .ok()
        .flatten();
    let log: Vec<_> = updater::read_log(&layout)
        .into_iter()
        .rev()
        .take(10)
        .collect();
    let out = serde_json::json!({
        "runtime": set_json(Set::Runtime),
        "bundle": set_json(Set::Bundle),
        "pending": state.pending,
        "bundle_floor": floor.as_ref().and_then(|f| f.release().map(|r| r.to_string())),
        "downgrade_overrides": floor.as_ref().map_or(0, |f| f.overrides.len()),
        "recent": log,
    });
    if a.json {
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    for set in ["runtime", "bundle"] {
        let s = &out[set];
        let show = |v: &serde_json::Value| match v.is_null() {
            true => "none".to_string(),
            false => format!(
                "slot {} {}",
                v["slot"].as_str().unwrap_or("?"),
                v["release"].as_str().unwrap_or("(unknown release)")
            ),
        };
        println!(
            "{set:8} current {} · good {}",
            show(&s["current"]),
            show(&s["good"])
        );
    }
    match &state.pending {
        Some(p) => println!(
            "pending  {} {} in slot {} since {}, {} start(s){}",
            p.set.as_str(),
            p.release,
            p.slot.as_str(),
            p.since,
            p.tries,
            p.downgrade
                .as_deref()
                .map(|d| format!(", downgrade: {d}"))
                .unwrap_or_default()
        ),
        None => println!("pending  none"),
    }
    if let Some(f) = &floor {
        println!(
            "floor    bundle {} ({} recorded downgrade(s))",
            f.release().map(|r| r.to_string()).unwrap_or_default(),
            f.overrides.len()
        );
    }
    for e in log.iter().rev() {
        println!("log      {} {:11} {}", e.at, e.event, e.detail);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_check_fills_the_form_cache_only_where_the_service_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        assert_eq!(install_form_cache(&cfg), None);
        let cache = tmp.path().join("journal/model-form.toml");
        cfg.model.form_cache = Some(cache.clone());
        // The journal folder is the service's: not made here.
        assert_eq!(install_form_cache(&cfg), None);
        assert!(!tmp.path().join("journal").exists());
        std::fs::create_dir_all(tmp.path().join("journal")).unwrap();
        assert_eq!(install_form_cache(&cfg), Some(cache.as_path()));
    }
}
