//! One int8 model file, three ways to run it: the form tract runs fastest on this CPU.
//!
//! The quantizer writes ONNX in QOperator form (QuantizeLinear, QLinearConv with int8
//! weights, DequantizeLinear; ConvInteger plus a float rescale for convs whose output stays
//! float). tract can run such a file as is, with integer matmul
//! kernels (the *integer form*), or we can rewrite it at load into a plain float graph whose
//! convolution weights are the dequantized int8 weights (the *float form*). Which is faster
//! depends on the kernels tract has for the CPU: on aarch64 with dot-product instructions
//! the integer kernels should win; on x86 AVX2, tract 0.23.9's integer kernel is 60x slower
//! than its float one (`docs/tract-int8-x86.md`). The file stores the int8 weights once either
//! way, so the artifact is a quarter of the float model's size whichever form runs.
//!
//! The float form keeps the weight quantization and drops the activation quantization
//! (QuantizeLinear and DequantizeLinear become identities), so its outputs lie between the
//! float model's and the integer form's.
//!
//! The *half form* is the float form translated to f16 by tract (`f32_to_f16`, after
//! decluttering, before kernel selection): weights, activations and matmul accumulation in
//! f16, outputs back in f32. On ARMv8.2 with `fp16` tract runs it on its `arm64fp16_mmm_f16`
//! kernels; elsewhere on slow generic f16 kernels (useful only to measure agreement). Auto
//! considers it only on a CPU with f16 arithmetic and for a model whose agreement with fp32
//! is on record ([`LoadOptions::half_proven`], from the bundle's signed
//! `[[form_agreement]]`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tract_onnx::pb::{self, tensor_proto::DataType, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
use tract_onnx::tract_core::tract_linalg;

/// Where the x86 integer-kernel defect and its measurements are written up.
pub const X86_DEFECT_DOC: &str = "docs/tract-int8-x86.md";

/// tract's AVX2 integer kernel, whose inner loop stalls on a legacy-SSE `movq` in tract
/// 0.23.9 (about 8 s per ResNet-50 image here against 0.14 s in float).
pub const SLOW_X86_KERNEL: &str = "avx2_mmm_i32_8x8";

/// Which execution of a quantized model to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Form {
    /// Pick by CPU and, where the answer is not known, a start-up timing of both.
    #[default]
    Auto,
    /// The QOperator graph as is: tract's integer matmul kernels.
    Integer,
    /// Weights dequantized at load, fp32 kernels.
    Float,
    /// The float form in f16: f16 weights, activations and accumulation (ARMv8.2 fp16
    /// kernels; elsewhere tract's generic f16 kernels, slow, for measuring agreement).
    Half,
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Auto => "auto",
            Form::Integer => "integer",
            Form::Float => "float",
            Form::Half => "half",
        })
    }
}

impl FromStr for Form {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Form::Auto),
            "integer" | "int8" | "int" => Ok(Form::Integer),
            "float" | "fp32" => Ok(Form::Float),
            "half" | "f16" | "fp16" => Ok(Form::Half),
            other => Err(format!(
                "unknown model form {other:?}: use auto, integer, float or half"
            )),
        }
    }
}

/// What was built and is now running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// A float model (no QOperator nodes), loaded as is.
    Plain,
    /// The integer form of a quantized model.
    Integer,
    /// The float form of a quantized model.
    Float,
    /// The half (f16) form of a quantized model.
    Half,
}

impl fmt::Display for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Built::Plain => "plain float model",
            Built::Integer => "integer form",
            Built::Float => "float form",
            Built::Half => "half form",
        })
    }
}

/// Whether tract computes in f16 on this CPU (ARMv8.2 `asimdhp`, AVX512-FP16), as tract
/// itself sees it (its `/proc/cpuinfo` probe, edited by `TRACT_CPU_ISA`): only then is the half
/// form a candidate of Auto. Under qemu-user, which shows the host's `/proc/cpuinfo`, tract
/// sees no fp16 unless told `TRACT_CPU_ISA=+fp16`.
pub fn fp16_arithmetic() -> bool {
    tract_linalg::isa::native().fp16_arithmetic()
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Which form of a quantized model to build (ignored for float models).
    pub form: Form,
    /// Time the integer form in `Auto` even where its kernel is known to be slow (costs
    /// seconds of start-up; for benchmarks).
    pub time_known_slow: bool,
    /// A small file remembering Auto's timed choice for this model file on this CPU, so that
    /// only the first start after a model update pays for building and timing both forms.
    pub decision_cache: Option<PathBuf>,
    /// A stable identity of the model bytes (a bundle's pinned sha256) that keys the decision
    /// cache when the model is loaded from memory. Without it, a model loaded from memory is
    /// timed at every start; one loaded from a file is keyed by path, size and mtime.
    pub model_id: Option<String>,
    /// Also read the head feeding this output (class-activation maps) from the same
    /// decoded model, so a device never parses the file a second time.
    pub cam_head: Option<String>,
    /// Intra-op threads of every inference (matmul tiles, packing, element-wise ops); 1 runs
    /// on the calling thread alone.
    pub threads: usize,
    /// The model's signed record says its half form agrees with fp32 on decisions (see
    /// `contract::manifest::FormAgreement`): Auto may then pick it on a CPU with f16
    /// arithmetic. Never without that proof.
    pub half_proven: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            form: Form::Auto,
            time_known_slow: false,
            decision_cache: None,
            model_id: None,
            cam_head: None,
            threads: 1,
            half_proven: false,
        }
    }
}

/// One candidate form: what building and (optionally) running it once cost.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Rewrite (float form only), parse, optimise and plan.
    pub build: Duration,
    /// One inference on a zero image, where Auto timed it.
    pub first_run: Option<Duration>,
    /// What the optimised plan computes its convolutions with.
    pub plan: PlanSummary,
}

/// The loader's decision, for the log, the benchmark and the edge status page.
#[derive(Debug, Clone)]
pub struct FormReport {
    /// What the options asked for.
    pub requested: Form,
    /// What runs.
    pub built: Built,
    /// Why, in words.
    pub reason: String,
    /// Integer convolutions in the file (QLinearConv and ConvInteger nodes).
    pub qlinear_convs: usize,
    /// The integer form, where it was built.
    pub integer: Option<Candidate>,
    /// The float form, where it was built.
    pub float: Option<Candidate>,
    /// The half form, where it was built.
    pub half: Option<Candidate>,
}

