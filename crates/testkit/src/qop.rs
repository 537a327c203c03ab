//! A tiny residual network in float and QOperator int8 form, written with the project's
//! ONNX builder: the file contract of `renalscan quantize` in miniature, for the int8 loader's
//! tests and examples.

use onnx_graph::pb::{tensor_proto::DataType, AttributeProto, ModelProto};
use onnx_graph::{attr, Graph};

use crate::{finish, Rng};

/// Quantized-graph building blocks on top of [`Graph`].
pub trait QuantOps {
    /// The shared int8 zero point 0.
    fn zero_point(&mut self) -> String;
    /// A float Conv node.
    fn conv_w(&mut self, name: &str, c: &ConvW, x: &str) -> String;
    /// A QLinearConv node: int8 input `xq` with scale `x_scale` and zero point 0, output
    /// scale `y_scale`, zero point 0; returns the int8 output name `<name>_q`.
    fn qconv(&mut self, name: &str, c: &ConvW, xq: &str, x_scale: &str, y_scale: f32) -> String;
    /// [`QuantOps::qconv`] with the input's zero point given: `x` is (int8 tensor, scale,
    /// zero point) names.
    fn qconv_zp(&mut self, name: &str, c: &ConvW, x: (&str, &str, &str), y_scale: f32) -> String;
    /// ConvInteger with a float output, as the quantizer writes residual-feeding convs.
    fn conv_integer(&mut self, name: &str, c: &ConvW, x: (&str, &str, &str)) -> String;
    /// QuantizeLinear of a post-ReLU tensor over all 256 levels.
    fn quantize_relu(&mut self, x: &str, range: f32) -> (String, String, String);
    /// QuantizeLinear to int8 with zero point 0.
    fn quantize(&mut self, x: &str, scale: f32) -> (String, String);
    /// DequantizeLinear with zero point 0.
    fn dequantize(&mut self, xq: &str, scale: &str, out: &str) -> String;
}

/// A float convolution layer: OIHW weights and bias.
#[derive(Debug, Clone)]
pub struct ConvW {
    /// Output channels.
    pub out_ch: usize,
    /// Input channels.
    pub in_ch: usize,
    /// Square kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Symmetric padding.
    pub pad: usize,
    /// Weights, OIHW row-major.
    pub w: Vec<f32>,
    /// Bias per output channel.
    pub b: Vec<f32>,
}

impl ConvW {
    pub fn random(
        rng: &mut Rng,
        out_ch: usize,
        in_ch: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        let fan_in = (in_ch * k * k) as f32;
        Self {
            out_ch,
            in_ch,
            k,
            stride,
            pad,
            w: rng.vec(out_ch * in_ch * k * k, (3.0 / fan_in).sqrt()),
            b: rng.vec(out_ch, 0.1),
        }
    }
    pub fn dims(&self) -> [usize; 4] {
        [self.out_ch, self.in_ch, self.k, self.k]
    }
    pub fn attrs(&self) -> Vec<AttributeProto> {
        attr::conv(self.k as i64, self.stride as i64, self.pad as i64)
    }
    /// Symmetric per-output-channel int8 weights and their scales.
    pub fn quantized(&self) -> (Vec<i8>, Vec<f32>) {
        let per = self.w.len() / self.out_ch;
        let mut q = Vec::with_capacity(self.w.len());
        let mut scales = Vec::with_capacity(self.out_ch);
        for ch in self.w.chunks_exact(per) {
            let max = ch.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let s = max / 127.0;
            scales.push(s);
            q.extend(
                ch.iter()
                    .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
            );
        }
        (q, scales)
    }
}

impl QuantOps for Graph {
    /// The shared int8 zero point 0.
    fn zero_point(&mut self) -> String {
        if !self.initializers.iter().any(|t| t.name == "zp") {
            self.i8("zp", &[], &[0]);
        }
        "zp".into()
    }

    /// A float Conv node.
    fn conv_w(&mut self, name: &str, c: &ConvW, x: &str) -> String {
        let w = self.f32(&format!("{name}.w"), &c.dims(), &c.w);
        let b = self.f32(&format!("{name}.b"), &[c.out_ch], &c.b);
        self.node_to("Conv", name, &[x, &w, &b], c.attrs(), name)
    }

