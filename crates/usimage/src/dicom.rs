//! DICOM decoding through dicom-rs: every frame of an object as a [`GreyFrame`], and the
//! Sequence of Ultrasound Regions (image-area boxes, pixel spacing) when present.
//!
//! Pixel data as scanners write it: native and JPEG (baseline, lossless) through
//! dicom-pixeldata; JPEG 2000 (lossless and lossy, `.4.90`-`.4.93`) through the pure-Rust
//! `rust-j2k` decoder; palette colour with plain or segmented lookup tables (discrete,
//! linear and indirect segments) and 8- or 16-bit entries. Anything else is refused with
//! the transfer syntax or attribute named.
//!
//! Only pixel geometry and regions leave this module: patient attributes are never read
//! into our types, so they cannot leak into outputs. The one exception, [`read_header`] for
//! data-set ingestion, hands out the PatientID only as a one-way key.

use std::borrow::Cow;

use dicom_dictionary_std::tags;
use dicom_object::{
    file::ReadPreamble, mem::InMemElement, DefaultDicomObject, InMemDicomObject, OpenFileOptions,
};
use dicom_pixeldata::{DecodedPixelData, PixelDecoder};

use crate::error::DecodeError;
use crate::frame::{check_dims, GreyFrame};

/// Largest decoded pixel data we accept for one object (all frames together).
pub const MAX_DICOM_BYTES: u64 = 1 << 30;
/// Largest plausible decoded / compressed size ratio for encapsulated pixel data.
const MAX_EXPANSION: u64 = 1024;

/// One entry of the DICOM Sequence of Ultrasound Regions (0018,6011).
#[derive(Debug, Clone, PartialEq)]
pub struct UsRegion {
    /// Region box `[x0, y0, x1, y1]` in pixels (RegionLocationMinX0 .. MaxY1, inclusive as
    /// stored by the scanner).
    pub bbox: [u32; 4],
    /// RegionSpatialFormat: 1 = 2D (B-mode tissue), 2 = M-mode, 3 = spectral, 4 = waveform.
    pub spatial_format: u16,
    /// RegionDataType: 1 = tissue, 2 = colour flow, 3 = PW Doppler, ...
    pub data_type: u16,
    /// PhysicalUnitsXDirection (3 = cm).
    pub units_x: u16,
    /// PhysicalUnitsYDirection (3 = cm).
    pub units_y: u16,
    /// PhysicalDeltaX: size of one pixel along x, in `units_x`.
    pub delta_x: f64,
    /// PhysicalDeltaY: size of one pixel along y, in `units_y`.
    pub delta_y: f64,
}

impl UsRegion {
    /// Box area in pixels.
    pub fn area(&self) -> u64 {
        let [x0, y0, x1, y1] = self.bbox;
        u64::from(x1.saturating_sub(x0)) * u64::from(y1.saturating_sub(y0))
    }
}

/// Palette lookup table (one per colour channel): descriptor and 8-bit output.
#[derive(Debug, Clone)]
struct Palette {
    first: i64,
    lut: [Vec<u8>; 3],
}

/// Decoded samples of every frame and how to read them.
struct Pixels {
    samples: Samples,
    rows: u32,
    cols: u32,
    spp: u16,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    photometric: String,
    planar: bool,
}

/// Where the decoded samples live: dicom-pixeldata's buffer, or ours (JPEG 2000).
enum Samples {
    Decoded(DecodedPixelData<'static>),
    Raw(Vec<u8>),
}

impl Pixels {
    fn data(&self) -> &[u8] {
        match &self.samples {
            Samples::Decoded(d) => d.data(),
            Samples::Raw(v) => v,
        }
    }

    fn from_decoded(d: DecodedPixelData<'static>) -> Self {
        Self {
            rows: d.rows(),
            cols: d.columns(),
            spp: d.samples_per_pixel(),
            bits_allocated: d.bits_allocated(),
            bits_stored: d.bits_stored(),
            signed: d.pixel_representation() as u16 == 1,
            photometric: d.photometric_interpretation().as_str().to_string(),
            planar: d.planar_configuration() as u16 == 1,
            samples: Samples::Decoded(d),
        }
    }

    /// Bytes of one decoded frame. Native YBR_FULL_422 stores two samples per pixel (Y1 Y2
    /// Cb Cr per pixel pair).
    fn frame_bytes(&self) -> usize {
        let n = self.cols as usize * self.rows as usize;
        let spp = usize::from(self.spp);
        let bytes = usize::from(self.bits_allocated / 8).max(1);
        if self.photometric == "YBR_FULL_422" && spp == 3 && bytes == 1 {
            n.div_ceil(2) * 4
        } else {
            n * spp * bytes
        }
    }
}

/// A decoded DICOM image object (single or multi-frame), ready to hand out frames.
pub struct DicomImage {
    pixels: Pixels,
    frames: u32,
    regions: Vec<UsRegion>,
    palette: Option<Palette>,
}

impl std::fmt::Debug for DicomImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomImage")
            .field("columns", &self.pixels.cols)
            .field("rows", &self.pixels.rows)
            .field("frames", &self.frames)
            .field("photometric", &self.pixels.photometric)
            .field("regions", &self.regions)
            .finish()
    }
}

/// A transfer syntax UID with its name where the registry knows it, for error messages a
/// user can act on ("re-export as explicit VR little endian or JPEG baseline").
pub fn syntax_name(uid: &str) -> String {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let uid = uid.trim_end_matches(['\0', ' ']);
    match dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(uid) {
        Some(t) => format!("{uid} ({})", t.name()),
        None => format!("{uid} (not a transfer syntax this build knows)"),
    }
}

/// The JPEG 2000 transfer syntaxes (Part 1, and Part 2 multi-component).
const JPEG2000_SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
];

/// What data-set ingestion needs from a DICOM header. The patient appears only as a one-way
/// key (a salted sha256 of the PatientID), so nothing downstream can write the identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomHeader {
    /// SOP Instance UID, when present.
    pub sop_instance_uid: Option<String>,
    /// `p-` and 16 hex digits of the salted sha256 of the PatientID; `None` when the
    /// PatientID is absent or a placeholder (empty, only punctuation).
    pub patient_key: Option<String>,
    /// Number of frames (1 for single-frame objects).
    pub frames: u32,
    /// The object has pixel data.
    pub has_pixels: bool,
}

/// The one-way key of a PatientID: stable across runs and machines (a fixed salt), never
/// reversible to the identifier by anyone without a list of candidates.
pub fn patient_key(patient_id: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let id = patient_id.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if !id.chars().any(char::is_alphanumeric) {
        return None;
    }
    let mut h = Sha256::new();
    h.update(b"renalscan-patient-v1\0");
    h.update(id.as_bytes());
    Some(format!("p-{}", &hex::encode(h.finalize())[..16]))
}