impl fmt::Display for FormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (asked {}): {}",
            self.built, self.requested, self.reason
        )?;
        for (name, c) in [
            ("integer", &self.integer),
            ("float", &self.float),
            ("half", &self.half),
        ] {
            if let Some(c) = c {
                write!(f, "; {name}: build {:.0} ms", ms(c.build))?;
                if let Some(r) = c.first_run {
                    write!(f, ", first run {:.0} ms", ms(r))?;
                }
                let k: Vec<String> = c
                    .plan
                    .kernels
                    .iter()
                    .map(|k| format!("{} x{}", k.kernel, k.count))
                    .collect();
                if !k.is_empty() {
                    write!(f, ", kernels {}", k.join(", "))?;
                }
            }
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Why a quantized model cannot be turned into the requested form. Each message names the
/// file, the node and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    /// A QOperator input that must be a constant is computed or absent.
    #[error(
        "{path}: node {node:?} needs {tensor:?} as an initializer (constant); \
         the float form folds it into the weights. Re-quantize with constant scales \
         (`renalscan quantize` writes them) or load with form = integer"
    )]
    MissingInitializer {
        /// The model file.
        path: PathBuf,
        /// The node.
        node: String,
        /// The tensor it names.
        tensor: String,
    },
    /// Weights with a non-zero zero point (asymmetric), which the contract excludes.
    #[error(
        "{path}: node {node:?} has non-zero weight zero point in {tensor:?}; renalscan \
         expects symmetric int8 weights (zero point 0). Re-quantize with `renalscan quantize` \
         (symmetric per-channel weights) or load with form = integer"
    )]
    ZeroPoint {
        /// The model file.
        path: PathBuf,
        /// The node.
        node: String,
        /// The zero-point tensor.
        tensor: String,
    },
    /// A tensor with a type, shape or encoding the rewrite does not handle.
    #[error(
        "{path}: node {node:?}: unsupported layout: {what}. Re-quantize with \
         `renalscan quantize` (int8 weights, one scale per output channel, int32 bias) or \
         load with form = integer"
    )]
    Layout {
        /// The model file.
        path: PathBuf,
        /// The node.
        node: String,
        /// What is wrong.
        what: String,
    },
    /// A quantized operator the float rewrite has no translation for.
    #[error(
        "{path}: node {node:?} is a {op} that the float form cannot rewrite (only \
         QLinearConv, ConvInteger, QuantizeLinear and DequantizeLinear are); quantize that layer as \
         QLinearConv or leave it float, or load with form = integer"
    )]
    UnsupportedOp {
        /// The model file.
        path: PathBuf,
        /// The node.
        node: String,
        /// Its operator.
        op: String,
    },
}

/// Whether an operator is a QOperator integer op.
fn is_quantized_op(node: &NodeProto) -> bool {
    let op = node.op_type.as_str();
    op.starts_with("QLinear")
        || op.starts_with("QGemm")
        || op.ends_with("Integer")
        || op == "DynamicQuantizeLinear"
}

/// Number of integer convolutions (`QLinearConv`, and `ConvInteger` for the convs whose
/// output stays float): a file with any is a quantized model.
pub fn qlinear_conv_count(model: &ModelProto) -> usize {
    model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .filter(|n| n.op_type == "QLinearConv" || n.op_type == "ConvInteger")
        .count()
}

fn node_label(n: &NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        n.output.first().cloned().unwrap_or_default()
    }
}

/// Constant tensors by name: initializers and `Constant` node values.
fn constants(graph: &pb::GraphProto) -> HashMap<&str, &TensorProto> {
    let mut map: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(out), Some(t)) = (
            n.output.first(),
            n.attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref()),
        ) {
            map.insert(out.as_str(), t);
        }
    }
    map
}

/// Values of an integer tensor (int8, uint8, int32), widened.
fn int_values(t: &TensorProto) -> Result<Vec<i64>, String> {
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(format!("{:?} is stored as external data", t.name));
    }
    let dt = DataType::try_from(t.data_type).map_err(|_| format!("{:?}: bad type", t.name))?;
    let raw = &t.raw_data;
    Ok(match dt {
        DataType::Int8 if !raw.is_empty() => raw.iter().map(|&b| b as i8 as i64).collect(),
        DataType::Uint8 if !raw.is_empty() => raw.iter().map(|&b| b as i64).collect(),
        DataType::Int32 if !raw.is_empty() => {
            if !raw.len().is_multiple_of(4) {
                return Err(format!("{:?}: raw data not a multiple of 4 bytes", t.name));
            }
            raw.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect()
        }
        DataType::Int8 | DataType::Uint8 | DataType::Int32 => {
            t.int32_data.iter().map(|&v| v as i64).collect()
        }
        other => return Err(format!("{:?} is {other:?}, expected an integer", t.name)),
    })
}

/// Element count of an integer tensor (int8, uint8, int32), without widening its values.
fn int_len(t: &TensorProto) -> Result<usize, String> {
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(format!("{:?} is stored as external data", t.name));
    }
    let dt = DataType::try_from(t.data_type).map_err(|_| format!("{:?}: bad type", t.name))?;
    Ok(match dt {
        DataType::Int8 | DataType::Uint8 if !t.raw_data.is_empty() => t.raw_data.len(),
        DataType::Int32 if !t.raw_data.is_empty() => t.raw_data.len() / 4,
        DataType::Int8 | DataType::Uint8 | DataType::Int32 => t.int32_data.len(),
        other => return Err(format!("{:?} is {other:?}, expected an integer", t.name)),
    })
}

/// Values of a float tensor.
fn f32_values(t: &TensorProto) -> Result<Vec<f32>, String> {
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(format!("{:?} is stored as external data", t.name));
    }
    if t.data_type != DataType::Float as i32 {
        return Err(format!("{:?} is not float32", t.name));
    }
    if t.raw_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return Err(format!("{:?}: raw data not a multiple of 4 bytes", t.name));
    }
    Ok(t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn f32_tensor(name: String, dims: Vec<i64>, data: &[f32]) -> TensorProto {
    onnx_graph::tensor::f32_dims(&name, &dims, data)
}

/// An f32 initializer `f(q, channel)` from integer tensor `t`, whose channel is the index of
/// each block of `inner` elements modulo `channels`. Runs at every start over all weights (24 M
/// in a ResNet-50), so int8 and uint8 raw data take a table of each channel's 256 possible
/// values, written straight into the raw bytes (the same arithmetic as `f` per element, bit
/// for bit), and large tensors are split by blocks over the machine's cores.
fn int_to_f32_tensor(
    name: String,
    t: &TensorProto,
    inner: usize,
    channels: usize,
    f: impl Fn(i64, usize) -> f32 + Sync,
) -> Result<TensorProto, String> {
    let (inner, channels) = (inner.max(1), channels.max(1));
    let byte_value: Option<fn(u8) -> i64> = match DataType::try_from(t.data_type) {
        _ if t.raw_data.is_empty()
            || t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) =>
        {
            None
        }
        Ok(DataType::Int8) => Some(|b| b as i8 as i64),
        Ok(DataType::Uint8) => Some(|b| b as i64),
        _ => None,
    };
    let raw = match byte_value {
        Some(value) => {
            let mut raw = vec![0u8; t.raw_data.len() * 4];
            let (src, f) = (&t.raw_data, &f);
            // Each part starts at a block boundary, so its channels are known.
            let convert = |first_block: usize, src: &[u8], out: &mut [u8]| {
                bytes_to_f32(first_block, src, out, inner, channels, value, f)
            };
            let parts = conversion_parts(src.len());
            if parts == 1 {
                convert(0, src, &mut raw);
            } else {
                let blocks_per_part = src.len().div_ceil(inner).div_ceil(parts);
                let step = blocks_per_part * inner;
                std::thread::scope(|scope| {
                    for (i, (src, out)) in
                        src.chunks(step).zip(raw.chunks_mut(step * 4)).enumerate()
                    {
                        let convert = &convert;
                        scope.spawn(move || convert(i * blocks_per_part, src, out));
                    }
                });
            }
            raw
        }
        None => {
            let v = int_values(t)?;
            let mut raw = Vec::with_capacity(v.len() * 4);
            for (i, &q) in v.iter().enumerate() {
                raw.extend_from_slice(&f(q, (i / inner) % channels).to_le_bytes());
            }
            raw
        }
    };
    Ok(TensorProto {
        name,
        dims: t.dims.clone(),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    })
}

