//! The runtime's TOML configuration: one file per cart, every key optional with a safe
//! default, unknown keys refused (a typo must not silently fall back to a default).
//! `config.example.toml` beside the crate documents every key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::aggregate::{Params, Pooling};

/// Whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub source: SourceConfig,
    pub pipeline: PipelineConfig,
    pub gate: GateConfig,
    pub aggregate: AggregateConfig,
    pub output: OutputConfig,
    pub journal: JournalSection,
    pub cartlink: CartlinkConfig,
    pub snapshot: SnapshotConfig,
    /// The operator view (`operator-view`): off by default.
    pub ui: operator_view::ViewConfig,
    pub session: SessionConfig,
    /// Store-and-forward of ended exams to the hospital PACS: off by default.
    pub pacs: PacsConfig,
    /// How this runtime proves an update healthy.
    pub update: UpdateConfig,
}

/// The health an A/B update needs before it becomes the cart's good slot.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Written once the pipeline has turned without a stall for `health_after_s`
    /// (`/var/lib/renalscan/health/healthy.json` on a cart): the update tool then commits a
    /// pending slot. Unset: never written (a workstation).
    pub health_file: Option<PathBuf>,
    /// Seconds of continuous pipeline progress that prove a start healthy.
    pub health_after_s: f32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            health_file: None,
            health_after_s: 600.0,
        }
    }
}

