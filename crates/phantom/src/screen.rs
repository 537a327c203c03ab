//! Burned-in screen furniture: the text, depth scale, focus marker, grey bar, logo and
//! orientation dot real machines draw around the scan area. Screen grabs used for training
//! carry these, so usimage's scan-area detection and overlay masking must see them too.

use image::{Rgb, RgbImage};

use crate::formation::ScanLut;
use crate::profile::{Layout, Profile};

/// What the overlay shows for one frame.
#[derive(Clone, Debug)]
pub struct Overlay {
    pub patient_id: u32,
    pub age_y: f32,
    pub depth_cm: f32,
    pub focus_cm: f32,
    pub gain: i32,
    pub dynamic_range: i32,
    /// Seconds since the epoch of the study, for the date/time text.
    pub timestamp: u64,
    pub frozen: bool,
    pub frame: u32,
    /// Left kidney (annotation text).
    pub left: bool,
}

const WHITE: Rgb<u8> = Rgb([235, 235, 235]);
const GREY: Rgb<u8> = Rgb([150, 150, 150]);
const YELLOW: Rgb<u8> = Rgb([250, 215, 40]);
const GREEN: Rgb<u8> = Rgb([40, 200, 90]);

/// 5x7 glyph rows (bit 4 = leftmost column) for the characters the overlay needs.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        _ => [0; 7],
    }
}

fn put(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn rect(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb<u8>) {
    for y in y0..y1 {
        for x in x0..x1 {
            put(img, x, y, c);
        }
    }
}

/// Draw `text` with the built-in 5x7 font, `scale` pixels per font pixel.
pub fn text(img: &mut RgbImage, x: i32, y: i32, scale: i32, c: Rgb<u8>, s: &str) {
    let mut cx = x;
    for ch in s.chars() {
        let g = glyph(ch);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    rect(
                        img,
                        cx + col * scale,
                        y + row as i32 * scale,
                        cx + (col + 1) * scale,
                        y + (row as i32 + 1) * scale,
                        c,
                    );
                }
            }
        }
        cx += 6 * scale;
    }
}

/// Width in pixels of `s` at `scale`.
pub fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 6 * scale
}

fn grey_bar(img: &mut RgbImage, x: i32, y: i32, w: i32, h: i32) {
    for i in 0..h {
        let v = (255 - i * 255 / h.max(1)) as u8;
        rect(img, x, y + i, x + w, y + i + 1, Rgb([v, v, v]));
    }
    for i in 0..=h {
        if i % (h / 4).max(1) == 0 {
            rect(img, x + w + 1, y + i, x + w + 4, y + i + 1, GREY);
        }
    }
}

fn depth_scale(
    img: &mut RgbImage,
    lut: &ScanLut,
    x: i32,
    depth: f32,
    focus: f32,
    left: bool,
    scale: i32,
) {
    let y_of = |d: f32| (lut.y_skin + d * lut.ppc).round() as i32;
    let steps = (depth * 2.0).round() as i32;
    rect(img, x, y_of(0.0), x + 1, y_of(depth) + 1, GREY);
    for i in 0..=steps {
        let d = i as f32 * 0.5;
        let y = y_of(d);
        let major = i % 2 == 0;
        let len = if major { 6 } else { 3 };
        if left {
            rect(img, x - len, y, x, y + 1, GREY);
        } else {
            rect(img, x + 1, y, x + 1 + len, y + 1, GREY);
        }
        if major && i > 0 {
            let s = format!("{}", i / 2);
            let tx = if left {
                x - 8 - text_width(&s, scale)
            } else {
                x + 9
            };
            text(img, tx, y - 3 * scale, scale, WHITE, &s);
        }
    }
    // Focus marker: a small triangle pointing at the image.
    let fy = y_of(focus);
    for k in 0..5 {
        if left {
            rect(img, x + 2 + k, fy - 4 + k, x + 3 + k, fy + 5 - k, YELLOW);
        } else {
            rect(img, x - 2 - k, fy - 4 + k, x - 1 - k, fy + 5 - k, YELLOW);
        }
    }
}

fn logo(img: &mut RgbImage, x: i32, y: i32, kind: Layout) {
    match kind {
        Layout::A => {
            rect(img, x, y, x + 16, y + 16, Rgb([20, 120, 200]));
            text(img, x + 5, y + 4, 1, WHITE, "S");
        }
        Layout::B => {
            for dy in -8i32..=8 {
                for dx in -8i32..=8 {
                    if dx * dx + dy * dy <= 64 {
                        put(img, x + 8 + dx, y + 8 + dy, Rgb([240, 130, 20]));
                    }
                }
            }
            text(img, x + 5, y + 5, 1, Rgb([20, 20, 20]), "K");
        }
        Layout::C => {
            rect(img, x, y, x + 28, y + 12, Rgb([150, 40, 160]));
            text(img, x + 2, y + 3, 1, WHITE, "ETK");
        }
    }
}

fn date_time(ts: u64) -> (String, String) {
    // Days since 2020-01-01 with 28-day months: plausible text, not a calendar.
    let day = ts / 86_400;
    let (y, m, d) = (2020 + day / 336, 1 + (day / 28) % 12, 1 + day % 28);
    let s = ts % 86_400;
    (
        format!("{y:04}/{m:02}/{d:02}"),
        format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60),
    )
}

fn age_text(age: f32) -> String {
    if age < 1.0 {
        format!("AGE {}M", (age * 12.0).floor().max(0.0) as u32)
    } else {
        format!("AGE {}Y", age.floor() as u32)
    }
}

