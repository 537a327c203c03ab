//! B-mode image formation: tissue map -> scatterers -> PSF -> envelope -> TGC -> log
//! compression -> scan conversion.
//!
//! The simulation runs at baseband (IQ), as a scanner's beamformer output does: the axial
//! Gabor pulse becomes its Gaussian envelope and each grid cell holds a circular complex
//! Gaussian amplitude scaled by the local echogenicity (the sum of many sub-resolution
//! scatterers). Convolving that field with the PSF and taking the magnitude gives fully
//! developed speckle with Rayleigh statistics, which is the physics that makes ultrasound
//! look like ultrasound. Specular reflectors (capsule, stone surface, bone) add a coherent
//! component instead. Attenuation is integrated along each beam, so shadows behind stones
//! and enhancement behind fluid arise by themselves, not by painting.

use crate::profile::{Geometry, Profile};
use crate::rng::Rand;

/// Acoustic properties at one point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tissue {
    /// Diffuse backscatter relative to liver, dB.
    pub echo_db: f32,
    /// Attenuation, dB/cm/MHz (one way).
    pub atten: f32,
    /// Coherent (specular) reflection strength, dB; [`Tissue::NO_SPEC`] for none.
    pub spec_db: f32,
}

impl Tissue {
    pub const NO_SPEC: f32 = -200.0;

    pub const fn new(echo_db: f32, atten: f32) -> Self {
        Tissue {
            echo_db,
            atten,
            spec_db: Self::NO_SPEC,
        }
    }

    pub const fn spec(mut self, spec_db: f32) -> Self {
        self.spec_db = spec_db;
        self
    }
}

/// Anything that can say what tissue is at a point.
///
/// `x` is lateral and `z` depth below the skin at the probe centre, both in cm; `dir` is
/// the unit beam direction there (specular echoes depend on incidence angle).
pub trait TissueMap {
    fn tissue(&self, x: f32, z: f32, dir: (f32, f32)) -> Tissue;
}

/// Uniform medium, for calibration and tests.
pub struct Homogeneous(pub Tissue);

impl TissueMap for Homogeneous {
    fn tissue(&self, _x: f32, _z: f32, _dir: (f32, f32)) -> Tissue {
        self.0
    }
}

/// Per-acquisition settings a sonographer (or the stream's probe state) controls.
#[derive(Clone, Debug)]
pub struct Acquisition {
    pub depth_cm: f32,
    pub focus_cm: f32,
    /// Overall gain added to the profile's, dB.
    pub gain_db: f32,
    pub dynamic_range_db: f32,
    /// Relative error of the TGC slope against true attenuation (0 = exact).
    pub tgc_err: f32,
    /// TGC slider offsets (dB) at evenly spaced depths, linearly interpolated.
    pub tgc_sliders: [f32; 5],
    /// Whether TGC and attenuation are on (off for calibration tests).
    pub attenuation: bool,
    /// Whether electronic noise is added.
    pub noise: bool,
}

impl Acquisition {
    /// Neutral settings for a profile at a given depth.
    pub fn neutral(profile: &Profile, depth_cm: f32) -> Self {
        Acquisition {
            depth_cm,
            focus_cm: depth_cm * 0.5,
            gain_db: 0.0,
            dynamic_range_db: profile.dynamic_range_db,
            tgc_err: 0.0,
            tgc_sliders: [0.0; 5],
            attenuation: true,
            noise: true,
        }
    }
}

/// Position and unit direction of sample `r` (cm along the beam) on beam `b`.
#[derive(Clone, Copy, Debug)]
pub struct BeamGrid {
    pub geometry: BeamGeom,
    pub beams: usize,
    pub samples: usize,
    pub depth_cm: f32,
}

#[derive(Clone, Copy, Debug)]
pub enum BeamGeom {
    Convex { radius: f32, half: f32 },
    Linear { width: f32 },
}

impl BeamGrid {
    pub fn new(profile: &Profile, depth_cm: f32) -> Self {
        let geometry = match profile.geometry {
            Geometry::Convex {
                radius_cm,
                sector_deg,
            } => BeamGeom::Convex {
                radius: radius_cm,
                half: sector_deg.to_radians() * 0.5,
            },
            Geometry::Linear { width_cm } => BeamGeom::Linear { width: width_cm },
        };
        BeamGrid {
            geometry,
            beams: profile.beams,
            samples: profile.samples,
            depth_cm,
        }
    }

