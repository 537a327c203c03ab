//! `renalscan keygen`, `bundle` and `verify`: signed model bundles.
//!
//! The checks and the assembly live in the `bundle` crate, so the device verifies with the
//! very same code and tests sign exactly as releases are signed; this module reads the
//! command line, the eval metrics and the quantizer's report, and reports. `bundle` never
//! signs something `verify` would refuse: it re-opens the finished bundle with the signing
//! key's public half.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bundle::assemble::{self, QuantReport, Release};
use bundle::{
    Bundle, PublicKey, SecretKey, TrustedKeys, CARD_FILE, MANIFEST_FILE, MODEL_FILE, PUBLIC_KEY_EXT,
};
use contract::manifest::{DataKind, Evaluation, Manifest, Precision, SelftestCase};
use tract_onnx::prelude::Framework as _;

/// Arguments of `keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Directory for `<name>.key` (secret, mode 0600) and `<name>.pub`.
    #[arg(long)]
    pub out: PathBuf,
    /// Key name, also the file stem (e.g. the release line and year).
    #[arg(long, default_value = "renalscan-release")]
    pub name: String,
}

/// Kind of training images, stated on the model card.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DataSourceArg {
    /// Generated (phantom) images, no patients.
    Synthetic,
    /// Patient images.
    Clinical,
    /// Both.
    Mixed,
}

/// Model precision override.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PrecisionArg {
    /// Float weights and activations.
    Float32,
    /// Quantized.
    Int8,
}

/// Arguments of `bundle`.
#[derive(clap::Args)]
pub struct BundleArgs {
    /// The ONNX model to ship (float or int8).
    #[arg(long)]
    pub model: PathBuf,
    /// The manifest draft the trainer wrote (`<run>/manifest.toml`). For an int8 model the
    /// float model's draft is fine: `[model]` is rewritten for the file given.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Secret signing key from `renalscan keygen`.
    #[arg(long)]
    pub key: PathBuf,
    /// Bundle directory to create (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// `metrics.json` of `renalscan eval` on the float model.
    #[arg(long)]
    pub metrics_float: Option<PathBuf>,
    /// `metrics.json` of `renalscan eval` on the int8 model.
    #[arg(long)]
    pub metrics_int8: Option<PathBuf>,
    /// Quantizer report (JSON); its top-level scalar values go into `[model.quantization]`.
    #[arg(long)]
    pub quant_report: Option<PathBuf>,
    /// Where the training images came from, when the draft does not say
    /// (`[training.data] source`). Required then: the card must state it.
    #[arg(long, value_enum)]
    pub data_source: Option<DataSourceArg>,
    /// One or two sentences on the training data (generator and profiles, or sites).
    #[arg(long)]
    pub data_description: Option<String>,
    /// Precision of `--model`; detected from its operators and initializers when absent.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Let a site set its own operating threshold in the cart's configuration, within
    /// `LO,HI` (signed into the manifest). Without it the signed threshold stands and a cart
    /// refuses a configuration that changes it.
    #[arg(long, value_name = "LO,HI", value_parser = parse_site_range)]
    pub site_threshold_range: Option<[f64; 2]>,
    /// Ship no signed reference frames (`[[selftest]]`): a cart's selftest then cannot check
    /// its answers. By default four phantom frames go in, with the answers this model gives
    /// them through the device's own stages (both forms of an int8 model).
    #[arg(long)]
    pub no_selftest: bool,
    /// `[release] counter`: with `model.version` it orders this product's releases, and a
    /// cart refuses one older than what it already ran. Default: the build time in Unix
    /// seconds (increasing from build to build).
    #[arg(long, value_parser = argrange::u64_in(1, u64::MAX / 2))]
    pub release_counter: Option<u64>,
    /// `[release] min_runtime`: the oldest renalscan-edge version that may run the bundle.
    /// Default: this renalscan's version (host and device are released together).
    #[arg(long, value_name = "SEMVER", value_parser = parse_semver)]
    pub min_runtime: Option<String>,
    /// Measure the half (f16) form against fp32 on this many fresh phantom frames and record
    /// it (`[[form_agreement]]`): carts with f16 arithmetic may then run that form. At least
    /// 200 frames prove it; 0 records nothing. Slow off ARM (tract's generic f16 kernels).
    #[arg(value_parser = argrange::usize_in(0, 100_000), long, default_value_t = 0)]
    pub half_agreement: usize,
    /// Threads for the agreement measurement [default: the cores this process may use].
    #[arg(value_parser = argrange::usize_in(1, 256), long, default_value_t = super::cores(), hide_default_value = true)]
    pub threads: usize,
}