/// The hospital PACS and the outbox that waits for it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacsConfig {
    pub enabled: bool,
    /// The PACS's AE title (called AE).
    pub called_ae: String,
    pub host: String,
    pub port: u16,
    /// Ours (calling AE): the PACS must know it.
    pub calling_ae: String,
    /// The outbox: Part-10 files and their journal (writable, on the data partition).
    pub outbox: PathBuf,
    /// TCP connect timeout, seconds.
    pub connect_timeout_s: f32,
    /// Each read and write on an association, seconds.
    pub io_timeout_s: f32,
    /// A7xx (out of resources) answers before an object is quarantined.
    pub retry_cap: u32,
    /// First wait after a failed drain, seconds; doubles (with jitter) up to the maximum.
    pub backoff_initial_s: f32,
    pub backoff_max_s: f32,
    /// At an orderly shutdown, keep draining for up to this long, seconds.
    pub drain_on_shutdown_s: f32,
    /// DICOM over TLS (PS3.15 B.1).
    pub tls: bool,
    /// With `tls`: PEM file of the CAs that sign the PACS's certificate.
    pub tls_ca: Option<PathBuf>,
    /// With `tls`, when the PACS requires client certificates: the cart's certificate
    /// (PEM chain) and key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for PacsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            called_ae: "PACS".into(),
            host: String::new(),
            port: 104,
            calling_ae: "RENALSCAN".into(),
            outbox: PathBuf::from("/var/lib/renalscan/outbox"),
            connect_timeout_s: 5.0,
            io_timeout_s: 15.0,
            retry_cap: 5,
            backoff_initial_s: 2.0,
            backoff_max_s: 300.0,
            drain_on_shutdown_s: 10.0,
            tls: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl PacsConfig {
    /// `AET@HOST:PORT` (from `--pacs`) into the keys; the calling AE stays.
    pub fn set_address(&mut self, addr: &str) -> anyhow::Result<()> {
        let a: pacs::PacsAddr = addr.parse()?;
        self.called_ae = a.called_ae;
        self.host = a.host;
        self.port = a.port;
        self.enabled = true;
        Ok(())
    }

    /// The address to send to.
    pub fn addr(&self) -> pacs::PacsAddr {
        pacs::PacsAddr {
            called_ae: self.called_ae.clone(),
            host: self.host.clone(),
            port: self.port,
            calling_ae: self.calling_ae.clone(),
        }
    }

    /// Timeouts, and the TLS client configuration read from its files.
    pub fn link(&self) -> anyhow::Result<pacs::LinkOptions> {
        let tls = match (self.tls, &self.tls_ca) {
            (false, _) => None,
            (true, None) => anyhow::bail!("pacs.tls needs pacs.tls_ca (the CAs of the PACS)"),
            (true, Some(ca)) => Some(pacs::tls::client_config(&pacs::tls::TlsFiles {
                ca: ca.clone(),
                client: self.tls_cert.clone().zip(self.tls_key.clone()),
            })?),
        };
        Ok(pacs::LinkOptions {
            timeouts: pacs::Timeouts {
                connect: std::time::Duration::from_secs_f32(self.connect_timeout_s),
                io: std::time::Duration::from_secs_f32(self.io_timeout_s),
            },
            tls,
        })
    }

    pub fn drain_config(&self) -> anyhow::Result<pacs::DrainConfig> {
        Ok(pacs::DrainConfig {
            link: self.link()?,
            retry_cap: self.retry_cap,
            pace: None,
        })
    }

    /// Range checks, each naming its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, ae) in [
            ("called_ae", &self.called_ae),
            ("calling_ae", &self.calling_ae),
        ] {
            anyhow::ensure!(
                pacs::scu::valid_ae(ae),
                "pacs.{key} {ae:?} must be 1 to 16 printable ASCII characters without a backslash"
            );
        }
        anyhow::ensure!(
            !self.host.trim().is_empty(),
            "pacs.host is empty: set it, or pass --pacs AET@HOST:PORT"
        );
        anyhow::ensure!(self.port > 0, "pacs.port must be 1..65535");
        for (key, v, max) in [
            ("connect_timeout_s", self.connect_timeout_s, 300.0),
            ("io_timeout_s", self.io_timeout_s, 600.0),
            ("backoff_initial_s", self.backoff_initial_s, 3600.0),
            ("backoff_max_s", self.backoff_max_s, 86_400.0),
        ] {
            anyhow::ensure!(
                v > 0.0 && v <= max,
                "pacs.{key} must be in (0, {max}], got {v}"
            );
        }
        anyhow::ensure!(
            self.backoff_max_s >= self.backoff_initial_s,
            "pacs.backoff_max_s must be at least pacs.backoff_initial_s"
        );
        anyhow::ensure!(
            (0.0..=600.0).contains(&self.drain_on_shutdown_s),
            "pacs.drain_on_shutdown_s must be 0..=600, got {}",
            self.drain_on_shutdown_s
        );
        anyhow::ensure!(
            (1..=100).contains(&self.retry_cap),
            "pacs.retry_cap must be 1..=100, got {}",
            self.retry_cap
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "pacs.tls_cert and pacs.tls_key go together (the cart's certificate and its key)"
        );
        anyhow::ensure!(
            self.tls || (self.tls_ca.is_none() && self.tls_cert.is_none()),
            "pacs.tls_ca / tls_cert / tls_key are set but pacs.tls is false"
        );
        if self.tls {
            // Reads the files now: a wrong path fails at start, naming it.
            self.link()?;
        }
        Ok(())
    }
}

/// Exams: where their context and key frames are kept, and for how long.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// The session store: one folder per exam (context, key frames, export marks).
    pub dir: PathBuf,
    /// Days an exam's context and key frames are kept after it ends; then they are deleted
    /// and the deletion journalled (checked at every start). 0 keeps them.
    pub retention_days: u32,
    /// Open an exam at start with this context (`run --session`); not a config key.
    #[serde(skip)]
    pub open_at_start: Option<crate::events::SessionContext>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/renalscan/sessions"),
            retention_days: 30,
            open_at_start: None,
        }
    }
}

