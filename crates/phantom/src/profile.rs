//! Scanner profiles: transducer physics, display settings and screen layout.
//!
//! Real screen grabs differ by machine in PSF, dynamic range, geometry and burned-in
//! furniture; a model (and usimage's scan-area detection) must cope with all of that, so
//! the phantom renders several plausible machines rather than one idealised one.

use crate::Error;

/// Transducer geometry.
#[derive(Clone, Debug, PartialEq)]
pub enum Geometry {
    /// Curvilinear array: beams fan out from a virtual apex `radius_cm` above the skin.
    Convex { radius_cm: f32, sector_deg: f32 },
    /// Linear array: parallel beams over `width_cm`.
    Linear { width_cm: f32 },
}

/// Which screen layout (text, scale, grey bar, logo placement) to burn in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Text top-left, depth scale right of the image, grey bar far right, logo top-right.
    A,
    /// Grey bar and depth scale left, text block bottom, logo bottom-right.
    B,
    /// Header band across the top, scale right, grey bar left.
    C,
}

/// One scanner + probe + preset.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub vendor: &'static str,
    pub probe: &'static str,
    /// Screen grab size (width, height) in pixels.
    pub screen: (u32, u32),
    /// Box (x0, y0, x1, y1) the scan area is fitted into, top-centred.
    pub scan_box: (u32, u32, u32, u32),
    pub geometry: Geometry,
    /// Display depth range the sonographer picks from, cm (whole cm steps).
    pub depth_cm: (f32, f32),
    pub freq_mhz: f32,
    /// Axial PSF full width at half maximum (pulse length), mm.
    pub axial_fwhm_mm: f32,
    /// Lateral PSF FWHM at the focus, mm.
    pub lateral_fwhm_mm: f32,
    /// Distance from focus at which the beam has widened by sqrt(2), cm.
    pub focal_zone_cm: f32,
    pub dynamic_range_db: f32,
    pub gain_db: f32,
    /// Attenuation the default TGC curve compensates, dB/cm/MHz.
    pub tgc_db_cm_mhz: f32,
    /// Electronic noise level relative to liver echo before TGC, dB.
    pub noise_db: f32,
    /// Passes of [1 2 1] smoothing after log compression: the machine's speckle reduction.
    pub speckle_reduction: u8,
    /// Beamformed lines and samples per line of the simulated polar grid.
    pub beams: usize,
    pub samples: usize,
    /// Patient ages (years) this preset is typically used for.
    pub ages: (f32, f32),
    pub layout: Layout,
}

impl Profile {
    /// Built-in profiles, the first being the default.
    pub fn builtin() -> &'static [Profile] {
        &BUILTIN
    }

    /// Look a profile up by name (case-insensitive).
    pub fn by_name(name: &str) -> Result<&'static Profile, Error> {
        BUILTIN
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::UnknownProfile {
                name: name.to_string(),
                known: BUILTIN
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn default_profile() -> &'static Profile {
        &BUILTIN[0]
    }

    /// Index in [`Profile::builtin`].
    pub fn index(&self) -> usize {
        BUILTIN
            .iter()
            .position(|p| p.name == self.name)
            .unwrap_or(0)
    }
}

static BUILTIN: [Profile; 3] = [
    Profile {
        name: "peds-convex",
        vendor: "SONOVIA",
        probe: "C8-4",
        screen: (512, 512),
        scan_box: (44, 44, 468, 490),
        geometry: Geometry::Convex {
            radius_cm: 2.2,
            sector_deg: 60.0,
        },
        depth_cm: (6.0, 11.0),
        freq_mhz: 5.5,
        axial_fwhm_mm: 0.65,
        lateral_fwhm_mm: 1.5,
        focal_zone_cm: 1.6,
        dynamic_range_db: 60.0,
        gain_db: 0.0,
        tgc_db_cm_mhz: 0.42,
        noise_db: -62.0,
        speckle_reduction: 1,
        beams: 224,
        samples: 384,
        ages: (0.0, 16.0),
        layout: Layout::A,
    },
    Profile {
        name: "peds-linear",
        vendor: "KIDSCAN",
        probe: "L12-5",
        screen: (640, 480),
        scan_box: (150, 40, 560, 440),
        geometry: Geometry::Linear { width_cm: 5.5 },
        depth_cm: (5.0, 7.0),
        freq_mhz: 8.5,
        axial_fwhm_mm: 0.4,
        lateral_fwhm_mm: 0.85,
        focal_zone_cm: 1.2,
        dynamic_range_db: 56.0,
        gain_db: 1.0,
        tgc_db_cm_mhz: 0.45,
        noise_db: -64.0,
        speckle_reduction: 0,
        beams: 192,
        samples: 384,
        ages: (0.0, 3.0),
        layout: Layout::B,
    },
    Profile {
        name: "general-convex",
        vendor: "ECHOTEK",
        probe: "C5-2",
        screen: (640, 480),
        scan_box: (110, 56, 530, 466),
        geometry: Geometry::Convex {
            radius_cm: 4.5,
            sector_deg: 60.0,
        },
        depth_cm: (9.0, 15.0),
        freq_mhz: 3.5,
        axial_fwhm_mm: 0.85,
        lateral_fwhm_mm: 2.2,
        focal_zone_cm: 2.5,
        dynamic_range_db: 66.0,
        gain_db: -1.0,
        tgc_db_cm_mhz: 0.45,
        noise_db: -66.0,
        speckle_reduction: 2,
        beams: 192,
        samples: 384,
        ages: (4.0, 16.0),
        layout: Layout::C,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        assert_eq!(Profile::by_name("PEDS-LINEAR").unwrap().name, "peds-linear");
        assert!(matches!(
            Profile::by_name("nope"),
            Err(Error::UnknownProfile { .. })
        ));
        for p in Profile::builtin() {
            let (x0, y0, x1, y1) = p.scan_box;
            assert!(x0 < x1 && y0 < y1 && x1 <= p.screen.0 && y1 <= p.screen.1);
        }
    }
}