    pub fn dr(&self) -> f32 {
        self.depth_cm / self.samples as f32
    }

    /// Beam angle (convex) or lateral position (linear) of beam `b`.
    pub fn beam_coord(&self, b: f32) -> f32 {
        let t = (b + 0.5) / self.beams as f32;
        match self.geometry {
            BeamGeom::Convex { half, .. } => -half + 2.0 * half * t,
            BeamGeom::Linear { width } => -0.5 * width + width * t,
        }
    }

    /// (x, z, dir) of a point `r` cm down beam `b`.
    pub fn point(&self, b: usize, r: f32) -> (f32, f32, (f32, f32)) {
        let c = self.beam_coord(b as f32);
        match self.geometry {
            BeamGeom::Convex { radius, .. } => {
                let (s, co) = libm::sincosf(c);
                let rr = radius + r;
                (rr * s, rr * co - radius, (s, co))
            }
            BeamGeom::Linear { .. } => (c, r, (0.0, 1.0)),
        }
    }

    /// Distance between neighbouring beams at depth `r`, cm.
    pub fn beam_spacing(&self, r: f32) -> f32 {
        match self.geometry {
            BeamGeom::Convex { radius, half } => (radius + r) * 2.0 * half / self.beams as f32,
            BeamGeom::Linear { width } => width / self.beams as f32,
        }
    }

    /// Relative lateral position of a beam in [-1, 1] (for edge roll-off).
    pub fn beam_frac(&self, b: usize) -> f32 {
        2.0 * (b as f32 + 0.5) / self.beams as f32 - 1.0
    }
}

/// Unit circular complex Gaussian scatterer field on the beam grid.
///
/// Kept separate from the tissue so a probe stream can evolve it slowly (speckle
/// decorrelates gradually as the probe moves) instead of redrawing it every frame.
#[derive(Clone, Debug)]
pub struct Speckle {
    pub re: Vec<f32>,
    pub im: Vec<f32>,
}

impl Speckle {
    pub fn new(n: usize, rng: &mut Rand) -> Self {
        let mut re = Vec::with_capacity(n);
        let mut im = Vec::with_capacity(n);
        const S: f32 = std::f32::consts::FRAC_1_SQRT_2;
        for _ in 0..n {
            let (a, b) = rng.normal2();
            re.push(a * S);
            im.push(b * S);
        }
        Speckle { re, im }
    }

    /// AR(1) step: keep correlation `rho` with the previous field, unit variance preserved.
    pub fn evolve(&mut self, rng: &mut Rand, rho: f32) {
        let k = (1.0 - rho * rho).max(0.0).sqrt() * std::f32::consts::FRAC_1_SQRT_2;
        for (re, im) in self.re.iter_mut().zip(self.im.iter_mut()) {
            let (a, b) = rng.normal2();
            *re = rho * *re + k * a;
            *im = rho * *im + k * b;
        }
    }

    pub fn len(&self) -> usize {
        self.re.len()
    }

    pub fn is_empty(&self) -> bool {
        self.re.is_empty()
    }
}

/// Beamformed data on the polar grid, beam-major: `data[b * samples + s]`.
#[derive(Clone, Debug)]
pub struct Polar {
    pub beams: usize,
    pub samples: usize,
    pub data: Vec<f32>,
}

fn db_amp(db: f32) -> f32 {
    // 10^(db/20)
    libm::expf(db * (std::f32::consts::LN_10 / 20.0))
}

/// Gaussian kernel of unit energy (sum of squares 1), so diffuse speckle keeps its mean
/// intensity whatever the local beam width is.
fn unit_energy_gauss(sigma: f32, radius: usize) -> Vec<f32> {
    let sigma = sigma.max(0.3);
    let mut k: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            libm::expf(-d * d / (2.0 * sigma * sigma))
        })
        .collect();
    let e: f32 = k.iter().map(|v| v * v).sum::<f32>().sqrt();
    k.iter_mut().for_each(|v| *v /= e);
    k
}

