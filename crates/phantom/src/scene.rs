//! A child's right kidney in longitudinal view through the liver, with pathology.
//!
//! Everything is an acoustic property map in cm (x lateral, z depth; screen left is
//! cranial). Echogenicities are dB relative to liver parenchyma, attenuations dB/cm/MHz,
//! from the usual textbook ranges. Normal variants that mimic disease (dark infant
//! pyramids, bright neonatal cortex, a little pelvic fluid, gallbladder, bowel gas, rib
//! shadows, columns of Bertin) are drawn on purpose: without them a classifier could
//! pass by counting dark or bright pixels instead of seeing the lesion.

use std::f32::consts::{PI, TAU};

use crate::formation::{Tissue, TissueMap};
use crate::profile::Profile;
use crate::rng::{fractal, noise, Rand};

/// Image label: the project's screening classes.
pub use contract::Class;

/// Hydronephrosis grade (SFU 1-4) for a severity in (0, 1].
pub fn hydronephrosis_grade(severity: f32) -> u8 {
    ((severity * 4.0).ceil() as u8).clamp(1, 4)
}

/// Least severity the phantom renders: what a sweep's given severity, or a severity range,
/// is clamped to.
pub const LEAST_SEVERITY: f32 = 0.05;

/// Least severity [`draw_severity`] gives.
const SEVERITY_MIN: f32 = 0.06;

/// Draw a severity: skewed towards subtle, as screening finds mostly mild disease.
pub fn draw_severity(rng: &mut Rand) -> f32 {
    let u = rng.f();
    (SEVERITY_MIN + (1.0 - SEVERITY_MIN) * libm::powf(u, 1.25)).min(1.0)
}

/// A severity drawn by [`draw_severity`] moved into `(lo, hi)` (each within
/// [`LEAST_SEVERITY`]-1), keeping its place in the draw's range: the least drawn severity
/// becomes `lo`, the greatest `hi`.
pub fn severity_in(drawn: f32, (lo, hi): (f32, f32)) -> f32 {
    let lo = lo.clamp(LEAST_SEVERITY, 1.0);
    let hi = hi.clamp(lo, 1.0);
    let place = ((drawn - SEVERITY_MIN) / (1.0 - SEVERITY_MIN)).clamp(0.0, 1.0);
    lo + (hi - lo) * place
}

#[derive(Clone, Debug)]
pub(crate) struct Ellipse {
    pub(crate) x: f32,
    pub(crate) z: f32,
    pub(crate) rx: f32,
    pub(crate) rz: f32,
}

impl Ellipse {
    /// Squared normalised distance (1 on the boundary).
    pub(crate) fn d2(&self, x: f32, z: f32) -> f32 {
        let dx = (x - self.x) / self.rx;
        let dz = (z - self.z) / self.rz;
        dx * dx + dz * dz
    }
}

/// Patient-level anatomy and disease: shared by every image of that patient.
#[derive(Clone, Debug)]
pub struct Patient {
    pub id: u32,
    pub age_y: f32,
    pub class: Class,
    pub severity: f32,
    /// Left kidney, seen through the spleen (else right, through the liver).
    pub left: bool,
    seed: u32,
    // Body wall, cm.
    skin: f32,
    fat: f32,
    muscle: f32,
    liver_ant: f32,
    // Kidney shape.
    length: f32,
    thick_ratio: f32,
    tilt: f32,
    bend: f32,
    lob_amp: f32,
    lob_phase: [f32; 2],
    n_pyr: usize,
    pyr_phase: f32,
    pyr_db: f32,
    pyr_width: f32,
    cortex_db: f32,
    sinus_db: f32,
    sinus_w: f32,
    pelvic_fluid: f32,
    bertin: Option<f32>,
    duplex: bool,
    // Liver.
    liver_tex: f32,
    liver_tip: f32,
    vessels: Vec<(f32, f32, f32, bool)>,
    gallbladder: Option<(f32, f32, f32)>,
    // Lesion placement in kidney-normalised coordinates (u, v in [-1, 1]) and size.
    lesion_u: f32,
    lesion_v: f32,
    lesion_r: f32,
    lesion_db: f32,
}

