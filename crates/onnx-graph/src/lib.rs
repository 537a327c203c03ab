//! Writing ONNX graphs with tract-onnx's protobuf types (`tract_onnx::pb`).
//!
//! The trainer's exporter, the quantizer's rewrite, the int8 loader's float form and every
//! test that needs a small model build protobufs by hand; this crate is their one set of
//! constructors, so an attribute or tensor is spelled the same way everywhere and a fix
//! (say, to how raw data is laid out) lands once. It writes what tract and onnxruntime read:
//! little-endian `raw_data`, opset 13 by default.

use prost::Message;
pub use tract_onnx::pb;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// The opset the project's models are written in.
pub const OPSET: i64 = 13;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named, symbolic size (a dynamic batch).
    Symbolic(String),
}

/// Fixed dimensions from sizes.
pub fn fixed(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d as i64)).collect()
}

/// A float tensor's name, type and shape (graph inputs and outputs).
pub fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Symbolic(s) => dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// A float tensor of fixed shape (the common case of [`value_info`]).
pub fn value_info_fixed(name: &str, dims: &[usize]) -> ValueInfoProto {
    value_info(name, &fixed(dims))
}

/// Node attributes.
pub mod attr {
    use super::{AttributeProto, AttributeType};

    /// A list of integers.
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    /// One integer.
    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i: v,
            ..Default::default()
        }
    }

    /// One float.
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Float as i32,
            f: v,
            ..Default::default()
        }
    }

    /// Conv (and QLinearConv, ConvInteger) attributes: square kernel `k`, stride `s`,
    /// symmetric padding `p`, no dilation, one group.
    pub fn conv(k: i64, s: i64, p: i64) -> Vec<AttributeProto> {
        vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[s, s]),
            ints("pads", &[p, p, p, p]),
            ints("dilations", &[1, 1]),
            int("group", 1),
        ]
    }
}

/// Tensor constants (initializers), little-endian `raw_data`. An empty `dims` is a scalar.
pub mod tensor {
    use super::{DataType, TensorProto};

    fn raw(name: &str, dims: &[usize], dt: DataType, raw_data: Vec<u8>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dt as i32,
            raw_data,
            ..Default::default()
        }
    }

    /// f32 values.
    pub fn f32(name: &str, dims: &[usize], v: &[f32]) -> TensorProto {
        raw(
            name,
            dims,
            DataType::Float,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// f32 values with dimensions as a protobuf stores them (a rewrite keeping a tensor's
    /// shape).
    pub fn f32_dims(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            ..f32(name, &[], v)
        }
    }

    /// i8 values.
    pub fn i8(name: &str, dims: &[usize], v: &[i8]) -> TensorProto {
        raw(
            name,
            dims,
            DataType::Int8,
            v.iter().map(|&x| x as u8).collect(),
        )
    }

    /// u8 values.
    pub fn u8(name: &str, dims: &[usize], v: &[u8]) -> TensorProto {
        raw(name, dims, DataType::Uint8, v.to_vec())
    }

    /// i32 values.
    pub fn i32(name: &str, dims: &[usize], v: &[i32]) -> TensorProto {
        raw(
            name,
            dims,
            DataType::Int32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// i64 values.
    pub fn i64(name: &str, dims: &[usize], v: &[i64]) -> TensorProto {
        raw(
            name,
            dims,
            DataType::Int64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }
}

/// A node with one output; its name is `name`.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    attrs: Vec<AttributeProto>,
    output: &str,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: name.into(),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

/// Model-level facts written beside the graph.
#[derive(Debug, Clone)]
pub struct ModelMeta {
    /// Graph name.
    pub graph: String,
    /// Producer name (and version) in the file.
    pub producer: String,
    /// Producer version.
    pub producer_version: String,
    /// The model's doc string.
    pub doc: String,
    /// `metadata_props` entries.
    pub metadata: Vec<(String, String)>,
    /// Opset of the default domain.
    pub opset: i64,
}

impl Default for ModelMeta {
    fn default() -> Self {
        Self {
            graph: "g".into(),
            producer: "renalscan".into(),
            producer_version: String::new(),
            doc: String::new(),
            metadata: Vec::new(),
            opset: OPSET,
        }
    }
}

/// A graph under construction: nodes in order and their initializers. Each method returns
/// the name of what it added, so calls chain as the data flows.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    /// Nodes, topologically ordered by construction.
    pub nodes: Vec<NodeProto>,
    /// Constants.
    pub initializers: Vec<TensorProto>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an initializer; returns its name.
    pub fn init(&mut self, t: TensorProto) -> String {
        let name = t.name.clone();
        self.initializers.push(t);
        name
    }

    /// Adds an f32 initializer.
    pub fn f32(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        self.init(tensor::f32(name, dims, v))
    }

    /// Adds an i8 initializer.
    pub fn i8(&mut self, name: &str, dims: &[usize], v: &[i8]) -> String {
        self.init(tensor::i8(name, dims, v))
    }

    /// Adds an i32 initializer.
    pub fn i32(&mut self, name: &str, dims: &[usize], v: &[i32]) -> String {
        self.init(tensor::i32(name, dims, v))
    }

    /// Adds a node named `name` whose output is `output`.
    pub fn node_to(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        output: &str,
    ) -> String {
        self.nodes.push(node(op, name, inputs, attrs, output));
        output.into()
    }

    /// Adds a node whose output has the node's name.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.node_to(op, name, inputs, attrs, name)
    }

    /// A float convolution with bias: weights `[cout, cin, k, k]` row-major, stride `s`,
    /// padding `p`. Initializers are `<name>.weight` and `<name>.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        input: &str,
        shape: [usize; 4],
        weight: &[f32],
        bias: &[f32],
        stride: i64,
        pad: i64,
    ) -> String {
        let w = self.f32(&format!("{name}.weight"), &shape, weight);
        let b = self.f32(&format!("{name}.bias"), &[shape[0]], bias);
        self.node(
            "Conv",
            name,
            &[input, &w, &b],
            attr::conv(shape[2] as i64, stride, pad),
        )
    }

    /// The graph with its inputs and outputs.
    pub fn into_graph(
        self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> GraphProto {
        GraphProto {
            name: name.into(),
            node: self.nodes,
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }

    /// The finished model.
    pub fn into_model(
        self,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        meta: ModelMeta,
    ) -> ModelProto {
        let graph = self.into_graph(&meta.graph, inputs, outputs);
        model(graph, meta)
    }
}

/// A model around a finished graph.
pub fn model(graph: GraphProto, meta: ModelMeta) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: meta.opset,
        }],
        producer_name: meta.producer,
        producer_version: meta.producer_version,
        doc_string: meta.doc,
        graph: Some(graph),
        metadata_props: meta
            .metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    }
}

