//! Synthetic frames and DICOM objects with known geometry: ground truth for detector tests,
//! fuzzing seeds and the benchmark. Deterministic (seeded), no real patient data.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::frame::GreyFrame;

/// Shape of a synthetic image area.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FanShape {
    /// Sector: apex `(x, y)` (may lie above the frame), half-angle in radians, and the near
    /// and far radii in pixels.
    Sector {
        /// Apex x.
        apex_x: f32,
        /// Apex y.
        apex_y: f32,
        /// Half opening angle (radians).
        half_angle: f32,
        /// Near radius (top arc).
        r0: f32,
        /// Far radius (bottom arc).
        r1: f32,
    },
    /// Rectangle `[x0, y0, x1, y1]`.
    Linear([u32; 4]),
}

impl FanShape {
    /// Whether pixel centre `(x, y)` lies inside.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        match *self {
            FanShape::Sector {
                apex_x,
                apex_y,
                half_angle,
                r0,
                r1,
            } => {
                let (dx, dy) = (x - apex_x, y - apex_y);
                let r = (dx * dx + dy * dy).sqrt();
                dy > 0.0 && r >= r0 && r <= r1 && dx.abs() <= dy * half_angle.tan()
            }
            FanShape::Linear(b) => {
                x >= b[0] as f32 && x < b[2] as f32 && y >= b[1] as f32 && y < b[3] as f32
            }
        }
    }

    /// Exact bounding box `[x0, y0, x1, y1]` (exclusive ends) on a `w` x `h` frame.
    pub fn bbox(&self, w: u32, h: u32) -> [u32; 4] {
        let mut b = [u32::MAX, u32::MAX, 0, 0];
        for y in 0..h {
            for x in 0..w {
                if self.contains(x as f32 + 0.5, y as f32 + 0.5) {
                    b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
                }
            }
        }
        b
    }
}

/// Uniform integers below `n` from the workspace's one seeded generator: synthetic data must
/// be identical on every run and machine.
struct Rng(seeded::Rng);

impl Rng {
    fn new(seed: u32) -> Self {
        Self(seeded::Rng::new(u64::from(seed)))
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u32) -> u32 {
        self.0.int(0, n.max(1) - 1)
    }
}

/// Renders a screen grab: black background, speckled tissue inside `shape` (with an anechoic
/// "cyst" and a dark band), and user interface outside: lines of glyph-like text, a grey
/// scale bar and depth ticks. Returns the frame; the text rows are listed in `text_boxes`.
pub fn screen(
    w: u32,
    h: u32,
    shape: FanShape,
    seed: u32,
    text_boxes: &mut Vec<[u32; 4]>,
) -> GreyFrame {
    let mut rng = Rng::new(seed);
    let mut px = vec![0u8; (w * h) as usize];
    let b = shape.bbox(w, h);
    let (cx, cy) = ((b[0] + b[2]) as f32 / 2.0, (b[1] + b[3]) as f32 * 0.55);
    let cr = ((b[2] - b[0]).min(b[3] - b[1]) as f32) * 0.12;
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            if !shape.contains(fx, fy) {
                continue;
            }
            let depth = (fy - b[1] as f32) / (b[3] - b[1]).max(1) as f32;
            let base = 90.0 * (1.0 - 0.6 * depth);
            let speckle = rng.below(70) as f32;
            let mut v = base * 0.6 + speckle * (1.0 - 0.5 * depth);
            let d2 = (fx - cx).powi(2) + (fy - cy).powi(2);
            if d2 < cr * cr {
                v *= 0.05; // anechoic cyst
            }
            px[(y * w + x) as usize] = v.clamp(1.0, 255.0) as u8;
        }
    }
    // Text lines: glyphs of 2-px strokes in 10x14 cells, left and right of the image area.
    text_boxes.clear();
    let glyph_h = (h / 50).max(10);
    let glyph_w = glyph_h * 3 / 4;
    for (tx, lines) in [(w / 60, 5u32), (b[2] + w / 40, 3u32)] {
        for line in 0..lines {
            let ty = h / 20 + line * glyph_h * 2;
            let chars = 6 + rng.below(6);
            let x_end = (tx + chars * (glyph_w + 3)).min(w);
            if x_end <= tx || ty + glyph_h >= h {
                continue;
            }
            for c in 0..chars {
                let gx = tx + c * (glyph_w + 3);
                for s in 0..3 {
                    // Random strokes: horizontal or vertical bars inside the cell.
                    let horizontal = rng.below(2) == 0;
                    let off = rng.below(glyph_h.min(glyph_w) - 2);
                    for k in 0..(if horizontal { glyph_w } else { glyph_h }) {
                        for t in 0..2 {
                            let (x, y) = if horizontal {
                                (gx + k, ty + off * (s + 1) % (glyph_h - 2) + t)
                            } else {
                                (gx + off + t, ty + k)
                            };
                            if x < w && y < h && !shape.contains(x as f32 + 0.5, y as f32 + 0.5) {
                                px[(y * w + x) as usize] = 235;
                            }
                        }
                    }
                }
            }
            text_boxes.push([tx, ty, x_end, ty + glyph_h]);
        }
    }
    // Grey scale bar near the right edge and depth ticks near the left edge.
    let bar_x = w - w / 30;
    for y in h / 10..h * 9 / 10 {
        let g = (255 * (h * 9 / 10 - y) / (h * 8 / 10)) as u8;
        for x in bar_x..(bar_x + 6).min(w) {
            px[(y * w + x) as usize] = g;
        }
        if y % (h / 20).max(1) == 0 {
            for x in w / 100..w / 100 + 8 {
                px[(y * w + x) as usize] = 200;
            }
        }
    }
    GreyFrame::from_grey(w, h, px).unwrap_or_default()
}

