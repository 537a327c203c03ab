//! Contact sheet: every class under two scanner profiles, labelled, as one small PNG.
//! `cargo run --release -p phantom --example contact_sheet -- [out.png] [severity] [seed]`
mod common;

use image::{GrayImage, Luma};
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
    let mut sheet = common::sheet(
        Class::ALL.len(),
        profiles.len(),
        &format!("PHANTOM CONTACT SHEET  SEVERITY {sev:.1}  SEED {seed}"),
    );
    for (row, p) in profiles.iter().enumerate() {
        for (col, c) in Class::ALL.iter().enumerate() {
            let img = render_one(*c, sev, p, seed + 10 * row as u64 + col as u64, col as u64);
            common::place(
                &mut sheet,
                col,
                row,
                &img,
                &format!("{} {}", c.label(), p.name),
            );
        }
    }
    // Grey PNG keeps the sheet small; the tiles are grey apart from small coloured marks.
    let grey: GrayImage = GrayImage::from_fn(sheet.width(), sheet.height(), |x, y| {
        let p = sheet.get_pixel(x, y).0;
        Luma([((p[0] as u32 * 3 + p[1] as u32 * 6 + p[2] as u32) / 10) as u8])
    });
    grey.save(out)?;
    println!("wrote {out} ({} bytes)", std::fs::metadata(out)?.len());
    Ok(())
}
