//! The model: a bundle verified once at start, its network built from the very bytes that
//! were verified, then one inference per usable frame. Everything the device must agree on
//! with training (labels, input size, normalisation, preprocessing version, operating
//! threshold) comes from the signed manifest (`contract::Manifest`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bundle::policy::{Admission, Policy};
use bundle::{Bundle, TrustedKeys};
use contract::manifest::{ChannelOrder as ManifestOrder, Manifest};
use contract::Taxonomy;
use model::cam::HeadWeights;
use model::int8::{Form, LoadOptions};
use model::Network;
use usimage::{ChannelOrder, Normalization};

use crate::aggregate::MAX_CLASSES;
use crate::config::ModelForm;

/// The output the screening probabilities come from (and the CAM head feeds).
pub const PROBS: &str = "probs";
/// The last feature map, for class-activation maps.
pub const FEATURES: &str = "features";

/// What the runtime needs to know about the model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub labels: Vec<String>,
    pub taxonomy: Taxonomy,
    pub threshold: f32,
    pub input_size: u32,
    pub normalization: Normalization,
    pub normal_index: usize,
    /// Where the verified model was read from (messages only).
    pub model_origin: PathBuf,
    /// The signed manifest, as verified.
    pub manifest: Manifest,
    /// Key id of the signer.
    pub signer: String,
    /// sha256 of the signed manifest bytes: the bundle's identity.
    pub bundle_sha256: String,
    /// Precision and the key that signed the bundle (verified at load).
    pub trust: String,
    pub load_time: Duration,
    /// The bundle's self-test frames (`[[selftest]]` of the manifest), as verified.
    pub selftest_frames: Arc<Vec<Vec<u8>>>,
    /// Which form of an int8 model runs and why, with the kernels tract picked.
    pub form: Option<String>,
    /// The bundle's release (`model.version` and counter), when the manifest has one.
    pub release: String,
    /// The recorded downgrade override this bundle runs under, if any.
    pub downgrade_override: Option<String>,
}

/// One frame's classification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classified {
    pub probs: [f32; MAX_CLASSES],
    pub classes: usize,
    pub p_abnormal: f32,
    pub class: usize,
    pub confidence: f32,
    /// The view gate's verdict, when the bundle has one.
    pub view: Option<ViewCheck>,
}

/// Is it a kidney? Both signals of the bundle's view gate for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewCheck {
    /// The learned head's p(kidney).
    pub p_kidney: f32,
    /// The out-of-distribution score (about 1 for a typical training kidney).
    pub ood: f32,
    /// p(kidney) is below the signed threshold.
    pub learned_fired: bool,
    /// The OOD score is above the signed threshold.
    pub ood_fired: bool,
}

impl ViewCheck {
    /// Either signal says no kidney.
    pub fn no_kidney(&self) -> bool {
        self.learned_fired || self.ood_fired
    }

    /// Which signal fired: `learned`, `ood` or `both` (`None` when neither did).
    pub fn signal(&self) -> Option<&'static str> {
        match (self.learned_fired, self.ood_fired) {
            (true, true) => Some("both"),
            (true, false) => Some("learned"),
            (false, true) => Some("ood"),
            (false, false) => None,
        }
    }
}

/// The bundle's view gate as the runtime applies it.
#[derive(Debug, Clone, PartialEq)]
struct GateOutputs {
    kidney: usize,
    ood: usize,
    kidney_threshold: f32,
    ood_threshold: f32,
}

impl Classified {
    /// The probabilities, one per label.
    pub fn probs(&self) -> &[f32] {
        &self.probs[..self.classes]
    }
}

/// Opens and verifies a bundle (signature, signer not revoked, hashes, preprocessing), then
/// applies the release policy of this runtime: one path for `run`, `selftest` and `version`.
pub fn open_admitted(
    bundle: &Path,
    trusted_keys: Option<&Path>,
    floor_file: Option<&Path>,
) -> anyhow::Result<(Bundle, Admission)> {
    let keys_path = trusted_keys.context(
        "no trusted keys: set model.trusted_keys or pass --trusted-keys (a bundle is only \
         run when its signature checks against a trusted key)",
    )?;
    let keys = TrustedKeys::from_path(keys_path)?;
    let b = Bundle::open(bundle, &keys)?;
    let policy = Policy::new(
        crate::trace::RUNTIME_VERSION,
        floor_file.map(Path::to_path_buf),
    );
    let admission = policy.admit(b.dir(), b.manifest(), b.manifest_sha256())?;
    Ok((b, admission))
}

