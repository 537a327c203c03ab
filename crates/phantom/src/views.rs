//! What else a probe shows on the way to, or instead of, a kidney: liver alone, spleen,
//! bladder, bowel, ribs over lung, gel or air with the probe lifted off, and oblique planes
//! that miss the kidney.
//!
//! Labelled scenes for the view gate: a screening aid shown one of these must say "no kidney
//! in view", not classify it. They share the kidney scenes' image formation, body wall and
//! scanner furniture, so the only thing that tells them apart is the anatomy.

use crate::formation::{Tissue, TissueMap};
use crate::profile::Profile;
use crate::rng::{fractal, noise, Rand};
use crate::scene::{Ellipse, Patient, Scene, View};

/// What is under the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Anatomy {
    /// A kidney: the screening classes apply.
    Kidney,
    /// Liver parenchyma without the kidney in the plane.
    Liver,
    /// The spleen under the left diaphragm.
    Spleen,
    /// The urinary bladder in a pelvic view.
    Bladder,
    /// Bowel loops with gas and fluid in mesenteric fat.
    Bowel,
    /// An intercostal view: ribs with their shadows, the pleural line, A-lines.
    RibLung,
    /// The probe off the skin: gel or air, lens ring-down.
    Lifted,
    /// An oblique plane beside the kidney: perirenal fat and the back muscles.
    OffAxis,
}

impl Anatomy {
    /// Every view that is not a kidney.
    pub const OTHER: [Anatomy; 7] = [
        Anatomy::Liver,
        Anatomy::Spleen,
        Anatomy::Bladder,
        Anatomy::Bowel,
        Anatomy::RibLung,
        Anatomy::Lifted,
        Anatomy::OffAxis,
    ];

    /// Manifest and file name spelling.
    pub fn label(self) -> &'static str {
        match self {
            Anatomy::Kidney => "kidney",
            Anatomy::Liver => "liver",
            Anatomy::Spleen => "spleen",
            Anatomy::Bladder => "bladder",
            Anatomy::Bowel => "bowel",
            Anatomy::RibLung => "rib_lung",
            Anatomy::Lifted => "lifted",
            Anatomy::OffAxis => "off_axis",
        }
    }

    /// The anatomy a label names (ASCII case ignored).
    pub fn parse(s: &str) -> Option<Anatomy> {
        std::iter::once(Anatomy::Kidney)
            .chain(Anatomy::OTHER)
            .find(|a| a.label().eq_ignore_ascii_case(s.trim()))
    }

    /// True for [`Anatomy::Kidney`].
    pub fn is_kidney(self) -> bool {
        self == Anatomy::Kidney
    }
}

impl std::fmt::Display for Anatomy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A non-kidney view ready to render: its tissue map and the depth and focus a sonographer
/// would set for it.
pub struct OtherView {
    pub map: Box<dyn TissueMap + Send + Sync>,
    pub depth_cm: f32,
    pub focus_cm: f32,
}

/// Builds the scene of `anatomy` (not [`Anatomy::Kidney`]) for this patient's body and
/// view. Deterministic for the rng state.
pub fn other_view(
    anatomy: Anatomy,
    patient: &Patient,
    view: &View,
    profile: &Profile,
    rng: &mut Rand,
) -> OtherView {
    let base = Scene::new(patient, view, profile);
    let (dmin, dmax) = profile.depth_cm;
    let depth = |rng: &mut Rand, lo: f32, hi: f32| rng_depth(rng, lo, hi).clamp(dmin, dmax);
    match anatomy {
        Anatomy::Kidney | Anatomy::Liver => {
            let depth_cm = depth(rng, base.depth_cm, base.depth_cm + 3.0);
            OtherView {
                map: Box::new(base.without_kidney(false)),
                depth_cm,
                focus_cm: depth_cm * 0.5,
            }
        }
        Anatomy::OffAxis => {
            let depth_cm = base.depth_cm;
            let focus_cm = base.focus_cm;
            OtherView {
                map: Box::new(base.without_kidney(true)),
                depth_cm,
                focus_cm,
            }
        }
        Anatomy::Spleen => {
            let depth_cm = depth(rng, 8.0, 13.0);
            OtherView {
                map: Box::new(SpleenView::new(base, rng, depth_cm)),
                depth_cm,
                focus_cm: depth_cm * 0.45,
            }
        }
        Anatomy::Bladder => {
            let depth_cm = depth(rng, 8.0, 12.0);
            OtherView {
                map: Box::new(BladderView::new(base, rng, depth_cm)),
                depth_cm,
                focus_cm: depth_cm * 0.5,
            }
        }
        Anatomy::Bowel => {
            let depth_cm = depth(rng, 6.0, 11.0);
            OtherView {
                map: Box::new(BowelView::new(base, rng, depth_cm)),
                depth_cm,
                focus_cm: depth_cm * 0.4,
            }
        }
        Anatomy::RibLung => {
            let depth_cm = depth(rng, 6.0, 12.0);
            OtherView {
                map: Box::new(RibLungView::new(base, rng)),
                depth_cm,
                focus_cm: depth_cm * 0.3,
            }
        }
        Anatomy::Lifted => {
            let depth_cm = depth(rng, dmin, dmax);
            let gel_cm = if rng.chance(0.5) {
                rng.range(0.1, 1.2)
            } else {
                0.0
            };
            OtherView {
                map: Box::new(LiftedView {
                    gel_cm,
                    ring_cm: rng.range(0.12, 0.22),
                    seed: rng.u64() as u32,
                }),
                depth_cm,
                focus_cm: depth_cm * 0.5,
            }
        }
    }
}

