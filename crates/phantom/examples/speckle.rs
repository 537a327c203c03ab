//! Speckle statistics: a homogeneous synthetic region beside regions of real frames.
//! `cargo run --release -p phantom --example speckle -- [png x y w h [cm_per_px]]...`
//! With no arguments, measures the built-in real-frame regions of the project's test material
//! (fetched into the cache on first use: `renalscan fetch-fixtures`).
use phantom::formation::{homogeneous_snr, Homogeneous, Tissue};
use phantom::stats::{region_stats, RegionStats};
use phantom::{render_map, Profile};

fn show(name: &str, s: &RegionStats, cm_per_px: f64) {
    println!(
        "{name:<44} mean {:6.1} std {:5.1} SNR {:4.2} | local std {:5.1} SNR {:4.2} | grain lat {:4.1} px {:.2} mm, ax {:4.1} px {:.2} mm",
        s.mean,
        s.std,
        s.snr,
        s.std_local,
        s.mean / s.std_local,
        s.corr_x,
        s.corr_x * cm_per_px * 10.0,
        s.corr_y,
        s.corr_y * cm_per_px * 10.0
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    // (file, x, y, w, h, cm per pixel from the burned-in depth scale)
    let root = fixtures::for_tests(&std::env::current_dir()?)
        .join("ultrasound/frames/")
        .display()
        .to_string();
    let mut regions: Vec<(String, u32, u32, u32, u32, f64)> = vec![
        (
            format!("{root}itk-pocus__sonosite-anon-eye1.jpg"),
            600,
            520,
            100,
            90,
            4.5 / 600.0,
        ),
        (
            format!("{root}itk-pocus__butterfly-vsync_f300.png"),
            250,
            720,
            300,
            160,
            5.0 / 870.0,
        ),
        (
            format!("{root}itk-pocus__clarius-ocular-image.png"),
            400,
            560,
            120,
            110,
            4.0 / 790.0,
        ),
    ];
    if !a.is_empty() {
        regions.clear();
        for c in a.chunks(6) {
            regions.push((
                c[0].clone(),
                c[1].parse()?,
                c[2].parse()?,
                c[3].parse()?,
                c[4].parse()?,
                c.get(5).map(|s| s.parse()).transpose()?.unwrap_or(0.0),
            ));
        }
    }
    println!("real frames (display grey):");
    for (f, x, y, w, h, cpp) in &regions {
        match image::open(f) {
            Ok(img) => {
                let s = region_stats(&img.to_rgb8(), *x, *y, *w, *h);
                let name = std::path::Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string());
                show(&format!("{} @{x},{y}", name.unwrap_or_default()), &s, *cpp);
            }
            Err(e) => println!("{f}: {e}"),
        }
    }
    println!("synthetic, homogeneous liver-like medium (display grey, full pipeline):");
    for p in Profile::builtin() {
        let (snr, _) = homogeneous_snr(p, 1);
        let depth = p.depth_cm.0;
        let img = render_map(p, &Homogeneous(Tissue::new(0.0, 0.5)), depth, 1);
        // A box in the middle of the scan area, around the focus.
        let lut = phantom::formation::ScanLut::new(p, depth);
        let y = (lut.y_skin + depth * 0.35 * lut.ppc) as u32;
        let x = lut.x_centre as u32 - 50;
        let s = region_stats(&img, x, y, 100, (depth * 0.25 * lut.ppc) as u32);
        show(
            &format!("{} (envelope SNR before log {snr:.3})", p.name),
            &s,
            1.0 / lut.ppc as f64,
        );
    }
    Ok(())
}