    /// A QLinearConv node: int8 input `xq` with scale `x_scale` and zero point 0, output
    /// scale `y_scale`, zero point 0; returns the int8 output name `<name>_q`.
    fn qconv(&mut self, name: &str, c: &ConvW, xq: &str, x_scale: &str, y_scale: f32) -> String {
        let zp8 = self.zero_point();
        self.qconv_zp(name, c, (xq, x_scale, &zp8), y_scale)
    }

    /// [`QuantOps::qconv`] with the input's zero point given: `x` is (int8 tensor, scale, zero
    /// point) names.
    fn qconv_zp(&mut self, name: &str, c: &ConvW, x: (&str, &str, &str), y_scale: f32) -> String {
        let (xq, x_scale, x_zp) = x;
        let (wq, ws) = c.quantized();
        let xs = x_scale_value(self, x_scale);
        let bq: Vec<i32> =
            c.b.iter()
                .zip(&ws)
                .map(|(b, s)| (b / (xs * s)).round() as i32)
                .collect();
        let zp8 = self.zero_point();
        let w = self.i8(&format!("{name}.wq"), &c.dims(), &wq);
        let wsn = self.f32(&format!("{name}.ws"), &[c.out_ch], &ws);
        let wzp = self.i8(&format!("{name}.wzp"), &[c.out_ch], &vec![0; c.out_ch]);
        let ys = self.f32(&format!("{name}.ys"), &[], &[y_scale]);
        let b = self.i32(&format!("{name}.bq"), &[c.out_ch], &bq);
        self.node_to(
            "QLinearConv",
            &format!("{name}_q"),
            &[xq, x_scale, x_zp, &w, &wsn, &wzp, &ys, &zp8, &b],
            c.attrs(),
            &format!("{name}_q"),
        )
    }

    /// A conv with an int8 input and a float output, as `renalscan quantize` writes the
    /// convs feeding a residual Add: `ConvInteger(xq, w_int8, x_zp, 0) -> int32`, `Cast` to
    /// float, `Mul` by `x_scale * w_scale[c]`, `Add` of the float bias (both `[1, C, 1, 1]`).
    /// `x` is (int8 tensor, scale, zero point) names. Returns the float output `name`.
    fn conv_integer(&mut self, name: &str, c: &ConvW, x: (&str, &str, &str)) -> String {
        let (xq, x_scale, x_zp) = x;
        let (wq, ws) = c.quantized();
        let xs = x_scale_value(self, x_scale);
        let zp8 = self.zero_point();
        let w = self.i8(&format!("{name}.wq"), &c.dims(), &wq);
        let acc = self.node_to(
            "ConvInteger",
            &format!("{name}_i32"),
            &[xq, &w, x_zp, &zp8],
            c.attrs(),
            &format!("{name}_i32"),
        );
        let accf = self.node_to(
            "Cast",
            &format!("{name}_i32f"),
            &[&acc],
            vec![attr::int("to", DataType::Float as i64)],
            &format!("{name}_i32f"),
        );
        let scale: Vec<f32> = ws.iter().map(|s| xs * s).collect();
        let sn = self.f32(&format!("{name}.out_scale"), &[1, c.out_ch, 1, 1], &scale);
        let bn = self.f32(&format!("{name}.out_bias"), &[1, c.out_ch, 1, 1], &c.b);
        let scaled = self.node_to(
            "Mul",
            &format!("{name}_scaled"),
            &[&accf, &sn],
            vec![],
            &format!("{name}_scaled"),
        );
        self.node_to("Add", name, &[&scaled, &bn], vec![], name)
    }

    /// QuantizeLinear of a non-negative (post-ReLU) tensor over all 256 levels, as
    /// `renalscan quantize` writes them: scale `range / 255`, zero point -128; returns
    /// `(quantized, scale name, zero point name)`.
    fn quantize_relu(&mut self, x: &str, range: f32) -> (String, String, String) {
        let s = self.f32(&format!("{x}.qs"), &[], &[range / 255.0]);
        if !self.initializers.iter().any(|t| t.name == "zp_relu") {
            self.i8("zp_relu", &[], &[-128]);
        }
        let q = self.node_to(
            "QuantizeLinear",
            &format!("{x}_q"),
            &[x, &s, "zp_relu"],
            vec![],
            &format!("{x}_q"),
        );
        (q, s, "zp_relu".into())
    }