fn parse_semver(s: &str) -> Result<String, String> {
    semver::Version::parse(s.trim())
        .map(|v| v.to_string())
        .map_err(|e| format!("{s:?} is not a semantic version (MAJOR.MINOR.PATCH): {e}"))
}

/// `LO,HI`: two probabilities, in order.
fn parse_site_range(s: &str) -> Result<[f64; 2], String> {
    let (lo, hi) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?} is not LO,HI (two probabilities, e.g. 0.3,0.6)"))?;
    let p = |v: &str| -> Result<f64, String> {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| (0.0..=1.0).contains(x))
            .ok_or_else(|| format!("{v:?} is not a probability in [0, 1]"))
    };
    let (lo, hi) = (p(lo)?, p(hi)?);
    if lo > hi {
        return Err(format!("LO {lo} is above HI {hi}"));
    }
    Ok([lo, hi])
}

/// Arguments of `verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Bundle directory.
    pub bundle: PathBuf,
    /// A trusted public key file, or a directory of `*.pub` files.
    #[arg(long = "trusted-keys", alias = "pubkey", value_name = "KEY|DIR")]
    pub trusted_keys: PathBuf,
}

/// Writes a new file that must not exist yet, with `mode` on Unix.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {} (refusing to overwrite)", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    if !contract::manifest::is_plain_file_name(&args.name)
        || args.name.contains(char::is_whitespace)
    {
        bail!("--name {:?} must be a plain file stem", args.name);
    }
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let secret_path = args.out.join(format!("{}.key", args.name));
    let public_path = args.out.join(format!("{}.{PUBLIC_KEY_EXT}", args.name));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            bail!(
                "{} exists; refusing to overwrite a key (bundles signed with it would no \
                 longer verify). Choose another --name or --out.",
                p.display()
            );
        }
    }
    let (secret_text, public_text) = bundle::keygen(&args.name)?;
    let public = PublicKey::parse(&public_text, &public_path)?;
    write_new(&secret_path, &secret_text, 0o600)?;
    write_new(&public_path, &public_text, 0o644)?;
    println!(
        "key id   {}\nsecret   {} (mode 0600: keep it offline, never on a device or in git)\n\
         public   {} (copy into each device's trusted keys directory)",
        public.key_id(),
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}

/// int8 when the graph has quantized operators or 8-bit initializers.
fn detect_precision(path: &Path) -> Result<Precision> {
    const QUANT_OPS: &[&str] = &[
        "QLinearConv",
        "QLinearMatMul",
        "QuantizeLinear",
        "DequantizeLinear",
        "ConvInteger",
        "MatMulInteger",
    ];
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable ONNX model: {e}", path.display()))?;
    let Some(graph) = proto.graph else {
        bail!("{}: ONNX model without a graph", path.display());
    };
    let quant_op = graph
        .node
        .iter()
        .any(|n| QUANT_OPS.contains(&n.op_type.as_str()));
    // TensorProto data types 2 = UINT8, 3 = INT8.
    let int8_init = graph
        .initializer
        .iter()
        .any(|t| t.data_type == 2 || t.data_type == 3);
    Ok(if quant_op || int8_init {
        Precision::Int8
    } else {
        Precision::Float32
    })
}

