//! Writes small valid inputs of every supported kind (PNG/JPEG/BMP/TIFF, DICOM of each
//! photometric interpretation, segmented and 16-bit palettes, JPEG 2000 lossless and lossy)
//! into a directory: the fuzzing seed corpus. The JPEG 2000 seeds need `opj_compress`
//! (scripts/setup.sh installs it).
//!
//! `cargo run --release -p usimage --example make_seeds -- fuzz/corpus/decode_detect`

use std::io::Cursor;

use dicom_dictionary_std::{tags, uids};
use usimage::synthetic::{
    dicom_bytes, dicom_bytes_ts, netpbm, opj_compress, palette_dicom, screen, FanShape,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: make_seeds DIR")?;
    std::fs::create_dir_all(&dir)?;
    let mut seeds = Seeds {
        dir: dir.clone(),
        written: Vec::new(),
    };
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
        seeds.put(format!("grey.{name}"), &v)?;
        let mut v = Vec::new();
        rgb_img.write_to(&mut Cursor::new(&mut v), fmt)?;
        seeds.put(format!("rgb.{name}"), &v)?;
    }
    let mut v = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .into_luma16()
        .write_to(&mut Cursor::new(&mut v), image::ImageFormat::Png)?;
    seeds.put("grey16.png".into(), &v)?;
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
        seeds.put(format!("{name}.dcm"), &bytes)?;
    }
    // Segmented palette: linear, discrete and indirect segments.
    let seg = [
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let d = [256, 0, 16];
    let bytes = palette_dicom(
        w as u16,
        h as u16,
        8,
        g.clone(),
        [
            (d, seg[0], vec![0, 1, 0, 1, 127, 65_535, 2, 2, 0, 0]),
            (d, seg[1], vec![0, 2, 0, 9000, 1, 254, 30_000]),
            (d, seg[2], vec![0, 1, 65_535, 1, 255, 0]),
        ],
    );
    seeds.put("palette-segmented.dcm".into(), &bytes)?;
    // 16-bit indices into a 4096-entry table starting at 100.
    let idx: Vec<u8> = g
        .iter()
        .flat_map(|&v| (100 + u16::from(v) * 16).to_le_bytes())
        .collect();
    let ramp: Vec<u16> = (0..4096u32).map(|k| (k * 16) as u16).collect();
    let d = [4096, 100, 16];
    let bytes = palette_dicom(
        w as u16,
        h as u16,
        16,
        idx,
        [
            (d, tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA, ramp.clone()),
            (d, tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA, ramp),
            (d, tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA, vec![0; 4096]),
        ],
    );
    seeds.put("palette16.dcm".into(), &bytes)?;
    // JPEG 2000: lossless grey, lossy grey, lossless colour.
    let (w16, h16) = (w as u16, h as u16);
    for (name, pi, spp, px, ext, args, ts) in [
        (
            "j2k-lossless",
            "MONOCHROME2",
            1u16,
            &g,
            "pgm",
            &[][..],
            uids::JPEG2000_LOSSLESS,
        ),
        (
            "j2k-lossy",
            "MONOCHROME2",
            1,
            &g,
            "pgm",
            &["-I", "-r", "8"][..],
            uids::JPEG2000,
        ),
        (
            "j2k-colour",
            "YBR_RCT",
            3,
            &rgb,
            "ppm",
            &[][..],
            uids::JPEG2000_LOSSLESS,
        ),
    ] {
        let code = opj_compress(&netpbm(w16, h16, spp as u8, px), ext, args)?;
        let bytes = dicom_bytes_ts(w16, h16, pi, spp, 1, code, Some([2, 2, 46, 34]), ts);
        seeds.put(format!("{name}.dcm"), &bytes)?;
    }
    // Every seed must decode: a seed the decoder refuses only exercises its error paths.
    // (Only those written here: the directory also holds what the fuzzer kept.)
    for p in &seeds.written {
        let bytes = std::fs::read(p)?;
        usimage::UsFile::from_bytes(&bytes)
            .and_then(|f| f.frame(0))
            .map_err(|e| format!("seed {p} does not decode: {e}"))?;
    }
    println!("{} seeds in {dir}, each decodes", seeds.written.len());
    Ok(())
}

/// The seeds written, so that only they are checked.
struct Seeds {
    dir: String,
    written: Vec<String>,
}

impl Seeds {
    fn put(&mut self, name: String, bytes: &[u8]) -> std::io::Result<()> {
        let p = format!("{}/{name}", self.dir);
        std::fs::write(&p, bytes)?;
        self.written.push(p);
        Ok(())
    }
}