/// A text element, trimmed of padding; `None` when absent or empty.
fn text_of(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        })
        .filter(|s| !s.is_empty())
}

/// Reads the header of a DICOM file held in memory, without decoding its pixels (the same
/// length checks as [`DicomImage::from_bytes`] first).
pub fn read_header(bytes: &[u8]) -> Result<DicomHeader, DecodeError> {
    let obj = parse(bytes)?;
    let text = |tag| text_of(&obj, tag);
    let frames = obj
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<i64>().ok())
        .unwrap_or(1)
        .clamp(1, i64::from(u32::MAX)) as u32;
    Ok(DicomHeader {
        sop_instance_uid: text(tags::SOP_INSTANCE_UID),
        patient_key: text(tags::PATIENT_ID).as_deref().and_then(patient_key),
        frames,
        has_pixels: obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_some(),
    })
}

/// The patient and study attributes of a DICOM file (a replayed study), for the exam's
/// PACS objects: each present and non-empty one, trimmed.
pub fn read_study(bytes: &[u8]) -> Result<contract::events::SourceStudy, DecodeError> {
    let obj = parse(bytes)?;
    let text = |tag| text_of(&obj, tag);
    Ok(contract::events::SourceStudy {
        patient_name: text(tags::PATIENT_NAME),
        patient_id: text(tags::PATIENT_ID),
        patient_birth_date: text(tags::PATIENT_BIRTH_DATE),
        patient_sex: text(tags::PATIENT_SEX),
        study_uid: text(tags::STUDY_INSTANCE_UID),
        study_id: text(tags::STUDY_ID),
        accession: text(tags::ACCESSION_NUMBER),
        study_date: text(tags::STUDY_DATE),
        study_time: text(tags::STUDY_TIME),
    })
}

/// Parses a Part 10 file (with or without its preamble) after checking every declared
/// element length against the file, so dicom-rs never allocates what the file cannot hold.
fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, DecodeError> {
    let body = if bytes.get(128..132) == Some(b"DICM") {
        &bytes[128..]
    } else if bytes.get(0..4) == Some(b"DICM") {
        bytes
    } else {
        return Err(DecodeError::UnknownFormat);
    };
    check_lengths(body)?;
    crate::error::guarded("DICOM", || {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Never)
            .from_reader(body)
            .map_err(|e| DecodeError::DicomParse(e.to_string()))
    })
}

/// Whether `bytes` look like a DICOM Part 10 file (preamble + "DICM", or bare "DICM").
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.get(0..4) == Some(b"DICM")
}

fn attr_u32(
    obj: &InMemDicomObject,
    tag: dicom_core::Tag,
    name: &'static str,
) -> Result<u32, DecodeError> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
        .ok_or(DecodeError::DicomAttribute { name })
}