    /// QuantizeLinear to int8 with zero point 0; returns `(quantized, scale name)`.
    fn quantize(&mut self, x: &str, scale: f32) -> (String, String) {
        let s = self.f32(&format!("{x}.qs"), &[], &[scale]);
        let zp = self.zero_point();
        let q = self.node_to(
            "QuantizeLinear",
            &format!("{x}_q"),
            &[x, &s, &zp],
            vec![],
            &format!("{x}_q"),
        );
        (q, s)
    }

    /// DequantizeLinear of `xq` (scale tensor `scale`, zero point 0) into `out`.
    fn dequantize(&mut self, xq: &str, scale: &str, out: &str) -> String {
        let zp = self.zero_point();
        self.node_to("DequantizeLinear", out, &[xq, scale, &zp], vec![], out)
    }
}

fn x_scale_value(g: &Graph, name: &str) -> f32 {
    g.initializers
        .iter()
        .find(|t| t.name == name)
        .map(|t| f32::from_le_bytes([t.raw_data[0], t.raw_data[1], t.raw_data[2], t.raw_data[3]]))
        .expect("scale initializer exists")
}

/// The tiny residual network of the tests: conv3x3 -> relu -> maxpool -> {conv1x1 -> relu ->
/// conv3x3, conv1x1 projection} -> add -> relu (`features`) -> GAP -> Gemm -> Softmax (`probs`).
/// Four convolutions, the ResNet-50 block pattern in miniature.
pub struct TinyNet {
    pub c1: ConvW,
    pub c2: ConvW,
    pub c3: ConvW,
    pub proj: ConvW,
    pub fc_w: Vec<f32>,
    pub fc_b: Vec<f32>,
}

pub const SIDE: usize = 16;
pub const CLASSES: usize = 6;
pub const FEAT: usize = 16;
pub const INPUT_SHAPE: [usize; 4] = [1, 3, SIDE, SIDE];
pub const FEATURES_SHAPE: [usize; 4] = [1, FEAT, SIDE / 2, SIDE / 2];

/// Tensors whose ranges the QOperator form needs, in the float graph's names.
pub const CALIBRATED: [&str; 7] = ["image", "c1", "p1", "c2", "r2", "c3", "proj"];

