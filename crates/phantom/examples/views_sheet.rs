//! Contact sheet of the views that are not a kidney (the view gate's negatives), each under
//! two scanner profiles, with a kidney for comparison, as one PNG.
//! `cargo run --release -p phantom --example views_sheet -- [out.png] [seed]`
use image::{imageops, RgbImage};
use phantom::screen::text;
use phantom::{render_one, render_other, Anatomy, Class, Profile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let out = a
        .first()
        .map(String::as_str)
        .unwrap_or("docs/phantom-views-sheet.png");
    let seed: u64 = a.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let profiles = [
        Profile::by_name("peds-convex")?,
        Profile::by_name("general-convex")?,
    ];
    let views: Vec<Anatomy> = std::iter::once(Anatomy::Kidney)
        .chain(Anatomy::OTHER)
        .collect();
    let (tw, th) = (256u32, 216u32);
    let mut sheet = RgbImage::new(tw * views.len() as u32, th * 2 + 14);
    for (row, p) in profiles.iter().enumerate() {
        for (col, v) in views.iter().enumerate() {
            let s = seed + 10 * row as u64 + col as u64;
            let img = if v.is_kidney() {
                render_one(Class::Normal, 0.0, p, s, col as u64)
            } else {
                render_other(*v, p, s, col as u64)
            };
            let scale = (tw as f32 / img.width() as f32).min(th as f32 / img.height() as f32);
            let (w, h) = (
                (img.width() as f32 * scale) as u32,
                (img.height() as f32 * scale) as u32,
            );
            let small = imageops::resize(&img, w, h, imageops::FilterType::Triangle);
            let (x0, y0) = (
                col as u32 * tw + (tw - w) / 2,
                14 + row as u32 * th + (th - h) / 2,
            );
            imageops::overlay(&mut sheet, &small, x0 as i64, y0 as i64);
            text(
                &mut sheet,
                (col as u32 * tw + 4) as i32,
                (14 + row as u32 * th + 2) as i32,
                1,
                image::Rgb([255, 210, 60]),
                &format!("{} {}", v.label(), p.name),
            );
        }
    }
    text(
        &mut sheet,
        4,
        3,
        1,
        image::Rgb([255, 255, 255]),
        &format!("PHANTOM VIEWS: KIDNEY AND WHAT IS NOT  SEED {seed}"),
    );
    sheet.save(out)?;
    println!("{out}");
    Ok(())
}
