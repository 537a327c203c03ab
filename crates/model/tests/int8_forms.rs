//! The int8 loader on a QOperator model built and calibrated here (fast, always runs), and on
//! the real ResNet-50 files when `RENALSCAN_INT8_MODEL` and `RENALSCAN_FLOAT_MODEL` name them.

use std::path::{Path, PathBuf};

use model::int8::{Built, Form, LoadOptions};
use model::{output, ModelError, Network};
use testkit::qop::{self, TinyNet, CALIBRATED, INPUT_SHAPE};
use testkit::write_model;

struct Files {
    _dir: tempfile::TempDir,
    float: PathBuf,
    int8: PathBuf,
}

/// The tiny network in float and in QOperator form, calibrated (max |x| per quantized
/// tensor) on eight images through the float model itself.
fn files() -> Files {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = TinyNet::new(7);
    let calib = dir.path().join("calib.onnx");
    write_model(&net.float_model(true), &calib);
    let cal = Network::load(&calib, &INPUT_SHAPE).expect("calibration model loads");
    let mut ranges = [0f32; 7];
    for seed in 1..=8 {
        let image = qop::test_image(seed);
        let outs = cal.run(&image).expect("calibration run");
        for (i, name) in CALIBRATED.iter().enumerate() {
            let data = if *name == "image" {
                &image
            } else {
                &output(&outs, name).expect("calibration output").data
            };
            ranges[i] = data.iter().fold(ranges[i], |m, v| m.max(v.abs()));
        }
    }
    let float = dir.path().join("float.onnx");
    let int8 = dir.path().join("int8.onnx");
    write_model(&net.float_model(false), &float);
    write_model(&net.qoperator_model(&ranges), &int8);
    Files {
        _dir: dir,
        float,
        int8,
    }
}

