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

/// How many scanners [`Profile::randomized`] draws from.
pub const RANDOMIZED: usize = 48;

impl Profile {
    /// Scanners drawn around the built-in ones for training that must not learn one machine:
    /// centre frequency, axial and lateral resolution, focal zone, dynamic range, gain, TGC,
    /// electronic noise, speckle reduction, screen layout, and the transducer's shape (convex
    /// radius and sector angle, linear width) and depth range vary over ranges real machines
    /// span. The fan's shape matters most: a model that only ever saw 60-degree fans called
    /// every normal kidney on an 80-degree, 5 cm-radius probe abnormal. Screen, scan box and
    /// line density stay the base's. A fixed bank of [`RANDOMIZED`] scanners, the same on
    /// every machine, drawn once per process.
    pub fn randomized() -> &'static [Profile] {
        static BANK: std::sync::OnceLock<Vec<Profile>> = std::sync::OnceLock::new();
        BANK.get_or_init(|| {
            (0..RANDOMIZED)
                .map(|i| {
                    let base = &BUILTIN[i % BUILTIN.len()];
                    let mut r =
                        crate::rng::Rand::new(crate::rng::derive(0x5CA7_7E12, 0xB4, i as u64));
                    let name: &'static str =
                        Box::leak(format!("{}~{i:02}", base.name).into_boxed_str());
                    Profile {
                        name,
                        freq_mhz: (base.freq_mhz * r.range(0.75, 1.3)).clamp(2.0, 12.0),
                        axial_fwhm_mm: base.axial_fwhm_mm * r.range(0.75, 1.35),
                        lateral_fwhm_mm: base.lateral_fwhm_mm * r.range(0.7, 1.5),
                        focal_zone_cm: base.focal_zone_cm * r.range(0.7, 1.4),
                        dynamic_range_db: r.range(50.0, 75.0),
                        gain_db: base.gain_db + r.range(-4.0, 4.0),
                        tgc_db_cm_mhz: r.range(0.32, 0.58),
                        noise_db: r.range(-70.0, -56.0),
                        speckle_reduction: r.int(0, 4) as u8,
                        layout: [Layout::A, Layout::B, Layout::C][r.int(0, 2) as usize],
                        // Drawn after the rest, so the draws above keep their values.
                        geometry: match base.geometry {
                            Geometry::Convex { radius_cm, .. } => Geometry::Convex {
                                radius_cm: (radius_cm * r.range(0.6, 1.6)).clamp(1.0, 7.0),
                                sector_deg: r.range(50.0, 95.0),
                            },
                            Geometry::Linear { width_cm } => Geometry::Linear {
                                width_cm: width_cm * r.range(0.7, 1.35),
                            },
                        },
                        depth_cm: {
                            // Whole centimetres, as the scene picks depth in whole steps.
                            let s = r.range(0.85, 1.3);
                            let d0 = (base.depth_cm.0 * s).round().max(3.0);
                            (d0, (base.depth_cm.1 * s).round().max(d0 + 1.0))
                        },
                        ..base.clone()
                    }
                })
                .collect()
        })
    }

    /// The fields scan conversion depends on (screen, scan box, geometry, line density): two
    /// profiles with the same key share their tables.
    pub fn geometry_key(&self) -> u64 {
        let g = match self.geometry {
            Geometry::Convex {
                radius_cm,
                sector_deg,
            } => (1u64, radius_cm.to_bits(), sector_deg.to_bits()),
            Geometry::Linear { width_cm } => (2, width_cm.to_bits(), 0),
        };
        let (w, h) = self.screen;
        let (x0, y0, x1, y1) = self.scan_box;
        [
            u64::from(w),
            u64::from(h),
            u64::from(x0),
            u64::from(y0),
            u64::from(x1),
            u64::from(y1),
            g.0,
            u64::from(g.1),
            u64::from(g.2),
            self.beams as u64,
            self.samples as u64,
        ]
        .iter()
        .fold(0xCBF2_9CE4_8422_2325u64, |h, v| crate::rng::mix64(h ^ v))
    }

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

/// A scanner described in a TOML file (`renalscan synth --profile-file`), so users and
/// tests can render machines the code has never seen. Every key of [`Profile`] is required
/// except `vendor`, `probe`, `ages` and `layout`; values are range-checked with the key named.
///
/// ```toml
/// name = "site-x-convex"
/// screen = [800, 600]
/// scan_box = [120, 60, 680, 560]
/// geometry = { kind = "convex", radius_cm = 3.0, sector_deg = 70.0 }
/// depth_cm = [7.0, 13.0]
/// freq_mhz = 4.5
/// axial_fwhm_mm = 0.7
/// lateral_fwhm_mm = 1.8
/// focal_zone_cm = 2.0
/// dynamic_range_db = 62.0
/// gain_db = 0.0
/// tgc_db_cm_mhz = 0.45
/// noise_db = -63.0
/// speckle_reduction = 1
/// beams = 224
/// samples = 384
/// layout = "C"
/// ```
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    vendor: Option<String>,
    #[serde(default)]
    probe: Option<String>,
    screen: (u32, u32),
    scan_box: (u32, u32, u32, u32),
    geometry: GeometryFile,
    depth_cm: (f32, f32),
    freq_mhz: f32,
    axial_fwhm_mm: f32,
    lateral_fwhm_mm: f32,
    focal_zone_cm: f32,
    dynamic_range_db: f32,
    gain_db: f32,
    tgc_db_cm_mhz: f32,
    noise_db: f32,
    speckle_reduction: u8,
    beams: usize,
    samples: usize,
    #[serde(default)]
    ages: Option<(f32, f32)>,
    #[serde(default)]
    layout: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum GeometryFile {
    Convex { radius_cm: f32, sector_deg: f32 },
    Linear { width_cm: f32 },
}

