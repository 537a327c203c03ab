//! Render one image per class for a profile, for eyeballing.
//! `cargo run --release -p phantom --example gallery -- <out-dir> [profile] [severity] [seed]`
use phantom::{render_one, save_png, Class, Profile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(args.get(1).map(String::as_str).unwrap_or("gallery"));
    let profile = Profile::by_name(args.get(2).map(String::as_str).unwrap_or("peds-convex"))?;
    let sev: f32 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0.7);
    let seed: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1);
    std::fs::create_dir_all(&out)?;
    for (i, c) in Class::ALL.iter().enumerate() {
        let img = render_one(*c, sev, profile, seed, i as u64);
        save_png(
            &img,
            &out.join(format!("{}-{}.png", profile.name, c.label())),
        )?;
    }
    Ok(())
}
