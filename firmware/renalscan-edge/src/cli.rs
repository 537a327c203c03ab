//! Command line: `run`, `selftest`, `probes`, `bench`, `check`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Mode, ModelForm, Parallelism, SourceKind};
use crate::infer::Classifier;
use crate::runtime::{self, RunOptions};
use crate::sink::build;
use crate::stats::{peak_rss_kib, rss_kib, Stage};

/// renalscan edge runtime: classifies probe frames on the cart and records every decision.
/// A screening aid, not a diagnosis.
#[derive(Parser)]
#[command(name = "renalscan-edge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Screen: source -> gate -> model -> aggregation -> sinks (journal, snapshots, stdout,
    /// cart link).
    Run(Box<RunArgs>),
    /// Verify the bundle and time every stage on a built-in frame.
    Selftest(SelftestArgs),
    /// List V4L2 video devices and the formats they offer.
    Probes(ProbesArgs),
    /// Replay frames as fast as the pipeline takes them; report per-stage latency, the
    /// overhead beyond inference and RSS over the run.
    Bench(BenchArgs),
    /// What the device makes of files (images, DICOM, cines), frame by frame: gated and why
    /// (blank, no scan area, no anatomy, no kidney) or the single-frame answer.
    Check(CheckArgs),
    /// What the operator view costs screening: runs with and without it (and N viewers),
    /// alternating; inference rate, RSS, what the viewers received.
    BenchView(crate::benchview::BenchViewArgs),
    /// The exams in a journal: state, decisions, marks, where they were exported.
    Sessions(crate::sessions::SessionsArgs),
    /// Exams to a folder that leaves the cart: report.pdf, results.csv, session.json, key
    /// frames and SHA256SUMS (atomic, idempotent).
    Export(crate::sessions::ExportArgs),
    /// The hospital PACS: `pacs echo` (C-ECHO with our AE titles).
    #[command(subcommand)]
    Pacs(crate::pacscmd::PacsCmd),
    /// The PACS outbox: list, drain, retry quarantined objects, purge.
    #[command(subcommand)]
    Outbox(crate::pacscmd::OutboxCmd),
    /// What would run: runtime version and git revision, the bundle's identity and signer,
    /// the configuration's hash and the operating threshold with its source.
    Version(crate::version::VersionArgs),
    /// One .tar.gz for a support call, free of patient data: versions, the effective
    /// configuration, the latest status, exam counts, free disk, the recent system log.
    Diagnostics(crate::diagnostics::DiagnosticsArgs),
    /// Signed A/B updates of the runtime and the bundle: install, guard, commit, rollback,
    /// status.
    #[command(subcommand)]
    Update(crate::update::UpdateCmd),
    /// The signed trust list: install a newer one (key rotation, revocation), show it.
    #[command(subcommand)]
    Trust(crate::trust::TrustCmd),
}

/// Model bundle arguments shared by the subcommands.
#[derive(Args, Clone, Default)]
pub struct ModelArgs {
    /// Model bundle directory (overrides model.bundle).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Trusted public key file or directory (overrides model.trusted_keys).
    #[arg(long, alias = "pubkey")]
    pub trusted_keys: Option<PathBuf>,
    /// Integer graph, float graph, or the loader's choice (overrides model.form).
    #[arg(long, value_enum)]
    pub form: Option<ModelForm>,
    /// Cores given to inference (overrides model.threads; default: the performance cores).
    #[arg(long, value_parser = argrange::usize_in(1, crate::config::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Inference workers on successive frames, or every core on each inference (overrides
    /// model.parallelism).
    #[arg(long, value_enum)]
    pub parallelism: Option<Parallelism>,
    /// Inference workers with `frames` (overrides model.workers; default: at most 2).
    #[arg(long, value_parser = argrange::usize_in(1, crate::config::MAX_THREADS))]
    pub workers: Option<usize>,
}

