//! Scan-area detection from pixels alone: where on the screen is the ultrasound image?
//!
//! Works on a block grid (about 256 blocks on the long side). The cue is texture: ultrasound
//! is speckle, so even its dark parts vary from pixel to pixel, while screen background,
//! panels, bars and the inside of glyphs are flat. Text, calipers, tick marks and traces are
//! textured but thin, so a morphological opening with a block larger than a glyph removes
//! them; the largest remaining regions are the image panes. Each pane is then made row- and
//! column-convex (sectors and rectangles both are), which also fills anechoic holes. Colour
//! pixels (Doppler, logos, buttons) never count as texture. UI bars (a header band flat at
//! one grey across the frame) are taken out of the foreground before the opening: a bar
//! touching the image would otherwise be part of its pane.

use crate::frame::GreyFrame;

/// Most panes reported for a split screen.
pub const MAX_PANES: usize = 4;

/// Grid cells on the long side of the frame.
const GRID_LONG: u32 = 256;
/// A block is textured when its grey range (max - min) reaches this.
const TEXTURE_RANGE: u8 = 3;
/// A block is foreground when some grey pixel differs from the background level by this.
/// (Estimating the background's noise from the frame rim was tried: UI bars on the rim
/// inflate it.)
const FOREGROUND_DELTA: u8 = 2;
/// Opening radius as a fraction of the grid's short side (larger than a line of text).
const OPEN_FRACTION: f32 = 0.02;
/// Components examined per frame.
const MAX_COMPS: usize = 12;
/// A component joins a pane above or below it when at least this fraction of the best.
const MERGE_FRACTION: f32 = 0.03;
/// A second component counts as a pane when at least this fraction of the largest.
const PANE_FRACTION: f32 = 0.35;
/// Below this fraction of the frame, nothing found is an image area.
const MIN_AREA_FRACTION: f32 = 0.04;
/// Sector when the top rows are narrower than this fraction of the widest row.
const SECTOR_TOP_RATIO: f32 = 0.7;
/// Inside the image area, fewer textured blocks than this fraction means nothing in view.
const MIN_TEXTURED_FRACTION: f32 = 0.25;
/// ... or a mean grey below this (probe in air, frozen black screen).
const MIN_MEAN_GREY: f32 = 6.0;
/// Image region: a flat image background drawn at another grey than the screen's is at most
/// this bright (scanners draw "no echo" near black; UI panels are greyer).
const IMAGE_BLACK_MAX: u8 = 16;
/// A flat block at this grey or above is saturated echo (a bright stone), not a UI panel.
const SATURATED: u8 = 251;
/// A UI bar: blocks flat at one grey over at least this fraction of a grid row or column.
const BAR_FRACTION: f32 = 0.3;
/// Image region: blocks around the main pane sampled for its background grey.
const RING_BLOCKS: usize = 3;
/// Image region growth: a row or column strip is screen background when at least this
/// fraction of its blocks is (text and ticks are sparse; bands and panels are not).
const STRIP_BG_FRACTION: f32 = 0.5;
/// ... and when no run of flat non-background blocks (a UI panel) covers this fraction.
const BAND_RUN_FRACTION: f32 = 0.25;

/// Shape of the image area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanKind {
    /// Curvilinear or phased array: a fan narrower at the top.
    Sector,
    /// Linear array: a rectangle (or nearly).
    Linear,
    /// No image area found.
    #[default]
    None,
}

/// The detected image area of one frame (the default: nothing found).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScanArea {
    /// Box of the main pane `[x0, y0, x1, y1]` in frame pixels, `x1`/`y1` exclusive: the
    /// echo-bearing fan or rectangle. The model input is cropped to it (and blanked outside
    /// the mask); all zero when no pane was found.
    pub bbox: [u32; 4],
    /// The scanner's image region `[x0, y0, x1, y1]` (exclusive ends): the rectangle the
    /// scanner draws the image in, i.e. the main pane plus the screen background around it
    /// up to UI bands or the frame edge; what DICOM's Sequence of Ultrasound Regions
    /// describes. It may contain burned-in text, so it is reported, never cropped to.
    /// Found from pixels alone: the extent of a flat image background drawn at another grey
    /// than the screen's, or else the pane box grown over the screen background. Contains
    /// `bbox` when a pane was found; can exist without one (an image region with no echoes,
    /// e.g. probe in air: `bbox` zero); all zero when neither is found.
    pub image_area: [u32; 4],
    /// Sector or linear.
    pub kind: ScanKind,
    /// Boxes of every pane found (split screens), left to right; the first `pane_count`
    /// entries are valid.
    pub panes: [[u32; 4]; MAX_PANES],
    /// Number of panes.
    pub pane_count: usize,
    /// Nothing in view (no image area, or an image area without echoes): a gate, not an error.
    pub no_anatomy: bool,
    /// Mean grey inside the image area.
    pub mean_grey: f32,
    /// Fraction of the image area's blocks with speckle texture (echoes); the anatomy gate
    /// compares it with its threshold.
    pub echo_fraction: f32,
}

impl ScanArea {
    /// Valid pane boxes.
    pub fn panes(&self) -> &[[u32; 4]] {
        &self.panes[..self.pane_count]
    }
}

/// A connected component of the opened foreground.
#[derive(Debug, Clone, Copy, Default)]
struct Comp {
    label: u32,
    /// Textured blocks inside it.
    score: u32,
    /// Grid box `[x0, y0, x1, y1]`, exclusive ends.
    bbox: [usize; 4],
}

fn area_of(b: [u32; 4]) -> u64 {
    u64::from(b[2] - b[0]) * u64::from(b[3] - b[1])
}

/// Reusable scan-area detector: holds its grid buffers so per-frame detection does not
/// allocate once the largest frame size has been seen.
#[derive(Debug, Default, Clone)]
pub struct Detector {
    block: u32,
    gw: usize,
    gh: usize,
    lo: Vec<u8>,
    hi: Vec<u8>,
    sum: Vec<u32>,
    colour: Vec<u32>,
    textured: Vec<u8>,
    foreground: Vec<u8>,
    tmp: Vec<u8>,
    opened: Vec<u8>,
    labels: Vec<u32>,
    stack: Vec<u32>,
    comps: Vec<Comp>,
    mask: Vec<u8>,
    pane: Vec<u8>,
    dark_cols: Vec<u32>,
    bg: u8,
    frame_w: u32,
    frame_h: u32,
    pane_boxes: [[u32; 4]; MAX_PANES],
    pane_count: usize,
}

/// Intersection over union of two `[x0, y0, x1, y1]` boxes (exclusive ends).
pub fn iou(a: [u32; 4], b: [u32; 4]) -> f32 {
    let ix = a[2].min(b[2]).saturating_sub(a[0].max(b[0])) as f32;
    let iy = a[3].min(b[3]).saturating_sub(a[1].max(b[1])) as f32;
    let inter = ix * iy;
    let area =
        |r: [u32; 4]| (r[2].saturating_sub(r[0]) as f32) * (r[3].saturating_sub(r[1]) as f32);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// The image area of one detection, detached from the [`Detector`]'s buffers (a few KiB), so
/// another thread can black out everything outside it later (the operator view masks its
/// preview off the screening thread).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AreaMask {
    block: u32,
    gw: usize,
    gh: usize,
    mask: Vec<u8>,
    panes: Vec<[u32; 4]>,
}