const MAX_LAT_RADIUS: usize = 20;

/// Simulate the complex beamformed signal and return the envelope (linear amplitude).
///
/// # Panics
/// If `speckle` was not made for this profile's grid (`beams * samples` cells): a
/// programming error, not an input error.
pub fn envelope<M: TissueMap + ?Sized>(
    profile: &Profile,
    acq: &Acquisition,
    map: &M,
    speckle: &Speckle,
    rng: &mut Rand,
) -> Polar {
    let grid = BeamGrid::new(profile, acq.depth_cm);
    let (nb, ns) = (grid.beams, grid.samples);
    assert_eq!(
        speckle.len(),
        nb * ns,
        "speckle field does not match the beam grid"
    );
    let dr = grid.dr();
    let f0 = profile.freq_mhz;

    // Depth-dependent gain: TGC, sliders, focal brightening.
    let gain_depth: Vec<f32> = (0..ns)
        .map(|s| {
            let r = (s as f32 + 0.5) * dr;
            let mut g = acq.gain_db + profile.gain_db;
            if acq.attenuation {
                g += 2.0 * profile.tgc_db_cm_mhz * f0 * r * (1.0 + acq.tgc_err);
                let t = r / acq.depth_cm * 4.0;
                let i = (t.floor() as usize).min(3);
                let w = t - i as f32;
                g += acq.tgc_sliders[i] * (1.0 - w) + acq.tgc_sliders[i + 1] * w;
                let fz = (r - acq.focus_cm) / profile.focal_zone_cm;
                g += 1.5 * libm::expf(-fz * fz);
            }
            g
        })
        .collect();
    let edge: Vec<f32> = (0..nb)
        .map(|b| {
            let f = grid.beam_frac(b);
            let f2 = f * f;
            if acq.attenuation {
                -3.0 * f2 * f2 * f2
            } else {
                0.0
            }
        })
        .collect();

    // 1. Scatterer amplitudes with round-trip attenuation integrated along each beam.
    let n = nb * ns;
    let mut re = vec![0.0f32; n];
    let mut im = vec![0.0f32; n];
    for (b, edge_b) in edge.iter().enumerate() {
        let mut cum = 0.0f32;
        for (s, gd) in gain_depth.iter().enumerate() {
            let r = (s as f32 + 0.5) * dr;
            let (x, z, dir) = grid.point(b, r);
            let t = map.tissue(x, z, dir);
            let mut g = gd + edge_b;
            if acq.attenuation {
                // Echo from this cell has crossed the tissue above it (and half of itself).
                let here = t.atten * f0 * dr;
                g -= 2.0 * (cum + 0.5 * here);
                cum += here;
            }
            let i = b * ns + s;
            let a = db_amp(t.echo_db + g);
            re[i] = a * speckle.re[i];
            im[i] = a * speckle.im[i];
            if t.spec_db > Tissue::NO_SPEC + 1.0 {
                re[i] += db_amp(t.spec_db + g);
            }
        }
    }

    // 2. Axial PSF (pulse envelope), same for every depth.
    let sig_ax = profile.axial_fwhm_mm * 0.1 / 2.355 / dr;
    let ra = ((3.0 * sig_ax).ceil() as usize).max(1);
    let ka = unit_energy_gauss(sig_ax, ra);
    let mut tre = vec![0.0f32; n];
    let mut tim = vec![0.0f32; n];
    for b in 0..nb {
        let row = b * ns;
        for s in 0..ns {
            let (mut ar, mut ai) = (0.0f32, 0.0f32);
            let lo = s.saturating_sub(ra);
            let hi = (s + ra).min(ns - 1);
            for j in lo..=hi {
                let w = ka[j + ra - s];
                ar += w * re[row + j];
                ai += w * im[row + j];
            }
            tre[row + s] = ar;
            tim[row + s] = ai;
        }
    }

    // 3. Lateral PSF: Gaussian beam whose width grows away from the focus.
    let taps = 2 * MAX_LAT_RADIUS + 1;
    let mut wl = vec![0.0f32; taps * ns];
    let mut rmax = 0usize;
    for s in 0..ns {
        let r = (s as f32 + 0.5) * dr;
        let fz = (r - acq.focus_cm) / profile.focal_zone_cm;
        let sig_cm = profile.lateral_fwhm_mm * 0.1 / 2.355 * (1.0 + fz * fz).sqrt();
        let sig_b = sig_cm / grid.beam_spacing(r);
        let rad = ((3.0 * sig_b).ceil() as usize).clamp(1, MAX_LAT_RADIUS);
        rmax = rmax.max(rad);
        let k = unit_energy_gauss(sig_b, rad);
        for (j, v) in k.iter().enumerate() {
            wl[(j + MAX_LAT_RADIUS - rad) * ns + s] = *v;
        }
    }
    re.iter_mut().for_each(|v| *v = 0.0);
    im.iter_mut().for_each(|v| *v = 0.0);
    for b in 0..nb {
        let out = b * ns;
        for k in 0..=2 * rmax {
            let off = k as isize - rmax as isize;
            let src = b as isize + off;
            if src < 0 || src >= nb as isize {
                continue;
            }
            let src = src as usize * ns;
            let w = &wl[(k + MAX_LAT_RADIUS - rmax) * ns..][..ns];
            let (or, oi) = (&mut re[out..out + ns], &mut im[out..out + ns]);
            let (sr, si) = (&tre[src..src + ns], &tim[src..src + ns]);
            for s in 0..ns {
                or[s] += w[s] * sr[s];
                oi[s] += w[s] * si[s];
            }
        }
    }

    // 4. Electronic noise (white, amplified by TGC) and envelope detection.
    let mut data = vec![0.0f32; n];
    let noise_amp: Vec<f32> = gain_depth
        .iter()
        .map(|g| db_amp(profile.noise_db + g - acq.gain_db - profile.gain_db) * 1.2247)
        .collect();
    let g_all = db_amp(acq.gain_db + profile.gain_db);
    for b in 0..nb {
        for (s, na) in noise_amp.iter().enumerate() {
            let i = b * ns + s;
            let (mut r, mut q) = (re[i], im[i]);
            if acq.noise {
                let a = na * g_all;
                // Uniform noise of variance 1/2 per component: cheap and white.
                r += a * (2.0 * rng.f() - 1.0);
                q += a * (2.0 * rng.f() - 1.0);
            }
            data[i] = (r * r + q * q).sqrt();
        }
    }
    Polar {
        beams: nb,
        samples: ns,
        data,
    }
}

