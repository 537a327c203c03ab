//! Debug aid: for each file given, writes the frame with its detected scan area (outside the
//! mask dimmed blue; `bbox` outlined yellow, `image_area` green, DICOM regions red) and the
//! model input as PNGs into the last argument's directory, and prints the detection.
//!
//! `cargo run --release -p usimage --example dump -- FILE... OUTDIR`

use std::path::Path;

use usimage::detect::iou;
use usimage::{Normalization, Preprocessor, UsFile};

/// Draws a 2-pixel outline of box `b` (exclusive ends) in `colour`.
fn outline(img: &mut image::RgbImage, b: [u32; 4], colour: [u8; 3]) {
    let (w, h) = (img.width(), img.height());
    if b[2] <= b[0] || b[3] <= b[1] {
        return;
    }
    for y in b[1]..b[3].min(h) {
        for x in b[0]..b[2].min(w) {
            let edge = x < b[0] + 2 || x + 2 >= b[2] || y < b[1] + 2 || y + 2 >= b[3];
            if edge {
                img.put_pixel(x, y, image::Rgb(colour));
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.pop().ok_or("usage: dump FILE... OUTDIR")?;
    std::fs::create_dir_all(&out)?;
    let mut pre = Preprocessor::new(224, Normalization::caffe_bgr());
    let mut tensor = vec![0f32; pre.output_len()];
    for a in &args {
        let file = UsFile::open(Path::new(a))?;
        let stem = Path::new(a)
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let frame = file.frame(0)?;
        let info = pre.process(&frame, &mut tensor)?;
        println!(
            "{stem}: {}x{} regions {:?}",
            frame.width(),
            frame.height(),
            file.regions().iter().map(|r| r.bbox).collect::<Vec<_>>()
        );
        println!("  {:?}", info.area);
        for r in file.regions() {
            println!(
                "  region {:?}: IoU image_area {:.3}, bbox {:.3}",
                r.bbox,
                iou(info.area.image_area, r.bbox),
                iou(info.area.bbox, r.bbox)
            );
        }
        // Overlay: outside mask dimmed, textured blocks not shown.
        let det = pre.detector();
        let mut img = image::RgbImage::new(frame.width(), frame.height());
        for (x, y, p) in img.enumerate_pixels_mut() {
            let g = frame.grey()[(y * frame.width() + x) as usize];
            let inside = det.inside(x, y);
            *p = if inside {
                image::Rgb([g, g, g])
            } else {
                image::Rgb([g / 3, g / 3, (g / 3).saturating_add(60)])
            };
        }
        for r in file.regions() {
            outline(&mut img, r.bbox, [255, 40, 40]);
        }
        outline(&mut img, info.area.image_area, [40, 255, 40]);
        outline(&mut img, info.area.bbox, [255, 255, 0]);
        img.save(format!("{out}/{stem}_mask.png"))?;
        let n = pre.size();
        image::GrayImage::from_raw(n, n, pre.last_grey().to_vec())
            .ok_or("size")?
            .save(format!("{out}/{stem}_input.png"))?;
    }
    Ok(())
}