/// `overall` and `per_type` of an `eval` metrics.json, with a note on which images they are.
fn read_metrics(path: &Path, manifest: &Manifest) -> Result<Evaluation> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let overall = v
        .get_mut("overall")
        .map(serde_json::Value::take)
        .with_context(|| {
            format!(
                "{}: no `overall` (not an eval metrics.json?)",
                path.display()
            )
        })?;
    let per_type = v
        .get_mut("per_type")
        .map(serde_json::Value::take)
        .unwrap_or_else(|| serde_json::json!({}));
    let mut e = Evaluation {
        data: None,
        overall: serde_json::from_value(overall)
            .with_context(|| format!("{}: `overall`", path.display()))?,
        per_type: serde_json::from_value(per_type)
            .with_context(|| format!("{}: `per_type`", path.display()))?,
        view_gate: match v.get_mut("view_gate").map(serde_json::Value::take) {
            None | Some(serde_json::Value::Null) => None,
            Some(g) => Some(
                serde_json::from_value(g)
                    .with_context(|| format!("{}: `view_gate`", path.display()))?,
            ),
        },
    };
    let test_total = manifest.split_totals().get("test").copied();
    let mut note = match (e.overall.n, test_total) {
        (Some(n), Some(t)) if n == t => format!(
            "the run's held-out test split ({n} images of patients unseen in training and \
             threshold choice)"
        ),
        (Some(n), Some(t)) => format!(
            "{n} images from `renalscan eval`; NOT the size of the run's test split ({t}): \
             check which images these were"
        ),
        (Some(n), None) => format!("{n} images from `renalscan eval`"),
        (None, _) => "images from `renalscan eval`".to_string(),
    };
    let op = manifest.operating_point.threshold;
    if let Some(t) = e.overall.threshold {
        if (t - op).abs() > 1e-9 {
            note.push_str(&format!(
                "; scored at threshold {t:.4}, not the operating threshold {op:.4}"
            ));
            log::warn!("{}: {note}", path.display());
        }
    }
    e.data = Some(note);
    Ok(e)
}

