use super::*;
use artifact::{Source, Spec};
use bundle::SecretKey;

const TARGET: &str = "x86_64-linux";

struct Cart {
    _dir: tempfile::TempDir,
    layout: Layout,
    key: SecretKey,
    keys: TrustedKeys,
    work: PathBuf,
}

fn cart() -> Cart {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate("release").unwrap();
    let keys = TrustedKeys::new(vec![key.public()]);
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    Cart {
        layout: Layout::new(&dir.path().join("root")),
        work,
        _dir: dir,
        key,
        keys,
    }
}

impl Cart {
    /// A runtime artifact whose "binary" is a script printing `version`.
    fn runtime(&self, version: &str, counter: u64, target: &str, product: &str) -> PathBuf {
        let bin = self.work.join(format!("bin-{version}-{counter}"));
        fs::write(&bin, format!("#!/bin/sh\necho {version}\n")).unwrap();
        let out = self
            .work
            .join(format!("rt-{version}-{counter}-{target}-{product}.rsu"));
        artifact::pack(
            &out,
            &Spec {
                kind: Kind::Runtime,
                product: product.into(),
                version: version.into(),
                counter,
                target: Some(target.into()),
                files: vec![Source {
                    path: "bin/renalscan-edge".into(),
                    from: bin,
                    mode: 0o755,
                }],
            },
            &self.key,
        )
        .unwrap();
        out
    }

    fn install(&self, art: &Path, downgrade: Option<&str>) -> Result<Installed, UpdateError> {
        self.install_with(art, downgrade, (1 << 20, None), &mut |_, _| Ok(()))
    }

    /// [`Cart::install`] with a payload cap and free space `(cap, free)` and a precheck.
    fn install_with(
        &self,
        art: &Path,
        downgrade: Option<&str>,
        (cap, free): (u64, Option<u64>),
        precheck: &mut dyn FnMut(Set, &Path) -> Result<(), String>,
    ) -> Result<Installed, UpdateError> {
        install(
            &self.layout,
            art,
            &self.keys,
            InstallOptions {
                target: TARGET.into(),
                runtime_version: "0.1.0".into(),
                allow_downgrade: downgrade.map(str::to_string),
                max_payload_bytes: cap,
                free_bytes: &move |_| free,
                precheck,
                on_step: &mut |_| {},
            },
        )
    }

    /// The runtime in `current` reports health, as after N minutes of progress.
    fn healthy(&self) {
        let exe = fs::canonicalize(self.layout.link(Set::Runtime, "current"))
            .unwrap()
            .join("bin/renalscan-edge");
        Health {
            exe,
            bundle: PathBuf::from("/nonexistent"),
            bundle_sha256: String::new(),
            runtime: "x".into(),
            started_unix_ms: now_ms(),
            healthy_unix_ms: now_ms(),
        }
        .store(&self.layout.health_file())
        .unwrap();
    }

    fn slots(&self) -> (Option<Slot>, Option<Slot>) {
        (
            self.layout.slot_of(Set::Runtime, "current"),
            self.layout.slot_of(Set::Runtime, "good"),
        )
    }

    fn events(&self) -> Vec<String> {
        read_log(&self.layout)
            .into_iter()
            .map(|e| e.event)
            .collect()
    }
}

#[test]
fn first_install_is_good_then_an_update_commits_only_when_healthy() {
    let c = cart();
    let v1 = c.runtime("0.1.0", 1, TARGET, PRODUCT);
    assert!(matches!(
        c.install(&v1, None).unwrap(),
        Installed::First { .. }
    ));
    assert_eq!(c.slots(), (Some(Slot::A), Some(Slot::A)));
    assert_eq!(guard(&c.layout, 3).unwrap(), Verdict::Idle);
    // The same artifact again is a no-op.
    assert!(matches!(
        c.install(&v1, None).unwrap(),
        Installed::AlreadyInstalled { .. }
    ));

    let v2 = c.runtime("0.2.0", 1, TARGET, PRODUCT);
    assert!(matches!(
        c.install(&v2, None).unwrap(),
        Installed::Switched(_)
    ));
    assert_eq!(c.slots(), (Some(Slot::B), Some(Slot::A)));
    // Another update while one is pending is refused.
    let v3 = c.runtime("0.3.0", 1, TARGET, PRODUCT);
    assert!(matches!(
        c.install(&v3, None),
        Err(UpdateError::Pending { .. })
    ));
    assert_eq!(guard(&c.layout, 3).unwrap(), Verdict::Waiting(1));
    // Health from before the switch does not count; health from the new slot does.
    assert_eq!(commit(&c.layout).unwrap(), Verdict::Waiting(1));
    c.healthy();
    assert_eq!(
        commit(&c.layout).unwrap(),
        Verdict::Committed(Set::Runtime, Slot::B)
    );
    assert_eq!(c.slots(), (Some(Slot::B), Some(Slot::B)));
    assert_eq!(State::load(&c.layout).unwrap(), State::default());
    assert_eq!(
        c.events(),
        [
            "installed",
            "switched",
            "installed",
            "switched",
            "refused",
            "committed"
        ]
    );
}