/// Source arguments shared by `run` and `bench`.
#[derive(Args, Clone, Default)]
pub struct SourceArgs {
    /// Replay a DICOM cine, an image, or a folder of images.
    #[arg(long, conflicts_with_all = ["phantom", "v4l"])]
    pub replay: Option<PathBuf>,
    /// Use the built-in phantom probe sweep.
    #[arg(long, conflicts_with = "v4l")]
    pub phantom: bool,
    /// Capture from this V4L2 device (`auto` = first usable).
    #[arg(long)]
    pub v4l: Option<String>,
    /// Frames per second of replay or phantom (0 = as fast as the pipeline takes them).
    #[arg(value_parser = argrange::f32_in(0.0, 240.0), long)]
    pub fps: Option<f32>,
    /// Loop the replay.
    #[arg(long = "loop")]
    pub looped: bool,
    /// Phantom seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Phantom patient class.
    #[arg(long, ignore_case = true, value_parser = clap::builder::PossibleValuesParser::new(contract::LABELS))]
    pub class: Option<String>,
    /// What the phantom probe sweeps over: a kidney, or a view without one (the bundle's
    /// view gate refuses those).
    #[arg(long, ignore_case = true, value_parser = phantom_views())]
    pub view: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// TOML configuration (see config.example.toml); defaults apply without one.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// continuous or freeze (classify-on-freeze).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Journal directory (overrides journal.dir and enables the journal).
    #[arg(long, conflicts_with = "no_journal")]
    pub journal: Option<PathBuf>,
    /// Run without a journal.
    #[arg(long)]
    pub no_journal: bool,
    /// Write snapshots of decisive frames into this directory (enables snapshots).
    #[arg(long)]
    pub snapshots: Option<PathBuf>,
    /// Serial port of the cart controller (enables the cart link).
    #[arg(long)]
    pub cart: Option<String>,
    /// With a cart link: wait for its StartScreening instead of screening at once.
    #[arg(long)]
    pub wait_for_cart: bool,
    /// Stop after this many frames.
    #[arg(value_parser = argrange::u64_in(1, 1_000_000_000_000), long)]
    pub max_frames: Option<u64>,
    /// Inference on every Nth usable frame only.
    #[arg(value_parser = argrange::u32_in(1, 1000), long)]
    pub infer_every: Option<u32>,
    /// Status period in seconds.
    #[arg(value_parser = argrange::f32_in(0.01, 3600.0), long)]
    pub status_every: Option<f32>,
    /// Serve the operator view at this address (enables `[ui]`; 127.0.0.1:8080 is the
    /// cart's own screen; any other address needs ui.tls_cert and ui.tls_key).
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<std::net::SocketAddr>,
    /// Send ended exams to this PACS, `AET@HOST:PORT` (enables `[pacs]`, overrides its
    /// address).
    #[arg(long, value_name = "AET@HOST:PORT")]
    pub pacs: Option<String>,
    /// Open an exam session at start and end it when the run ends.
    #[arg(long)]
    pub session: bool,
    /// The session's patient identifier (kept in the session store only; needs --session).
    #[arg(long, requires = "session")]
    pub patient_id: Option<String>,
    /// The session's accession number.
    #[arg(long, requires = "session")]
    pub accession: Option<String>,
    /// Who scans.
    #[arg(long, requires = "session")]
    pub operator: Option<String>,
    /// Which kidney: left or right.
    #[arg(long, requires = "session", value_parser = ["left", "right"])]
    pub side: Option<String>,
    /// Session store (overrides session.dir).
    #[arg(long)]
    pub sessions_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct SelftestArgs {
    /// TOML configuration; its model section is used unless overridden.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Timed runs of the built-in frame.
    #[arg(value_parser = argrange::usize_in(1, 100_000), long, default_value_t = 5)]
    pub runs: usize,
    /// JSON lines on stdout instead of text: one object for the whole self-test.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// TOML configuration; its model section is used unless overridden.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Files, or folders of them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Every Nth frame of a cine.
    #[arg(value_parser = argrange::u32_in(1, 100_000), long, default_value_t = 1)]
    pub every: u32,
    /// JSON lines on stdout instead of text: one object per frame.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ProbesArgs {
    /// JSON lines on stdout instead of text: one object per device.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Frames to process.
    #[arg(value_parser = argrange::u64_in(1, 1_000_000_000), long, default_value_t = 1000)]
    pub frames: u64,
    /// Inference on every Nth usable frame only (long soak runs with a big model).
    #[arg(value_parser = argrange::u32_in(1, 1000), long, default_value_t = 1)]
    pub infer_every: u32,
    /// Journal directory for the run (default: a temporary one, removed after).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Frames before the steady-state RSS reference is taken.
    #[arg(value_parser = argrange::u64_in(0, 1_000_000_000), long, default_value_t = 200)]
    pub warmup: u64,
    /// One JSON object on one line (for scripts comparing runs) instead of indented JSON.
    #[arg(long)]
    pub json: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => cmd_run(*a),
        Cmd::Selftest(a) => cmd_selftest(a),
        Cmd::Probes(a) => cmd_probes(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::BenchView(a) => crate::benchview::cmd(a),
        Cmd::Sessions(a) => crate::sessions::cmd_sessions(a),
        Cmd::Export(a) => crate::sessions::cmd_export(a),
        Cmd::Pacs(c) => crate::pacscmd::cmd_pacs(c),
        Cmd::Outbox(c) => crate::pacscmd::cmd_outbox(c),
        Cmd::Check(a) => cmd_check(a),
        Cmd::Version(a) => crate::version::cmd(a),
        Cmd::Diagnostics(a) => crate::diagnostics::cmd(a),
        Cmd::Update(c) => crate::update::cmd(c),
        Cmd::Trust(c) => crate::trust::cmd(c),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("renalscan-edge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

pub(crate) fn apply_model(cfg: &mut Config, m: &ModelArgs) {
    if let Some(b) = &m.bundle {
        cfg.model.bundle = Some(b.clone());
    }
    if let Some(k) = &m.trusted_keys {
        cfg.model.trusted_keys = Some(k.clone());
    }
    if let Some(f) = m.form {
        cfg.model.form = f;
    }
    if let Some(t) = m.threads {
        cfg.model.threads = Some(t);
    }
    if let Some(p) = m.parallelism {
        cfg.model.parallelism = p;
    }
    if let Some(w) = m.workers {
        cfg.model.workers = Some(w);
    }
}

/// Applies the source flags over the configuration. Flags of one source kind are refused
/// when the effective source (flag or config) is another: they would silently do nothing.
fn apply_source(cfg: &mut Config, s: &SourceArgs) -> anyhow::Result<()> {
    if let Some(p) = &s.replay {
        cfg.source.kind = SourceKind::Replay;
        cfg.source.replay.path = Some(p.clone());
    }
    if s.phantom {
        cfg.source.kind = SourceKind::Phantom;
    }
    if let Some(d) = &s.v4l {
        cfg.source.kind = SourceKind::V4l;
        cfg.source.v4l.device = d.clone();
    }
    if let Some(f) = s.fps {
        cfg.source.replay.fps = f;
        cfg.source.phantom.fps = f;
        cfg.source.v4l.fps = f.max(0.0).round() as u32;
    }
    if s.looped {
        cfg.source.replay.looped = true;
    }
    if let Some(seed) = s.seed {
        cfg.source.phantom.seed = seed;
    }
    if let Some(c) = &s.class {
        cfg.source.phantom.class = c.clone();
    }
    if let Some(v) = &s.view {
        cfg.source.phantom.view = v.clone();
    }
    let kind = cfg.source.kind;
    let phantom_only = [
        ("--seed", s.seed.is_some()),
        ("--class", s.class.is_some()),
        ("--view", s.view.is_some()),
    ];
    if let Some((flag, _)) = phantom_only.iter().find(|(_, given)| *given) {
        if kind != SourceKind::Phantom {
            anyhow::bail!(
                "{flag} applies to the phantom source, but the source is {kind:?}: add \
                 --phantom (or source.kind = \"phantom\" in the config)"
            );
        }
    }
    if s.looped && kind != SourceKind::Replay {
        anyhow::bail!(
            "--loop applies to a replay, but the source is {kind:?}: add --replay PATH (or \
             source.kind = \"replay\" in the config)"
        );
    }
    Ok(())
}

/// Loads and verifies the bundle once; refuses to start with a message saying why.
pub fn open_model(cfg: &Config) -> anyhow::Result<Classifier> {
    let bundle = cfg
        .model
        .bundle
        .as_ref()
        .context("no model bundle: set model.bundle in the config or pass --bundle")?;
    let mut c = Classifier::open_admitted(
        bundle,
        cfg.model.trusted_keys.as_deref(),
        cfg.model.floor_file.as_deref(),
        cfg.model.form,
        cfg.model.form_cache.as_deref(),
    )
    .with_context(|| {
        format!(
            "refusing to start: bundle {} is not usable",
            bundle.display()
        )
    })?;
    // With several workers each brings its own pool (`Pipeline::start_workers`); the model's
    // own threads serve one inference at a time (one worker, `ops`, selftest, check).
    let (workers, threads) = cfg.model.layout();
    c.set_intra_op_threads(if workers > 1 { 1 } else { threads })?;
    Ok(c)
}

fn signal_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone())
            .context("cannot install the signal handler")?;
    }
    Ok(term)
}

fn cmd_run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(a.config.as_deref())?;
    apply_model(&mut cfg, &a.model);
    apply_source(&mut cfg, &a.source)?;
    if let Some(m) = a.mode {
        cfg.pipeline.mode = m;
    }
    if let Some(j) = &a.journal {
        cfg.journal.enabled = true;
        cfg.journal.dir = j.clone();
    }
    if a.no_journal {
        cfg.journal.enabled = false;
    }
    if let Some(d) = &a.snapshots {
        cfg.snapshot.enabled = true;
        cfg.snapshot.dir = d.clone();
    }
    if let Some(p) = &a.cart {
        cfg.cartlink.enabled = true;
        cfg.cartlink.port = p.clone();
    }
    if a.wait_for_cart {
        cfg.pipeline.autostart = false;
    }
    if let Some(n) = a.max_frames {
        cfg.pipeline.max_frames = n;
    }
    if let Some(n) = a.infer_every {
        cfg.pipeline.infer_every = n;
    }
    if let Some(s) = a.status_every {
        cfg.output.status_every_s = s;
    }
    if let Some(addr) = a.ui {
        cfg.ui.enabled = true;
        cfg.ui.listen = addr;
    }
    if let Some(d) = &a.sessions_dir {
        cfg.session.dir = d.clone();
    }
    if let Some(p) = &a.pacs {
        cfg.pacs.set_address(p)?;
    }
    if a.session {
        use crate::events::{SessionContext, Side};
        cfg.session.open_at_start = Some(SessionContext {
            patient_id: a.patient_id.clone(),
            accession: a.accession.clone(),
            operator: a.operator.clone(),
            side: a
                .side
                .as_deref()
                .map(|s| if s == "left" { Side::Left } else { Side::Right }),
        });
    }
    cfg.validate()?;
    let term = signal_flag()?;
    let classifier = open_model(&cfg)?;
    log::info!(
        "model {} {} ({}), threshold {:.3}, loaded in {:.0} ms",
        classifier.info().name,
        classifier.info().version,
        classifier.info().trust,
        classifier.info().threshold,
        classifier.info().load_time.as_secs_f64() * 1e3
    );
    let outputs = build::from_config(&cfg, &classifier, true)?;
    runtime::run(&cfg, classifier, outputs, term, &RunOptions::default())?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_selftest(a: SelftestArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(a.config.as_deref())?;
    apply_model(&mut cfg, &a.model);
    let mut classifier = open_model(&cfg)?;
    let mut r = crate::selftest::run(&mut classifier, a.runs)?;
    let (workers, intra) = cfg.model.layout();
    r.inference = format!(
        "{} core(s), model.parallelism = {:?}: {workers} inference worker(s) x {intra} \
         intra-op thread(s) (the timings below are one inference)",
        cfg.model.cores(),
        cfg.model.parallelism
    );
    let failed: Vec<&crate::selftest::CaseResult> = r.references.iter().filter(|c| !c.ok).collect();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("model       {} ({})", r.model, r.trust);
        println!("cpu         {}", r.cpu);
        println!("inference   {}", r.inference);
        if let Some(f) = &r.form {
            println!("form        {f}");
        }
        if r.references.is_empty() {
            println!("references  none in this bundle (answers unchecked)");
        }
        for c in &r.references {
            println!(
                "reference   {} {}: expected {} {:.4} +- {:.4}, got {} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.file,
                c.expected_class,
                c.expected_p_abnormal,
                c.tolerance,
                c.class.as_deref().unwrap_or("-"),
                c.p_abnormal.map_or("-".to_string(), |p| format!("{p:.4}"))
            );
        }
        println!(
            "load        {:.0} ms (parse, verify, optimise, warm-up)",
            r.load_ms
        );
        println!("frame       {}", r.frame);
        println!("latency     median of {} runs, ms", r.runs);
        println!("  capture     {:8.2}  (RGB -> grey)", r.capture_ms);
        println!("  gate        {:8.2}", r.gate_ms);
        println!("  preprocess  {:8.2}", r.preprocess_ms);
        println!("  infer       {:8.2}", r.infer_ms);
        println!("  aggregate   {:8.3}", r.aggregate_ms);
        println!("  total       {:8.2}", r.total_ms);
        println!("scan area   {:?}", r.scan_area);
        println!(
            "answer      p(abnormal) {:.3} (threshold {:.3}), most likely {} ({:.3})",
            r.p_abnormal, r.threshold, r.class, r.confidence
        );
    }
    if !failed.is_empty() {
        for c in &failed {
            log::error!(
                "selftest: reference {}: {}",
                c.file,
                c.error.as_deref().unwrap_or("wrong answer")
            );
        }
        anyhow::bail!(
            "selftest FAILED: {} of {} signed reference frames answered differently on this \
             cart; do not screen with it (check the build, the board and the bundle)",
            failed.len(),
            r.references.len()
        );
    }
    if !a.json {
        println!("selftest    ok");
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.every >= 1, "--every must be at least 1");
    let mut cfg = load_config(a.config.as_deref())?;
    apply_model(&mut cfg, &a.model);
    let mut classifier = open_model(&cfg)?;
    if !classifier.has_view_gate() {
        log::warn!("this bundle has no view gate: no frame can be refused as no_kidney");
    }
    let files = crate::check::expand(&a.files);
    anyhow::ensure!(
        !files.is_empty(),
        "no image or DICOM files in {:?}",
        a.files
    );
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    let mut errors = 0usize;
    let mut out = std::io::stdout().lock();
    // A reader that stops early (`| head`) ends the check quietly, like any Unix filter.
    macro_rules! emit {
        ($($t:tt)*) => {
            match writeln!(out, $($t)*) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
                r => r.context("writing the check's output to stdout")?,
            }
        };
    }
    for f in &files {
        for v in crate::check::check_file(&mut classifier, f, a.every) {
            let key = match (v.outcome, v.reason, &v.class) {
                ("gated", Some(r), _) => format!("gated {r}"),
                ("classified", _, Some(c)) => format!(
                    "classified {}",
                    if v.abnormal == Some(true) {
                        c.as_str()
                    } else {
                        "normal"
                    }
                ),
                _ => {
                    errors += 1;
                    "error".into()
                }
            };
            *tally.entry(key).or_default() += 1;
            if a.json {
                emit!("{}", serde_json::to_string(&v)?);
            } else {
                let scores = match (v.p_kidney, v.ood) {
                    (Some(k), Some(o)) => format!("  p(kidney) {k:.3} ood {o:.2}"),
                    _ => String::new(),
                };
                let what = match (v.outcome, v.reason, v.signal) {
                    ("gated", Some(r), Some(s)) => format!("gated: {r} ({s})"),
                    ("gated", Some(r), None) => format!("gated: {r}"),
                    ("classified", ..) => format!(
                        "{} ({}), p(abnormal) {:.3}",
                        if v.abnormal == Some(true) {
                            "ABNORMAL"
                        } else {
                            "normal"
                        },
                        v.class.as_deref().unwrap_or("?"),
                        v.p_abnormal.unwrap_or(f32::NAN)
                    ),
                    _ => format!("error: {}", v.error.as_deref().unwrap_or("?")),
                };
                emit!("{} #{}: {what}{scores}", v.file, v.frame);
            }
        }
    }
    if !a.json {
        let total: usize = tally.values().sum();
        emit!("{} frames of {} files:", total, files.len());
        for (k, n) in &tally {
            emit!("  {k:<28} {n}");
        }
    }
    Ok(if errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn cmd_probes(a: ProbesArgs) -> anyhow::Result<ExitCode> {
    let devices = crate::source::v4l::list_devices();
    if devices.is_empty() {
        let msg = "no V4L2 video devices: /dev/video* does not exist. Plug in the probe, \
                   check `dmesg` for it and that the udev rule gave it to the `video` group.";
        if a.json {
            println!("{}", serde_json::json!({"devices": [], "message": msg}));
        } else {
            println!("{msg}");
        }
        return Ok(ExitCode::from(1));
    }
    for d in devices {
        let accepted: Vec<String> = d
            .offers
            .iter()
            .filter(|o| {
                std::str::from_utf8(&o.fourcc)
                    .ok()
                    .and_then(crate::source::v4l::parse_fourcc)
                    .is_some()
            })
            .map(|o| String::from_utf8_lossy(&o.fourcc).into_owned())
            .collect();
        if a.json {
            let offers: Vec<_> = d
                .offers
                .iter()
                .map(|o| {
                    serde_json::json!({
                        "fourcc": String::from_utf8_lossy(&o.fourcc),
                        "description": o.description,
                        "sizes": o.sizes,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "path": d.path, "name": d.name, "driver": d.driver, "bus": d.bus,
                    "capture": d.capture, "formats": offers, "rates": d.rates,
                    "accepted": accepted, "error": d.error,
                })
            );
            continue;
        }
        println!("{}  {}  ({} {})", d.path.display(), d.name, d.driver, d.bus);
        if let Some(e) = &d.error {
            println!("  error: {e}");
        }
        if !d.capture {
            println!("  not a video capture device");
            continue;
        }
        for o in &d.offers {
            let sizes: Vec<String> = o.sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect();
            println!(
                "  {} {:<28} {}",
                String::from_utf8_lossy(&o.fourcc),
                o.description,
                sizes.join(" ")
            );
        }
        for r in &d.rates {
            println!("    {r}");
        }
        if accepted.is_empty() {
            println!("  usable: no (needs GREY, YUYV or MJPG)");
        } else {
            println!("  usable: yes ({})", accepted.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A benchmark's config: the phantom (or the given replay, looped) as fast as the pipeline
/// takes it, for `frames` frames.
pub(crate) fn bench_config(
    model: &ModelArgs,
    source: &SourceArgs,
    frames: u64,
) -> anyhow::Result<Config> {
    let mut cfg = Config::default();
    apply_model(&mut cfg, model);
    cfg.source.kind = SourceKind::Phantom;
    cfg.source.phantom.fps = 0.0;
    cfg.source.replay.fps = 0.0;
    cfg.source.replay.looped = true;
    apply_source(&mut cfg, source)?;
    cfg.pipeline.max_frames = frames;
    Ok(cfg)
}

fn cmd_bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = bench_config(&a.model, &a.source, a.frames)?;
    cfg.pipeline.infer_every = a.infer_every.max(1);
    cfg.output.status_every_s = 5.0;
    let tmp;
    cfg.journal.dir = match &a.journal {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("renalscan-edge-bench-")
                .tempdir()
                .context("creating a scratch journal directory")?;
            tmp.path().to_path_buf()
        }
    };
    cfg.validate()?;
    let rss_start = rss_kib().unwrap_or(0);
    let load_before = loadavg();
    let classifier = open_model(&cfg)?;
    let model_desc = format!(
        "{} {} ({})",
        classifier.info().name,
        classifier.info().version,
        classifier.info().trust
    );
    let rss_loaded = rss_kib().unwrap_or(0);
    let outputs = build::from_config(&cfg, &classifier, false)?;
    let term = signal_flag()?;
    let opts = RunOptions {
        rss_every: 100,
        status_tx: None,
    };
    let s = runtime::run(&cfg, classifier, outputs, term, &opts)?;
    let processed = s.counters.processed.max(1) as f64;
    // Cost of everything but the model, per frame taken from the source, against the cost
    // of one inference. Both as thread CPU time (robust to other load on the machine) and as
    // wall time.
    let overhead_stages = [
        Stage::Capture,
        Stage::Gate,
        Stage::Preprocess,
        Stage::Aggregate,
        Stage::Sinks,
    ];
    let total = |f: &dyn Fn(Stage) -> f64| -> f64 { overhead_stages.iter().map(|&st| f(st)).sum() };
    let cpu_sum = |st: Stage| s.timers.cpu(st).run_mean_ms() * s.timers.cpu(st).run_count() as f64;
    let wall_sum = |st: Stage| s.timers.get(st).run_mean_ms() * s.timers.get(st).run_count() as f64;
    let overhead_cpu = total(&cpu_sum) / processed;
    let overhead_wall = total(&wall_sum) / processed;
    let infer_cpu = s.timers.cpu(Stage::Infer).run_mean_ms();
    let infer_wall = s.timers.get(Stage::Infer).run_mean_ms();
    let pct = |a: f64, b: f64| if b > 0.0 { 100.0 * a / b } else { f64::NAN };
    let steady = s
        .rss
        .iter()
        .find(|(n, _)| *n >= a.warmup)
        .map_or(0, |r| r.1);
    let end = s.rss.last().map_or(0, |r| r.1);
    let max_after = s
        .rss
        .iter()
        .filter(|(n, _)| *n >= a.warmup)
        .map(|r| r.1)
        .max()
        .unwrap_or(0);
    let (workers, intra) = cfg.model.layout();
    let decide = s.timers.get(Stage::Decide).latency();
    let report = serde_json::json!({
        "model": model_desc,
        "cpu": crate::selftest::cpu_description(),
        "threads": cfg.model.cores(),
        "parallelism": cfg.model.parallelism,
        "workers": workers,
        "intra_op_threads": intra,
        "inferences_per_s": s.counters.inferred as f64 / s.wall.as_secs_f64().max(1e-9),
        "latency_ms": {
            "what": "frame to decision (end of capture to end of the sinks), classified frames",
            "p50": decide.p50,
            "p95": decide.p95,
            "mean": decide.mean,
            "max": decide.max,
            "n": decide.n,
        },
        "source": cfg.source.kind,
        "loadavg": { "before": load_before, "after": loadavg() },
        "frames": s.counters.processed,
        "inferred": s.counters.inferred,
        "gated": crate::events::gated_map(&s.counters.gated),
        "decisions": s.counters.decisions,
        "dropped": s.dropped,
        "corrupt": s.corrupt,
        "wall_s": s.wall.as_secs_f64(),
        "fps": s.counters.processed as f64 / s.wall.as_secs_f64().max(1e-9),
        "stages_ms": s.timers.report(),
        "cpu_ms": s.timers.cpu_report(),
        "infer_ms": { "cpu": infer_cpu, "wall": infer_wall },
        "overhead_ms_per_frame": { "cpu": overhead_cpu, "wall": overhead_wall },
        "overhead_pct_of_inference": {
            "cpu": pct(overhead_cpu, infer_cpu),
            "wall": pct(overhead_wall, infer_wall),
        },
        "rss_kib": {
            "start": rss_start,
            "model_loaded": rss_loaded,
            "steady_at_warmup": steady,
            "max_after_warmup": max_after,
            "end": end,
            "growth_after_warmup": end as i64 - steady as i64,
            "peak": peak_rss_kib().unwrap_or(0),
            "samples": s.rss,
        },
    });
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One-minute load average: how busy the machine was while timing.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `--view`'s choices: the phantom's anatomy labels.
fn phantom_views() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        std::iter::once(phantom::Anatomy::Kidney)
            .chain(phantom::Anatomy::OTHER)
            .map(|a| a.label()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every numeric flag refuses NaN, infinities, negatives and absurd sizes with an error
    /// naming it (seeds excepted: any number is one).
    #[test]
    fn every_numeric_flag_is_range_checked() {
        Cli::command().debug_assert();
        let failures = argrange::check_command(Cli::command(), &["seed"]);
        assert!(failures.is_empty(), "{failures:#?}");
    }

    fn source_of(args: &[&str]) -> anyhow::Result<Config> {
        let cli =
            Cli::try_parse_from(std::iter::once("renalscan-edge").chain(args.iter().copied()))?;
        let Cmd::Run(a) = cli.cmd else {
            anyhow::bail!("not run");
        };
        let mut cfg = Config::default();
        apply_source(&mut cfg, &a.source)?;
        Ok(cfg)
    }

    /// Fixed choices are listed and checked by clap; source flags of another source are
    /// refused instead of silently doing nothing.
    #[test]
    fn source_flags_are_choices_and_need_their_source() {
        let cfg = source_of(&["run", "--phantom", "--class", "Stone", "--view", "kidney"]).unwrap();
        assert_eq!(cfg.source.kind, SourceKind::Phantom);
        assert_eq!(cfg.source.phantom.class.to_ascii_lowercase(), "stone");
        let e = source_of(&["run", "--phantom", "--view", "heart"]).unwrap_err();
        assert!(e.to_string().contains("rib_lung"), "{e}");
        let e = source_of(&["run", "--replay", "x", "--seed", "3"]).unwrap_err();
        assert!(
            e.to_string().contains("--seed applies to the phantom"),
            "{e}"
        );
        let e = source_of(&["run", "--phantom", "--loop"]).unwrap_err();
        assert!(e.to_string().contains("--loop applies to a replay"), "{e}");
        assert!(source_of(&["run", "--replay", "x", "--loop", "--fps", "5"]).is_ok());
    }
}