fn rng_depth(rng: &mut Rand, lo: f32, hi: f32) -> f32 {
    rng.range(lo, hi.max(lo + 0.1)).round()
}

fn fluid() -> Tissue {
    Tissue::new(-45.0, 0.02)
}

/// Left upper quadrant: the spleen's homogeneous crescent under the diaphragm, lung beyond.
struct SpleenView {
    base: Scene,
    organ: Ellipse,
    db: f32,
    tex: f32,
    /// Diaphragm: a circle arc (centre x, centre z, radius).
    dia: (f32, f32, f32),
}

impl SpleenView {
    fn new(base: Scene, rng: &mut Rand, depth: f32) -> Self {
        let top = base.wall_end() + rng.range(0.2, 0.6);
        let rz = rng.range(0.3, 0.45) * (depth - top);
        let organ = Ellipse {
            x: rng.range(-1.0, 1.0),
            z: top + rz,
            rx: rng.range(3.5, 6.0),
            rz,
        };
        let r = rng.range(6.0, 10.0);
        let dia = (
            organ.x + rng.range(-2.0, 2.0),
            organ.z + organ.rz + 0.3 - r,
            r,
        );
        SpleenView {
            base,
            organ,
            db: rng.range(1.0, 4.0),
            tex: rng.range(0.4, 1.0),
            dia,
        }
    }
}

impl TissueMap for SpleenView {
    fn tissue(&self, x: f32, z: f32, dir: (f32, f32)) -> Tissue {
        let seed = self.base.texture_seed();
        if z < self.base.wall_end() + 0.15 {
            return self.base.body(x, z);
        }
        let (cx, cz, r) = self.dia;
        let d = ((x - cx) * (x - cx) + (z - cz) * (z - cz)).sqrt() - r;
        if d.abs() < 0.08 {
            // Diaphragm: a bright curved specular line.
            return Tissue::new(6.0, 0.8).spec(-4.0 + 4.0 * dir.1.abs());
        }
        if d > 0.08 {
            // Lung behind the diaphragm: air, with a mirror image of the spleen's speckle.
            return Tissue::new(-6.0 + 6.0 * noise(x, z, 0.3, seed ^ 61), 3.0);
        }
        if self.organ.d2(x, z) < 1.0 {
            let n = fractal(x, z, 0.2, seed ^ 62);
            return Tissue::new(self.db + self.tex * n, 0.5);
        }
        // Around it: fat and the splenic flexure.
        let n = fractal(x, z, 0.25, seed ^ 63);
        Tissue::new(2.0 + 4.0 * n, 0.7)
    }
}

/// A pelvic view: the fluid-filled bladder with a bright wall and enhancement behind it, the
/// uterus or prostate below, bowel gas at the sides.
struct BladderView {
    base: Scene,
    cx: f32,
    cz: f32,
    hw: f32,
    hh: f32,
    /// Superellipse exponent: rounder (2) to squarer (4) as it fills.
    power: f32,
    wall: f32,
    organ: Ellipse,
    gas: Ellipse,
}

impl BladderView {
    fn new(base: Scene, rng: &mut Rand, depth: f32) -> Self {
        let top = base.wall_end() + rng.range(0.2, 0.5);
        let hh = rng.range(0.18, 0.32) * (depth - top);
        let hw = hh * rng.range(1.1, 2.0);
        let cx = rng.range(-0.8, 0.8);
        let cz = top + hh;
        let organ = Ellipse {
            x: cx + rng.range(-0.5, 0.5),
            z: cz + hh + rng.range(0.8, 1.6),
            rx: rng.range(1.2, 2.2),
            rz: rng.range(0.7, 1.2),
        };
        let side = if rng.chance(0.5) { -1.0 } else { 1.0 };
        let gas = Ellipse {
            x: cx + side * (hw + rng.range(0.5, 1.5)),
            z: cz + rng.range(-0.5, 0.8),
            rx: rng.range(0.6, 1.2),
            rz: rng.range(0.4, 0.8),
        };
        BladderView {
            base,
            cx,
            cz,
            hw,
            hh,
            power: rng.range(2.0, 4.0),
            wall: rng.range(0.08, 0.2),
            organ,
            gas,
        }
    }