impl Patient {
    /// Draw a patient of the given class; `profile` bounds the age (linear = infants).
    pub fn draw(id: u32, seed: u64, class: Class, severity: f32, profile: &Profile) -> Self {
        let mut r = Rand::new(seed);
        let age_y = {
            let (lo, hi) = profile.ages;
            // Many screened children are infants.
            lo + (hi - lo) * libm::powf(r.f(), 1.6)
        };
        let infant = (1.0 - age_y / 1.5).clamp(0.0, 1.0);
        let length = (4.6 + 0.36 * age_y) * r.range(0.88, 1.12);
        let n_pyr = r.int(8, 11) as usize;
        let normal_cortex = -5.0 + 4.0 * infant + r.range(-1.5, 1.5);
        let mut p = Patient {
            id,
            age_y,
            class,
            severity,
            left: false,
            seed: (seed >> 17) as u32,
            skin: r.range(0.12, 0.2),
            fat: r.range(0.15, 0.5) + 0.03 * age_y,
            muscle: r.range(0.3, 0.6) + 0.02 * age_y,
            liver_ant: r.range(0.6, 1.4) + 0.1 * age_y,
            length,
            thick_ratio: r.range(0.4, 0.5),
            tilt: r.range(-0.3, 0.15),
            bend: r.range(0.0, 0.14),
            lob_amp: r.range(0.0, 0.035) + 0.035 * infant,
            lob_phase: [r.range(0.0, TAU), r.range(0.0, TAU)],
            n_pyr,
            pyr_phase: r.range(0.0, 1.0),
            pyr_db: -15.0 - 8.0 * infant + r.range(-3.0, 3.0),
            pyr_width: r.range(0.6, 0.8) + 0.1 * infant,
            cortex_db: normal_cortex,
            sinus_db: 4.0 + 6.0 * (1.0 - infant) + r.range(-2.0, 2.0),
            sinus_w: r.range(0.26, 0.4),
            pelvic_fluid: if r.chance(0.2) {
                r.range(0.03, 0.09)
            } else {
                0.0
            },
            bertin: if r.chance(0.15) {
                Some(r.range(-0.4, 0.4))
            } else {
                None
            },
            duplex: r.chance(0.08),
            liver_tex: r.range(0.6, 1.8),
            liver_tip: r.range(0.0, 0.9),
            vessels: Vec::new(),
            gallbladder: None,
            lesion_u: r.range(-0.55, 0.55),
            lesion_v: if r.chance(0.5) { 1.0 } else { -1.0 },
            lesion_r: r.f(),
            lesion_db: if r.chance(0.5) {
                r.range(-9.0, -4.0)
            } else {
                r.range(3.0, 7.0)
            },
        };
        for _ in 0..r.int(2, 5) {
            // (x offset from kidney centre, depth above kidney top, radius, portal wall?)
            p.vessels.push((
                r.range(-4.0, 3.0),
                r.range(0.2, 1.0),
                r.range(0.08, 0.35),
                r.chance(0.5),
            ));
        }
        // Drawn last so earlier draws keep their values.
        let left = r.chance(0.4);
        if r.chance(0.25) && !left {
            p.gallbladder = Some((r.range(0.5, 2.5), r.range(0.5, 1.2), r.range(0.25, 0.5)));
        }
        if left {
            // Spleen: finer, slightly brighter texture, fewer vessels.
            p.left = true;
            p.liver_tex *= 0.6;
            p.vessels.truncate(2);
        }
        if class == Class::Hyperechogenicity {
            // By definition brighter than the liver/spleen window, however subtle.
            let window = if p.left { 1.5 } else { 0.0 };
            p.cortex_db = (window + 0.5 + 9.0 * severity).max(normal_cortex + 2.0);
            let loss = (0.3 + 0.65 * severity).min(0.95);
            p.pyr_db += (p.cortex_db - 2.0 - p.pyr_db) * loss;
            p.length *= 1.0 + 0.12 * severity;
        }
        if class == Class::Hydronephrosis {
            p.pelvic_fluid = 0.0;
        }
        p
    }
}

/// Image-level view: where the probe is and how the machine is set.
#[derive(Clone, Debug)]
pub struct View {
    /// Kidney centre lateral offset from the beam centre, cm.
    pub offset_x: f32,
    pub tilt: f32,
    /// Elevational distance from the kidney's mid-plane, as a fraction of its half-width.
    pub elevation: f32,
    /// Extra depth of the kidney from probe pressure / breathing, cm.
    pub push: f32,
    pub gain_db: f32,
    pub dr_db: f32,
    pub tgc_err: f32,
    pub sliders: [f32; 5],
    pub rib: Option<(f32, f32)>,
    pub bowel: Option<(f32, f32, f32)>,
    pub depth_choice: f32,
    /// Focal lesions lie in the scan plane whatever the elevation (a still image is taken
    /// through the finding). A sweep clears this, so lesions come and go as the plane moves.
    pub lesion_in_plane: bool,
    pub seed: u32,
}

/// How far from the kidney's mid-plane a still image's plane may lie by default (fraction of
/// its half-width): stills are taken near the long axis. A protocol sweep passes from 0.75 on
/// one side to 0.75 on the other ([`crate::stream`]).
pub const DEFAULT_ELEVATION_MAX: f32 = 0.4;

impl View {
    /// A still image's view, its plane within [`DEFAULT_ELEVATION_MAX`] of the mid-plane.
    pub fn draw(rng: &mut Rand) -> Self {
        Self::draw_within(rng, DEFAULT_ELEVATION_MAX)
    }

    /// A view whose plane lies within `elevation_max` of the mid-plane (the same random
    /// draws as [`View::draw`], so everything else about the view is unchanged).
    pub fn draw_within(rng: &mut Rand, elevation_max: f32) -> Self {
        let mut sliders = [0.0; 5];
        for s in sliders.iter_mut() {
            *s = rng.range(-2.5, 2.5);
        }
        View {
            offset_x: rng.range(-0.8, 0.8),
            tilt: rng.range(-0.12, 0.12),
            elevation: rng.range(0.0, elevation_max),
            push: rng.range(-0.3, 0.3),
            gain_db: rng.range(-5.0, 5.0),
            dr_db: rng.range(-6.0, 6.0),
            tgc_err: rng.range(-0.15, 0.12),
            sliders,
            rib: if rng.chance(0.2) {
                let side = if rng.chance(0.5) { -1.0 } else { 1.0 };
                Some((side * rng.range(1.8, 3.5), rng.range(0.3, 0.6)))
            } else {
                None
            },
            bowel: if rng.chance(0.35) {
                Some((
                    rng.range(0.4, 1.2),
                    rng.range(0.4, 0.9),
                    rng.range(0.4, 0.8),
                ))
            } else {
                None
            },
            depth_choice: rng.f(),
            lesion_in_plane: true,
            seed: rng.u64() as u32,
        }
    }
}