/// The protobuf bytes of a model.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The dimensions of a model's first graph input that is not an initializer (its image
/// input): lets a caller check that a file on disk was written for the shape it will feed,
/// before any work keyed by that file's hash. `None` if the bytes are not a model or the
/// input has no tensor shape.
pub fn input_dims(bytes: &[u8]) -> Option<Vec<Dim>> {
    let model = ModelProto::decode(bytes).ok()?;
    let graph = model.graph?;
    let input = graph
        .input
        .iter()
        .find(|i| !graph.initializer.iter().any(|t| t.name == i.name))?;
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    t.shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(dimension::Value::DimValue(v)) => Some(Dim::Fixed(*v)),
            Some(dimension::Value::DimParam(s)) => Some(Dim::Symbolic(s.clone())),
            None => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{
        dimension, encode, input_dims, tensor, type_proto, value_info, value_info_fixed, Dim,
        Graph, ModelMeta,
    };
    use tract_onnx::prelude::*;

    #[test]
    fn a_built_graph_runs_in_tract() {
        let mut g = Graph::new();
        let y = g.conv("c", "x", [2, 1, 1, 1], &[2.0, -1.0], &[0.5, 0.0], 1, 0);
        let y = g.node("Relu", "r", &[&y], vec![]);
        let m = g.into_model(
            vec![value_info_fixed("x", &[1, 1, 2, 2])],
            vec![value_info_fixed(&y, &[1, 2, 2, 2])],
            ModelMeta::default(),
        );
        let bytes = encode(&m);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let x = tract_ndarray::Array4::from_shape_vec((1, 1, 2, 2), vec![1.0f32, -1.0, 2.0, 0.0])
            .unwrap();
        let out = plan.run(tvec!(Tensor::from(x).into())).unwrap();
        let v: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(v, [2.5, 0.0, 4.5, 0.5, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn input_dims_reads_the_image_input_back() {
        let mut g = Graph::new();
        let y = g.conv("c", "x", [2, 1, 1, 1], &[2.0, -1.0], &[0.5, 0.0], 1, 0);
        let m = g.into_model(
            vec![value_info(
                "x",
                &[
                    Dim::Symbolic("N".into()),
                    Dim::Fixed(1),
                    Dim::Fixed(4),
                    Dim::Fixed(4),
                ],
            )],
            vec![value_info_fixed(&y, &[1, 2, 4, 4])],
            ModelMeta::default(),
        );
        assert_eq!(
            input_dims(&encode(&m)),
            Some(vec![
                Dim::Symbolic("N".into()),
                Dim::Fixed(1),
                Dim::Fixed(4),
                Dim::Fixed(4)
            ])
        );
        assert_eq!(input_dims(b"not a model"), None);
    }

    #[test]
    fn symbolic_dims_and_scalars() {
        let vi = value_info("x", &[Dim::Symbolic("N".into()), Dim::Fixed(3)]);
        let type_proto::Value::TensorType(t) = vi.r#type.unwrap().value.unwrap();
        let shape = t.shape.unwrap();
        assert_eq!(
            shape.dim[0].value,
            Some(dimension::Value::DimParam("N".into()))
        );
        let s = tensor::f32("s", &[], &[0.5]);
        assert!(s.dims.is_empty());
        assert_eq!(s.raw_data, 0.5f32.to_le_bytes());
    }
}