    /// Superellipse "radius" (1 on the inner wall).
    fn r(&self, x: f32, z: f32) -> f32 {
        let u = ((x - self.cx) / self.hw).abs();
        let v = ((z - self.cz) / self.hh).abs();
        libm::powf(
            libm::powf(u, self.power) + libm::powf(v, self.power),
            1.0 / self.power,
        )
    }
}

impl TissueMap for BladderView {
    fn tissue(&self, x: f32, z: f32, dir: (f32, f32)) -> Tissue {
        let seed = self.base.texture_seed();
        if z < self.base.wall_end() + 0.15 {
            return self.base.body(x, z);
        }
        let r = self.r(x, z);
        if r < 1.0 {
            return fluid();
        }
        if r < 1.0 + self.wall / self.hh.min(self.hw) {
            return Tissue::new(5.0, 0.7).spec(-8.0 + 4.0 * dir.1.abs());
        }
        if self.gas.d2(x, z) < 1.0 {
            let front = z < self.gas.z && self.gas.d2(x, z) > 0.6;
            return if front {
                Tissue::new(12.0, 3.0).spec(2.0)
            } else {
                Tissue::new(2.0 + 6.0 * noise(x, z, 0.1, seed ^ 71), 1.5)
            };
        }
        if self.organ.d2(x, z) < 1.0 {
            let n = fractal(x, z, 0.2, seed ^ 72);
            return Tissue::new(-3.0 + 2.0 * n, 0.6);
        }
        // Pelvic fat and muscle.
        let n = fractal(x, z, 0.3, seed ^ 73);
        Tissue::new(1.0 + 3.5 * n, 0.7)
    }
}

/// Loops of bowel in mesenteric fat: layered walls (the gut signature), lumens of fluid or
/// gas with dirty shadows.
struct BowelView {
    base: Scene,
    loops: Vec<(Ellipse, bool)>,
}

impl BowelView {
    fn new(base: Scene, rng: &mut Rand, depth: f32) -> Self {
        let top = base.wall_end() + 0.3;
        let n = rng.int(3, 7);
        let loops = (0..n)
            .map(|_| {
                let r = rng.range(0.5, 1.3);
                (
                    Ellipse {
                        x: rng.range(-4.5, 4.5),
                        z: rng.range(top + r, (depth * 0.8).max(top + r + 0.5)),
                        rx: r * rng.range(0.9, 1.8),
                        rz: r,
                    },
                    rng.chance(0.6),
                )
            })
            .collect();
        BowelView { base, loops }
    }
}

impl TissueMap for BowelView {
    fn tissue(&self, x: f32, z: f32, _dir: (f32, f32)) -> Tissue {
        let seed = self.base.texture_seed();
        if z < self.base.wall_end() + 0.15 {
            return self.base.body(x, z);
        }
        for (e, gas) in &self.loops {
            let d2 = e.d2(x, z);
            if d2 >= 1.0 {
                continue;
            }
            // Wall layers from outside in: serosa (bright), muscle (dark), submucosa
            // (bright), mucosa (dark), lumen.
            let t = (1.0 - d2.sqrt()) * e.rz;
            return match t {
                t if t < 0.04 => Tissue::new(6.0, 0.8),
                t if t < 0.09 => Tissue::new(-10.0, 0.6),
                t if t < 0.14 => Tissue::new(7.0, 0.8),
                t if t < 0.18 => Tissue::new(-8.0, 0.6),
                _ if *gas && z < e.z => Tissue::new(12.0, 3.0).spec(3.0),
                _ if *gas => Tissue::new(3.0 + 6.0 * noise(x, z, 0.1, seed ^ 81), 1.8),
                _ => Tissue::new(-30.0 + 15.0 * noise(x, z, 0.15, seed ^ 82).max(0.0), 0.1),
            };
        }
        let n = fractal(x, z, 0.25, seed ^ 83);
        Tissue::new(3.0 + 5.0 * n, 0.7)
    }
}

/// An intercostal view: ribs with complete shadows, the bright pleural line between them
/// and its reverberations (A-lines) in the air of the lung.
struct RibLungView {
    base: Scene,
    /// (centre x, half-width) of each rib.
    ribs: Vec<(f32, f32)>,
    rib_z: f32,
    pleura_z: f32,
    b_line: Option<f32>,
}