/// JSON scalar (or array of scalars) as TOML; objects and nulls are left to the report.
fn json_scalar(v: &serde_json::Value) -> Option<toml::Value> {
    match v {
        serde_json::Value::Bool(b) => Some(toml::Value::Boolean(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(toml::Value::Integer)
            .or_else(|| n.as_f64().map(toml::Value::Float)),
        serde_json::Value::String(s) => Some(toml::Value::String(s.clone())),
        serde_json::Value::Array(a) => a
            .iter()
            .map(json_scalar)
            .collect::<Option<Vec<_>>>()
            .map(toml::Value::Array),
        _ => None,
    }
}

/// The quantizer's report: its top-level scalars and its hash.
fn read_quant_report(path: &Path) -> Result<QuantReport> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let values = v
        .as_object()
        .map(|obj| {
            obj.iter()
                .filter_map(|(k, v)| json_scalar(v).map(|t| (k.clone(), t)))
                .collect()
        })
        .unwrap_or_default();
    Ok(QuantReport {
        values,
        sha256: bundle::sha256_hex(text.as_bytes()),
    })
}

/// What the command line adds to the draft.
fn release(
    args: &BundleArgs,
    draft: &Manifest,
    model_sha: &str,
    precision: Precision,
) -> Result<Release> {
    let mut evaluations = Vec::new();
    for (path, key) in [
        (&args.metrics_float, Precision::Float32),
        (&args.metrics_int8, Precision::Int8),
    ] {
        if let Some(path) = path {
            evaluations.push((key, read_metrics(path, draft)?));
        }
    }
    Ok(Release {
        model_sha256: model_sha.to_string(),
        precision,
        data_source: args.data_source.map(|k| match k {
            DataSourceArg::Synthetic => DataKind::Synthetic,
            DataSourceArg::Clinical => DataKind::Clinical,
            DataSourceArg::Mixed => DataKind::Mixed,
        }),
        data_description: args.data_description.clone(),
        quant_report: args
            .quant_report
            .as_deref()
            .map(read_quant_report)
            .transpose()?,
        evaluations,
        site_range: args.site_threshold_range,
        counter: args
            .release_counter
            .unwrap_or_else(bundle::assemble::default_counter),
        min_runtime: Some(
            args.min_runtime
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        ),
    })
}

pub fn make(args: BundleArgs) -> Result<()> {
    let t = Instant::now();
    let key = SecretKey::from_file(&args.key)?;
    let draft = Manifest::draft_from_file(&args.manifest)?;
    let model =
        fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let model_sha = bundle::sha256_hex(&model);
    let precision = match args.precision {
        Some(PrecisionArg::Float32) => Precision::Float32,
        Some(PrecisionArg::Int8) => Precision::Int8,
        None => detect_precision(&args.model)?,
    };
    let r = release(&args, &draft, &model_sha, precision)?;
    let mut manifest = assemble::complete(draft, &r, &args.manifest)?;
    // A draft copied from an earlier bundle may list references of another model.
    manifest.selftest.clear();
    let frames = if args.no_selftest {
        Vec::new()
    } else {
        let (cases, frames) = selftest_references(&model, &manifest, &key)?;
        manifest.selftest = cases;
        frames
    };
    manifest.form_agreement.clear();
    if args.half_agreement > 0 {
        anyhow::ensure!(
            precision == Precision::Int8,
            "--half-agreement measures the half form of an int8 bundle; this one is {}",
            precision.as_str()
        );
        let a = half_agreement(&model, &manifest, &key, args.half_agreement, args.threads)?;
        println!(
            "half form: {a}; {} ({})",
            if a.proven() {
                "proven: carts with f16 arithmetic may run it"
            } else {
                "NOT proven: carts will not run it"
            },
            a.measured_with
        );
        manifest.form_agreement.push(a);
    }
    let b: Bundle = assemble::write(&args.out, &model, manifest, &frames, &key)
        .with_context(|| format!("writing bundle {}", args.out.display()))?;
    for c in &b.manifest().selftest {
        println!(
            "selftest {}: {} p(abnormal) {:.4} +- {:.4}",
            c.file, c.class, c.p_abnormal, c.tolerance
        );
    }
    println!(
        "bundle   {}\nmodel    {} {} ({}), sha256 {}\nsigner   {} ({})\nfiles    {}, {}, {}, \
         {}\ndone in  {:.1} s",
        args.out.display(),
        b.manifest().model.name,
        b.manifest().model.version,
        precision.as_str(),
        model_sha,
        b.signer().key_id(),
        b.signer().name(),
        MODEL_FILE,
        MANIFEST_FILE,
        bundle::SIGNATURE_FILE,
        CARD_FILE,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `model` and `manifest` signed into a scratch bundle (without reference frames), so they
/// can be opened as a cart opens them before the real bundle is written. The folder lives as
/// long as the returned guard.
fn provisional_bundle(
    model: &[u8],
    manifest: &Manifest,
    key: &SecretKey,
) -> Result<(tempfile::TempDir, Bundle)> {
    let tmp = tempfile::tempdir().context("a scratch directory for the provisional bundle")?;
    let mut draft = manifest.clone();
    draft.selftest.clear();
    let b = assemble::write(&tmp.path().join("b"), model, draft, &[], key)?;
    Ok((tmp, b))
}

/// The self-test references of a bundle: phantom frames with the answers this model gives
/// them through the device's own stages (`renalscan_edge::selftest::answer`), on every form
/// a cart may choose. A frame the forms disagree on (class) is left out; the tolerance is
/// twice the forms' spread plus a margin, at least 0.02.
fn selftest_references(
    model: &[u8],
    manifest: &Manifest,
    key: &SecretKey,
) -> Result<(Vec<SelftestCase>, Vec<Vec<u8>>)> {
    use renalscan_edge::config::ModelForm;
    use renalscan_edge::infer::Classifier;
    let (_tmp, provisional) = provisional_bundle(model, manifest, key)?;
    let forms: &[ModelForm] = if manifest.model.precision == Precision::Int8 {
        &[ModelForm::Integer, ModelForm::Float]
    } else {
        &[ModelForm::Auto]
    };
    let mut classifiers = forms
        .iter()
        .map(|f| Classifier::from_bundle(provisional.clone(), *f, None, Instant::now()))
        .collect::<Result<Vec<_>>>()?;
    let labels = classifiers[0].info().labels.clone();
    let (mut cases, mut frames) = (Vec::new(), Vec::new());
    for (file, png) in renalscan_edge::selftest::reference_frames()? {
        let answers: Result<Vec<_>> = classifiers
            .iter_mut()
            .map(|c| renalscan_edge::selftest::answer(c, &png))
            .collect();
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                log::warn!("selftest frame {file} left out: {e:#}");
                continue;
            }
        };
        if answers.iter().any(|a| a.class != answers[0].class) {
            log::warn!("selftest frame {file} left out: the int8 forms disagree on its class");
            continue;
        }
        let ps: Vec<f64> = answers.iter().map(|a| f64::from(a.p_abnormal)).collect();
        let mean = ps.iter().sum::<f64>() / ps.len() as f64;
        let spread = ps.iter().map(|p| (p - mean).abs()).fold(0.0, f64::max);
        cases.push(SelftestCase {
            file,
            sha256: bundle::sha256_hex(&png),
            class: labels[answers[0].class].clone(),
            p_abnormal: mean,
            tolerance: (2.0 * spread + 0.01).max(0.02),
        });
        frames.push(png);
    }
    if cases.is_empty() {
        log::warn!(
            "no reference frame gave the same class on every form of this model (a weak or \
             undertrained model): the bundle ships without [[selftest]] references, and a \
             cart's selftest cannot check its answers"
        );
    }
    Ok((cases, frames))
}

/// The half form against the fp32 execution (float form) of the same int8 model on `n`
/// fresh phantom frames through the device's stages: how often the decision at the
/// operating threshold is the same, and the largest p(abnormal) difference.
fn half_agreement(
    model: &[u8],
    manifest: &Manifest,
    key: &SecretKey,
    n: usize,
    threads: usize,
) -> Result<contract::manifest::FormAgreement> {
    use renalscan_edge::config::ModelForm;
    use renalscan_edge::infer::Classifier;
    use renalscan_edge::selftest::{answer_on, fresh_frames};
    let (_tmp, provisional) = provisional_bundle(model, manifest, key)?;
    let fp32 =
        Classifier::from_bundle(provisional.clone(), ModelForm::Float, None, Instant::now())?;
    let half = Classifier::from_bundle(provisional, ModelForm::Half, None, Instant::now())?;
    let frames = fresh_frames(n, 0x5EED_0000)?;
    let threshold = manifest.operating_point.threshold as f32;
    let bar = progress::Progress::counted("half vs fp32", n as u64, "frames");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Option<(bool, f32)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.clamp(1, n.max(1)))
            .map(|_| {
                let (fw, hw) = (fp32.worker(), half.worker());
                let (frames, next, bar, fp32, half) = (&frames, &next, &bar, &fp32, &half);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((name, png)) = frames.get(i) else {
                            return out;
                        };
                        let r = (|| -> Result<Option<(bool, f32)>> {
                            let a = match answer_on(fp32, &fw, png) {
                                Ok(a) => a,
                                Err(e) => {
                                    log::warn!("{name} left out: {e:#}");
                                    return Ok(None);
                                }
                            };
                            let b = answer_on(half, &hw, png)?;
                            Ok(Some((
                                (a.p_abnormal >= threshold) == (b.p_abnormal >= threshold),
                                (a.p_abnormal - b.p_abnormal).abs(),
                            )))
                        })();
                        bar.inc(1);
                        out.push(r);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    bar.finish();
    let mut a = contract::manifest::FormAgreement {
        form: contract::manifest::FormAgreement::HALF.into(),
        images: 0,
        same_decision: 0,
        max_dp: 0.0,
        measured_with: format!(
            "{}; {}",
            half.info().form.clone().unwrap_or_default(),
            renalscan_edge::selftest::cpu_description()
        ),
    };
    for r in results {
        if let Some((same, dp)) = r? {
            a.images += 1;
            a.same_decision += u32::from(same);
            a.max_dp = a.max_dp.max(f64::from(dp));
        }
    }
    anyhow::ensure!(
        a.images > 0,
        "no fresh phantom frame got through the device's gates: cannot measure the half form"
    );
    Ok(a)
}

pub fn verify(args: VerifyArgs) -> Result<()> {
    let keys = TrustedKeys::from_path(&args.trusted_keys)?;
    let t = Instant::now();
    let b = Bundle::open(&args.bundle, &keys)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let m = b.manifest();
    let size = b.model_bytes().len();
    println!(
        "bundle      {} OK\nsigner      {} ({})\nmodel       {} {} ({}), {} {:.1} MB, sha256 {} OK",
        args.bundle.display(),
        b.signer().key_id(),
        b.signer().name(),
        m.model.name,
        m.model.version,
        m.model.precision.as_str(),
        m.model.file,
        size as f64 / 1e6,
        m.model.sha256
    );
    if let Some(card) = &m.card {
        println!("card        {} sha256 OK", card.file);
    }
    match (&m.release, m.release_version()) {
        (Some(r), Some(v)) => println!(
            "release     {v} for {}{}",
            r.product,
            r.min_runtime
                .as_deref()
                .map(|m| format!(", runtime >= {m}"))
                .unwrap_or_default()
        ),
        _ => println!("release     none: carts refuse it (rebuild with `renalscan bundle`)"),
    }
    for a in &m.form_agreement {
        println!(
            "form        {}: {a}: {}",
            a.form,
            if a.proven() {
                "proven"
            } else {
                "not proven (carts will not run it)"
            }
        );
    }
    println!(
        "preprocess  usimage v{} (this build implements v{})\nthreshold   {:.4} on p(abnormal)\n\
         warning     {}\nverified in {ms:.0} ms (signature, manifest, sha256 of every pinned file)",
        m.input.usimage_preprocess_version,
        usimage::PREPROCESS_VERSION,
        m.operating_point.threshold,
        m.intended_use.warning
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> BundleArgs {
        BundleArgs {
            model: dir.join("m.onnx"),
            manifest: dir.join("draft.toml"),
            key: dir.join("k.key"),
            out: dir.join("out"),
            metrics_float: None,
            metrics_int8: None,
            quant_report: None,
            data_source: Some(DataSourceArg::Synthetic),
            data_description: None,
            precision: None,
            site_threshold_range: None,
            no_selftest: false,
            release_counter: Some(5),
            min_runtime: None,
            half_agreement: 0,
            threads: 1,
        }
    }

    #[test]
    fn site_ranges_are_two_ordered_probabilities() {
        assert_eq!(parse_site_range("0.3,0.6"), Ok([0.3, 0.6]));
        assert_eq!(parse_site_range(" 0.3 , 0.6 "), Ok([0.3, 0.6]));
        for bad in ["0.6,0.3", "0.3", "0.3,1.5", "-0.1,0.5", "a,b", "nan,0.5"] {
            assert!(parse_site_range(bad).is_err(), "{bad}");
        }
    }

    fn draft() -> Manifest {
        let text = testkit::manifests::sample(&"aa".repeat(32)).replace(
            "[training.data]\nsource = \"synthetic\"\ndescription = \"physics phantom\"\n",
            "",
        );
        Manifest::parse_draft(&text, Path::new("draft.toml")).unwrap()
    }

    #[test]
    fn metrics_and_quant_report_reach_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        let metrics = dir.path().join("metrics.json");
        fs::write(
            &metrics,
            r#"{"overall": {"n": 85, "auc": 0.9, "auc_ci": [0.8, 1.0], "accuracy": 0.8,
                "sensitivity": 1.0, "specificity": 0.5, "threshold": 0.3},
                "per_type": {"stone": {"n": 2, "accuracy": 0.8, "auc": 0.9}}}"#,
        )
        .unwrap();
        a.metrics_int8 = Some(metrics);
        let report = dir.path().join("q.json");
        fs::write(
            &report,
            r#"{"calibrator": "minmax", "gptq_images": 128, "nested": {"x": 1}}"#,
        )
        .unwrap();
        a.quant_report = Some(report);
        let r = release(&a, &draft(), &"bb".repeat(32), Precision::Int8).unwrap();
        let m = assemble::complete(draft(), &r, Path::new("draft.toml")).unwrap();
        assert_eq!(m.model.sha256, "bb".repeat(32));
        assert_eq!(m.model.precision, Precision::Int8);
        let q = m.model.quantization.as_ref().unwrap();
        assert_eq!(
            q["float_model_sha256"].as_str(),
            Some("aa".repeat(32).as_str())
        );
        assert_eq!(q["calibrator"].as_str(), Some("minmax"));
        assert_eq!(q["gptq_images"].as_integer(), Some(128));
        assert!(!q.contains_key("nested"));
        assert_eq!(
            m.training.data.as_ref().unwrap().source,
            DataKind::Synthetic
        );
        let e = &m.evaluation["int8"];
        assert_eq!(e.overall.auc, 0.9);
        assert!(
            e.data.as_ref().unwrap().contains("held-out test split"),
            "{:?}",
            e.data
        );
        // Scored at another threshold: said so.
        assert!(e
            .data
            .as_ref()
            .unwrap()
            .contains("not the operating threshold"));
    }
}