impl DicomImage {
    /// Parses a DICOM file held in memory and decodes its pixel data.
    ///
    /// Declared element lengths are checked against the file size first, and the pixel
    /// geometry against [`crate::MAX_SIDE`] / [`MAX_DICOM_BYTES`], so corrupt headers cannot
    /// trigger huge allocations.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::from_object(&parse(bytes)?)
    }

    /// Decodes the pixel data of an already parsed object.
    pub fn from_object(obj: &DefaultDicomObject) -> Result<Self, DecodeError> {
        if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
            return Err(DecodeError::NoPixelData);
        }
        let rows = attr_u32(obj, tags::ROWS, "Rows")?;
        let cols = attr_u32(obj, tags::COLUMNS, "Columns")?;
        check_dims(cols, rows)?;
        let spp = attr_u32(obj, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
        let bits = attr_u32(obj, tags::BITS_ALLOCATED, "BitsAllocated")?;
        if !(spp == 1 || spp == 3) {
            return Err(DecodeError::Unsupported(format!("SamplesPerPixel {spp}")));
        }
        if !(bits == 8 || bits == 16) {
            return Err(DecodeError::Unsupported(format!("BitsAllocated {bits}")));
        }
        let frames = obj
            .element_opt(tags::NUMBER_OF_FRAMES)
            .ok()
            .flatten()
            .map(|e| {
                e.to_int::<i64>().map_err(|_| DecodeError::DicomAttribute {
                    name: "NumberOfFrames",
                })
            })
            .transpose()?
            .unwrap_or(1);
        if frames < 1 {
            return Err(DecodeError::DicomAttribute {
                name: "NumberOfFrames",
            });
        }
        let total = u64::from(rows) * u64::from(cols) * u64::from(spp) * u64::from(bits / 8);
        if total.saturating_mul(frames as u64) > MAX_DICOM_BYTES {
            return Err(DecodeError::TooLarge {
                width: cols,
                height: rows.saturating_mul(frames.min(u32::MAX as i64) as u32),
            });
        }
        // Compressed pixel data: refuse expansion ratios no codec reaches (a corrupt header
        // declaring a huge image over a few bytes would otherwise allocate it).
        if let Some(e) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() {
            if let dicom_core::DicomValue::PixelSequence(seq) = e.value() {
                let packed: u64 = seq.fragments().iter().map(|f| f.len() as u64).sum();
                if total.saturating_mul(frames as u64)
                    > packed.saturating_mul(MAX_EXPANSION).max(1 << 20)
                {
                    return Err(DecodeError::DicomPixels(format!(
                        "{packed} bytes of compressed pixel data cannot hold {frames} frame(s) of {cols}x{rows}; the file is corrupt"
                    )));
                }
            }
        }
        let ts = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let pixels = if JPEG2000_SYNTAXES.contains(&ts.as_str()) {
            crate::error::guarded("JPEG 2000", || decode_jpeg2000(obj, frames as u32, &ts))?
        } else {
            let decoded = crate::error::guarded("DICOM pixel data", || {
                obj.decode_pixel_data()
                    .map_err(|e| {
                        let msg = e.to_string();
                        if msg.contains("nsupported") || msg.contains("nknown transfer syntax") {
                            DecodeError::Unsupported(format!(
                                "transfer syntax {}: {msg}",
                                syntax_name(&ts)
                            ))
                        } else {
                            DecodeError::DicomPixels(msg)
                        }
                    })
                    .map(|d| d.to_owned())
            })?;
            Pixels::from_decoded(decoded)
        };
        let frames = match &pixels.samples {
            Samples::Decoded(d) => d.number_of_frames(),
            Samples::Raw(_) => frames as u32,
        };
        let palette = if pixels.photometric == "PALETTE COLOR" {
            Some(read_palette(obj, pixels.signed)?)
        } else {
            None
        };
        let regions = read_regions(obj);
        let need = pixels.frame_bytes().saturating_mul(frames as usize);
        if pixels.data().len() < need {
            return Err(DecodeError::Truncated {
                what: "DICOM pixel data (NumberOfFrames x frame size)",
                expected: need,
                got: pixels.data().len(),
            });
        }
        log::debug!(
            "DICOM {cols}x{rows}, {frames} frame(s), {} region(s)",
            regions.len()
        );
        Ok(Self {
            pixels,
            frames,
            regions,
            palette,
        })
    }

    /// Number of frames (cine objects have many; every one is addressable).
    pub fn frame_count(&self) -> u32 {
        self.frames
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.pixels.cols
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.pixels.rows
    }

    /// The Sequence of Ultrasound Regions, empty when the object has none.
    pub fn regions(&self) -> &[UsRegion] {
        &self.regions
    }

    /// The B-mode image area according to the scanner: the largest 2D tissue region.
    pub fn image_area_region(&self) -> Option<&UsRegion> {
        self.regions
            .iter()
            .filter(|r| r.spatial_format == 1)
            .max_by_key(|r| r.area())
    }

    /// Writes frame `index` into `out` as grey (colour pixels flagged in its mask).
    pub fn frame_into(&self, index: u32, out: &mut GreyFrame) -> Result<(), DecodeError> {
        if index >= self.frames {
            return Err(DecodeError::FrameOutOfRange {
                index,
                count: self.frames,
            });
        }
        let (w, h) = (self.width(), self.height());
        let n = w as usize * h as usize;
        let spp = usize::from(self.pixels.spp);
        let bytes = usize::from(self.pixels.bits_allocated / 8).max(1);
        let pi = self.pixels.photometric.clone();
        let frame_len = self.pixels.frame_bytes();
        let start = frame_len * index as usize;
        let data =
            self.pixels
                .data()
                .get(start..start + frame_len)
                .ok_or(DecodeError::Truncated {
                    what: "DICOM pixel data",
                    expected: start + frame_len,
                    got: self.pixels.data().len(),
                })?;
        // 16-bit samples: keep the most significant stored bits.
        let stored = u32::from(self.pixels.bits_stored).clamp(8, 16);
        let signed = self.pixels.signed;
        let sample = |i: usize| -> u16 {
            if bytes == 1 {
                u16::from(data[i])
            } else {
                let v = u16::from_le_bytes([data[2 * i], data[2 * i + 1]]);
                let v = if signed { v ^ (1 << (stored - 1)) } else { v };
                let v = v & ((1u32 << stored) - 1) as u16;
                (u32::from(v) >> (stored - 8)) as u16
            }
        };
        match (pi.as_str(), spp) {
            ("MONOCHROME2", 1) | ("MONOCHROME1", 1) => {
                out.reset(w, h, false)?;
                let inv = pi == "MONOCHROME1";
                for (i, g) in out.grey_mut().iter_mut().enumerate() {
                    let v = sample(i) as u8;
                    *g = if inv { 255 - v } else { v };
                }
            }
            ("PALETTE COLOR", 1) => {
                let pal = self.palette.as_ref().ok_or(DecodeError::DicomAttribute {
                    name: "PaletteColorLookupTable",
                })?;
                let mut rgb = vec![0u8; 3 * n];
                for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                    let raw = if bytes == 1 {
                        i64::from(data[i])
                    } else {
                        i64::from(u16::from_le_bytes([data[2 * i], data[2 * i + 1]]))
                    };
                    for (p, lut) in px.iter_mut().zip(&pal.lut) {
                        let k = (raw - pal.first).clamp(0, lut.len() as i64 - 1) as usize;
                        *p = lut[k];
                    }
                }
                out.set_from_rgb(w, h, &rgb)?;
            }
            (_, 3) => {
                let planar = self.pixels.planar;
                let ybr = pi.starts_with("YBR_FULL");
                let ybr422 = pi == "YBR_FULL_422";
                let mut rgb = vec![0u8; 3 * n];
                for i in 0..n {
                    let (a, b, c) = if ybr422 {
                        // Native 4:2:2: Y1 Y2 Cb Cr per pixel pair.
                        let pair = (i / 2) * 4; // within the frame slice
                        let y = data.get(pair + (i % 2)).copied().unwrap_or(0);
                        let cb = data.get(pair + 2).copied().unwrap_or(128);
                        let cr = data.get(pair + 3).copied().unwrap_or(128);
                        (u16::from(y), u16::from(cb), u16::from(cr))
                    } else if planar {
                        (sample(i), sample(n + i), sample(2 * n + i))
                    } else {
                        (sample(3 * i), sample(3 * i + 1), sample(3 * i + 2))
                    };
                    let (r, g, b) = if ybr {
                        ybr_to_rgb(a as u8, b as u8, c as u8)
                    } else {
                        (a as u8, b as u8, c as u8)
                    };
                    rgb[3 * i] = r;
                    rgb[3 * i + 1] = g;
                    rgb[3 * i + 2] = b;
                }
                out.set_from_rgb(w, h, &rgb)?;
            }
            _ => {
                return Err(DecodeError::Unsupported(format!(
                    "photometric interpretation {pi} with {spp} samples per pixel"
                )))
            }
        }
        Ok(())
    }
}

fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> (u8, u8, u8) {
    let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    let r = y + ((91_881 * cr + 32_768) >> 16);
    let g = y - ((22_554 * cb + 46_802 * cr + 32_768) >> 16);
    let b = y + ((116_130 * cb + 32_768) >> 16);
    let c = |v: i32| v.clamp(0, 255) as u8;
    (c(r), c(g), c(b))
}

/// Largest expansion of a segmented lookup table's indirect segments (guards against
/// segments that reference each other in a loop).
const MAX_SEGMENT_STEPS: usize = 1 << 20;

