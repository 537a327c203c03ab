//! Signed A/B updates on a cart root in a temporary folder, driven through the real
//! `renalscan-edge update` commands: an install killed (SIGKILL, as a power cut) after each
//! of its steps ends on a working slot once the guard has run; a runtime that crashes at
//! every start rolls back by itself; a bundle update commits only on the runtime's proof of
//! health; downgrades, another product's bundle, a revoked key and a tampered artifact are
//! each refused with the reason.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use artifact::{Kind, Source, Spec};
use bundle::SecretKey;
use common::*;

struct Cart {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    key: SecretKey,
}

fn target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn cart() -> Cart {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let key = SecretKey::generate("release-2026").unwrap();
    let keys = root.join("etc/renalscan/keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("release.pub"), key.public().to_file_text()).unwrap();
    Cart {
        _tmp: tmp,
        root,
        work,
        key,
    }
}

impl Cart {
    /// A runtime artifact whose binary is a shell script (`body` after the shebang); `REAL`
    /// in it stands for the runtime under test.
    fn runtime(&self, version: &str, counter: u64, body: &str) -> PathBuf {
        let bin = self.work.join(format!("edge-{version}-{counter}"));
        let script = format!(
            "#!/bin/sh\n{}\n",
            body.replace("REAL", &edge_bin().display().to_string())
        );
        std::fs::write(&bin, script).unwrap();
        let mut files = vec![Source {
            path: "bin/renalscan-edge".into(),
            from: bin,
            mode: 0o755,
        }];
        for unit in ["renalscan-edge.service", "99-renalscan-probe.rules"] {
            files.push(Source {
                path: format!("share/deploy/{unit}"),
                from: deploy_dir().join(unit),
                mode: 0o644,
            });
        }
        self.pack(
            &format!("runtime-{version}-{counter}"),
            (Kind::Runtime, contract::manifest::PRODUCT),
            version,
            counter,
            Some(target()),
            files,
        )
    }

    fn pack(
        &self,
        name: &str,
        (kind, product): (Kind, &str),
        version: &str,
        counter: u64,
        target: Option<String>,
        files: Vec<Source>,
    ) -> PathBuf {
        let out = self.work.join(format!("{name}.rsu"));
        artifact::pack(
            &out,
            &Spec {
                kind,
                product: product.into(),
                version: version.into(),
                counter,
                target,
                files,
            },
            &self.key,
        )
        .unwrap();
        out
    }

    /// A bundle with the tiny model, signed by the cart's release key, as an artifact.
    fn bundle(&self, version: &str, counter: u64, product: &str) -> PathBuf {
        let dir = self
            .work
            .join(format!("bundle-{version}-{counter}-{product}"));
        std::fs::create_dir_all(&dir).unwrap();
        let model = tiny_model();
        std::fs::write(dir.join(bundle::MODEL_FILE), &model).unwrap();
        let text = testkit::signed::manifest_text(&bundle::sha256_hex(&model), 0.5)
            .replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
            .replace(
                "[release]\ncounter = 1\nproduct = \"renalscan-pediatric-renal\"",
                &format!("[release]\ncounter = {counter}\nproduct = \"{product}\""),
            );
        std::fs::write(dir.join(bundle::MANIFEST_FILE), text).unwrap();
        bundle::sign_bundle(&dir, &self.key).unwrap();
        let files = bundle_files(&dir);
        // As `renalscan release bundle`: the artifact names the bundle's product.
        self.pack(
            &format!("bundle-{version}-{counter}-{product}"),
            (Kind::Bundle, product),
            version,
            counter,
            None,
            files,
        )
    }

    /// `renalscan-edge <args> --root <root>` with the runtime under test.
    fn edge(&self, args: &[&str]) -> Output {
        Command::new(edge_bin())
            .args(args)
            .arg("--root")
            .arg(&self.root)
            .output()
            .unwrap()
    }

    fn install(&self, art: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["update", "install", art.to_str().unwrap(), "--no-restart"];
        args.extend_from_slice(extra);
        self.edge(&args)
    }

    /// What systemd runs before each start: the guard, from the good runtime.
    fn guard(&self) -> Output {
        let out = Command::new(self.root.join("opt/renalscan/good/bin/renalscan-edge"))
            .args(["update", "guard", "--max-tries", "3", "--root"])
            .arg(&self.root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "guard: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn status(&self) -> serde_json::Value {
        let out = self.edge(&["update", "status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `current`'s runtime binary with `args`.
    fn current(&self, args: &[&str]) -> Output {
        Command::new(self.root.join("opt/renalscan/current/bin/renalscan-edge"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// A test bundle's files as artifact payload.
fn bundle_files(dir: &Path) -> Vec<Source> {
    ["model.onnx", "manifest.toml", "manifest.sig"]
        .iter()
        .map(|f| Source {
            path: f.to_string(),
            from: dir.join(f),
            mode: 0o644,
        })
        .collect()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The refusal: fails, says why; printed for the record.
fn refused(out: &Output, what: &str, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} was accepted");
    assert!(err.contains(needle), "{what}: {err}");
    eprintln!("REFUSED ({what}): {}", err.trim());
}

const STEPS: [&str; 5] = [
    "verified",
    "staged",
    "slot-replaced",
    "pending-recorded",
    "switched",
];

#[test]
fn every_interrupted_install_ends_on_a_working_slot() {
    for step in STEPS {
        let c = cart();
        ok(
            &c.install(&c.runtime("0.1.0", 1, "exec REAL \"$@\""), &[]),
            "first install",
        );
        let v2 = c.runtime("0.2.0", 1, "RENALSCAN_SLOT_TEST=v2 exec REAL \"$@\"");
        // The install stops after `step`; SIGKILL then, as a power cut would.
        let mut child = Command::new(edge_bin())
            .args(["update", "install"])
            .arg(&v2)
            .arg("--no-restart")
            .arg("--root")
            .arg(&c.root)
            .env("RENALSCAN_FAULT_PAUSE_AT", step)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "install ended before {step}"
            );
            if line.contains(&format!("paused after step {step}")) {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Power back: the guard runs before the service starts.
        c.guard();
        let v = c.current(&["version", "--json"]);
        ok(&v, &format!("current runtime after a kill at {step}"));
        let s = c.status();
        let pending = &s["pending"];
        if step == "switched" {
            // The new slot runs, still pending: it has to prove itself, the old one stays good.
            assert_eq!(s["pending"]["tries"], 1, "{s}");
            assert_eq!(s["runtime"]["current"]["slot"], "b", "{s}");
            assert_eq!(s["runtime"]["good"]["slot"], "a", "{s}");
        } else {
            assert!(pending.is_null(), "{step}: {s}");
            assert_eq!(s["runtime"]["current"]["slot"], "a", "{step}: {s}");
            // The cart is not wedged: the same update goes in now.
            ok(
                &c.install(&v2, &[]),
                &format!("install again after a kill at {step}"),
            );
        }
        let left: Vec<_> = std::fs::read_dir(c.root.join("opt/renalscan/slots"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{step}: leftovers {left:?}");
        eprintln!("killed after {step}: {}", s["recent"][0]["detail"]);
    }
}

#[test]
fn a_stale_link_from_a_power_cut_is_repaired() {
    let c = cart();
    ok(
        &c.install(&c.runtime("0.1.0", 1, "exec REAL \"$@\""), &[]),
        "first install",
    );
    let dir = c.root.join("opt/renalscan");
    std::os::unix::fs::symlink("slots/b", dir.join(".current.tmp")).unwrap();
    std::fs::remove_file(dir.join("current")).unwrap();
    std::os::unix::fs::symlink("slots/b", dir.join("current")).unwrap();
    assert!(!dir.join("current/bin/renalscan-edge").exists());
    c.guard();
    ok(&c.current(&["version"]), "current after the repair");
    assert!(!dir.join(".current.tmp").exists());
}

#[test]
fn a_crash_looping_runtime_rolls_back_by_itself() {
    let c = cart();
    ok(
        &c.install(&c.runtime("0.1.0", 1, "exec REAL \"$@\""), &[]),
        "first install",
    );
    // Passes the pre-switch check (`version`), then dies at every start of `run`.
    let crashing = c.runtime(
        "0.2.0",
        1,
        "[ \"$1\" = version ] && exec REAL \"$@\"\necho 'simulated crash' >&2\nkill -SEGV $$",
    );
    ok(&c.install(&crashing, &[]), "install the crashing runtime");
    let mut starts = Vec::new();
    for _ in 0..6 {
        c.guard();
        // A start of the service, as far as this test needs one.
        let out = c.current(&["run", "--help"]);
        starts.push(out.status.success());
        if out.status.success() {
            break;
        }
    }
    // Three failed starts of the new runtime, then the guard put the old one back.
    assert_eq!(starts, [false, false, false, true]);
    let s = c.status();
    assert_eq!(s["runtime"]["current"]["slot"], "a", "{s}");
    assert_eq!(s["runtime"]["good"]["slot"], "a", "{s}");
    assert!(s["pending"].is_null(), "{s}");
    assert_eq!(s["recent"][0]["event"], "rolled_back", "{s}");
    eprintln!("{}", s["recent"][0]["detail"]);
}

/// The runtime's configuration on the cart root: its bundle slot, keys, floor and health.
fn cart_config(c: &Cart) -> PathBuf {
    let r = c.root.display();
    let p = c.root.join("etc/renalscan/config.toml");
    std::fs::write(
        &p,
        format!(
            "[model]\nbundle = \"{r}/var/lib/renalscan/bundles/current\"\n\
             trusted_keys = \"{r}/etc/renalscan/keys\"\n\
             floor_file = \"{r}/var/lib/renalscan/bundles/floor.toml\"\n\
             [aggregate]\nwindow = 3\nmin_frames = 2\nreport_every_s = 0.0\n\
             [update]\nhealth_file = \"{r}/var/lib/renalscan/health/healthy.json\"\n\
             health_after_s = 1.0\n"
        ),
    )
    .unwrap();
    p
}

/// The service's run on the cart's current bundle: 3 s of replay at 10 fps.
fn run_service(cfg: &Path, frames: &Path) -> Output {
    Command::new(edge_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--replay")
        .arg(frames)
        .args([
            "--loop",
            "--fps",
            "10",
            "--max-frames",
            "30",
            "--no-journal",
        ])
        .output()
        .unwrap()
}

#[test]
fn bundle_updates_commit_on_health_and_refuse_what_does_not_belong() {
    let c = cart();
    let cfg = cart_config(&c);
    let frames = c.work.join("frames");
    write_frames(&frames, &[false, false, true, true]);
    let v1 = c.bundle("0.1.0", 10, contract::manifest::PRODUCT);
    let v2 = c.bundle("0.2.0", 3, contract::manifest::PRODUCT);
    ok(&c.install(&v1, &[]), "first bundle");
    ok(&c.install(&v2, &[]), "bundle 0.2.0");
    assert_eq!(c.status()["pending"]["release"], "0.2.0 (release 3)");

    // Not committed until a runtime started from the new slot has run long enough.
    ok(&c.edge(&["update", "commit"]), "commit");
    assert!(!c.status()["pending"].is_null());
    ok(&run_service(&cfg, &frames), "run on bundle 0.2.0");
    let out = c.edge(&["update", "commit"]);
    ok(&out, "commit");
    assert!(String::from_utf8_lossy(&out.stdout).contains("proved healthy"));
    let s = c.status();
    assert!(s["pending"].is_null(), "{s}");
    assert_eq!(s["bundle"]["good"]["slot"], "b", "{s}");
    assert_eq!(s["bundle_floor"], "0.2.0 (release 3)", "{s}");

    // Back to 0.1.0: refused, by the installer and by the runtime's own load.
    refused(
        &c.install(&v1, &[]),
        "bundle downgrade",
        "older than 0.2.0 (release 3)",
    );
    let floor_refusal = Command::new(edge_bin())
        .args(["version", "--config"])
        .arg(&cfg)
        .arg("--bundle")
        .arg(c.root.join("var/lib/renalscan/bundles/slots/a"))
        .output()
        .unwrap();
    refused(
        &floor_refusal,
        "runtime load of an older bundle",
        "--allow-downgrade",
    );
    // Deliberately, with a reason: installed, and every decision says so.
    ok(
        &c.install(&v1, &["--allow-downgrade", "field safety notice FSN-12"]),
        "downgrade with a reason",
    );
    let out = run_service(&cfg, &frames);
    ok(&out, "run on the downgraded bundle");
    let d = decisions(&json_lines(&String::from_utf8_lossy(&out.stdout)));
    assert!(!d.is_empty());
    for d in &d {
        let o = d["trace"]["downgrade_override"]
            .as_str()
            .unwrap_or_default();
        assert!(o.contains("FSN-12"), "{d}");
        assert_eq!(d["trace"]["release"], "0.1.0 (release 10)", "{d}");
    }
    ok(&c.edge(&["update", "commit"]), "commit the downgrade");

    // Another product's bundle; a tampered artifact.
    refused(
        &c.install(&c.bundle("0.3.0", 1, "thyroid-screen"), &[]),
        "another product's bundle",
        "product \"thyroid-screen\"",
    );
    // A bundle whose manifest names another product inside an artifact that claims ours.
    let dir = c.work.join("bundle-0.3.0-1-thyroid-screen");
    let files = bundle_files(&dir);
    let disguised = c.pack(
        "disguised",
        (Kind::Bundle, contract::manifest::PRODUCT),
        "0.3.0",
        1,
        None,
        files,
    );
    refused(
        &c.install(&disguised, &[]),
        "another product's bundle inside",
        "the bundle inside is refused",
    );
    let good = c.bundle("0.3.0", 2, contract::manifest::PRODUCT);
    let mut bytes = std::fs::read(&good).unwrap();
    let model = tiny_model();
    let at = bytes.windows(64).position(|w| w == &model[..64]).unwrap();
    bytes[at + model.len() / 2] ^= 1;
    let tampered = c.work.join("tampered.rsu");
    std::fs::write(&tampered, &bytes).unwrap();
    refused(
        &c.install(&tampered, &[]),
        "tampered artifact",
        "changed after signing",
    );
    ok(&c.install(&good, &[]), "the untampered one");
}

#[test]
fn a_revoked_key_is_refused_at_the_next_load_and_for_updates() {
    let c = cart();
    let cfg = cart_config(&c);
    ok(
        &c.install(&c.bundle("0.1.0", 1, contract::manifest::PRODUCT), &[]),
        "first bundle",
    );
    // Commission the cart with a root key and a list trusting the release key.
    let root = SecretKey::generate("renalscan-root").unwrap();
    let keys = c.root.join("etc/renalscan/keys");
    std::fs::create_dir_all(keys.join("root")).unwrap();
    std::fs::write(keys.join("root/root.pub"), root.public().to_file_text()).unwrap();
    let list = |serial: u64, revoke: bool| {
        let other = SecretKey::generate("release-2027").unwrap();
        let l = bundle::trust::TrustList {
            serial,
            issued: "2026-12-04".into(),
            keys: if revoke {
                vec![other.public()]
            } else {
                vec![c.key.public()]
            },
            revoked: if revoke {
                vec![bundle::trust::Revocation {
                    key_id: c.key.public().key_id().into(),
                    reason: "signing laptop stolen".into(),
                    revoked: "2026-12-04".into(),
                }]
            } else {
                vec![]
            },
        };
        let p = c.work.join(format!("list-{serial}.toml"));
        std::fs::write(&p, l.signed_text(&root).unwrap()).unwrap();
        p
    };
    let trust = |p: &Path| {
        Command::new(edge_bin())
            .args(["trust", "install"])
            .arg(p)
            .arg("--keys")
            .arg(&keys)
            .output()
            .unwrap()
    };
    ok(&trust(&list(1, false)), "trust list 1");
    ok(
        &Command::new(edge_bin())
            .args(["version", "--config"])
            .arg(&cfg)
            .output()
            .unwrap(),
        "the bundle under list 1",
    );
    ok(
        &trust(&list(2, true)),
        "trust list 2 revoking the release key",
    );
    let out = Command::new(edge_bin())
        .args(["version", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    refused(
        &out,
        "bundle of a revoked key at load",
        "REVOKED since 2026-12-04",
    );
    refused(
        &c.install(&c.bundle("0.2.0", 1, contract::manifest::PRODUCT), &[]),
        "update signed by a revoked key",
        "signing laptop stolen",
    );
    refused(
        &trust(&list(1, false)),
        "the older list again",
        "not newer than the installed #2",
    );
}
