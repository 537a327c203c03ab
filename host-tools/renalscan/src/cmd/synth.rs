//! `renalscan synth`: synthetic pediatric renal ultrasound with known labels (crate
//! `phantom`). A labelled data set by default; `--stream` writes a probe sweep instead.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use phantom::{Anatomy, Class, Mix, Motion, PlanConfig, Profile, ProfileChoice, SweepConfig};
use progress::Progress;

/// Arguments of `renalscan synth`.
#[derive(clap::Args)]
pub struct Args {
    /// Output folder: `<class>/<id>.png` + `manifest.csv` (or sweep frames + `frames.csv`).
    #[arg(long)]
    out: PathBuf,
    /// Number of kidney images (or frames with --stream).
    #[arg(value_parser = argrange::usize_in(1, 10_000_000), long, default_value_t = 1599)]
    n: usize,
    /// Images that show no kidney (liver, spleen, bladder, bowel, ribs over lung, lifted
    /// probe, planes beside the kidney), as a fraction of --n, added after the kidney images
    /// (label `no_kidney`): what the view gate learns from.
    #[arg(long, default_value_t = phantom::dataset::DEFAULT_OTHER_FRACTION, value_parser = fraction)]
    other_views: f64,
    /// Seed: the same seed gives the same images on any machine.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Class proportions: `paper` (330 normal : 1,269 abnormal) or `balanced`.
    #[arg(long, default_value = "paper", value_parser = ["paper", "balanced"])]
    mix: String,
    /// Scanner profile: a built-in one, `mixed` (the built-in ones in turn), or `randomized`
    /// (48 scanners drawn around them: physics, display, fan shape, depth and screen layout).
    #[arg(long, default_value = "peds-convex", ignore_case = true, value_parser = profile_choices())]
    profile: String,
    /// A scanner described in a TOML file instead of a built-in profile (every key, its
    /// range and an example: `docs/phantom.md`).
    #[arg(long, conflicts_with = "profile")]
    profile_file: Option<PathBuf>,
    /// How far from the kidney's mid-plane a still's plane may lie, as a fraction of the
    /// kidney's half-width. The default keeps stills near the long axis; 0.75 covers every
    /// plane a protocol sweep passes through (pole to pole), so a model trained on them has
    /// seen the poles of normal kidneys.
    #[arg(value_parser = argrange::f32_in(0.0, 0.95), long, default_value_t = phantom::DEFAULT_ELEVATION_MAX, conflicts_with = "stream")]
    elevation_max: f32,
    /// Write a probe sweep (smooth motion, lifted probe, freeze) instead of a data set.
    #[arg(long)]
    stream: bool,
    /// Stream mode: the swept patient's class (default: drawn from the seed).
    #[arg(long, requires = "stream")]
    class: Option<String>,
    /// Stream mode: lesion severity in (0, 1] (default: drawn).
    #[arg(value_parser = argrange::f32_in(0.001, 1.0), long, requires = "stream")]
    severity: Option<f32>,
    /// Stream mode: frames per second.
    #[arg(value_parser = argrange::f32_in(0.1, 240.0), long, requires = "stream", default_value_t = 20.0)]
    fps: f32,
    /// Stream mode: what the probe sweeps over: kidney, liver, spleen, bladder, bowel,
    /// rib_lung, lifted or off_axis.
    #[arg(long, requires = "stream", default_value = "kidney", value_parser = anatomy)]
    view: Anatomy,
    /// Stream mode: a labelled set of sweeps instead of one, this many per class, each of
    /// --n frames in `<out>/<class>-<i>/` with its `frames.csv`, listed in `<out>/sweeps.csv`
    /// (for `renalscan eval --sweeps`, or as training frames: `train --data <stills> --data
    /// <out>`).
    #[arg(value_parser = argrange::usize_in(1, 100_000), long, requires = "stream", conflicts_with_all = ["class", "severity"])]
    sweeps_per_class: Option<usize>,
    /// With --sweeps-per-class: only these classes (comma-separated labels, e.g.
    /// `normal,sol,stone`), to draw more of what an exam evaluation found hard. Each sweep
    /// is the one the full set of the same seed would hold under its name.
    #[arg(long, requires = "sweeps_per_class", value_delimiter = ',')]
    classes: Vec<String>,
    /// Stream mode: how the probe moves. `freehand`: the plane wanders through the kidney,
    /// with the probe lifted and the image frozen now and then (the default for one sweep);
    /// `exam`: one unbroken protocol pass from pole to pole over the --n frames, so every
    /// finding is crossed (the default for a labelled set: its labels must be what the sweeps
    /// show). At 20 frames/s, --n 60 is a 3 s pass.
    #[arg(long, requires = "stream", value_parser = motion)]
    motion: Option<Motion>,
    /// Stream mode: draw patients aged LO to HI years (e.g. `8,16`) instead of the scanner's
    /// own range, to add training sweeps of the ages an exam evaluation found hard. The
    /// rest of each patient is drawn as without it, so only the age and what follows from
    /// it (kidney size, echogenicity, depth) change.
    #[arg(long, requires = "stream", value_parser = ages)]
    ages: Option<(f32, f32)>,
    /// Stream mode: each abnormal sweep's finding as severe as LO to HI (e.g. `0.05,0.15`)
    /// instead of anywhere in 0.06-1, to add training sweeps of the faint findings an exam
    /// evaluation misses. Each sweep keeps its patient and its place in the draw: the
    /// mildest finding of the full range becomes LO, the most marked HI.
    #[arg(long, requires = "stream", conflicts_with = "severity", value_parser = severities)]
    severities: Option<(f32, f32)>,
}