/// Which model bundle to run and how.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Bundle directory (`model.onnx`, `manifest.toml`, `manifest.sig`).
    pub bundle: Option<PathBuf>,
    /// Trusted ed25519 public key file, or a directory of them.
    pub trusted_keys: Option<PathBuf>,
    /// Integer graph, float graph dequantised at load, or whichever the loader prefers.
    pub form: ModelForm,
    /// Where `auto` remembers its timed choice per model file and CPU (writable; unset =
    /// time both forms at every start where the CPU alone does not decide).
    pub form_cache: Option<PathBuf>,
    /// The release floor (`floor.toml`, kept by the update tool): a bundle older than the
    /// newest one this cart proved good is refused unless a recorded override names it.
    /// Unset: no downgrade check (a workstation).
    pub floor_file: Option<PathBuf>,
    /// Cores given to inference. Unset: the board's performance cores (the big cores of a
    /// big.LITTLE part, every core the service may use elsewhere).
    pub threads: Option<usize>,
    /// How those cores are used: `frames` (inference workers on successive frames: the most
    /// decisions per second, decisions still in frame order) or `ops` (every core on each
    /// inference: the shortest wait for one frozen frame).
    pub parallelism: Parallelism,
    /// With `frames`: inference workers (each keeps its own model state, about 75 MiB with
    /// ResNet-50). Unset: at most [`DEFAULT_MAX_WORKERS`], the cores shared out among them as
    /// intra-op threads, which keeps the runtime within its memory budget on any board.
    pub workers: Option<usize>,
}

/// Workers `parallelism = "frames"` starts when `model.workers` is unset.
pub const DEFAULT_MAX_WORKERS: usize = 2;

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            bundle: None,
            trusted_keys: None,
            form: ModelForm::Auto,
            form_cache: None,
            floor_file: None,
            threads: None,
            parallelism: Parallelism::Frames,
            workers: None,
        }
    }
}

/// Most cores `model.threads` may ask for.
pub const MAX_THREADS: usize = 64;

impl ModelConfig {
    /// Cores given to inference: `threads`, or the board's performance cores.
    pub fn cores(&self) -> usize {
        self.threads
            .unwrap_or_else(performance_cores)
            .clamp(1, MAX_THREADS)
    }

    /// Inference workers and intra-op threads per inference for [`ModelConfig::cores`]:
    /// `frames` gives each worker an equal share of the cores (at least one), `ops` one
    /// inference all of them.
    pub fn layout(&self) -> (usize, usize) {
        let n = self.cores();
        match self.parallelism {
            Parallelism::Frames => {
                let w = self.workers.unwrap_or(DEFAULT_MAX_WORKERS).clamp(1, n);
                (w, (n / w).max(1))
            }
            Parallelism::Ops => (1, n),
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// Default: two workers at most, the rest of the cores as their intra-op threads; an
    /// explicit worker count is honoured up to the cores; `ops` is one inference on all.
    #[test]
    fn cores_are_shared_out_among_at_most_two_workers_by_default() {
        let m = |threads, workers, parallelism| ModelConfig {
            threads: Some(threads),
            workers,
            parallelism,
            ..ModelConfig::default()
        };
        let f = Parallelism::Frames;
        assert_eq!(m(1, None, f).layout(), (1, 1));
        assert_eq!(m(2, None, f).layout(), (2, 1));
        assert_eq!(m(4, None, f).layout(), (2, 2));
        assert_eq!(m(8, None, f).layout(), (2, 4));
        assert_eq!(m(4, Some(4), f).layout(), (4, 1));
        assert_eq!(m(2, Some(8), f).layout(), (2, 1));
        assert_eq!(m(4, None, Parallelism::Ops).layout(), (1, 4));
    }
}

/// How inference uses its cores (`model.parallelism`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Parallelism {
    /// One single-threaded worker per core, on successive frames.
    #[default]
    Frames,
    /// All cores on each inference (tract's intra-op threads).
    Ops,
}

/// The cores this process may run on that are performance cores: on a big.LITTLE board
/// (arm64 publishes `cpu_capacity`), those of the highest capacity; otherwise all of them.
pub fn performance_cores() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacities: Vec<u64> = (0..1024)
        .map_while(|i| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{i}/cpu_capacity")).ok()
        })
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let Some(&max) = capacities.iter().max() else {
        return allowed;
    };
    let big = capacities.iter().filter(|&&c| c == max).count();
    big.clamp(1, allowed)
}

/// How an int8 model is run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelForm {
    #[default]
    Auto,
    Integer,
    Float,
    /// f16 (ARMv8.2 fp16 kernels). Auto picks it only where the bundle records its
    /// agreement with fp32 and it times fastest.
    Half,
}