/// Draw all furniture for `profile`'s layout around the converted scan area.
pub fn draw(img: &mut RgbImage, profile: &Profile, lut: &ScanLut, ov: &Overlay) {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let (bx0, by0, bx1) = (lut.bbox.0 as i32, lut.bbox.1 as i32, lut.bbox.2 as i32);
    let (tlx, tly) = (lut.top_left.0 as i32, lut.top_left.1 as i32);
    let (date, time) = date_time(ov.timestamp);
    let id = format!("ID PH{:06}", ov.patient_id);
    let probe = format!("{} {}", profile.probe, "RENAL PEDS");
    let params = [
        format!("{:.1}MHZ", profile.freq_mhz),
        format!("G {}", ov.gain),
        format!("DR {}", ov.dynamic_range),
        format!("D {:.1}CM", ov.depth_cm),
        "MI 0.8".to_string(),
        "TIS 0.3".to_string(),
    ];
    let status = if ov.frozen {
        "FREEZE".to_string()
    } else {
        format!("FR {}", 1 + ov.frame % 999)
    };
    match profile.layout {
        Layout::A => {
            text(img, 6, 6, 1, WHITE, profile.vendor);
            text(img, 6, 17, 1, WHITE, &probe);
            text(img, 150, 6, 1, WHITE, &id);
            text(img, 150, 17, 1, WHITE, &age_text(ov.age_y));
            text(img, w - 6 - text_width(&date, 1), 6, 1, WHITE, &date);
            text(img, w - 6 - text_width(&time, 1), 17, 1, WHITE, &time);
            for (i, p) in params.iter().enumerate() {
                text(img, 6, 60 + 12 * i as i32, 1, WHITE, p);
            }
            let sx = (bx1 + 6).min(w - 40);
            depth_scale(img, lut, sx, ov.depth_cm, ov.focus_cm, false, 1);
            grey_bar(img, w - 14, 60, 8, 120);
            logo(img, w - 26, 30, Layout::A);
            put_dot(img, tlx - 8, tly + 4, GREEN);
            let ann = if ov.left {
                "L KIDNEY LONG"
            } else {
                "R KIDNEY LONG"
            };
            text(img, 6, h - 12, 1, WHITE, ann);
            text(
                img,
                w - 6 - text_width(&status, 1),
                h - 12,
                1,
                WHITE,
                &status,
            );
        }
        Layout::B => {
            text(img, 6, 6, 1, WHITE, &id);
            text(img, 6, 17, 1, WHITE, &age_text(ov.age_y));
            text(img, w - 6 - text_width(&date, 1), 6, 1, WHITE, &date);
            text(img, w - 6 - text_width(&time, 1), 17, 1, WHITE, &time);
            grey_bar(img, 14, 60, 10, 140);
            depth_scale(img, lut, bx0 - 8, ov.depth_cm, ov.focus_cm, true, 1);
            for (i, p) in params.iter().enumerate() {
                text(img, w - 74, 80 + 12 * i as i32, 1, WHITE, p);
            }
            text(img, 6, h - 24, 2, WHITE, profile.vendor);
            text(img, 130, h - 18, 1, WHITE, &probe);
            logo(img, w - 30, h - 30, Layout::B);
            put_dot(img, bx1 - 6, by0 - 6, GREEN);
            text(
                img,
                w - 80 - text_width(&status, 1),
                h - 18,
                1,
                WHITE,
                &status,
            );
            text(
                img,
                6,
                220,
                1,
                WHITE,
                if ov.left { "L KID" } else { "R KID" },
            );
        }
        Layout::C => {
            rect(img, 0, 0, w, 40, Rgb([38, 40, 48]));
            logo(img, 6, 6, Layout::C);
            text(img, 40, 8, 1, WHITE, profile.vendor);
            text(img, 40, 22, 1, WHITE, &probe);
            text(img, 200, 8, 1, WHITE, &id);
            text(img, 200, 22, 1, WHITE, &age_text(ov.age_y));
            text(img, w - 6 - text_width(&date, 1), 8, 1, WHITE, &date);
            text(img, w - 6 - text_width(&time, 1), 22, 1, WHITE, &time);
            grey_bar(img, 10, 80, 10, 160);
            for (i, p) in params.iter().enumerate() {
                text(img, 6, 270 + 12 * i as i32, 1, WHITE, p);
            }
            let sx = (bx1 + 6).min(w - 40);
            depth_scale(img, lut, sx, ov.depth_cm, ov.focus_cm, false, 1);
            put_dot(img, tlx - 8, tly + 4, GREEN);
            text(
                img,
                w - 6 - text_width(&status, 1),
                h - 12,
                1,
                WHITE,
                &status,
            );
            let ann = if ov.left {
                "ABD LT KIDNEY"
            } else {
                "ABD RT KIDNEY"
            };
            text(img, 6, h - 12, 1, WHITE, ann);
        }
    }
}

fn put_dot(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
    for dy in -3i32..=3 {
        for dx in -3i32..=3 {
            if dx * dx + dy * dy <= 9 {
                put(img, x + dx, y + dy, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_draws_inside_bounds_only() {
        let mut img = RgbImage::new(20, 10);
        text(&mut img, 15, 5, 1, WHITE, "ID 09");
        text(&mut img, -3, -3, 2, WHITE, "X");
        let lit = img.pixels().filter(|p| p.0[0] > 0).count();
        assert!(lit > 0);
        assert_eq!(text_width("AB", 2), 24);
    }
}
