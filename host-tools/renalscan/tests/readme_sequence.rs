//! The README's CLI sequence, run by hand as a user would, on a tiny phantom set: each step's
//! output is the next step's documented input (no copying between steps, as the demo once
//! did to hide that `eval` found no manifest beside the int8 model), and a failing step's
//! error names its cause.
//!
//! synth -> train -> eval -> quantize -> eval (int8) -> keygen -> bundle -> verify.
//! About two minutes on 2 cores: the frozen ResNet-50 sees ~100 images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (run-time CARGO_MANIFEST_DIR first: the target dir may be shared).
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
}

/// `renalscan <args>` from the workspace root, so the weights cache is the one every test
/// and the CLI share.
fn renalscan(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_renalscan"));
    cmd.current_dir(workspace_root()).env("RUST_LOG", "warn");
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("renalscan runs")
}

/// `renalscan eval --model <model> --data <data> --out <out>`.
fn eval(model: &Path, data: &Path, out: &Path) -> Output {
    renalscan(&[
        &"eval", &"--model", &model, &"--data", &data, &"--out", &out,
    ])
}

fn ok(step: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`renalscan {step}` failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The release key pair the sequence signs with.
struct Signing {
    key: PathBuf,
    public: PathBuf,
}

impl Signing {
    /// `renalscan bundle` of `(model, manifest)` into `out`, then `renalscan verify` of it;
    /// verify's output. `what` tells the two uses apart in a failure.
    fn bundle_and_verify(
        &self,
        what: &str,
        (model, manifest, out): (&Path, &Path, &Path),
        description: &str,
        extra: &[&str],
    ) -> String {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"bundle",
            &"--model",
            &model,
            &"--manifest",
            &manifest,
            &"--key",
            &self.key,
            &"--out",
            &out,
            &"--data-source",
            &"synthetic",
            &"--data-description",
            &description,
        ];
        for e in extra {
            args.push(e);
        }
        ok(&format!("bundle{what}"), renalscan(&args));
        ok(
            &format!("verify{what}"),
            renalscan(&[&"verify", &out, &"--trusted-keys", &self.public]),
        )
    }
}

fn exists(p: &Path) {
    assert!(p.exists(), "{} was not written", p.display());
}

