//! Runs exported ONNX models with tract, the same way on host and device.
//!
//! The host evaluates with this crate and the device infers with it, so what `renalscan
//! eval` measures is exactly what the cart runs. Models are optimised once at load for a
//! fixed input shape (batch 1 on the device), which lets tract pick its fastest kernels.
//! [`int8`] chooses how a quantized model runs on this CPU; [`cam`] explains a decision as a
//! class-activation map. Networks are built from bytes ([`Network::from_bytes`]), so a
//! device runs exactly the bytes its bundle check verified (crate `bundle`).

pub mod cam;
pub mod int8;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, OpState};

/// Why a model could not be loaded or run. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is missing, unreadable or not an ONNX model tract understands.
    #[error("cannot load model {path}: {reason}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// What tract said.
        reason: String,
    },
    /// The model loaded but could not be prepared for the requested input shape.
    #[error("model {path} does not accept input {shape:?}: {reason}")]
    Shape {
        /// The model file.
        path: PathBuf,
        /// The shape asked for.
        shape: Vec<usize>,
        /// What tract said.
        reason: String,
    },
    /// The input tensor does not match the shape the model was prepared for.
    #[error("input has {actual} values, the model was prepared for {expected} ({shape:?})")]
    InputSize {
        /// Values given.
        actual: usize,
        /// Values expected.
        expected: usize,
        /// The prepared shape.
        shape: Vec<usize>,
    },
    /// Inference failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// The intra-op thread pool could not be started.
    #[error("cannot start {threads} inference threads: {reason} (lower model.threads)")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// What the system said.
        reason: String,
    },
    /// A quantized model that cannot be built in the requested form.
    #[error(transparent)]
    Int8(#[from] int8::Int8Error),
}

/// Time spent getting a model ready, for logs and benchmarks: where a start-up goes.
#[derive(Debug, Clone, Copy)]
pub struct LoadTimings {
    /// Reading and parsing the ONNX file.
    pub parse: Duration,
    /// Type inference, decluttering, optimisation and planning (the next four together).
    pub optimise: Duration,
    /// Type and shape inference for the fixed input shape.
    pub typing: Duration,
    /// tract's declutter passes (folding, simplification).
    pub declutter: Duration,
    /// Kernel selection and weight packing.
    pub codegen: Duration,
    /// Execution order and memory plan.
    pub plan: Duration,
}

/// One named output tensor.
#[derive(Debug, Clone)]
pub struct Output {
    /// Output name as in the ONNX graph (`logits`, `probs`, `features`).
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// An optimised, runnable network.
pub struct Network {
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    output_names: Vec<String>,
    timings: LoadTimings,
    /// Which form of a quantized model runs, and why.
    form: Option<int8::FormReport>,
    /// The head read from the same bytes, when asked for
    /// ([`int8::LoadOptions::cam_head`]); the reason when it could not be read.
    head: Option<Result<cam::HeadWeights, String>>,
    /// The intra-op threads of every inference (none: the caller's thread alone).
    pool: ThreadPool,
    /// Inference states kept between runs (one per caller running at the same time), so
    /// a frame does not pay for setting one up.
    states: std::sync::Mutex<Vec<TypedSimpleState>>,
    /// The plan computes in f16: its input is cast from f32.
    half: bool,
}

/// Intra-op threads for the inferences run inside [`ThreadPool::install`] on networks that
/// have none of their own: one pool per inference worker, so workers never wait on each
/// other's threads. One thread means no pool at all (tract's `Executor::multithread(1)` would
/// fall through to rayon's global pool and use every core).
pub struct ThreadPool {
    executor: Option<Executor>,
    threads: usize,
}

impl ThreadPool {
    /// A pool of `threads` threads (none for 1); a failed spawn is an error, not a panic.
    pub fn new(threads: usize) -> Result<Self, ModelError> {
        if threads <= 1 {
            return Ok(Self {
                executor: None,
                threads: 1,
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("infer-{i}"))
            .num_threads(threads)
            .build()
            .map_err(|e| ModelError::Threads {
                threads,
                reason: e.to_string(),
            })?;
        Ok(Self {
            executor: Some(Executor::MultiThread(Arc::new(pool))),
            threads,
        })
    }

    /// Threads of the pool (1: none, the caller's own).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` with this pool as tract's executor on the calling thread.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.executor {
            Some(pool) => multithread_tract_scope(pool.clone(), f),
            None => f(),
        }
    }
}

/// Where an inference's time goes, per kind of op (`Network::profile`).
#[derive(Debug, Clone)]
pub struct OpTime {
    /// tract's op name (`OptMatMul`, `MaxPool`, ...).
    pub op: String,
    /// Nodes of that kind in the plan.
    pub nodes: usize,
    /// Mean time per inference spent in those nodes.
    pub time: Duration,
}

impl Network {
    /// Loads an ONNX file and optimises it for `input_shape` (e.g. `[1, 3, 224, 224]`). A
    /// quantized (QOperator) file runs in the form [`int8::Form::Auto`] picks.
    pub fn load(path: &Path, input_shape: &[usize]) -> Result<Self, ModelError> {
        Self::load_with(path, input_shape, &int8::LoadOptions::default())
    }

