//! The rewrite on a tiny synthetic model (conv-relu-maxpool-conv-add-relu-pool-gemm-softmax):
//! float vs simulated int8 vs tract's integer form, file layout, and the typed errors.

use std::collections::{BTreeMap, BTreeSet};

use onnx_graph::pb::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto};
use onnx_graph::{attr, value_info, Dim, Graph, ModelMeta};
use quantize::{engine, Calibrator, FloatModel, Form, QuantizeError};
use testkit::Rng;
use usimage::FrameRef;

const SIDE: usize = 8;

fn conv(g: &mut Graph, rng: &mut Rng, name: &str, x: &str, cin: usize, cout: usize, k: usize) {
    let amp = (1.0 / (cin * k * k) as f32).sqrt() * 1.7;
    let w = rng.vec(cout * cin * k * k, amp);
    let b = rng.vec(cout, 0.1);
    g.conv(name, x, [cout, cin, k, k], &w, &b, 1, (k / 2) as i64);
}

fn n(
    op: &str,
    name: &str,
    inputs: &[&str],
    attrs: Vec<onnx_graph::pb::AttributeProto>,
) -> NodeProto {
    onnx_graph::node(op, name, inputs, attrs, name)
}

fn batch_dims(dims: &[usize]) -> Vec<Dim> {
    std::iter::once(Dim::Symbolic("N".into()))
        .chain(dims.iter().map(|&d| Dim::Fixed(d as i64)))
        .collect()
}

/// conv(3->8) relu maxpool | conv(8->8) relu conv(8->8) + shortcut, relu = features |
/// GAP flatten gemm(8->3) softmax = probs.
fn tiny_model(extra: Option<NodeProto>) -> Vec<u8> {
    tiny_model_with(extra, false)
}

/// [`tiny_model`], or with `cells` the exporter's per-cell head instead of GAP + Gemm:
/// reshape to N x 8 x 16 cells, matmul(5 x 8) + bias, relu, matmul(3 x 5) + bias,
/// log-sum-exp over the cells (max + ReduceLogSumExp of the rest), minus log 16, times
/// 1 / temperature, softmax.
fn tiny_model_with(extra: Option<NodeProto>, cells: bool) -> Vec<u8> {
    // Seeds 1-6 all pass every test here (checked when the generator changed); 1 it is.
    let mut rng = Rng::new(1);
    let mut g = Graph::new();
    conv(&mut g, &mut rng, "c1", "image", 3, 8, 3);
    g.node("Relu", "c1_relu", &["c1"], vec![]);
    g.node(
        "MaxPool",
        "pool",
        &["c1_relu"],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("strides", &[2, 2]),
            attr::ints("pads", &[1, 1, 1, 1]),
        ],
    );
    conv(&mut g, &mut rng, "a", "pool", 8, 8, 1);
    g.node("Relu", "a_relu", &["a"], vec![]);
    conv(&mut g, &mut rng, "b", "a_relu", 8, 8, 3);
    g.node("Add", "add", &["b", "pool"], vec![]);
    g.node_to("Relu", "add_relu", &["add"], vec![], "features");
    if cells {
        g.init(onnx_graph::tensor::i64("cells.shape", &[3], &[0, 8, -1]));
        g.node(
            "Reshape",
            "cells_flat",
            &["features", "cells.shape"],
            vec![],
        );
        g.f32("cells.w1", &[5, 8], &rng.vec(40, 0.6));
        g.f32("cells.b1", &[5, 1], &rng.vec(5, 0.1));
        g.f32("cells.w2", &[3, 5], &rng.vec(15, 1.5));
        g.f32("cells.b2", &[3, 1], &[0.1, -0.2, 0.05]);
        g.node("MatMul", "cells_h", &["cells.w1", "cells_flat"], vec![]);
        g.node("Add", "cells_hb", &["cells_h", "cells.b1"], vec![]);
        g.node("Relu", "cells_relu", &["cells_hb"], vec![]);
        g.node("MatMul", "cells_z", &["cells.w2", "cells_relu"], vec![]);
        g.node("Add", "cells_zb", &["cells_z", "cells.b2"], vec![]);
        let axes = || vec![attr::ints("axes", &[2]), attr::int("keepdims", 1)];
        g.node("ReduceMax", "cells_max", &["cells_zb"], axes());
        g.node("Sub", "cells_shift", &["cells_zb", "cells_max"], vec![]);
        g.node("ReduceLogSumExp", "cells_pool", &["cells_shift"], axes());
        g.node(
            "Add",
            "cells_pool_max",
            &["cells_pool", "cells_max"],
            vec![],
        );
        g.node(
            "Flatten",
            "cells_pooled",
            &["cells_pool_max"],
            vec![attr::int("axis", 1)],
        );
        g.f32("cells.log_n", &[1], &[16f32.ln()]);
        g.node(
            "Sub",
            "cells_mean",
            &["cells_pooled", "cells.log_n"],
            vec![],
        );
        g.f32("cells.inv_t", &[1], &[0.8]);
        g.node("Mul", "head", &["cells_mean", "cells.inv_t"], vec![]);
    } else {
        g.node("GlobalAveragePool", "gap", &["features"], vec![]);
        g.node("Flatten", "flat", &["gap"], vec![attr::int("axis", 1)]);
        g.f32("head.weight", &[8, 3], &rng.vec(24, 0.8));
        g.f32("head.bias", &[3], &[0.1, -0.2, 0.05]);
        g.node(
            "Gemm",
            "head",
            &["flat", "head.weight", "head.bias"],
            vec![],
        );
    }
    g.node_to(
        "Softmax",
        "softmax",
        &["head"],
        vec![attr::int("axis", 1)],
        "probs",
    );
    if let Some(x) = extra {
        g.nodes.push(x);
    }
    let model = g.into_model(
        vec![value_info("image", &batch_dims(&[3, SIDE, SIDE]))],
        vec![
            value_info("probs", &batch_dims(&[3])),
            value_info("features", &batch_dims(&[8, SIDE / 2, SIDE / 2])),
        ],
        ModelMeta {
            graph: "tiny".into(),
            ..Default::default()
        },
    );
    onnx_graph::encode(&model)
}