/// Log compression to display grey in [0, 1]: liver-level speckle lands mid-grey.
pub fn compress(env: &mut Polar, dynamic_range_db: f32) {
    let floor = -0.47 * dynamic_range_db;
    for v in env.data.iter_mut() {
        let i = *v * *v;
        let db = if i > 1e-20 {
            10.0 * libm::log10f(i)
        } else {
            -200.0
        };
        *v = ((db - floor) / dynamic_range_db).clamp(0.0, 1.0);
    }
}

/// Speckle reduction: `passes` of separable [1 2 1]/4 smoothing on display grey, as
/// scanners' "SRI"/"speckle reduction" presets do (lower grain contrast, same structure).
pub fn smooth(p: &mut Polar, passes: u8) {
    let (nb, ns) = (p.beams, p.samples);
    let mut tmp = vec![0.0f32; p.data.len()];
    for _ in 0..passes {
        for b in 0..nb {
            let row = &p.data[b * ns..(b + 1) * ns];
            let out = &mut tmp[b * ns..(b + 1) * ns];
            for s in 0..ns {
                let l = row[s.saturating_sub(1)];
                let r = row[(s + 1).min(ns - 1)];
                out[s] = 0.25 * (l + r) + 0.5 * row[s];
            }
        }
        for b in 0..nb {
            let (bl, br) = (b.saturating_sub(1), (b + 1).min(nb - 1));
            for s in 0..ns {
                p.data[b * ns + s] =
                    0.25 * (tmp[bl * ns + s] + tmp[br * ns + s]) + 0.5 * tmp[b * ns + s];
            }
        }
    }
}