    /// [`Network::load`] with the form of a quantized model chosen by `opts`; the decision is
    /// logged and kept in [`Network::form_report`].
    pub fn load_with(
        path: &Path,
        input_shape: &[usize],
        opts: &int8::LoadOptions,
    ) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let origin = int8::Origin {
            path,
            dir: path.parent(),
            identity: opts.model_id.clone().or_else(|| int8::file_identity(path)),
        };
        int8::load(&bytes, &origin, input_shape, opts)
    }

    /// Builds the network from model bytes already in memory (a verified bundle's), in the
    /// form `opts` asks for; `origin` only names the model in messages. External tensor data
    /// is not supported: a bundle pins one file.
    pub fn from_bytes(
        bytes: &[u8],
        origin: &Path,
        input_shape: &[usize],
        opts: &int8::LoadOptions,
    ) -> Result<Self, ModelError> {
        let origin = int8::Origin {
            path: origin,
            dir: None,
            identity: opts.model_id.clone(),
        };
        int8::load(bytes, &origin, input_shape, opts)
    }

    /// Which form of a quantized model runs, why, and what each candidate cost.
    pub fn form_report(&self) -> Option<&int8::FormReport> {
        self.form.as_ref()
    }

    /// The head for class-activation maps, read from the very bytes the network was built
    /// from; `None` unless [`int8::LoadOptions::cam_head`] asked for it, `Err` with the reason
    /// when the model has no head that maps onto its features.
    pub fn head(&self) -> Option<Result<&cam::HeadWeights, &str>> {
        self.head
            .as_ref()
            .map(|h| h.as_ref().map_err(String::as_str))
    }

    /// Parses a decoded ONNX model and optimises it; also returns the plan's matmul kernels.
    pub(crate) fn from_proto(
        proto: &tract_onnx::pb::ModelProto,
        origin: &int8::Origin,
        input_shape: &[usize],
        read: Duration,
        half: bool,
    ) -> Result<(Self, int8::PlanSummary), ModelError> {
        let t0 = Instant::now();
        let path = origin.path;
        let load_err = |reason: String| ModelError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let dir = origin.dir.and_then(Path::to_str);
        // Recorded intermediate shapes are hints only, and onnxruntime-written files record a
        // symbolic batch that contradicts the fixed input shape we optimise for.
        let parsed = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .parse(proto, dir)
            .map_err(|e| load_err(format!("{e:#}")))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(load_err(format!(
                "unresolved inputs {:?}",
                parsed.unresolved_inputs
            )));
        }
        let model = parsed.model;
        let parse = read + t0.elapsed();
        let t1 = Instant::now();
        let shape_err = |e: TractError| ModelError::Shape {
            path: path.to_path_buf(),
            shape: input_shape.to_vec(),
            reason: format!("{e:#}"),
        };
        let typed = model
            .with_input_fact(0, f32::fact(input_shape).into())
            .and_then(|m| m.into_typed())
            .map_err(shape_err)?;
        let typing = t1.elapsed();
        let t = Instant::now();
        let mut typed = typed.into_decluttered().map_err(shape_err)?;
        if half {
            // Every float op in f16, before kernel selection so tract picks f16 kernels; the
            // input becomes f16 (cast in `run`), the outputs stay f32.
            let f16 = tract_onnx::tract_core::transform::get_transform("f32_to_f16")
                .map_err(shape_err)?
                .ok_or_else(|| ModelError::Run("tract lacks the f32_to_f16 transform".into()))?;
            f16.transform(&mut typed).map_err(shape_err)?;
        }
        let declutter = t.elapsed();
        let t = Instant::now();
        typed.optimize().map_err(shape_err)?;
        let codegen = t.elapsed();
        let output_names = typed
            .output_outlets()
            .map_err(shape_err)?
            .iter()
            .map(|&o| {
                typed
                    .outlet_label(o)
                    .map(str::to_string)
                    .unwrap_or_else(|| typed.node(o.node).name.clone())
            })
            .collect();
        let plan_summary = int8::plan_summary(&typed);
        let t = Instant::now();
        let plan = typed.into_runnable().map_err(shape_err)?;
        let timings = LoadTimings {
            parse,
            optimise: t1.elapsed(),
            typing,
            declutter,
            codegen,
            plan: t.elapsed(),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        log::info!(
            "loaded {} (parse {:.0} ms, optimise {:.0} ms: typing {:.0}, declutter {:.0}, \
             codegen {:.0}, plan {:.0})",
            path.display(),
            ms(timings.parse),
            ms(timings.optimise),
            ms(typing),
            ms(declutter),
            ms(codegen),
            ms(timings.plan),
        );
        Ok((
            Self {
                plan,
                input_shape: input_shape.to_vec(),
                output_names,
                timings,
                form: None,
                head: None,
                pool: ThreadPool {
                    executor: None,
                    threads: 1,
                },
                states: Default::default(),
                half,
            },
            plan_summary,
        ))
    }

