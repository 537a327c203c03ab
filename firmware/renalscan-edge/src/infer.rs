//! The model: a bundle loaded and verified once at start, then one inference per usable
//! frame. Everything the device must agree on with training (labels, input size,
//! normalisation, preprocessing version, operating threshold) comes from the manifest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use model::bundle::{Bundle, TrustedKeys};
use model::int8::{Form, LoadOptions};
use model::Network;
use usimage::{ChannelOrder, Normalization};

use crate::aggregate::MAX_CLASSES;
use crate::config::ModelForm;

/// What the runtime needs to know about the model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub labels: Vec<String>,
    pub threshold: f32,
    pub input_size: u32,
    pub normalization: Normalization,
    pub normal_index: usize,
    pub model_path: PathBuf,
    /// Precision and the key that signed the bundle (verified at load).
    pub trust: String,
    pub load_time: Duration,
}

/// One frame's classification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classified {
    pub probs: [f32; MAX_CLASSES],
    pub classes: usize,
    pub p_abnormal: f32,
    pub class: usize,
    pub confidence: f32,
}

/// The loaded network and its manifest facts.
pub struct Classifier {
    net: Network,
    info: ModelInfo,
    probs_output: usize,
    features_output: Option<usize>,
    /// Keep the last `features` map (for class-activation snapshots).
    keep_features: bool,
    features: Vec<f32>,
    features_shape: Vec<usize>,
}

impl Classifier {
    /// Opens a bundle directory, verifies it against the trusted keys (signature, hashes,
    /// preprocessing version), then loads and optimises the model once.
    /// `decision_cache` remembers which form of an int8 model runs faster on this CPU, so
    /// only the first start after a model update times both.
    pub fn open(
        bundle: &Path,
        trusted_keys: Option<&Path>,
        form: ModelForm,
        decision_cache: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let keys_path = trusted_keys.context(
            "no trusted keys: set model.trusted_keys or pass --trusted-keys (a bundle is only \
             run when its signature checks against a trusted key)",
        )?;
        let keys = TrustedKeys::from_path(keys_path)?;
        let b = Bundle::open(bundle, &keys)?;
        let mut info = check_manifest(&b)?;
        let shape = [1, 3, info.input_size as usize, info.input_size as usize];
        let opts = LoadOptions {
            form: match form {
                ModelForm::Auto => Form::Auto,
                ModelForm::Integer => Form::Integer,
                ModelForm::Float => Form::Float,
            },
            decision_cache: decision_cache.map(Path::to_path_buf),
            ..LoadOptions::default()
        };
        let net = Network::load_with(&info.model_path, &shape, &opts)
            .with_context(|| format!("cannot load the model of bundle {}", bundle.display()))?;
        if let Some(r) = net.form_report() {
            log::info!("int8 model runs as {r}");
            info.trust = format!("{}, {}", info.trust, r.built);
        }
        release_freed_memory();
        Self::with_network(net, info, t0)
    }