#[derive(Clone, Debug)]
struct Mass {
    x: f32,
    z: f32,
    r: f32,
    push: f32,
    db: f32,
    hetero: f32,
    necrosis: f32,
}

/// The resolved scene for one image.
#[derive(Clone, Debug)]
pub struct Scene {
    pub depth_cm: f32,
    pub focus_cm: f32,
    /// Whether the finding shows in this plane (false for normal, and for a focal lesion
    /// the sweep's plane has left).
    pub lesion_visible: bool,
    seed: u32,
    skin: f32,
    fat_end: f32,
    wall_end: f32,
    // Kidney frame.
    xc: f32,
    zc: f32,
    a: f32,
    b: f32,
    cos_t: f32,
    sin_t: f32,
    bend: f32,
    lob_amp: f32,
    lob_phase: [f32; 2],
    cortex_db: f32,
    pyr_db: f32,
    sinus_db: f32,
    sinus_w: f32,
    /// (angle, angular half-width, radial reach, echo offset dB) per pyramid.
    pyramids: Vec<(f32, f32, f32, f32)>,
    bertin: Option<f32>,
    duplex: bool,
    pelvis: Option<(f32, f32)>,
    calyces: Vec<(f32, f32, f32)>,
    liver_tex: f32,
    window_db: f32,
    triads: bool,
    tip_x: f32,
    tip_z: f32,
    back_z: f32,
    vessels: Vec<(Ellipse, bool)>,
    gallbladder: Option<Ellipse>,
    rib: Option<(f32, f32, f32)>,
    bowel: Option<Ellipse>,
    stone: Option<(f32, f32, f32, f32, f32)>,
    cyst: Option<Ellipse>,
    mass: Option<Mass>,
    severity: f32,
    /// False for views that miss the kidney (`crate::views`): no kidney, no lesion.
    kidney_present: bool,
    /// Echogenic perirenal fat where an oblique plane passes beside the kidney.
    perirenal: Option<Ellipse>,
}

