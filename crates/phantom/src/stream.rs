//! A probe sweep as a frame source: smooth motion over one patient's kidney, with the probe
//! sometimes lifted (blank frames) and the image sometimes frozen (identical frames), which
//! is what the edge runtime's gate must handle.

use image::RgbImage;

use crate::formation::{Speckle, TissueMap};
use crate::profile::Profile;
use crate::render::{compose, Renderer, ScanFrame};
use crate::rng::{derive, Rand};
use crate::scene::{Air, Class, Patient, Scene, View};
use crate::views::{other_view, Anatomy};

/// What the probe is doing in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Scanning,
    /// Probe off the skin: the scan area shows only lens ring-down and noise.
    Lifted,
    /// Freeze pressed: the same frame repeats.
    Frozen,
}

impl ProbeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeState::Scanning => "scanning",
            ProbeState::Lifted => "lifted",
            ProbeState::Frozen => "frozen",
        }
    }
}

/// How the probe moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Motion {
    /// Live handling: the plane wanders back and forth through the kidney, and the probe is
    /// lifted or the image frozen from time to time. What the runtime's gates and live view
    /// face; a stretch of it need not pass through a focal finding.
    #[default]
    Freehand,
    /// One recorded protocol sweep: the probe stays on the skin and the plane passes once
    /// from one pole's side, through the kidney's mid-plane, to the other's over the sweep's
    /// frames (with the same lateral drift, rocking and breathing). Every finding of the
    /// patient is crossed, so the sweep's label is the truth of what it shows: what an
    /// exam-level evaluation needs.
    Exam,
}

impl Motion {
    pub fn parse(s: &str) -> Option<Motion> {
        match s {
            "freehand" => Some(Motion::Freehand),
            "exam" => Some(Motion::Exam),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Motion::Freehand => "freehand",
            Motion::Exam => "exam",
        }
    }
}

/// How far off the kidney's mid-plane a sweep's plane goes, either side (fraction of the
/// kidney's half-width): past the poles' edge, so every focal finding is crossed.
const SWEEP_ELEVATION: f32 = 0.75;

/// Sweep settings.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    pub seed: u64,
    pub profile: &'static Profile,
    /// Patient's condition; `None` draws one (paper proportions).
    pub class: Option<Class>,
    /// Severity for abnormal classes; `None` draws one.
    pub severity: Option<f32>,
    /// With `severity` `None`: the drawn severity mapped into this range (the same draw, so
    /// the same patient with a fainter or plainer finding): sweeps of the findings an exam
    /// evaluation misses, for training.
    pub severity_range: Option<(f32, f32)>,
    pub fps: f32,
    /// Stop after this many frames; `None` runs forever.
    pub frames: Option<u64>,
    /// What the probe sweeps over (a kidney by default).
    pub anatomy: Anatomy,
    /// How the probe moves ([`Motion::Exam`] needs `frames`: the pass spans them).
    pub motion: Motion,
}

impl SweepConfig {
    pub fn new(seed: u64, profile: &'static Profile) -> Self {
        SweepConfig {
            seed,
            profile,
            class: None,
            severity: None,
            severity_range: None,
            fps: 20.0,
            frames: None,
            anatomy: Anatomy::Kidney,
            motion: Motion::Freehand,
        }
    }
}

/// One frame of the stream, with its ground truth.
#[derive(Clone, Debug)]
pub struct SweepFrame {
    pub index: u64,
    pub time_s: f32,
    pub state: ProbeState,
    pub image: RgbImage,
    pub class: Class,
    pub severity: f32,
    pub patient_id: u32,
    /// Whether the finding is in this frame (focal lesions leave the plane as it sweeps;
    /// false for normal patients and lifted frames). Per-frame truth for temporal
    /// aggregation.
    pub lesion_visible: bool,
    /// What the sweep shows (lifted frames of a kidney sweep still say kidney: `state` says
    /// the probe is off).
    pub anatomy: Anatomy,
}

/// Iterator over sweep frames. Deterministic for a seed.
pub struct ProbeSweep {
    cfg: SweepConfig,
    renderer: Renderer,
    patient: Patient,
    view: View,
    depth: f32,
    speckle: Speckle,
    rng: Rand,
    index: u64,
    state: ProbeState,
    left: u32,
    last: Option<(ScanFrame, bool)>,
    phase: [f32; 4],
}

