//! Reading the float ONNX model and rewriting it into the int8 QOperator form (or into its
//! float simulation).
//!
//! Every tensor of the rewritten graph lives in one of two domains: float (original name) or
//! int8 (`<name>_q8`, scale from calibration; zero point 0, or -128 for post-ReLU tensors in
//! the full-range [`ActEncoding`]). Convolutions consume and produce int8 (those feeding a
//! residual Add, or a float-kept activation, produce float); MaxPool follows its input;
//! everything else (residual Add, the head) runs in float, fed through `DequantizeLinear`.
//! Conversions are inserted lazily, once per tensor, only where a consumer needs the other
//! domain.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use onnx_graph::tensor;
use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

use crate::error::QuantizeError;
use crate::math::{conv_weights, quantize_bias, RoundedWeights, Sqnr};

/// Operators accepted in the float input model: the network, its head (a per-cell head's
/// `ReduceMax` and `ReduceLogSumExp` included) and the view gate's outputs (which stay float,
/// like the head).
pub const INPUT_OPS: [&str; 18] = [
    "Conv",
    "Relu",
    "MaxPool",
    "Add",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Concat",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "Softmax",
    "Sigmoid",
    "Sub",
    "Mul",
    "ReduceSumSquare",
    "ReduceMax",
    "ReduceLogSumExp",
];

/// Operators that mean the input is already quantized.
const QUANT_OPS: [&str; 7] = [
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
];

/// ONNX opset of the written file.
pub const OPSET: i64 = 13;
/// Suffix of int8 tensors.
pub const Q8: &str = "_q8";
/// The empty set of float-kept activations.
static NO_KEYS: BTreeSet<String> = BTreeSet::new();
/// Name of the shared int8 zero point initializer.
const ZERO_POINT: &str = "q8.zero_point";
/// Name of the shared zero point of full-range post-ReLU activations.
const RELU_ZERO_POINT: &str = "q8.zero_point_relu";

/// Which graph to build from the same quantization parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The shipped file: `QLinearConv` on int8 weights and int32 biases.
    Integer,
    /// The same arithmetic in float kernels: int8 weights dequantized into a float `Conv`,
    /// activations still rounded and saturated by `QuantizeLinear`/`DequantizeLinear`.
    /// tract runs it about 30x faster than its integer kernels here.
    Simulated,
}

/// How activations are encoded in int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum ActEncoding {
    /// Every activation symmetric, zero point 0: post-ReLU tensors use only 0..127.
    #[default]
    Symmetric,
    /// Post-ReLU (non-negative) tensors use all 256 levels, zero point -128 (half the step,
    /// about 6 dB more SQNR); signed tensors (the model input) stay symmetric.
    ReluFullRange,
}

/// A validated float model.
#[derive(Debug, Clone)]
pub struct FloatModel {
    proto: ModelProto,
    init: HashMap<String, usize>,
    encoding: ActEncoding,
    /// Tensors produced by `Relu` (non-negative).
    relu_outputs: HashSet<String>,
}

/// What the rewrite did to one convolution, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvInfo {
    /// Node name.
    pub name: String,
    /// Output channels.
    pub channels: usize,
    /// Key of the calibrated tensor feeding it.
    pub input: String,
    /// Key of the calibrated tensor it produces (its Relu output when fused); empty when
    /// the output stays float (a conv feeding a residual Add, written as `ConvInteger`).
    pub output: String,
    /// SQNR of the int8 per-channel weights against the float ones, dB.
    pub weight_sqnr_db: f64,
    /// Biases that did not fit int32 (should be 0).
    pub bias_saturated: usize,
}

/// Per-conv, per-output-channel amounts subtracted from the float bias before quantizing
/// it (bias correction), keyed by conv node name.
pub type BiasCorrection = BTreeMap<String, Vec<f32>>;

/// Everything that departs from the plain rewrite (nearest rounding, float biases, every
/// activation int8).
#[derive(Debug, Clone, Copy, Default)]
pub struct Adjustments<'a> {
    /// Bias correction of the weight rounding.
    pub correction: Option<&'a BiasCorrection>,
    /// Weights rounded by [`crate::gptq`] instead of to nearest.
    pub rounded: Option<&'a RoundedWeights>,
    /// Activations (calibration keys) kept float; see [`FloatModel::rewrite_mixed`].
    pub float_keys: Option<&'a BTreeSet<String>>,
}

