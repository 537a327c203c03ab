//! How to spend the cores on one model, measured side by side in one run: one thread,
//! tract's intra-op threads, several single-threaded workers on successive inputs, and the
//! per-op profile behind the difference.
//!
//! cargo run --release -p model --example infer_threads -- MODEL [--threads N] [--runs R]
//!
//! Every design runs the same `R` inferences; the designs are interleaved in rounds so a
//! noisy neighbour hurts them alike. Latency is one inference's wall time; throughput is
//! inferences over the wall time of the whole batch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::int8::LoadOptions;
use model::Network;

const SHAPE: [usize; 4] = [1, 3, 224, 224];

struct Opts {
    model: PathBuf,
    threads: usize,
    runs: usize,
    profile_runs: usize,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        model: PathBuf::new(),
        threads: 2,
        runs: 24,
        profile_runs: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--threads" => o.threads = num(val()?)?.max(2),
            "--runs" => o.runs = num(val()?)?.max(2),
            "--profile-runs" => o.profile_runs = num(val()?)?,
            _ if o.model.as_os_str().is_empty() && !a.starts_with("--") => o.model = a.into(),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.model.as_os_str().is_empty() {
        return Err(
            "usage: infer_threads MODEL [--threads N] [--runs R] [--profile-runs P]".into(),
        );
    }
    Ok(o)
}

/// Wall time of the batch and each inference's latency.
struct Batch {
    wall: Duration,
    latency: Vec<Duration>,
}

impl Batch {
    fn rate(&self) -> f64 {
        self.latency.len() as f64 / self.wall.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.latency.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

fn sequential(net: &Network, input: &[f32], runs: usize) -> Result<Batch, String> {
    let t0 = Instant::now();
    let mut latency = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        net.run(input).map_err(|e| e.to_string())?;
        latency.push(t.elapsed());
    }
    Ok(Batch {
        wall: t0.elapsed(),
        latency,
    })
}

/// `workers` threads each running every `workers`-th inference on one shared network.
fn workers(
    net: &Arc<Network>,
    input: &Arc<Vec<f32>>,
    runs: usize,
    n: usize,
) -> Result<Batch, String> {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|w| {
            let (net, input) = (Arc::clone(net), Arc::clone(input));
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut lat = Vec::new();
                for _ in (w..runs).step_by(n) {
                    let t = Instant::now();
                    net.run(&input).map_err(|e| e.to_string())?;
                    lat.push(t.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut latency = Vec::with_capacity(runs);
    for h in handles {
        latency.extend(h.join().map_err(|_| "worker panicked".to_string())??);
    }
    Ok(Batch {
        wall: t0.elapsed(),
        latency,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = opts()?;
    let load = |threads| {
        let t = Instant::now();
        let opts = LoadOptions {
            threads,
            ..LoadOptions::default()
        };
        let n = Network::load_with(&o.model, &SHAPE, &opts).map_err(|e| e.to_string())?;
        Ok::<_, String>((n, t.elapsed()))
    };
    let (single, t1) = load(1)?;
    let (multi, tn) = load(o.threads)?;
    println!(
        "{}: loaded in {:.0} ms (1 thread) and {:.0} ms ({} threads); {} cores online",
        o.model.display(),
        t1.as_secs_f64() * 1e3,
        tn.as_secs_f64() * 1e3,
        o.threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rng = 0x2545_F491u32;
    let input: Vec<f32> = (0..SHAPE.iter().product::<usize>())
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            (rng % 2000) as f32 / 10.0 - 100.0
        })
        .collect();
    let single = Arc::new(single);
    let multi = Arc::new(multi);
    let shared = Arc::new(input.clone());
    for n in [&*single, &multi] {
        n.run(&input).map_err(|e| e.to_string())?;
    }
    let rounds = 3;
    let per = o.runs / rounds;
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    let mut d = Vec::new();
    for _ in 0..rounds {
        a.push(sequential(&single, &input, per)?);
        b.push(sequential(&multi, &input, per)?);
        c.push(workers(&single, &shared, per, o.threads)?);
        d.push(workers(&multi, &shared, per, o.threads)?);
    }
    let merge = |v: Vec<Batch>| Batch {
        wall: v.iter().map(|b| b.wall).sum(),
        latency: v.into_iter().flat_map(|b| b.latency).collect(),
    };
    let (a, b, c, d) = (merge(a), merge(b), merge(c), merge(d));
    println!("design                          inf/s   x1-thread  latency p50   p95 (ms)");
    for (name, r) in [
        ("1 thread".to_string(), &a),
        (format!("intra-op, {} threads", o.threads), &b),
        (format!("{} single-thread workers", o.threads), &c),
        (format!("{} workers, one shared pool", o.threads), &d),
    ] {
        println!(
            "{name:<30} {:6.2}   {:6.2}x   {:8.1} {:8.1}",
            r.rate(),
            r.rate() / a.rate(),
            r.pct(0.5),
            r.pct(0.95)
        );
    }
    if o.profile_runs > 0 {
        let p1 = single
            .profile(&input, o.profile_runs)
            .map_err(|e| e.to_string())?;
        let pn = multi
            .profile(&input, o.profile_runs)
            .map_err(|e| e.to_string())?;
        let total1: Duration = p1.iter().map(|p| p.time).sum();
        let totaln: Duration = pn.iter().map(|p| p.time).sum();
        println!(
            "\nper-op profile (mean per inference over {} runs): 1 thread {:.1} ms, {} threads {:.1} ms",
            o.profile_runs,
            total1.as_secs_f64() * 1e3,
            o.threads,
            totaln.as_secs_f64() * 1e3
        );
        println!(
            "op                      nodes   1 thread ms  share   {} threads ms  speed-up",
            o.threads
        );
        for op in p1.iter().take(12) {
            let m = pn
                .iter()
                .find(|p| p.op == op.op)
                .map_or(Duration::ZERO, |p| p.time);
            println!(
                "{:<22} {:5}   {:10.2}  {:5.1}%   {:10.2}   {:6.2}x",
                op.op,
                op.nodes,
                op.time.as_secs_f64() * 1e3,
                100.0 * op.time.as_secs_f64() / total1.as_secs_f64(),
                m.as_secs_f64() * 1e3,
                op.time.as_secs_f64() / m.as_secs_f64().max(1e-9)
            );
        }
    }
    Ok(())
}