impl RibLungView {
    fn new(base: Scene, rng: &mut Rand) -> Self {
        let rib_z = base.wall_end() + rng.range(0.0, 0.2);
        let spacing = rng.range(1.5, 2.6);
        let first = rng.range(-3.5, -1.0);
        let ribs = (0..4)
            .map(|i| (first + i as f32 * spacing, rng.range(0.4, 0.7)))
            .collect();
        RibLungView {
            base,
            ribs,
            rib_z,
            pleura_z: rib_z + rng.range(0.25, 0.5),
            b_line: rng.chance(0.3).then(|| rng.range(-2.0, 2.0)),
        }
    }
}

impl TissueMap for RibLungView {
    fn tissue(&self, x: f32, z: f32, _dir: (f32, f32)) -> Tissue {
        let seed = self.base.texture_seed();
        for &(rx, w) in &self.ribs {
            let dx = (x - rx) / w;
            if dx.abs() < 1.0 {
                let top = self.rib_z - 0.15 * (1.0 - dx * dx);
                if z > top && z < top + 0.3 {
                    return Tissue::new(8.0, 40.0).spec(if z < top + 0.06 { 4.0 } else { -10.0 });
                }
            }
        }
        if z < self.pleura_z - 0.05 {
            return self.base.body(x, z);
        }
        if z < self.pleura_z + 0.05 {
            return Tissue::new(8.0, 1.0).spec(4.0);
        }
        if let Some(bx) = self.b_line {
            if (x - bx).abs() < 0.08 {
                // A comet tail from the pleura to the bottom of the screen.
                return Tissue::new(6.0, 0.2).spec(-4.0);
            }
        }
        // Air: no echo from the lung itself, but the pleural line repeats at multiples of
        // its depth, fading.
        let k = z / self.pleura_z;
        let near = (k - k.round()).abs() * self.pleura_z < 0.05 && k.round() >= 2.0;
        if near {
            return Tissue::new(-10.0, 0.3).spec(2.0 - 5.0 * k.round());
        }
        Tissue::new(-25.0 + 8.0 * noise(x, z, 0.4, seed ^ 91), 0.3)
    }
}

/// The probe off the skin: an optional layer of gel, then air; only the lens ring-down
/// repeats.
struct LiftedView {
    gel_cm: f32,
    ring_cm: f32,
    seed: u32,
}

impl TissueMap for LiftedView {
    fn tissue(&self, x: f32, z: f32, _dir: (f32, f32)) -> Tissue {
        if z < self.gel_cm {
            return Tissue::new(-50.0, 0.01);
        }
        let d = z - self.gel_cm;
        let k = d / self.ring_cm;
        if (k - k.round()).abs() < 0.08 && k < 7.0 {
            return Tissue::new(-30.0, 0.0)
                .spec(-6.0 - 5.0 * k + 2.0 * noise(x, 0.0, 1.0, self.seed));
        }
        Tissue::new(-80.0, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Class;

    #[test]
    fn labels_round_trip() {
        for a in std::iter::once(Anatomy::Kidney).chain(Anatomy::OTHER) {
            assert_eq!(Anatomy::parse(a.label()), Some(a));
        }
        assert_eq!(Anatomy::parse("kidneys"), None);
        assert!(!Anatomy::OTHER.iter().any(|a| a.is_kidney()));
    }

    #[test]
    fn each_view_has_its_signature() {
        let p = Profile::default_profile();
        let pat = Patient::draw(1, 5, Class::Normal, 0.0, p);
        let mut r = Rand::new(3);
        let v = View::draw(&mut r);
        let down = (0.0, 1.0);
        // Bladder: fluid at its centre.
        let b = BladderView::new(Scene::new(&pat, &v, p), &mut r, 10.0);
        assert!(b.tissue(b.cx, b.cz, down).echo_db < -40.0);
        // Ribs: a rib absorbs everything.
        let rl = RibLungView::new(Scene::new(&pat, &v, p), &mut r);
        let (rx, _) = rl.ribs[0];
        assert!(rl.tissue(rx, rl.rib_z, down).atten > 20.0);
        // Lifted: nothing but ring-down below any gel.
        let l = LiftedView {
            gel_cm: 0.5,
            ring_cm: 0.2,
            seed: 1,
        };
        assert!(l.tissue(0.0, 0.25, down).echo_db < -40.0);
        // Liver alone and off-axis: no kidney in the plane, so no lesion either.
        for perirenal in [false, true] {
            let s = Scene::new(&pat, &v, p).without_kidney(perirenal);
            assert!(!s.lesion_visible);
        }
    }
}