/// How many threads convert a tensor of `n` bytes: one below a quarter million weights (a
/// thread costs more than it saves there), else one per core, at most 8.
fn conversion_parts(n: usize) -> usize {
    if n < 1 << 18 {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |p| p.get().min(8))
}

/// Writes `f(value(b), channel)` as little-endian f32 for each byte of `src`, which starts at
/// block `first_block`. A table of the channel's 256 values pays off where a channel's block
/// is longer than the table (or there is one channel); shorter blocks compute each element.
fn bytes_to_f32(
    first_block: usize,
    src: &[u8],
    out: &mut [u8],
    inner: usize,
    channels: usize,
    value: fn(u8) -> i64,
    f: &(impl Fn(i64, usize) -> f32 + Sync),
) {
    let blocks = src.chunks(inner).zip(out.chunks_mut(inner * 4));
    if inner >= 256 || channels == 1 {
        let mut table = [[0u8; 4]; 256];
        let mut built = None;
        for (k, (block, out)) in blocks.enumerate() {
            let c = (first_block + k) % channels;
            if built != Some(c) {
                for (b, e) in table.iter_mut().enumerate() {
                    *e = f(value(b as u8), c).to_le_bytes();
                }
                built = Some(c);
            }
            for (&b, o) in block.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&table[b as usize]);
            }
        }
    } else {
        for (k, (block, out)) in blocks.enumerate() {
            let c = (first_block + k) % channels;
            for (&b, o) in block.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&f(value(b), c).to_le_bytes());
            }
        }
    }
}

/// Rewrites a QOperator model into the float form: each QLinearConv becomes a Conv with
/// weights `w_int8 * w_scale[c]` and bias `b_int32 * x_scale * w_scale[c]` (the int32 bias is
/// quantized with the product of the input and weight scales), QuantizeLinear and
/// DequantizeLinear become identities. Each `ConvInteger(QuantizeLinear(x, x_scale), w_int8)`
/// becomes `Conv(x, w_int8 / x_scale)` (its output then approximates the integer
/// accumulator, so the file's following Cast, per-channel Mul and bias Add keep their
/// meaning; the Cast becomes an identity). `path` only names the file in errors.
pub fn float_form(model: &ModelProto, path: &Path) -> Result<ModelProto, Int8Error> {
    let Some(graph) = model.graph.as_ref() else {
        return Ok(model.clone());
    };
    let consts = constants(graph);
    let producers: HashMap<&str, &NodeProto> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut int32_outputs: HashSet<&str> = HashSet::new();
    let mut folded: HashSet<String> = HashSet::new();
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut new_inits = Vec::new();
    for node in &graph.node {
        match node.op_type.as_str() {
            // Int8-stored weights of a conv the quantizer kept float: fold to float now.
            "DequantizeLinear"
                if node.domain.is_empty()
                    && node
                        .input
                        .first()
                        .is_some_and(|i| consts.contains_key(i.as_str())) =>
            {
                new_inits.push(dequantize_constant(node, &consts, path)?);
            }
            "QuantizeLinear" | "DequantizeLinear" if node.domain.is_empty() => {
                let (Some(input), Some(output)) = (node.input.first(), node.output.first()) else {
                    return Err(layout(
                        path,
                        node,
                        "QuantizeLinear/DequantizeLinear without input",
                    ));
                };
                nodes.push(NodeProto {
                    input: vec![input.clone()],
                    output: vec![output.clone()],
                    name: node.name.clone(),
                    op_type: "Identity".into(),
                    ..Default::default()
                });
            }
            "QLinearConv" if node.domain.is_empty() => {
                let (conv, w, b) = rewrite_conv(node, &consts, path)?;
                nodes.push(conv);
                new_inits.push(w);
                new_inits.extend(b);
            }
            "ConvInteger" if node.domain.is_empty() => {
                // The file's `Cast -> Mul(scale) -> Add(bias)` after it, folded into the conv
                // (the float model's conv with its bias) when its scale is per output channel.
                let chain = rescale_chain(graph, node, &consts);
                let (mut conv, w, folded_rescale) = rewrite_conv_integer(
                    node,
                    &consts,
                    &producers,
                    chain.as_ref().map(|f| f.scale.as_slice()),
                    path,
                )?;
                match chain {
                    Some(f) if folded_rescale => {
                        let b = f32_tensor(
                            format!("{}::bias_f32", f.output),
                            vec![f.bias.len() as i64],
                            &f.bias,
                        );
                        conv.input.push(b.name.clone());
                        conv.output = vec![f.output.clone()];
                        new_inits.push(b);
                        folded.extend(f.nodes);
                    }
                    _ => {
                        if let Some(o) = node.output.first() {
                            int32_outputs.insert(o.as_str());
                        }
                    }
                }
                nodes.push(conv);
                new_inits.push(w);
            }
            _ if folded.contains(&node_label(node)) => {}
            // The Cast of a rewritten ConvInteger's (now float) accumulator.
            "Cast"
                if node
                    .input
                    .first()
                    .is_some_and(|i| int32_outputs.contains(i.as_str())) =>
            {
                nodes.push(NodeProto {
                    input: vec![node.input[0].clone()],
                    output: node.output.clone(),
                    name: node.name.clone(),
                    op_type: "Identity".into(),
                    ..Default::default()
                });
            }
            _ if is_quantized_op(node) => {
                return Err(Int8Error::UnsupportedOp {
                    path: path.to_path_buf(),
                    node: node_label(node),
                    op: node.op_type.clone(),
                })
            }
            _ => nodes.push(node.clone()),
        }
    }
    let used: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .collect();
    let initializer: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .chain(new_inits)
        .collect();
    let kept: HashSet<String> = initializer.iter().map(|t| t.name.clone()).collect();
    let dropped: HashSet<&str> = graph
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !kept.contains(*n))
        .collect();
    // Built field by field rather than cloned and edited: a clone would copy every int8
    // weight only to drop it (and a field added to the protobuf types fails to compile here
    // instead of being lost).
    Ok(ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: graph.name.clone(),
            initializer,
            sparse_initializer: graph.sparse_initializer.clone(),
            doc_string: graph.doc_string.clone(),
            // Old IR versions list initializers as inputs too.
            input: graph
                .input
                .iter()
                .filter(|i| !dropped.contains(i.name.as_str()))
                .cloned()
                .collect(),
            output: graph.output.clone(),
            // Intermediate types changed from int8 to float: recorded ones would now lie.
            value_info: Vec::new(),
            quantization_annotation: graph.quantization_annotation.clone(),
        }),
        metadata_props: model.metadata_props.clone(),
        training_info: model.training_info.clone(),
        functions: model.functions.clone(),
    })
}