/// Mapping from screen pixels to the polar grid, built once per (profile, depth).
#[derive(Clone, Debug)]
pub struct ScanLut {
    pub width: u32,
    pub height: u32,
    /// Screen pixels per cm.
    pub ppc: f32,
    /// Screen y of depth 0 on the centre line, and the centre x.
    pub y_skin: f32,
    pub x_centre: f32,
    /// Bounding box of the scan area (x0, y0, x1, y1).
    pub bbox: (u32, u32, u32, u32),
    /// Top-left corner of the scan area (where machines put the orientation mark).
    pub top_left: (f32, f32),
    entries: Vec<(u32, u32, f32, f32)>,
    samples: usize,
}

impl ScanLut {
    pub fn new(profile: &Profile, depth_cm: f32) -> Self {
        let grid = BeamGrid::new(profile, depth_cm);
        let (x0, y0, x1, y1) = profile.scan_box;
        let (bw, bh) = ((x1 - x0) as f32, (y1 - y0) as f32);
        let cx = 0.5 * (x0 + x1) as f32;
        let (w, h) = profile.screen;
        let nb = grid.beams as f32;
        let ns = grid.samples as f32;
        let dr = grid.dr();
        let mut entries = Vec::new();
        let (ppc, y_skin, bbox, top_left);
        match grid.geometry {
            BeamGeom::Convex { radius, half } => {
                let (sh, ch) = libm::sincosf(half);
                let ext_w = 2.0 * (radius + depth_cm) * sh;
                let ext_h = radius + depth_cm - radius * ch;
                ppc = (bw / ext_w).min(bh / ext_h);
                let apex_y = y0 as f32 - radius * ch * ppc;
                y_skin = apex_y + radius * ppc;
                let half_w = (radius + depth_cm) * sh * ppc;
                top_left = (cx - radius * sh * ppc, y0 as f32);
                bbox = (
                    (cx - half_w).floor().max(0.0) as u32,
                    y0,
                    (cx + half_w).ceil() as u32,
                    (apex_y + (radius + depth_cm) * ppc).ceil() as u32,
                );
                for py in bbox.1..bbox.3.min(h) {
                    for px in bbox.0..bbox.2.min(w) {
                        let dx = px as f32 + 0.5 - cx;
                        let dy = py as f32 + 0.5 - apex_y;
                        let rad = (dx * dx + dy * dy).sqrt() / ppc;
                        let th = libm::atan2f(dx, dy);
                        let r = rad - radius;
                        if r < 0.0 || r >= depth_cm || th.abs() > half {
                            continue;
                        }
                        let fb = (th + half) / (2.0 * half) * nb - 0.5;
                        let fs = r / dr - 0.5;
                        entries.push(Self::entry(py * w + px, fb, fs, nb, ns, grid.samples));
                    }
                }
            }
            BeamGeom::Linear { width } => {
                ppc = (bw / width).min(bh / depth_cm);
                y_skin = y0 as f32;
                let half_w = 0.5 * width * ppc;
                top_left = (cx - half_w, y0 as f32);
                bbox = (
                    (cx - half_w).round() as u32,
                    y0,
                    (cx + half_w).round() as u32,
                    (y0 as f32 + depth_cm * ppc).round() as u32,
                );
                for py in bbox.1..bbox.3.min(h) {
                    for px in bbox.0..bbox.2.min(w) {
                        let xcm = (px as f32 + 0.5 - cx) / ppc;
                        let r = (py as f32 + 0.5 - y_skin) / ppc;
                        let fb = (xcm / width + 0.5) * nb - 0.5;
                        let fs = r / dr - 0.5;
                        entries.push(Self::entry(py * w + px, fb, fs, nb, ns, grid.samples));
                    }
                }
            }
        }
        ScanLut {
            width: w,
            height: h,
            ppc,
            y_skin,
            x_centre: cx,
            bbox,
            top_left,
            entries,
            samples: grid.samples,
        }
    }

    fn entry(pix: u32, fb: f32, fs: f32, nb: f32, ns: f32, samples: usize) -> (u32, u32, f32, f32) {
        let fb = fb.clamp(0.0, nb - 1.001);
        let fs = fs.clamp(0.0, ns - 1.001);
        let (b0, s0) = (fb.floor(), fs.floor());
        let idx = b0 as usize * samples + s0 as usize;
        (pix, idx as u32, fb - b0, fs - s0)
    }