/// Expands segmented palette colour lookup table data (PS3.3 C.7.9.2): discrete segments
/// (opcode 0: count, values), linear segments (opcode 1: count, end value; a ramp from the
/// previous value) and indirect segments (opcode 2: count, 32-bit byte offset: replay that
/// many segments from there; never nested). `entries` values come out; a table that comes
/// short is padded with its last value, one that runs long is cut (scanners differ).
pub fn expand_segmented_lut(words: &[u16], entries: usize) -> Result<Vec<u16>, String> {
    let mut out: Vec<u16> = Vec::with_capacity(entries);
    let mut steps = 0usize;
    // Runs segments from word `start`: all of them (`count` None) or `count`.
    fn run(
        words: &[u16],
        start: usize,
        count: Option<usize>,
        nested: bool,
        out: &mut Vec<u16>,
        steps: &mut usize,
        entries: usize,
    ) -> Result<(), String> {
        let mut i = start;
        let mut done = 0usize;
        while i < words.len() && count.is_none_or(|c| done < c) && out.len() < entries {
            *steps += 1;
            if *steps > MAX_SEGMENT_STEPS {
                return Err("too many segments (indirect segments loop?)".into());
            }
            let arg = |k: usize| {
                words
                    .get(i + k)
                    .copied()
                    .ok_or_else(|| format!("segment at word {i} is cut short"))
            };
            match words[i] {
                0 => {
                    let n = usize::from(arg(1)?);
                    let vals = words
                        .get(i + 2..i + 2 + n)
                        .ok_or_else(|| format!("discrete segment at word {i} is cut short"))?;
                    out.extend_from_slice(vals);
                    i += 2 + n;
                }
                1 => {
                    let n = usize::from(arg(1)?);
                    let y1 = f64::from(arg(2)?);
                    let y0 = f64::from(
                        *out.last()
                            .ok_or_else(|| format!("linear segment at word {i} has no start"))?,
                    );
                    for k in 1..=n {
                        let v = y0 + (y1 - y0) * k as f64 / n as f64;
                        out.push(v.round().clamp(0.0, 65_535.0) as u16);
                    }
                    i += 3;
                }
                2 => {
                    if nested {
                        return Err(format!("indirect segment at word {i} inside another"));
                    }
                    let n = usize::from(arg(1)?);
                    let offset = u32::from(arg(2)?) | (u32::from(arg(3)?) << 16);
                    if offset % 2 != 0 {
                        return Err(format!("indirect segment offset {offset} is odd"));
                    }
                    run(
                        words,
                        offset as usize / 2,
                        Some(n),
                        true,
                        out,
                        steps,
                        entries,
                    )?;
                    i += 4;
                }
                op => return Err(format!("unknown segment opcode {op} at word {i}")),
            }
            done += 1;
        }
        Ok(())
    }
    run(words, 0, None, false, &mut out, &mut steps, entries)?;
    if out.is_empty() {
        return Err("no values".into());
    }
    if out.len() != entries {
        log::warn!(
            "segmented palette table gives {} of {entries} entries; {}",
            out.len(),
            if out.len() < entries { "padded" } else { "cut" }
        );
        let last = *out.last().unwrap_or(&0);
        out.resize(entries, last);
    }
    Ok(out)
}

fn read_palette(obj: &InMemDicomObject, signed: bool) -> Result<Palette, DecodeError> {
    let desc_tags = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
    ];
    let data_tags = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let segmented_tags = [
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let mut first = 0i64;
    let mut luts: [Vec<u8>; 3] = Default::default();
    for c in 0..3 {
        let desc: Vec<i64> = obj
            .element_opt(desc_tags[c])
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .ok_or(DecodeError::DicomAttribute {
                name: "PaletteColorLookupTableDescriptor",
            })?;
        if desc.len() < 3 {
            return Err(DecodeError::DicomAttribute {
                name: "PaletteColorLookupTableDescriptor",
            });
        }
        let entries = if desc[0] == 0 {
            65_536
        } else {
            desc[0].clamp(1, 65_536)
        } as usize;
        // The first mapped value is US or SS as the pixels are (stored as US here).
        first = if signed && desc[1] > 32_767 {
            desc[1] - 65_536
        } else {
            desc[1]
        };
        let bits = desc[2];
        let bytes = |tag| -> Option<Cow<[u8]>> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .map(|e| e.value().to_bytes().unwrap_or_default())
        };
        let words16 = |raw: &[u8]| -> Vec<u16> {
            raw.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        let to8 = |v: u16| -> u8 {
            if bits > 8 {
                (u32::from(v) >> (bits.clamp(9, 16) - 8)) as u8
            } else {
                v.min(255) as u8
            }
        };
        let lut: Vec<u8> = if let Some(raw) = bytes(data_tags[c]) {
            if bits > 8 {
                let w = words16(&raw);
                (0..entries)
                    .map(|k| to8(w.get(k).copied().unwrap_or(0)))
                    .collect()
            } else {
                // 8-bit entries are stored one per 16-bit word, or packed; take what is
                // there.
                let packed = raw.len() < 2 * entries;
                (0..entries)
                    .map(|k| {
                        if packed {
                            raw.get(k).copied()
                        } else {
                            raw.get(2 * k).copied()
                        }
                        .unwrap_or(0)
                    })
                    .collect()
            }
        } else if let Some(raw) = bytes(segmented_tags[c]) {
            let expanded = expand_segmented_lut(&words16(&raw), entries).map_err(|reason| {
                DecodeError::DicomPixels(format!(
                    "Segmented Palette Color Lookup Table Data: {reason}"
                ))
            })?;
            expanded.into_iter().map(to8).collect()
        } else {
            return Err(DecodeError::DicomAttribute {
                name: "PaletteColorLookupTableData (or its segmented form)",
            });
        };
        luts[c] = lut;
    }
    Ok(Palette { first, lut: luts })
}

