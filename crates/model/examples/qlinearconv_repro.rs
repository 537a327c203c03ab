//! Minimal reproduction of tract's slow int8 convolution on x86 AVX2 (docs/tract-int8-x86.md).
//!
//! Writes two one-node ONNX models of the same convolution (ResNet-50's res2 3x3: 64 -> 64
//! channels, 56 x 56, pad 1; m = 64, k = 576, n = 3136): `qlinearconv.onnx`, a single
//! QLinearConv on int8 input and output, and `conv.onnx`, a single float Conv. Then runs each in
//! tract and prints the median time and the matmul kernel tract picked.
//!
//! `cargo run --release -p model --example qlinearconv_repro -- [OUT_DIR] [RUNS]`

use std::path::PathBuf;
use std::time::Instant;

use onnx_graph::Graph;
use testkit::qop::{ConvW, QuantOps};
use testkit::{finish, write_model, Rng};
use tract_onnx::pb::{tensor_proto::DataType, type_proto, ModelProto};
use tract_onnx::prelude::*;

const C: usize = 64;
const HW: usize = 56;

fn with_elem_type(mut m: ModelProto, dt: DataType) -> ModelProto {
    if let Some(g) = m.graph.as_mut() {
        for vi in g.input.iter_mut().chain(g.output.iter_mut()) {
            if let Some(type_proto::Value::TensorType(t)) =
                vi.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.elem_type = dt as i32;
            }
        }
    }
    m
}

/// Loads, optimises and times `path` on a constant input of `dt`; returns (median ms, kernels).
fn time(path: &std::path::Path, dt: DatumType, runs: usize) -> TractResult<(f64, String)> {
    let shape = [1, C, HW, HW];
    let typed = tract_onnx::onnx()
        .model_for_path(path)?
        .with_input_fact(0, InferenceFact::dt_shape(dt, shape))?
        .into_optimized()?;
    let summary = model::int8::plan_summary(&typed);
    let kernels = summary
        .kernels
        .iter()
        .map(|k| k.kernel.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let plan = typed.into_runnable()?;
    let input = Tensor::zero_dt(dt, &shape)?;
    plan.run(tvec!(input.clone().into()))?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        plan.run(tvec!(input.clone().into()))?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], kernels))
}

fn main() -> TractResult<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/qlinearconv-repro".into()),
    );
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    std::fs::create_dir_all(&out)?;
    let conv = ConvW::random(&mut Rng::new(1), C, C, 3, 1, 1);
    let shape = [1, C, HW, HW];

    let mut g = Graph::new();
    g.conv_w("y", &conv, "x");
    let float = finish(g, ("x", &shape), &[("y", &shape)]);

    let mut g = Graph::new();
    g.f32("x_scale", &[], &[0.05]);
    g.qconv("y", &conv, "x", "x_scale", 0.1);
    let int8 = with_elem_type(finish(g, ("x", &shape), &[("y_q", &shape)]), DataType::Int8);

    let (fp, qp) = (out.join("conv.onnx"), out.join("qlinearconv.onnx"));
    write_model(&float, &fp);
    write_model(&int8, &qp);
    println!(
        "one convolution 64->64, 3x3, 56x56 (m=64 k=576 n=3136, {:.0} MMAC), median of {runs}:",
        (C * C * 9 * HW * HW) as f64 / 1e6
    );
    let (tf, kf) = time(&fp, f32::datum_type(), runs)?;
    println!(
        "  Conv        f32 : {tf:8.2} ms   kernel {kf}   ({})",
        fp.display()
    );
    let (tq, kq) = time(&qp, i8::datum_type(), runs)?;
    println!(
        "  QLinearConv i8  : {tq:8.2} ms   kernel {kq}   ({})",
        qp.display()
    );
    println!("  int8 / f32      : {:8.1}x", tq / tf);
    Ok(())
}