impl Scene {
    /// Place the patient's anatomy under the probe for this view.
    pub fn new(p: &Patient, v: &View, profile: &Profile) -> Self {
        let scale_b = (1.0 - v.elevation * v.elevation).sqrt();
        let scale_a = (1.0 - 0.3 * v.elevation * v.elevation).sqrt();
        let a = 0.5 * p.length * scale_a;
        let b = 0.5 * p.length * p.thick_ratio * scale_b;
        let wall_end = p.skin + p.fat + p.muscle;
        let zc = wall_end + p.liver_ant + b + v.push.max(-0.5 * p.liver_ant);
        let tilt = p.tilt + v.tilt;
        let (sin_t, cos_t) = libm::sincosf(tilt);
        // Depth: the sonographer shows the whole kidney plus some tissue behind it.
        let (dmin, dmax) = profile.depth_cm;
        let want = zc + b + 1.2 + 2.0 * v.depth_choice;
        let depth_cm = want.ceil().clamp(dmin, dmax);
        let focus_cm = zc.min(depth_cm * 0.8);
        let xc = v.offset_x;

        // Pyramids at equal arc length around the ellipse.
        let mut arc = Vec::with_capacity(361);
        let mut acc = 0.0f32;
        for i in 0..=360 {
            let psi = -PI + TAU * i as f32 / 360.0;
            let (s, c) = libm::sincosf(psi);
            acc += (a * a * s * s + b * b * c * c).sqrt() * TAU / 360.0;
            arc.push(acc);
        }
        let total = acc;
        let mut pyramids = Vec::with_capacity(p.n_pyr);
        for k in 0..p.n_pyr {
            let target = total * ((k as f32 + p.pyr_phase) / p.n_pyr as f32);
            let i = arc.iter().position(|&l| l >= target).unwrap_or(360);
            let psi = -PI + TAU * i as f32 / 360.0;
            let (s, c) = libm::sincosf(psi);
            let dens = (a * a * s * s + b * b * c * c).sqrt().max(1e-3);
            let mut pr = Rand::new(p.seed as u64 ^ (k as u64) << 20);
            let half = 0.5 * p.pyr_width * total / p.n_pyr as f32 / dens * pr.range(0.7, 1.25);
            pyramids.push((psi, half, pr.range(0.75, 1.0), pr.range(-3.0, 3.0)));
        }

        let mut s = Scene {
            depth_cm,
            focus_cm,
            lesion_visible: p.class.is_abnormal(),
            seed: p.seed ^ v.seed.rotate_left(7),
            skin: p.skin,
            fat_end: p.skin + p.fat,
            wall_end,
            xc,
            zc,
            a,
            b,
            cos_t,
            sin_t,
            bend: p.bend,
            lob_amp: p.lob_amp,
            lob_phase: p.lob_phase,
            cortex_db: p.cortex_db,
            pyr_db: p.pyr_db,
            sinus_db: p.sinus_db,
            sinus_w: (p.sinus_w * (1.0 - 1.6 * v.elevation * v.elevation)).max(0.08),
            pyramids,
            bertin: p.bertin,
            duplex: p.duplex,
            pelvis: None,
            calyces: Vec::new(),
            liver_tex: p.liver_tex,
            window_db: if p.left { 1.5 } else { 0.0 },
            triads: !p.left,
            tip_x: xc + a * p.liver_tip,
            tip_z: wall_end + 0.4,
            back_z: zc + b + 0.45,
            vessels: Vec::new(),
            gallbladder: None,
            rib: None,
            bowel: None,
            stone: None,
            cyst: None,
            mass: None,
            severity: p.severity,
            kidney_present: true,
            perirenal: None,
        };
        let top = zc - b;
        for &(dx, dz, r, wall) in &p.vessels {
            let z = top - dz - r;
            if z - r > wall_end + 0.2 {
                let e = Ellipse {
                    x: xc + dx,
                    z,
                    rx: r * 1.5,
                    rz: r,
                };
                s.vessels.push((e, wall));
            }
        }
        if let Some((dx, dz, r)) = p.gallbladder {
            let z = (top - dz).max(wall_end + r + 0.3);
            s.gallbladder = Some(Ellipse {
                x: xc + a * 0.3 + dx,
                z,
                rx: r * 2.2,
                rz: r,
            });
        }
        if let Some((x, w)) = v.rib {
            s.rib = Some((x, w, wall_end - 0.1));
        }
        if let Some((dz, r, dx)) = v.bowel {
            s.bowel = Some(Ellipse {
                x: xc + a * (0.7 + dx * 0.4),
                z: (top - dz).max(wall_end + r),
                rx: r * 1.3,
                rz: r,
            });
        }
        if p.pelvic_fluid > 0.0 {
            s.pelvis = Some((0.25, p.pelvic_fluid));
        }

        let sev = p.severity;
        // In-plane radius of a focal lesion of radius r centred on the kidney's mid-plane.
        let off_plane = if v.lesion_in_plane {
            0.0
        } else {
            v.elevation * 0.5 * p.length * p.thick_ratio
        };
        let cut = |r: f32| match off_plane {
            d if d <= 0.0 => Some(r),
            d => (r > d).then(|| (r * r - d * d).sqrt()),
        };
        match p.class {
            Class::Normal | Class::Hyperechogenicity => {}
            Class::Stone => {
                // In the sinus, or at a lower-pole calyx.
                let (u, v_) = if p.lesion_r < 0.6 {
                    (p.lesion_u * 0.8, p.lesion_v * s.sinus_w * 0.4 * p.lesion_r)
                } else {
                    (0.55, -0.35 * p.lesion_v)
                };
                let (x, z) = s.to_world(u, v_);
                let spec = 2.0 + 12.0 * sev;
                let atten = 6.0 + 34.0 * sev;
                s.stone = cut(0.09 + 0.45 * sev).map(|r| (x, z, r, spec, atten));
            }
            Class::Cyst => {
                let r = cut(0.18 + 1.2 * sev).unwrap_or(0.0);
                let rho = 0.7 + 0.25 * p.lesion_r;
                // Anterior or posterior lip, away from the poles so it stays in view.
                let ang = p.lesion_v * (0.5 * PI + p.lesion_u * 1.4);
                let (u, v_) = (rho * libm::cosf(ang), rho * libm::sinf(ang));
                let (x, z) = s.to_world(u, v_);
                s.cyst = (r > 0.0).then_some(Ellipse {
                    x,
                    z,
                    rx: r * (1.0 + 0.2 * p.lesion_r),
                    rz: r,
                });
            }
            Class::Sol => {
                let r = cut((0.4 + 2.0 * sev).min(0.85 * a)).unwrap_or(0.0);
                let rho = 0.45 + 0.45 * p.lesion_r;
                let ang = p.lesion_v * (0.5 * PI + p.lesion_u * 1.6);
                let (x, z) = s.to_world(rho * libm::cosf(ang), rho * libm::sinf(ang));
                s.mass = (r > 0.0).then_some(Mass {
                    x,
                    z,
                    r,
                    push: 0.45 + 0.5 * sev,
                    // Subtle masses are nearly isoechoic to cortex; larger ones depart from it.
                    db: s.cortex_db + p.lesion_db * (0.35 + 0.65 * sev),
                    hetero: 2.5 + 5.0 * sev,
                    necrosis: ((sev - 0.3) * 1.4).max(0.0),
                });
            }
            Class::Hydronephrosis => {
                let g = hydronephrosis_grade(sev) as f32;
                let frac = sev * 4.0 - (g - 1.0);
                let half_cm = match g as u8 {
                    1 => 0.08 + 0.1 * frac,
                    2 => 0.2 + 0.15 * frac,
                    3 => 0.35 + 0.25 * frac,
                    _ => 0.6 + 0.3 * frac,
                };
                let hv = half_cm / b;
                s.sinus_w = s.sinus_w.max(hv + 0.06);
                s.pelvis = Some((0.25 + 0.1 * g, hv));
                // Clubbed calyces at the pyramid apices (grade 2 up), ballooning with grade.
                let reach = match g as u8 {
                    1 => 0.0,
                    2 => 0.1 + 0.1 * frac,
                    3 => 0.3 + 0.2 * frac,
                    _ => 0.55 + 0.25 * frac,
                };
                if reach > 0.0 {
                    let sw = s.sinus_w;
                    // Grade 2 shows some calyces, grade 3 up all of them.
                    for (k, &(pc, ..)) in s.pyramids.iter().enumerate() {
                        if g < 2.5 && k % 2 == 1 {
                            continue;
                        }
                        let (sp, cp) = libm::sincosf(pc);
                        let (cu, sv) = (cp / 0.64, sp / sw);
                        let rs = (1.0 / (cu * cu + sv * sv).sqrt()).max(0.3);
                        let rho = rs + (0.78 - rs) * (0.1 + 0.45 * reach);
                        let rc = (0.07 + 0.55 * reach) * b.min(0.6 * a);
                        s.calyces.push((rho * cp, rho * sp, rc * 0.6));
                    }
                }
            }
        }
        s.lesion_visible = match p.class {
            Class::Normal => false,
            Class::Stone => s.stone.is_some(),
            Class::Cyst => s.cyst.is_some(),
            Class::Sol => s.mass.is_some(),
            Class::Hyperechogenicity | Class::Hydronephrosis => true,
        };
        s
    }