/// Decodes JPEG 2000 pixel data frame by frame with the pure-Rust `rust-j2k` decoder: one
/// codestream per frame (one fragment each, all fragments for a single frame, or grouped by
/// the basic offset table). Grey stays grey; three components (after the codestream's own
/// inverse colour transform) become RGB; samples deeper than 8 bits keep their top 8.
fn decode_jpeg2000(obj: &InMemDicomObject, frames: u32, ts: &str) -> Result<Pixels, DecodeError> {
    let seq = match obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .map(|e| e.value())
    {
        Some(dicom_core::DicomValue::PixelSequence(seq)) => seq,
        _ => {
            return Err(DecodeError::DicomPixels(format!(
                "transfer syntax {ts} needs encapsulated pixel data"
            )))
        }
    };
    let fragments = seq.fragments();
    let streams: Vec<Vec<u8>> = if frames == 1 {
        vec![fragments.iter().flatten().copied().collect()]
    } else if fragments.len() == frames as usize {
        fragments.iter().map(|f| f.to_vec()).collect()
    } else {
        // Group by the basic offset table: offsets count bytes of fragment items (8-byte
        // header each) from the first fragment.
        let table = seq.offset_table();
        if table.len() != frames as usize {
            return Err(DecodeError::Unsupported(format!(
                "transfer syntax {ts}: {} fragments for {frames} frames and no usable basic \
                 offset table",
                fragments.len()
            )));
        }
        let mut starts = Vec::with_capacity(fragments.len());
        let mut at = 0u64;
        for f in fragments {
            starts.push(at);
            at += 8 + f.len() as u64;
        }
        (0..frames as usize)
            .map(|k| {
                let lo = u64::from(table[k]);
                let hi = table.get(k + 1).map_or(u64::MAX, |v| u64::from(*v));
                fragments
                    .iter()
                    .zip(&starts)
                    .filter(|(_, s)| **s >= lo && **s < hi)
                    .flat_map(|(f, _)| f.iter().copied())
                    .collect()
            })
            .collect()
    };
    let (mut rows, mut cols, mut spp) = (0u32, 0u32, 0u16);
    let mut data = Vec::new();
    for (k, stream) in streams.iter().enumerate() {
        let img = rust_j2k::decode(stream)
            .map_err(|e| DecodeError::DicomPixels(format!("JPEG 2000 frame {k} ({ts}): {e}")))?;
        let comps = &img.components;
        let n = comps.len();
        if !(n == 1 || n == 3) {
            return Err(DecodeError::Unsupported(format!(
                "JPEG 2000 with {n} components ({ts})"
            )));
        }
        let (w, h) = (comps[0].width, comps[0].height);
        if comps.iter().any(|c| c.width != w || c.height != h) {
            return Err(DecodeError::Unsupported(format!(
                "JPEG 2000 with subsampled components ({ts})"
            )));
        }
        if k == 0 {
            (cols, rows, spp) = (w, h, n as u16);
            check_dims(cols, rows)?;
        } else if (w, h, n as u16) != (cols, rows, spp) {
            return Err(DecodeError::DicomPixels(format!(
                "JPEG 2000 frame {k} is {w}x{h}x{n}, frame 0 {cols}x{rows}x{spp}"
            )));
        }
        let to8: Vec<Box<dyn Fn(i32) -> u8>> = comps
            .iter()
            .map(|c| {
                let (bits, signed) = (u32::from(c.bit_depth).clamp(1, 31), c.signed);
                Box::new(move |v: i32| {
                    let u = if signed { v + (1 << (bits - 1)) } else { v };
                    let u = u.clamp(0, (1 << bits) - 1) as u32;
                    if bits >= 8 {
                        (u >> (bits - 8)) as u8
                    } else {
                        (u << (8 - bits)) as u8
                    }
                }) as Box<dyn Fn(i32) -> u8>
            })
            .collect();
        let px = w as usize * h as usize;
        data.reserve(px * n);
        for i in 0..px {
            for (c, f) in comps.iter().zip(&to8) {
                data.push(f(c.samples.get(i).copied().unwrap_or(0)));
            }
        }
    }
    Ok(Pixels {
        samples: Samples::Raw(data),
        rows,
        cols,
        spp,
        bits_allocated: 8,
        bits_stored: 8,
        signed: false,
        photometric: if spp == 1 { "MONOCHROME2" } else { "RGB" }.to_string(),
        planar: false,
    })
}

fn read_regions(obj: &InMemDicomObject) -> Vec<UsRegion> {
    let Some(items) = obj
        .element_opt(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .ok()
        .flatten()
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|it| {
            let get = |t| it.element_opt(t).ok().flatten();
            let float = |t| get(t).and_then(|e: &InMemElement| e.to_float64().ok());
            let u32_of = |e: Option<&InMemElement>| e.and_then(|e| e.to_int::<u32>().ok());
            let u16_of = |e: Option<&InMemElement>| e.and_then(|e| e.to_int::<u16>().ok());
            Some(UsRegion {
                bbox: [
                    u32_of(get(tags::REGION_LOCATION_MIN_X0))?,
                    u32_of(get(tags::REGION_LOCATION_MIN_Y0))?,
                    u32_of(get(tags::REGION_LOCATION_MAX_X1))?,
                    u32_of(get(tags::REGION_LOCATION_MAX_Y1))?,
                ],
                spatial_format: u16_of(get(tags::REGION_SPATIAL_FORMAT)).unwrap_or(0),
                data_type: u16_of(get(tags::REGION_DATA_TYPE)).unwrap_or(0),
                units_x: u16_of(get(tags::PHYSICAL_UNITS_X_DIRECTION)).unwrap_or(0),
                units_y: u16_of(get(tags::PHYSICAL_UNITS_Y_DIRECTION)).unwrap_or(0),
                delta_x: float(tags::PHYSICAL_DELTA_X).unwrap_or(0.0),
                delta_y: float(tags::PHYSICAL_DELTA_Y).unwrap_or(0.0),
            })
        })
        .collect()
}

const KNOWN_VRS: [&[u8; 2]; 34] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
];