/// The loaded network and its manifest facts.
pub struct Classifier {
    core: Arc<Core>,
    features: Features,
}

/// What an inference needs, shared read-only by the pipeline and its inference workers
/// (tract runs one plan from several threads, each on its own state).
struct Core {
    net: Network,
    info: ModelInfo,
    probs_output: usize,
    features_output: Option<usize>,
    gate: Option<GateOutputs>,
}

/// The `features` map of one frame (models that have one), for its class-activation map.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl Features {
    /// The map and its shape, when the model gave one.
    pub fn get(&self) -> Option<(&[f32], &[usize])> {
        (!self.data.is_empty()).then_some((self.data.as_slice(), self.shape.as_slice()))
    }
}

/// A handle for an inference worker thread: classifies frames with the pipeline's model.
#[derive(Clone)]
pub struct InferWorker {
    core: Arc<Core>,
}

impl InferWorker {
    /// Runs the model on one preprocessed tensor; the `features` map goes to `features`.
    pub fn classify(&self, tensor: &[f32], features: &mut Features) -> anyhow::Result<Classified> {
        self.core.classify(tensor, features)
    }
}

impl Classifier {
    /// Opens a bundle directory, verifies it against the trusted keys (signature, hashes,
    /// preprocessing version), then builds the network from the verified bytes.
    /// `decision_cache` remembers which form of an int8 model runs faster on this CPU, so
    /// only the first start after a model update times both.
    pub fn open(
        bundle: &Path,
        trusted_keys: Option<&Path>,
        form: ModelForm,
        decision_cache: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::open_admitted(bundle, trusted_keys, None, form, decision_cache)
    }

    /// [`Classifier::open`] under the cart's release policy: product, runtime version and,
    /// with a `floor_file`, no older bundle than the cart has proven good unless a recorded
    /// override names this one (see [`open_admitted`]).
    pub fn open_admitted(
        bundle: &Path,
        trusted_keys: Option<&Path>,
        floor_file: Option<&Path>,
        form: ModelForm,
        decision_cache: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let (b, admission) = open_admitted(bundle, trusted_keys, floor_file)?;
        let mut c = Self::from_bundle(b, form, decision_cache, t0)?;
        if let Admission::Override(o) = admission {
            c.core_mut()?.info.downgrade_override = Some(format!("{} ({})", o.reason, o.at));
        }
        Ok(c)
    }

    /// Builds the classifier from a verified bundle: the network comes from the bytes the
    /// bundle check hashed, never from the file again, so a file swapped after the check is
    /// not what runs. `t0` is when loading began (for the load time).
    pub fn from_bundle(
        mut b: Bundle,
        form: ModelForm,
        decision_cache: Option<&Path>,
        t0: Instant,
    ) -> anyhow::Result<Self> {
        let mut info = check_manifest(&b)?;
        let shape = [1, 3, info.input_size as usize, info.input_size as usize];
        let opts = LoadOptions {
            form: match form {
                ModelForm::Auto => Form::Auto,
                ModelForm::Integer => Form::Integer,
                ModelForm::Float => Form::Float,
                ModelForm::Half => Form::Half,
            },
            half_proven: b.manifest().half_proven().is_some(),
            decision_cache: decision_cache.map(Path::to_path_buf),
            model_id: Some(b.manifest().model.sha256.clone()),
            cam_head: Some(PROBS.into()),
            ..LoadOptions::default()
        };
        keep_large_allocations_on_the_heap();
        let bytes = b.take_model_bytes();
        let net = Network::from_bytes(&bytes, &info.model_origin, &shape, &opts)
            .with_context(|| format!("cannot load the model of bundle {}", b.dir().display()))?;
        drop(bytes);
        if let Some(r) = net.form_report() {
            log::info!("int8 model runs as {r}");
            info.trust = format!("{}, {}", info.trust, r.built);
            info.form = Some(r.to_string());
        }
        release_freed_memory();
        Self::with_network(net, info, t0)
    }

