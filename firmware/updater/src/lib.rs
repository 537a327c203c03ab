//! A/B slots for the cart's runtime and model bundle: an update that cannot leave a dead cart.
//!
//! Each of the two sets (the runtime under `/opt/renalscan`, bundles under
//! `/var/lib/renalscan/bundles`) has two slots, `slots/a` and `slots/b`, and two links:
//! `current` (what the service starts) and `good` (the last slot that proved healthy). An
//! update ([`install`]) is verified in full, unpacked into the slot that is not `good`, synced,
//! recorded as *pending* in the state file, and only then is `current` switched, by an atomic
//! rename of a symlink followed by an fsync of the folder. Every step leaves the cart on a
//! slot that runs: before the switch the pending record is ignored, after it the old slot is
//! still `good`.
//!
//! The pending slot becomes `good` ([`commit`]) once the runtime started from it has made
//! pipeline progress for the configured time and said so in its health file. Until then
//! every start of the service runs [`guard`] first (as root, from the `good` runtime): it
//! cleans what a power cut left behind, repairs links, commits a healthy pending slot, and
//! counts failed starts: after `max_tries` starts without health, `current` goes back to
//! `good` by itself. A crash loop, a selftest that fails in the service's sandbox, a power
//! cut: all end on the previous slot.
//!
//! Everything that happens is appended to `update/log.jsonl` (fsynced): installs, switches,
//! commits, rollbacks, refusals and deliberate downgrades.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use artifact::{Kind, UpdateManifest};
use bundle::policy::{self, Policy, PolicyError, FLOOR_FILE};
use bundle::{BundleError, TrustedKeys};
use contract::manifest::{ReleaseVersion, PRODUCT};
use serde::{Deserialize, Serialize};

/// The two things a cart updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Set {
    /// The runtime (binary, unit, default configuration, SBOM).
    Runtime,
    /// The model bundle.
    Bundle,
}

impl Set {
    /// The name in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Set::Runtime => "runtime",
            Set::Bundle => "bundle",
        }
    }

    fn of(kind: Kind) -> Set {
        match kind {
            Kind::Runtime => Set::Runtime,
            Kind::Bundle => Set::Bundle,
        }
    }
}

/// One of the two slots of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// `slots/a`.
    A,
    /// `slots/b`.
    B,
}

impl Slot {
    /// The folder name.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

/// Where everything lives, under a root prefix (`/` on a cart, a temporary folder in tests
/// and image builds).
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// The copy of the artifact's manifest kept in each slot: what the slot holds.
pub const SLOT_MANIFEST: &str = "update.toml";

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// The root prefix.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The set's folder.
    pub fn set_dir(&self, set: Set) -> PathBuf {
        match set {
            Set::Runtime => self.root.join("opt/renalscan"),
            Set::Bundle => self.root.join("var/lib/renalscan/bundles"),
        }
    }

    /// A slot's folder.
    pub fn slot_dir(&self, set: Set, slot: Slot) -> PathBuf {
        self.set_dir(set).join("slots").join(slot.as_str())
    }

    /// `current` or `good` of a set.
    pub fn link(&self, set: Set, name: &str) -> PathBuf {
        self.set_dir(set).join(name)
    }

    /// The update state (pending update, runtime floor).
    pub fn state_file(&self) -> PathBuf {
        self.root.join("var/lib/renalscan/update/state.toml")
    }

    /// The append-only update log.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("var/lib/renalscan/update/log.jsonl")
    }

    /// Where the runtime reports that it has proven healthy (writable by the service).
    pub fn health_file(&self) -> PathBuf {
        self.root.join("var/lib/renalscan/health/healthy.json")
    }

    /// The bundles' release floor.
    pub fn floor_file(&self) -> PathBuf {
        self.set_dir(Set::Bundle).join(FLOOR_FILE)
    }

    /// The cart's trusted keys (a trust list and its roots, or `.pub` files).
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("etc/renalscan/keys")
    }

    /// The slot a link points at, if it points at a slot that exists.
    pub fn slot_of(&self, set: Set, name: &str) -> Option<Slot> {
        let target = fs::read_link(self.link(set, name)).ok()?;
        let s = target.strip_prefix("slots").ok()?.to_str()?;
        let slot = Slot::parse(s)?;
        self.slot_dir(set, slot).is_dir().then_some(slot)
    }

    /// What a slot holds (its copy of the artifact manifest).
    pub fn slot_manifest(&self, set: Set, slot: Slot) -> Option<UpdateManifest> {
        let p = self.slot_dir(set, slot).join(SLOT_MANIFEST);
        let text = fs::read_to_string(&p).ok()?;
        UpdateManifest::parse(&text, &p).ok()
    }
}

