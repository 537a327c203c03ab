//! ONNX export of the ResNet-50 with BatchNorm folded into the convolutions.
//!
//! Written with tract-onnx's own protobuf types (the ONNX schema as tract reads it), so the
//! file we write is, by construction, one the device's engine parses. Two outputs: the head's
//! (`logits` for ImageNet, `probs` for the renal classifier) and `features`, the last
//! convolutional map, which a GAP + linear head turns into class-activation maps for free.

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use crate::{Conv, Dense, ResNet50, FEATURE_CHANNELS, INPUT_SIZE};

/// ONNX opset we target (Softmax over one axis, Gemm, GlobalAveragePool are stable here).
pub const OPSET: i64 = 13;
/// Name of the input tensor, `N x 3 x 224 x 224`.
pub const INPUT: &str = "image";
/// Name of the last feature map output, `N x 2048 x 7 x 7`.
pub const FEATURES: &str = "features";
/// Symbolic batch dimension.
pub const BATCH: &str = "N";

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The head does not fit the backbone.
    #[error("head takes {0} inputs, the backbone gives {FEATURE_CHANNELS}")]
    HeadWidth(usize),
    /// A trunk must keep between one and all stages.
    #[error("cannot cut the network after {0} stages")]
    Stages(usize),
    /// An output name collides with an internal tensor name.
    #[error("output name {0:?} is reserved")]
    ReservedName(String),
}

/// The classifier on top of the pooled features.
#[derive(Debug, Clone)]
pub struct Head {
    /// Output tensor name (`logits`, `probs`).
    pub output: String,
    /// Linear layer `2048 -> classes`.
    pub dense: Dense,
    /// Append a softmax (the output is then probabilities).
    pub softmax: bool,
}

impl Head {
    /// The ImageNet classifier of the pretrained model, emitting raw `logits`.
    pub fn imagenet(net: &ResNet50) -> Self {
        Self {
            output: "logits".into(),
            dense: net.fc.clone(),
            softmax: false,
        }
    }
}

/// Serialises `net` (BatchNorm folded) with `head` to ONNX bytes.
pub fn export_onnx(net: &ResNet50, head: &Head, doc: &str) -> Result<Vec<u8>, OnnxError> {
    if head.dense.inputs != FEATURE_CHANNELS {
        return Err(OnnxError::HeadWidth(head.dense.inputs));
    }
    if head.output == INPUT || head.output == FEATURES {
        return Err(OnnxError::ReservedName(head.output.clone()));
    }
    let mut g = Graph::default();
    let x = g.trunk(net, net.stages.len(), FEATURES);
    let pooled = g.unary("GlobalAveragePool", "avg_pool", &x);
    let flat = g.node("Flatten", "flatten", &[&pooled], vec![int("axis", 1)]);
    let w = g.initializer(
        "head.weight",
        &[head.dense.inputs, head.dense.outputs],
        &head.dense.weight,
    );
    let bias = g.initializer("head.bias", &[head.dense.outputs], &head.dense.bias);
    if head.softmax {
        let logits = g.node("Gemm", "head", &[&flat, &w, &bias], vec![]);
        g.node_named(
            "Softmax",
            "softmax",
            &[&logits],
            vec![int("axis", 1)],
            &head.output,
        );
    } else {
        g.node_named("Gemm", "head", &[&flat, &w, &bias], vec![], &head.output);
    }

    let final_side = INPUT_SIZE as i64 / 32;
    let outputs = vec![
        value_info(
            &head.output,
            &[Dim::Batch, Dim::Fixed(head.dense.outputs as i64)],
        ),
        value_info(
            FEATURES,
            &[
                Dim::Batch,
                Dim::Fixed(FEATURE_CHANNELS as i64),
                Dim::Fixed(final_side),
                Dim::Fixed(final_side),
            ],
        ),
    ];
    Ok(g.into_model(outputs, doc, "Keras ResNet-50 v1, BatchNorm folded"))
}