fn io_err(e: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::Decode(e.to_string())
}

/// Indices of the nodes of `graph` that read tensor `t`.
pub(crate) fn readers(graph: &GraphProto, t: &str) -> Vec<usize> {
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.input.iter().any(|i| i == t))
        .map(|(i, _)| i)
        .collect()
}

/// Float contents of an initializer.
pub fn float_data(t: &TensorProto) -> Result<Vec<f32>, QuantizeError> {
    if t.data_type != DataType::Float as i32 {
        return Err(QuantizeError::NotFloat(format!(
            "initializer `{}` has ONNX data type {}",
            t.name, t.data_type
        )));
    }
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(4) {
            return Err(QuantizeError::Invalid(format!(
                "initializer `{}`: raw data of {} bytes",
                t.name,
                t.raw_data.len()
            )));
        }
        return Ok(t
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    Ok(t.float_data.clone())
}

impl FloatModel {
    /// Decodes and validates: every node one of [`INPUT_OPS`], float input and initializers
    /// (int64 allowed for shapes), convolution weights as initializers.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, QuantizeError> {
        let proto = ModelProto::decode(bytes).map_err(io_err)?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| QuantizeError::Invalid("no graph".into()))?;
        for n in &graph.node {
            if QUANT_OPS.contains(&n.op_type.as_str()) {
                return Err(QuantizeError::NotFloat(format!(
                    "node `{}` is {} (already quantized?)",
                    n.name, n.op_type
                )));
            }
            if !INPUT_OPS.contains(&n.op_type.as_str()) || !n.domain.is_empty() {
                return Err(QuantizeError::UnsupportedOp {
                    op: n.op_type.clone(),
                    node: n.name.clone(),
                });
            }
            if n.input.first().is_none_or(|i| i.is_empty()) || n.output.is_empty() {
                return Err(QuantizeError::Invalid(format!(
                    "node `{}` has no input or no output",
                    n.name
                )));
            }
        }
        for t in &graph.initializer {
            if t.data_type != DataType::Float as i32 && t.data_type != DataType::Int64 as i32 {
                return Err(QuantizeError::NotFloat(format!(
                    "initializer `{}` has ONNX data type {} (float expected)",
                    t.name, t.data_type
                )));
            }
        }
        let init: HashMap<String, usize> = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !init.contains_key(&i.name))
            .collect();
        if inputs.len() != 1 {
            return Err(QuantizeError::Invalid(format!(
                "expected one image input, found {}",
                inputs.len()
            )));
        }
        if let Some(type_proto::Value::TensorType(t)) =
            inputs[0].r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            if t.elem_type != DataType::Float as i32 {
                return Err(QuantizeError::NotFloat(format!(
                    "input `{}` has ONNX data type {}",
                    inputs[0].name, t.elem_type
                )));
            }
        }
        for n in graph.node.iter().filter(|n| n.op_type == "Conv") {
            let w = n.input.get(1).and_then(|w| init.get(w));
            let ok = w.is_some_and(|&i| graph.initializer[i].dims.len() == 4)
                && n.input
                    .get(2)
                    .is_none_or(|b| b.is_empty() || init.contains_key(b));
            if !ok {
                return Err(QuantizeError::Invalid(format!(
                    "Conv `{}` needs a 4-D weight initializer and an initializer bias",
                    n.name
                )));
            }
        }
        let relu_outputs = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Relu")
            .flat_map(|n| n.output.iter().cloned())
            .collect();
        Ok(Self {
            proto,
            init,
            encoding: ActEncoding::default(),
            relu_outputs,
        })
    }

    /// Chooses how activations are encoded by the rewrites that follow.
    pub fn set_encoding(&mut self, encoding: ActEncoding) {
        self.encoding = encoding;
    }

    /// How activations are encoded (see [`FloatModel::set_encoding`]).
    pub fn encoding(&self) -> ActEncoding {
        self.encoding
    }

    /// Scale and zero point of activation `key` in the file, from its symmetric scale
    /// (`threshold / 127`, what [`crate::Stats::scales`] gives).
    pub fn act_qparams(&self, key: &str, symmetric_scale: f32) -> (f32, i8) {
        if self.encoding == ActEncoding::ReluFullRange && self.relu_outputs.contains(key) {
            (
                crate::math::relu_scale(symmetric_scale * crate::math::ACT_MAX),
                crate::math::RELU_ZERO_POINT,
            )
        } else {
            (symmetric_scale, 0)
        }
    }

    fn graph(&self) -> &GraphProto {
        // Checked in from_bytes.
        static EMPTY: std::sync::OnceLock<GraphProto> = std::sync::OnceLock::new();
        self.proto
            .graph
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(GraphProto::default))
    }

    /// The decoded model.
    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    /// Name of the image input.
    pub fn input_name(&self) -> &str {
        self.graph()
            .input
            .iter()
            .find(|i| !self.init.contains_key(&i.name))
            .map_or("", |i| i.name.as_str())
    }

    /// Input dimensions with a symbolic batch set to 1 (None if the model does not say).
    pub fn input_shape(&self) -> Option<Vec<usize>> {
        let name = self.input_name();
        let vi = self.graph().input.iter().find(|i| i.name == name)?;
        let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else {
            return None;
        };
        let dims = &t.shape.as_ref()?.dim;
        Some(
            dims.iter()
                .enumerate()
                .map(|(i, d)| match d.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v))
                        if v > 0 =>
                    {
                        v as usize
                    }
                    _ if i == 0 => 1,
                    _ => 0,
                })
                .collect(),
        )
        .filter(|d: &Vec<usize>| !d.contains(&0))
    }

    /// Names of the graph outputs.
    pub fn output_names(&self) -> Vec<String> {
        self.graph().output.iter().map(|o| o.name.clone()).collect()
    }

    /// Tensors whose activation range must be calibrated, in graph order.
    pub fn calibration_tensors(&self) -> Result<Vec<String>, QuantizeError> {
        let mut r = Rewriter::new(self, None, Form::Integer);
        r.run()?;
        Ok(r.requested)
    }

    /// Builds the int8 model (or its simulation) with the given activation scales.
    pub fn rewrite(
        &self,
        scales: &BTreeMap<String, f32>,
        form: Form,
    ) -> Result<(ModelProto, Vec<ConvInfo>), QuantizeError> {
        self.rewrite_corrected(scales, form, None)
    }

    /// [`FloatModel::rewrite`] with each conv's bias reduced by `correction[conv][c]`.
    pub fn rewrite_corrected(
        &self,
        scales: &BTreeMap<String, f32>,
        form: Form,
        correction: Option<&BiasCorrection>,
    ) -> Result<(ModelProto, Vec<ConvInfo>), QuantizeError> {
        self.rewrite_mixed(scales, form, correction, &BTreeSet::new())
    }

    /// [`FloatModel::rewrite_corrected`] keeping the activations named in `float_keys`
    /// (calibration keys) unquantized: their producing conv keeps an integer matmul with a
    /// float output (as for residual branches) and the convs reading them compute in float
    /// on int8-stored weights dequantized at load. The file stays as small; only those
    /// activations lose their rounding error.
    pub fn rewrite_mixed(
        &self,
        scales: &BTreeMap<String, f32>,
        form: Form,
        correction: Option<&BiasCorrection>,
        float_keys: &BTreeSet<String>,
    ) -> Result<(ModelProto, Vec<ConvInfo>), QuantizeError> {
        self.rewrite_with(
            scales,
            form,
            Adjustments {
                correction,
                rounded: None,
                float_keys: Some(float_keys),
            },
        )
    }

    /// The rewrite with every [`Adjustments`] option.
    pub fn rewrite_with(
        &self,
        scales: &BTreeMap<String, f32>,
        form: Form,
        adj: Adjustments<'_>,
    ) -> Result<(ModelProto, Vec<ConvInfo>), QuantizeError> {
        let float_keys = adj.float_keys.unwrap_or(&NO_KEYS);
        let known = self.calibration_tensors()?;
        if let Some(k) = float_keys.iter().find(|k| !known.contains(k)) {
            return Err(QuantizeError::Invalid(format!(
                "`{k}` is not a quantized activation of this model (known: {})",
                known.join(", ")
            )));
        }
        let mut r = Rewriter::new(self, Some(scales), form);
        r.correction = adj.correction;
        r.rounded = adj.rounded;
        r.float_keys = float_keys;
        r.run()?;
        let convs = std::mem::take(&mut r.convs);
        Ok((r.finish(), convs))
    }
}