impl TinyNet {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        Self {
            c1: ConvW::random(&mut rng, 8, 3, 3, 1, 1),
            c2: ConvW::random(&mut rng, 8, 8, 1, 1, 0),
            c3: ConvW::random(&mut rng, FEAT, 8, 3, 1, 1),
            proj: ConvW::random(&mut rng, FEAT, 8, 1, 1, 0),
            fc_w: rng.vec(FEAT * CLASSES, 1.0),
            fc_b: rng.vec(CLASSES, 0.1),
        }
    }

    fn head(&self, g: &mut Graph, features: &str) {
        g.node_to("GlobalAveragePool", "gap", &[features], vec![], "gap");
        g.node_to(
            "Flatten",
            "flat",
            &["gap"],
            vec![attr::int("axis", 1)],
            "flat",
        );
        let w = g.f32("fc.w", &[FEAT, CLASSES], &self.fc_w);
        let b = g.f32("fc.b", &[CLASSES], &self.fc_b);
        g.node_to("Gemm", "logits", &["flat", &w, &b], vec![], "logits");
        g.node_to(
            "Softmax",
            "probs",
            &["logits"],
            vec![attr::int("axis", 1)],
            "probs",
        );
    }

    fn pool(g: &mut Graph, x: &str, out: &str) -> String {
        g.node_to(
            "MaxPool",
            out,
            &[x],
            vec![
                attr::ints("kernel_shape", &[2, 2]),
                attr::ints("strides", &[2, 2]),
            ],
            out,
        )
    }

    /// The float model; `calibration` adds the [`CALIBRATED`] tensors (except the input) as
    /// outputs so a run yields their ranges.
    pub fn float_model(&self, calibration: bool) -> ModelProto {
        let mut g = Graph::new();
        g.conv_w("c1", &self.c1, "image");
        g.node_to("Relu", "r1", &["c1"], vec![], "r1");
        Self::pool(&mut g, "r1", "p1");
        g.conv_w("c2", &self.c2, "p1");
        g.node_to("Relu", "r2", &["c2"], vec![], "r2");
        g.conv_w("c3", &self.c3, "r2");
        g.conv_w("proj", &self.proj, "p1");
        g.node_to("Add", "sum", &["c3", "proj"], vec![], "sum");
        g.node_to("Relu", "features", &["sum"], vec![], "features");
        self.head(&mut g, "features");
        let mut outputs: Vec<(&str, &[usize])> =
            vec![("probs", &[1, CLASSES]), ("features", &FEATURES_SHAPE)];
        let h = SIDE / 2;
        let shapes: [(&str, [usize; 4]); 6] = [
            ("c1", [1, 8, SIDE, SIDE]),
            ("p1", [1, 8, h, h]),
            ("c2", [1, 8, h, h]),
            ("r2", [1, 8, h, h]),
            ("c3", [1, FEAT, h, h]),
            ("proj", [1, FEAT, h, h]),
        ];
        if calibration {
            for (n, s) in &shapes {
                outputs.push((n, s));
            }
        }
        finish(g, ("image", &INPUT_SHAPE), &outputs)
    }

    /// The QOperator model: s8 activations from `ranges` (max |x| per [`CALIBRATED`]
    /// tensor): signed ones symmetric (scale `max|x| / 127`, zero point 0), post-ReLU ones
    /// over all 256 levels (scale `max / 255`, zero point -128); s8 symmetric per-channel
    /// weights, int32 bias, float head: the file contract of `renalscan quantize`. Three
    /// QLinearConv and one ConvInteger (the projection, whose output stays float; its range
    /// is not used).
    pub fn qoperator_model(&self, ranges: &[f32; 7]) -> ModelProto {
        let s = |i: usize| ranges[i].max(1e-6) / 127.0;
        let r = |i: usize| ranges[i].max(1e-6);
        let mut g = Graph::new();
        let (xq, xs) = g.quantize("image", s(0));
        let c1q = g.qconv("c1", &self.c1, &xq, &xs, s(1));
        g.dequantize(&c1q, "c1.ys", "c1");
        g.node_to("Relu", "r1", &["c1"], vec![], "r1");
        Self::pool(&mut g, "r1", "p1");
        let (p1q, p1s, p1z) = g.quantize_relu("p1", r(2));
        let c2q = g.qconv_zp("c2", &self.c2, (&p1q, &p1s, &p1z), s(3));
        g.dequantize(&c2q, "c2.ys", "c2");
        g.node_to("Relu", "r2", &["c2"], vec![], "r2");
        let (r2q, r2s, r2z) = g.quantize_relu("r2", r(4));
        let c3q = g.qconv_zp("c3", &self.c3, (&r2q, &r2s, &r2z), s(5));
        g.dequantize(&c3q, "c3.ys", "c3");
        // The projection feeds the residual Add: integer matmul, float output.
        g.conv_integer("proj", &self.proj, (&p1q, &p1s, &p1z));
        g.node_to("Add", "sum", &["c3", "proj"], vec![], "sum");
        g.node_to("Relu", "features", &["sum"], vec![], "features");
        self.head(&mut g, "features");
        finish(
            g,
            ("image", &INPUT_SHAPE),
            &[("probs", &[1, CLASSES]), ("features", &FEATURES_SHAPE)],
        )
    }
}

/// A deterministic test image in roughly the Caffe-normalised range of the real model.
pub fn test_image(seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..3 * SIDE * SIDE)
        .map(|i| {
            let (y, x) = ((i / SIDE) % SIDE, i % SIDE);
            ((x as f32 * 0.4).sin() + (y as f32 * 0.3).cos()) * 0.8 + rng.uniform() * 0.3
        })
        .collect()
}