fn bounds(s: &str, (min, max): (f32, f32), give: &str) -> Result<(f32, f32), String> {
    let bad = || format!("{s:?}: give {give}");
    let (lo, hi) = s.split_once(',').ok_or_else(bad)?;
    let lo: f32 = lo.trim().parse().map_err(|_| bad())?;
    let hi: f32 = hi.trim().parse().map_err(|_| bad())?;
    if lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max {
        Ok((lo, hi))
    } else {
        Err(bad())
    }
}

fn ages(s: &str) -> Result<(f32, f32), String> {
    let give = "the youngest and oldest age in years, e.g. 8,16 (0-18)";
    bounds(s, (0.0, 18.0), give)
}

fn severities(s: &str) -> Result<(f32, f32), String> {
    let give = "the mildest and most marked severity, e.g. 0.05,0.15 (0.05-1)";
    bounds(s, (phantom::LEAST_SEVERITY, 1.0), give)
}

fn motion(s: &str) -> Result<Motion, String> {
    Motion::parse(s).ok_or_else(|| format!("unknown motion {s:?} (known: freehand, exam)"))
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not a fraction in [0, 1]")),
        Err(e) => Err(e.to_string()),
    }
}

fn anatomy(s: &str) -> Result<Anatomy, String> {
    Anatomy::parse(s).ok_or_else(|| {
        let known: Vec<&str> = std::iter::once(Anatomy::Kidney)
            .chain(Anatomy::OTHER)
            .map(Anatomy::label)
            .collect();
        format!("unknown view {s:?} (known: {})", known.join(", "))
    })
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    if let (true, Some(per_class)) = (args.stream, args.sweeps_per_class) {
        return sweep_set(&args, per_class, start);
    }
    if args.stream {
        let profile = one_profile(&args)?;
        let class = match &args.class {
            Some(c) => Some(Class::from_label(c).with_context(|| format!("unknown class {c:?}"))?),
            None => None,
        };
        let cfg = SweepConfig {
            class,
            severity: args.severity,
            severity_range: args.severities,
            fps: args.fps,
            frames: Some(args.n as u64),
            anatomy: args.view,
            motion: args.motion.unwrap_or(Motion::Freehand),
            ..SweepConfig::new(args.seed, profile)
        };
        let bar = Progress::counted("phantom sweep", args.n as u64, "frames");
        let csv = phantom::write_sweep(&args.out, cfg, &|_, _| bar.tick())?;
        bar.finish();
        log::info!("sweep of {} frames: {}", args.n, csv.display());
        return Ok(());
    }
    let mix: Mix = args.mix.parse()?;
    let profile = match &args.profile_file {
        Some(f) => ProfileChoice::One(Profile::from_file(f)?),
        None => ProfileChoice::parse(&args.profile)?,
    };
    let specs = phantom::plan(&PlanConfig {
        n: args.n,
        seed: args.seed,
        mix,
        profile,
        other_views: (args.n as f64 * args.other_views).round() as usize,
        elevation_max: args.elevation_max,
    });
    let bar = Progress::new("phantom images", specs.len() as u64);
    let manifest = phantom::write_dataset(&args.out, &specs, &|_, _| bar.tick())?;
    bar.finish();
    log::info!(
        "{} images in {:.1} s: {}",
        specs.len(),
        start.elapsed().as_secs_f64(),
        manifest.display()
    );
    Ok(())
}