struct Rewriter<'a> {
    model: &'a FloatModel,
    scales: Option<&'a BTreeMap<String, f32>>,
    form: Form,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    init_names: HashSet<String>,
    /// Float tensors available under their original name.
    float: HashSet<String>,
    /// Int8 tensors (`<name>_q8`) and the calibration key of their scale.
    int8: HashMap<String, String>,
    /// Conv-input dequantizations already emitted (simulation).
    dq_inputs: HashSet<String>,
    requested: Vec<String>,
    convs: Vec<ConvInfo>,
    correction: Option<&'a BiasCorrection>,
    rounded: Option<&'a RoundedWeights>,
    /// Activations kept float (see [`FloatModel::rewrite_mixed`]).
    float_keys: &'a BTreeSet<String>,
    /// Float tensors standing for a float-kept activation (its MaxPool), and that key.
    float_alias: HashMap<String, String>,
}

/// A conv's int8 weights: initializer name, per-channel scales, channel count, SQNR.
struct Weights {
    wq: String,
    scales: Vec<f32>,
    channels: usize,
    sqnr_db: f64,
}

/// A conv's quantized operands, shared by both output kinds.
struct Prepared {
    /// Int8 input tensor.
    x: String,
    /// Calibration key of the input's scale.
    x_key: String,
    x_scale: f32,
    channels: usize,
    /// Int8 weight initializer.
    wq: String,
    w_scales: Vec<f32>,
    /// Float bias (zeros when the conv has none).
    bias: Vec<f32>,
    /// Bias quantized to int32 with `x_scale * w_scale[c]`.
    qb: Vec<i32>,
    /// Biases that did not fit int32.
    saturated: usize,
}