/// Paints a flat user-interface panel (a header band, a side panel) of grey `grey` over
/// `rect` of `frame`, with one line of glyph strokes of grey `text` near its top-left: the
/// screen around a scanner's image region, for image-region tests.
pub fn paint_panel(frame: &mut GreyFrame, rect: [u32; 4], grey: u8, text: u8, seed: u32) {
    let mut rng = Rng::new(seed);
    let w = frame.width();
    let (x1, y1) = (rect[2].min(w), rect[3].min(frame.height()));
    let px = frame.grey_mut();
    for y in rect[1]..y1 {
        px[(y * w + rect[0]) as usize..(y * w + x1) as usize].fill(grey);
    }
    // Glyphs: 3 strokes of 2 px in 9 x 12 cells, a 6 px margin, at most 8 characters.
    let (gw, gh) = (9u32, 12u32);
    let (tx, ty) = (rect[0] + 6, rect[1] + 6);
    for c in 0..8 {
        let gx = tx + c * (gw + 3);
        if gx + gw + 6 > x1 || ty + gh + 6 > y1 {
            break;
        }
        for _ in 0..3 {
            let off = rng.below(gw.min(gh) - 2);
            let horizontal = rng.below(2) == 0;
            for k in 0..(if horizontal { gw } else { gh }) {
                for t in 0..2 {
                    let (x, y) = if horizontal {
                        (gx + k, ty + off + t)
                    } else {
                        (gx + off + t, ty + k)
                    };
                    px[(y * w + x) as usize] = text;
                }
            }
        }
    }
}