impl AreaMask {
    /// Whether frame pixel `(x, y)` lies inside the image area (same rule as
    /// [`Detector::inside`]).
    #[inline]
    pub fn inside(&self, x: u32, y: u32) -> bool {
        if self.block == 0 {
            return false;
        }
        let (gx, gy) = ((x / self.block) as usize, (y / self.block) as usize);
        let in_pane = self
            .panes
            .iter()
            .any(|b| x >= b[0] && x < b[2] && y >= b[1] && y < b[3]);
        in_pane && gx < self.gw && gy < self.gh && self.mask[gy * self.gw + gx] != 0
    }
}

/// One-off detection (allocates a [`Detector`]); per-frame loops should keep a `Detector`.
pub fn detect_scan_area(frame: &GreyFrame) -> ScanArea {
    Detector::default().detect(frame)
}

impl Detector {
    /// Block size in pixels of the last detection's grid.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Grid size `(width, height)` of the last detection.
    pub fn grid(&self) -> (usize, usize) {
        (self.gw, self.gh)
    }

    /// Image-area mask of the last detection on the block grid (1 = inside any pane).
    pub fn mask(&self) -> &[u8] {
        &self.mask[..self.gw * self.gh]
    }

    /// The last detection's image area as an [`AreaMask`] (a copy).
    pub fn area_mask(&self) -> AreaMask {
        AreaMask {
            block: self.block,
            gw: self.gw,
            gh: self.gh,
            mask: self.mask[..self.gw * self.gh].to_vec(),
            panes: self.pane_boxes[..self.pane_count].to_vec(),
        }
    }

    /// Whether frame pixel `(x, y)` lies inside the last detection's image area.
    #[inline]
    pub fn inside(&self, x: u32, y: u32) -> bool {
        let (gx, gy) = ((x / self.block) as usize, (y / self.block) as usize);
        let in_pane = self.pane_boxes[..self.pane_count]
            .iter()
            .any(|b| x >= b[0] && x < b[2] && y >= b[1] && y < b[3]);
        in_pane && gx < self.gw && gy < self.gh && self.mask[gy * self.gw + gx] != 0
    }

    /// Finds the image area of `frame`.
    pub fn detect(&mut self, frame: &GreyFrame) -> ScanArea {
        self.pane_count = 0;
        self.block_stats(frame);
        let (gw, gh) = (self.gw, self.gh);
        let n = gw * gh;
        let r = ((gw.min(gh) as f32 * OPEN_FRACTION).round() as usize).max(1);
        // opening = dilate(erode(textured))
        self.opened.clear();
        self.opened.extend_from_slice(&self.foreground[..n]);
        min_max_filter(&mut self.opened, &mut self.tmp, gw, gh, r, true);
        min_max_filter(&mut self.opened, &mut self.tmp, gw, gh, r, false);
        for (o, &t) in self.opened.iter_mut().zip(&self.foreground) {
            *o &= t;
        }
        // Label components, keep the best scored few.
        let mut comps = [Comp::default(); MAX_COMPS];
        let found = self.label(&mut comps);
        let comps = &comps[..found];
        let mut area = ScanArea {
            bbox: [0; 4],
            image_area: [0; 4],
            kind: ScanKind::None,
            panes: [[0; 4]; MAX_PANES],
            pane_count: 0,
            no_anatomy: true,
            mean_grey: 0.0,
            echo_fraction: 0.0,
        };
        self.mask.clear();
        self.mask.resize(n, 0);
        let Some(best) = comps.first().copied() else {
            area.image_area = self.image_area(None);
            return area;
        };
        if (best.score as f32) < MIN_AREA_FRACTION * n as f32 {
            area.image_area = self.image_area(None);
            return area;
        }
        // Group components into panes: pieces stacked vertically (an image split by an
        // anechoic band) join the pane above or below them; side by side ones are new panes.
        let mut groups = [[0u32; MAX_COMPS]; MAX_PANES];
        let mut group_len = [0usize; MAX_PANES];
        let mut group_box = [[0usize; 4]; MAX_PANES];
        let mut count = 0;
        for c in comps {
            if (c.score as f32) < MERGE_FRACTION * best.score as f32 {
                break;
            }
            let cw = c.bbox[2] - c.bbox[0];
            let joined = (0..count).find(|&g| {
                let gb = group_box[g];
                let gwid = gb[2] - gb[0];
                let overlap = c.bbox[2].min(gb[2]).saturating_sub(c.bbox[0].max(gb[0]));
                overlap as f32 >= 0.6 * cw.min(gwid) as f32 && cw as f32 >= 0.3 * gwid as f32
            });
            if let Some(g) = joined {
                groups[g][group_len[g]] = c.label;
                group_len[g] += 1;
                let gb = &mut group_box[g];
                *gb = [
                    gb[0].min(c.bbox[0]),
                    gb[1].min(c.bbox[1]),
                    gb[2].max(c.bbox[2]),
                    gb[3].max(c.bbox[3]),
                ];
            } else if count < MAX_PANES && c.score as f32 >= PANE_FRACTION * best.score as f32 {
                groups[count][0] = c.label;
                group_len[count] = 1;
                group_box[count] = c.bbox;
                count += 1;
            }
        }
        let mut panes = [([0u32; 4], 0u64); MAX_PANES];
        let mut sector = false;
        let mut pane_count = 0;
        for g in 0..count {
            let labels = groups[g];
            let b = self.fill_convex(&labels[..group_len[g]]);
            let fitted = self.fit_sector(b);
            if g == 0 {
                sector = fitted.is_some();
            }
            let b = fitted.unwrap_or(b);
            for (m, &p) in self.mask.iter_mut().zip(&self.pane) {
                *m |= p;
            }
            let mut pb = self.to_pixels(b, frame);
            if fitted.is_none() {
                // Rectangular pane: place its edges to the pixel (text can touch the image).
                pb = self.refine_edges(frame, pb);
            }
            // A thin dark column through the middle: two panes drawn side by side.
            match split_column(frame, pb, &mut self.dark_cols) {
                Some(xs) if pane_count + 1 < MAX_PANES => {
                    let left = [pb[0], pb[1], xs, pb[3]];
                    let right = [xs + 1, pb[1], pb[2], pb[3]];
                    panes[pane_count] = (left, area_of(left));
                    panes[pane_count + 1] = (right, area_of(right));
                    pane_count += 2;
                }
                _ => {
                    panes[pane_count] = (pb, area_of(pb));
                    pane_count += 1;
                }
            }
        }
        // Main pane: the largest; all reported left to right.
        let main_px = panes[..pane_count]
            .iter()
            .max_by_key(|p| p.1)
            .map(|p| p.0)
            .unwrap_or_default();
        let mut sorted = panes;
        sorted[..pane_count].sort_by_key(|p| (p.0[0], p.0[1]));
        for (i, p) in sorted[..pane_count].iter().enumerate() {
            area.panes[i] = p.0;
        }
        area.pane_count = pane_count;
        area.bbox = main_px;
        self.pane_boxes = area.panes;
        self.pane_count = pane_count;
        let s = self.block as usize;
        let main = [
            main_px[0] as usize / s,
            main_px[1] as usize / s,
            (main_px[2] as usize).div_ceil(s).min(gw),
            (main_px[3] as usize).div_ceil(s).min(gh),
        ];
        area.kind = if sector {
            ScanKind::Sector
        } else {
            self.kind_of(main)
        };
        // Anatomy gate: echoes inside the area?
        let (mut inside, mut tex, mut sum) = (0u64, 0u64, 0u64);
        for y in main[1]..main[3] {
            for x in main[0]..main[2] {
                let i = y * gw + x;
                if self.mask[i] != 0 {
                    inside += 1;
                    tex += u64::from(self.textured[i]);
                    let px = self.block_pixels(x, y, frame).max(1);
                    sum += u64::from(self.sum[i]) / px;
                }
            }
        }
        let inside_f = inside.max(1) as f32;
        area.mean_grey = sum as f32 / inside_f;
        area.echo_fraction = tex as f32 / inside_f;
        area.no_anatomy =
            (tex as f32) < MIN_TEXTURED_FRACTION * inside_f || area.mean_grey < MIN_MEAN_GREY;
        let ia = self.image_area(Some(main));
        area.image_area = if ia == [0; 4] {
            main_px
        } else {
            [
                ia[0].min(main_px[0]),
                ia[1].min(main_px[1]),
                ia[2].max(main_px[2]),
                ia[3].max(main_px[3]),
            ]
        };
        area
    }