/// A float initializer: a scalar when `scalar`, else 1-D.
fn float_init(name: &str, v: &[f32], scalar: bool) -> TensorProto {
    let dims: &[usize] = if scalar { &[] } else { &[v.len()] };
    tensor::f32(name, dims, v)
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    onnx_graph::node(op, name, inputs, vec![], output)
}

fn axis0() -> AttributeProto {
    onnx_graph::attr::int("axis", 0)
}

impl<'a> Rewriter<'a> {
    fn new(model: &'a FloatModel, scales: Option<&'a BTreeMap<String, f32>>, form: Form) -> Self {
        let mut float: HashSet<String> = model.init.keys().cloned().collect();
        float.insert(model.input_name().to_string());
        Self {
            model,
            scales,
            form,
            nodes: Vec::new(),
            inits: Vec::new(),
            init_names: HashSet::new(),
            float,
            int8: HashMap::new(),
            dq_inputs: HashSet::new(),
            requested: Vec::new(),
            convs: Vec::new(),
            correction: None,
            rounded: None,
            float_keys: &NO_KEYS,
            float_alias: HashMap::new(),
        }
    }

    fn add_init(&mut self, t: TensorProto) -> String {
        let name = t.name.clone();
        if self.init_names.insert(name.clone()) {
            self.inits.push(t);
        }
        name
    }

    /// The file's scale of activation `key` (see [`FloatModel::act_qparams`]).
    fn scale(&mut self, key: &str) -> Result<f32, QuantizeError> {
        if !self.requested.iter().any(|k| k == key) {
            self.requested.push(key.to_string());
        }
        match self.scales {
            None => Ok(1.0),
            Some(s) => s
                .get(key)
                .copied()
                .filter(|v| *v > 0.0 && v.is_finite())
                .map(|v| self.model.act_qparams(key, v).0)
                .ok_or_else(|| QuantizeError::MissingScale(key.to_string())),
        }
    }

    /// The shared int8 zero point 0 (weights, symmetric activations).
    fn zero(&mut self) -> String {
        self.add_init(tensor::i8(ZERO_POINT, &[], &[0]))
    }

    /// Scale and zero point initializers of a calibration key.
    fn qparams(&mut self, key: &str) -> Result<(String, String), QuantizeError> {
        let s = self.scale(key)?;
        let scale = self.add_init(float_init(&format!("{key}.scale"), &[s], true));
        let (_, z) = self.model.act_qparams(key, 1.0);
        let zp = if z == 0 {
            self.zero()
        } else {
            self.add_init(tensor::i8(RELU_ZERO_POINT, &[], &[z]))
        };
        Ok((scale, zp))
    }