fn load(path: &Path, form: Form) -> Network {
    let opts = LoadOptions {
        form,
        ..LoadOptions::default()
    };
    Network::load_with(path, &INPUT_SHAPE, &opts).expect("model loads")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// (max |dp| on probs, max |df| on features / max |f|) of `net` against `reference` on
/// held-out images (not used for calibration).
fn disagreement(net: &Network, reference: &Network) -> (f32, f32) {
    let mut worst = (0f32, 0f32);
    for seed in 100..104 {
        let image = qop::test_image(seed);
        let a = net.run(&image).expect("run");
        let b = reference.run(&image).expect("reference run");
        let get = |o: &[model::Output], n: &str| output(o, n).expect(n).data.clone();
        let dp = max_abs_diff(&get(&a, "probs"), &get(&b, "probs"));
        let fb = get(&b, "features");
        let fmax = fb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let df = max_abs_diff(&get(&a, "features"), &fb) / fmax;
        worst = (worst.0.max(dp), worst.1.max(df));
    }
    worst
}

#[test]
fn integer_form_runs_every_convolution_as_an_integer_matmul() {
    let f = files();
    let int = load(&f.int8, Form::Integer);
    let report = int.form_report().expect("report");
    assert_eq!(report.built, Built::Integer);
    assert_eq!(report.qlinear_convs, 4);
    let file = {
        use prost::Message;
        tract_onnx::pb::ModelProto::decode(std::fs::read(&f.int8).expect("read").as_slice())
            .expect("decode")
    };
    let ops = |op: &str| {
        file.graph
            .iter()
            .flat_map(|g| &g.node)
            .filter(|n| n.op_type == op)
            .count()
    };
    assert_eq!(
        (ops("QLinearConv"), ops("ConvInteger")),
        (3, 1),
        "the test net covers both integer conv kinds"
    );
    let plan = &report.integer.as_ref().expect("integer candidate").plan;
    eprintln!("integer form kernels here: {:?}", plan.kernels);
    assert!(
        plan.convs_left.is_empty(),
        "convolutions not lowered to matmuls: {:?}",
        plan.convs_left
    );
    assert_eq!(
        plan.integer_matmuls, report.qlinear_convs,
        "one i32-accumulating matmul per QLinearConv and ConvInteger: {plan:?}"
    );
    assert!(plan.kernels.iter().any(|k| k.integer));

    // The same file in float form: no integer matmul is left, the four convolutions run as
    // f32 matmuls (plus the head's Gemm, when tract makes a matmul of it).
    let fl = load(&f.int8, Form::Float);
    let report = fl.form_report().expect("report");
    assert_eq!(report.built, Built::Float);
    let plan = &report.float.as_ref().expect("float candidate").plan;
    assert_eq!(plan.integer_matmuls, 0, "{plan:?}");
    assert!(plan.float_matmuls >= 4, "{plan:?}");
    assert!(plan.convs_left.is_empty(), "{plan:?}");
}

/// Tolerances. Activations are s8 with scale max/127, so each quantized tensor carries a
/// rounding error of at most half a step, 0.4% of its range; four quantized layers (two in
/// series on the longest path, plus the input) compound to about 1-2% of the feature range in
/// the worst element, hence 4% on features. The head averages 64 positions, which shrinks the
/// error on logits, and a softmax moves a probability by at most a quarter of the logit
/// change, hence 0.02 on probabilities. The float form keeps only the weight rounding
/// (0.4% of each channel's range, averaging out over the fan-in), hence half of each.
#[test]
fn both_forms_agree_with_the_float_model() {
    let f = files();
    let reference = load(&f.float, Form::Auto);
    assert_eq!(reference.form_report().expect("report").built, Built::Plain);
    let int = load(&f.int8, Form::Integer);
    let fl = load(&f.int8, Form::Float);
    let (dp_i, df_i) = disagreement(&int, &reference);
    let (dp_f, df_f) = disagreement(&fl, &reference);
    eprintln!(
        "integer form: max |dp| {dp_i:.5}, features {df_i:.5}; float form: {dp_f:.5}, {df_f:.5}"
    );
    assert!(dp_i <= 0.02 && df_i <= 0.04, "integer form: {dp_i} {df_i}");
    assert!(dp_f <= 0.01 && df_f <= 0.02, "float form: {dp_f} {df_f}");
    // The float form is the float model's graph again: no integer op, and the ConvInteger's
    // Cast -> Mul -> Add rescale folded into its conv.
    let bytes = std::fs::read(&f.int8).expect("read int8 file");
    let proto = <tract_onnx::pb::ModelProto as prost::Message>::decode(&bytes[..]).expect("decode");
    let float = model::int8::float_form(&proto, &f.int8).expect("float form");
    let ops: Vec<&str> = float
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .map(|n| n.op_type.as_str())
        .filter(|op| !matches!(*op, "Identity"))
        .collect();
    for gone in ["QLinearConv", "ConvInteger", "Cast", "Mul"] {
        assert!(!ops.contains(&gone), "{gone} left in {ops:?}");
    }
    assert_eq!(ops.iter().filter(|o| **o == "Conv").count(), 4, "{ops:?}");
    // The integer form really quantizes activations: it is not the float form in disguise.
    let (dp_if, df_if) = disagreement(&int, &fl);
    assert!(
        dp_if > 0.0 || df_if > 0.0,
        "integer and float forms bit-identical"
    );
}

#[test]
fn auto_reports_its_choice_and_builds_a_runnable_form() {
    let f = files();
    let auto = load(&f.int8, Form::Auto);
    let report = auto.form_report().expect("report").clone();
    assert_ne!(report.built, Built::Plain);
    assert!(!report.reason.is_empty());
    // Whatever it picked, the float candidate is always built (it is the fallback), and a
    // timed choice carries both timings.
    let float = report.float.as_ref().expect("float candidate");
    if let Some(int) = &report.integer {
        assert!(
            int.first_run.is_some() && float.first_run.is_some(),
            "{report}"
        );
    } else {
        assert_eq!(report.built, Built::Float, "{report}");
    }
    let outs = auto.run(&qop::test_image(5)).expect("run");
    let probs = &output(&outs, "probs").expect("probs").data;
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
}

#[test]
fn auto_remembers_a_timed_choice_for_the_same_file_and_cpu() {
    let f = files();
    let cache = f.int8.with_file_name("form-decision.txt");
    let opts = LoadOptions {
        form: Form::Auto,
        decision_cache: Some(cache.clone()),
        ..LoadOptions::default()
    };
    let first = Network::load_with(&f.int8, &INPUT_SHAPE, &opts).expect("first load");
    let first = first.form_report().expect("report").clone();
    if first.integer.is_none() {
        // Integer kernel known slow here: nothing was timed, so nothing is remembered.
        assert!(!cache.exists(), "{first}");
        return;
    }
    let text = std::fs::read_to_string(&cache).expect("decision written");
    assert!(
        text.contains(&format!(
            "form={}",
            if first.built == Built::Integer {
                "integer"
            } else {
                "float"
            }
        )),
        "{text}"
    );
    let second = Network::load_with(&f.int8, &INPUT_SHAPE, &opts).expect("second load");
    let second = second.form_report().expect("report");
    assert_eq!(second.built, first.built);
    assert!(second.reason.contains("remembered"), "{second}");
    // Only the remembered form was built, and nothing was timed.
    assert_eq!(
        usize::from(second.integer.is_some()) + usize::from(second.float.is_some()),
        1
    );
    assert!(second
        .integer
        .iter()
        .chain(&second.float)
        .all(|c| c.first_run.is_none()));
    // A changed model file (here: a longer doc string, so another size) is timed afresh.
    {
        use prost::Message;
        let mut proto =
            tract_onnx::pb::ModelProto::decode(std::fs::read(&f.int8).expect("read").as_slice())
                .expect("decode");
        proto.doc_string.push_str("re-quantized");
        std::fs::write(&f.int8, proto.encode_to_vec()).expect("write");
    }
    let third = Network::load_with(&f.int8, &INPUT_SHAPE, &opts).expect("third load");
    let third = third.form_report().expect("report");
    assert!(third.reason.contains("timed one run each"), "{third}");
}

fn mutate_and_load(f: &Files, edit: impl FnOnce(&mut tract_onnx::pb::GraphProto)) -> ModelError {
    use prost::Message;
    let mut proto =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&f.int8).expect("read").as_slice())
            .expect("decode");
    edit(proto.graph.as_mut().expect("graph"));
    let path = f.int8.with_file_name("edited.onnx");
    std::fs::write(&path, proto.encode_to_vec()).expect("write");
    match Network::load_with(
        &path,
        &INPUT_SHAPE,
        &LoadOptions {
            form: Form::Float,
            ..LoadOptions::default()
        },
    ) {
        Err(e) => e,
        Ok(_) => panic!("edited model loaded"),
    }
}