#[test]
fn a_slot_that_never_proves_healthy_is_rolled_back_after_max_tries() {
    let c = cart();
    c.install(&c.runtime("0.1.0", 1, TARGET, PRODUCT), None)
        .unwrap();
    c.install(&c.runtime("0.2.0", 1, TARGET, PRODUCT), None)
        .unwrap();
    for n in 1..=3 {
        assert_eq!(guard(&c.layout, 3).unwrap(), Verdict::Waiting(n));
    }
    assert_eq!(
        guard(&c.layout, 3).unwrap(),
        Verdict::RolledBack(Set::Runtime, Slot::B)
    );
    assert_eq!(c.slots(), (Some(Slot::A), Some(Slot::A)));
    assert_eq!(guard(&c.layout, 3).unwrap(), Verdict::Idle);
    assert!(c.events().contains(&"rolled_back".to_string()));
}

#[test]
fn older_wrong_target_and_wrong_product_are_refused_before_anything_is_touched() {
    let c = cart();
    c.install(&c.runtime("0.2.0", 5, TARGET, PRODUCT), None)
        .unwrap();
    let before = fs::read_link(c.layout.link(Set::Runtime, "current")).unwrap();
    let old = c.runtime("0.2.0", 4, TARGET, PRODUCT);
    let e = c.install(&old, None).unwrap_err();
    assert!(
        e.to_string().contains("older than 0.2.0 (release 5)"),
        "{e}"
    );
    let e = c
        .install(&c.runtime("0.3.0", 1, "aarch64-linux", PRODUCT), None)
        .unwrap_err();
    assert!(e.to_string().contains("runtime for aarch64-linux"), "{e}");
    let e = c
        .install(&c.runtime("0.3.0", 1, TARGET, "thyroid"), None)
        .unwrap_err();
    assert!(e.to_string().contains("product \"thyroid\""), "{e}");
    assert_eq!(
        fs::read_link(c.layout.link(Set::Runtime, "current")).unwrap(),
        before
    );
    assert!(!c.layout.slot_dir(Set::Runtime, Slot::B).exists());
    // With a reason the downgrade goes in, recorded, and still has to prove itself.
    assert!(matches!(
        c.install(&old, Some("field issue 17 in 0.2.0+5")).unwrap(),
        Installed::Switched(Pending {
            downgrade: Some(_),
            ..
        })
    ));
    let log = read_log(&c.layout);
    assert!(log
        .iter()
        .any(|e| e.event == "downgrade" && e.detail.contains("field issue 17")));
}

#[test]
fn a_failed_precheck_removes_the_staging_and_switches_nothing() {
    let c = cart();
    c.install(&c.runtime("0.1.0", 1, TARGET, PRODUCT), None)
        .unwrap();
    let art = c.runtime("0.2.0", 1, TARGET, PRODUCT);
    let e = c
        .install_with(&art, None, (1 << 20, None), &mut |_, _| {
            Err("selftest: reference 2 answered normal".into())
        })
        .unwrap_err();
    assert!(e.to_string().contains("reference 2"), "{e}");
    assert_eq!(c.slots(), (Some(Slot::A), Some(Slot::A)));
    assert_eq!(
        fs::read_dir(c.layout.set_dir(Set::Runtime).join("slots"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn guard_repairs_what_a_power_cut_leaves() {
    let c = cart();
    c.install(&c.runtime("0.1.0", 1, TARGET, PRODUCT), None)
        .unwrap();
    let dir = c.layout.set_dir(Set::Runtime);
    // A stale temporary link, a half-written staging folder, and a dangling `current`.
    std::os::unix::fs::symlink("slots/b", dir.join(".current.tmp")).unwrap();
    fs::create_dir_all(dir.join("slots/.b.new/bin")).unwrap();
    fs::remove_file(dir.join("current")).unwrap();
    std::os::unix::fs::symlink("slots/b", dir.join("current")).unwrap();
    assert_eq!(guard(&c.layout, 3).unwrap(), Verdict::Idle);
    assert_eq!(c.slots(), (Some(Slot::A), Some(Slot::A)));
    assert!(!dir.join(".current.tmp").exists() && !dir.join("slots/.b.new").exists());
    // A damaged state file falls back to the good slots.
    fs::write(c.layout.state_file(), "pending = [").unwrap();
    assert_eq!(guard(&c.layout, 3).unwrap(), Verdict::Idle);
}

#[test]
fn a_payload_over_the_cap_or_the_free_space_is_refused_untouched() {
    let c = cart();
    c.install(&c.runtime("0.1.0", 1, TARGET, PRODUCT), None)
        .unwrap();
    let art = c.runtime("0.2.0", 1, TARGET, PRODUCT);
    let try_with =
        |cap: u64, free: Option<u64>| c.install_with(&art, None, (cap, free), &mut |_, _| Ok(()));
    let e = try_with(8, None).unwrap_err();
    assert!(e.to_string().contains("above the cap of 8 bytes"), "{e}");
    let e = try_with(1 << 20, Some(SPACE_RESERVE)).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    assert_eq!(c.slots(), (Some(Slot::A), Some(Slot::A)));
    assert!(matches!(
        try_with(1 << 20, Some(1 << 30)),
        Ok(Installed::Switched(_))
    ));
}