/// Where frames come from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A USB probe as a V4L2 video device.
    #[default]
    V4l,
    /// A DICOM cine, one image, or a folder of images.
    Replay,
    /// The built-in phantom probe sweep.
    Phantom,
}

/// Frame source settings.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub v4l: V4lConfig,
    pub replay: ReplayConfig,
    pub phantom: PhantomConfig,
    pub reopen: ReopenConfig,
}

/// V4L2 capture.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct V4lConfig {
    /// `auto` (first device that captures a format we accept) or a path like `/dev/video0`.
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Pixel formats in order of preference (fourcc: GREY, YUYV, MJPG).
    pub formats: Vec<String>,
    /// Driver buffers; 4 keeps latency low while tolerating a slow frame.
    pub buffers: u32,
    /// A dequeue that takes longer than this counts as the probe being gone.
    pub timeout_ms: u64,
}

impl Default for V4lConfig {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            width: 1024,
            height: 768,
            fps: 30,
            formats: vec!["GREY".into(), "YUYV".into(), "MJPG".into()],
            buffers: 4,
            timeout_ms: 2000,
        }
    }
}

/// Replay of recorded frames.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    pub path: Option<PathBuf>,
    /// Frames per second; 0 = as fast as the pipeline consumes them, none dropped
    /// (benchmarks, tests).
    pub fps: f32,
    /// Start again after the last frame.
    #[serde(rename = "loop")]
    pub looped: bool,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            path: None,
            fps: 20.0,
            looped: false,
        }
    }
}

/// The built-in phantom probe sweep.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhantomConfig {
    pub seed: u64,
    /// Scanner profile name (phantom crate); empty = default.
    pub profile: String,
    /// Patient condition (`normal`, `stone`, ...); empty = drawn from the seed.
    pub class: String,
    pub severity: Option<f32>,
    /// What the probe sweeps over: `kidney` (empty), or a view without one (`liver`,
    /// `spleen`, `bladder`, `bowel`, `rib_lung`, `lifted`, `off_axis`) to see the view gate.
    pub view: String,
    /// Frames per second; 0 = as fast as the pipeline consumes them.
    pub fps: f32,
    /// Stop after this many frames.
    pub frames: Option<u64>,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            profile: String::new(),
            class: String::new(),
            severity: None,
            view: String::new(),
            fps: 10.0,
            frames: None,
        }
    }
}

/// Reopening a source that failed (probe unplugged, replay medium gone).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReopenConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for ReopenConfig {
    fn default() -> Self {
        Self {
            initial_ms: 200,
            max_ms: 5000,
        }
    }
}

/// Continuous screening or classify-on-freeze.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every usable frame is classified; decisions come from the aggregated window.
    #[default]
    Continuous,
    /// Only a frozen image is classified, once per freeze (and on the cart's Capture).
    Freeze,
}

/// Pipeline settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub mode: Mode,
    /// Screen from the start; when false, wait for the cart's StartScreening.
    pub autostart: bool,
    /// Run inference on every Nth usable frame only (1 = all); the others still pass the
    /// gate and preprocessing. For soak tests on slow machines.
    pub infer_every: u32,
    /// Stop after this many frames taken from the source (0 = never).
    pub max_frames: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Continuous,
            autostart: true,
            infer_every: 1,
            max_frames: 0,
        }
    }
}

/// Frame quality gate.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// A frame whose grey range (max - min, sampled) is at most this is blank.
    pub blank_max_range: u8,
    /// ... or whose mean grey is below this (black screen, probe unplugged from the scanner).
    pub blank_max_mean: f32,
    /// Treat a frame identical to the previous one as frozen.
    pub frozen: bool,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            blank_max_range: 8,
            blank_max_mean: 3.0,
            frozen: true,
        }
    }
}