#[test]
fn float_form_refusals_name_the_file_the_node_and_the_fix() {
    let f = files();
    // Asymmetric weights.
    let err = mutate_and_load(&f, |g| {
        let zp = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "c2.wzp")
            .expect("c2.wzp");
        zp.raw_data[3] = 5;
    });
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ModelError::Int8(model::int8::Int8Error::ZeroPoint { .. })
        ),
        "{msg}"
    );
    assert!(
        msg.contains("edited.onnx") && msg.contains("c2_q") && msg.contains("renalscan quantize"),
        "{msg}"
    );

    // A scale that is computed, not stored.
    let err = mutate_and_load(&f, |g| g.initializer.retain(|t| t.name != "c3.ws"));
    assert!(
        matches!(&err, ModelError::Int8(model::int8::Int8Error::MissingInitializer { tensor, .. }) if tensor == "c3.ws"),
        "{err}"
    );

    // Per-channel scales that do not match the output channels.
    let err = mutate_and_load(&f, |g| {
        let s = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "c3.ws")
            .expect("c3.ws");
        s.raw_data.truncate(8);
        s.dims = vec![2];
    });
    assert!(
        matches!(err, ModelError::Int8(model::int8::Int8Error::Layout { .. })),
        "{err}"
    );

    // ConvInteger with an asymmetric weight zero point.
    let err = mutate_and_load(&f, |g| {
        g.initializer
            .push(onnx_graph::tensor::i8("bad_zp", &[], &[3]));
        let n = g
            .node
            .iter_mut()
            .find(|n| n.op_type == "ConvInteger")
            .expect("ConvInteger");
        n.input[3] = "bad_zp".into();
    });
    assert!(
        matches!(&err, ModelError::Int8(model::int8::Int8Error::ZeroPoint { tensor, .. }) if tensor == "bad_zp"),
        "{err}"
    );

    // ConvInteger whose input scale cannot be found (its QuantizeLinear became a Relu).
    let err = mutate_and_load(&f, |g| {
        let n = g
            .node
            .iter_mut()
            .find(|n| n.op_type == "QuantizeLinear" && n.output[0] == "p1_q")
            .expect("p1 quantize");
        n.op_type = "Relu".into();
        n.input.truncate(1);
    });
    let msg = err.to_string();
    assert!(
        matches!(err, ModelError::Int8(model::int8::Int8Error::Layout { .. }))
            && msg.contains("proj_i32")
            && msg.contains("QuantizeLinear"),
        "{msg}"
    );

    // An integer op the rewrite does not know.
    let err = mutate_and_load(&f, |g| {
        let n = g
            .node
            .iter_mut()
            .find(|n| n.op_type == "Relu")
            .expect("relu");
        n.op_type = "QLinearLeakyRelu".into();
    });
    assert!(
        matches!(
            err,
            ModelError::Int8(model::int8::Int8Error::UnsupportedOp { .. })
        ),
        "{err}"
    );
}

#[test]
fn form_names_parse_for_config_files() {
    assert_eq!("auto".parse::<Form>(), Ok(Form::Auto));
    assert_eq!("Integer".parse::<Form>(), Ok(Form::Integer));
    assert_eq!("fp32".parse::<Form>(), Ok(Form::Float));
    assert_eq!("half".parse::<Form>(), Ok(Form::Half));
    assert!("fast"
        .parse::<Form>()
        .unwrap_err()
        .contains("auto, integer, float or half"));
}

