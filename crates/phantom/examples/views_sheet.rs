//! Contact sheet of the views that are not a kidney (the view gate's negatives), each under
//! two scanner profiles, with a kidney for comparison, as one PNG.
//! `cargo run --release -p phantom --example views_sheet -- [out.png] [seed]`
mod common;

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
    let mut sheet = common::sheet(
        views.len(),
        profiles.len(),
        &format!("PHANTOM VIEWS: KIDNEY AND WHAT IS NOT  SEED {seed}"),
    );
    for (row, p) in profiles.iter().enumerate() {
        for (col, v) in views.iter().enumerate() {
            let s = seed + 10 * row as u64 + col as u64;
            let img = if v.is_kidney() {
                render_one(Class::Normal, 0.0, p, s, col as u64)
            } else {
                render_other(*v, p, s, col as u64)
            };
            common::place(
                &mut sheet,
                col,
                row,
                &img,
                &format!("{} {}", v.label(), p.name),
            );
        }
    }
    sheet.save(out)?;
    println!("{out}");
    Ok(())
}