/// Input `i` of `node`, which must be a constant (initializer or `Constant`).
fn constant_input<'a>(
    node: &NodeProto,
    i: usize,
    consts: &HashMap<&str, &'a TensorProto>,
    path: &Path,
) -> Result<&'a TensorProto, Int8Error> {
    let name = node.input.get(i).map(String::as_str).unwrap_or("");
    consts
        .get(name)
        .copied()
        .ok_or_else(|| Int8Error::MissingInitializer {
            path: path.to_path_buf(),
            node: node_label(node),
            tensor: name.to_string(),
        })
}

/// `DequantizeLinear(q, scale, zero_point)` of constants, as a float initializer named
/// after the node's output (per-tensor or per-axis scale, ONNX `axis` default 1).
fn dequantize_constant(
    node: &NodeProto,
    consts: &HashMap<&str, &TensorProto>,
    path: &Path,
) -> Result<TensorProto, Int8Error> {
    let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
    let constant = |i: usize| constant_input(node, i, consts, path);
    let bad = |what: String| layout(path, node, &what);
    let out = node
        .output
        .first()
        .ok_or_else(|| bad("DequantizeLinear without output".into()))?;
    let q = constant(0)?;
    let n = int_len(q).map_err(bad)?;
    let scale = f32_values(constant(1)?).map_err(bad)?;
    let zero: Vec<i64> = if input(2).is_empty() {
        vec![0]
    } else {
        int_values(constant(2)?).map_err(bad)?
    };
    let rank = q.dims.len() as i64;
    let axis = node
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    let axis = if axis < 0 { axis + rank } else { axis };
    // Elements per step of the axis, and the axis length.
    let (inner, len) = if scale.len() == 1 {
        (n.max(1), 1)
    } else if (0..rank).contains(&axis) {
        let a = axis as usize;
        (
            q.dims[a + 1..].iter().product::<i64>().max(1) as usize,
            q.dims[a] as usize,
        )
    } else {
        return Err(bad(format!("axis {axis} outside rank {rank}")));
    };
    if len == 0 || scale.len() != len || (zero.len() != 1 && zero.len() != len) {
        return Err(bad(format!(
            "{} scales and {} zero points for an axis of {len}",
            scale.len(),
            zero.len()
        )));
    }
    let zero_of = |c: usize| zero[if zero.len() == 1 { 0 } else { c }];
    int_to_f32_tensor(out.clone(), q, inner, len, |v, c| {
        (v - zero_of(c)) as f32 * scale[c]
    })
    .map_err(bad)
}

fn layout(path: &Path, node: &NodeProto, what: &str) -> Int8Error {
    Int8Error::Layout {
        path: path.to_path_buf(),
        node: node_label(node),
        what: what.to_string(),
    }
}

fn rewrite_conv(
    node: &NodeProto,
    consts: &HashMap<&str, &TensorProto>,
    path: &Path,
) -> Result<(NodeProto, TensorProto, Option<TensorProto>), Int8Error> {
    let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
    if node.input.len() < 8 || node.output.is_empty() {
        return Err(layout(
            path,
            node,
            "QLinearConv needs 8 or 9 inputs and one output",
        ));
    }
    let constant = |i: usize| constant_input(node, i, consts, path);
    let bad = |what: String| layout(path, node, &what);
    let x_scale = f32_values(constant(1)?).map_err(bad)?;
    let [x_scale] = x_scale[..] else {
        return Err(bad(format!("input scale {:?} is not a scalar", input(1))));
    };
    let w = constant(3)?;
    if w.dims.len() < 3 {
        return Err(bad(format!("weight {:?} has dims {:?}", input(3), w.dims)));
    }
    let w_len = int_len(w).map_err(bad)?;
    if w.data_type == DataType::Int32 as i32 {
        return Err(bad(format!(
            "weight {:?} is int32, expected int8",
            input(3)
        )));
    }
    let m = w.dims[0] as usize;
    let per_channel = w.dims[1..].iter().product::<i64>() as usize;
    if m == 0 || w_len != m * per_channel {
        return Err(bad(format!(
            "weight {:?} holds {w_len} values for dims {:?}",
            input(3),
            w.dims
        )));
    }
    let w_scale = f32_values(constant(4)?).map_err(bad)?;
    let w_scale: Vec<f32> = match w_scale.len() {
        1 => vec![w_scale[0]; m],
        n if n == m => w_scale,
        n => {
            return Err(bad(format!(
                "weight scale {:?} has {n} values for {m} output channels",
                input(4)
            )))
        }
    };
    if !input(5).is_empty() {
        let zp = int_values(constant(5)?).map_err(bad)?;
        if zp.iter().any(|&z| z != 0) {
            return Err(Int8Error::ZeroPoint {
                path: path.to_path_buf(),
                node: node_label(node),
                tensor: input(5).to_string(),
            });
        }
    }
    let out_name = &node.output[0];
    let w_f = int_to_f32_tensor(
        format!("{out_name}::weight_f32"),
        w,
        per_channel,
        m,
        |q, c| q as f32 * w_scale[c],
    )
    .map_err(bad)?;
    let mut inputs = vec![node.input[0].clone(), w_f.name.clone()];
    let b_f = if input(8).is_empty() {
        None
    } else {
        let b = constant(8)?;
        if b.data_type != DataType::Int32 as i32 {
            return Err(bad(format!("bias {:?} is not int32", input(8))));
        }
        let b_int = int_values(b).map_err(bad)?;
        if b_int.len() != m {
            return Err(bad(format!(
                "bias {:?} has {} values for {m} output channels",
                input(8),
                b_int.len()
            )));
        }
        let bias: Vec<f32> = b_int
            .iter()
            .zip(&w_scale)
            .map(|(&b, &s)| (b as f64 * x_scale as f64 * s as f64) as f32)
            .collect();
        let t = f32_tensor(format!("{out_name}::bias_f32"), vec![m as i64], &bias);
        inputs.push(t.name.clone());
        Some(t)
    };
    let conv = NodeProto {
        input: inputs,
        output: vec![out_name.clone()],
        name: node.name.clone(),
        op_type: "Conv".into(),
        attribute: node.attribute.clone(),
        ..Default::default()
    };
    Ok((conv, w_f, b_f))
}