/// Serialises the stem and the first `stages` stages of `net` (BatchNorm folded), with the
/// last feature map as the only output, named `output`: the frozen part of a fine-tuning run
/// (`stages = 3` gives layer-3 activations, `N x 1024 x 14 x 14`).
pub fn export_trunk_onnx(
    net: &ResNet50,
    stages: usize,
    output: &str,
    doc: &str,
) -> Result<Vec<u8>, OnnxError> {
    if stages == 0 || stages > net.stages.len() {
        return Err(OnnxError::Stages(stages));
    }
    if output == INPUT {
        return Err(OnnxError::ReservedName(output.into()));
    }
    let mut g = Graph::default();
    g.trunk(net, stages, output);
    let side = (INPUT_SIZE >> (stages + 1)) as i64;
    let channels = net.stages[stages - 1]
        .last()
        .map_or(0, |b| b.conv_c.shape[0] as i64);
    let outputs = vec![value_info(
        output,
        &[
            Dim::Batch,
            Dim::Fixed(channels),
            Dim::Fixed(side),
            Dim::Fixed(side),
        ],
    )];
    Ok(g.into_model(
        outputs,
        doc,
        &format!("Keras ResNet-50 v1 up to stage {stages} of 4, BatchNorm folded"),
    ))
}

enum Dim {
    Batch,
    Fixed(i64),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Batch => dimension::Value::DimParam(BATCH.into()),
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
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

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    /// The finished model: input `image`, the given outputs.
    fn into_model(self, outputs: Vec<ValueInfoProto>, doc: &str, architecture: &str) -> Vec<u8> {
        let side = INPUT_SIZE as i64;
        let graph = GraphProto {
            name: "resnet50_v1".into(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(
                INPUT,
                &[
                    Dim::Batch,
                    Dim::Fixed(3),
                    Dim::Fixed(side),
                    Dim::Fixed(side),
                ],
            )],
            output: outputs,
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "renalscan".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(graph),
            metadata_props: vec![StringStringEntryProto {
                key: "architecture".into(),
                value: architecture.into(),
            }],
            ..Default::default()
        };
        model.encode_to_vec()
    }

    /// Stem and the first `stages` stages; the last block's output is named `output`.
    fn trunk(&mut self, net: &ResNet50, stages: usize, output: &str) -> String {
        let mut x = self.conv("conv1", &net.conv1.fold(&net.bn1), INPUT);
        x = self.unary("Relu", "conv1_relu", &x);
        x = self.node(
            "MaxPool",
            "pool1",
            &[&x],
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        );
        for (s, stage) in net.stages.iter().take(stages).enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let id = crate::block_id(s, b);
                let mut y = self.conv(&format!("res{id}_a"), &block.conv_a.fold(&block.bn_a), &x);
                y = self.unary("Relu", &format!("res{id}_a_relu"), &y);
                y = self.conv(&format!("res{id}_b"), &block.conv_b.fold(&block.bn_b), &y);
                y = self.unary("Relu", &format!("res{id}_b_relu"), &y);
                y = self.conv(&format!("res{id}_c"), &block.conv_c.fold(&block.bn_c), &y);
                let shortcut = match &block.shortcut {
                    Some((c, bn)) => self.conv(&format!("res{id}_proj"), &c.fold(bn), &x),
                    None => x.clone(),
                };
                let sum = self.node("Add", &format!("res{id}_add"), &[&y, &shortcut], vec![]);
                let last = s + 1 == stages && b + 1 == stage.len();
                x = if last {
                    self.node_named("Relu", &format!("res{id}_relu"), &[&sum], vec![], output)
                } else {
                    self.unary("Relu", &format!("res{id}_relu"), &sum)
                };
            }
        }
        x
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn node_named(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        output: &str,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: name.into(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output.into()
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.node_named(op, name, inputs, attrs, name)
    }

    fn unary(&mut self, op: &str, name: &str, input: &str) -> String {
        self.node(op, name, &[input], vec![])
    }

    fn conv(&mut self, name: &str, c: &Conv, input: &str) -> String {
        let w = self.initializer(&format!("{name}.weight"), &c.shape, &c.kernel);
        let b = self.initializer(&format!("{name}.bias"), &[c.shape[0]], &c.bias);
        let (k, s, p) = (c.shape[2] as i64, c.stride as i64, c.pad as i64);
        self.node(
            "Conv",
            name,
            &[input, &w, &b],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[p, p, p, p]),
                ints("dilations", &[1, 1]),
                int("group", 1),
            ],
        )
    }
}