fn inputs(count: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| rng.vec(3 * SIDE * SIDE, 2.0)).collect()
}

fn shape() -> [usize; 4] {
    [1, 3, SIDE, SIDE]
}

#[test]
fn simulated_int8_follows_float_and_integer_form_follows_simulation() {
    let model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    let stats = quantize::collect_stats(&model, &inputs(64, 11), 512).unwrap();
    assert_eq!(
        stats.tensors,
        ["image", "c1_relu", "a_relu"],
        "calibrated tensors (b feeds the residual Add: its output stays float)"
    );
    let scales = stats.scales(Calibrator::MinMax);
    let (int_proto, convs) = model.rewrite(&scales, Form::Integer).unwrap();
    let (sim_proto, _) = model.rewrite(&scales, Form::Simulated).unwrap();
    assert_eq!(convs.len(), 3);
    assert!(convs
        .iter()
        .all(|c| c.weight_sqnr_db > 30.0 && c.bias_saturated == 0));

    let test = inputs(8, 99);
    let outs = ["probs".to_string(), "features".to_string()];
    let fe = quantize::Engine::new(model.proto(), &shape(), &outs).unwrap();
    let se = quantize::Engine::new(&sim_proto, &shape(), &outs).unwrap();
    let ie = quantize::Engine::new(&int_proto, &shape(), &outs).unwrap();
    let (mut sim_vs_float, mut int_vs_sim) = (0f32, 0f32);
    let mut feat = quantize::math::Sqnr::default();
    let mut float_is_not_sim = false;
    for x in &test {
        let f = fe.run(x).unwrap();
        let s = se.run(x).unwrap();
        let i = ie.run(x).unwrap();
        for k in 0..3 {
            sim_vs_float = sim_vs_float.max((f[0][k] - s[0][k]).abs());
            int_vs_sim = int_vs_sim.max((i[0][k] - s[0][k]).abs());
        }
        feat.add(&f[1], &s[1]);
        float_is_not_sim |= f[1] != s[1];
    }
    assert!(float_is_not_sim, "simulation did not quantize anything");
    assert!(sim_vs_float < 0.03, "sim vs float max |dp| {sim_vs_float}");
    assert!(feat.db() > 25.0, "features SQNR {} dB", feat.db());
    assert!(int_vs_sim < 5e-3, "integer vs sim max |dp| {int_vs_sim}");

    // tract runs every convolution of the integer form as an integer matmul.
    let opt = engine::optimized(&int_proto, &shape(), &[]).unwrap();
    let ops = engine::describe(&opt);
    let int_mm = ops.iter().filter(|(_, i)| i.contains("mmm_i32")).count();
    assert_eq!(int_mm, 3, "{ops:#?}");

    let rows = quantize::layer_report(&model, &stats, &scales, &sim_proto, &test[..4]).unwrap();
    assert_eq!(rows.len(), 3 + 2);
    assert!(rows.iter().all(|r| r.network_sqnr_db > 15.0), "{rows:#?}");
}

