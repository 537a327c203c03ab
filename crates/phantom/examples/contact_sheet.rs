//! Contact sheet: every class under two scanner profiles, labelled, as one small PNG.
//! `cargo run --release -p phantom --example contact_sheet -- [out.png] [severity] [seed]`
use image::{imageops, GrayImage, Luma, RgbImage};
use phantom::screen::text;
use phantom::{render_one, Class, Profile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let out = a
        .first()
        .map(String::as_str)
        .unwrap_or("docs/phantom-contact-sheet.png");
    let sev: f32 = a.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0.6);
    let seed: u64 = a.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let profiles = [
        Profile::by_name("peds-convex")?,
        Profile::by_name("peds-linear")?,
    ];
    let (tw, th) = (256u32, 216u32);
    let mut sheet = RgbImage::new(tw * 6, th * 2 + 14);
    for (row, p) in profiles.iter().enumerate() {
        for (col, c) in Class::ALL.iter().enumerate() {
            let img = render_one(*c, sev, p, seed + 10 * row as u64 + col as u64, col as u64);
            // Keep the whole screen grab (furniture included), scaled to the tile.
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
            let label = format!("{} {}", c.label(), p.name);
            text(
                &mut sheet,
                (col as u32 * tw + 4) as i32,
                (14 + row as u32 * th + 2) as i32,
                1,
                image::Rgb([255, 210, 60]),
                &label,
            );
        }
    }
    text(
        &mut sheet,
        4,
        3,
        1,
        image::Rgb([255, 255, 255]),
        &format!("PHANTOM CONTACT SHEET  SEVERITY {sev:.1}  SEED {seed}"),
    );
    // Grey PNG keeps the sheet small; the tiles are grey apart from small coloured marks.
    let grey: GrayImage = GrayImage::from_fn(sheet.width(), sheet.height(), |x, y| {
        let p = sheet.get_pixel(x, y).0;
        Luma([((p[0] as u32 * 3 + p[1] as u32 * 6 + p[2] as u32) / 10) as u8])
    });
    grey.save(out)?;
    println!("wrote {out} ({} bytes)", std::fs::metadata(out)?.len());
    Ok(())
}
