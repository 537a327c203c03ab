//! `renalscan keygen`, `bundle` and `verify`: signed model bundles.
//!
//! The checks live in `model::bundle` so the device runs the very same code; this module only
//! assembles a bundle from a training run's draft and reports. `bundle` never signs something
//! `verify` would refuse: it re-opens the finished bundle with the signing key's public half.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use model::bundle::{
    self, Bundle, PublicKey, SecretKey, TrustedKeys, CARD_FILE, MANIFEST_FILE, MODEL_FILE,
    PUBLIC_KEY_EXT,
};
use model::manifest::{Evaluation, Manifest, Precision};
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
}

/// Arguments of `verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Bundle directory.
    pub bundle: PathBuf,
    /// A trusted public key file, or a directory of `*.pub` files.
    #[arg(long)]
    pub pubkey: PathBuf,
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
    if !model::manifest::is_plain_file_name(&args.name) || args.name.contains(char::is_whitespace) {
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
fn read_metrics(path: &Path, manifest: &toml::Table) -> Result<Evaluation> {
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
    };
    let test_total: Option<usize> = manifest
        .get("training")
        .and_then(|t| t.get("counts"))
        .and_then(|c| c.get("test"))
        .and_then(|t| t.as_table())
        .map(|t| {
            t.values()
                .filter_map(|n| n.as_integer())
                .map(|n| usize::try_from(n).unwrap_or(0))
                .sum()
        });
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
    let op = manifest
        .get("operating_point")
        .and_then(|o| o.get("threshold"))
        .and_then(|t| t.as_float());
    if let (Some(t), Some(op)) = (e.overall.threshold, op) {
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

fn table_mut<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let entry = t
        .entry(key.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    match entry {
        toml::Value::Table(t) => t,
        // Replaced by a table just above.
        _ => unreachable!("entry is a table"),
    }
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

/// The draft completed for this model: `[model]`, data source, metrics, quantization.
fn complete_manifest(
    args: &BundleArgs,
    draft: &mut toml::Table,
    model_sha: &str,
    precision: Precision,
) -> Result<()> {
    let draft_sha = draft
        .get("model")
        .and_then(|m| m.get("sha256"))
        .and_then(|s| s.as_str())
        .map(str::to_string);
    {
        let m = table_mut(draft, "model");
        if let Some(p) = m.get("precision").and_then(|p| p.as_str()) {
            if p != precision.as_str() {
                log::warn!(
                    "the draft says precision {p}, the model is {}; using {}",
                    precision.as_str(),
                    precision.as_str()
                );
            }
        }
        m.insert("file".into(), MODEL_FILE.into());
        m.insert("sha256".into(), model_sha.into());
        m.insert("precision".into(), precision.as_str().into());
    }
    match (precision, draft_sha.as_deref()) {
        (_, Some(d)) if d == model_sha => {}
        (Precision::Float32, Some(d)) => bail!(
            "{} describes a model with sha256 {d}, but {} has sha256 {model_sha}: its \
             threshold and metrics belong to another model; use the draft written beside \
             this model",
            args.manifest.display(),
            args.model.display()
        ),
        (Precision::Int8, d) => {
            // Quantized from the draft's float model: threshold, calibration and validation
            // figures are the float model's; say so.
            let q = table_mut(table_mut(draft, "model"), "quantization");
            if let Some(d) = d {
                q.insert("float_model_sha256".into(), d.into());
            }
            q.insert(
                "operating_point_from".into(),
                "the float model's validation split".into(),
            );
        }
        (Precision::Float32, None) => {}
    }
    if let Some(path) = &args.quant_report {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let q = table_mut(table_mut(draft, "model"), "quantization");
        if let Some(obj) = v.as_object() {
            for (k, v) in obj {
                if let Some(t) = json_scalar(v) {
                    q.insert(k.clone(), t);
                }
            }
        }
        q.insert(
            "report_sha256".into(),
            bundle::sha256_hex(text.as_bytes()).into(),
        );
    }
    {
        let data = table_mut(table_mut(draft, "training"), "data");
        if let Some(kind) = args.data_source {
            if let Some(old) = data.get("source").and_then(|s| s.as_str()) {
                log::warn!("--data-source overrides the draft's training.data.source = {old}");
            }
            let kind = match kind {
                DataSourceArg::Synthetic => "synthetic",
                DataSourceArg::Clinical => "clinical",
                DataSourceArg::Mixed => "mixed",
            };
            data.insert("source".into(), kind.into());
        }
        if let Some(d) = &args.data_description {
            data.insert("description".into(), d.clone().into());
        }
        if !data.contains_key("source") {
            bail!(
                "{} does not say where the training images came from; pass --data-source \
                 synthetic|clinical|mixed (and --data-description): the model card must \
                 state it",
                args.manifest.display()
            );
        }
    }
    for (path, key) in [
        (&args.metrics_float, Precision::Float32),
        (&args.metrics_int8, Precision::Int8),
    ] {
        if let Some(path) = path {
            let e = read_metrics(path, draft)?;
            let value = toml::Value::try_from(&e).context("metrics as TOML")?;
            table_mut(draft, "evaluation").insert(key.as_str().into(), value);
        }
    }
    Ok(())
}

pub fn make(args: BundleArgs) -> Result<()> {
    let t = Instant::now();
    let key = SecretKey::from_file(&args.key)?;
    let draft_text = fs::read_to_string(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))?;
    let mut table: toml::Table = draft_text
        .parse()
        .with_context(|| format!("parsing {}", args.manifest.display()))?;
    if args.out.exists()
        && fs::read_dir(&args.out)
            .with_context(|| format!("reading {}", args.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty; give a new directory",
            args.out.display()
        );
    }
    let model_sha = bundle::sha256_file(&args.model)?;
    let precision = match args.precision {
        Some(PrecisionArg::Float32) => Precision::Float32,
        Some(PrecisionArg::Int8) => Precision::Int8,
        None => detect_precision(&args.model)?,
    };
    complete_manifest(&args, &mut table, &model_sha, precision)?;
    // Everything the card shows must parse before anything is written.
    let manifest_path = args.out.join(MANIFEST_FILE);
    let manifest = Manifest::parse(&toml::to_string(&table)?, &manifest_path)?;

    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let model_dst = args.out.join(MODEL_FILE);
    fs::copy(&args.model, &model_dst).with_context(|| {
        format!(
            "copying {} to {}",
            args.model.display(),
            model_dst.display()
        )
    })?;
    let card = model::card::render(&manifest, key.public().key_id());
    let card_path = args.out.join(CARD_FILE);
    fs::write(&card_path, &card).with_context(|| format!("writing {}", card_path.display()))?;
    let mut pin = toml::Table::new();
    pin.insert("file".into(), CARD_FILE.into());
    pin.insert("sha256".into(), bundle::sha256_hex(card.as_bytes()).into());
    table.insert("card".into(), toml::Value::Table(pin));
    let text = format!(
        "# renalscan model bundle manifest, signed by manifest.sig: any edit breaks the \
         signature.\n{}",
        toml::to_string(&table)?
    );
    fs::write(&manifest_path, text)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    let signer = bundle::sign_bundle(&args.out, &key)?;
    // Never hand out a bundle the device would refuse.
    let b = Bundle::open(&args.out, &TrustedKeys::new(vec![signer]))
        .context("the bundle just written does not verify")?;
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

pub fn verify(args: VerifyArgs) -> Result<()> {
    let keys = TrustedKeys::from_path(&args.pubkey)?;
    let t = Instant::now();
    let b = Bundle::open(&args.bundle, &keys)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let m = b.manifest();
    let size = fs::metadata(b.model_path()).map(|m| m.len()).unwrap_or(0);
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
            data_source: None,
            data_description: None,
            precision: None,
        }
    }

    const DRAFT: &str = r#"labels = ["normal", "stone"]
[model]
name = "m"
version = "1"
file = "model.onnx"
sha256 = "aaaa"
[training.counts.test]
normal = 3
stone = 2
[operating_point]
threshold = 0.3
"#;

    #[test]
    fn float_draft_for_another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t: toml::Table = DRAFT.parse().unwrap();
        let mut a = args(dir.path());
        a.data_source = Some(DataSourceArg::Synthetic);
        let err = complete_manifest(&a, &mut t, "bbbb", Precision::Float32).unwrap_err();
        assert!(err.to_string().contains("another model"), "{err}");
    }

    #[test]
    fn int8_inherits_the_float_draft_and_data_source_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        let mut t: toml::Table = DRAFT.parse().unwrap();
        let err = complete_manifest(&a, &mut t, "bbbb", Precision::Int8).unwrap_err();
        assert!(err.to_string().contains("--data-source"), "{err}");

        a.data_source = Some(DataSourceArg::Synthetic);
        let metrics = dir.path().join("metrics.json");
        fs::write(
            &metrics,
            r#"{"overall": {"n": 5, "auc": 0.9, "auc_ci": [0.8, 1.0], "accuracy": 0.8,
                "sensitivity": 1.0, "specificity": 0.5, "threshold": 0.3},
                "per_type": {"stone": {"n": 2, "accuracy": 0.8, "auc": 0.9}}}"#,
        )
        .unwrap();
        a.metrics_int8 = Some(metrics);
        let mut t: toml::Table = DRAFT.parse().unwrap();
        complete_manifest(&a, &mut t, "bbbb", Precision::Int8).unwrap();
        let m = &t["model"];
        assert_eq!(m["sha256"].as_str(), Some("bbbb"));
        assert_eq!(m["precision"].as_str(), Some("int8"));
        assert_eq!(
            m["quantization"]["float_model_sha256"].as_str(),
            Some("aaaa")
        );
        assert_eq!(t["training"]["data"]["source"].as_str(), Some("synthetic"));
        let e = &t["evaluation"]["int8"];
        assert_eq!(e["overall"]["auc"].as_float(), Some(0.9));
        assert!(e["data"].as_str().unwrap().contains("held-out test split"));
    }
}