/// The per-cell head (`renalscan train --head cells`) passes the quantizer and stays float:
/// only the trunk's convolutions are quantized, and the int8 forms follow the float model.
#[test]
fn per_cell_head_stays_float_and_int8_follows() {
    let model = FloatModel::from_bytes(&tiny_model_with(None, true)).unwrap();
    let stats = quantize::collect_stats(&model, &inputs(64, 11), 512).unwrap();
    assert_eq!(stats.tensors, ["image", "c1_relu", "a_relu"]);
    let scales = stats.scales(Calibrator::MinMax);
    let (int_proto, convs) = model.rewrite(&scales, Form::Integer).unwrap();
    let (sim_proto, _) = model.rewrite(&scales, Form::Simulated).unwrap();
    assert_eq!(convs.len(), 3);
    let g = int_proto.graph.as_ref().unwrap();
    for name in ["cells_h", "cells_z", "cells_pool", "head"] {
        let node = g.node.iter().find(|n| n.name == name).unwrap();
        assert!(
            node.input.iter().all(|i| !i.ends_with(quantize::graph::Q8)),
            "{name} reads int8: {node:?}"
        );
    }
    assert_eq!(
        float_init(g, "cells.w1"),
        float_init(model.proto().graph.as_ref().unwrap(), "cells.w1")
    );
    assert_int8_follows(&model, &sim_proto, &int_proto);
}

#[test]
fn file_holds_int8_weights_once_and_only_qoperator_ops() {
    let model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    let scales = fixed_scales(&model);
    let (p, _) = model.rewrite(&scales, Form::Integer).unwrap();
    let g = p.graph.unwrap();
    let allowed = [
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "MaxPool",
        "Add",
        "Relu",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
        "Softmax",
        "ConvInteger",
        "Cast",
        "Mul",
    ];
    assert!(g.node.iter().all(|n| allowed.contains(&n.op_type.as_str())));
    let ops = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    // `b` feeds the residual Add: integer matmul, float output; the others stay QLinearConv.
    assert_eq!((ops("QLinearConv"), ops("ConvInteger")), (2, 1));
    let ci = g.node.iter().find(|n| n.op_type == "ConvInteger").unwrap();
    assert_eq!(ci.name, "b");
    assert_eq!(ci.input[1], "b.weight_q8");
    for (t, want) in [("b.out_scale", 8usize), ("b.out_bias", 8)] {
        let t = g.initializer.iter().find(|i| i.name == t).unwrap();
        assert_eq!(t.dims, [1, want as i64, 1, 1]);
        assert_eq!(t.data_type, DataType::Float as i32);
    }
    // The rescale is x_scale * w_scale[c].
    let out_scale = float_init(&g, "b.out_scale");
    let w = float_init(model.proto().graph.as_ref().unwrap(), "b.weight");
    for (c, s) in out_scale.iter().enumerate() {
        let max = w[c * 72..(c + 1) * 72]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        let want = 0.05 * max / 127.0;
        assert!(
            (s - want).abs() <= 1e-6 * want,
            "channel {c}: {s} vs {want}"
        );
    }
    for name in ["c1", "a", "b"] {
        let w: Vec<_> = g
            .initializer
            .iter()
            .filter(|t| t.name.starts_with(&format!("{name}.weight")))
            .collect();
        let q = w.iter().find(|t| t.name.ends_with("weight_q8")).unwrap();
        assert_eq!(q.data_type, DataType::Int8 as i32);
        assert!(
            !w.iter()
                .any(|t| t.data_type == DataType::Float as i32 && t.dims.len() == 4),
            "float copy of {name}'s weights"
        );
        if name != "b" {
            let b = g
                .initializer
                .iter()
                .find(|t| t.name == format!("{name}.bias_q32"))
                .unwrap();
            assert_eq!(b.data_type, DataType::Int32 as i32);
        }
    }
    // Outputs stay float and keep their names; the head stays float.
    assert_eq!(g.output[0].name, "probs");
    assert!(g.initializer.iter().any(|t| t.name == "head.weight"));
    // The written file is not accepted as a float model.
    let again = FloatModel::from_bytes(&p_bytes(&g));
    assert!(
        matches!(again, Err(QuantizeError::NotFloat(_))),
        "{again:?}"
    );
}