/// `--stream --sweeps-per-class N`: N sweeps of each class, drawn on two threads.
fn sweep_set(args: &Args, per_class: usize, start: Instant) -> Result<()> {
    anyhow::ensure!(per_class > 0, "--sweeps-per-class must be at least 1");
    let profile = one_profile(args)?;
    let classes = if args.classes.is_empty() {
        Class::ALL.to_vec()
    } else {
        (args.classes.iter())
            .map(|c| {
                Class::from_label(c.trim()).with_context(|| {
                    let labels: Vec<_> = Class::ALL.iter().map(|c| c.label()).collect();
                    format!("--classes: unknown class {c:?}; the classes are {labels:?}")
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let jobs: Vec<(Class, usize)> = (classes.iter())
        .flat_map(|&c| (0..per_class).map(move |i| (c, i)))
        .collect();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = Progress::counted("phantom sweeps", jobs.len() as u64, "sweeps");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let rows = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(class, i)) = jobs.get(j) else {
                            return Ok(());
                        };
                        // One seed per (set seed, class, sweep): any sweep can be redrawn alone.
                        let seed = args
                            .seed
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            .wrapping_add(((class.index() as u64) << 32) | i as u64);
                        let name = format!("{}-{i:03}", class.label());
                        let cfg = SweepConfig {
                            class: Some(class),
                            severity_range: args.severities,
                            fps: args.fps,
                            frames: Some(args.n as u64),
                            motion: args.motion.unwrap_or(Motion::Exam),
                            ..SweepConfig::new(seed, profile)
                        };
                        phantom::write_sweep(&args.out.join(&name), cfg, &|_, _| {})?;
                        rows.lock()
                            .map_err(|_| anyhow::anyhow!("a sweep writer panicked"))?
                            .push([name, class.label().to_string(), seed.to_string()]);
                        bar.tick();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a sweep writer panicked"))??;
        }
        Ok(())
    })?;
    let mut rows = rows
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a sweep writer panicked"))?;
    rows.sort();
    let csv = args.out.join("sweeps.csv");
    train::dataset::write_csv(&csv, &["path", "label", "seed"], &rows)?;
    log::info!(
        "{} {} sweeps of {} frames in {:.1} s: {}",
        rows.len(),
        args.motion.unwrap_or(Motion::Exam).label(),
        args.n,
        start.elapsed().as_secs_f64(),
        csv.display()
    );
    Ok(())
}

/// `--profile`'s choices: the built-in profiles, then `mixed` and `randomized`.
fn profile_choices() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        Profile::builtin()
            .iter()
            .map(|p| p.name)
            .chain(["mixed", "randomized"]),
    )
}

/// The scanner of a sweep: `--profile-file`, or a built-in `--profile` (not `mixed`), with
/// its patients' ages replaced by `--ages`.
fn one_profile(args: &Args) -> Result<&'static Profile> {
    let profile = scanner(args)?;
    Ok(match args.ages {
        // Leaked once per run, as `Profile::from_file` does: sweeps hold `&'static Profile`.
        Some(ages) => Box::leak(Box::new(Profile {
            ages,
            ..profile.clone()
        })),
        None => profile,
    })
}