impl ProbeSweep {
    /// Start a sweep. Out-of-range settings are clamped (fps to 1-120, severity to
    /// 0.05-1) rather than refused: a frame source should not fail on a typo.
    pub fn new(mut cfg: SweepConfig) -> Self {
        cfg.fps = if cfg.fps.is_finite() {
            cfg.fps.clamp(1.0, 120.0)
        } else {
            20.0
        };
        cfg.severity = cfg.severity.map(|s| {
            if s.is_finite() {
                s.clamp(crate::scene::LEAST_SEVERITY, 1.0)
            } else {
                0.5
            }
        });
        let mut rng = Rand::new(derive(cfg.seed, 0x5357, 0));
        let class = cfg.class.unwrap_or_else(|| {
            if rng.f() < 330.0 / 1599.0 {
                Class::Normal
            } else {
                Class::ABNORMAL[rng.int(0, 4) as usize]
            }
        });
        let severity = if class.is_abnormal() {
            cfg.severity.unwrap_or_else(|| {
                let drawn = crate::scene::draw_severity(&mut rng);
                match cfg.severity_range {
                    Some(range) => crate::scene::severity_in(drawn, range),
                    None => drawn,
                }
            })
        } else {
            0.0
        };
        let pid = 900_000 + (cfg.seed % 100_000) as u32;
        let patient = Patient::draw(pid, rng.u64(), class, severity, cfg.profile);
        let mut view = View::draw(&mut rng);
        view.elevation = 0.0;
        let depth = Scene::new(&patient, &view, cfg.profile).depth_cm;
        let speckle = Speckle::new(cfg.profile.beams * cfg.profile.samples, &mut rng);
        let phase = [
            rng.range(0.0, std::f32::consts::TAU),
            rng.range(0.0, std::f32::consts::TAU),
            rng.range(0.0, std::f32::consts::TAU),
            rng.range(0.0, std::f32::consts::TAU),
        ];
        let left = (cfg.fps * rng.range(2.0, 5.0)) as u32;
        ProbeSweep {
            cfg,
            renderer: Renderer::new(),
            patient,
            view,
            depth,
            speckle,
            rng,
            index: 0,
            state: ProbeState::Scanning,
            left,
            last: None,
            phase,
        }
    }

    pub fn class(&self) -> Class {
        self.patient.class
    }

    /// The swept patient's age in years: exam errors can be read per age group.
    pub fn age_y(&self) -> f32 {
        self.patient.age_y
    }

    /// The frames of a protocol pass, when this sweep is one.
    fn exam_frames(&self) -> Option<u64> {
        let n = self.cfg.frames.filter(|&n| n > 1)?;
        (self.cfg.motion == Motion::Exam).then_some(n)
    }

    fn next_state(&mut self) {
        let fps = self.cfg.fps;
        if self.exam_frames().is_some() {
            // A protocol sweep is one continuous pass.
            self.state = ProbeState::Scanning;
            self.left = u32::MAX;
            return;
        }
        let (state, secs) = match self.state {
            ProbeState::Scanning => {
                if self.rng.chance(0.6) {
                    (ProbeState::Lifted, self.rng.range(0.5, 2.0))
                } else {
                    (ProbeState::Frozen, self.rng.range(1.0, 3.0))
                }
            }
            _ => (ProbeState::Scanning, self.rng.range(3.0, 8.0)),
        };
        self.state = state;
        self.left = ((fps * secs) as u32).max(1);
    }

    /// View at time t: slow elevational sweep through the kidney, lateral drift, rocking,
    /// and breathing motion.
    fn view_at(&self, t: f32) -> View {
        let mut v = self.view.clone();
        let p = &self.phase;
        v.elevation = match self.exam_frames() {
            Some(n) => {
                // Pole to pole: from one side to the other, linearly in time.
                let u = (t * self.cfg.fps / (n - 1) as f32).clamp(0.0, 1.0);
                (SWEEP_ELEVATION * (1.0 - 2.0 * u)).abs()
            }
            None => (SWEEP_ELEVATION * libm::sinf(std::f32::consts::TAU * t / 7.0 + p[0])).abs(),
        };
        v.offset_x += 0.5 * libm::sinf(std::f32::consts::TAU * t / 11.0 + p[1]);
        v.tilt += 0.06 * libm::sinf(std::f32::consts::TAU * t / 5.0 + p[2]);
        v.push += 0.25 * libm::sinf(std::f32::consts::TAU * t / 3.5 + p[3]);
        v.rib = None;
        v.lesion_in_plane = false;
        v
    }
}

impl Iterator for ProbeSweep {
    type Item = SweepFrame;