impl Profile {
    /// Reads a scanner description (see [`ProfileFile`]'s example). The profile lives for the
    /// rest of the process, like the built-in ones: a CLI reads one or two.
    pub fn from_file(path: &std::path::Path) -> Result<&'static Profile, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|msg| Error::ProfileFile {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// [`Profile::from_file`] on text; the error names the key and its allowed range.
    pub fn from_toml(text: &str) -> Result<&'static Profile, String> {
        let f: ProfileFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let check = |key: &str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{key} = {v} is outside {lo}..={hi}"))
            }
        };
        let (w, h) = f.screen;
        if !(160..=4096).contains(&w) || !(120..=4096).contains(&h) {
            return Err(format!(
                "screen = [{w}, {h}]: width 160..=4096, height 120..=4096"
            ));
        }
        let (x0, y0, x1, y1) = f.scan_box;
        if !(x0 < x1 && y0 < y1 && x1 <= w && y1 <= h && x1 - x0 >= 64 && y1 - y0 >= 64) {
            return Err(format!(
                "scan_box = [{x0}, {y0}, {x1}, {y1}] must lie inside the {w}x{h} screen, at least \
                 64 px each way"
            ));
        }
        let geometry = match f.geometry {
            GeometryFile::Convex {
                radius_cm,
                sector_deg,
            } => {
                check("geometry.radius_cm", radius_cm, 0.5, 10.0)?;
                check("geometry.sector_deg", sector_deg, 20.0, 120.0)?;
                Geometry::Convex {
                    radius_cm,
                    sector_deg,
                }
            }
            GeometryFile::Linear { width_cm } => {
                check("geometry.width_cm", width_cm, 2.0, 10.0)?;
                Geometry::Linear { width_cm }
            }
        };
        let (d0, d1) = f.depth_cm;
        check("depth_cm[0]", d0, 2.0, 30.0)?;
        check("depth_cm[1]", d1, d0, 30.0)?;
        check("freq_mhz", f.freq_mhz, 1.0, 20.0)?;
        check("axial_fwhm_mm", f.axial_fwhm_mm, 0.1, 3.0)?;
        check("lateral_fwhm_mm", f.lateral_fwhm_mm, 0.2, 6.0)?;
        check("focal_zone_cm", f.focal_zone_cm, 0.3, 10.0)?;
        check("dynamic_range_db", f.dynamic_range_db, 30.0, 100.0)?;
        check("gain_db", f.gain_db, -20.0, 20.0)?;
        check("tgc_db_cm_mhz", f.tgc_db_cm_mhz, 0.0, 1.5)?;
        check("noise_db", f.noise_db, -100.0, -20.0)?;
        if f.speckle_reduction > 6 {
            return Err(format!(
                "speckle_reduction = {} is outside 0..=6",
                f.speckle_reduction
            ));
        }
        if !(64..=1024).contains(&f.beams) || !(128..=2048).contains(&f.samples) {
            return Err(format!(
                "beams = {}, samples = {}: beams 64..=1024, samples 128..=2048",
                f.beams, f.samples
            ));
        }
        let ages = f.ages.unwrap_or((0.0, 16.0));
        check("ages[0]", ages.0, 0.0, 18.0)?;
        check("ages[1]", ages.1, ages.0, 18.0)?;
        let layout = match f.layout.as_deref().unwrap_or("A") {
            "A" | "a" => Layout::A,
            "B" | "b" => Layout::B,
            "C" | "c" => Layout::C,
            other => return Err(format!("layout = {other:?}: one of \"A\", \"B\", \"C\"")),
        };
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        Ok(Box::leak(Box::new(Profile {
            name: leak(f.name),
            vendor: leak(f.vendor.unwrap_or_else(|| "UNKNOWN".into())),
            probe: leak(f.probe.unwrap_or_else(|| "PROBE".into())),
            screen: f.screen,
            scan_box: f.scan_box,
            geometry,
            depth_cm: f.depth_cm,
            freq_mhz: f.freq_mhz,
            axial_fwhm_mm: f.axial_fwhm_mm,
            lateral_fwhm_mm: f.lateral_fwhm_mm,
            focal_zone_cm: f.focal_zone_cm,
            dynamic_range_db: f.dynamic_range_db,
            gain_db: f.gain_db,
            tgc_db_cm_mhz: f.tgc_db_cm_mhz,
            noise_db: f.noise_db,
            speckle_reduction: f.speckle_reduction,
            beams: f.beams,
            samples: f.samples,
            ages,
            layout,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
name = "site-x-convex"
vendor = "SITEX"
screen = [800, 600]
scan_box = [120, 60, 680, 560]
geometry = { kind = "convex", radius_cm = 3.0, sector_deg = 70.0 }
depth_cm = [7.0, 13.0]
freq_mhz = 4.5
axial_fwhm_mm = 0.7
lateral_fwhm_mm = 1.8
focal_zone_cm = 2.0
dynamic_range_db = 62.0
gain_db = 0.0
tgc_db_cm_mhz = 0.45
noise_db = -63.0
speckle_reduction = 1
beams = 224
samples = 384
layout = "C"
"#;

    #[test]
    fn a_scanner_from_a_file_renders_at_its_own_size() {
        let p = Profile::from_toml(FILE).unwrap();
        assert_eq!(p.name, "site-x-convex");
        assert_eq!(p.layout, Layout::C);
        let img = crate::render_one(crate::Class::Cyst, 0.5, p, 3, 0);
        assert_eq!(img.dimensions(), (800, 600));
        // Not a copy of a built-in: its scan-conversion tables are its own.
        let r = crate::Renderer::new();
        let own = r.lut(p, 9.0);
        let builtin = r.lut(&BUILTIN[0], 9.0);
        assert!(!std::sync::Arc::ptr_eq(&own, &builtin));
    }

    #[test]
    fn a_bad_scanner_file_names_the_key_and_the_range() {
        let e = Profile::from_toml(&FILE.replace("freq_mhz = 4.5", "freq_mhz = 45.0")).unwrap_err();
        assert!(e.contains("freq_mhz") && e.contains("1..=20"), "{e}");
        let e = Profile::from_toml(&FILE.replace("[120, 60, 680, 560]", "[120, 60, 900, 560]"))
            .unwrap_err();
        assert!(e.contains("scan_box"), "{e}");
        let e = Profile::from_toml(&FILE.replace("layout = \"C\"", "layout = \"Z\"")).unwrap_err();
        assert!(e.contains("layout"), "{e}");
        let e = Profile::from_toml(&format!("{FILE}\nbogus = 1")).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e =
            Profile::from_toml(&FILE.replace("noise_db = -63.0", "noise_db = nan")).unwrap_err();
        assert!(e.contains("noise_db"), "{e}");
    }

    #[test]
    fn randomized_scanners_vary_the_physics_and_the_fan_but_are_fixed() {
        let bank = Profile::randomized();
        assert_eq!(bank.len(), RANDOMIZED);
        assert!(std::ptr::eq(bank, Profile::randomized()), "drawn once");
        let freqs: std::collections::BTreeSet<u32> =
            bank.iter().map(|p| (p.freq_mhz * 10.0) as u32).collect();
        assert!(freqs.len() > 20, "{freqs:?}");
        let (mut narrow, mut wide, mut depths) = (0, 0, std::collections::BTreeSet::new());
        for (i, p) in bank.iter().enumerate() {
            let base = &BUILTIN[i % BUILTIN.len()];
            assert_eq!((p.screen, p.scan_box), (base.screen, base.scan_box));
            assert_ne!(p.geometry_key(), base.geometry_key(), "{}", p.name);
            match (&p.geometry, &base.geometry) {
                (
                    Geometry::Convex {
                        radius_cm,
                        sector_deg,
                    },
                    Geometry::Convex { .. },
                ) => {
                    assert!((1.0..=7.0).contains(radius_cm) && (50.0..=95.0).contains(sector_deg));
                    narrow += usize::from(*sector_deg < 60.0);
                    wide += usize::from(*sector_deg > 80.0);
                }
                (Geometry::Linear { width_cm }, Geometry::Linear { .. }) => {
                    assert!((3.8..=7.5).contains(width_cm), "{width_cm}");
                }
                _ => panic!("{}: the base's kind of transducer", p.name),
            }
            let (d0, d1) = p.depth_cm;
            assert!(d0.fract() == 0.0 && d1.fract() == 0.0 && 3.0 <= d0 && d0 < d1);
            depths.insert((d0 as u32, d1 as u32));
            assert!((50.0..=75.0).contains(&p.dynamic_range_db));
            assert!(p.speckle_reduction <= 4);
        }
        assert!(
            narrow >= 3 && wide >= 3,
            "fans: {narrow} narrow, {wide} wide"
        );
        assert!(depths.len() >= 10, "{depths:?}");
        // The values are part of the data's definition: pin some.
        assert_eq!(bank[0].name, "peds-convex~00");
        assert_ne!(bank[0], BUILTIN[0]);
        assert!(
            (bank[0].freq_mhz - 6.1547).abs() < 1e-3,
            "{}",
            bank[0].freq_mhz
        );
        assert_eq!(bank[0].depth_cm, (8.0, 14.0));
        let Geometry::Convex {
            radius_cm,
            sector_deg,
        } = bank[0].geometry
        else {
            panic!("{:?}", bank[0].geometry)
        };
        assert!((radius_cm - 2.7268).abs() < 1e-3 && (sector_deg - 80.070).abs() < 1e-2);
    }

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
