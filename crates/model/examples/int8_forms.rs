//! Cross-architecture sanity check of the int8 loader (a check, not a timing under qemu).
//!
//! Loads the float model and the three forms of the int8 model (integer, float, half), runs
//! one fixed pseudo-random image through each, prints wall times, the integer/fp32 ratio and
//! the matmul kernels tract picked, and either saves the outputs (`--save`) or compares them with a saved file from
//! another machine (`--compare`): max |dp| on probabilities, max |df| / max |f| on features,
//! per form. Exits non-zero if a comparison exceeds `--tol` (default 0.01 on probabilities and
//! relative features: both machines run the same graph in f32 / i32, so only summation order
//! and kernel rounding differ; the half form accumulates in f16 on both, with different
//! kernels, so it gets 5x that tolerance).
//!
//! x86:     cargo run --release -p model --example int8_forms -- --float F --int8 I --save x86.bin
//! aarch64: cargo build --release --target aarch64-unknown-linux-gnu -p model --example int8_forms
//!          qemu-aarch64-static -L /usr/aarch64-linux-gnu <target>/aarch64-unknown-linux-gnu/\
//!            release/examples/int8_forms --float F --int8 I --compare x86.bin

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use model::int8::{Form, LoadOptions};
use model::{output, Network};

const SHAPE: [usize; 4] = [1, 3, 224, 224];
const FORMS: [&str; 4] = ["fp32", "integer", "float-form", "half-form"];

struct Opts {
    float: PathBuf,
    int8: PathBuf,
    save: Option<PathBuf>,
    compare: Option<PathBuf>,
    tol: f32,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        float: PathBuf::new(),
        int8: PathBuf::new(),
        save: None,
        compare: None,
        tol: 0.01,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--float" => o.float = val()?.into(),
            "--int8" => o.int8 = val()?.into(),
            "--save" => o.save = Some(val()?.into()),
            "--compare" => o.compare = Some(val()?.into()),
            "--tol" => o.tol = val()?.parse().map_err(|e| format!("--tol: {e}"))?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.float.as_os_str().is_empty() || o.int8.as_os_str().is_empty() {
        return Err(
            "usage: int8_forms --float F --int8 I [--save OUT | --compare IN] [--tol T]".into(),
        );
    }
    Ok(o)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let o = opts()?;
    println!("arch {}, {}", std::env::consts::ARCH, cpu_note());
    println!(
        "tract's int8 kernel for a ResNet conv here: {}",
        model::int8::native_int8_kernel().unwrap_or_else(|| "none".into())
    );
    let mut rng = testkit::Rng::new(2024);
    let image: Vec<f32> = (0..SHAPE.iter().product::<usize>())
        .map(|_| rng.uniform() * 60.0)
        .collect();
    let load = |path: &PathBuf, form| {
        let opts = LoadOptions {
            form,
            ..LoadOptions::default()
        };
        let t = Instant::now();
        let net = Network::load_with(path, &SHAPE, &opts).map_err(|e| e.to_string())?;
        Ok::<_, String>((net, t.elapsed().as_secs_f64()))
    };
    let mut results = Vec::new();
    let mut times = Vec::new();
    for (name, path, form) in [
        (FORMS[0], &o.float, Form::Auto),
        (FORMS[1], &o.int8, Form::Integer),
        (FORMS[2], &o.int8, Form::Float),
        (FORMS[3], &o.int8, Form::Half),
    ] {
        let (net, load_s) = load(path, form)?;
        let t = Instant::now();
        let outs = net.run(&image).map_err(|e| e.to_string())?;
        let run_s = t.elapsed().as_secs_f64();
        let get = |n: &str| {
            output(&outs, n)
                .map(|o| o.data.clone())
                .ok_or(format!("no {n}"))
        };
        let (probs, features) = (get("probs")?, get("features")?);
        let kernels = net
            .form_report()
            .and_then(|r| r.integer.as_ref().or(r.float.as_ref()).or(r.half.as_ref()))
            .map(|c| {
                format!(
                    "{:?}",
                    c.plan.kernels.iter().map(|k| &k.kernel).collect::<Vec<_>>()
                )
            })
            .unwrap_or_else(|| "fp32 file".into());
        println!(
            "{name:<10} load {load_s:7.2} s, one run {run_s:8.2} s, top-1 {:?}, kernels {kernels}",
            model::top_k(&probs, 1)
        );
        times.push(run_s);
        results.push((probs, features));
    }
    println!("integer / fp32 wall-time ratio: {:.2}", times[1] / times[0]);
    let (dp, df) = diff(&results[0], &results[1]);
    println!("integer vs fp32 here: max |dp| {dp:.4}, max |df|/max|f| {df:.4}");
    let (dp, df) = diff(&results[2], &results[3]);
    println!("half vs float form here: max |dp| {dp:.4}, max |df|/max|f| {df:.4}");

    if let Some(path) = &o.save {
        let bytes: Vec<u8> = results
            .iter()
            .flat_map(|(p, f)| p.iter().chain(f))
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("saved outputs to {}", path.display());
    }
    let mut ok = true;
    if let Some(path) = &o.compare {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vals: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let per = results[0].0.len() + results[0].1.len();
        if vals.len() != per * results.len() {
            return Err(format!(
                "{}: {} values, expected {}",
                path.display(),
                vals.len(),
                per * results.len()
            ));
        }
        for (i, (name, r)) in FORMS.iter().zip(&results).enumerate() {
            let block = &vals[i * per..(i + 1) * per];
            let theirs = (block[..r.0.len()].to_vec(), block[r.0.len()..].to_vec());
            let (dp, df) = diff(&theirs, r);
            let tol = if *name == "half-form" {
                5.0 * o.tol
            } else {
                o.tol
            };
            let pass = dp <= tol && df <= tol;
            ok &= pass;
            println!(
                "{name:<10} vs {}: max |dp| {dp:.6}, max |df|/max|f| {df:.6} -> {}",
                path.display(),
                if pass { "agree" } else { "DISAGREE" }
            );
        }
    }
    Ok(ok)
}

fn diff(a: &(Vec<f32>, Vec<f32>), b: &(Vec<f32>, Vec<f32>)) -> (f32, f32) {
    let m = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    let fmax = a.1.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    (m(&a.0, &b.0), m(&a.1, &b.1) / fmax)
}

fn cpu_note() -> String {
    #[cfg(target_arch = "aarch64")]
    {
        format!(
            "dotprod {}, i8mm {}, fp16 {}",
            std::arch::is_aarch64_feature_detected!("dotprod"),
            std::arch::is_aarch64_feature_detected!("i8mm"),
            std::arch::is_aarch64_feature_detected!("fp16")
        )
    }
    #[cfg(target_arch = "x86_64")]
    {
        format!(
            "avx2 {}, avx512vnni {}, avxvnni {}",
            std::arch::is_x86_feature_detected!("avx2"),
            std::arch::is_x86_feature_detected!("avx512vnni"),
            std::arch::is_x86_feature_detected!("avxvnni")
        )
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    {
        String::new()
    }
}
