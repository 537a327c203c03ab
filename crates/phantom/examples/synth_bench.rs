//! Throughput of the generator (render + PNG write), all cores.
//! `cargo run --release -p phantom --example synth_bench -- [n] [profile|mixed] [out-dir]`
use std::time::Instant;

use phantom::{plan, write_dataset, Mix, PlanConfig, ProfileChoice, Renderer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let profile = ProfileChoice::parse(args.get(2).map(String::as_str).unwrap_or("peds-convex"))?;
    let out = args
        .get(3)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("phantom-bench"));
    let specs = plan(&PlanConfig {
        n,
        seed: 1,
        mix: Mix::Paper,
        profile,
        other_views: 0,
        elevation_max: phantom::DEFAULT_ELEVATION_MAX,
    });
    println!("threads: {}", rayon::current_num_threads());

    let r = Renderer::new();
    let t = Instant::now();
    let k = 20.min(n);
    for s in &specs[..k] {
        std::hint::black_box(r.render(s));
    }
    let single = t.elapsed().as_secs_f64() / k as f64;
    println!("render only, one thread: {:.1} ms/image", single * 1e3);

    let t = Instant::now();
    write_dataset(&out, &specs, &|d, n| {
        if d % 200 == 0 || d == n {
            eprintln!("{d}/{n}");
        }
    })?;
    let dt = t.elapsed().as_secs_f64();
    println!(
        "render + PNG write, {} images: {:.1} s, {:.1} images/s",
        n,
        dt,
        n as f64 / dt
    );
    Ok(())
}