    fn to_world(&self, u: f32, v: f32) -> (f32, f32) {
        let v = v + self.bend * (u * u - 0.3);
        let (uu, vv) = (u * self.a, v * self.b);
        (
            self.xc + uu * self.cos_t - vv * self.sin_t,
            self.zc + uu * self.sin_t + vv * self.cos_t,
        )
    }

    /// Kidney and perirenal fat, or None outside.
    fn kidney(&self, x: f32, z: f32, dir: (f32, f32)) -> Option<Tissue> {
        let (mut px, mut pz) = (x, z);
        if let Some(m) = &self.mass {
            let (dx, dz) = (x - m.x, z - m.z);
            let d2 = dx * dx + dz * dz;
            let rim = m.r + 0.06;
            if d2 < rim * rim {
                return Some(self.mass_tissue(m, x, z, d2.sqrt()));
            }
            let f = ((d2 - m.r * m.r * m.push) / d2).sqrt();
            px = m.x + dx * f;
            pz = m.z + dz * f;
        }
        let (dx, dz) = (px - self.xc, pz - self.zc);
        let u = dx * self.cos_t + dz * self.sin_t;
        let v = -dx * self.sin_t + dz * self.cos_t;
        let un = u / self.a;
        let vn = v / self.b - self.bend * (un * un - 0.3);
        let rho2 = un * un + vn * vn;
        let outer = 1.0 + 0.4 / self.b;
        if rho2 > outer * outer * 1.3 {
            return None;
        }
        let rho = rho2.sqrt();
        let psi = libm::atan2f(vn, un);
        let edge = 1.0
            + self.lob_amp
                * (0.6 * libm::sinf(6.0 * psi + self.lob_phase[0])
                    + 0.4 * libm::sinf(9.0 * psi + self.lob_phase[1]));
        let r = rho / edge;
        let cap = 0.035 / self.b;
        let fat = (0.22 + 0.08 * noise(x, z, 0.4, self.seed ^ 11)) / self.b;
        if r > 1.0 + cap + fat {
            return None;
        }
        if r > 1.0 + cap {
            return Some(Tissue::new(
                2.5 + 2.0 * noise(x, z, 0.15, self.seed ^ 12),
                0.6,
            ));
        }
        if r > 1.0 - cap {
            // Specular capsule: bright where the beam meets it head-on.
            let (nu, nv) = (un / self.a, vn / self.b);
            let nx = nu * self.cos_t - nv * self.sin_t;
            let nz = nu * self.sin_t + nv * self.cos_t;
            let nn = (nx * nx + nz * nz).sqrt().max(1e-6);
            let ci = ((nx * dir.0 + nz * dir.1) / nn).abs();
            // Uneven along its length, like a real capsule (fat, vessels, angle).
            let m = 3.0 * noise(x, z, 0.5, self.seed ^ 15);
            return Some(Tissue::new(4.0, 0.6).spec(-12.0 + 12.0 * ci * ci + m));
        }

        // Renal sinus (fat, vessels, collecting system) as an irregular ellipse.
        let su = 0.64 + 0.04 * noise(psi, 0.0, 0.5, self.seed ^ 21);
        let sw = self.sinus_w * (1.0 + 0.15 * noise(un, vn, 0.25, self.seed ^ 22));
        let in_sinus_ell = (un / su) * (un / su) + (vn / sw) * (vn / sw);
        let mut in_sinus = in_sinus_ell < 1.0;
        if self.duplex && (un - 0.05).abs() < 0.07 {
            in_sinus = false;
        }
        if let Some(bu) = self.bertin {
            if (un - bu).abs() < 0.09 && vn.abs() < sw * 1.1 && vn > -0.2 {
                in_sinus = false;
            }
        }
        // Collecting system fluid: pelvis, infundibula, calyces.
        if let Some((pa, pb)) = self.pelvis {
            let du = (un - 0.05) / pa;
            let dv = vn / pb;
            let wob = 1.0 + 0.1 * noise(un, vn, 0.2, self.seed ^ 31);
            if du * du + dv * dv < wob {
                return Some(fluid());
            }
        }
        // Sinus boundary radius along this angle.
        let (sp, cp) = libm::sincosf(psi);
        let rs = 1.0 / ((cp / su) * (cp / su) + (sp / sw) * (sp / sw)).sqrt();
        let rs = rs.max(0.3);
        let r_cortex = 0.78;
        for &(cu, cv, rc) in &self.calyces {
            // Calyx blob, and the infundibulum joining it to the pelvis.
            let (dx, dy) = ((un - cu) * self.a, (vn - cv) * self.b);
            let wob = 1.0 + 0.15 * noise(un * 3.0, vn * 3.0, 0.5, self.seed ^ 32);
            if dx * dx + dy * dy < rc * rc * wob {
                return Some(fluid());
            }
            let (sx, sy) = ((0.05 - cu) * self.a, -cv * self.b);
            let len2 = (sx * sx + sy * sy).max(1e-6);
            let t = ((-dx * sx - dy * sy) / len2).clamp(0.0, 1.0);
            let (ex, ey) = (dx + t * sx, dy + t * sy);
            let wi = (0.45 * rc).max(0.05);
            if ex * ex + ey * ey < wi * wi {
                return Some(fluid());
            }
        }
        if in_sinus {
            let n = fractal(x, z, 0.18, self.seed ^ 23);
            return Some(Tissue::new(self.sinus_db + 4.0 * n, 0.7));
        }
        // Medullary pyramids between sinus and cortex.
        if rho < r_cortex {
            let t = ((rho - rs) / (r_cortex - rs).max(0.05)).clamp(0.0, 1.0);
            for &(pc, half, reach, db) in &self.pyramids {
                let d = wrap(psi - pc).abs();
                let w = half * (0.25 + 0.75 * t / reach);
                if d < w && t < reach * (1.0 - 0.35 * (d / half) * (d / half)) && t > 0.03 {
                    let n = noise(x, z, 0.2, self.seed ^ 24);
                    return Some(Tissue::new(self.pyr_db + db + 1.5 * n, 0.6));
                }
            }
        }
        let n = noise(x, z, 0.25, self.seed ^ 25);
        Some(Tissue::new(self.cortex_db + 1.0 * n, 0.6))
    }