/// Keeping `a_relu` float: `a` becomes an integer matmul with a float output and Relu, `b`
/// (which reads it) a float conv on int8-stored weights; integer form and simulation agree,
/// and the float-kept tensor is never rounded.
#[test]
fn float_kept_activation_is_not_rounded_and_weights_stay_int8() {
    let model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    let stats = quantize::collect_stats(&model, &inputs(64, 11), 512).unwrap();
    let scales = stats.scales(Calibrator::MinMax);
    let keep: BTreeSet<String> = ["a_relu".to_string()].into();
    let (int_proto, convs) = model
        .rewrite_mixed(&scales, Form::Integer, None, &keep)
        .unwrap();
    let (sim_proto, _) = model
        .rewrite_mixed(&scales, Form::Simulated, None, &keep)
        .unwrap();
    assert_eq!(convs.len(), 3);
    let g = int_proto.graph.as_ref().unwrap();
    let ops = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(
        (ops("QLinearConv"), ops("ConvInteger"), ops("Conv")),
        (1, 1, 1)
    );
    let conv = g.node.iter().find(|n| n.op_type == "Conv").unwrap();
    assert_eq!(conv.name, "b");
    let dq = g
        .node
        .iter()
        .find(|n| n.output.first() == Some(&conv.input[1]))
        .unwrap();
    assert_eq!(
        (dq.op_type.as_str(), dq.input[0].as_str()),
        ("DequantizeLinear", "b.weight_q8")
    );
    assert!(
        g.node.iter().all(|n| n.output[0] != "a_relu_q8"),
        "a_relu was quantized"
    );
    let float_weights: Vec<&str> = g
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Float as i32 && t.name.ends_with(".weight"))
        .filter(|t| t.name != "head.weight")
        .map(|t| t.name.as_str())
        .collect();
    assert!(
        float_weights.is_empty(),
        "float conv weights {float_weights:?}"
    );

    assert_int8_follows(&model, &sim_proto, &int_proto);

    let e = model
        .rewrite_mixed(&scales, Form::Integer, None, &["nope".to_string()].into())
        .unwrap_err();
    assert!(e.to_string().contains("`nope`"), "{e}");
}

/// Full-range post-ReLU encoding: zero point -128 and half the step on the ReLU outputs,
/// the input stays symmetric; the int8 MaxPool (padded borders included) stays exact, and
/// the integer form follows the simulation.
#[test]
fn relu_full_range_halves_the_step_and_keeps_pooling_exact() {
    let mut model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    let stats = quantize::collect_stats(&model, &inputs(64, 11), 512).unwrap();
    let scales = stats.scales(Calibrator::MinMax);
    model.set_encoding(quantize::ActEncoding::ReluFullRange);
    assert_eq!(model.act_qparams("image", 0.5), (0.5, 0));
    let (s, z) = model.act_qparams("c1_relu", 0.5);
    assert_eq!(z, -128);
    assert!((s - 0.5 * 127.0 / 255.0).abs() < 1e-7, "{s}");

    let (int_proto, _) = model.rewrite(&scales, Form::Integer).unwrap();
    let (sim_proto, _) = model.rewrite(&scales, Form::Simulated).unwrap();
    let g = int_proto.graph.as_ref().unwrap();
    let zp = g
        .initializer
        .iter()
        .find(|t| t.name == "q8.zero_point_relu")
        .unwrap();
    assert_eq!(zp.raw_data, [0x80]);
    let qc = g.node.iter().find(|n| n.op_type == "QLinearConv").unwrap();
    assert_eq!(qc.name, "c1");
    assert_eq!(
        (qc.input[2].as_str(), qc.input[7].as_str()),
        ("q8.zero_point", "q8.zero_point_relu"),
        "input symmetric, ReLU output full range"
    );

    // tract's int8 MaxPool (3x3, stride 2, pad 1) on the full-range codes is the max over
    // the window's real cells: padding never wins (code -128 is real 0, a ReLU's minimum).
    let e = quantize::Engine::new(
        &sim_proto,
        &shape(),
        &["c1_relu_q8".to_string(), "pool_q8".to_string()],
    )
    .unwrap();
    let (side, half) = (SIDE, SIDE / 2);
    let mut border_hits = 0;
    for x in &inputs(4, 5) {
        let o = e.run(x).unwrap();
        let (c1, pool) = (&o[0], &o[1]);
        for c in 0..8 {
            for oy in 0..half {
                for ox in 0..half {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (y, x) = ((2 * oy + ky) as i64 - 1, (2 * ox + kx) as i64 - 1);
                            if (0..SIDE as i64).contains(&y) && (0..SIDE as i64).contains(&x) {
                                m = m.max(c1[c * side * side + y as usize * side + x as usize]);
                            }
                        }
                    }
                    let got = pool[c * half * half + oy * half + ox];
                    assert_eq!(got, m, "channel {c} at ({oy}, {ox})");
                    border_hits += usize::from((oy == 0 || ox == 0) && m == -128.0);
                }
            }
        }
    }
    assert!(border_hits > 0, "no all-zero border window was exercised");

    assert_int8_follows(&model, &sim_proto, &int_proto);
}