    fn with_network(net: Network, mut info: ModelInfo, t0: Instant) -> anyhow::Result<Self> {
        if let Some(c) = &info.manifest.site_calibration {
            log::info!(
                "site calibration {:?}: temperature {:.3}, threshold {:.4} (the signed original \
                 had {:.4}), fitted on {} normal and {} abnormal exams",
                c.site,
                c.temperature,
                info.threshold,
                c.from_threshold,
                c.n_normal,
                c.n_abnormal
            );
        }
        let probs_output = net
            .output_names()
            .iter()
            .position(|n| n == PROBS)
            .with_context(|| {
                format!(
                    "model {} has no `{PROBS}` output (outputs: {:?})",
                    info.model_origin.display(),
                    net.output_names()
                )
            })?;
        info.load_time = t0.elapsed();
        let features_output = net.output_names().iter().position(|n| n == FEATURES);
        let gate = match &info.manifest.view_gate {
            None => {
                log::warn!(
                    "bundle {} {} has no view gate: every frame with anatomy is classified, \
                     kidney or not",
                    info.name,
                    info.version
                );
                None
            }
            Some(g) => {
                let find = |name: &str| {
                    net.output_names()
                        .iter()
                        .position(|n| n == name)
                        .with_context(|| {
                            format!(
                                "the manifest's view gate reads output `{name}`, which model {} \
                                 lacks (outputs: {:?})",
                                info.model_origin.display(),
                                net.output_names()
                            )
                        })
                };
                Some(GateOutputs {
                    kidney: find(&g.kidney_output)?,
                    ood: find(&g.ood_output)?,
                    kidney_threshold: g.kidney_threshold as f32,
                    ood_threshold: g.ood_threshold as f32,
                })
            }
        };
        let mut c = Self {
            core: Arc::new(Core {
                net,
                info,
                probs_output,
                features_output,
                gate,
            }),
            features: Features::default(),
        };
        // One warm-up run: checks the output width and moves tract's first-run costs
        // (buffer allocation) out of the first patient's frame.
        let zeros = vec![0.0f32; c.input_len()];
        let out = c.classify(&zeros).context("warm-up inference failed")?;
        anyhow::ensure!(
            out.classes == c.info().labels.len(),
            "model gives {} probabilities but the manifest lists {} labels",
            out.classes,
            c.info().labels.len()
        );
        Ok(c)
    }

    /// The core, while no worker shares it (set-up only).
    fn core_mut(&mut self) -> anyhow::Result<&mut Core> {
        Arc::get_mut(&mut self.core)
            .context("the model is shared with running inference workers: stop them first")
    }

    pub fn info(&self) -> &ModelInfo {
        &self.core.info
    }

    /// Intra-op threads of each inference (tract's matmul tiles, packing, element-wise ops).
    /// One thread means none are started. Only before any worker shares the model.
    pub fn set_intra_op_threads(&mut self, threads: usize) -> anyhow::Result<()> {
        let core = self.core_mut()?;
        core.net.set_threads(threads)?;
        Ok(())
    }

    /// Intra-op threads of each inference.
    pub fn intra_op_threads(&self) -> usize {
        self.core.net.threads()
    }

    /// A handle for an inference worker thread.
    pub fn worker(&self) -> InferWorker {
        InferWorker {
            core: Arc::clone(&self.core),
        }
    }

    /// True when the bundle carries a view gate.
    pub fn has_view_gate(&self) -> bool {
        self.core.gate.is_some()
    }

    /// Floats of one input tensor.
    pub fn input_len(&self) -> usize {
        3 * (self.info().input_size as usize).pow(2)
    }

    /// The head for class-activation maps, or why there is none (no `features` output, or no
    /// head that maps onto it: a linear head on pooled features or a per-cell head).
    pub fn cam_head(&self) -> Result<&HeadWeights, String> {
        if self.core.features_output.is_none() {
            return Err(format!(
                "model {} has no `{FEATURES}` output",
                self.info().model_origin.display()
            ));
        }
        match self.core.net.head() {
            Some(Ok(h)) => Ok(h),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the head was not read at load".into()),
        }
    }

    /// The `features` map of the last frame and its shape (models that have one).
    pub fn last_features(&self) -> Option<(&[f32], &[usize])> {
        self.features.get()
    }

    /// Runs the model on one preprocessed tensor.
    pub fn classify(&mut self, tensor: &[f32]) -> anyhow::Result<Classified> {
        self.core.classify(tensor, &mut self.features)
    }
}