    /// Grey of block `i` when all its pixels have one grey and none is colour.
    fn flat_level(&self, i: usize) -> Option<u8> {
        (self.colour[i] == 0 && self.lo[i] == self.hi[i]).then_some(self.lo[i])
    }

    /// The scanner's image region in pixels (see [`ScanArea::image_area`]), around the main
    /// pane's grid box `main`, or without a pane (`None`). Two cases:
    /// - the pane sits on a flat dark grey other than the screen background (SonoSite draws
    ///   its image rectangle at 0 on a screen at 1, Philips its empty sector at 1 on 0):
    ///   the region is the connected extent of that grey together with the pane and the
    ///   opened foreground it touches (thin text and ticks are not in it, so it cannot leak
    ///   along them); without a pane, the largest such extent, if large enough;
    /// - the pane sits on the screen background: its box grows strip by strip while the
    ///   strip is mostly background with no long flat panel, stopping at UI bands,
    ///   separator lines, colour bars or the frame edge.
    fn image_area(&mut self, main: Option<[usize; 4]>) -> [u32; 4] {
        let (gw, gh) = (self.gw, self.gh);
        let n = gw * gh;
        let bg = self.bg;
        let mut hist = [0u32; 256];
        let level = match main {
            Some(b) => {
                let (x0, y0) = (
                    b[0].saturating_sub(RING_BLOCKS),
                    b[1].saturating_sub(RING_BLOCKS),
                );
                let (x1, y1) = ((b[2] + RING_BLOCKS).min(gw), (b[3] + RING_BLOCKS).min(gh));
                for y in y0..y1 {
                    for x in x0..x1 {
                        let i = y * gw + x;
                        if self.mask[i] == 0 {
                            if let Some(v) = self.flat_level(i) {
                                hist[usize::from(v)] += 1;
                            }
                        }
                    }
                }
                let v = (0..256)
                    .max_by_key(|&v| (hist[v], std::cmp::Reverse(v)))
                    .unwrap_or(0);
                if hist[v] == 0 {
                    bg
                } else {
                    v as u8
                }
            }
            None => {
                for i in 0..n {
                    if let Some(v) = self.flat_level(i) {
                        hist[usize::from(v)] += 1;
                    }
                }
                hist[usize::from(bg)] = 0;
                let v = (0..=usize::from(IMAGE_BLACK_MAX))
                    .max_by_key(|&v| (hist[v], std::cmp::Reverse(v)))
                    .unwrap_or(0);
                if (hist[v] as f32) < MIN_AREA_FRACTION * n as f32 {
                    return [0; 4];
                }
                v as u8
            }
        };
        let grid = if level != bg && level <= IMAGE_BLACK_MAX {
            self.level_extent(level, main)
        } else {
            main.map(|b| self.grow(b))
        };
        match grid {
            Some(b) => {
                let s = self.block;
                [
                    b[0] as u32 * s,
                    b[1] as u32 * s,
                    (b[2] as u32 * s).min(self.frame_w),
                    (b[3] as u32 * s).min(self.frame_h),
                ]
            }
            None => [0; 4],
        }
    }

    /// Grid box of the blocks connected to the seeds that are flat at `level`, opened
    /// foreground or pane mask. Seeds: the mask inside `main`; without a pane, every block
    /// flat at `level`, keeping the largest extent (at least [`MIN_AREA_FRACTION`] of the
    /// grid). Reuses `labels` and `stack`.
    fn level_extent(&mut self, level: u8, main: Option<[usize; 4]>) -> Option<[usize; 4]> {
        let (gw, gh) = (self.gw, self.gh);
        let n = gw * gh;
        let (lo, hi, colour) = (&self.lo, &self.hi, &self.colour);
        let (opened, mask) = (&self.opened, &self.mask);
        let flat_at = |i: usize| colour[i] == 0 && lo[i] == level && hi[i] == level;
        let member = |i: usize| flat_at(i) || opened[i] != 0 || mask[i] != 0;
        let labels = &mut self.labels;
        labels.clear();
        labels.resize(n, 0);
        let stack = &mut self.stack;
        let mut union: Option<[usize; 4]> = None;
        let mut best: Option<(usize, [usize; 4])> = None;
        for start in 0..n {
            if labels[start] != 0 {
                continue;
            }
            let seed = match main {
                Some(b) => {
                    let (x, y) = (start % gw, start / gw);
                    mask[start] != 0 && x >= b[0] && x < b[2] && y >= b[1] && y < b[3]
                }
                None => flat_at(start),
            };
            if !seed {
                continue;
            }
            labels[start] = 1;
            stack.clear();
            stack.push(start as u32);
            let mut bbox = [usize::MAX, usize::MAX, 0, 0];
            let mut size = 0usize;
            while let Some(i) = stack.pop() {
                let i = i as usize;
                let (x, y) = (i % gw, i / gw);
                size += 1;
                bbox = [
                    bbox[0].min(x),
                    bbox[1].min(y),
                    bbox[2].max(x + 1),
                    bbox[3].max(y + 1),
                ];
                let mut visit = |j: usize| {
                    if labels[j] == 0 && member(j) {
                        labels[j] = 1;
                        stack.push(j as u32);
                    }
                };
                if x > 0 {
                    visit(i - 1);
                }
                if x + 1 < gw {
                    visit(i + 1);
                }
                if y > 0 {
                    visit(i - gw);
                }
                if y + 1 < gh {
                    visit(i + gw);
                }
            }
            union = Some(union.map_or(bbox, |u| {
                [
                    u[0].min(bbox[0]),
                    u[1].min(bbox[1]),
                    u[2].max(bbox[2]),
                    u[3].max(bbox[3]),
                ]
            }));
            if best.is_none_or(|(s, _)| size > s) {
                best = Some((size, bbox));
            }
        }
        match main {
            Some(_) => union,
            None => best
                .filter(|&(size, _)| size as f32 >= MIN_AREA_FRACTION * n as f32)
                .map(|(_, b)| b),
        }
    }