/// Temporal aggregation and hysteresis.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Frames pooled (at most 64).
    pub window: usize,
    /// How the window's frames are pooled: `log-odds` (the mean of their log-odds, the
    /// default) or `probability` (their mean p(abnormal)).
    pub pooling: Pooling,
    /// Frames needed before the first decision.
    pub min_frames: usize,
    /// Half-width of the hysteresis band around the threshold.
    pub hysteresis: f32,
    /// Operating threshold on p(abnormal); default: the bundle's.
    pub threshold: Option<f32>,
    /// Re-send the current decision this often while screening (0 = only on changes).
    pub report_every_s: f32,
    /// This many gated frames in a row (probe lifted, frozen) start a new window.
    pub reset_after_gated: u32,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            window: 16,
            pooling: Pooling::default(),
            // The exam's call is latched on any abnormal decision, so an early call on a few
            // frames costs specificity: on 120 protocol sweeps, 5 frames gave 92% / 55%
            // (sensitivity / specificity), 12 frames 89% / 75%, a full window no better.
            min_frames: 12,
            hysteresis: 0.05,
            threshold: None,
            report_every_s: 2.0,
            reset_after_gated: 20,
        }
    }
}

impl AggregateConfig {
    /// The aggregator's parameters for a model with `classes` outputs, at `threshold` (the
    /// operating one, or a candidate being judged): the device and the tools that replay it
    /// read this section the same way.
    pub fn params(&self, threshold: f32, classes: usize, normal_index: usize) -> Params {
        Params {
            window: self.window,
            pooling: self.pooling,
            min_frames: self.min_frames,
            threshold,
            hysteresis: self.hysteresis,
            classes,
            normal_index,
        }
    }
}

/// Standard output and status.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// JSON lines on stdout.
    pub stdout: bool,
    /// Status period (stdout, cart, status file, systemd's status line).
    pub status_every_s: f32,
    /// At most one status line in the log per this many seconds (0 = every status): under
    /// systemd the log is the system journal, which a line per second would flood.
    pub log_every_s: f32,
    /// The latest status as one JSON file, replaced atomically at every status, for fleet
    /// tools (`/run/renalscan/status.json` under the systemd unit). Unset: none.
    pub status_file: Option<PathBuf>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            stdout: true,
            status_every_s: 1.0,
            log_every_s: 60.0,
            status_file: None,
        }
    }
}

/// Crash-safe journal of decisions.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    pub enabled: bool,
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_total_bytes: u64,
    pub max_segments: usize,
    /// Records kept in memory while the disk refuses writes.
    pub hold_capacity: usize,
    /// How often held records are retried.
    pub retry_every_s: f32,
    /// The oldest record retention must keep (an exam not yet exported or forwarded): set
    /// by the runtime, shared with the journal sink; not a config key.
    #[serde(skip)]
    pub keep_from: journal::KeepFrom,
}

impl Default for JournalSection {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/var/lib/renalscan/journal"),
            segment_bytes: 1 << 20,
            max_total_bytes: 64 << 20,
            max_segments: 64,
            hold_capacity: 1024,
            retry_every_s: 2.0,
            keep_from: journal::KeepFrom::default(),
        }
    }
}

/// Serial link to the cart controller.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CartlinkConfig {
    pub enabled: bool,
    pub port: String,
    pub baud: u32,
    pub device_id: String,
    pub resend_after_ms: u64,
}

impl Default for CartlinkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: "/dev/ttyS1".into(),
            baud: 115_200,
            device_id: "renalscan-edge".into(),
            resend_after_ms: 500,
        }
    }
}

/// Snapshots of decisive frames.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    /// Snapshots kept; the oldest are removed beyond this.
    pub keep: usize,
    /// Bytes the snapshot directory may hold; the oldest are removed beyond this too.
    pub max_bytes: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("/var/lib/renalscan/snapshots"),
            keep: 500,
            max_bytes: 256 << 20,
        }
    }
}