    fn with_network(net: Network, mut info: ModelInfo, t0: Instant) -> anyhow::Result<Self> {
        let probs_output = net
            .output_names()
            .iter()
            .position(|n| n == "probs")
            .with_context(|| {
                format!(
                    "model {} has no `probs` output (outputs: {:?})",
                    info.model_path.display(),
                    net.output_names()
                )
            })?;
        info.load_time = t0.elapsed();
        let features_output = net.output_names().iter().position(|n| n == "features");
        let mut c = Self {
            net,
            info,
            probs_output,
            features_output,
            keep_features: false,
            features: Vec::new(),
            features_shape: Vec::new(),
        };
        // One warm-up run: checks the output width and moves tract's first-run costs
        // (buffer allocation) out of the first patient's frame.
        let zeros = vec![0.0f32; c.input_len()];
        let out = c.classify(&zeros).context("warm-up inference failed")?;
        anyhow::ensure!(
            out.classes == c.info.labels.len(),
            "model gives {} probabilities but the manifest lists {} labels",
            out.classes,
            c.info.labels.len()
        );
        Ok(c)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Floats of one input tensor.
    pub fn input_len(&self) -> usize {
        3 * (self.info.input_size as usize).pow(2)
    }

    /// Keep each frame's `features` output for [`Classifier::last_features`]; false when the
    /// model has none.
    pub fn keep_features(&mut self, keep: bool) -> bool {
        self.keep_features = keep && self.features_output.is_some();
        self.keep_features
    }

    /// The `features` map of the last frame and its shape (when kept).
    pub fn last_features(&self) -> Option<(&[f32], &[usize])> {
        (self.keep_features && !self.features.is_empty())
            .then_some((self.features.as_slice(), self.features_shape.as_slice()))
    }

    /// Runs the model on one preprocessed tensor.
    pub fn classify(&mut self, tensor: &[f32]) -> anyhow::Result<Classified> {
        let outputs = self.net.run(tensor)?;
        if let (true, Some(i)) = (self.keep_features, self.features_output) {
            if let Some(f) = outputs.get(i) {
                self.features.clear();
                self.features.extend_from_slice(&f.data);
                self.features_shape.clear();
                self.features_shape.extend_from_slice(&f.shape);
            }
        }
        let probs = &outputs
            .get(self.probs_output)
            .context("model returned fewer outputs than it declares")?
            .data;
        anyhow::ensure!(
            !probs.is_empty() && probs.len() <= MAX_CLASSES,
            "model gives {} probabilities (1..={MAX_CLASSES} supported)",
            probs.len()
        );
        anyhow::ensure!(
            probs.iter().all(|p| p.is_finite()),
            "model output is not finite"
        );
        let mut p = [0.0; MAX_CLASSES];
        p[..probs.len()].copy_from_slice(probs);
        let class = model::top_k(probs, 1)[0];
        let normal = self.info.normal_index.min(probs.len() - 1);
        Ok(Classified {
            probs: p,
            classes: probs.len(),
            p_abnormal: (1.0 - probs[normal]).clamp(0.0, 1.0),
            class,
            confidence: probs[class],
        })
    }
}

/// Loading decodes the ONNX file, may rewrite it (int8 float form) and builds candidate
/// plans: hundreds of MB that are freed once the plan exists. glibc keeps freed heap pages
/// mapped, so without this the steady RSS would carry the load's peak for the whole run.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let before = crate::stats::rss_kib();
        // SAFETY: malloc_trim only returns free heap pages to the kernel; no pointers change.
        unsafe {
            libc::malloc_trim(0);
        }
        log::debug!(
            "malloc_trim after model load: RSS {:?} -> {:?} KiB",
            before,
            crate::stats::rss_kib()
        );
    }
}

fn check_manifest(b: &Bundle) -> anyhow::Result<ModelInfo> {
    let m = b.manifest();
    let shape = &m.input.shape;
    if shape.len() != 4 || shape[1] != 3 || shape[2] != shape[3] || shape[2] == 0 {
        bail!("bundle input shape {shape:?} is not [N, 3, S, S]");
    }
    let normal_index = m
        .labels
        .iter()
        .position(|l| l == "normal")
        .context("bundle labels have no \"normal\" class")?;
    anyhow::ensure!(
        m.labels.len() <= MAX_CLASSES,
        "bundle has {} labels, at most {MAX_CLASSES} are supported",
        m.labels.len()
    );
    let t = m.operating_point.threshold;
    anyhow::ensure!(
        (0.0..=1.0).contains(&t),
        "bundle threshold {t} is not a probability"
    );
    let n = &m.input.normalization;
    let order = match n.order.to_ascii_lowercase().as_str() {
        "bgr" => ChannelOrder::Bgr,
        "rgb" => ChannelOrder::Rgb,
        o => bail!("bundle normalization order {o:?} is neither bgr nor rgb"),
    };
    let three = |v: &[f64], what: &str| -> anyhow::Result<[f32; 3]> {
        anyhow::ensure!(v.len() == 3, "bundle normalization {what} needs 3 values");
        Ok([v[0] as f32, v[1] as f32, v[2] as f32])
    };
    let std = three(&n.std, "std")?;
    anyhow::ensure!(
        std.iter().all(|s| *s > 0.0),
        "bundle normalization std must be positive"
    );
    Ok(ModelInfo {
        name: m.model.name.clone(),
        version: m.model.version.clone(),
        labels: m.labels.clone(),
        threshold: t as f32,
        input_size: shape[2] as u32,
        normalization: Normalization {
            order,
            mean: three(&n.mean, "mean")?,
            std,
        },
        normal_index,
        model_path: b.model_path(),
        trust: format!(
            "{}, signed by {} ({})",
            m.model.precision.as_str(),
            b.signer().key_id(),
            b.signer().name()
        ),
        load_time: Duration::ZERO,
    })
}