    /// Grows grid box `b` one block strip at a time on each side while the strip beyond it
    /// is screen background ([`Detector::background_strip`]). The first strip may be the
    /// pane's own edge (a fade-out the block grid cuts through): it is stepped over when the
    /// strip after it is background.
    fn grow(&self, mut b: [usize; 4]) -> [usize; 4] {
        let (gw, gh) = (self.gw, self.gh);
        let mut open = [true; 4];
        let mut first = true;
        while open.iter().any(|&o| o) {
            for side in 0..4 {
                if !open[side] {
                    continue;
                }
                // Strip `d` blocks beyond side `side` (1 = adjacent), if inside the grid.
                let strip = |d: usize| -> bool {
                    match side {
                        0 => b[0] >= d && self.background_strip(true, b[0] - d, b[1], b[3]),
                        1 => b[1] >= d && self.background_strip(false, b[1] - d, b[0], b[2]),
                        2 => {
                            b[2] + d <= gw && self.background_strip(true, b[2] + d - 1, b[1], b[3])
                        }
                        _ => {
                            b[3] + d <= gh && self.background_strip(false, b[3] + d - 1, b[0], b[2])
                        }
                    }
                };
                let step = if strip(1) {
                    1
                } else if first && strip(2) {
                    2
                } else {
                    open[side] = false;
                    continue;
                };
                if side < 2 {
                    b[side] -= step;
                } else {
                    b[side] += step;
                }
            }
            first = false;
        }
        b
    }