fn scanner(args: &Args) -> Result<&'static Profile> {
    Ok(match &args.profile_file {
        Some(f) => Profile::from_file(f)?,
        None if matches!(args.profile.as_str(), "mixed" | "randomized") => {
            let names: Vec<_> = Profile::builtin().iter().map(|p| p.name).collect();
            anyhow::bail!(
                "--profile {}: a sweep is one patient on one scanner, and `{}` draws a scanner \
                 per image; name one of {} or describe the scanner with --profile-file",
                args.profile,
                args.profile,
                names.join(", ")
            )
        }
        None => Profile::by_name(&args.profile)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Result<Args> {
        let argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
        crate::cmd::demo::flags("synth", &argv)
    }

    fn rows(dir: &std::path::Path) -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("sweeps.csv")).unwrap();
        text.lines().skip(1).map(str::to_string).collect()
    }

    #[test]
    fn a_sweep_set_of_some_classes_holds_the_full_sets_sweeps() {
        let tmp = tempfile::tempdir().unwrap();
        let (all, some) = (tmp.path().join("all"), tmp.path().join("some"));
        let common = [
            "--stream",
            "--sweeps-per-class",
            "1",
            "--n",
            "2",
            "--seed",
            "7",
        ];
        let with = |out: &std::path::Path, extra: &[&str]| {
            let mut v = vec!["--out", out.to_str().unwrap()];
            v.extend(common);
            v.extend(extra);
            run(args(&v).unwrap()).unwrap();
        };
        with(&all, &[]);
        with(&some, &["--classes", "sol, stone"]);
        let (all, some) = (rows(&all), rows(&some));
        assert_eq!(all.len(), Class::ALL.len());
        assert_eq!(some.len(), 2);
        assert!(
            some.iter().all(|r| all.contains(r)),
            "{some:?} not in {all:?}"
        );
        assert!(some[0].starts_with("sol-000,sol,") && some[1].starts_with("stone-000,"));
    }

    /// Each sweep's value of `column` in its first frame, from its `frames.csv`.
    fn first_frames(dir: &std::path::Path, column: &str) -> Vec<f32> {
        rows(dir)
            .iter()
            .map(|r| {
                let name = r.split(',').next().unwrap();
                let text = std::fs::read_to_string(dir.join(name).join("frames.csv")).unwrap();
                let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
                let col = header.iter().position(|h| *h == column).unwrap();
                let first = text.lines().nth(1).unwrap();
                first.split(',').nth(col).unwrap().parse().unwrap()
            })
            .collect()
    }

    fn ages_of(dir: &std::path::Path) -> Vec<f32> {
        first_frames(dir, "age_y")
    }

    /// A sweep set of `per_class` one-frame sweeps per class of seed `seed` in
    /// `tmp/name`, with `extra` flags.
    fn one_frame_set(
        tmp: &std::path::Path,
        name: &str,
        (per_class, seed): (&str, &str),
        extra: &[&str],
    ) -> std::path::PathBuf {
        let out = tmp.join(name);
        let mut v = vec!["--out", out.to_str().unwrap(), "--stream"];
        v.extend(["--sweeps-per-class", per_class, "--n", "1", "--seed", seed]);
        v.extend(extra);
        run(args(&v).unwrap()).unwrap();
        out
    }

    /// Every value of `bad` for `--flag` is refused with a message that `says` it.
    fn refused(tmp: &std::path::Path, flag: &str, bad: &[&str], says: &str) {
        for bad in bad {
            let out = tmp.join("x");
            let flag = format!("--{flag}={bad}");
            let v = ["--out", out.to_str().unwrap(), "--stream", &flag];
            let e = args(&v).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn ages_draws_patients_of_that_age_only() {
        let tmp = tempfile::tempdir().unwrap();
        let set = |name: &str, extra: &[&str]| {
            let out = one_frame_set(tmp.path(), name, ("2", "11"), extra);
            (rows(&out), ages_of(&out))
        };
        let (plain_rows, plain) = set("plain", &[]);
        let (old_rows, old) = set("old", &["--ages", "8,16"]);
        // The same sweeps (names, classes, seeds), older patients.
        assert_eq!(plain_rows, old_rows);
        assert!(old.iter().all(|a| (8.0..=16.0).contains(a)), "{old:?}");
        // peds-convex draws most patients young: some of the plain ones are under 8.
        assert!(plain.iter().any(|&a| a < 8.0), "{plain:?}");
        assert_ne!(plain, old);
        let bad = ["16,8", "8", "-1,4", "8,30", "a,b"];
        refused(tmp.path(), "ages", &bad, "youngest and oldest");
    }

    #[test]
    fn severities_draws_the_same_patients_with_fainter_findings() {
        let tmp = tempfile::tempdir().unwrap();
        let set = |name: &str, extra: &[&str]| {
            let out = one_frame_set(tmp.path(), name, ("3", "13"), extra);
            (rows(&out), first_frames(&out, "severity"), ages_of(&out))
        };
        let (plain_rows, plain, plain_ages) = set("plain", &[]);
        let (faint_rows, faint, faint_ages) = set("faint", &["--severities", "0.05,0.1"]);
        // The same sweeps and patients, fainter findings; normal sweeps stay at 0.
        assert_eq!(plain_rows, faint_rows);
        assert_eq!(plain_ages, faint_ages);
        for ((row, p), f) in plain_rows.iter().zip(&plain).zip(&faint) {
            if row.starts_with("normal-") {
                assert_eq!((*p, *f), (0.0, 0.0), "{row}");
            } else {
                assert!((0.05..=0.1).contains(f), "{row}: {f}");
            }
        }
        // peds-convex draws most findings well above 0.1.
        assert!(plain.iter().any(|&s| s > 0.2), "{plain:?}");
        let bad = ["0.1,0.05", "0.1", "0.01,0.1", "0.5,2", "a,b"];
        refused(tmp.path(), "severities", &bad, "mildest and most marked");
    }

    #[test]
    fn an_unknown_class_is_named_with_the_choices() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().to_str().unwrap();
        let a = args(&[
            "--out",
            out,
            "--stream",
            "--sweeps-per-class",
            "1",
            "--classes",
            "kidney",
        ]);
        let e = format!("{:#}", run(a.unwrap()).unwrap_err());
        assert!(
            e.contains("\"kidney\"") && e.contains("hydronephrosis"),
            "{e}"
        );
        // Without a set there is nothing to filter.
        assert!(args(&["--out", out, "--stream", "--classes", "sol"]).is_err());
        // A sweep has one scanner: a per-image profile is refused, naming the alternatives.
        let a = args(&["--out", out, "--stream", "--profile", "randomized"]);
        let e = format!("{:#}", run(a.unwrap()).unwrap_err());
        assert!(
            e.contains("peds-convex") && e.contains("--profile-file"),
            "{e}"
        );
    }
}