/// Why an update step failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The artifact itself was refused (format, signature, hashes).
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    /// The bundle inside was refused (signature, policy).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The bundle inside the artifact was refused (its own signature, product, runtime,
    /// floor).
    #[error("{path}: the bundle inside is refused: {refusal}; nothing was installed")]
    BundleInside {
        /// The artifact.
        path: PathBuf,
        /// Why.
        refusal: Box<BundleError>,
    },
    /// The artifact is not for this cart.
    #[error("{path}: {reason}; nothing was installed")]
    NotForThisCart {
        /// The artifact.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An older release without an override.
    #[error(
        "{path} is {kind} {offered}, older than {installed} which this cart runs (or ran); \
         nothing was installed: install a newer release, or, if going back is intended, \
         pass --allow-downgrade \"<reason>\" (recorded in the update log)"
    )]
    Downgrade {
        /// The artifact.
        path: PathBuf,
        /// Runtime or bundle.
        kind: &'static str,
        /// Its release.
        offered: String,
        /// The installed good release.
        installed: String,
    },
    /// Another update has not proven healthy yet.
    #[error(
        "the {set} update to slot {slot} (since {since}) has not proven healthy yet; wait until \
         `renalscan-edge update status` shows it committed, or `renalscan-edge update rollback`"
    )]
    Pending {
        /// Its set.
        set: &'static str,
        /// Its slot.
        slot: &'static str,
        /// Since when.
        since: String,
    },
    /// The check of the staged slot (selftest) failed; nothing was switched.
    #[error(
        "the staged {set} failed its check before the switch: {reason}; current slot unchanged"
    )]
    Precheck {
        /// Runtime or bundle.
        set: &'static str,
        /// The check's message.
        reason: String,
    },
    /// Nothing to roll back to.
    #[error("{0}")]
    NoRollback(String),
    /// The payload is larger than the cap, or than the free space allows.
    #[error(
        "{path}: {what} ({need} bytes) {why}; nothing was installed: free space on that file \
         system (old exports, snapshots), or check that this is the right artifact"
    )]
    Space {
        /// The artifact.
        path: PathBuf,
        /// What was measured.
        what: String,
        /// Bytes needed.
        need: u64,
        /// Against what.
        why: String,
    },
    /// The state file is damaged.
    #[error(
        "{path}: {reason}; the update state is damaged: `renalscan-edge update guard` rebuilds \
         it from the slot links"
    )]
    State {
        /// The state file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// File system.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An update switched to but not yet proven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Runtime or bundle.
    pub set: Set,
    /// The slot it is in.
    pub slot: Slot,
    /// Starts since the switch that did not prove healthy.
    pub tries: u32,
    /// When it was recorded (Unix ms): health reported before this does not count.
    pub since_unix_ms: u64,
    /// The same, readable.
    pub since: String,
    /// Its release.
    pub release: String,
    /// sha256 of the artifact manifest.
    pub update_sha256: String,
    /// The recorded reason, when it is a deliberate downgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<String>,
}

/// The update state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// At most one update is pending at a time: a failed start cannot be blamed on the
    /// runtime or the bundle when both are new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

