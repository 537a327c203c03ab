//! What the contact-sheet examples share: a grid of labelled screen grabs.

use image::{imageops, RgbImage};
use phantom::screen::text;

/// Tile size and the title band above the grid.
pub const TILE: (u32, u32) = (256, 216);
const BAND: u32 = 14;

/// A blank sheet of `cols` x `rows` tiles under a title band.
pub fn sheet(cols: usize, rows: usize, title: &str) -> RgbImage {
    let mut s = RgbImage::new(TILE.0 * cols as u32, TILE.1 * rows as u32 + BAND);
    text(&mut s, 4, 3, 1, image::Rgb([255, 255, 255]), title);
    s
}

/// Places `img` (the whole screen grab, furniture included) scaled into tile (`col`, `row`)
/// with `label` in its corner.
pub fn place(sheet: &mut RgbImage, col: usize, row: usize, img: &RgbImage, label: &str) {
    let (tw, th) = TILE;
    let scale = (tw as f32 / img.width() as f32).min(th as f32 / img.height() as f32);
    let (w, h) = (
        (img.width() as f32 * scale) as u32,
        (img.height() as f32 * scale) as u32,
    );
    let small = imageops::resize(img, w, h, imageops::FilterType::Triangle);
    let (cx, cy) = (col as u32 * tw, BAND + row as u32 * th);
    imageops::overlay(
        sheet,
        &small,
        i64::from(cx + (tw - w) / 2),
        i64::from(cy + (th - h) / 2),
    );
    text(
        sheet,
        (cx + 4) as i32,
        (cy + 2) as i32,
        1,
        image::Rgb([255, 210, 60]),
        label,
    );
}