    fn mass_tissue(&self, m: &Mass, x: f32, z: f32, d: f32) -> Tissue {
        if d > m.r {
            return Tissue::new(m.db + 4.0, 0.7);
        }
        let n = fractal(x, z, 0.35, self.seed ^ 41);
        if m.necrosis > 0.0 {
            let n2 = fractal(x, z, 0.3, self.seed ^ 42);
            if n2 > 0.6 - 0.5 * m.necrosis && d < 0.8 * m.r {
                return Tissue::new(-35.0, 0.1);
            }
        }
        let n3 = noise(x, z, 0.07, self.seed ^ 43);
        if n3 > 0.93 - 0.05 * self.severity {
            return Tissue::new(m.db + 12.0, 2.0).spec(4.0);
        }
        Tissue::new(m.db + m.hetero * n, 0.75)
    }

    /// The same view with the kidney out of the plane (`crate::views`): liver and what lies
    /// behind it, or, with `perirenal`, the fat pad beside the kidney's pole and the back
    /// muscles pulled up into view.
    pub(crate) fn without_kidney(mut self, perirenal: bool) -> Self {
        self.kidney_present = false;
        self.lesion_visible = false;
        self.stone = None;
        self.cyst = None;
        self.mass = None;
        if perirenal {
            self.perirenal = Some(Ellipse {
                x: self.xc,
                z: self.zc,
                rx: self.a * 0.9,
                rz: self.b * 1.1,
            });
            self.back_z = self.zc + 0.4 * self.b;
        } else {
            // Liver all the way down to the diaphragm region.
            self.back_z = self.depth_cm + 5.0;
        }
        self
    }

    /// Depth of the body wall's end (fascia under the muscle), cm.
    pub(crate) fn wall_end(&self) -> f32 {
        self.wall_end
    }

    /// The speckle-independent seed of this view's textures.
    pub(crate) fn texture_seed(&self) -> u32 {
        self.seed
    }