/// Encodes a small uncompressed DICOM image (explicit VR little endian) with the given
/// photometric interpretation, samples per pixel, frames and optional ultrasound region.
/// Pixel data is taken as is (`rows * cols * spp * frames` bytes for 8-bit data); empty
/// `pixels` leaves the Pixel Data element out.
pub fn dicom_bytes(
    cols: u16,
    rows: u16,
    photometric: &str,
    spp: u16,
    frames: u32,
    pixels: Vec<u8>,
    region: Option<[u32; 4]>,
) -> Vec<u8> {
    dicom_bytes_ts(
        cols,
        rows,
        photometric,
        spp,
        frames,
        pixels,
        region,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
}

/// Like [`dicom_bytes`] with another transfer syntax: for an encapsulated one the pixel
/// bytes are stored as a single fragment, as they are (to exercise codec errors).
#[allow(clippy::too_many_arguments)]
pub fn dicom_bytes_ts(
    cols: u16,
    rows: u16,
    photometric: &str,
    spp: u16,
    frames: u32,
    pixels: Vec<u8>,
    region: Option<[u32; 4]>,
    ts: &str,
) -> Vec<u8> {
    let obj = dicom_object(cols, rows, photometric, spp, frames, pixels, region, ts);
    part10(obj, ts)
}

/// The data set [`dicom_bytes_ts`] writes, for tests that change it before writing (other
/// palettes, bit depths, fragments) with [`part10`].
#[allow(clippy::too_many_arguments)]
pub fn dicom_object(
    cols: u16,
    rows: u16,
    photometric: &str,
    spp: u16,
    frames: u32,
    pixels: Vec<u8>,
    region: Option<[u32; 4]>,
    ts: &str,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
    ));
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        "1.2.3.4.5",
    ));
    obj.put(DataElement::new(
        tags::PATIENT_NAME,
        VR::PN,
        "Test^Synthetic",
    ));
    obj.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(rows),
    ));
    obj.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(cols),
    ));
    obj.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(spp),
    ));
    obj.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        photometric,
    ));
    obj.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(8u16),
    ));
    obj.put(DataElement::new(
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(8u16),
    ));
    obj.put(DataElement::new(
        tags::HIGH_BIT,
        VR::US,
        PrimitiveValue::from(7u16),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    ));
    if spp == 3 {
        obj.put(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
    }
    if frames > 1 {
        obj.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            frames.to_string(),
        ));
    }
    if photometric == "PALETTE COLOR" {
        // 256-entry 16-bit palette: red ramp, green flat, blue inverted ramp.
        for (desc, data, f) in [
            (
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                0u8,
            ),
            (
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                1,
            ),
            (
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                2,
            ),
        ] {
            obj.put(DataElement::new(
                desc,
                VR::US,
                PrimitiveValue::U16([256u16, 0, 16].into_iter().collect()),
            ));
            let lut: Vec<u16> = (0..256u16)
                .map(|i| match f {
                    0 => i * 257,
                    1 => 0x8080,
                    _ => (255 - i) * 257,
                })
                .collect();
            obj.put(DataElement::new(
                data,
                VR::OW,
                PrimitiveValue::U16(lut.into()),
            ));
        }
    }
    if let Some(r) = region {
        let item = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::REGION_SPATIAL_FORMAT,
                VR::US,
                PrimitiveValue::from(1u16),
            ),
            DataElement::new(tags::REGION_DATA_TYPE, VR::US, PrimitiveValue::from(1u16)),
            DataElement::new(
                tags::REGION_LOCATION_MIN_X0,
                VR::UL,
                PrimitiveValue::from(r[0]),
            ),
            DataElement::new(
                tags::REGION_LOCATION_MIN_Y0,
                VR::UL,
                PrimitiveValue::from(r[1]),
            ),
            DataElement::new(
                tags::REGION_LOCATION_MAX_X1,
                VR::UL,
                PrimitiveValue::from(r[2]),
            ),
            DataElement::new(
                tags::REGION_LOCATION_MAX_Y1,
                VR::UL,
                PrimitiveValue::from(r[3]),
            ),
            DataElement::new(
                tags::PHYSICAL_UNITS_X_DIRECTION,
                VR::US,
                PrimitiveValue::from(3u16),
            ),
            DataElement::new(
                tags::PHYSICAL_DELTA_X,
                VR::FD,
                PrimitiveValue::from(0.01f64),
            ),
            DataElement::new(
                tags::PHYSICAL_DELTA_Y,
                VR::FD,
                PrimitiveValue::from(0.01f64),
            ),
        ]);
        obj.put(DataElement::new(
            tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
    }
    let mut pixels = pixels;
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    let native = ts == uids::EXPLICIT_VR_LITTLE_ENDIAN || ts == uids::IMPLICIT_VR_LITTLE_ENDIAN;
    if pixels.is_empty() {
        // no Pixel Data
    } else if native {
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(pixels),
        ));
    } else {
        let seq = dicom_core::value::PixelFragmentSequence::new(Vec::<u32>::new(), vec![pixels]);
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, seq));
    }
    obj
}

/// A small MONOCHROME2 file as a scanner export holds it: its own SOP Instance UID and
/// PatientID (left out when empty), `frames` frames of a gradient that shifts per frame.
pub fn study_file(sop_instance_uid: &str, patient_id: &str, frames: u32) -> Vec<u8> {
    let (cols, rows) = (64u16, 48u16);
    let pixels: Vec<u8> = (0..frames)
        .flat_map(|f| {
            (0..u32::from(rows)).flat_map(move |y| {
                (0..u32::from(cols)).map(move |x| ((x * 3 + y * 2 + f * 17) % 251) as u8)
            })
        })
        .collect();
    let ts = uids::EXPLICIT_VR_LITTLE_ENDIAN;
    let mut obj = dicom_object(cols, rows, "MONOCHROME2", 1, frames, pixels, None, ts);
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        sop_instance_uid,
    ));
    if !patient_id.is_empty() {
        obj.put(DataElement::new(tags::PATIENT_ID, VR::LO, patient_id));
    }
    part10(obj, ts)
}

