//! The phantom probe stream as a frame source: a simulated sweep over one child's kidney
//! with the probe sometimes lifted and the image sometimes frozen, rendered in-process.

use phantom::{Anatomy, Class, ProbeSweep, Profile, SweepConfig};
use usimage::GreyFrame;

use super::{FrameMeta, Pacer, Source, SourceError};
use crate::config::PhantomConfig;

/// The phantom source.
pub struct PhantomSource {
    cfg: SweepConfig,
    sweep: Option<ProbeSweep>,
    pacer: Pacer,
    lockstep: bool,
    desc: String,
}

impl PhantomSource {
    /// Builds the sweep settings; an unknown profile or class is an error (a typo in the
    /// config must not silently scan something else).
    pub fn new(c: &PhantomConfig) -> anyhow::Result<Self> {
        let profile = if c.profile.is_empty() {
            Profile::default_profile()
        } else {
            Profile::by_name(&c.profile)?
        };
        let mut cfg = SweepConfig::new(c.seed, profile);
        if !c.class.is_empty() {
            cfg.class = Some(Class::from_label(&c.class).ok_or_else(|| {
                anyhow::anyhow!(
                    "source.phantom.class {:?} is not one of normal, stone, cyst, \
                     hyperechogenicity, sol, hydronephrosis",
                    c.class
                )
            })?);
        }
        if !c.view.is_empty() {
            cfg.anatomy = Anatomy::parse(&c.view).ok_or_else(|| {
                anyhow::anyhow!(
                    "source.phantom.view {:?} is not one of kidney, liver, spleen, bladder, \
                     bowel, rib_lung, lifted, off_axis",
                    c.view
                )
            })?;
        }
        cfg.severity = c.severity;
        cfg.frames = c.frames;
        if c.fps > 0.0 {
            cfg.fps = c.fps;
        }
        let desc = format!(
            "phantom sweep over {} seed {} profile {} class {} at {}",
            cfg.anatomy.label(),
            c.seed,
            profile.name,
            if c.class.is_empty() {
                "drawn"
            } else {
                &c.class
            },
            if c.fps > 0.0 {
                format!("{} fps", c.fps)
            } else {
                "pipeline pace".into()
            }
        );
        Ok(Self {
            cfg,
            sweep: None,
            pacer: Pacer::new(c.fps),
            lockstep: c.fps <= 0.0,
            desc,
        })
    }

    /// The patient's condition in this sweep (ground truth for demos and tests).
    pub fn truth(&self) -> Class {
        ProbeSweep::new(self.cfg.clone()).class()
    }
}

impl Source for PhantomSource {
    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn open(&mut self) -> Result<(), SourceError> {
        if self.sweep.is_none() {
            self.sweep = Some(ProbeSweep::new(self.cfg.clone()));
        }
        Ok(())
    }

    fn read(&mut self, out: &mut GreyFrame) -> Result<FrameMeta, SourceError> {
        let sweep = self
            .sweep
            .as_mut()
            .ok_or_else(|| SourceError::Lost("not open".into()))?;
        self.pacer.wait();
        let f = sweep.next().ok_or(SourceError::End)?;
        let (w, h) = f.image.dimensions();
        out.set_from_rgb(w, h, f.image.as_raw())
            .map_err(|e| SourceError::Corrupt(e.to_string()))?;
        Ok(FrameMeta { index: f.index })
    }

    fn close(&mut self) {}

    fn lockstep(&self) -> bool {
        self.lockstep
    }
}