    /// Skin, subcutaneous fat and muscle at `(x, z)` (any view has a body wall).
    pub(crate) fn body(&self, x: f32, z: f32) -> Tissue {
        let seed = self.seed;
        if z < self.skin {
            let spec = if z < 0.04 { -8.0 } else { Tissue::NO_SPEC };
            return Tissue::new(1.0 + 3.0 * noise(x, z, 0.05, seed), 1.2).spec(spec);
        }
        // Layer boundaries undulate a little, like real fascia.
        let fat_end = self.fat_end + 0.06 * noise(x, 0.0, 1.2, seed ^ 8);
        let wall_end = self.wall_end + 0.08 * noise(x, 0.0, 1.6, seed ^ 9);
        if z < fat_end - 0.03 {
            let septa = noise(x * 0.25, z, 0.05, seed ^ 1);
            let db = if septa > 0.5 { -2.0 } else { -12.0 };
            return Tissue::new(db, 0.6);
        }
        if z < fat_end + 0.03 {
            let m = noise(x, z, 0.4, seed ^ 10);
            return Tissue::new(0.0, 0.8).spec(-12.0 + 6.0 * m);
        }
        if z < wall_end - 0.04 {
            let stri = noise(x * 0.2, z, 0.04, seed ^ 2);
            return Tissue::new(-8.0 + 6.0 * stri.max(0.0), 0.9);
        }
        if z < wall_end + 0.04 {
            let m = noise(x, z, 0.4, seed ^ 11);
            return Tissue::new(2.0, 0.8).spec(-8.0 + 5.0 * m);
        }
        Tissue::new(0.0, 0.5)
    }

    fn deep(&self, x: f32, z: f32, dir: (f32, f32)) -> Tissue {
        // Posterior muscles (quadratus lumborum / psoas).
        let back = self.back_z
            + (x - self.xc) * self.sin_t / self.cos_t.max(0.3)
            + 0.15 * noise(x, 0.0, 1.0, self.seed ^ 3);
        if z > back {
            if z - back < 0.06 {
                return Tissue::new(3.0, 0.7).spec(-8.0);
            }
            let stri = noise(x * 0.35 + z * 0.2, z, 0.05, self.seed ^ 4);
            return Tissue::new(-5.0 + 6.0 * stri.max(0.0), 0.7);
        }
        // Liver vs mesenteric fat / bowel beyond the liver tip.
        let side =
            (x - self.tip_x) + 0.8 * (z - self.tip_z) + 0.15 * noise(z, 0.0, 0.8, self.seed ^ 14);
        if side.abs() < 0.04 {
            // Liver capsule at its inferior tip.
            return Tissue::new(3.0, 0.6).spec(-10.0);
        }
        if side > 0.0 {
            if let Some(bw) = &self.bowel {
                let d2 = bw.d2(x, z);
                if d2 < 1.0 {
                    // Gas: bright surface, dirty shadow.
                    let front = d2 > 0.7 && z < bw.z;
                    return if front {
                        Tissue::new(12.0, 3.0).spec(2.0)
                    } else {
                        // Gas content: reverberant, partly transmitting ("dirty" shadow).
                        Tissue::new(2.0 + 6.0 * noise(x, z, 0.1, self.seed ^ 5), 1.5)
                    };
                }
            }
            let n = fractal(x, z, 0.25, self.seed ^ 6);
            return Tissue::new(1.0 + 4.0 * n, 0.7);
        }
        if let Some(g) = &self.gallbladder {
            let d2 = g.d2(x, z);
            if d2 < 1.0 {
                return if d2 > 0.88 {
                    Tissue::new(4.0, 0.5).spec(-8.0)
                } else {
                    fluid()
                };
            }
        }
        for (v, wall) in &self.vessels {
            let d2 = v.d2(x, z);
            if d2 < 1.0 {
                return if *wall && d2 > 0.72 {
                    Tissue::new(5.0, 0.5).spec(-10.0 + 6.0 * dir.1.abs())
                } else {
                    Tissue::new(-40.0, 0.18)
                };
            }
        }
        let n = fractal(x, z, 0.3, self.seed ^ 7);
        // Portal triads: sparse small bright foci.
        let triad = noise(x, z, 0.09, self.seed ^ 13);
        let extra = if self.triads && triad > 0.86 {
            7.0
        } else {
            0.0
        };
        Tissue::new(self.window_db + self.liver_tex * n + extra, 0.5)
    }
}

fn fluid() -> Tissue {
    Tissue::new(-45.0, 0.02)
}

fn wrap(a: f32) -> f32 {
    let mut a = a;
    while a > PI {
        a -= TAU;
    }
    while a < -PI {
        a += TAU;
    }
    a
}