    /// The int8 version of tensor `t` (quantizing it if it is float).
    fn need_int8(&mut self, t: &str) -> Result<String, QuantizeError> {
        let q = format!("{t}{Q8}");
        if !self.int8.contains_key(t) {
            let (s, zp) = self.qparams(t)?;
            self.nodes.push(node(
                "QuantizeLinear",
                &format!("{t}_quant"),
                &[t, &s, &zp],
                &q,
            ));
            self.int8.insert(t.to_string(), t.to_string());
        }
        Ok(q)
    }

    /// The float version of tensor `t` (dequantizing it if it is int8).
    fn need_float(&mut self, t: &str) -> Result<String, QuantizeError> {
        if t.is_empty() || self.float.contains(t) {
            return Ok(t.to_string());
        }
        let key =
            self.int8.get(t).cloned().ok_or_else(|| {
                QuantizeError::Invalid(format!("tensor `{t}` used before defined"))
            })?;
        let (s, zp) = self.qparams(&key)?;
        let q = format!("{t}{Q8}");
        self.nodes.push(node(
            "DequantizeLinear",
            &format!("{t}_dequant"),
            &[&q, &s, &zp],
            t,
        ));
        self.float.insert(t.to_string());
        Ok(t.to_string())
    }

    fn consumers(&self, t: &str) -> Vec<usize> {
        readers(self.model.graph(), t)
    }

    fn run(&mut self) -> Result<(), QuantizeError> {
        let graph = self.model.graph();
        let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let mut fused: HashSet<usize> = HashSet::new();
        for (i, n) in graph.node.iter().enumerate() {
            if fused.contains(&i) {
                continue;
            }
            let out = n
                .output
                .first()
                .ok_or_else(|| QuantizeError::Invalid(format!("node `{}` has no output", n.name)))?
                .clone();
            match n.op_type.as_str() {
                "Conv" => {
                    let users = self.consumers(&out);
                    let relu = match users.as_slice() {
                        [u] if graph.node[*u].op_type == "Relu" && !outputs.contains(&*out) => {
                            Some(*u)
                        }
                        _ => None,
                    };
                    let key = match relu {
                        Some(u) => {
                            fused.insert(u);
                            graph.node[u].output.first().cloned().unwrap_or_default()
                        }
                        None => out.clone(),
                    };
                    // A conv whose output only feeds residual Adds keeps a float output
                    // (ConvInteger + per-channel rescale): those pre-add outputs are
                    // heavy-tailed and quantizing them cost the most accuracy.
                    let float_out = relu.is_none()
                        && !outputs.contains(&*out)
                        && !users.is_empty()
                        && users.iter().all(|u| graph.node[*u].op_type == "Add");
                    let input = n.input.first().map(String::as_str).unwrap_or_default();
                    let input_key = self
                        .int8
                        .get(input)
                        .or_else(|| self.float_alias.get(input))
                        .map_or(input, String::as_str);
                    if self.scales.is_some() && self.float_keys.contains(input_key) {
                        // Reads a float-kept activation: float compute, int8-stored weights.
                        self.conv_float(n, &out)?;
                        if relu.is_some() {
                            self.nodes.push(node("Relu", &key, &[&out], &key));
                            self.float.insert(key.clone());
                        }
                        continue;
                    }
                    if float_out {
                        self.conv_float_out(n, &out)?;
                        continue;
                    }
                    if self.scales.is_some() && self.float_keys.contains(&key) {
                        // Produces a float-kept activation: integer matmul, float output,
                        // float Relu.
                        self.conv_float_out(n, &out)?;
                        if relu.is_some() {
                            self.nodes.push(node("Relu", &key, &[&out], &key));
                            self.float.insert(key.clone());
                        }
                        continue;
                    }
                    self.conv(n, &out, &key)?;
                    if relu.is_some() {
                        // Relu in float between DequantizeLinear and QuantizeLinear: standard
                        // opset 13 (int8 Relu needs 14); exact, since the zero point maps back
                        // to 0, and tract folds the chain into an int8 operation.
                        let pre = self.need_float(&out)?;
                        self.nodes.push(node("Relu", &key, &[&pre], &key));
                        self.float.insert(key.clone());
                        let (s, zp) = self.qparams(&key)?;
                        let q = format!("{key}{Q8}");
                        self.nodes.push(node(
                            "QuantizeLinear",
                            &format!("{key}_quant"),
                            &[&key, &s, &zp],
                            &q,
                        ));
                        self.int8.insert(key.clone(), key.clone());
                    }
                }
                "MaxPool" if self.int8.contains_key(&n.input[0]) => {
                    let key = self.int8[&n.input[0]].clone();
                    let x = format!("{}{Q8}", n.input[0]);
                    let mut m = n.clone();
                    m.input = vec![x];
                    m.output = vec![format!("{out}{Q8}")];
                    self.nodes.push(m);
                    self.int8.insert(out.clone(), key);
                }
                "MaxPool" if self.float_keys.contains(&n.input[0]) => {
                    // Pooling a float-kept activation: float, and its output counts as the
                    // same activation for the convs reading it.
                    let mut m = n.clone();
                    m.input = vec![self.need_float(&n.input[0])?];
                    self.nodes.push(m);
                    self.float.insert(out.clone());
                    self.float_alias.insert(out.clone(), n.input[0].clone());
                }
                _ => {
                    let mut m = n.clone();
                    m.input = n
                        .input
                        .iter()
                        .map(|t| self.need_float(t))
                        .collect::<Result<_, _>>()?;
                    self.nodes.push(m);
                    for o in &n.output {
                        self.float.insert(o.clone());
                    }
                }
            }
        }
        for o in &graph.output {
            self.need_float(&o.name)?;
        }
        Ok(())
    }