    fn next(&mut self) -> Option<SweepFrame> {
        if self.cfg.frames.is_some_and(|n| self.index >= n) {
            return None;
        }
        if self.left == 0 {
            self.next_state();
        }
        self.left -= 1;
        let t = self.index as f32 / self.cfg.fps;
        let ts = 1_700_000_000 + self.cfg.seed % 10_000_000 + t as u64;
        let profile = self.cfg.profile;
        // A frozen frame needs something to freeze.
        if self.state == ProbeState::Frozen && self.last.is_none() {
            self.state = ProbeState::Scanning;
        }
        let frozen = match (&self.last, self.state) {
            (Some((last, vis)), ProbeState::Frozen) => {
                let mut f = last.clone();
                f.overlay.frozen = true;
                Some((f, *vis))
            }
            _ => None,
        };
        let (frame, lesion_visible) = match frozen {
            Some(f) => f,
            None => {
                let view = self.view_at(t);
                self.speckle.evolve(&mut self.rng, 0.8);
                let mut rng = Rand::new(derive(self.cfg.seed, 0x4652, self.index));
                // What is under the probe: another organ (the same all sweep long, a fixed
                // stream, seen as the view moves), the kidney scene, or air when lifted.
                let other;
                let scene;
                let (map, depth_focus, visible): (&dyn TissueMap, (f32, f32), bool) = if self.state
                    != ProbeState::Scanning
                {
                    (&Air, (self.depth, self.depth * 0.5), false)
                } else if !self.cfg.anatomy.is_kidney() {
                    let mut vr = Rand::new(derive(self.cfg.seed, 0x5649, 0));
                    other = other_view(self.cfg.anatomy, &self.patient, &view, profile, &mut vr);
                    (other.map.as_ref(), (other.depth_cm, other.focus_cm), false)
                } else {
                    scene = Scene::new(&self.patient, &view, profile);
                    let focus = scene.focus_cm.min(self.depth * 0.8);
                    (&scene, (self.depth, focus), scene.lesion_visible)
                };
                let f = (
                    self.renderer.scan(
                        profile,
                        map,
                        &view,
                        depth_focus,
                        &self.patient,
                        &mut self.speckle,
                        &mut rng,
                        ts,
                        self.index as u32,
                    ),
                    visible,
                );
                if self.state == ProbeState::Scanning {
                    self.last = Some(f.clone());
                }
                f
            }
        };
        let image = compose(profile, &frame);
        let out = SweepFrame {
            index: self.index,
            time_s: t,
            state: self.state,
            image,
            class: self.patient.class,
            severity: self.patient.severity,
            patient_id: self.patient.id,
            lesion_visible,
            anatomy: self.cfg.anatomy,
        };
        self.index += 1;
        Some(out)
    }
}

/// Header of the sweep's `frames.csv`.
pub const FRAMES_HEADER: &str =
    "path,index,time_s,state,label,severity,patient_id,lesion_visible,view,age_y";

