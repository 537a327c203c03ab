//! Range-checked numeric values for the command lines of `renalscan` and `renalscan-edge`.
//!
//! A duration of `inf`, a rate of `nan`, zero threads or 10^19 images parse as numbers and
//! fail much later, as a panic or a run that never ends. Every numeric flag takes one of
//! these parsers instead, so clap refuses the value at once with the flag's name and the
//! allowed range (`invalid value 'inf' for '--fps <FPS>': inf is not in 0..=240`). The same
//! ranges are printed by `--help`'s error, and [`check_command`] lets each binary's tests
//! assert that no numeric flag was left unbounded.

use std::fmt::Display;
use std::str::FromStr;

/// A value parser for a number in `lo..=hi` (finite, for floats).
fn in_range<T>(lo: T, hi: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
    T::Err: Display,
{
    move |s: &str| {
        let v: T = s.trim().parse().map_err(|e| format!("{e}"))?;
        // NaN compares false both ways, so it fails this check too.
        if lo <= v && v <= hi {
            Ok(v)
        } else {
            Err(format!("{v} is not in {lo}..={hi}"))
        }
    }
}

/// A float in `lo..=hi` (never NaN or infinite).
pub fn f64_in(lo: f64, hi: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    in_range(lo, hi)
}

/// A float in `lo..=hi` (never NaN or infinite).
pub fn f32_in(lo: f32, hi: f32) -> impl Fn(&str) -> Result<f32, String> + Clone + Send + Sync {
    in_range(lo, hi)
}

/// A count in `lo..=hi`.
pub fn usize_in(
    lo: usize,
    hi: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    in_range(lo, hi)
}

/// A count in `lo..=hi`.
pub fn u32_in(lo: u32, hi: u32) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync {
    in_range(lo, hi)
}

/// A count in `lo..=hi`.
pub fn u64_in(lo: u64, hi: u64) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync {
    in_range(lo, hi)
}

/// Values no range should let through: not-a-number, infinities, negatives, and numbers
/// beyond any sensible count or duration.
pub const ABSURD: [&str; 6] = ["nan", "inf", "-inf", "-1", "1e300", "18446744073709551615"];

/// Checks every numeric option of `cmd` and its subcommands: each absurd value must be
/// refused with an error naming the flag. Options in `unbounded` (seeds, which may be any
/// number) are skipped. Also checks that no two arguments of a command share an id. Returns
/// one line per failure.
pub fn check_command(cmd: clap::Command, unbounded: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut cmd = cmd;
    cmd.build();
    walk(&cmd, &mut Vec::new(), unbounded, &mut failures);
    failures
}

fn is_numeric(arg: &clap::Arg) -> bool {
    use clap::builder::ValueParser;
    // A value parser's type id is that of the value it yields.
    let id = arg.get_value_parser().type_id();
    [
        ValueParser::new(in_range(0f64, 1.0)).type_id(),
        ValueParser::new(in_range(0f32, 1.0)).type_id(),
        ValueParser::new(in_range(0usize, 1)).type_id(),
        ValueParser::new(in_range(0u64, 1)).type_id(),
        ValueParser::new(in_range(0u32, 1)).type_id(),
        ValueParser::new(in_range(0u16, 1)).type_id(),
        ValueParser::new(in_range(0u8, 1)).type_id(),
        ValueParser::new(in_range(0i64, 1)).type_id(),
        ValueParser::new(in_range(0i32, 1)).type_id(),
    ]
    .contains(&id)
}

fn walk(cmd: &clap::Command, path: &mut Vec<String>, unbounded: &[&str], out: &mut Vec<String>) {
    // Two arguments with one id (two flattened groups with a field of the same name) share
    // one value. clap asserts this only in debug builds; the test command builds release.
    let mut ids = std::collections::BTreeSet::new();
    for arg in cmd.get_arguments() {
        if !ids.insert(arg.get_id().as_str()) {
            out.push(format!(
                "{} {}: two arguments share the id {:?}; give one an explicit `id`",
                path.join(" "),
                cmd.get_name(),
                arg.get_id().as_str()
            ));
        }
    }
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if !is_numeric(arg) || unbounded.contains(&long) {
            continue;
        }
        for bad in ABSURD {
            // Only this option, with the value: a value is checked as it is parsed, before
            // clap looks for missing required options.
            let argv = ["x".to_string(), format!("--{long}={bad}")];
            match cmd.clone().try_get_matches_from(argv) {
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::ValueValidation
                            | clap::error::ErrorKind::InvalidValue
                    ) && e.to_string().contains(&format!("--{long}")) => {}
                other => out.push(format!(
                    "{} --{long}={bad}: {}",
                    path.join(" "),
                    match other {
                        Ok(_) => "accepted".to_string(),
                        Err(e) => format!("{:?}: {e}", e.kind()),
                    }
                )),
            }
        }
    }
    for sub in cmd.get_subcommands() {
        path.push(sub.get_name().to_string());
        walk(sub, path, unbounded, out);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_outside_the_range_name_it() {
        let p = f64_in(0.0, 10.0);
        assert_eq!(p("2.5"), Ok(2.5));
        assert_eq!(p("10"), Ok(10.0));
        for bad in ["nan", "inf", "-inf", "-0.1", "10.5"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("0..=10") || e.contains("invalid"), "{bad}: {e}");
        }
        assert!(usize_in(1, 64)("0").unwrap_err().contains("1..=64"));
        assert!(u64_in(1, 100)("-1").is_err());
        assert!(f32_in(0.0, 1.0)("NaN").is_err());
    }

    #[derive(clap::Parser)]
    struct Demo {
        #[arg(long, value_parser = f32_in(0.0, 240.0))]
        fps: Option<f32>,
        #[arg(long)]
        seed: Option<u64>,
        #[command(subcommand)]
        sub: Option<Sub>,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Run {
            #[arg(long, value_parser = usize_in(1, 64))]
            threads: Option<usize>,
            #[arg(long)]
            runs: Option<usize>,
        },
    }

    #[test]
    fn an_unbounded_option_is_found_in_a_subcommand() {
        use clap::CommandFactory;
        let failures = check_command(Demo::command(), &["seed"]);
        assert!(
            failures.iter().all(|f| f.contains("--runs")),
            "{failures:#?}"
        );
        assert!(!failures.is_empty());
        let with_seed = check_command(Demo::command(), &[]);
        assert!(
            with_seed.iter().any(|f| f.contains("--seed")),
            "{with_seed:#?}"
        );
    }

    #[test]
    fn the_error_names_the_flag_and_the_range() {
        use clap::Parser;
        let e = Demo::try_parse_from(["x", "--fps", "inf"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--fps") && e.contains("0..=240"), "{e}");
    }

    /// Two flattened groups with a field of the same name: one value for two flags. Debug
    /// builds of clap panic on it; release builds (the test command's) must report it here.
    #[test]
    fn two_arguments_with_one_id_are_reported() {
        let cmd = clap::Command::new("x")
            .arg(clap::Arg::new("dir").long("cache-dir"))
            .arg(clap::Arg::new("dir").long("fixtures-dir"));
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_command(cmd, &[]))) {
            Ok(failures) => assert!(
                failures.iter().any(|f| f.contains("share the id \"dir\"")),
                "{failures:#?}"
            ),
            Err(_) if cfg!(debug_assertions) => {} // clap's own assert caught it
            Err(_) => panic!("check_command panicked in a release build"),
        }
    }
}