/// The scale of the `QuantizeLinear` that produced int8 tensor `t`, looking through
/// scale-preserving ops (MaxPool, Identity) in between.
fn input_scale<'a>(
    t: &'a str,
    producers: &HashMap<&str, &'a NodeProto>,
    consts: &HashMap<&str, &TensorProto>,
    node: &NodeProto,
    path: &Path,
) -> Result<f32, Int8Error> {
    let mut cur = t;
    for _ in 0..producers.len() + 1 {
        let Some(p) = producers.get(cur) else { break };
        match p.op_type.as_str() {
            "MaxPool" | "Identity" => cur = p.input.first().map(String::as_str).unwrap_or(""),
            "QuantizeLinear" => {
                let s_name = p.input.get(1).map(String::as_str).unwrap_or("");
                let s = constant_input(p, 1, consts, path)?;
                // The activation zero point does not matter here: the accumulator counts
                // `x_q - x_zero_point`, which is `x / x_scale` for any zero point.
                let v = f32_values(s).map_err(|e| layout(path, node, &e))?;
                return match v[..] {
                    [s] if s > 0.0 && s.is_finite() => Ok(s),
                    _ => Err(layout(
                        path,
                        node,
                        &format!("input scale {s_name:?} is not one positive value"),
                    )),
                };
            }
            _ => break,
        }
    }
    Err(layout(
        path,
        node,
        &format!("input {t:?} does not come from a QuantizeLinear (through MaxPool only)"),
    ))
}

/// `ConvInteger(QuantizeLinear(x, x_scale, x_zp), w_int8)` -> `Conv(x, w_int8 / x_scale)`:
/// with symmetric weights the accumulator is `sum((x_q - x_zp) * w_q)` and
/// `x_q - x_zp ~ x / x_scale`.
fn rewrite_conv_integer(
    node: &NodeProto,
    consts: &HashMap<&str, &TensorProto>,
    producers: &HashMap<&str, &NodeProto>,
    rescale: Option<&[f32]>,
    path: &Path,
) -> Result<(NodeProto, TensorProto, bool), Int8Error> {
    let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
    if node.input.len() < 2 || node.output.is_empty() {
        return Err(layout(
            path,
            node,
            "ConvInteger needs 2 to 4 inputs and one output",
        ));
    }
    let bad = |what: String| layout(path, node, &what);
    // Input 2, the activation zero point, may be any value (see `input_scale`); input 3,
    // the weights', must be 0.
    if !input(3).is_empty() {
        let zp = constant_input(node, 3, consts, path)?;
        if int_values(zp).map_err(bad)?.iter().any(|&z| z != 0) {
            return Err(Int8Error::ZeroPoint {
                path: path.to_path_buf(),
                node: node_label(node),
                tensor: input(3).to_string(),
            });
        }
    }
    let x_scale = input_scale(input(0), producers, consts, node, path)?;
    let w = constant_input(node, 1, consts, path)?;
    if w.dims.len() < 3 || w.data_type != DataType::Int8 as i32 {
        return Err(bad(format!(
            "weight {:?} must be int8 with at least 3 dims (type {}, dims {:?})",
            input(1),
            w.data_type,
            w.dims
        )));
    }
    let n = int_len(w).map_err(bad)?;
    if n as i64 != w.dims.iter().product::<i64>() {
        return Err(bad(format!(
            "weight {:?} holds {n} values for dims {:?}",
            input(1),
            w.dims
        )));
    }
    let out_name = &node.output[0];
    let name = format!("{out_name}::weight_f32");
    let unscaled = |q: i64| (q as f64 / x_scale as f64) as f32;
    // With a per-output-channel rescale folded in, `(q / x_scale) * scale[c]`: the conv then
    // gives the rescaled output itself (the returned flag). Not folded when the scale does not
    // split the weights into equal channels.
    let (w_f, folded) = match rescale {
        Some(scale) if !scale.is_empty() && n.is_multiple_of(scale.len()) => (
            int_to_f32_tensor(name, w, n / scale.len(), scale.len(), |q, c| {
                unscaled(q) * scale[c]
            }),
            true,
        ),
        _ => (int_to_f32_tensor(name, w, n, 1, |q, _| unscaled(q)), false),
    };
    let w_f = w_f.map_err(bad)?;
    let conv = NodeProto {
        input: vec![node.input[0].clone(), w_f.name.clone()],
        output: vec![out_name.clone()],
        name: node.name.clone(),
        op_type: "Conv".into(),
        attribute: node.attribute.clone(),
        ..Default::default()
    };
    Ok((conv, w_f, folded))
}

/// A `ConvInteger`'s `Cast -> Mul(per-channel scale) -> Add(per-channel bias)` chain, as
/// `renalscan quantize` writes it for convs feeding residual Adds.
struct RescaleChain {
    scale: Vec<f32>,
    bias: Vec<f32>,
    /// The Add's output, which the folded conv produces.
    output: String,
    /// Labels of the Cast, Mul and Add.
    nodes: [String; 3],
}

/// Finds the rescale chain after `conv` when each link has exactly one consumer and constant
/// per-channel operands; otherwise `None` and the chain is kept as it is.
fn rescale_chain(
    graph: &pb::GraphProto,
    conv: &NodeProto,
    consts: &HashMap<&str, &TensorProto>,
) -> Option<RescaleChain> {
    let only_user = |t: &str, op: &str| -> Option<&NodeProto> {
        let mut users = graph.node.iter().filter(|n| n.input.iter().any(|i| i == t));
        let u = users.next()?;
        (users.next().is_none() && u.op_type == op && !graph.output.iter().any(|o| o.name == t))
            .then_some(u)
    };
    let other_const = |n: &NodeProto, t: &str| -> Option<Vec<f32>> {
        let [a, b] = &n.input[..] else { return None };
        let c = if a == t { b } else { a };
        f32_values(consts.get(c.as_str())?).ok()
    };
    let channels = consts
        .get(conv.input.get(1)?.as_str())?
        .dims
        .first()
        .copied()? as usize;
    let cast = only_user(conv.output.first()?, "Cast")?;
    let mul = only_user(cast.output.first()?, "Mul")?;
    let scale = other_const(mul, cast.output.first()?)?;
    let add = only_user(mul.output.first()?, "Add")?;
    let bias = other_const(add, mul.output.first()?)?;
    (channels > 0 && scale.len() == channels && bias.len() == channels).then(|| RescaleChain {
        scale,
        bias,
        output: add.output[0].clone(),
        nodes: [node_label(cast), node_label(mul), node_label(add)],
    })
}

/// Ops that compute a convolution or matmul without one of tract-linalg's matmul kernels.
const UNLOWERED: [&str; 8] = [
    "Conv",
    "DirectSpatialConv",
    "DepthWiseConv",
    "BlockedConv",
    "conv_nhwc",
    "EinSum",
    "EinSumMatMul",
    "PrefixMatMul",
];