/// Walks every element header (descending into sequences and items) and refuses any
/// declared length that runs past the end of the file: dicom-rs allocates a value's
/// declared length before reading it, so this bounds its allocations by the file size.
fn check_lengths(body: &[u8]) -> Result<(), DecodeError> {
    let corrupt = |at: usize| {
        DecodeError::DicomParse(format!(
            "element at byte {at} runs past the end of the file"
        ))
    };
    let mut pos = 4; // after "DICM"
    let mut ts = String::new();
    let mut explicit = true;
    let mut big = false;
    let mut in_meta = true;
    // Inside encapsulated pixel data, items are opaque fragments, not elements.
    let mut fragments = false;
    // Open containers of undefined length (sequences, items, pixel data) awaiting their
    // delimiter: a delimiter with nothing open, or with a non-zero length, is corrupt
    // (dicom-rs then reads on from a different offset than this walk).
    let mut open = 0usize;
    let rd16 = |b: &[u8], big: bool| {
        if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        }
    };
    let rd32 = |b: &[u8], big: bool| {
        if big {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    };
    while pos + 8 <= body.len() {
        let group_le = u16::from_le_bytes([body[pos], body[pos + 1]]);
        if in_meta && group_le != 0x0002 {
            in_meta = false;
            let t = ts.trim_end_matches(['\0', ' ']);
            if t == "1.2.840.10008.1.2.1.99" {
                return Err(DecodeError::Unsupported(
                    "deflated data set (1.2.840.10008.1.2.1.99)".into(),
                ));
            }
            explicit = t != "1.2.840.10008.1.2";
            big = t == "1.2.840.10008.1.2.2";
        }
        let be = big && !in_meta;
        let group = rd16(&body[pos..], be);
        let elem = rd16(&body[pos + 2..], be);
        let at = pos;
        // Items and delimiters: tag + 4-byte length, never a VR.
        if group == 0xFFFE {
            let len = rd32(&body[pos + 4..], be);
            pos += 8;
            match elem {
                0xE000 if len == u32::MAX => open += 1,
                0xE000 if len as usize > body.len() - pos => return Err(corrupt(at)),
                0xE000 if fragments => pos += len as usize,
                0xE000 => {}
                0xE00D | 0xE0DD if len == 0 && open > 0 => {
                    open -= 1;
                    if elem == 0xE0DD {
                        fragments = false;
                    }
                }
                _ => {
                    return Err(DecodeError::DicomParse(format!(
                        "misplaced item or delimiter (FFFE,{elem:04X}) at byte {at}"
                    )))
                }
            }
            continue; // descend into items
        }
        let (len, vr, header) = if explicit || in_meta {
            let vr = [body[pos + 4], body[pos + 5]];
            // dicom-rs reads an unknown VR as UN (4-byte length); refuse it instead.
            if !KNOWN_VRS.iter().any(|k| **k == vr) {
                return Err(DecodeError::DicomParse(format!(
                    "unknown value representation {:?} at byte {at}",
                    String::from_utf8_lossy(&vr)
                )));
            }
            let long = matches!(
                &vr,
                b"OB"
                    | b"OW"
                    | b"OF"
                    | b"OD"
                    | b"OL"
                    | b"OV"
                    | b"SQ"
                    | b"UT"
                    | b"UN"
                    | b"UC"
                    | b"UR"
                    | b"SV"
                    | b"UV"
            );
            if long {
                if pos + 12 > body.len() {
                    return Err(corrupt(at));
                }
                (rd32(&body[pos + 8..], be), vr, 12)
            } else {
                (u32::from(rd16(&body[pos + 6..], be)), vr, 8)
            }
        } else {
            (rd32(&body[pos + 4..], be), *b"??", 8)
        };
        pos += header;
        if len == u32::MAX {
            fragments = group == 0x7FE0 || &vr == b"OB" || &vr == b"OW";
            open += 1;
            continue; // undefined length: its items follow
        }
        let len = len as usize;
        if len > body.len() - pos {
            return Err(corrupt(at));
        }
        // dicom-rs reads binary numbers whole and skips a remainder, so a length that is not
        // a multiple of the value size would put its reading out of step with this walk.
        let size = match &vr {
            b"US" | b"SS" => 2,
            b"UL" | b"SL" | b"FL" | b"AT" => 4,
            b"FD" | b"SV" | b"UV" => 8,
            _ => 1,
        };
        if !len.is_multiple_of(size) {
            return Err(DecodeError::DicomParse(format!(
                "element ({group:04X},{elem:04X}) at byte {at}: {len} bytes is not a whole \
                 number of {} values ({size} bytes each)",
                String::from_utf8_lossy(&vr)
            )));
        }
        let next_is_item = body.get(pos..pos + 4) == Some(&[0xFE, 0xFF, 0x00, 0xE0])
            || body.get(pos..pos + 4) == Some(&[0xFF, 0xFE, 0xE0, 0x00]);
        if &vr == b"SQ" || (len > 0 && next_is_item) {
            continue; // descend
        }
        if in_meta && group == 0x0002 && elem == 0x0010 {
            ts = String::from_utf8_lossy(&body[pos..pos + len]).into_owned();
        }
        pos += len;
    }
    // A copy cut short ends inside an element header or an open sequence; without this it
    // would read as a complete object that merely lacks its pixels.
    if pos < body.len() {
        return Err(DecodeError::DicomParse(format!(
            "the file ends inside an element header at byte {pos}: it is truncated"
        )));
    }
    if open > 0 {
        return Err(DecodeError::DicomParse(
            "the file ends inside a sequence or encapsulated pixel data: it is truncated".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_study_s_patient_and_study_attributes_are_read() {
        use dicom_core::{DataElement, VR};
        let ts = dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let mut obj =
            crate::synthetic::dicom_object(8, 8, "MONOCHROME2", 1, 1, vec![0; 64], None, ts);
        obj.put(DataElement::new(tags::PATIENT_ID, VR::LO, "PID-77 "));
        obj.put(DataElement::new(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "1.2.3.4",
        ));
        obj.put(DataElement::new(tags::ACCESSION_NUMBER, VR::SH, ""));
        let s = read_study(&crate::synthetic::part10(obj, ts)).unwrap();
        assert_eq!(s.patient_id.as_deref(), Some("PID-77"));
        assert_eq!(s.study_uid.as_deref(), Some("1.2.3.4"));
        assert_eq!(s.accession, None, "empty is absent");
        assert!(read_study(b"not dicom").is_err());
    }

    #[test]
    fn ybr_grey_stays_grey() {
        assert_eq!(ybr_to_rgb(77, 128, 128), (77, 77, 77));
        let (r, g, b) = ybr_to_rgb(76, 85, 255);
        assert!(r > 240 && g < 10 && b < 10, "{r} {g} {b}");
    }

    #[test]
    fn absurd_length_refused_before_parsing() {
        let mut f = b"DICM".to_vec();
        // (0002,0010) UI length 4 "1.2\0" then (0010,0010) OB with a 4 GB length.
        f.extend_from_slice(&[0x02, 0, 0x10, 0, b'U', b'I', 4, 0, b'1', b'.', b'2', 0]);
        f.extend_from_slice(&[0x10, 0, 0x10, 0, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(check_lengths(&f), Err(DecodeError::DicomParse(_))));
        assert!(!is_dicom(b"\x89PNG"));
    }

    #[test]
    fn segmented_tables_expand_discrete_linear_and_indirect_segments() {
        // Discrete [10, 20], linear to 50 in 3 steps (30, 40, 50), then an indirect
        // segment replaying the first (discrete) segment at byte offset 0.
        let words = [0, 2, 10, 20, 1, 3, 50, 2, 1, 0, 0];
        assert_eq!(
            expand_segmented_lut(&words, 7).unwrap(),
            [10, 20, 30, 40, 50, 10, 20]
        );
        // Short tables are padded with the last value, long ones cut.
        assert_eq!(expand_segmented_lut(&[0, 1, 7], 3).unwrap(), [7, 7, 7]);
        assert_eq!(expand_segmented_lut(&[0, 3, 1, 2, 3], 2).unwrap(), [1, 2]);
        // A ramp down, and 16-bit values.
        assert_eq!(
            expand_segmented_lut(&[0, 1, 65_535, 1, 2, 0], 3).unwrap(),
            [65_535, 32_768, 0]
        );
        for (bad, why) in [
            (&[1u16, 2, 5][..], "no start"),
            (&[0, 5, 1][..], "cut short"),
            (&[7, 1][..], "opcode 7"),
            (&[0, 1, 1, 2, 1, 0, 0, 2, 1, 14, 0][..], "inside another"),
            (&[0, 1, 1, 2, 1, 3, 0][..], "odd"),
        ] {
            let e = expand_segmented_lut(bad, 4).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}

#[cfg(test)]
mod synthetic_tests {
    use super::*;
    use crate::synthetic::{dicom_bytes, dicom_bytes_ts, dicom_object, part10, set_fragments};
    use dicom_dictionary_std::uids;

    const W: u16 = 6;
    const H: u16 = 4;

    fn grey() -> Vec<u8> {
        (0..(W * H) as u8).map(|i| i * 10).collect()
    }

    #[test]
    fn photometric_interpretations_decode_to_grey() {
        let g = grey();
        let mono2 = DicomImage::from_bytes(&dicom_bytes(
            W,
            H,
            "MONOCHROME2",
            1,
            1,
            g.clone(),
            Some([1, 1, 5, 3]),
        ))
        .unwrap();
        let f = {
            let mut f = GreyFrame::default();
            mono2.frame_into(0, &mut f).unwrap();
            f
        };
        assert_eq!(f.grey(), &g[..]);
        assert_eq!(mono2.regions()[0].bbox, [1, 1, 5, 3]);
        assert_eq!(mono2.image_area_region().map(|r| r.delta_x), Some(0.01));

        let mut f = GreyFrame::default();
        let mono1 =
            DicomImage::from_bytes(&dicom_bytes(W, H, "MONOCHROME1", 1, 1, g.clone(), None))
                .unwrap();
        mono1.frame_into(0, &mut f).unwrap();
        assert_eq!(f.grey()[1], 245);

        let rgb: Vec<u8> = g.iter().flat_map(|&v| [v, v, v]).collect();
        let obj = DicomImage::from_bytes(&dicom_bytes(W, H, "RGB", 3, 1, rgb, None)).unwrap();
        obj.frame_into(0, &mut f).unwrap();
        assert_eq!(f.grey(), &g[..]);
        assert!(f.colour_mask().is_none(), "grey RGB has no colour");

        let ybr: Vec<u8> = g
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[1], 128, 128])
            .collect();
        let obj =
            DicomImage::from_bytes(&dicom_bytes(W, H, "YBR_FULL_422", 3, 1, ybr, None)).unwrap();
        obj.frame_into(0, &mut f).unwrap();
        assert_eq!(f.grey(), &g[..]);

        // Palette: red ramp, green 128, blue inverted ramp -> coloured except mid-grey.
        let obj =
            DicomImage::from_bytes(&dicom_bytes(W, H, "PALETTE COLOR", 1, 1, g.clone(), None))
                .unwrap();
        obj.frame_into(0, &mut f).unwrap();
        assert_eq!(f.grey()[0], crate::frame::luma(0, 128, 255));
        assert_eq!(f.colour_mask().map(|m| m[0]), Some(1));
    }

    fn palette_object(
        bits: u16,
        pixels: Vec<u8>,
        tables: [([u16; 3], dicom_core::Tag, Vec<u16>); 3],
    ) -> Vec<u8> {
        crate::synthetic::palette_dicom(W, H, bits, pixels, tables)
    }

    fn frame0(bytes: &[u8]) -> GreyFrame {
        let obj = DicomImage::from_bytes(bytes).unwrap();
        let mut f = GreyFrame::default();
        obj.frame_into(0, &mut f).unwrap();
        f
    }

    #[test]
    fn segmented_palettes_decode_like_their_plain_tables() {
        let g = grey();
        // Plain 16-bit entries: red ramp, green flat, blue inverted ramp (as dicom_bytes).
        let plain = frame0(&dicom_bytes(W, H, "PALETTE COLOR", 1, 1, g.clone(), None));
        // The same tables segmented: red one linear ramp, green one discrete run, blue a
        // discrete start, a linear ramp and an indirect replay of nothing new.
        let red = vec![0, 1, 0, 1, 255, 65_535];
        let green = {
            let mut w = vec![0, 256];
            w.extend(std::iter::repeat_n(0x8080u16, 256));
            w
        };
        let blue = vec![0, 1, 65_535, 1, 255, 0];
        let seg = [
            tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        ];
        let bytes = palette_object(
            8,
            g.clone(),
            [
                ([256, 0, 16], seg[0], red),
                ([256, 0, 16], seg[1], green),
                ([256, 0, 16], seg[2], blue),
            ],
        );
        let f = frame0(&bytes);
        assert_eq!(f.grey(), plain.grey());
        assert_eq!(f.colour_mask(), plain.colour_mask());
        // Neither plain nor segmented data: the attribute is named.
        let mut obj = dicom_object(
            W,
            H,
            "PALETTE COLOR",
            1,
            1,
            g,
            None,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        );
        obj.remove_element(tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA);
        let e = DicomImage::from_bytes(&part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN)).unwrap_err();
        assert!(e.to_string().contains("PaletteColorLookupTableData"), "{e}");
        // Damaged segments: a typed error naming the segmented data.
        let bad = palette_object(
            8,
            grey(),
            [
                ([256, 0, 16], seg[0], vec![9, 9]),
                ([256, 0, 16], seg[1], vec![0, 1, 0]),
                ([256, 0, 16], seg[2], vec![0, 1, 0]),
            ],
        );
        let e = DicomImage::from_bytes(&bad).unwrap_err();
        assert!(e.to_string().contains("Segmented Palette"), "{e}");
    }

    #[test]
    fn sixteen_bit_palette_indices_and_entries() {
        // 16-bit pixels indexing a 4096-entry table from first value 100, 16-bit entries:
        // grey ramp in red and green, blue 0.
        let idx: Vec<u16> = (0..(W * H)).map(|i| 100 + i * 150).collect();
        let px: Vec<u8> = idx.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ramp: Vec<u16> = (0..4096u32).map(|k| (k * 16) as u16).collect();
        let bytes = palette_object(
            16,
            px,
            [
                (
                    [4096, 100, 16],
                    tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                    ramp.clone(),
                ),
                (
                    [4096, 100, 16],
                    tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                    ramp,
                ),
                (
                    [4096, 100, 16],
                    tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                    vec![0; 4096],
                ),
            ],
        );
        let f = frame0(&bytes);
        for (i, v) in idx.iter().enumerate() {
            let e = (((u32::from(*v) - 100) * 16) >> 8) as u8;
            assert_eq!(f.grey()[i], crate::frame::luma(e, e, 0), "pixel {i}");
        }
    }

    fn opj_compress(pgm_or_ppm: &[u8], ext: &str, args: &[&str]) -> Vec<u8> {
        crate::synthetic::opj_compress(pgm_or_ppm, ext, args).unwrap()
    }

    use crate::synthetic::netpbm;

    #[test]
    fn jpeg2000_lossless_lossy_grey_colour_and_multi_frame() {
        let (w, h) = (48u16, 32u16);
        // A smooth ramp: lossy coding errs little on it (sharp edges ring).
        let grey: Vec<u8> = (0..u32::from(w) * u32::from(h))
            .map(|i| ((i % 48) * 5 / 2 + (i / 48) * 3).min(255) as u8)
            .collect();
        let lossless = opj_compress(&netpbm(w, h, 1, &grey), "pgm", &[]);
        let bytes = dicom_bytes_ts(
            w,
            h,
            "MONOCHROME2",
            1,
            1,
            lossless.clone(),
            None,
            uids::JPEG2000_LOSSLESS,
        );
        let f = frame0(&bytes);
        assert_eq!(f.grey(), &grey[..], "lossless is exact");

        let lossy = opj_compress(&netpbm(w, h, 1, &grey), "pgm", &["-I", "-r", "8"]);
        let bytes = dicom_bytes_ts(w, h, "MONOCHROME2", 1, 1, lossy, None, uids::JPEG2000);
        let f = frame0(&bytes);
        let err = f
            .grey()
            .iter()
            .zip(&grey)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(err <= 12, "lossy within a few grey levels, got {err}");

        // Colour: the codestream's colour transform is undone by the decoder.
        let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
        let colour = opj_compress(&netpbm(w, h, 3, &rgb), "ppm", &[]);
        let bytes = dicom_bytes_ts(w, h, "YBR_RCT", 3, 1, colour, None, uids::JPEG2000_LOSSLESS);
        let f = frame0(&bytes);
        let expect = GreyFrame::from_rgb(u32::from(w), u32::from(h), &rgb).unwrap();
        assert_eq!(f.grey(), expect.grey());

        // Two frames, one fragment each, with and without an offset table.
        let second: Vec<u8> = grey.iter().map(|v| 255 - v).collect();
        let second_j2k = opj_compress(&netpbm(w, h, 1, &second), "pgm", &[]);
        for offsets in [false, true] {
            let mut obj = dicom_object(
                w,
                h,
                "MONOCHROME2",
                1,
                2,
                vec![0; 2],
                None,
                uids::JPEG2000_LOSSLESS,
            );
            set_fragments(
                &mut obj,
                vec![lossless.clone(), second_j2k.clone()],
                offsets,
            );
            let img = DicomImage::from_bytes(&part10(obj, uids::JPEG2000_LOSSLESS)).unwrap();
            assert_eq!(img.frame_count(), 2);
            let mut f = GreyFrame::default();
            img.frame_into(1, &mut f).unwrap();
            assert_eq!(f.grey(), &second[..]);
        }

        // A damaged codestream: a typed error naming JPEG 2000, never a panic.
        let mut broken = lossless;
        let n = broken.len();
        broken.truncate(n / 3);
        let bytes = dicom_bytes_ts(
            w,
            h,
            "MONOCHROME2",
            1,
            1,
            broken,
            None,
            uids::JPEG2000_LOSSLESS,
        );
        match DicomImage::from_bytes(&bytes) {
            Err(e) => assert!(
                e.to_string().contains("JPEG 2000") || e.to_string().contains("2000"),
                "{e}"
            ),
            Ok(img) => {
                // Some decoders return what the truncated stream holds; then it is grey.
                let mut f = GreyFrame::default();
                img.frame_into(0, &mut f).unwrap();
            }
        }
    }

    #[test]
    fn multi_frame_objects_address_every_frame() {
        let mut px = grey();
        px.extend(grey().iter().map(|v| v + 1));
        let obj =
            DicomImage::from_bytes(&dicom_bytes(W, H, "MONOCHROME2", 1, 2, px, None)).unwrap();
        assert_eq!(obj.frame_count(), 2);
        let mut f = GreyFrame::default();
        obj.frame_into(1, &mut f).unwrap();
        assert_eq!(f.grey()[0], 1);
        assert!(matches!(
            obj.frame_into(2, &mut f),
            Err(DecodeError::FrameOutOfRange { .. })
        ));
    }

    #[test]
    fn bad_objects_are_typed_errors() {
        let no_pixels = dicom_bytes(W, H, "MONOCHROME2", 1, 1, Vec::new(), None);
        assert!(matches!(
            DicomImage::from_bytes(&no_pixels),
            Err(DecodeError::NoPixelData)
        ));
        let mpeg = dicom_bytes_ts(W, H, "MONOCHROME2", 1, 1, grey(), None, uids::MPEG2MPML);
        let e = DicomImage::from_bytes(&mpeg).unwrap_err();
        assert!(matches!(e, DecodeError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("MPEG2"), "names the syntax: {e}");
        let short = dicom_bytes(W, H, "MONOCHROME2", 1, 1, vec![1, 2, 3, 4], None);
        let obj = DicomImage::from_bytes(&short);
        let mut f = GreyFrame::default();
        assert!(obj.and_then(|o| o.frame_into(0, &mut f)).is_err());
        let good = dicom_bytes(W, H, "MONOCHROME2", 1, 1, grey(), None);
        for cut in [140, good.len() / 2, good.len() - 5] {
            assert!(
                DicomImage::from_bytes(&good[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let absurd = dicom_bytes(W, H, "MONOCHROME2", 1, 100_000, grey(), None);
        assert!(DicomImage::from_bytes(&absurd).is_err());
        // A cut-short copy reads as truncated, except where the cut falls exactly between
        // two elements (then it is a smaller, complete object, without pixels).
        let mut complete = 0;
        for cut in 133..good.len() {
            match read_header(&good[..cut]) {
                Ok(h) => {
                    assert!(!h.has_pixels, "cut at {cut}");
                    complete += 1;
                }
                Err(e) => assert!(matches!(e, DecodeError::DicomParse(_)), "{e}"),
            }
        }
        assert!(
            complete < 40,
            "{complete} of {} cuts read as complete",
            good.len()
        );
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    /// Found by `cargo fuzz`: an unknown VR ("\0\0") inside a sequence item made dicom-rs
    /// read a 4-byte length of 1.6 GB and allocate it.
    #[test]
    fn unknown_vr_is_refused_before_dicom_rs_allocates() {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        f.extend_from_slice(&[0x02, 0, 0x10, 0, b'U', b'I', 20, 0]);
        f.extend_from_slice(b"1.2.840.10008.1.2.1\0");
        f.extend_from_slice(&[0x76, 0x14, 0, 0, 0, 0, 0, 0, 0x18, 0, 0x24, 0x60]);
        f.extend_from_slice(&[0u8; 64]);
        assert!(matches!(
            DicomImage::from_bytes(&f),
            Err(DecodeError::DicomParse(_))
        ));
    }
}