    /// Number of screen pixels inside the scan area.
    pub fn area(&self) -> usize {
        self.entries.len()
    }

    /// Bilinear scan conversion of display grey (0..1) into an 8-bit screen buffer.
    pub fn convert(&self, polar: &Polar, out: &mut [u8]) {
        let ns = self.samples;
        let d = &polar.data;
        for &(pix, idx, wb, ws) in &self.entries {
            let i = idx as usize;
            let a = d[i] + (d[i + 1] - d[i]) * ws;
            let b = d[i + ns] + (d[i + ns + 1] - d[i + ns]) * ws;
            let v = a + (b - a) * wb;
            out[pix as usize] = (v * 255.0 + 0.5) as u8;
        }
    }
}

/// Envelope statistics of a homogeneous medium, for the speckle check: (mean/std, n).
pub fn homogeneous_snr(profile: &Profile, seed: u64) -> (f64, usize) {
    let mut rng = Rand::new(seed);
    let depth = profile.depth_cm.0;
    let mut acq = Acquisition::neutral(profile, depth);
    acq.attenuation = false;
    acq.noise = false;
    let speckle = Speckle::new(profile.beams * profile.samples, &mut rng);
    let env = envelope(
        profile,
        &acq,
        &Homogeneous(Tissue::new(0.0, 0.5)),
        &speckle,
        &mut rng,
    );
    // Skip the grid edges, where the PSF is truncated.
    let mut v = Vec::new();
    for b in MAX_LAT_RADIUS..env.beams - MAX_LAT_RADIUS {
        for s in 10..env.samples - 10 {
            v.push(env.data[b * env.samples + s] as f64);
        }
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean / var.sqrt(), v.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homogeneous_speckle_is_rayleigh() {
        // Fully developed speckle: envelope mean/std = sqrt(pi/(4-pi)) = 1.913.
        for p in Profile::builtin() {
            let (snr, n) = homogeneous_snr(p, 3);
            assert!(n > 20_000);
            assert!((snr - 1.913).abs() < 0.06, "{}: SNR {snr:.3}", p.name);
        }
    }

    #[test]
    fn stone_like_absorber_casts_a_shadow() {
        struct Absorber;
        impl TissueMap for Absorber {
            fn tissue(&self, x: f32, z: f32, _d: (f32, f32)) -> Tissue {
                if x.abs() < 0.6 && (2.0..2.5).contains(&z) {
                    Tissue::new(20.0, 30.0)
                } else {
                    Tissue::new(0.0, 0.5)
                }
            }
        }
        let p = Profile::by_name("peds-linear").unwrap();
        let mut rng = Rand::new(1);
        let acq = Acquisition::neutral(p, 6.0);
        let sp = Speckle::new(p.beams * p.samples, &mut rng);
        let env = envelope(p, &acq, &Absorber, &sp, &mut rng);
        let grid = BeamGrid::new(p, 6.0);
        let mean_at = |xsel: &dyn Fn(f32) -> bool| {
            let (mut s, mut n) = (0.0, 0);
            for b in 0..env.beams {
                let x = grid.beam_coord(b as f32);
                if !xsel(x) {
                    continue;
                }
                for si in 0..env.samples {
                    let r = (si as f32 + 0.5) * grid.dr();
                    if (3.0..4.0).contains(&r) {
                        s += env.data[b * env.samples + si];
                        n += 1;
                    }
                }
            }
            s / n as f32
        };
        let shadow = mean_at(&|x| x.abs() < 0.3);
        let beside = mean_at(&|x| x.abs() > 1.2 && x.abs() < 2.4);
        assert!(shadow < 0.1 * beside, "shadow {shadow} beside {beside}");
    }

    #[test]
    fn scan_lut_fits_the_box() {
        for p in Profile::builtin() {
            let lut = ScanLut::new(p, p.depth_cm.1);
            let (x0, y0, x1, y1) = p.scan_box;
            assert!(lut.bbox.0 + 1 >= x0 && lut.bbox.2 <= x1 + 1, "{}", p.name);
            assert!(lut.bbox.1 >= y0 && lut.bbox.3 <= y1 + 1, "{}", p.name);
            assert!(lut.area() > 40_000, "{} area {}", p.name, lut.area());
        }
    }
}
