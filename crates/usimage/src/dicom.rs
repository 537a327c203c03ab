//! DICOM decoding through dicom-rs: every frame of an object as a [`GreyFrame`], and the
//! Sequence of Ultrasound Regions (image-area boxes, pixel spacing) when present.
//!
//! Only pixel geometry and regions leave this module: patient attributes are never read
//! into our types, so they cannot leak into outputs.

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

/// A decoded DICOM image object (single or multi-frame), ready to hand out frames.
pub struct DicomImage {
    pixels: DecodedPixelData<'static>,
    frames: u32,
    regions: Vec<UsRegion>,
    palette: Option<Palette>,
}

impl std::fmt::Debug for DicomImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomImage")
            .field("columns", &self.pixels.columns())
            .field("rows", &self.pixels.rows())
            .field("frames", &self.frames)
            .field(
                "photometric",
                &self.pixels.photometric_interpretation().as_str(),
            )
            .field("regions", &self.regions)
            .finish()
    }
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
        let body = if bytes.get(128..132) == Some(b"DICM") {
            &bytes[128..]
        } else if bytes.get(0..4) == Some(b"DICM") {
            bytes
        } else {
            return Err(DecodeError::UnknownFormat);
        };
        check_lengths(body)?;
        let obj: DefaultDicomObject = crate::error::guarded("DICOM", || {
            OpenFileOptions::new()
                .read_preamble(ReadPreamble::Never)
                .from_reader(body)
                .map_err(|e| DecodeError::DicomParse(e.to_string()))
        })?;
        Self::from_object(&obj)
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
        let decoded = crate::error::guarded("DICOM pixel data", || {
            obj.decode_pixel_data()
                .map_err(|e| {
                    let msg = e.to_string();
                    if msg.contains("nsupported") || msg.contains("nknown transfer syntax") {
                        DecodeError::Unsupported(format!("transfer syntax {ts}: {msg}"))
                    } else {
                        DecodeError::DicomPixels(msg)
                    }
                })
                .map(|d| d.to_owned())
        })?;
        let pixels = decoded;
        let palette = if pixels.photometric_interpretation().as_str() == "PALETTE COLOR" {
            Some(read_palette(obj)?)
        } else {
            None
        };
        let regions = read_regions(obj);
        let frames = pixels.number_of_frames();
        let need = frame_bytes(&pixels).saturating_mul(frames as usize);
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
        self.pixels.columns()
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.pixels.rows()
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
        let spp = usize::from(self.pixels.samples_per_pixel());
        let bytes = usize::from(self.pixels.bits_allocated() / 8).max(1);
        let pi = self
            .pixels
            .photometric_interpretation()
            .as_str()
            .to_string();
        let frame_len = frame_bytes(&self.pixels);
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
        let stored = u32::from(self.pixels.bits_stored()).clamp(8, 16);
        let signed = self.pixels.pixel_representation() as u16 == 1;
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
                let planar = self.pixels.planar_configuration() as u16 == 1;
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

/// Bytes of one decoded frame. Native YBR_FULL_422 stores two samples per pixel (Y1 Y2 Cb
/// Cr per pixel pair).
fn frame_bytes(p: &DecodedPixelData<'_>) -> usize {
    let n = p.columns() as usize * p.rows() as usize;
    let spp = usize::from(p.samples_per_pixel());
    let bytes = usize::from(p.bits_allocated() / 8).max(1);
    if p.photometric_interpretation().as_str() == "YBR_FULL_422" && spp == 3 && bytes == 1 {
        n.div_ceil(2) * 4
    } else {
        n * spp * bytes
    }
}

/// YCbCr (full range, as DICOM YBR_FULL) to RGB, integer arithmetic.
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> (u8, u8, u8) {
    let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    let r = y + ((91_881 * cr + 32_768) >> 16);
    let g = y - ((22_554 * cb + 46_802 * cr + 32_768) >> 16);
    let b = y + ((116_130 * cb + 32_768) >> 16);
    let c = |v: i32| v.clamp(0, 255) as u8;
    (c(r), c(g), c(b))
}

fn read_palette(obj: &InMemDicomObject) -> Result<Palette, DecodeError> {
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
    let bad = DecodeError::DicomAttribute {
        name: "PaletteColorLookupTableDescriptor/Data",
    };
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
            return Err(bad);
        }
        let entries = if desc[0] == 0 {
            65_536
        } else {
            desc[0].clamp(1, 65_536)
        } as usize;
        first = desc[1];
        let bits = desc[2];
        let raw: Cow<[u8]> = obj
            .element_opt(data_tags[c])
            .ok()
            .flatten()
            .map(|e| e.value().to_bytes().unwrap_or_default())
            .ok_or(DecodeError::DicomAttribute {
                name: "PaletteColorLookupTableData",
            })?;
        let mut lut = Vec::with_capacity(entries);
        if bits > 8 {
            for k in 0..entries {
                let v = match raw.get(2 * k..2 * k + 2) {
                    Some(b) => u16::from_le_bytes([b[0], b[1]]),
                    None => 0,
                };
                lut.push((u32::from(v) >> (bits.clamp(9, 16) - 8)) as u8);
            }
        } else {
            // 8-bit entries are stored one per 16-bit word, or packed; take what is there.
            let packed = raw.len() < 2 * entries;
            for k in 0..entries {
                let v = if packed {
                    raw.get(k).copied()
                } else {
                    raw.get(2 * k).copied()
                };
                lut.push(v.unwrap_or(0));
            }
        }
        luts[c] = lut;
    }
    Ok(Palette { first, lut: luts })
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

#[cfg(test)]
mod synthetic_tests {
    use super::*;
    use crate::synthetic::{dicom_bytes, dicom_bytes_ts};
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