impl Core {
    fn classify(&self, tensor: &[f32], features: &mut Features) -> anyhow::Result<Classified> {
        let outputs = self.net.run(tensor)?;
        if let Some(f) = self.features_output.and_then(|i| outputs.get(i)) {
            features.data.clear();
            features.data.extend_from_slice(&f.data);
            features.shape.clear();
            features.shape.extend_from_slice(&f.shape);
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
        // A site-calibrated bundle (`renalscan calibrate`) rescales every output.
        if let Some(site) = &self.info.manifest.site_calibration {
            site.apply(&mut p[..probs.len()]);
        }
        let probs = &p[..probs.len()];
        let class = model::top_k(probs, 1)[0];
        let view = match &self.gate {
            None => None,
            Some(g) => {
                let scalar = |i: usize, what: &str| -> anyhow::Result<f32> {
                    let v = outputs
                        .get(i)
                        .and_then(|o| o.data.first().copied())
                        .with_context(|| format!("model returned no `{what}` value"))?;
                    anyhow::ensure!(v.is_finite(), "model's `{what}` output is not finite");
                    Ok(v)
                };
                let p_kidney = scalar(g.kidney, "kidney")?;
                let ood = scalar(g.ood, "ood")?;
                Some(ViewCheck {
                    p_kidney,
                    ood,
                    learned_fired: p_kidney < g.kidney_threshold,
                    ood_fired: ood > g.ood_threshold,
                })
            }
        };
        Ok(Classified {
            probs: p,
            classes: probs.len(),
            p_abnormal: self.info.taxonomy.p_abnormal(probs),
            class,
            confidence: probs[class],
            view,
        })
    }
}

/// Keeps allocations up to 32 MiB on the heap and freed heap pages mapped up to 64 MiB,
/// from the start. glibc's adaptive thresholds climb towards these (32 MiB is their ceiling
/// on 64-bit) only as large blocks are freed: during the load every weight tensor of its
/// copies (25 MB int8, 100 MB float) is mapped fresh and page-faulted in, a tenth of the
/// load's time (measured: load 364-386 ms -> 329-363 ms on ResNet-50). The load's peak is
/// handed back by [`release_freed_memory`]; steady RSS measured no higher (2 workers:
/// 232-234 MiB, 237-240 before). Fixed thresholds also end glibc's adaptation, which a
/// steady state that allocates the same blocks every frame does not need.
#[allow(unsafe_code)] // mallopt: glibc has no safe interface for it.
fn keep_large_allocations_on_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator thresholds; it touches no allocation.
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20) == 1
            };
            if !ok {
                log::debug!("mallopt refused the allocator thresholds: load unchanged");
            }
        });
    }
}

/// Loading decodes the ONNX file, may rewrite it (int8 float form) and builds candidate
/// plans: hundreds of MB that are freed once the plan exists. glibc keeps freed heap pages
/// mapped, so without this the steady RSS would carry the load's peak for the whole run.
#[allow(unsafe_code)] // malloc_trim: glibc has no safe interface for it.
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

/// The runtime's view of a verified manifest. The manifest type has already checked the
/// labels, shape, threshold and normalisation; here they become the pipeline's types.
fn check_manifest(b: &Bundle) -> anyhow::Result<ModelInfo> {
    let m = b.manifest();
    let taxonomy = m.taxonomy()?;
    anyhow::ensure!(
        taxonomy.len() <= MAX_CLASSES,
        "bundle has {} labels, at most {MAX_CLASSES} are supported",
        taxonomy.len()
    );
    let n = &m.input.normalization;
    let f = |v: [f64; 3]| v.map(|x| x as f32);
    Ok(ModelInfo {
        name: m.model.name.clone(),
        version: m.model.version.clone(),
        labels: taxonomy.labels().to_vec(),
        normal_index: taxonomy.normal_index(),
        taxonomy,
        threshold: m.operating_point.threshold as f32,
        input_size: m.input_size() as u32,
        normalization: Normalization {
            order: match n.order {
                ManifestOrder::Bgr => ChannelOrder::Bgr,
                ManifestOrder::Rgb => ChannelOrder::Rgb,
            },
            mean: f(n.mean),
            std: f(n.std),
        },
        model_origin: b.model_origin(),
        manifest: m.clone(),
        signer: b.signer().key_id().to_string(),
        bundle_sha256: b.manifest_sha256().to_string(),
        trust: format!(
            "{}, signed by {} ({})",
            m.model.precision.as_str(),
            b.signer().key_id(),
            b.signer().name()
        ),
        load_time: Duration::ZERO,
        selftest_frames: Arc::new(b.selftest().map(|(_, f)| f.to_vec()).collect()),
        form: None,
        release: m
            .release_version()
            .map(|r| r.to_string())
            .unwrap_or_default(),
        downgrade_override: None,
    })
}