impl Config {
    /// Reads and parses a TOML file; errors name the file and the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses TOML text and checks value ranges.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every duration, rate, size and count in range (NaN and infinity are out of every
    /// range), each error naming its key and the range.
    fn check_ranges(&self) -> anyhow::Result<()> {
        fn within<T: PartialOrd + std::fmt::Display>(
            key: &str,
            v: T,
            lo: T,
            hi: T,
            unit: &str,
        ) -> anyhow::Result<()> {
            anyhow::ensure!(
                v >= lo && v <= hi,
                "{key} must be in [{lo}, {hi}]{unit}, got {v}"
            );
            Ok(())
        }
        let (src, j, a) = (&self.source, &self.journal, &self.aggregate);
        if let Some(t) = self.model.threads {
            within(
                "model.threads",
                t,
                1,
                MAX_THREADS,
                " (unset = the performance cores)",
            )?;
        }
        if let Some(w) = self.model.workers {
            within(
                "model.workers",
                w,
                1,
                MAX_THREADS,
                " (at most model.threads are used)",
            )?;
        }
        within("source.v4l.width", src.v4l.width, 16, 8192, " pixels")?;
        within("source.v4l.height", src.v4l.height, 16, 8192, " pixels")?;
        within(
            "source.v4l.fps",
            src.v4l.fps,
            0,
            240,
            " (0 = the device's default)",
        )?;
        within("source.v4l.buffers", src.v4l.buffers, 1, 32, "")?;
        within("source.v4l.timeout_ms", src.v4l.timeout_ms, 10, 60_000, "")?;
        within(
            "source.replay.fps",
            src.replay.fps,
            0.0,
            240.0,
            " (0 = as fast as the pipeline takes them)",
        )?;
        within(
            "source.phantom.fps",
            src.phantom.fps,
            0.0,
            240.0,
            " (0 = as fast as the pipeline takes them)",
        )?;
        if let Some(v) = src.phantom.severity {
            within("source.phantom.severity", v, 0.0, 1.0, "")?;
        }
        if let Some(v) = src.phantom.frames {
            within("source.phantom.frames", v, 1, 10_000_000, "")?;
        }
        within(
            "source.reopen.initial_ms",
            src.reopen.initial_ms,
            1,
            60_000,
            "",
        )?;
        within("source.reopen.max_ms", src.reopen.max_ms, 1, 600_000, "")?;
        within(
            "pipeline.infer_every",
            self.pipeline.infer_every,
            1,
            1000,
            "",
        )?;
        within(
            "gate.blank_max_mean",
            self.gate.blank_max_mean,
            0.0,
            255.0,
            "",
        )?;
        within(
            "aggregate.report_every_s",
            a.report_every_s,
            0.0,
            3600.0,
            " (0 = every frame)",
        )?;
        within(
            "aggregate.reset_after_gated",
            a.reset_after_gated,
            0,
            100_000,
            "",
        )?;
        within(
            "output.status_every_s",
            self.output.status_every_s,
            0.01,
            3600.0,
            "",
        )?;
        within(
            "output.log_every_s",
            self.output.log_every_s,
            0.0,
            86_400.0,
            "",
        )?;
        within(
            "update.health_after_s",
            self.update.health_after_s,
            1.0,
            86_400.0,
            "",
        )?;
        within("journal.segment_bytes", j.segment_bytes, 4096, 1 << 30, "")?;
        within(
            "journal.max_total_bytes",
            j.max_total_bytes,
            4096,
            1 << 40,
            "",
        )?;
        within("journal.max_segments", j.max_segments, 1, 100_000, "")?;
        within("journal.hold_capacity", j.hold_capacity, 1, 1_000_000, "")?;
        within("journal.retry_every_s", j.retry_every_s, 0.01, 3600.0, "")?;
        within("cartlink.baud", self.cartlink.baud, 1200, 4_000_000, "")?;
        within(
            "cartlink.resend_after_ms",
            self.cartlink.resend_after_ms,
            10,
            60_000,
            "",
        )?;
        within("snapshot.keep", self.snapshot.keep, 1, 1_000_000, "")?;
        within(
            "snapshot.max_bytes",
            self.snapshot.max_bytes,
            1 << 20,
            1 << 40,
            " bytes",
        )?;
        Ok(())
    }

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        let a = &self.aggregate;
        anyhow::ensure!(
            (1..=crate::aggregate::MAX_WINDOW).contains(&a.window),
            "aggregate.window must be 1..={}, got {}",
            crate::aggregate::MAX_WINDOW,
            a.window
        );
        anyhow::ensure!(
            (1..=a.window).contains(&a.min_frames),
            "aggregate.min_frames must be 1..=window ({}), got {}",
            a.window,
            a.min_frames
        );
        anyhow::ensure!(
            (0.0..0.5).contains(&a.hysteresis),
            "aggregate.hysteresis must be in [0, 0.5), got {}",
            a.hysteresis
        );
        if let Some(t) = a.threshold {
            anyhow::ensure!(
                (0.0..=1.0).contains(&t),
                "aggregate.threshold must be in [0, 1]"
            );
        }
        self.check_ranges()?;
        anyhow::ensure!(
            self.source.reopen.max_ms >= self.source.reopen.initial_ms,
            "source.reopen.max_ms must be at least source.reopen.initial_ms"
        );
        anyhow::ensure!(
            self.journal.max_total_bytes >= self.journal.segment_bytes,
            "journal.max_total_bytes must be at least journal.segment_bytes"
        );
        if self.ui.enabled {
            self.ui.validate()?;
        }
        if self.pacs.enabled {
            self.pacs.validate()?;
            anyhow::ensure!(
                self.journal.enabled,
                "pacs needs the journal (the exams it sends are read from it): remove --no-journal or journal.enabled = false"
            );
        }
        anyhow::ensure!(
            self.session.retention_days <= 3650,
            "session.retention_days must be 0..=3650 (0 keeps everything), got {}",
            self.session.retention_days
        );
        anyhow::ensure!(
            self.session.open_at_start.is_none() || self.journal.enabled,
            "an exam session needs the journal: remove --no-journal or journal.enabled = false"
        );
        for f in &self.source.v4l.formats {
            anyhow::ensure!(
                usimage::v4l2::PixelFormat::from_fourcc(f).is_some(),
                "source.v4l.formats: {f:?} is not one of GREY, YUYV, MJPG"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every numeric key, with the TOML section it lives in.
    const NUMERIC_KEYS: &[(&str, &str)] = &[
        ("source.v4l", "width"),
        ("source.v4l", "height"),
        ("source.v4l", "fps"),
        ("source.v4l", "buffers"),
        ("source.v4l", "timeout_ms"),
        ("source.replay", "fps"),
        ("source.phantom", "fps"),
        ("source.phantom", "severity"),
        ("source.phantom", "frames"),
        ("source.phantom", "seed"),
        ("source.reopen", "initial_ms"),
        ("source.reopen", "max_ms"),
        ("pipeline", "infer_every"),
        ("pipeline", "max_frames"),
        ("gate", "blank_max_range"),
        ("gate", "blank_max_mean"),
        ("aggregate", "window"),
        ("aggregate", "min_frames"),
        ("aggregate", "hysteresis"),
        ("aggregate", "threshold"),
        ("aggregate", "report_every_s"),
        ("aggregate", "reset_after_gated"),
        ("output", "status_every_s"),
        ("output", "log_every_s"),
        ("update", "health_after_s"),
        ("journal", "segment_bytes"),
        ("journal", "max_total_bytes"),
        ("journal", "max_segments"),
        ("journal", "hold_capacity"),
        ("journal", "retry_every_s"),
        ("cartlink", "baud"),
        ("cartlink", "resend_after_ms"),
        ("snapshot", "keep"),
        ("snapshot", "max_bytes"),
        ("session", "retention_days"),
        ("pacs", "port"),
        ("pacs", "connect_timeout_s"),
        ("pacs", "io_timeout_s"),
        ("pacs", "retry_cap"),
        ("pacs", "backoff_initial_s"),
        ("pacs", "backoff_max_s"),
        ("pacs", "drain_on_shutdown_s"),
    ];

    fn numeric_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            (-10i64..10_000).prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            (-1.0f64..100.0).prop_map(|v| format!("{v:?}")),
            proptest::sample::select(vec!["inf", "-inf", "nan", "0", "0.0", "-0.0"])
                .prop_map(str::to_string),
        ]
    }