    /// Names of the outputs, in graph order.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// The input shape the model was prepared for.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// How long loading took.
    pub fn timings(&self) -> LoadTimings {
        self.timings
    }

    /// Sets the intra-op threads of every later inference. One thread means no executor at
    /// all: tract's `Executor::multithread(1)` would fall through to rayon's global pool and
    /// use every core.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), ModelError> {
        self.pool = ThreadPool::new(threads)?;
        Ok(())
    }

    /// Intra-op threads of each inference.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs one inference with `eval` evaluating each node, on a kept state, in this
    /// network's thread pool.
    fn run_with<E>(&self, input: &[f32], eval: E) -> Result<TVec<TValue>, ModelError>
    where
        E: for<'a, 'b, 'c> FnMut(
            &'a EvalContext<'a>,
            Option<&'b mut (dyn OpState + 'static)>,
            &'c TypedNode,
            TVec<TValue>,
        ) -> TractResult<TVec<TValue>>,
    {
        let array = tract_ndarray::ArrayD::from_shape_vec(self.input_shape.clone(), input.to_vec())
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let mut tensor = Tensor::from(array);
        if self.half {
            tensor = tensor
                .cast_to::<f16>()
                .map_err(|e| ModelError::Run(format!("{e:#}")))?
                .into_owned();
        }
        let kept = self.states.lock().ok().and_then(|mut s| s.pop());
        let mut state = match kept {
            Some(s) => s,
            None => self
                .plan
                .spawn()
                .map_err(|e| ModelError::Run(format!("{e:#}")))?,
        };
        let outputs = self
            .pool
            .install(|| state.run_plan_with_eval(tvec!(tensor.into()), eval))
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        if let Ok(mut kept) = self.states.lock() {
            kept.push(state);
        }
        Ok(outputs)
    }

    /// Mean time per op kind over `runs` inferences of `input`, slowest first: which ops
    /// dominate, and (compared across thread counts) which stay serial.
    pub fn profile(&self, input: &[f32], runs: usize) -> Result<Vec<OpTime>, ModelError> {
        let nodes = self.plan.model().nodes().len();
        let mut per_node = vec![Duration::ZERO; nodes];
        let runs = runs.max(1);
        for _ in 0..runs {
            self.run_with(input, |ctx, st, node, inputs| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
                per_node[node.id] += t.elapsed();
                r
            })?;
        }
        let mut by_op: Vec<OpTime> = Vec::new();
        for (node, time) in self.plan.model().nodes().iter().zip(per_node) {
            let op = node.op().name().to_string();
            match by_op.iter_mut().find(|o| o.op == op) {
                Some(o) => {
                    o.nodes += 1;
                    o.time += time / runs as u32;
                }
                None => by_op.push(OpTime {
                    op,
                    nodes: 1,
                    time: time / runs as u32,
                }),
            }
        }
        by_op.sort_by_key(|o| std::cmp::Reverse(o.time));
        Ok(by_op)
    }

    /// Runs one inference on a row-major input of the prepared shape.
    pub fn run(&self, input: &[f32]) -> Result<Vec<Output>, ModelError> {
        let expected: usize = self.input_shape.iter().product();
        if input.len() != expected {
            return Err(ModelError::InputSize {
                actual: input.len(),
                expected,
                shape: self.input_shape.clone(),
            });
        }
        let outputs = self.run_with(input, tract_onnx::tract_core::plan::eval)?;
        outputs
            .iter()
            .zip(&self.output_names)
            .map(|(v, name)| {
                let err = |e: TractError| ModelError::Run(format!("output {name}: {e:#}"));
                // A half plan's outputs are cast back to f32 by tract; any other float is
                // converted here rather than refused.
                let v = v.cast_to::<f32>().map_err(err)?;
                let view = v.to_plain_array_view::<f32>().map_err(err)?;
                Ok(Output {
                    name: name.clone(),
                    shape: view.shape().to_vec(),
                    data: view.iter().copied().collect(),
                })
            })
            .collect()
    }
}

/// Finds an output by name.
pub fn output<'a>(outputs: &'a [Output], name: &str) -> Option<&'a Output> {
    outputs.iter().find(|o| o.name == name)
}

/// Numerically stable softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_descending() {
        assert_eq!(top_k(&[0.1, 0.7, 0.2], 2), [1, 2]);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = match Network::load(Path::new("/nonexistent/model.onnx"), &[1, 3, 8, 8]) {
            Err(e) => e,
            Ok(_) => panic!("loaded a missing file"),
        };
        assert!(err.to_string().contains("/nonexistent/model.onnx"), "{err}");
    }

    #[test]
    fn garbage_file_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.onnx");
        std::fs::write(&p, b"this is not protobuf \xff\xff\xff").unwrap();
        let r = Network::load(&p, &[1, 3, 8, 8]);
        assert!(matches!(r, Err(ModelError::Load { .. })));
    }
}