#[test]
fn the_readme_cli_sequence_chains_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (data, run, q, keys, bundle) = (
        t.join("phantom"),
        t.join("run"),
        t.join("q"),
        t.join("keys"),
        t.join("bundle"),
    );

    ok(
        "synth",
        renalscan(&[
            &"synth",
            &"--out",
            &data,
            &"--n",
            &"96",
            &"--seed",
            &"11",
            &"--mix",
            &"balanced",
        ]),
    );
    exists(&data.join("manifest.csv"));

    ok(
        "train",
        renalscan(&[&"train", &"--data", &data, &"--out", &run, &"--seed", &"1"]),
    );
    for f in ["model.onnx", "manifest.toml", "split.csv"] {
        exists(&run.join(f));
    }

    ok(
        "eval (float)",
        eval(&run, &run.join("split.csv"), &t.join("report")),
    );
    exists(&t.join("report/metrics.json"));
    predictions_agree(&run.join("split.csv"), &t.join("report"));

    // The README's form: a model file in, a model file out, in a folder of its own.
    let int8 = q.join("int8.onnx");
    ok(
        "quantize",
        renalscan(&[
            &"quantize",
            &"--model",
            &run.join("model.onnx"),
            &"--calib",
            &run.join("split.csv"),
            &"--out",
            &int8,
            &"--calib-n",
            &"8",
            &"--val-n",
            &"8",
            &"--sqnr-n",
            &"2",
            &"--check-integer",
            &"0",
            &"--gptq",
            &"8",
            &"--bias-correction",
            &"8",
        ]),
    );
    exists(&int8);
    exists(&q.join("manifest.toml"));

    ok(
        "eval (int8)",
        eval(&int8, &run.join("split.csv"), &t.join("report-int8")),
    );
    exists(&t.join("report-int8/metrics.json"));

    ok(
        "keygen",
        renalscan(&[&"keygen", &"--out", &keys, &"--name", &"site"]),
    );
    let signed = Signing {
        key: keys.join("site.key"),
        public: keys.join("site.pub"),
    };
    let verified = signed.bundle_and_verify(
        "",
        (&int8, &q.join("manifest.toml"), &bundle),
        "renalscan phantom, 96 images (README sequence test)",
        &[],
    );
    assert!(!verified.trim().is_empty(), "verify printed nothing");

    // Site calibration on another set of images, signed again, verified, and its card says
    // what it did.
    let (site, cal, site_bundle) = (t.join("site"), t.join("cal"), t.join("site-bundle"));
    ok(
        "synth (site)",
        renalscan(&[
            &"synth",
            &"--out",
            &site,
            &"--n",
            &"48",
            &"--seed",
            &"12",
            &"--mix",
            &"balanced",
        ]),
    );
    let report = ok(
        "calibrate",
        renalscan(&[
            &"calibrate",
            &"--bundle",
            &bundle,
            &"--trusted-keys",
            &keys.join("site.pub"),
            &"--data",
            &site,
            &"--site",
            &"clinic-a",
            &"--out",
            &cal,
            &"--min-normal",
            &"4",
            &"--min-abnormal",
            &"4",
        ]),
    );
    for f in ["model.onnx", "manifest.toml", "calibration.md"] {
        exists(&cal.join(f));
    }
    assert!(
        report.contains("# Site calibration: clinic-a") && report.contains("sensitivity bound"),
        "{report}"
    );
    let draft = std::fs::read_to_string(cal.join("manifest.toml")).unwrap();
    assert!(
        draft.contains("[site_calibration]") && draft.contains("site = \"clinic-a\""),
        "{draft}"
    );
    signed.bundle_and_verify(
        " (calibrated)",
        (
            &cal.join("model.onnx"),
            &cal.join("manifest.toml"),
            &site_bundle,
        ),
        "renalscan phantom, 96 images, calibrated on 48 (README sequence test)",
        &["--no-selftest"],
    );
    let card = std::fs::read_to_string(site_bundle.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("## Site calibration") && card.contains("Recalibrated for **clinic-a**"),
        "{card}"
    );

    // The step the README once broke on: eval of an int8 file with no manifest beside it
    // fails with the cause and the fix, never an empty "Caused by:".
    std::fs::remove_file(q.join("manifest.toml")).unwrap();
    let out = eval(&int8, &run.join("split.csv"), &t.join("r3"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--manifest"), "{err}");
    for (i, line) in err.lines().enumerate() {
        if line.trim_end().ends_with("Caused by:") {
            let next = err.lines().nth(i + 1).unwrap_or("");
            assert!(!next.trim().is_empty(), "empty cause in:\n{err}");
        }
    }
}

/// `predictions.csv` lists every test image of the split once, and each row's call is its
/// p(abnormal) against the threshold the report used.
fn predictions_agree(split: &Path, report: &Path) {
    let text = std::fs::read_to_string(split).expect("split.csv");
    let tests = text.lines().filter(|l| l.ends_with(",test")).count();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("metrics.json")).expect("metrics.json"))
            .expect("metrics.json is JSON");
    let threshold = metrics["overall"]["threshold"].as_f64().expect("threshold");
    let mut r = csv::Reader::from_path(report.join("predictions.csv")).expect("predictions.csv");
    let header: Vec<String> = r
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name).expect(name);
    let (p, call, path) = (col("p_abnormal"), col("call"), col("path"));
    let normal = col("p_normal");
    let classes: Vec<usize> = (0..header.len())
        .filter(|&i| {
            header[i].starts_with("p_") && header[i] != "p_abnormal" && header[i] != "p_kidney"
        })
        .collect();
    assert_eq!(
        classes.len(),
        6,
        "one probability column per class: {header:?}"
    );
    let mut seen = std::collections::HashSet::new();
    for row in r.records() {
        let row = row.expect("row");
        let v: f64 = row[p].parse().expect("p_abnormal is a number");
        let want = if v >= threshold { "abnormal" } else { "normal" };
        assert_eq!(&row[call], want, "{:?}", row);
        let sum: f64 = classes
            .iter()
            .map(|&i| row[i].parse::<f64>().expect("a probability"))
            .sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "class probabilities sum to {sum}: {row:?}"
        );
        let pn: f64 = row[normal].parse().expect("p_normal");
        assert!(
            (v - (1.0 - pn)).abs() < 2e-6,
            "p_abnormal is 1 - p_normal: {row:?}"
        );
        assert!(seen.insert(row[path].to_string()), "{} twice", &row[path]);
    }
    assert_eq!(seen.len(), tests, "one row per test image");
}