    /// Whether grid column (`column`) or row `at`, blocks `from..to` along it, is screen
    /// background with at most sparse overlay: mostly background blocks, and no run of flat
    /// non-background or colour blocks (a panel, band or colour bar) a quarter of its length.
    fn background_strip(&self, column: bool, at: usize, from: usize, to: usize) -> bool {
        let (gw, bg) = (self.gw, self.bg);
        let len = to.saturating_sub(from);
        if len == 0 {
            return false;
        }
        let (mut background, mut run, mut longest) = (0usize, 0usize, 0usize);
        for k in from..to {
            let i = if column { k * gw + at } else { at * gw + k };
            let (lo, hi, colour) = (self.lo[i], self.hi[i], self.colour[i]);
            let is_bg = colour == 0
                && lo.abs_diff(bg) < FOREGROUND_DELTA
                && hi.abs_diff(bg) < FOREGROUND_DELTA;
            background += usize::from(is_bg);
            // Flat at another grey, or colour only (then lo > hi).
            let panel = !is_bg && ((colour == 0 && lo == hi) || lo > hi);
            run = if panel { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        background as f32 >= STRIP_BG_FRACTION * len as f32
            && (longest as f32) < BAND_RUN_FRACTION * len as f32
    }

    fn block_pixels(&self, gx: usize, gy: usize, frame: &GreyFrame) -> u64 {
        let b = self.block as usize;
        let w = (frame.width() as usize).min((gx + 1) * b) - gx * b;
        let h = (frame.height() as usize).min((gy + 1) * b) - gy * b;
        (w * h) as u64
    }

    /// Per-block grey range, sum and colour count; sets `textured`.
    fn block_stats(&mut self, frame: &GreyFrame) {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let long = w.max(h) as u32;
        // At least 2x2 pixels: texture is a difference between pixels.
        self.block = long.div_ceil(GRID_LONG).max(2);
        (self.frame_w, self.frame_h) = (frame.width(), frame.height());
        let b = self.block as usize;
        let (gw, gh) = (w.div_ceil(b), h.div_ceil(b));
        self.gw = gw;
        self.gh = gh;
        let n = gw * gh;
        self.lo.clear();
        self.lo.resize(n, 255);
        self.hi.clear();
        self.hi.resize(n, 0);
        self.sum.clear();
        self.sum.resize(n, 0);
        self.colour.clear();
        self.colour.resize(n, 0);
        let grey = frame.grey();
        let colour = frame.colour_mask();
        let bg = background_level(frame);
        self.bg = bg;
        for y in 0..h {
            let gy = y / b;
            let row = &grey[y * w..(y + 1) * w];
            let lo = &mut self.lo[gy * gw..(gy + 1) * gw];
            let hi = &mut self.hi[gy * gw..(gy + 1) * gw];
            let sum = &mut self.sum[gy * gw..(gy + 1) * gw];
            match colour {
                None => {
                    for (gx, chunk) in row.chunks(b).enumerate() {
                        let (mut l, mut hh, mut s) = (lo[gx], hi[gx], 0u32);
                        for &p in chunk {
                            l = l.min(p);
                            hh = hh.max(p);
                            s += u32::from(p);
                        }
                        lo[gx] = l;
                        hi[gx] = hh;
                        sum[gx] += s;
                    }
                }
                Some(mask) => {
                    let mrow = &mask[y * w..(y + 1) * w];
                    let col = &mut self.colour[gy * gw..(gy + 1) * gw];
                    for (gx, (chunk, mchunk)) in row.chunks(b).zip(mrow.chunks(b)).enumerate() {
                        let (mut l, mut hh, mut s, mut c) = (lo[gx], hi[gx], 0u32, 0u32);
                        for (&p, &m) in chunk.iter().zip(mchunk) {
                            if m != 0 {
                                c += 1;
                            } else {
                                l = l.min(p);
                                hh = hh.max(p);
                                s += u32::from(p);
                            }
                        }
                        lo[gx] = l;
                        hi[gx] = hh;
                        sum[gx] += s;
                        col[gx] += c;
                    }
                }
            }
        }
        self.textured.clear();
        self.textured.resize(n, 0);
        self.foreground.clear();
        self.foreground.resize(n, 0);
        let full = (b * b) as u32;
        for i in 0..n {
            let (lo, hi) = (self.lo[i], self.hi[i]);
            let range = hi.saturating_sub(lo);
            let mostly_grey = self.colour[i] * 2 < full && hi >= lo;
            self.textured[i] = u8::from(mostly_grey && range >= TEXTURE_RANGE);
            let off = hi.saturating_sub(bg).max(bg.saturating_sub(lo));
            self.foreground[i] = u8::from(mostly_grey && off >= FOREGROUND_DELTA);
        }
        self.clear_bars();
    }

    /// Takes UI bars out of the foreground: in a grid row (or column) where blocks flat at
    /// one grey, greyer than "no echo", cover [`BAR_FRACTION`] of the frame's width (height)
    /// and reach its edge, those blocks are a header bar or side panel. Left in, a bar
    /// touching the image joins it into one component and the crop takes in the bar.
    /// Speckle, even smoothed, is never flat at one grey across that much of a row; the
    /// bar's text, thin, goes in the opening.
    fn clear_bars(&mut self) {
        let (gw, gh) = (self.gw, self.gh);
        if gw == 0 || gh == 0 {
            return;
        }
        // Bar blocks are marked in `bars` (the `tmp` buffer) first, so rows and columns are
        // judged on the same foreground.
        let mut bars = std::mem::take(&mut self.tmp);
        bars.clear();
        bars.resize(gw * gh, 0);
        let bar_level = |i: usize| {
            self.flat_level(i)
                .filter(|&v| v > IMAGE_BLACK_MAX && v < SATURATED)
        };
        for column in [false, true] {
            let (lines, len) = if column { (gw, gh) } else { (gh, gw) };
            for line in 0..lines {
                let at = |k: usize| if column { k * gw + line } else { line * gw + k };
                // A bar reaches the frame's edge (a band inside the image, a reverberation of
                // a probe in air, does not): its grey is that of an end block.
                let (first, last) = (bar_level(at(0)), bar_level(at(len - 1)));
                for level in [first, last.filter(|&l| Some(l) != first)]
                    .into_iter()
                    .flatten()
                {
                    let count = (0..len)
                        .filter(|&k| bar_level(at(k)) == Some(level))
                        .count();
                    if (count as f32) < BAR_FRACTION * len as f32 {
                        continue;
                    }
                    for k in 0..len {
                        if bar_level(at(k)) == Some(level) {
                            bars[at(k)] = 1;
                        }
                    }
                }
            }
        }
        for (f, &b) in self.foreground.iter_mut().zip(&bars) {
            *f &= u8::from(b == 0);
        }
        self.tmp = bars;
    }

    /// 4-connected components of `opened`; writes the best scored ones into `top` (best
    /// first; labels start at 1) and returns how many. Explicit stack: no recursion.
    fn label(&mut self, top: &mut [Comp; MAX_COMPS]) -> usize {
        let (gw, gh) = (self.gw, self.gh);
        let n = gw * gh;
        self.labels.clear();
        self.labels.resize(n, 0);
        let mut comps = std::mem::take(&mut self.comps);
        comps.clear();
        let mut next = 0u32;
        for start in 0..n {
            if self.opened[start] == 0 || self.labels[start] != 0 {
                continue;
            }
            next += 1;
            let mut bbox = [usize::MAX, usize::MAX, 0, 0];
            self.stack.clear();
            self.stack.push(start as u32);
            self.labels[start] = next;
            while let Some(i) = self.stack.pop() {
                let i = i as usize;
                let (x, y) = (i % gw, i / gw);
                bbox = [
                    bbox[0].min(x),
                    bbox[1].min(y),
                    bbox[2].max(x + 1),
                    bbox[3].max(y + 1),
                ];
                let visit = |j: usize, labels: &mut Vec<u32>, stack: &mut Vec<u32>| {
                    if self.opened[j] != 0 && labels[j] == 0 {
                        labels[j] = next;
                        stack.push(j as u32);
                    }
                };
                if x > 0 {
                    visit(i - 1, &mut self.labels, &mut self.stack);
                }
                if x + 1 < gw {
                    visit(i + 1, &mut self.labels, &mut self.stack);
                }
                if y > 0 {
                    visit(i - gw, &mut self.labels, &mut self.stack);
                }
                if y + 1 < gh {
                    visit(i + gw, &mut self.labels, &mut self.stack);
                }
            }
            comps.push(Comp {
                label: next,
                score: 0,
                bbox,
            });
        }
        // Score components by textured blocks: flat panels are not images.
        for (i, &l) in self.labels.iter().enumerate() {
            if l != 0 && self.textured[i] != 0 {
                comps[l as usize - 1].score += 1;
            }
        }
        comps.sort_unstable_by(|a, b| b.score.cmp(&a.score).then(a.label.cmp(&b.label)));
        let found = comps.len().min(MAX_COMPS);
        top[..found].copy_from_slice(&comps[..found]);
        self.comps = comps;
        found
    }

    /// Writes the union of components `labels`, made row- and column-convex, into `pane`
    /// (cleared first); returns its grid box `[x0, y0, x1, y1]` (exclusive ends).
    fn fill_convex(&mut self, labels: &[u32]) -> [usize; 4] {
        let (gw, gh) = (self.gw, self.gh);
        let mut b = [usize::MAX, usize::MAX, 0, 0];
        self.tmp.clear();
        self.tmp.resize(gw * gh, 0);
        self.pane.clear();
        self.pane.resize(gw * gh, 0);
        // Row spans.
        for y in 0..gh {
            let row = &self.labels[y * gw..(y + 1) * gw];
            let first = row.iter().position(|l| labels.contains(l));
            let last = row.iter().rposition(|l| labels.contains(l));
            if let (Some(a), Some(z)) = (first, last) {
                self.tmp[y * gw + a..=y * gw + z].fill(1);
                b = [b[0].min(a), b[1].min(y), b[2].max(z + 1), b[3].max(y + 1)];
            }
        }
        // Column spans of the row-filled shape.
        for x in b[0]..b[2] {
            let mut first = None;
            let mut last = None;
            for y in b[1]..b[3] {
                if self.tmp[y * gw + x] != 0 {
                    first.get_or_insert(y);
                    last = Some(y);
                }
            }
            if let (Some(a), Some(z)) = (first, last) {
                for y in a..=z {
                    self.pane[y * gw + x] = 1;
                }
            }
        }
        if b[0] == usize::MAX {
            return [0; 4];
        }
        b
    }

    /// Fits a sector (two straight sides meeting at an apex, near and far arcs) to the pane
    /// mask; on success replaces the pane by the model (which restores parts of the fan that
    /// were black, e.g. blood pools at its edge) and returns the new grid box.
    fn fit_sector(&mut self, b: [usize; 4]) -> Option<[usize; 4]> {
        let (gw, gh) = (self.gw, self.gh);
        let h = b[3] - b[1];
        if h < 10 {
            return None;
        }
        // Left and right edges of rows in the upper part, where both sides are straight.
        let (y_from, y_to) = (b[1] + h * 15 / 100, b[1] + h * 55 / 100);
        let mut fit = [[0f64; 5]; 2]; // n, sy, syy, sx, sxy per side
        for y in y_from..y_to {
            let row = &self.pane[y * gw..(y + 1) * gw];
            let (Some(l), Some(r)) = (
                row.iter().position(|&m| m != 0),
                row.iter().rposition(|&m| m != 0),
            ) else {
                continue;
            };
            let yf = y as f64 + 0.5;
            for (side, x) in [(0, l as f64), (1, r as f64 + 1.0)] {
                let f = &mut fit[side];
                f[0] += 1.0;
                f[1] += yf;
                f[2] += yf * yf;
                f[3] += x;
                f[4] += x * yf;
            }
        }
        let line = |f: [f64; 5]| -> Option<(f64, f64)> {
            let det = f[0] * f[2] - f[1] * f[1];
            if f[0] < 5.0 || det.abs() < 1e-9 {
                return None;
            }
            let slope = (f[0] * f[4] - f[1] * f[3]) / det;
            Some(((f[3] - slope * f[1]) / f[0], slope))
        };
        let (al, bl) = line(fit[0])?;
        let (ar, br) = line(fit[1])?;
        if bl > -0.2 || br < 0.2 {
            return None; // sides not diverging: not a sector
        }
        // Residuals must be small: straight sides.
        let mut resid = 0.0;
        let mut rows = 0.0;
        for y in y_from..y_to {
            let row = &self.pane[y * gw..(y + 1) * gw];
            if let (Some(l), Some(r)) = (
                row.iter().position(|&m| m != 0),
                row.iter().rposition(|&m| m != 0),
            ) {
                let yf = y as f64 + 0.5;
                resid +=
                    (l as f64 - (al + bl * yf)).abs() + (r as f64 + 1.0 - (ar + br * yf)).abs();
                rows += 2.0;
            }
        }
        if rows == 0.0 || resid / rows > 1.5 {
            return None;
        }
        let apex_y = (al - ar) / (br - bl);
        let apex_x = al + bl * apex_y;
        if apex_y > b[1] as f64 + 0.25 * h as f64 {
            return None;
        }
        let (mut r_min, mut r_max, mut total) = (f64::MAX, 0f64, 0usize);
        for y in b[1]..b[3] {
            for x in b[0]..b[2] {
                if self.pane[y * gw + x] != 0 {
                    let d = ((x as f64 + 0.5 - apex_x).powi(2) + (y as f64 + 0.5 - apex_y).powi(2))
                        .sqrt();
                    r_min = r_min.min(d);
                    r_max = r_max.max(d);
                    total += 1;
                }
            }
        }
        // Draw the model; keep it only if it covers nearly all of the detected pane.
        self.tmp.clear();
        self.tmp.resize(gw * gh, 0);
        let mut nb = [usize::MAX, usize::MAX, 0, 0];
        let mut covered = 0usize;
        for y in b[1]..gh {
            let cy = y as f64 + 0.5;
            let (xl, xr) = (al + bl * cy - 0.5, ar + br * cy + 0.5);
            let x0 = xl.max(0.0).floor() as usize;
            let x1 = (xr.ceil().max(0.0) as usize).min(gw);
            for x in x0..x1 {
                let cx = x as f64 + 0.5;
                let d = ((cx - apex_x).powi(2) + (cy - apex_y).powi(2)).sqrt();
                if cx >= xl && cx <= xr && d >= r_min - 0.5 && d <= r_max + 0.5 {
                    self.tmp[y * gw + x] = 1;
                    covered += usize::from(self.pane[y * gw + x] != 0);
                    nb = [
                        nb[0].min(x),
                        nb[1].min(y),
                        nb[2].max(x + 1),
                        nb[3].max(y + 1),
                    ];
                }
            }
        }
        if nb[0] == usize::MAX || (covered as f64) < 0.9 * total as f64 {
            return None;
        }
        std::mem::swap(&mut self.pane, &mut self.tmp);
        Some(nb)
    }

    /// Moves each edge of a rectangular pane box, by at most two blocks inward, to the last
    /// pixel row/column where most pixels differ from the background: block-quantised edges
    /// would otherwise take in text that touches the image.
    fn refine_edges(&mut self, frame: &GreyFrame, b: [u32; 4]) -> [u32; 4] {
        let (w, grey, bg) = (frame.width() as usize, frame.grey(), self.bg);
        let reach = 2 * self.block;
        let fg = |p: u8| u32::from(p.abs_diff(bg) >= FOREGROUND_DELTA);
        let [x0, y0, x1, y1] = b;
        if x1 - x0 <= 2 * reach || y1 - y0 <= 2 * reach {
            return b;
        }
        // Column counts over the pane's rows, for the left and right bands.
        let cols = &mut self.dark_cols;
        cols.clear();
        cols.resize(2 * reach as usize, 0);
        for y in y0 as usize..y1 as usize {
            let row = &grey[y * w..(y + 1) * w];
            for i in 0..reach as usize {
                cols[i] += fg(row[x0 as usize + i]);
                cols[reach as usize + i] += fg(row[(x1 - reach) as usize + i]);
            }
        }
        let half_h = (y1 - y0) / 2;
        let left = (0..reach)
            .find(|&i| cols[i as usize] > half_h)
            .map_or(x0, |i| x0 + i);
        let right = (0..reach)
            .rev()
            .find(|&i| cols[(reach + i) as usize] > half_h)
            .map_or(x1, |i| x1 - reach + i + 1);
        // Row counts over the refined columns, for the top and bottom bands.
        let half_w = (right - left) / 2;
        // A row of one grey is the edge of a UI bar, not image, however far from background.
        let row_fg = |y: u32| -> u32 {
            let row = &grey[y as usize * w + left as usize..y as usize * w + right as usize];
            if row.iter().all(|&p| p == row[0]) {
                return 0;
            }
            row.iter().map(|&p| fg(p)).sum()
        };
        let top = (y0..y0 + reach).find(|&y| row_fg(y) > half_w).unwrap_or(y0);
        let bottom = (y1 - reach..y1)
            .rev()
            .find(|&y| row_fg(y) > half_w)
            .map_or(y1, |y| y + 1);
        if right <= left || bottom <= top {
            return b;
        }
        [left, top, right, bottom]
    }

    fn to_pixels(&self, b: [usize; 4], frame: &GreyFrame) -> [u32; 4] {
        let s = self.block;
        [
            b[0] as u32 * s,
            b[1] as u32 * s,
            ((b[2] as u32) * s).min(frame.width()),
            ((b[3] as u32) * s).min(frame.height()),
        ]
    }

    /// Sector when the top of the shape is clearly narrower than its widest row.
    fn kind_of(&self, b: [usize; 4]) -> ScanKind {
        let gw = self.gw;
        let width = |y: usize| {
            let row = &self.mask[y * gw + b[0]..y * gw + b[2]];
            row.iter().filter(|&&m| m != 0).count()
        };
        let h = b[3] - b[1];
        let widest = (b[1]..b[3]).map(width).max().unwrap_or(0).max(1);
        let top_rows = (h / 10).max(1);
        let top = (b[1]..b[1] + top_rows).map(width).sum::<usize>() / top_rows;
        if (top as f32) < SECTOR_TOP_RATIO * widest as f32 {
            ScanKind::Sector
        } else {
            ScanKind::Linear
        }
    }
}

/// The screen's background grey: the most common value on the frame's outer rim (2% of
/// each side), where user interface background and not image usually lies.
fn background_level(frame: &GreyFrame) -> u8 {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let grey = frame.grey();
    let colour = frame.colour_mask();
    let (rx, ry) = ((w / 50).max(1), (h / 50).max(1));
    let mut hist = [0u32; 256];
    let mut add = |x: usize, y: usize| {
        let i = y * w + x;
        if colour.is_none_or(|c| c[i] == 0) {
            hist[usize::from(grey[i])] += 1;
        }
    };
    for y in 0..h {
        if y < ry || y >= h - ry {
            for x in 0..w {
                add(x, y);
            }
        } else {
            for x in (0..rx).chain(w - rx..w) {
                add(x, y);
            }
        }
    }
    let mut best = 0;
    for v in 1..256 {
        if hist[v] > hist[best] {
            best = v;
        }
    }
    best as u8
}

/// Looks for a thin (at most 4 px), almost entirely dark column in the middle half of a
/// pane box: the divider of two images shown side by side. Returns its first x. Column
/// counts are gathered row by row (cache friendly) into `dark`, a reused buffer.
fn split_column(frame: &GreyFrame, b: [u32; 4], dark: &mut Vec<u32>) -> Option<u32> {
    let (w, grey) = (frame.width() as usize, frame.grey());
    let bw = b[2] - b[0];
    let bh = b[3] - b[1];
    if bw < 40 || bh < 20 {
        return None;
    }
    let (x0, x1) = (b[0] as usize, b[2] as usize);
    dark.clear();
    dark.resize(x1 - x0, 0);
    for y in b[1] as usize..b[3] as usize {
        for (d, &p) in dark.iter_mut().zip(&grey[y * w + x0..y * w + x1]) {
            *d += u32::from(p <= 8);
        }
    }
    let is_dark = |x: u32| dark[(x - b[0]) as usize] * 10 >= bh * 9;
    let is_bright = |x: u32| dark[(x - b[0]) as usize] * 2 < bh;
    let (from, to) = (b[0] + bw / 4, b[0] + bw * 3 / 4);
    let mut x = from;
    while x < to {
        if is_dark(x) {
            let mut end = x + 1;
            while end < to && is_dark(end) {
                end += 1;
            }
            if end - x <= 4 && is_bright(x - 6) && is_bright(end + 5) {
                return Some(x);
            }
            x = end;
        }
        x += 1;
    }
    None
}

/// Separable square erosion (`min = true`) or dilation of a 0/1 grid with radius `r`.
/// Beyond the grid edge counts as neutral (1 for erosion, 0 for dilation), so an image area
/// touching the frame edge is not eaten away from that side. Running window counts: the cost
/// does not depend on `r`.
fn min_max_filter(m: &mut [u8], tmp: &mut Vec<u8>, gw: usize, gh: usize, r: usize, min: bool) {
    tmp.clear();
    tmp.resize(gw * gh, 0);
    // Horizontal pass via running counts.
    for y in 0..gh {
        let row = &m[y * gw..(y + 1) * gw];
        let out = &mut tmp[y * gw..(y + 1) * gw];
        running(row, out, r, min);
    }
    for x in 0..gw {
        // Vertical pass: gather column, filter, scatter.
        let mut count = 0usize;
        let win = |y: isize| -> u8 {
            if y < 0 || y as usize >= gh {
                u8::from(min) // beyond the edge: neutral
            } else {
                tmp[y as usize * gw + x]
            }
        };
        for y in -(r as isize)..=(r as isize) {
            count += usize::from(win(y));
        }
        for y in 0..gh {
            let full = 2 * r + 1;
            m[y * gw + x] = u8::from(if min { count == full } else { count > 0 });
            let yi = y as isize;
            count += usize::from(win(yi + r as isize + 1));
            count -= usize::from(win(yi - r as isize));
        }
    }
}

/// One row of [`min_max_filter`].
fn running(row: &[u8], out: &mut [u8], r: usize, min: bool) {
    let n = row.len();
    let at = |x: isize| -> u8 {
        if x < 0 || x as usize >= n {
            u8::from(min)
        } else {
            row[x as usize]
        }
    };
    let mut count = 0usize;
    for x in -(r as isize)..=(r as isize) {
        count += usize::from(at(x));
    }
    let full = 2 * r + 1;
    for (x, o) in out.iter_mut().enumerate() {
        *o = u8::from(if min { count == full } else { count > 0 });
        let xi = x as isize;
        count += usize::from(at(xi + r as isize + 1));
        count -= usize::from(at(xi - r as isize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{paint_panel, screen, FanShape};

    fn sector() -> FanShape {
        FanShape::Sector {
            apex_x: 330.0,
            apex_y: -20.0,
            half_angle: 0.65,
            r0: 70.0,
            r1: 440.0,
        }
    }

    #[test]
    fn synthetic_sector_with_text_is_found() {
        let mut text = Vec::new();
        let f = screen(640, 480, sector(), 11, &mut text);
        let truth = sector().bbox(640, 480);
        let mut d = Detector::default();
        let a = d.detect(&f);
        assert_eq!(a.kind, ScanKind::Sector, "{a:?}");
        assert!(iou(a.bbox, truth) >= 0.9, "{:?} vs {truth:?}", a.bbox);
        assert!(!a.no_anatomy);
        // No text pixel lies inside the detected area.
        assert!(!text.is_empty());
        for t in &text {
            for y in t[1]..t[3] {
                for x in t[0]..t[2] {
                    assert!(!d.inside(x, y) || sector().contains(x as f32 + 0.5, y as f32 + 0.5));
                }
            }
        }
    }

    #[test]
    fn a_detached_area_mask_agrees_with_the_detector() {
        let f = screen(640, 480, sector(), 11, &mut Vec::new());
        let mut d = Detector::default();
        d.detect(&f);
        let m = d.area_mask();
        let mut inside = 0;
        for y in 0..480 {
            for x in 0..640 {
                assert_eq!(m.inside(x, y), d.inside(x, y), "({x}, {y})");
                inside += usize::from(m.inside(x, y));
            }
        }
        assert!(inside > 640 * 480 / 4, "{inside}");
        assert!(!AreaMask::default().inside(0, 0));
    }

    #[test]
    fn synthetic_linear_is_found() {
        let shape = FanShape::Linear([200, 60, 520, 460]);
        let f = screen(720, 480, shape, 5, &mut Vec::new());
        let a = detect_scan_area(&f);
        assert_eq!(a.kind, ScanKind::Linear, "{a:?}");
        assert!(iou(a.bbox, [200, 60, 520, 460]) >= 0.9, "{:?}", a.bbox);
        assert_eq!(a.pane_count, 1);
    }

    #[test]
    fn side_by_side_panes_are_reported() {
        let left = FanShape::Linear([40, 80, 300, 440]);
        let right = FanShape::Linear([360, 80, 620, 440]);
        let a = screen(660, 480, left, 3, &mut Vec::new());
        let b = screen(660, 480, right, 4, &mut Vec::new());
        let px: Vec<u8> = a
            .grey()
            .iter()
            .zip(b.grey())
            .map(|(&p, &q)| p.max(q))
            .collect();
        let f = GreyFrame::from_grey(660, 480, px).unwrap();
        let area = detect_scan_area(&f);
        assert_eq!(area.pane_count, 2, "{area:?}");
        assert!(iou(area.panes()[0], [40, 80, 300, 440]) >= 0.9);
        assert!(iou(area.panes()[1], [360, 80, 620, 440]) >= 0.9);
    }

    #[test]
    fn blank_or_text_only_frames_have_no_anatomy() {
        let black = GreyFrame::from_grey(320, 240, vec![0; 320 * 240]).unwrap();
        let a = detect_scan_area(&black);
        assert!(a.no_anatomy);
        assert_eq!(a.kind, ScanKind::None);
        // Text and bars only: the image area is empty (probe in air).
        let shape = FanShape::Linear([100, 40, 260, 200]);
        let mut f = screen(320, 240, shape, 9, &mut Vec::new());
        let (w, h) = (f.width(), f.height());
        for y in 0..h {
            for x in 0..w {
                if shape.contains(x as f32 + 0.5, y as f32 + 0.5) {
                    f.grey_mut()[(y * w + x) as usize] = 0;
                }
            }
        }
        assert!(detect_scan_area(&f).no_anatomy);
    }

    #[test]
    fn colour_pixels_are_not_image() {
        // A big saturated colour block (a logo, a colour bar) next to a small grey image.
        let shape = FanShape::Linear([300, 100, 460, 300]);
        let g = screen(480, 360, shape, 2, &mut Vec::new());
        let mut rgb: Vec<u8> = g.grey().iter().flat_map(|&v| [v, v, v]).collect();
        for y in 20..340 {
            for x in 20..260 {
                let i = 3 * (y * 480 + x);
                rgb[i..i + 3].copy_from_slice(&[200, (x % 7 * 20) as u8, 30]);
            }
        }
        let f = GreyFrame::from_rgb(480, 360, &rgb).unwrap();
        let a = detect_scan_area(&f);
        assert!(iou(a.bbox, [300, 100, 460, 300]) >= 0.9, "{a:?}");
    }

    /// `image_area` matches `truth` (IoU >= 0.9) and contains a found `bbox`.
    fn assert_image_area(a: &ScanArea, truth: [u32; 4]) {
        let v = iou(a.image_area, truth);
        println!("image area {:?} vs {truth:?}: IoU {v:.3}", a.image_area);
        assert!(v >= 0.9, "{:?} vs {truth:?}: IoU {v:.3}", a.image_area);
        let (o, i) = (a.image_area, a.bbox);
        let contains = o[0] <= i[0] && o[1] <= i[1] && o[2] >= i[2] && o[3] >= i[3];
        assert!(i == [0; 4] || contains, "{a:?}");
    }

    /// Image region on the screen background: a grey header band and a side panel (with
    /// text) around a black display rectangle; the sector's box grows to the panels and the
    /// frame edge, past the text and ticks on the black. (Panel edges lie on the 4-px block
    /// grid: a band whose edge cuts blocks scores as texture and can join the pane, a limit
    /// of the pane detector, not of the image region.)
    #[test]
    fn image_region_between_ui_panels_is_found() {
        let shape = FanShape::Sector {
            apex_x: 340.0,
            apex_y: 40.0,
            half_angle: 0.6,
            r0: 40.0,
            r1: 500.0,
        };
        let mut text = Vec::new();
        let mut f = screen(800, 600, shape, 7, &mut text);
        paint_panel(&mut f, [0, 0, 800, 52], 48, 200, 1);
        paint_panel(&mut f, [680, 52, 800, 400], 48, 200, 2);
        let display = [0, 52, 680, 600];
        let a = detect_scan_area(&f);
        assert_eq!(a.kind, ScanKind::Sector, "{a:?}");
        assert!(iou(a.bbox, shape.bbox(800, 600)) >= 0.9, "{a:?}");
        assert_image_area(&a, display);
    }

    /// A full-width header bar (flat grey with text) touching the top of a linear image, on
    /// a block grid the bar's edge cuts: the bar is screen furniture, so the pane and the
    /// crop start at the image's first row, not at the frame's corner.
    #[test]
    fn a_header_bar_touching_the_image_is_left_out() {
        let truth = [150, 40, 560, 440];
        let mut f = screen(640, 480, FanShape::Linear(truth), 21, &mut Vec::new());
        paint_panel(&mut f, [0, 0, 640, 40], 40, 230, 3);
        let a = detect_scan_area(&f);
        assert_eq!(a.kind, ScanKind::Linear, "{a:?}");
        assert_eq!(a.bbox[1], 40, "{a:?}");
        assert!(iou(a.bbox, truth) >= 0.95, "{a:?}");
    }

    /// A header bar above a sector on a wide screen, apart from the fan: a piece of its own
    /// that must not be joined to the fan as if it were the image's upper part.
    #[test]
    fn a_header_bar_above_a_sector_is_not_joined_to_it() {
        let shape = FanShape::Sector {
            apex_x: 720.0,
            apex_y: 60.0,
            half_angle: 0.63,
            r0: 60.0,
            r1: 520.0,
        };
        let mut f = screen(1440, 900, shape, 8, &mut Vec::new());
        paint_panel(&mut f, [0, 0, 1440, 40], 40, 230, 4);
        let a = detect_scan_area(&f);
        assert_eq!(a.kind, ScanKind::Sector, "{a:?}");
        assert!(iou(a.bbox, shape.bbox(1440, 900)) >= 0.9, "{a:?}");
    }

    /// Image region drawn at its own black (0) on a screen one grey level up (1), as SonoSite
    /// does: the region is the extent of that black around the fan, not the whole screen.
    #[test]
    fn image_region_at_its_own_black_is_found() {
        let mut f = screen(640, 480, sector(), 11, &mut Vec::new());
        let display = [40, 10, 620, 460];
        let w = f.width();
        for (i, p) in f.grey_mut().iter_mut().enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            let inside = x >= display[0] && x < display[2] && y >= display[1] && y < display[3];
            if !inside && *p == 0 {
                *p = 1;
            }
        }
        let a = detect_scan_area(&f);
        assert_eq!(a.kind, ScanKind::Sector, "{a:?}");
        assert_image_area(&a, display);
    }

    /// An image region without echoes (a sector drawn at grey 1 on a black screen, probe in
    /// air) has an image area but no pane.
    #[test]
    fn empty_image_region_is_reported_without_a_pane() {
        let mut f = screen(640, 480, sector(), 3, &mut Vec::new());
        let (w, h) = (f.width(), f.height());
        for y in 0..h {
            for x in 0..w {
                if sector().contains(x as f32 + 0.5, y as f32 + 0.5) {
                    f.grey_mut()[(y * w + x) as usize] = 1;
                }
            }
        }
        let a = detect_scan_area(&f);
        assert_eq!(a.kind, ScanKind::None, "{a:?}");
        assert_eq!(a.bbox, [0; 4]);
        assert_image_area(&a, sector().bbox(w, h));
        // A black frame has neither.
        let black = GreyFrame::from_grey(320, 240, vec![0; 320 * 240]).unwrap();
        assert_eq!(detect_scan_area(&black).image_area, [0; 4]);
    }

    #[test]
    fn iou_of_boxes() {
        assert_eq!(iou([0, 0, 10, 10], [0, 0, 10, 10]), 1.0);
        assert_eq!(iou([0, 0, 10, 10], [10, 10, 20, 20]), 0.0);
        assert!((iou([0, 0, 10, 10], [5, 0, 15, 10]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