impl State {
    /// Reads the state; an absent file is an empty state.
    pub fn load(layout: &Layout) -> Result<State, UpdateError> {
        let path = layout.state_file();
        match fs::read_to_string(&path) {
            Ok(t) => toml::from_str(&t).map_err(|e| UpdateError::State {
                path: path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Writes the state durably.
    pub fn store(&self, layout: &Layout) -> Result<(), UpdateError> {
        let path = layout.state_file();
        mkdirs(path.parent())?;
        let text = toml::to_string(self).map_err(|e| UpdateError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        policy::write_durably(&path, text.as_bytes())?;
        Ok(())
    }
}

fn mkdirs(dir: Option<&Path>) -> Result<(), UpdateError> {
    if let Some(d) = dir {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_text() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// One line of the update log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// UTC, RFC 3339.
    pub at: String,
    /// `installed`, `switched`, `committed`, `rolled_back`, `refused`, `downgrade`,
    /// `repaired`, `interrupted`.
    pub event: String,
    /// Runtime or bundle, when it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Set>,
    /// The slot, when it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<Slot>,
    /// The release concerned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release: String,
    /// What happened, in words.
    pub detail: String,
}

/// Appends to the update log (fsynced); a log that cannot be written is reported, never
/// fatal to the update itself.
pub fn log_event(
    layout: &Layout,
    event: &str,
    set: Option<Set>,
    slot: Option<Slot>,
    release: &str,
    detail: &str,
) {
    let e = LogEntry {
        at: now_text(),
        event: event.into(),
        set,
        slot,
        release: release.into(),
        detail: detail.into(),
    };
    let path = layout.log_file();
    let result = (|| -> io::Result<()> {
        if let Some(d) = path.parent() {
            fs::create_dir_all(d)?;
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut line = serde_json::to_vec(&e).map_err(io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => log::info!("update: {event}: {detail}"),
        Err(err) => log::error!(
            "update: {event}: {detail} (the update log {} cannot be written: {err})",
            path.display()
        ),
    }
}

/// Reads the update log (for `status`).
pub fn read_log(layout: &Layout) -> Vec<LogEntry> {
    fs::read_to_string(layout.log_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Points `set`'s `name` link at `slot` durably: a new link beside it, renamed over the old
/// one, then the folder synced.
pub fn point(layout: &Layout, set: Set, name: &str, slot: Slot) -> Result<(), UpdateError> {
    let dir = layout.set_dir(set);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    symlink(Path::new("slots").join(slot.as_str()).as_path(), &tmp)?;
    let link = layout.link(set, name);
    fs::rename(&tmp, &link).map_err(io_err(&link))?;
    sync_dir(&dir)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<(), UpdateError> {
    std::os::unix::fs::symlink(target, link).map_err(io_err(link))
}

#[cfg(not(unix))]
fn symlink(_target: &Path, link: &Path) -> Result<(), UpdateError> {
    Err(io_err(link)(io::Error::other(
        "slots need symbolic links (Unix)",
    )))
}

fn sync_dir(dir: &Path) -> Result<(), UpdateError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Space an install leaves free beyond its payload, so the journal and exams still have room.
pub const SPACE_RESERVE: u64 = 64 << 20;

/// The steps of [`install`], in order; a fault-injection test stops the install at each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The artifact verified; nothing touched yet.
    Verified,
    /// Unpacked and synced into the staging folder, checked.
    Staged,
    /// The staging folder renamed into the slot.
    SlotReplaced,
    /// The pending record written.
    PendingRecorded,
    /// `current` switched.
    Switched,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 5] = [
        Step::Verified,
        Step::Staged,
        Step::SlotReplaced,
        Step::PendingRecorded,
        Step::Switched,
    ];

    /// The step's name (`verified`, `staged`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Verified => "verified",
            Step::Staged => "staged",
            Step::SlotReplaced => "slot-replaced",
            Step::PendingRecorded => "pending-recorded",
            Step::Switched => "switched",
        }
    }
}

/// How to install.
pub struct InstallOptions<'a> {
    /// `<arch>-<os>` of this cart, which a runtime artifact must match.
    pub target: String,
    /// This runtime's version (a bundle may require a newer one).
    pub runtime_version: String,
    /// Install an older release on purpose, with this reason (recorded).
    pub allow_downgrade: Option<String>,
    /// Largest payload accepted (bytes): with two slots a set never takes more than twice
    /// this on disk, plus one staging copy while an install runs.
    pub max_payload_bytes: u64,
    /// Free bytes on the file system holding a folder (`None`: unknown, not checked).
    pub free_bytes: &'a dyn Fn(&Path) -> Option<u64>,
    /// Checks the staged slot before the switch (the selftest); an error refuses the update.
    pub precheck: &'a mut dyn FnMut(Set, &Path) -> Result<(), String>,
    /// Called after each step (fault injection, progress).
    pub on_step: &'a mut dyn FnMut(Step),
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// Switched to a new slot, pending its health check.
    Switched(Pending),
    /// The set's first install: good at once (there is nothing to fall back to).
    First {
        /// The set.
        set: Set,
        /// Its release.
        release: String,
    },
    /// The same release is already in the good slot: nothing done.
    AlreadyInstalled {
        /// The set.
        set: Set,
        /// Its release.
        release: String,
    },
}

/// Installs the artifact at `path`: verify, stage into the slot that is not `good`, check,
/// record pending, switch `current`. See the module documentation for why each step is safe
/// to interrupt.
pub fn install(
    layout: &Layout,
    path: &Path,
    keys: &TrustedKeys,
    opts: InstallOptions<'_>,
) -> Result<Installed, UpdateError> {
    let refuse = |e: UpdateError| {
        log_event(layout, "refused", None, None, "", &e.to_string());
        e
    };
    let v = artifact::verify(path, keys).map_err(|e| refuse(e.into()))?;
    let m = &v.manifest;
    let set = Set::of(m.kind);
    let release = m
        .release()
        .map(|r| r.to_string())
        .unwrap_or_else(|| m.version.clone());
    let not_for = |reason: String| {
        refuse(UpdateError::NotForThisCart {
            path: path.to_path_buf(),
            reason,
        })
    };
    if m.product != PRODUCT {
        return Err(not_for(format!(
            "it is for product {:?}, this cart runs {PRODUCT:?}",
            m.product
        )));
    }
    if set == Set::Runtime && m.target.as_deref() != Some(opts.target.as_str()) {
        return Err(not_for(format!(
            "it is a runtime for {}, this cart is {}",
            m.target.as_deref().unwrap_or("(no target)"),
            opts.target
        )));
    }
    let state = State::load(layout)?;
    if let Some(p) = &state.pending {
        return Err(refuse(UpdateError::Pending {
            set: p.set.as_str(),
            slot: p.slot.as_str(),
            since: p.since.clone(),
        }));
    }
    let good = layout.slot_of(set, "good");
    let good_manifest = good.and_then(|s| layout.slot_manifest(set, s));
    let mut downgrade = None;
    if let (Some(installed), Some(offered)) = (
        good_manifest.as_ref().and_then(|g| g.release()),
        m.release(),
    ) {
        if good_manifest.as_ref() == Some(m) {
            log::info!("{} {release} is already installed and good", set.as_str());
            return Ok(Installed::AlreadyInstalled { set, release });
        }
        if offered < installed {
            match &opts.allow_downgrade {
                Some(reason) if !reason.trim().is_empty() => {
                    downgrade = Some(reason.trim().to_string());
                }
                _ => {
                    return Err(refuse(UpdateError::Downgrade {
                        path: path.to_path_buf(),
                        kind: set.as_str(),
                        offered: offered.to_string(),
                        installed: installed.to_string(),
                    }))
                }
            }
        }
    }
    let payload: u64 = m.files.iter().map(|f| f.size).sum();
    if payload > opts.max_payload_bytes {
        return Err(refuse(UpdateError::Space {
            path: path.to_path_buf(),
            what: "its payload".into(),
            need: payload,
            why: format!("is above the cap of {} bytes", opts.max_payload_bytes),
        }));
    }
    let slots = layout.set_dir(set).join("slots");
    fs::create_dir_all(&slots).map_err(io_err(&slots))?;
    if let Some(free) = (opts.free_bytes)(&slots) {
        let need = payload.saturating_add(SPACE_RESERVE);
        if free < need {
            return Err(refuse(UpdateError::Space {
                path: path.to_path_buf(),
                what: format!("its payload plus a {} MiB reserve", SPACE_RESERVE >> 20),
                need,
                why: format!(
                    "does not fit in the {free} bytes free under {}",
                    slots.display()
                ),
            }));
        }
    }
    (opts.on_step)(Step::Verified);

    // Stage into the slot that is not good.
    let slot = good.map_or(Slot::A, Slot::other);
    let staging = slots.join(format!(".{}.new", slot.as_str()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    v.extract(&staging).map_err(|e| refuse(e.into()))?;
    let keep = policy::write_durably(
        &staging.join(SLOT_MANIFEST),
        toml::to_string(m).unwrap_or_default().as_bytes(),
    )
    .map_err(UpdateError::from);
    let checked = keep.and_then(|()| {
        let mut to_record = None;
        if set == Set::Bundle {
            to_record = admit_bundle(
                layout,
                &staging,
                keys,
                &opts.runtime_version,
                downgrade.as_deref(),
            )
            .map_err(|e| match e {
                UpdateError::Bundle(b) => UpdateError::BundleInside {
                    path: path.to_path_buf(),
                    refusal: Box::new(b),
                },
                other => other,
            })?;
        }
        (opts.precheck)(set, &staging).map_err(|reason| UpdateError::Precheck {
            set: set.as_str(),
            reason,
        })?;
        if let (Some((bm, sha)), Some(reason)) = (to_record, downgrade.as_deref()) {
            policy::record_override(&layout.floor_file(), &bm, &sha, reason)?;
        }
        Ok(())
    });
    if let Err(e) = checked {
        let _ = fs::remove_dir_all(&staging);
        return Err(refuse(e));
    }
    (opts.on_step)(Step::Staged);

    // Replace the slot: old contents aside, staging in, old contents gone.
    let dest = layout.slot_dir(set, slot);
    let old = slots.join(format!(".{}.old", slot.as_str()));
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    if dest.exists() {
        fs::rename(&dest, &old).map_err(io_err(&dest))?;
    }
    fs::rename(&staging, &dest).map_err(io_err(&dest))?;
    sync_dir(&slots)?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    (opts.on_step)(Step::SlotReplaced);

    let pending = Pending {
        set,
        slot,
        tries: 0,
        since_unix_ms: now_ms(),
        since: now_text(),
        release: release.clone(),
        update_sha256: v.manifest_sha256.clone(),
        downgrade: downgrade.clone(),
    };
    // A first install has nothing to fall back to: it is good from the start, not pending.
    if good.is_some() {
        State {
            pending: Some(pending.clone()),
        }
        .store(layout)?;
    }
    if let Some(reason) = &downgrade {
        log_event(
            layout,
            "downgrade",
            Some(set),
            Some(slot),
            &release,
            &format!("deliberate downgrade: {reason}"),
        );
    }
    log_event(
        layout,
        "installed",
        Some(set),
        Some(slot),
        &release,
        &format!(
            "{} signed by {} ({}) staged in slot {}",
            path.display(),
            v.signer.key_id(),
            v.signer.name(),
            slot.as_str()
        ),
    );
    (opts.on_step)(Step::PendingRecorded);

    point(layout, set, "current", slot)?;
    let first = good.is_none();
    if first {
        point(layout, set, "good", slot)?;
    }
    let detail = if first {
        format!("first install: current and good -> slots/{}", slot.as_str())
    } else {
        format!(
            "current -> slots/{}, pending its health check",
            slot.as_str()
        )
    };
    log_event(layout, "switched", Some(set), Some(slot), &release, &detail);
    (opts.on_step)(Step::Switched);
    Ok(if first {
        Installed::First { set, release }
    } else {
        Installed::Switched(pending)
    })
}

/// Opens the staged bundle as the runtime will (signature, hashes, product, runtime
/// version, floor). A bundle older than the floor passes only with a `downgrade` reason; it
/// comes back (manifest and sha256) for the override to be recorded once every check passed.
fn admit_bundle(
    layout: &Layout,
    dir: &Path,
    keys: &TrustedKeys,
    runtime_version: &str,
    downgrade: Option<&str>,
) -> Result<Option<(contract::Manifest, String)>, UpdateError> {
    let b = bundle::Bundle::open(dir, keys)?;
    let policy = Policy::new(runtime_version, Some(layout.floor_file()));
    match policy.admit(dir, b.manifest(), b.manifest_sha256()) {
        Ok(_) => Ok(None),
        Err(BundleError::Policy(PolicyError::Downgrade { .. })) if downgrade.is_some() => Ok(Some(
            (b.manifest().clone(), b.manifest_sha256().to_string()),
        )),
        Err(e) => Err(e.into()),
    }
}

/// What the runtime writes once it has made pipeline progress long enough: the proof a
/// pending slot needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The running executable (resolved).
    pub exe: PathBuf,
    /// The bundle folder it runs (resolved).
    pub bundle: PathBuf,
    /// The bundle's manifest sha256.
    pub bundle_sha256: String,
    /// The runtime's version.
    pub runtime: String,
    /// When the process started (Unix ms).
    pub started_unix_ms: u64,
    /// When it had made progress long enough (Unix ms).
    pub healthy_unix_ms: u64,
}

impl Health {
    /// Writes the health file durably.
    pub fn store(&self, path: &Path) -> Result<(), UpdateError> {
        mkdirs(path.parent())?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| UpdateError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        policy::write_durably(path, &bytes)?;
        Ok(())
    }

    /// Reads a health file, if there is a readable one.
    pub fn load(path: &Path) -> Option<Health> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}

/// Does the health file prove the pending slot? It must come from a process started after
/// the switch, running from that slot.
fn proves(layout: &Layout, p: &Pending) -> bool {
    let Some(h) = Health::load(&layout.health_file()) else {
        return false;
    };
    if h.started_unix_ms < p.since_unix_ms {
        return false;
    }
    let Ok(slot) = fs::canonicalize(layout.slot_dir(p.set, p.slot)) else {
        return false;
    };
    match p.set {
        Set::Runtime => h.exe.starts_with(&slot),
        Set::Bundle => fs::canonicalize(&h.bundle).is_ok_and(|b| b == slot),
    }
}

/// What [`guard`] and [`commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing pending.
    Idle,
    /// Still pending; this many starts so far.
    Waiting(u32),
    /// The pending slot proved healthy and is now `good`.
    Committed(Set, Slot),
    /// The pending slot failed and `current` is back on `good`.
    RolledBack(Set, Slot),
    /// Interrupted before the switch: the pending record was dropped.
    Interrupted(Set),
}

/// Commits the pending slot if the runtime has proven it healthy.
pub fn commit(layout: &Layout) -> Result<Verdict, UpdateError> {
    let mut state = State::load(layout)?;
    let Some(p) = state.pending.clone() else {
        return Ok(Verdict::Idle);
    };
    if !proves(layout, &p) {
        return Ok(Verdict::Waiting(p.tries));
    }
    point(layout, p.set, "good", p.slot)?;
    if p.set == Set::Bundle {
        let dir = layout.slot_dir(Set::Bundle, p.slot);
        let manifest = dir.join(bundle::MANIFEST_FILE);
        match fs::read(&manifest) {
            Ok(bytes) => {
                match contract::Manifest::parse(&String::from_utf8_lossy(&bytes), &manifest) {
                    Ok(m) => {
                        policy::raise_floor(&layout.floor_file(), &m, &bundle::sha256_hex(&bytes))?;
                    }
                    Err(e) => log::error!("committed bundle's manifest does not parse: {e}"),
                }
            }
            Err(e) => log::error!("cannot read {}: {e}", manifest.display()),
        }
    }
    state.pending = None;
    state.store(layout)?;
    log_event(
        layout,
        "committed",
        Some(p.set),
        Some(p.slot),
        &p.release,
        &format!(
            "slot {} proved healthy after {} start(s): good -> slots/{}",
            p.slot.as_str(),
            p.tries.max(1),
            p.slot.as_str()
        ),
    );
    Ok(Verdict::Committed(p.set, p.slot))
}

/// Points the `names` links of `set` at `slot` and logs the repair.
fn repoint(
    layout: &Layout,
    set: Set,
    names: &[&str],
    slot: Slot,
    why: &str,
) -> Result<(), UpdateError> {
    for name in names {
        point(layout, set, name, slot)?;
    }
    log_event(layout, "repaired", Some(set), Some(slot), "", why);
    Ok(())
}

/// Removes what an interrupted install left behind and repairs missing or dangling links.
fn repair(layout: &Layout) -> Result<(), UpdateError> {
    for set in [Set::Runtime, Set::Bundle] {
        let dir = layout.set_dir(set);
        if !dir.is_dir() {
            continue;
        }
        for name in [".current.tmp", ".good.tmp"] {
            let _ = fs::remove_file(dir.join(name));
        }
        let slots = dir.join("slots");
        if let Ok(rd) = fs::read_dir(&slots) {
            for e in rd.filter_map(Result::ok) {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && (n.ends_with(".new") || n.ends_with(".old")) {
                    log::warn!(
                        "removing {} left by an interrupted update",
                        e.path().display()
                    );
                    fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
                }
            }
        }
        let filled = |s: Slot| layout.slot_dir(set, s).join(SLOT_MANIFEST).is_file();
        let good = layout.slot_of(set, "good").filter(|s| filled(*s));
        let current = layout.slot_of(set, "current").filter(|s| filled(*s));
        match (good, current) {
            (Some(_), Some(_)) => {}
            (Some(g), None) => repoint(
                layout,
                set,
                &["current"],
                g,
                "current was missing or dangling: current -> good",
            )?,
            (None, Some(c)) => repoint(
                layout,
                set,
                &["good"],
                c,
                "good was missing: good -> current",
            )?,
            (None, None) => {
                if let Some(s) = [Slot::A, Slot::B].into_iter().find(|s| filled(*s)) {
                    repoint(
                        layout,
                        set,
                        &["good", "current"],
                        s,
                        "both links were missing",
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Runs before every start of the service (as root, from the `good` runtime): repairs,
/// commits a healthy pending slot, counts a start of an unproven one, and rolls back after
/// `max_tries` starts without health.
pub fn guard(layout: &Layout, max_tries: u32) -> Result<Verdict, UpdateError> {
    repair(layout)?;
    let mut state = match State::load(layout) {
        Ok(s) => s,
        Err(e) => {
            // A damaged state file must not keep the cart down: fall back to the good slots.
            log::error!("{e}");
            for set in [Set::Runtime, Set::Bundle] {
                if let Some(g) = layout.slot_of(set, "good") {
                    point(layout, set, "current", g)?;
                }
            }
            log_event(
                layout,
                "repaired",
                None,
                None,
                "",
                &format!("state unreadable, back to good slots: {e}"),
            );
            State::default().store(layout)?;
            return Ok(Verdict::Idle);
        }
    };
    let Some(mut p) = state.pending.clone() else {
        // `current` away from `good` with nothing pending cannot come from an install (it
        // records pending first); a link changed by hand goes back to the proven slot.
        for set in [Set::Runtime, Set::Bundle] {
            let (g, c) = (layout.slot_of(set, "good"), layout.slot_of(set, "current"));
            if let (Some(g), Some(c)) = (g, c) {
                if g != c {
                    repoint(
                        layout,
                        set,
                        &["current"],
                        g,
                        "current differed from good with no update pending: current -> good",
                    )?;
                }
            }
        }
        return Ok(Verdict::Idle);
    };
    if layout.slot_of(p.set, "current") != Some(p.slot) {
        state.pending = None;
        state.store(layout)?;
        log_event(
            layout,
            "interrupted",
            Some(p.set),
            Some(p.slot),
            &p.release,
            "the update stopped before the switch: staying on the good slot",
        );
        return Ok(Verdict::Interrupted(p.set));
    }
    if let v @ Verdict::Committed(..) = commit(layout)? {
        return Ok(v);
    }
    p.tries += 1;
    if p.tries > max_tries {
        let good = layout
            .slot_of(p.set, "good")
            .filter(|g| *g != p.slot)
            .ok_or_else(|| {
                UpdateError::NoRollback(format!(
                    "the {} in slot {} failed {} starts and there is no other good slot",
                    p.set.as_str(),
                    p.slot.as_str(),
                    p.tries - 1
                ))
            })?;
        point(layout, p.set, "current", good)?;
        state.pending = None;
        state.store(layout)?;
        log_event(
            layout,
            "rolled_back",
            Some(p.set),
            Some(p.slot),
            &p.release,
            &format!(
                "{} starts without proving healthy: current -> slots/{} (the previous good)",
                p.tries - 1,
                good.as_str()
            ),
        );
        return Ok(Verdict::RolledBack(p.set, p.slot));
    }
    let tries = p.tries;
    state.pending = Some(p);
    state.store(layout)?;
    Ok(Verdict::Waiting(tries))
}

/// Rolls back by hand: a pending update goes back to `good`; with nothing pending, the set
/// goes back to its other slot (a deliberate downgrade: the reason is recorded).
pub fn rollback(layout: &Layout, set: Set, reason: &str) -> Result<Verdict, UpdateError> {
    let mut state = State::load(layout)?;
    if let Some(p) = state.pending.clone().filter(|p| p.set == set) {
        let good = layout
            .slot_of(set, "good")
            .ok_or_else(|| UpdateError::NoRollback(format!("no good {} slot", set.as_str())))?;
        point(layout, set, "current", good)?;
        state.pending = None;
        state.store(layout)?;
        log_event(
            layout,
            "rolled_back",
            Some(set),
            Some(p.slot),
            &p.release,
            &format!("by hand: {reason}"),
        );
        return Ok(Verdict::RolledBack(set, p.slot));
    }
    if state.pending.is_some() {
        return Err(UpdateError::NoRollback(
            "the other set has an update pending; roll that back first".into(),
        ));
    }
    let good = layout
        .slot_of(set, "good")
        .ok_or_else(|| UpdateError::NoRollback(format!("no good {} slot", set.as_str())))?;
    let other = good.other();
    let Some(m) = layout.slot_manifest(set, other) else {
        return Err(UpdateError::NoRollback(format!(
            "slot {} of the {} holds nothing to go back to",
            other.as_str(),
            set.as_str()
        )));
    };
    if set == Set::Bundle {
        let dir = layout.slot_dir(set, other);
        let manifest = dir.join(bundle::MANIFEST_FILE);
        let bytes = fs::read(&manifest).map_err(io_err(&manifest))?;
        let parsed = contract::Manifest::parse(&String::from_utf8_lossy(&bytes), &manifest)
            .map_err(BundleError::from)?;
        policy::record_override(
            &layout.floor_file(),
            &parsed,
            &bundle::sha256_hex(&bytes),
            reason,
        )?;
    }
    let release = m.release().map(|r| r.to_string()).unwrap_or_default();
    let p = Pending {
        set,
        slot: other,
        tries: 0,
        since_unix_ms: now_ms(),
        since: now_text(),
        release: release.clone(),
        update_sha256: String::new(),
        downgrade: Some(reason.to_string()),
    };
    State { pending: Some(p) }.store(layout)?;
    point(layout, set, "current", other)?;
    log_event(
        layout,
        "downgrade",
        Some(set),
        Some(other),
        &release,
        &format!("rolled back by hand: {reason}"),
    );
    Ok(Verdict::Waiting(0))
}

/// The release a set's slot holds, for status lines.
pub fn slot_release(
    layout: &Layout,
    set: Set,
    name: &str,
) -> Option<(Slot, Option<ReleaseVersion>)> {
    let s = layout.slot_of(set, name)?;
    Some((s, layout.slot_manifest(set, s).and_then(|m| m.release())))
}

#[cfg(test)]
mod tests;