/// How an optimised plan computes its convolutions and matmuls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSummary {
    /// Matmul kernels, with how many matmul nodes list each, sorted by name.
    pub kernels: Vec<KernelUse>,
    /// Matmul nodes accumulating in i32 (integer kernels).
    pub integer_matmuls: usize,
    /// Matmul nodes accumulating in a float type.
    pub float_matmuls: usize,
    /// Nodes that compute a convolution or matmul some other way (`name (op)`).
    pub convs_left: Vec<String>,
}

/// One matmul kernel and how many matmul nodes of a plan may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelUse {
    /// tract-linalg kernel name (`avx2_mmm_i32_8x8`, `arm64simd_mmm_i32_8x8_dot`, ...).
    pub kernel: String,
    /// Integer (i32) accumulation.
    pub integer: bool,
    /// Matmul nodes listing it.
    pub count: usize,
}

/// Summarises an optimised plan: tract lowers each convolution to im2col + `OptMatMul`,
/// whose kernels say whether it runs in integers.
pub fn plan_summary(model: &TypedModel) -> PlanSummary {
    let mut summary = PlanSummary::default();
    let mut uses: HashMap<(String, bool), usize> = HashMap::new();
    for node in model.nodes() {
        if let Some(op) = node.op_as::<OptMatMul>() {
            let integer = op.mmm.iter().any(|k| k.internal_type() == DatumType::I32);
            if integer {
                summary.integer_matmuls += 1;
            } else {
                summary.float_matmuls += 1;
            }
            let names: HashSet<(String, bool)> = op
                .mmm
                .iter()
                .map(|k| (k.name().to_string(), k.internal_type() == DatumType::I32))
                .collect();
            for key in names {
                *uses.entry(key).or_default() += 1;
            }
        } else if UNLOWERED.contains(&node.op().name().as_ref()) {
            summary
                .convs_left
                .push(format!("{} ({})", node.name, node.op().name()));
        }
    }
    summary.kernels = uses
        .into_iter()
        .map(|((kernel, integer), count)| KernelUse {
            kernel,
            integer,
            count,
        })
        .collect();
    summary.kernels.sort_by(|a, b| a.kernel.cmp(&b.kernel));
    summary
}

/// The int8 kernel tract would pick on this CPU for a typical ResNet convolution (64 output
/// channels, k = 576, 56 x 56 positions), asked of tract-linalg's dispatcher without building
/// a model.
pub fn native_int8_kernel() -> Option<String> {
    let query = tract_linalg::mmm::Query::plain(DatumType::I32, Some(64), Some(576), Some(3136));
    tract_linalg::MmmDispatch::native()
        .pick(&query)
        .map(|(k, _, _)| k.name().to_string())
}

/// What we know about the integer form here before building it.
enum Outlook {
    /// Slower than float for a known reason: do not build it.
    KnownSlow(String),
    /// Worth a start-up timing against the float form.
    Measure(String),
}

fn integer_outlook() -> Outlook {
    let kernel = native_int8_kernel();
    match kernel.as_deref() {
        Some(SLOW_X86_KERNEL) => Outlook::KnownSlow(format!(
            "tract picks {SLOW_X86_KERNEL} for int8 on this CPU; in tract 0.23.9 its inner loop \
             stalls on a legacy-SSE movq (about 60x slower than fp32 on ResNet-50, see \
             {X86_DEFECT_DOC})"
        )),
        Some(k) => Outlook::Measure(format!("tract picks {k} for int8 on this CPU")),
        None => Outlook::KnownSlow("tract has no int8 matmul kernel for this CPU".into()),
    }
}

/// What identifies a file loaded by path: path, size and modification time.
pub(crate) fn file_identity(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}|{}|{mtime}", path.display(), meta.len()))
}

/// What identifies a timed decision: the model, the architecture, the int8 kernel tract
/// picks here and whether the half form was a candidate.
fn decision_key(model: &str, kernel: &str, half: bool) -> String {
    let key = format!("{model}|{}|{kernel}", std::env::consts::ARCH);
    if half {
        key + "|fp16"
    } else {
        key
    }
}

/// A remembered Auto decision: the form and the two first-run timings (ms) behind it.
#[derive(Debug, Clone, PartialEq)]
struct CachedDecision {
    key: String,
    built: Built,
    /// NaN where that form was not timed.
    integer_ms: f64,
    /// NaN where that form was not timed.
    float_ms: f64,
    /// Absent where the half form was no candidate.
    half_ms: Option<f64>,
}

impl CachedDecision {
    fn to_text(&self) -> String {
        let form = match self.built {
            Built::Integer => "integer",
            Built::Half => "half",
            _ => "float",
        };
        let mut t = format!(
            "# renalscan int8 form decision (delete to re-time)\nkey={}\nform={form}\n\
             integer_ms={:.1}\nfloat_ms={:.1}\n",
            self.key, self.integer_ms, self.float_ms
        );
        if let Some(h) = self.half_ms {
            t.push_str(&format!("half_ms={h:.1}\n"));
        }
        t
    }

    fn parse(text: &str) -> Option<Self> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Self {
            key: get("key")?,
            built: match get("form")?.as_str() {
                "integer" => Built::Integer,
                "float" => Built::Float,
                "half" => Built::Half,
                _ => return None,
            },
            integer_ms: get("integer_ms")?.parse().ok()?,
            float_ms: get("float_ms")?.parse().ok()?,
            half_ms: get("half_ms").and_then(|v| v.parse().ok()),
        })
    }

    fn read(file: &Path, key: &str) -> Option<Self> {
        let d = Self::parse(&std::fs::read_to_string(file).ok()?)?;
        (d.key == key).then_some(d)
    }

    /// Best effort: a start-up must not fail because a cache cannot be written.
    fn write(&self, file: &Path) {
        let tmp = file.with_extension("tmp");
        let r = std::fs::write(&tmp, self.to_text()).and_then(|_| std::fs::rename(&tmp, file));
        if let Err(e) = r {
            log::warn!("cannot write form decision cache {}: {e}", file.display());
        }
    }
}

/// The proto after reading: kept so Auto can build both forms from one decode.
pub(crate) struct Decoded {
    pub proto: ModelProto,
    pub read: Duration,
}

/// Where model bytes came from: the file named in messages, the directory of external
/// tensor data (files loaded by path only) and the identity that keys the decision cache.
pub(crate) struct Origin<'a> {
    pub path: &'a Path,
    pub dir: Option<&'a Path>,
    pub identity: Option<String>,
}

pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Decoded, crate::ModelError> {
    use prost::Message;
    let t0 = Instant::now();
    let proto = ModelProto::decode(bytes).map_err(|e| crate::ModelError::Load {
        path: path.to_path_buf(),
        reason: format!("not an ONNX protobuf: {e}"),
    })?;
    Ok(Decoded {
        proto,
        read: t0.elapsed(),
    })
}

/// A runnable network and what building it took.
pub(crate) struct BuiltNet {
    pub net: crate::Network,
    pub candidate: Candidate,
}

