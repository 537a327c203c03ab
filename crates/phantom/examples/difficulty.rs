//! Print the histogram-logistic AUC (normal vs abnormal) for a generated set.
//! `cargo run --release -p phantom --example difficulty -- [n] [seed] [profile|mixed] [paper|balanced]`
use phantom::stats::histogram_auc;
use phantom::{plan, Mix, PlanConfig, ProfileChoice};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let n: usize = a.get(1).map(|s| s.parse()).transpose()?.unwrap_or(400);
    let seed: u64 = a.get(2).map(|s| s.parse()).transpose()?.unwrap_or(7);
    let profile = ProfileChoice::parse(a.get(3).map(String::as_str).unwrap_or("peds-convex"))?;
    let mix: Mix = a.get(4).map(String::as_str).unwrap_or("paper").parse()?;
    let specs = plan(&PlanConfig {
        n,
        seed,
        mix,
        profile,
        other_views: 0,
        elevation_max: phantom::DEFAULT_ELEVATION_MAX,
    });
    let (auc, per) = histogram_auc(&specs, 32);
    println!("n={n} seed={seed}: histogram-logistic AUC {auc:.3}");
    for (c, v) in per {
        println!("  {c:<18} vs normal: {v:.3}");
    }
    Ok(())
}