/// Write a sweep's frames as `<out>/frame_<index>.png` plus `frames.csv` (ground truth per
/// frame), for replay by the edge runtime's folder source. `progress(done, total)`.
pub fn write_sweep(
    out: &std::path::Path,
    cfg: SweepConfig,
    progress: &dyn Fn(u64, u64),
) -> Result<std::path::PathBuf, crate::Error> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| crate::Error::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let total = cfg.frames.unwrap_or(0);
    let mut rows = Vec::new();
    let sweep = ProbeSweep::new(cfg);
    let age = format!("{:.3}", sweep.age_y());
    for f in sweep {
        let name = format!("frame_{:06}.png", f.index);
        crate::save_png(&f.image, &out.join(&name))?;
        let label = if f.anatomy.is_kidney() {
            f.class.label()
        } else {
            crate::NO_KIDNEY
        };
        rows.push([
            name,
            f.index.to_string(),
            format!("{:.3}", f.time_s),
            f.state.as_str().to_string(),
            label.to_string(),
            format!("{:.3}", f.severity),
            f.patient_id.to_string(),
            u8::from(f.lesion_visible).to_string(),
            f.anatomy.label().to_string(),
            age.clone(),
        ]);
        progress(f.index + 1, total);
    }
    let path = out.join("frames.csv");
    let csv = crate::dataset::csv_bytes(&path, FRAMES_HEADER, rows)?;
    std::fs::write(&path, csv).map_err(io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focal_lesions_come_and_go_as_the_plane_sweeps() {
        let mut cfg = SweepConfig::new(8, Profile::default_profile());
        cfg.class = Some(Class::Stone);
        cfg.severity = Some(0.3);
        cfg.fps = 2.0;
        cfg.frames = Some(40);
        let live: Vec<bool> = ProbeSweep::new(cfg)
            .filter(|f| f.state == ProbeState::Scanning)
            .map(|f| f.lesion_visible)
            .collect();
        assert!(
            live.iter().any(|v| *v) && live.iter().any(|v| !*v),
            "{live:?}"
        );
    }

    #[test]
    fn an_exam_sweep_crosses_the_smallest_focal_finding_in_one_unbroken_pass() {
        for (seed, class) in [(11, Class::Stone), (12, Class::Cyst), (13, Class::Sol)] {
            let mut cfg = SweepConfig::new(seed, Profile::default_profile());
            cfg.class = Some(class);
            cfg.severity = Some(0.05);
            cfg.fps = 10.0;
            cfg.frames = Some(41);
            cfg.motion = Motion::Exam;
            let frames: Vec<_> = ProbeSweep::new(cfg).collect();
            assert_eq!(frames.len(), 41);
            assert!(frames.iter().all(|f| f.state == ProbeState::Scanning));
            let seen: Vec<bool> = frames.iter().map(|f| f.lesion_visible).collect();
            // Seen around the mid-plane (frame 20), not at the poles.
            assert!(seen[20] && !seen[0] && !seen[40], "{class:?}: {seen:?}");
        }
    }

    #[test]
    fn motion_names_round_trip() {
        for m in [Motion::Freehand, Motion::Exam] {
            assert_eq!(Motion::parse(m.label()), Some(m));
        }
        assert_eq!(Motion::parse("wobble"), None);
    }

    #[test]
    fn sweep_can_move_to_a_capture_thread() {
        fn send<T: Send>(_: &T) {}
        send(&ProbeSweep::new(SweepConfig::new(
            1,
            Profile::default_profile(),
        )));
    }

    #[test]
    fn sweep_has_all_states_and_freezes_exactly() {
        let mut cfg = SweepConfig::new(3, Profile::by_name("peds-linear").unwrap());
        cfg.fps = 4.0;
        cfg.frames = Some(80);
        let frames: Vec<_> = ProbeSweep::new(cfg.clone()).collect();
        assert_eq!(frames.len(), 80);
        let has = |s| frames.iter().any(|f| f.state == s);
        assert!(has(ProbeState::Scanning));
        assert!(has(ProbeState::Lifted) || has(ProbeState::Frozen));
        for w in frames.windows(2) {
            if w[0].state == ProbeState::Frozen && w[1].state == ProbeState::Frozen {
                assert_eq!(w[0].image.as_raw(), w[1].image.as_raw());
            }
            if w[0].state == ProbeState::Scanning && w[1].state == ProbeState::Scanning {
                assert_ne!(w[0].image.as_raw(), w[1].image.as_raw());
            }
        }
        // Lifted frames are dark in the scan area.
        let mean = |f: &SweepFrame| {
            let img = &f.image;
            let (w, h) = img.dimensions();
            let mut s = 0u64;
            for y in h / 3..h * 2 / 3 {
                for x in w / 3..w * 2 / 3 {
                    s += img.get_pixel(x, y).0[0] as u64;
                }
            }
            s as f64 / ((w / 3) * (h / 3)) as f64
        };
        if let Some(l) = frames.iter().find(|f| f.state == ProbeState::Lifted) {
            let s = frames
                .iter()
                .find(|f| f.state == ProbeState::Scanning)
                .unwrap();
            assert!(mean(l) < 0.3 * mean(s), "{} vs {}", mean(l), mean(s));
        }
        // Smooth motion: neighbouring live frames differ less than frames seconds apart.
        let live: Vec<&SweepFrame> = frames
            .iter()
            .filter(|f| f.state == ProbeState::Scanning)
            .collect();
        let mad = |a: &SweepFrame, b: &SweepFrame| {
            let (pa, pb) = (a.image.as_raw(), b.image.as_raw());
            pa.iter()
                .zip(pb)
                .map(|(x, y)| x.abs_diff(*y) as u64)
                .sum::<u64>() as f64
                / pa.len() as f64
        };
        let near: f64 = live
            .windows(2)
            .filter(|w| w[1].index == w[0].index + 1)
            .map(|w| mad(w[0], w[1]))
            .sum::<f64>();
        let n_near = live
            .windows(2)
            .filter(|w| w[1].index == w[0].index + 1)
            .count();
        let far: f64 = (0..live.len() / 2)
            .map(|i| mad(live[i], live[live.len() - 1 - i]))
            .sum::<f64>();
        assert!(n_near > 5);
        let (near, far) = (near / n_near as f64, far / (live.len() / 2) as f64);
        assert!(near < far, "near {near:.2} far {far:.2}");
        // Written form: one PNG per frame plus the truth table.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sweep");
        let mut small = cfg.clone();
        small.frames = Some(3);
        let csv = write_sweep(&dir, small, &|_, _| {}).unwrap();
        let text = std::fs::read_to_string(csv).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(dir.join("frame_000002.png").exists());
        // Deterministic.
        let again: Vec<_> = ProbeSweep::new(cfg).take(5).collect();
        for (a, b) in frames.iter().zip(&again) {
            assert_eq!(a.image.as_raw(), b.image.as_raw());
        }
    }
}