/// Builds `form` of the model: the file as is (plain, integer), or rewritten to the float
/// form, optionally translated to f16 (half).
fn build(
    proto: &ModelProto,
    origin: &Origin,
    shape: &[usize],
    form: Built,
    read: Duration,
) -> Result<BuiltNet, crate::ModelError> {
    let t0 = Instant::now();
    let rewritten;
    let proto = if matches!(form, Built::Float | Built::Half) {
        rewritten = float_form(proto, origin.path)?;
        log::debug!("float-form rewrite {:.0} ms", ms(t0.elapsed()));
        &rewritten
    } else {
        proto
    };
    let (net, plan) = crate::Network::from_proto(proto, origin, shape, read, form == Built::Half)?;
    Ok(BuiltNet {
        net,
        candidate: Candidate {
            build: t0.elapsed(),
            first_run: None,
            plan,
        },
    })
}

fn time_one_run(net: &crate::Network) -> Result<Duration, crate::ModelError> {
    let zeros = vec![0f32; net.input_shape().iter().product()];
    let t0 = Instant::now();
    net.run(&zeros)?;
    Ok(t0.elapsed())
}

/// A built form and why it was chosen.
struct Choice {
    net: crate::Network,
    built: Built,
    reason: String,
    integer: Option<Candidate>,
    float: Option<Candidate>,
    half: Option<Candidate>,
}

impl Choice {
    /// One built form, the only candidate.
    fn one(b: BuiltNet, built: Built, reason: String) -> Self {
        let mut c = Choice {
            net: b.net,
            built,
            reason,
            integer: None,
            float: None,
            half: None,
        };
        c.record(built, b.candidate);
        c
    }

    /// Keeps what building `built` cost (a plain float model is no candidate form).
    fn record(&mut self, built: Built, candidate: Candidate) {
        let slot = match built {
            Built::Integer => &mut self.integer,
            Built::Half => &mut self.half,
            Built::Float => &mut self.float,
            Built::Plain => return,
        };
        *slot = Some(candidate);
    }
}

/// Loads model bytes for `shape` in the form `opts` asks for (see
/// [`crate::Network::from_bytes`]).
pub(crate) fn load(
    bytes: &[u8],
    origin: &Origin,
    shape: &[usize],
    opts: &LoadOptions,
) -> Result<crate::Network, crate::ModelError> {
    let Decoded { proto, read } = decode(bytes, origin.path)?;
    let head = opts.cam_head.as_deref().map(|output| {
        crate::cam::HeadWeights::from_proto(&proto, origin.path, output).map_err(|e| e.to_string())
    });
    let qconvs = qlinear_conv_count(&proto);
    let one = |built: Built, reason: &str| -> Result<Choice, crate::ModelError> {
        let b = build(&proto, origin, shape, built, read)?;
        Ok(Choice::one(b, built, reason.to_string()))
    };
    let choice = if qconvs == 0 {
        one(
            Built::Plain,
            "no QLinearConv or ConvInteger in the file: a float model",
        )?
    } else {
        match opts.form {
            Form::Integer => one(Built::Integer, "asked for")?,
            Form::Float => one(Built::Float, "asked for")?,
            Form::Half => one(Built::Half, "asked for")?,
            Form::Auto => auto(&proto, origin, shape, read, opts)?,
        }
    };
    let report = FormReport {
        requested: opts.form,
        built: choice.built,
        reason: choice.reason,
        qlinear_convs: qconvs,
        integer: choice.integer,
        float: choice.float,
        half: choice.half,
    };
    log::info!("{}: {report}", origin.path.display());
    let mut net = choice.net;
    net.form = Some(report);
    net.head = head;
    net.set_threads(opts.threads)?;
    Ok(net)
}