/// A `w` x `h` palette colour object (8- or 16-bit indices) with its lookup tables given per
/// channel as (descriptor, data tag, words): plain or segmented tables, any entry size.
pub fn palette_dicom(
    w: u16,
    h: u16,
    bits: u16,
    pixels: Vec<u8>,
    tables: [([u16; 3], dicom_core::Tag, Vec<u16>); 3],
) -> Vec<u8> {
    let ts = uids::EXPLICIT_VR_LITTLE_ENDIAN;
    let mut obj = dicom_object(w, h, "PALETTE COLOR", 1, 1, pixels, None, ts);
    for t in [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ] {
        obj.remove_element(t);
    }
    if bits == 16 {
        for (tag, v) in [
            (tags::BITS_ALLOCATED, 16u16),
            (tags::BITS_STORED, 16),
            (tags::HIGH_BIT, 15),
        ] {
            obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
    }
    let desc = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
    ];
    for (d, (descriptor, tag, words)) in desc.into_iter().zip(tables) {
        obj.put(DataElement::new(
            d,
            VR::US,
            PrimitiveValue::U16(descriptor.into_iter().collect()),
        ));
        obj.put(DataElement::new(
            tag,
            VR::OW,
            PrimitiveValue::U16(words.into()),
        ));
    }
    part10(obj, ts)
}

/// A binary PGM (`channels` 1) or PPM (3) of 8-bit pixels: what `opj_compress` reads.
pub fn netpbm(w: u16, h: u16, channels: u8, px: &[u8]) -> Vec<u8> {
    let mut f = format!("P{}\n{w} {h}\n255\n", if channels == 1 { 5 } else { 6 }).into_bytes();
    f.extend_from_slice(px);
    f
}

/// Encodes a PGM/PPM (`ext` names which) as a JPEG 2000 codestream with `opj_compress`
/// (Debian libopenjp2-tools, installed by scripts/setup.sh): a real encoder, for test files.
/// `args` go to it (`-I -r 8` for lossy).
pub fn opj_compress(pgm_or_ppm: &[u8], ext: &str, args: &[&str]) -> Result<Vec<u8>, String> {
    let dir = tempfile::Builder::new()
        .prefix("usimage-j2k-")
        .tempdir()
        .map_err(|e| format!("a scratch directory for opj_compress: {e}"))?;
    let input = dir.path().join(format!("in.{ext}"));
    let output = dir.path().join("out.j2k");
    std::fs::write(&input, pgm_or_ppm).map_err(|e| format!("{}: {e}", input.display()))?;
    let run = std::process::Command::new("opj_compress")
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(args)
        .output();
    let result = match run {
        Err(e) => Err(format!(
            "opj_compress (Debian libopenjp2-tools) is needed: run scripts/setup.sh ({e})"
        )),
        Ok(o) if !o.status.success() => Err(format!(
            "opj_compress failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Ok(_) => std::fs::read(&output).map_err(|e| format!("{}: {e}", output.display())),
    };
    result
}

/// Replaces the pixel data by encapsulated fragments (one codestream per frame, say) with a
/// basic offset table when `offsets`.
pub fn set_fragments(obj: &mut InMemDicomObject, fragments: Vec<Vec<u8>>, offsets: bool) {
    let mut table = Vec::new();
    let mut at = 0u32;
    let fragments: Vec<Vec<u8>> = fragments
        .into_iter()
        .map(|mut f| {
            if f.len() % 2 == 1 {
                f.push(0);
            }
            table.push(at);
            at += 8 + f.len() as u32;
            f
        })
        .collect();
    if !offsets {
        table.clear();
    }
    let seq = dicom_core::value::PixelFragmentSequence::new(table, fragments);
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, seq));
}

/// A data set as a Part 10 file in transfer syntax `ts` (empty on a write error).
pub fn part10(obj: InMemDicomObject, ts: &str) -> Vec<u8> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid(uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE)
        .media_storage_sop_instance_uid("1.2.3.4.5");
    // `write_all` writes the 128-byte preamble and "DICM" itself.
    let mut out = Vec::new();
    if let Ok(file) = obj.with_meta(meta) {
        if file.write_all(&mut out).is_err() {
            out.clear();
        }
    }
    out
}