impl TissueMap for Scene {
    fn tissue(&self, x: f32, z: f32, dir: (f32, f32)) -> Tissue {
        if let Some((rx, w, rz)) = self.rib {
            // Rib just under the wall: bright arc, complete shadow.
            let dx = (x - rx) / w;
            if dx.abs() < 1.0 {
                let top = rz - 0.15 * (1.0 - dx * dx);
                if z > top && z < top + 0.25 {
                    return Tissue::new(8.0, 40.0).spec(if z < top + 0.06 { 4.0 } else { -10.0 });
                }
            }
        }
        if z < self.wall_end + 0.15 {
            return self.body(x, z);
        }
        if !self.kidney_present {
            if let Some(f) = &self.perirenal {
                if f.d2(x, z) < 1.0 {
                    let n = fractal(x, z, 0.2, self.seed ^ 51);
                    return Tissue::new(5.0 + 4.0 * n, 0.7);
                }
            }
            return self.deep(x, z, dir);
        }
        if let Some((sx, sz, r, spec, atten)) = self.stone {
            let (dx, dz) = (x - sx, z - sz);
            let d2 = dx * dx + dz * dz;
            if d2 < r * r {
                // Front surface reflects, the rest absorbs.
                let front = dz < -0.3 * r;
                return Tissue::new(8.0, atten).spec(if front { spec } else { spec - 8.0 });
            }
        }
        if let Some(c) = &self.cyst {
            let d2 = c.d2(x, z);
            let wall = 1.0 + 0.05 / c.rz;
            if d2 < wall * wall {
                if d2 < 1.0 {
                    return fluid();
                }
                // Wall: where the beam grazes it, refraction and reflection send energy
                // sideways, which leaves the classic thin edge shadows below a cyst.
                let (nx, nz) = ((x - c.x) / (c.rx * c.rx), (z - c.z) / (c.rz * c.rz));
                let nn = (nx * nx + nz * nz).sqrt().max(1e-6);
                let ci = ((nx * dir.0 + nz * dir.1) / nn).abs();
                let graze = (1.0 - ci * 3.0).max(0.0);
                return Tissue::new(5.0, 0.6 + 60.0 * graze).spec(-10.0 + 6.0 * ci);
            }
        }
        if let Some(t) = self.kidney(x, z, dir) {
            return t;
        }
        self.deep(x, z, dir)
    }
}

/// Probe in the air: no echoes except ring-down reverberation of the lens.
pub struct Air;

impl TissueMap for Air {
    fn tissue(&self, _x: f32, z: f32, _dir: (f32, f32)) -> Tissue {
        let k = z / 0.18;
        let ring = (k - k.round()).abs() < 0.08 && k < 6.0;
        if ring {
            Tissue::new(-30.0, 0.0).spec(-6.0 - 6.0 * k)
        } else {
            Tissue::new(-80.0, 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for c in Class::ALL {
            assert_eq!(Class::from_label(c.label()), Some(c));
        }
        assert_eq!(hydronephrosis_grade(0.01), 1);
        assert_eq!(hydronephrosis_grade(0.3), 2);
        assert_eq!(hydronephrosis_grade(1.0), 4);
    }

    #[test]
    fn a_severity_range_keeps_each_draws_place() {
        let range = (0.05, 0.15);
        assert!((severity_in(SEVERITY_MIN, range) - 0.05).abs() < 1e-6);
        assert!((severity_in(1.0, range) - 0.15).abs() < 1e-6);
        let mut rng = Rand::new(3);
        let mut drawn: Vec<f32> = (0..200).map(|_| draw_severity(&mut rng)).collect();
        drawn.sort_by(f32::total_cmp);
        let moved: Vec<f32> = drawn.iter().map(|&s| severity_in(s, range)).collect();
        assert!(moved.windows(2).all(|w| w[0] <= w[1]), "not monotone");
        assert!(moved.iter().all(|s| (0.05..=0.15).contains(s)), "{moved:?}");
        // Out-of-range bounds are clamped to what the phantom renders.
        assert_eq!(severity_in(0.5, (0.0, 0.0)), 0.05);
    }

    #[test]
    fn kidney_layers_have_the_expected_echoes() {
        let p = Profile::default_profile();
        let pat = Patient::draw(1, 5, Class::Normal, 0.0, p);
        let mut r = Rand::new(2);
        let mut v = View::draw(&mut r);
        v.elevation = 0.0;
        v.rib = None;
        v.bowel = None;
        let s = Scene::new(&pat, &v, p);
        // Centre of the kidney is sinus: brighter than liver.
        let t = s.tissue(s.xc, s.zc + s.bend * 0.3 * s.b, (0.0, 1.0));
        assert!(t.echo_db > 0.0, "sinus {t:?}");
        // Far outside is not kidney.
        assert!(s.kidney(s.xc, s.zc - 3.0 * s.b, (0.0, 1.0)).is_none());
    }

    #[test]
    fn stone_absorbs() {
        let p = Profile::default_profile();
        let pat = Patient::draw(1, 5, Class::Stone, 0.8, p);
        let mut r = Rand::new(2);
        let v = View::draw(&mut r);
        let s = Scene::new(&pat, &v, p);
        let (x, z, ..) = s.stone.unwrap();
        let t = s.tissue(x, z, (0.0, 1.0));
        assert!(t.atten > 20.0, "{t:?}");
    }

    #[test]
    fn a_wider_elevation_range_changes_only_the_elevation() {
        let mut wide_seen = false;
        for seed in 0..200 {
            let near = View::draw(&mut Rand::new(seed));
            let wide = View::draw_within(&mut Rand::new(seed), 0.75);
            assert!((0.0..=DEFAULT_ELEVATION_MAX).contains(&near.elevation));
            assert!((0.0..=0.75).contains(&wide.elevation));
            wide_seen |= wide.elevation > DEFAULT_ELEVATION_MAX;
            assert_eq!(
                format!(
                    "{:?}",
                    View {
                        elevation: 0.0,
                        ..near
                    }
                ),
                format!(
                    "{:?}",
                    View {
                        elevation: 0.0,
                        ..wide
                    }
                ),
                "seed {seed}"
            );
        }
        assert!(wide_seen, "no plane beyond the default range in 200 draws");
    }
}