/// Auto: the candidates this CPU and this model allow (float always; integer unless tract's
/// integer kernel here is known to be slow; half on a CPU with f16 arithmetic when the model
/// proves its agreement), the fastest on one run each, or the remembered result of that
/// timing.
fn auto(
    proto: &ModelProto,
    origin: &Origin,
    shape: &[usize],
    read: Duration,
    opts: &LoadOptions,
) -> Result<Choice, crate::ModelError> {
    let mut candidates = vec![Built::Float];
    let mut why = Vec::new();
    match integer_outlook() {
        Outlook::KnownSlow(w) if !opts.time_known_slow => {
            why.push(format!("{w}; integer form not built"));
        }
        Outlook::KnownSlow(w) | Outlook::Measure(w) => {
            why.push(w);
            candidates.push(Built::Integer);
        }
    }
    if !fp16_arithmetic() {
        why.push("no f16 arithmetic on this CPU: half form not built".into());
    } else if !opts.half_proven {
        why.push(
            "f16 arithmetic here, but the model does not record the half form's agreement \
             with fp32: half form not built"
                .into(),
        );
    } else {
        why.push("f16 arithmetic here and the half form's agreement is recorded".into());
        candidates.push(Built::Half);
    }
    let why = why.join("; ");
    if candidates.len() == 1 {
        let b = build(proto, origin, shape, Built::Float, read)?;
        return Ok(Choice::one(b, Built::Float, why));
    }
    let half = candidates.contains(&Built::Half);
    let key = origin
        .identity
        .as_deref()
        .map(|id| decision_key(id, native_int8_kernel().as_deref().unwrap_or("none"), half));
    let cache = opts.decision_cache.as_deref().zip(key);
    if let Some(d) = cache
        .as_ref()
        .and_then(|(file, key)| CachedDecision::read(file, key))
        .filter(|d| candidates.contains(&d.built))
    {
        let b = build(proto, origin, shape, d.built, read)?;
        let reason = format!(
            "{why}; remembered choice (integer {:.0} ms, float {:.0} ms{} when timed; delete {} \
             to re-time)",
            d.integer_ms,
            d.float_ms,
            d.half_ms
                .map(|h| format!(", half {h:.0} ms"))
                .unwrap_or_default(),
            opts.decision_cache
                .as_deref()
                .map(Path::display)
                .map(|p| p.to_string())
                .unwrap_or_default()
        );
        return Ok(Choice::one(b, d.built, reason));
    }
    // One run each: the first run pays allocation and packing, equally for all, and is what
    // a start-up can afford.
    let mut built = Vec::new();
    for &form in &candidates {
        let mut b = build(proto, origin, shape, form, read)?;
        let t = time_one_run(&b.net)?;
        b.candidate.first_run = Some(t);
        built.push((form, t, b));
    }
    // `candidates` always holds the float form, so there is a fastest.
    let Some(fastest) = (0..built.len()).min_by_key(|&i| built[i].1) else {
        return Err(crate::ModelError::Run("no candidate form was built".into()));
    };
    let best = built[fastest].0;
    let time_of = |f: Built| {
        built
            .iter()
            .find(|(g, _, _)| *g == f)
            .map(|(_, t, _)| ms(*t))
    };
    let (ti, tf, th) = (
        time_of(Built::Integer),
        time_of(Built::Float),
        time_of(Built::Half),
    );
    if let Some((file, key)) = cache {
        CachedDecision {
            key,
            built: best,
            integer_ms: ti.unwrap_or(f64::NAN),
            float_ms: tf.unwrap_or(f64::NAN),
            half_ms: th,
        }
        .write(file);
    }
    let timed: Vec<String> = built
        .iter()
        .map(|(f, t, _)| {
            format!(
                "{} {:.0} ms",
                f.to_string().trim_end_matches(" form"),
                ms(*t)
            )
        })
        .collect();
    let reason = format!("{why}; timed one run each: {}", timed.join(", "));
    let (_, _, b) = built.swap_remove(fastest);
    let mut choice = Choice::one(b, best, reason);
    for (form, _, b) in built {
        choice.record(form, b.candidate);
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_round_trips_and_refuses_other_keys_and_forms() {
        let d = CachedDecision {
            key: "/m.onnx|123|456|x86_64|avx512amx_mmm_i32_16x16".into(),
            built: Built::Integer,
            integer_ms: 101.5,
            float_ms: 140.25,
            half_ms: None,
        };
        let back = CachedDecision::parse(&d.to_text()).expect("parses");
        assert_eq!(back.key, d.key);
        assert_eq!(back.built, Built::Integer);
        assert!((back.float_ms - 140.2).abs() < 0.1);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("form.txt");
        d.write(&file);
        assert!(CachedDecision::read(&file, &d.key).is_some());
        assert!(CachedDecision::read(&file, "/m.onnx|124|456|x86_64|k").is_none());
        std::fs::write(&file, d.to_text().replace("form=integer", "form=fast")).expect("write");
        assert!(CachedDecision::read(&file, &d.key).is_none());
    }

    #[test]
    fn weight_tables_give_what_each_element_would() {
        let scale = [0.013f32, -0.5, 3.0e-4, 2.5, -0.031, 0.7, 1.0e-3];
        let f = |q: i64, c: usize| (q as f64 / 0.07f64) as f32 * scale[c];
        // 3 channels of 300 int8 weights (table per channel) and of 5 (element by element);
        // then tensors large enough to be split over threads, with part boundaries inside a
        // channel's run of blocks: 7 channels of 45,001 (table) and 7 x 451 blocks of 101.
        for (inner, channels, dims) in [
            (300, 3, vec![3i64, 300]),
            (5, 3, vec![180, 5]),
            (45_001, 7, vec![7, 45_001]),
            (101, 7, vec![3157, 101]),
        ] {
            let n = dims.iter().product::<i64>() as u32;
            let bytes: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(37) % 251) as u8).collect();
            let t = TensorProto {
                name: "w".into(),
                dims: dims.clone(),
                data_type: DataType::Int8 as i32,
                raw_data: bytes.clone(),
                ..Default::default()
            };
            let got = int_to_f32_tensor("w_f".into(), &t, inner, channels, f).unwrap();
            let want: Vec<f32> = bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| f(b as i8 as i64, (i / inner) % channels))
                .collect();
            assert_eq!(got.dims, dims);
            let got = f32_values(&got).unwrap();
            assert!(got == want, "inner {inner}: values differ");
        }
        // Values kept in int32_data (no raw bytes) take the same arithmetic.
        let t = TensorProto {
            name: "w".into(),
            dims: vec![2, 2],
            data_type: DataType::Int8 as i32,
            int32_data: vec![-128, 127, 0, -1],
            ..Default::default()
        };
        let got = int_to_f32_tensor("w_f".into(), &t, 2, 2, f).unwrap();
        let want = [f(-128, 0), f(127, 0), f(0, 1), f(-1, 1)];
        assert_eq!(f32_values(&got).unwrap(), want);
    }

    #[test]
    fn float_form_folds_dequantized_constant_weights_per_channel() {
        let q = TensorProto {
            name: "w_q8".into(),
            dims: vec![2, 1, 1, 2],
            data_type: DataType::Int8 as i32,
            raw_data: [3i8, -4, 127, -128].iter().map(|v| *v as u8).collect(),
            ..Default::default()
        };
        let scale = f32_tensor("w_scale".into(), vec![2], &[0.5, 0.25]);
        let dq = NodeProto {
            op_type: "DequantizeLinear".into(),
            name: "w_dequant".into(),
            input: vec!["w_q8".into(), "w_scale".into()],
            output: vec!["w".into()],
            attribute: vec![pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let conv = NodeProto {
            op_type: "Conv".into(),
            name: "c".into(),
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        let model = ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![dq, conv],
                initializer: vec![q, scale],
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = float_form(&model, Path::new("m.onnx")).expect("float form");
        let g = out.graph.expect("graph");
        assert_eq!(g.node.len(), 1, "the DequantizeLinear became a constant");
        assert_eq!(g.node[0].op_type, "Conv");
        let w = g.initializer.iter().find(|t| t.name == "w").expect("w");
        assert_eq!(w.dims, vec![2, 1, 1, 2]);
        assert_eq!(f32_values(w).expect("f32"), vec![1.5, -2.0, 31.75, -32.0]);
        assert!(g.initializer.iter().all(|t| t.name != "w_q8"));

        // A scale count that fits no axis is a layout error naming the node.
        let mut bad = model_with_scale_len(3);
        let e = float_form(&bad, Path::new("m.onnx")).expect_err("refused");
        assert!(e.to_string().contains("w_dequant"), "{e}");
        // A zero-length axis with values behind it is refused, not a division by zero.
        let mut empty_axis = model_with_scale_len(0);
        if let Some(g) = empty_axis.graph.as_mut() {
            g.initializer[0].dims = vec![2, 0];
        }
        assert!(float_form(&empty_axis, Path::new("m.onnx")).is_err());
        bad.graph = None;
        assert!(float_form(&bad, Path::new("m.onnx")).is_ok());
    }

    fn model_with_scale_len(n: usize) -> ModelProto {
        let q = TensorProto {
            name: "w_q8".into(),
            dims: vec![2, 2],
            data_type: DataType::Int8 as i32,
            raw_data: vec![1, 2, 3, 4],
            ..Default::default()
        };
        let scale = f32_tensor("w_scale".into(), vec![n as i64], &vec![1.0; n]);
        ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![NodeProto {
                    op_type: "DequantizeLinear".into(),
                    name: "w_dequant".into(),
                    input: vec!["w_q8".into(), "w_scale".into()],
                    output: vec!["w".into()],
                    ..Default::default()
                }],
                initializer: vec![q, scale],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn quantized_ops_are_recognised() {
        let n = |op: &str| NodeProto {
            op_type: op.into(),
            ..Default::default()
        };
        for op in [
            "QLinearConv",
            "QLinearMatMul",
            "QGemm",
            "ConvInteger",
            "MatMulInteger",
        ] {
            assert!(is_quantized_op(&n(op)), "{op}");
        }
        for op in ["Conv", "QuantizeLinear", "DequantizeLinear", "Relu", "Gemm"] {
            assert!(!is_quantized_op(&n(op)), "{op}");
        }
    }
}