/// On test inputs, the integer form follows the simulation (max |dp| < 5e-3) and the
/// simulation the float model (< 0.03).
fn assert_int8_follows(model: &FloatModel, sim: &ModelProto, int: &ModelProto) {
    let outs = ["probs".to_string()];
    let fe = quantize::Engine::new(model.proto(), &shape(), &outs).unwrap();
    let se = quantize::Engine::new(sim, &shape(), &outs).unwrap();
    let ie = quantize::Engine::new(int, &shape(), &outs).unwrap();
    let (mut int_vs_sim, mut sim_vs_float) = (0f32, 0f32);
    for x in &inputs(8, 99) {
        let (f, s, i) = (fe.run(x).unwrap(), se.run(x).unwrap(), ie.run(x).unwrap());
        for k in 0..3 {
            int_vs_sim = int_vs_sim.max((i[0][k] - s[0][k]).abs());
            sim_vs_float = sim_vs_float.max((f[0][k] - s[0][k]).abs());
        }
    }
    assert!(int_vs_sim < 5e-3, "integer vs sim max |dp| {int_vs_sim}");
    assert!(sim_vs_float < 0.03, "sim vs float max |dp| {sim_vs_float}");
}

/// Scale 0.05 for every calibrated tensor.
fn fixed_scales(model: &FloatModel) -> BTreeMap<String, f32> {
    model
        .calibration_tensors()
        .unwrap()
        .into_iter()
        .map(|t| (t, 0.05))
        .collect()
}

/// The float values of initializer `name` of `g`.
fn float_init(g: &GraphProto, name: &str) -> Vec<f32> {
    let t = g.initializer.iter().find(|t| t.name == name).unwrap();
    quantize::graph::float_data(t).unwrap()
}

fn p_bytes(g: &GraphProto) -> Vec<u8> {
    onnx_graph::encode(&onnx_graph::model(g.clone(), ModelMeta::default()))
}

#[test]
fn unsupported_op_is_named() {
    let bad = n("Tanh", "squash", &["probs"], vec![]);
    let err = FloatModel::from_bytes(&tiny_model(Some(bad))).unwrap_err();
    assert!(
        matches!(&err, QuantizeError::UnsupportedOp { op, node } if op == "Tanh" && node == "squash"),
        "{err}"
    );
    assert!(matches!(
        FloatModel::from_bytes(b"\xff\xff not onnx"),
        Err(QuantizeError::Decode(_))
    ));
}