    /// Int8 input, per-channel int8 weights and float bias of a conv; records its
    /// [`ConvInfo`] with `output` as the output key.
    fn prepare(&mut self, n: &NodeProto, output: &str) -> Result<Prepared, QuantizeError> {
        let x = self.need_int8(&n.input[0])?;
        let x_key = self.int8[&n.input[0]].clone();
        let w = self.weights(n)?;
        let bias = self.float_bias(n, w.channels)?;
        let x_scale = self.scale(&x_key)?;
        let (qb, saturated) = quantize_bias(&bias, x_scale, &w.scales);
        self.convs.push(ConvInfo {
            name: n.name.clone(),
            channels: w.channels,
            input: x_key.clone(),
            output: output.to_string(),
            weight_sqnr_db: w.sqnr_db,
            bias_saturated: if output.is_empty() { 0 } else { saturated },
        });
        Ok(Prepared {
            x,
            x_key,
            x_scale,
            channels: w.channels,
            wq: w.wq,
            w_scales: w.scales,
            bias,
            qb,
            saturated,
        })
    }

    /// A conv's per-channel int8 weights, written once as `<conv>.weight_q8`.
    fn weights(&mut self, n: &NodeProto) -> Result<Weights, QuantizeError> {
        let graph = self.model.graph();
        let weight = n
            .input
            .get(1)
            .and_then(|w| self.model.init.get(w))
            .ok_or_else(|| {
                QuantizeError::Invalid(format!("conv `{}`: weights are not an initializer", n.name))
            })?;
        let w = &graph.initializer[*weight];
        let kernel = float_data(w)?;
        let channels = w.dims.first().copied().unwrap_or(0).max(0) as usize;
        let qw = conv_weights(self.rounded, &n.name, &kernel, channels)?;
        let per = kernel.len() / channels.max(1);
        let deq: Vec<f32> = qw
            .values
            .iter()
            .enumerate()
            .map(|(i, q)| f32::from(*q) * qw.scales[i / per.max(1)])
            .collect();
        let mut sq = Sqnr::default();
        sq.add(&kernel, &deq);
        let wq = self.add_init(TensorProto {
            dims: w.dims.clone(),
            ..tensor::i8(&format!("{}.weight_q8", n.name), &[], &qw.values)
        });
        Ok(Weights {
            wq,
            scales: qw.scales,
            channels,
            sqnr_db: sq.db(),
        })
    }