    proptest::proptest! {
        /// Any value for any numeric key: a clear error that names the key (or says the value
        /// is not the key's type), or a configuration that validates; never a panic.
        #[test]
        fn every_numeric_key_is_checked(
            key in proptest::sample::select(NUMERIC_KEYS.to_vec()),
            value in numeric_value(),
        ) {
            let (section, name) = key;
            let text = format!("[{section}]\n{name} = {value}\n");
            if let Err(e) = Config::parse(&text) {
                let msg = format!("{e:#}");
                proptest::prop_assert!(
                    msg.contains(name) || msg.contains("invalid type") || msg.contains("invalid value")
                        || msg.contains("out of range") || msg.contains(section),
                    "{text} -> {msg}"
                );
            }
        }
    }

    #[test]
    fn non_finite_durations_are_refused_by_name() {
        for (key, text) in [
            ("output.status_every_s", "[output]\nstatus_every_s = inf\n"),
            ("journal.retry_every_s", "[journal]\nretry_every_s = nan\n"),
            (
                "aggregate.report_every_s",
                "[aggregate]\nreport_every_s = -1.0\n",
            ),
            ("source.v4l.buffers", "[source.v4l]\nbuffers = 0\n"),
        ] {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn pacs_keys_are_checked_by_name() {
        let base = "[pacs]\nenabled = true\nhost = \"10.0.0.5\"\n";
        let err = |extra: &str| {
            format!(
                "{:#}",
                Config::parse(&format!("{base}{extra}")).unwrap_err()
            )
        };
        assert!(err("called_ae = \"WAY_TOO_LONG_AE_TITLE\"\n").contains("pacs.called_ae"));
        assert!(err("retry_cap = 0\n").contains("pacs.retry_cap"));
        assert!(err("io_timeout_s = 0\n").contains("pacs.io_timeout_s"));
        assert!(err("tls = true\n").contains("pacs.tls_ca"));
        assert!(
            err("tls = true\ntls_ca = \"/nonexistent/ca.pem\"\n").contains("/nonexistent/ca.pem")
        );
        assert!(err("tls_cert = \"/x.pem\"\n").contains("go together"));
        assert!(Config::parse(base).is_ok());
        assert!(err("[journal]\nenabled = false\n").contains("pacs needs the journal"));
        let mut p = PacsConfig::default();
        p.set_address("ORTHANC@127.0.0.1:4242").unwrap();
        assert_eq!(p.addr().to_string(), "ORTHANC@127.0.0.1:4242");
        assert!(p.set_address("ORTHANC:4242").is_err());
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../config.example.toml");
        let cfg = Config::parse(text).expect("config.example.toml");
        assert_eq!(cfg.aggregate.window, 16);
        assert_eq!(cfg.source.kind, SourceKind::V4l);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("[aggregate]\nwindwo = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("windwo"), "{err:#}");
    }

    #[test]
    fn pooling_is_named_in_the_file_and_a_misspelling_is_refused() {
        let cfg = Config::parse("[aggregate]\npooling = \"log-odds\"\n").unwrap();
        assert_eq!(cfg.aggregate.pooling, Pooling::LogOdds);
        let cfg = Config::parse("[aggregate]\npooling = \"probability\"\n").unwrap();
        assert_eq!(cfg.aggregate.pooling, Pooling::Probability);
        let err = Config::parse("[aggregate]\npooling = \"logit\"\n").unwrap_err();
        let e = format!("{err:#}");
        assert!(e.contains("logit") && e.contains("log-odds"), "{e}");
    }

    #[test]
    fn ranges_are_checked() {
        let err = Config::parse("[aggregate]\nwindow = 100\n").unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
        let err = Config::parse("[aggregate]\nwindow = 4\nmin_frames = 5\n").unwrap_err();
        assert!(err.to_string().contains("min_frames"), "{err}");
    }
}
