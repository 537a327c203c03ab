//! Writes small valid inputs of every supported kind (PNG/JPEG/BMP/TIFF, DICOM of each
//! photometric interpretation) into a directory: the fuzzing seed corpus.
//!
//! `cargo run --release -p usimage --example make_seeds -- fuzz/corpus/decode_detect`

use std::io::Cursor;

use usimage::synthetic::{dicom_bytes, screen, FanShape};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: make_seeds DIR")?;
    std::fs::create_dir_all(&dir)?;
    let (w, h) = (48u32, 36u32);
    let shape = FanShape::Sector {
        apex_x: 24.0,
        apex_y: -4.0,
        half_angle: 0.7,
        r0: 8.0,
        r1: 38.0,
    };
    let grey = screen(w, h, shape, 7, &mut Vec::new());
    let g = grey.grey().to_vec();
    let rgb: Vec<u8> = g.iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
    let img = image::GrayImage::from_raw(w, h, g.clone()).ok_or("size")?;
    let rgb_img = image::RgbImage::from_raw(w, h, rgb.clone()).ok_or("size")?;
    for (name, fmt) in [
        ("png", image::ImageFormat::Png),
        ("jpg", image::ImageFormat::Jpeg),
        ("bmp", image::ImageFormat::Bmp),
        ("tif", image::ImageFormat::Tiff),
    ] {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), fmt)?;
        std::fs::write(format!("{dir}/grey.{name}"), &v)?;
        let mut v = Vec::new();
        rgb_img.write_to(&mut Cursor::new(&mut v), fmt)?;
        std::fs::write(format!("{dir}/rgb.{name}"), &v)?;
    }
    let mut v = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .into_luma16()
        .write_to(&mut Cursor::new(&mut v), image::ImageFormat::Png)?;
    std::fs::write(format!("{dir}/grey16.png"), &v)?;
    let ybr422: Vec<u8> = g
        .chunks_exact(2)
        .flat_map(|p| [p[0], p[1], 128, 140])
        .collect();
    let three: Vec<u8> = (0..3).flat_map(|_| g.clone()).collect();
    for (name, pi, spp, frames, px) in [
        ("mono2", "MONOCHROME2", 1u16, 1u32, g.clone()),
        ("mono1", "MONOCHROME1", 1, 1, g.clone()),
        ("rgb", "RGB", 3, 1, rgb.clone()),
        ("ybr422", "YBR_FULL_422", 3, 1, ybr422),
        ("palette", "PALETTE COLOR", 1, 1, g.clone()),
        ("cine", "MONOCHROME2", 1, 3, three),
    ] {
        let bytes = dicom_bytes(
            w as u16,
            h as u16,
            pi,
            spp,
            frames,
            px,
            Some([2, 2, 46, 34]),
        );
        std::fs::write(format!("{dir}/{name}.dcm"), bytes)?;
    }
    Ok(())
}