    /// A conv's float bias (zeros when it has none), less its bias correction if any.
    fn float_bias(&self, n: &NodeProto, channels: usize) -> Result<Vec<f32>, QuantizeError> {
        let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => {
                let i = self.model.init.get(b).ok_or_else(|| {
                    QuantizeError::Invalid(format!("conv `{}`: bias is not an initializer", n.name))
                })?;
                float_data(&self.model.graph().initializer[*i])?
            }
            None => vec![0.0; channels],
        };
        match self.correction.and_then(|c| c.get(&n.name)) {
            Some(d) if d.len() == bias.len() => {
                Ok(bias.iter().zip(d).map(|(b, d)| b - d).collect())
            }
            Some(d) => Err(QuantizeError::Invalid(format!(
                "bias correction of `{}` has {} values for {} channels",
                n.name,
                d.len(),
                bias.len()
            ))),
            None => Ok(bias),
        }
    }

    /// A conv feeding only residual Adds: `ConvInteger(x_q8, w_q8) -> int32`, `Cast` to
    /// float, `Mul` by `x_scale * w_scale[c]`, `Add` of the float bias. The matmul stays
    /// integer; only the output is not requantized. The simulation runs the same float conv
    /// on the dequantized input and weights.
    fn conv_float_out(&mut self, n: &NodeProto, out: &str) -> Result<(), QuantizeError> {
        let p = self.prepare(n, "")?;
        self.float.insert(out.to_string());
        if self.scales.is_none() {
            return Ok(());
        }
        let (xs, zp) = self.qparams(&p.x_key)?;
        let c = p.channels as i64;
        let out_scale: Vec<f32> = p.w_scales.iter().map(|s| p.x_scale * s).collect();
        let b = self.add_init(TensorProto {
            dims: vec![1, c, 1, 1],
            ..float_init(&format!("{}.out_bias", n.name), &p.bias, false)
        });
        match self.form {
            Form::Integer => {
                let ms = self.add_init(TensorProto {
                    dims: vec![1, c, 1, 1],
                    ..float_init(&format!("{}.out_scale", n.name), &out_scale, false)
                });
                let acc = format!("{out}_i32");
                let w0 = self.zero();
                let mut ci = node("ConvInteger", &n.name, &[&p.x, &p.wq, &zp, &w0], &acc);
                ci.attribute = n.attribute.clone();
                self.nodes.push(ci);
                let accf = format!("{out}_i32f");
                let mut cast = node("Cast", &format!("{}_cast", n.name), &[&acc], &accf);
                cast.attribute = vec![AttributeProto {
                    name: "to".into(),
                    r#type: AttributeType::Int as i32,
                    i: DataType::Float as i64,
                    ..Default::default()
                }];
                self.nodes.push(cast);
                let scaled = format!("{out}_scaled");
                self.nodes.push(node(
                    "Mul",
                    &format!("{}_rescale", n.name),
                    &[&accf, &ms],
                    &scaled,
                ));
                self.nodes.push(node(
                    "Add",
                    &format!("{}_bias", n.name),
                    &[&scaled, &b],
                    out,
                ));
            }
            Form::Simulated => {
                let xf = self.sim_input(&p.x, &xs, &zp);
                let ws = self.add_init(float_init(
                    &format!("{}.weight_scale", n.name),
                    &p.w_scales,
                    false,
                ));
                let wf = self.sim_weights(n, &p.wq, &ws, p.channels);
                let conv_out = format!("{out}_conv");
                let mut cv = node("Conv", &n.name, &[&xf, &wf], &conv_out);
                cv.attribute = n.attribute.clone();
                self.nodes.push(cv);
                self.nodes.push(node(
                    "Add",
                    &format!("{}_bias", n.name),
                    &[&conv_out, &b],
                    out,
                ));
            }
        }
        Ok(())
    }

    /// A conv reading a float-kept activation: `Conv(x, DequantizeLinear(w_q8), bias)` in
    /// float, the same in both forms. Its output (and fused Relu) is float; consumers
    /// quantize it where they need int8.
    fn conv_float(&mut self, n: &NodeProto, out: &str) -> Result<(), QuantizeError> {
        let x = self.need_float(&n.input[0])?;
        let w = self.weights(n)?;
        self.convs.push(ConvInfo {
            name: n.name.clone(),
            channels: w.channels,
            input: String::new(),
            output: String::new(),
            weight_sqnr_db: w.sqnr_db,
            bias_saturated: 0,
        });
        let ws = self.add_init(float_init(
            &format!("{}.weight_scale", n.name),
            &w.scales,
            false,
        ));
        let wf = self.sim_weights(n, &w.wq, &ws, w.channels);
        // The float bias, with the bias correction of the int8 weights' rounding.
        let bias = self.float_bias(n, w.channels)?;
        let b = self.add_init(float_init(&format!("{}.bias_f32", n.name), &bias, false));
        let mut c = node("Conv", &n.name, &[&x, &wf, &b], out);
        c.attribute = n.attribute.clone();
        self.nodes.push(c);
        self.float.insert(out.to_string());
        Ok(())
    }

    /// The dequantized conv input of the simulation, emitted once per tensor.
    fn sim_input(&mut self, x: &str, xs: &str, zp: &str) -> String {
        let xf = format!("{x}_dq");
        if self.dq_inputs.insert(xf.clone()) {
            self.nodes.push(node(
                "DequantizeLinear",
                &format!("{x}_dequant"),
                &[x, xs, zp],
                &xf,
            ));
        }
        xf
    }

    /// The per-channel weight zero points of a conv (all 0: symmetric weights).
    fn weight_zero_point(&mut self, n: &NodeProto, channels: usize) -> String {
        self.add_init(tensor::i8(
            &format!("{}.weight_zero_point", n.name),
            &[channels],
            &vec![0; channels],
        ))
    }

    /// The dequantized weights of the simulation.
    fn sim_weights(&mut self, n: &NodeProto, wq: &str, ws: &str, channels: usize) -> String {
        let wzp = self.weight_zero_point(n, channels);
        let wf = format!("{}.weight_dq", n.name);
        let mut d = node(
            "DequantizeLinear",
            &format!("{}.weight_dequant", n.name),
            &[wq, ws, &wzp],
            &wf,
        );
        d.attribute = vec![axis0()];
        self.nodes.push(d);
        wf
    }

    fn conv(&mut self, n: &NodeProto, out: &str, key: &str) -> Result<(), QuantizeError> {
        let p = self.prepare(n, key)?;
        if p.saturated > 0 {
            log::warn!("{}: {} biases saturated int32", n.name, p.saturated);
        }
        if self.scales.is_none() {
            // Discovery pass: only the requested keys matter.
            self.scale(key)?;
            self.int8.insert(out.to_string(), key.to_string());
            return Ok(());
        }
        let Prepared {
            x,
            x_key,
            x_scale,
            channels,
            wq,
            w_scales,
            qb,
            ..
        } = p;
        let (xs, zp) = self.qparams(&x_key)?;
        let (ys, yzp) = self.qparams(key)?;
        let ws = self.add_init(float_init(
            &format!("{}.weight_scale", n.name),
            &w_scales,
            false,
        ));
        let y = format!("{out}{Q8}");
        match self.form {
            Form::Integer => {
                let wzp = self.weight_zero_point(n, channels);
                let b = self.add_init(tensor::i32(
                    &format!("{}.bias_q32", n.name),
                    &[channels],
                    &qb,
                ));
                let mut c = node(
                    "QLinearConv",
                    &n.name,
                    &[&x, &xs, &zp, &wq, &ws, &wzp, &ys, &yzp, &b],
                    &y,
                );
                c.attribute = n.attribute.clone();
                self.nodes.push(c);
            }
            Form::Simulated => {
                let xf = self.sim_input(&x, &xs, &zp);
                let wf = self.sim_weights(n, &wq, &ws, channels);
                let bf: Vec<f32> = qb
                    .iter()
                    .zip(&w_scales)
                    .map(|(b, s)| (f64::from(*b) * f64::from(x_scale) * f64::from(*s)) as f32)
                    .collect();
                let b = self.add_init(float_init(&format!("{}.bias_dq", n.name), &bf, false));
                let cf = format!("{out}_f32");
                let mut c = node("Conv", &n.name, &[&xf, &wf, &b], &cf);
                c.attribute = n.attribute.clone();
                self.nodes.push(c);
                self.nodes.push(node(
                    "QuantizeLinear",
                    &format!("{out}_quant"),
                    &[&cf, &ys, &yzp],
                    &y,
                ));
            }
        }
        self.int8.insert(out.to_string(), key.to_string());
        Ok(())
    }

    fn finish(self) -> ModelProto {
        let graph = self.model.graph();
        let used: BTreeSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        let mut initializer: Vec<TensorProto> = graph
            .initializer
            .iter()
            .filter(|t| used.contains(t.name.as_str()))
            .cloned()
            .collect();
        initializer.extend(self.inits);
        let input = graph
            .input
            .iter()
            .filter(|i| !self.model.init.contains_key(&i.name))
            .cloned()
            .collect();
        ModelProto {
            ir_version: self.model.proto.ir_version.max(7),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "renalscan-quantize".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: self.model.proto.doc_string.clone(),
            metadata_props: self.model.proto.metadata_props.clone(),
            graph: Some(GraphProto {
                name: format!("{}_int8", graph.name),
                node: self.nodes,
                initializer,
                input,
                output: graph.output.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