/// The real ResNet-50 pair, when named with an input they were calibrated for: every one of
/// the integer form's convolutions is an integer matmul, and one preprocessed image through
/// each form agrees with the float model. One integer-form run (about 8 s where tract uses its
/// AVX2 int8 kernel, docs/tract-int8-x86.md).
#[test]
fn real_resnet50_int8_file() {
    let vars = [
        "RENALSCAN_INT8_MODEL",
        "RENALSCAN_FLOAT_MODEL",
        "RENALSCAN_INT8_INPUTS",
    ];
    let [Some(int8), Some(float), Some(inputs)] = vars.map(std::env::var_os) else {
        eprintln!(
            "skipped: set {vars:?} to the QOperator and float ResNet-50 files and a raw f32 input \
             file (`renalscan bench-int8 ... --save-inputs FILE` writes one)"
        );
        return;
    };
    let shape = [1, 3, 224, 224];
    let n: usize = shape.iter().product();
    let bytes = std::fs::read(&inputs).expect("inputs file");
    assert!(bytes.len() >= 4 * n, "{inputs:?} holds less than one image");
    let image: Vec<f32> = bytes[..4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let opts = |form| LoadOptions {
        form,
        ..LoadOptions::default()
    };
    let reference = Network::load(Path::new(&float), &shape).expect("float model");
    let int = Network::load_with(Path::new(&int8), &shape, &opts(Form::Integer)).expect("int8");
    let report = int.form_report().expect("report");
    let plan = &report.integer.as_ref().expect("integer").plan;
    assert!(plan.convs_left.is_empty(), "{plan:?}");
    assert_eq!(plan.integer_matmuls, report.qlinear_convs, "{plan:?}");
    let fl = Network::load_with(Path::new(&int8), &shape, &opts(Form::Float)).expect("int8");
    let p = |n: &Network| {
        output(&n.run(&image).expect("run"), "probs")
            .expect("probs")
            .data
            .clone()
    };
    let (p_ref, p_int, p_fl) = (p(&reference), p(&int), p(&fl));
    let (dp_i, dp_f) = (max_abs_diff(&p_int, &p_ref), max_abs_diff(&p_fl, &p_ref));
    eprintln!("ResNet-50: max |dp| integer {dp_i:.4}, float form {dp_f:.4}");
    // A wrong scale, channel order or bias in the rewrite moves probabilities by tenths and
    // changes the class; the rounding of a calibrated int8 ResNet-50 moved them by 0.01-0.06
    // per image here (the accuracy budget over a test set is the quantizer's report).
    let top = |p: &[f32]| model::top_k(p, 1);
    assert_eq!(top(&p_int), top(&p_ref), "integer form changes the class");
    assert_eq!(top(&p_fl), top(&p_ref), "float form changes the class");
    assert!(dp_i <= 0.1 && dp_f <= 0.1, "{dp_i} {dp_f}");
}

/// The half form computes in f16 and stays close to the float form of the same file. Auto
/// builds it only for a model whose agreement with fp32 is recorded, and only on a CPU with
/// f16 arithmetic (aarch64 `fp16`; never on x86 here).
#[test]
fn half_form_runs_in_f16_and_auto_needs_the_proof_and_the_cpu() {
    let f = files();
    let fl = load(&f.int8, Form::Float);
    let half = load(&f.int8, Form::Half);
    let report = half.form_report().expect("report");
    assert_eq!(report.built, Built::Half, "{report}");
    let (dp, df) = disagreement(&half, &fl);
    assert!(
        dp < 0.02 && df < 0.05,
        "half vs float form: dp {dp}, df {df}"
    );
    assert!(
        dp > 0.0 || df > 0.0,
        "half and float forms bit-identical: not f16"
    );

    let auto = load(&f.int8, Form::Auto);
    let r = auto.form_report().expect("report");
    assert!(r.half.is_none() && r.built != Built::Half, "{r}");
    let proven = Network::load_with(
        &f.int8,
        &INPUT_SHAPE,
        &LoadOptions {
            form: Form::Auto,
            half_proven: true,
            ..LoadOptions::default()
        },
    )
    .expect("loads");
    let r = proven.form_report().expect("report");
    assert_eq!(
        r.half.is_some(),
        model::int8::fp16_arithmetic(),
        "half built where the CPU has f16 arithmetic: {r}"
    );
    if r.half.is_some() {
        assert!(r.reason.contains("half"), "{r}");
    }
}