#[test]
fn empty_and_unreadable_calibration_sets() {
    let model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    assert!(matches!(
        quantize::collect_stats(&model, &[], 256),
        Err(QuantizeError::EmptySet(_))
    ));
    assert!(matches!(
        quantize::load_images(&[], 8, 10.0, "calibration"),
        Err(QuantizeError::EmptySet(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"not an image").unwrap();
    let paths = vec![
        FrameRef::first(garbage),
        FrameRef::first(dir.path().join("missing.png")),
    ];
    match quantize::load_images(&paths, 8, 10.0, "calibration") {
        Err(QuantizeError::Unreadable {
            failed,
            total,
            list,
            ..
        }) => {
            assert_eq!((failed, total), (2, 2));
            assert!(
                list.contains("garbage.png") && list.contains("missing.png"),
                "{list}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Below the threshold the bad file is skipped and listed.
    let good = dir.path().join("good.png");
    image::GrayImage::from_fn(64, 48, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]))
        .save(&good)
        .unwrap();
    let mut paths = vec![FrameRef::first(good); 9];
    paths.push(FrameRef::first(dir.path().join("missing.png")));
    let imgs = quantize::load_images(&paths, 8, 20.0, "calibration").unwrap();
    assert_eq!(imgs.tensors.len(), 9);
    assert_eq!(imgs.tensors[0].len(), 3 * 8 * 8);
    assert_eq!(imgs.skipped.len(), 1);
}

#[test]
fn bias_correction_is_the_weight_rounding_times_the_input_mean() {
    let model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    let images = inputs(16, 5);
    let corr = quantize::bias_correction(&model, &images, None).unwrap();
    assert_eq!(corr.len(), 3);
    assert_eq!(corr["b"].len(), 8);
    // c1 reads the image: check against the formula computed here.
    let w = float_init(model.proto().graph.as_ref().unwrap(), "c1.weight");
    let q = quantize::math::quantize_weights(&w, 8);
    let hw = SIDE * SIDE;
    let mean: Vec<f64> = (0..3)
        .map(|i| {
            images
                .iter()
                .map(|x| {
                    x[i * hw..(i + 1) * hw]
                        .iter()
                        .map(|v| f64::from(*v))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / (hw * images.len()) as f64
        })
        .collect();
    for (c, got) in corr["c1"].iter().enumerate() {
        let d: f64 = mean
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                let q = &q;
                let w = &w;
                (0..9).map(move |j| {
                    let k = c * 27 + i * 9 + j;
                    (f64::from(q.values[k]) * f64::from(q.scales[c]) - f64::from(w[k])) * m
                })
            })
            .sum();
        let got = f64::from(*got);
        assert!(
            (got - d).abs() <= 1e-6 + 1e-4 * d.abs(),
            "channel {c}: {got} vs {d}"
        );
    }
    assert!(corr["c1"].iter().any(|d| *d != 0.0));
    // The correction lands in the written int32 bias.
    let scales = fixed_scales(&model);
    let (p, _) = model
        .rewrite_corrected(&scales, Form::Integer, Some(&corr))
        .unwrap();
    let (p0, _) = model.rewrite(&scales, Form::Integer).unwrap();
    let bias = |p: &ModelProto| -> Vec<i32> {
        let t = p
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name == "c1.bias_q32")
            .unwrap()
            .raw_data
            .clone();
        t.chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (b1, b0) = (bias(&p), bias(&p0));
    for c in 0..8 {
        let step = 0.05 * q.scales[c];
        let want = (corr["c1"][c] / step).round() as i32;
        assert!(
            ((b0[c] - b1[c]) - want).abs() <= 1,
            "channel {c}: bias moved by {} steps, expected {want}",
            b0[c] - b1[c]
        );
    }
    // A correction of the wrong length is refused.
    let mut bad = corr.clone();
    bad.insert("a".into(), vec![0.0; 3]);
    assert!(matches!(
        model.rewrite_corrected(&scales, Form::Integer, Some(&bad)),
        Err(QuantizeError::Invalid(_))
    ));
}

/// Per-channel largest value of `tensor` over `images`.
fn channel_max(model: &FloatModel, tensor: &str, images: &[Vec<f32>]) -> Vec<f32> {
    let e = quantize::Engine::new(model.proto(), &shape(), &[tensor.to_string()]).unwrap();
    let mut m = Vec::new();
    for x in images {
        let (sh, v) = e.run_shaped(x).unwrap().remove(0);
        let c = sh[1];
        m.resize(c, 0f32);
        for (r, ch) in m.iter_mut().zip(v.chunks_exact(v.len() / c)) {
            *r = ch.iter().fold(*r, |a, b| a.max(b.abs()));
        }
    }
    m
}

/// Equalization rescales only `a -> a_relu -> b` (the pooled `c1_relu` also feeds the
/// residual Add, where a channel scale would not cancel), keeps the float function and
/// evens out `a_relu`'s channel ranges.
#[test]
fn equalization_keeps_the_float_function_and_evens_channel_ranges() {
    let model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    let calib = inputs(32, 21);
    let (eq, report) = quantize::equalize::equalize(&model, &calib, 1.0, 1e3).unwrap();
    assert_eq!(
        report.iter().map(|r| r.tensor.as_str()).collect::<Vec<_>>(),
        ["a_relu"]
    );
    let before = channel_max(&model, "a_relu", &calib);
    let after = channel_max(&eq, "a_relu", &calib);
    let spread = |v: &[f32]| {
        let live: Vec<f32> = v.iter().copied().filter(|x| *x > 0.0).collect();
        live.iter().fold(0f32, |a, b| a.max(*b)) / live.iter().fold(f32::INFINITY, |a, b| a.min(*b))
    };
    assert!(spread(&before) > 1.5, "test model already even: {before:?}");
    assert!(spread(&after) < 1.01, "after full equalization: {after:?}");
    assert!((report[0].spread_after - 1.0).abs() < 1e-3, "{report:?}");

    let outs = ["probs".to_string(), "features".to_string()];
    let fe = quantize::Engine::new(model.proto(), &shape(), &outs).unwrap();
    let ee = quantize::Engine::new(eq.proto(), &shape(), &outs).unwrap();
    for x in inputs(8, 77) {
        let (f, e) = (fe.run(&x).unwrap(), ee.run(&x).unwrap());
        for (a, b) in f.iter().flatten().zip(e.iter().flatten()) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }
    // c1 and its weights are untouched; b's input columns carry the inverse scale.
    let w = |m: &FloatModel, name: &str| float_init(m.proto().graph.as_ref().unwrap(), name);
    assert_eq!(w(&model, "c1.weight"), w(&eq, "c1.weight"));
    assert_ne!(w(&model, "b.weight"), w(&eq, "b.weight"));
}

/// GPTQ-rounded weights are what the file stores, on the nearest rounding's scales, and with
/// every activation kept float they leave the features no further from float than nearest
/// rounding does.
#[test]
fn gptq_weights_land_in_the_file_and_do_not_lose_to_nearest() {
    let model = FloatModel::from_bytes(&tiny_model(None)).unwrap();
    let calib = inputs(64, 11);
    let rounded = quantize::gptq::gptq(&model, &calib, &quantize::GptqOptions::default()).unwrap();
    assert_eq!(
        rounded.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "c1"]
    );
    let stats = quantize::collect_stats(&model, &calib, 512).unwrap();
    let scales = stats.scales(Calibrator::MinMax);
    let all: BTreeSet<String> = model.calibration_tensors().unwrap().into_iter().collect();
    let keep: BTreeSet<String> = all.into_iter().filter(|t| t != "image").collect();
    let adj = |r| quantize::Adjustments {
        correction: None,
        rounded: r,
        float_keys: Some(&keep),
    };
    let (int_g, _) = model
        .rewrite_with(&scales, Form::Integer, adj(Some(&rounded)))
        .unwrap();
    let g = int_g.graph.as_ref().unwrap();
    let mut differs = false;
    for (name, r) in &rounded {
        let t = g
            .initializer
            .iter()
            .find(|t| t.name == format!("{name}.weight_q8"))
            .unwrap();
        let stored: Vec<i8> = t.raw_data.iter().map(|b| *b as i8).collect();
        assert_eq!(stored, r.values, "{name}");
        let w = float_init(
            model.proto().graph.as_ref().unwrap(),
            &format!("{name}.weight"),
        );
        let nearest = quantize::math::quantize_weights(&w, r.scales.len());
        assert_eq!(nearest.scales, r.scales, "{name}");
        differs |= nearest.values != r.values;
    }
    assert!(differs, "gptq rounded every weight to nearest");

    let features = |r| {
        let (sim, _) = model
            .rewrite_with(&scales, Form::Simulated, adj(r))
            .unwrap();
        let outs = ["features".to_string()];
        let fe = quantize::Engine::new(model.proto(), &shape(), &outs).unwrap();
        let se = quantize::Engine::new(&sim, &shape(), &outs).unwrap();
        let mut s = quantize::math::Sqnr::default();
        for x in inputs(32, 123) {
            s.add(&fe.run(&x).unwrap()[0], &se.run(&x).unwrap()[0]);
        }
        s.db()
    };
    let (near, gptq) = (features(None), features(Some(&rounded)));
    assert!(
        gptq > near - 0.5,
        "features SQNR gptq {gptq:.1} dB vs nearest {near:.1} dB"
    );
    let e = model
        .rewrite_with(
            &scales,
            Form::Integer,
            adj(Some(
                &[(
                    "a".to_string(),
                    quantize::math::quantize_weights(&[1.0; 4], 2),
                )]
                .into(),
            )),
        )
        .unwrap_err();
    assert!(e.to_string().contains("`a`"), "{e}");
}
