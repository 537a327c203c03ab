//! kill -9 mid-run, then reopen: every acknowledged record is there and intact, nothing is
//! damaged, and the journal takes appends again.
//!
//! The test re-executes its own binary with `KILL9_WRITER_DIR` set to act as the writer:
//! it appends records and prints each seq on stdout only after `append` returned. The
//! parent SIGKILLs it at a random moment (after a random number of acknowledgements, so
//! mid-write, mid-sync and mid-rotation all get hit over the rounds).

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use journal::{Journal, JournalConfig};

const ENV: &str = "KILL9_WRITER_DIR";
const PROBE: &str = "KILL9_PROBE";
const ROUNDS: usize = 6;

fn config(dir: &Path) -> JournalConfig {
    let mut cfg = JournalConfig::new(dir);
    cfg.segment_bytes = 8 << 10; // rotate often so kills land in rotations too
    cfg.max_total_bytes = None;
    cfg.max_segments = None;
    cfg
}

/// Payload derived from the seq, so the parent can check every byte.
fn payload(seq: u64) -> Vec<u8> {
    let pad = "x".repeat((seq % 97) as usize);
    format!("{{\"seq\":{seq},\"decision\":\"abnormal\",\"pad\":\"{pad}\"}}").into_bytes()
}

fn writer(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (mut j, _) = Journal::open(config(dir))?;
    let mut out = std::io::stdout().lock();
    loop {
        let seq = j.append(&payload(j.next_seq()))?;
        writeln!(out, "{seq}")?;
        out.flush()?;
    }
}

fn random(below: u64) -> u64 {
    RandomState::new().build_hasher().finish() % below
}

/// How to start this binary again: directly, or under qemu when the tests run through a
/// qemu runner and the host has no binfmt handler for it (exec then fails, and glibc's
/// posix_spawn reports that as exit status 127 rather than an error). Found by a probe run.
fn launcher() -> Vec<OsString> {
    let exe = std::env::current_exe()
        .expect("current_exe")
        .into_os_string();
    let qemu = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"].map(OsString::from);
    let direct = vec![exe.clone()];
    let emulated: Vec<OsString> = qemu.into_iter().chain([exe]).collect();
    for cmd in [direct, emulated] {
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .env(PROBE, "1")
            .output();
        if out.is_ok_and(|o| o.stdout == b"probe ok\n") {
            return cmd;
        }
    }
    panic!("cannot re-execute the test binary, neither directly nor under qemu");
}

fn spawn_writer(cmd: &[OsString], dir: &Path) -> Child {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .env(ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn writer")
}

fn round(cmd: &[OsString], dir: &Path, round: usize) {
    let mut child = spawn_writer(cmd, dir);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let seq: u64 = line.trim().parse().expect("writer prints seqs");
            if tx.send(seq).is_err() {
                break;
            }
        }
    });
    let target = 1 + random(400);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = Vec::new();
    while (acked.len() as u64) < target && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(seq) => acked.push(seq),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("writer died on its own"),
        }
    }
    // Land anywhere in the next append: write, fdatasync, or a rotation.
    std::thread::sleep(Duration::from_micros(random(3000)));
    child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    let seen = acked.len();
    acked.extend(rx.try_iter());
    assert!(!acked.is_empty(), "writer acknowledged nothing in 60 s");
    let max_acked = acked.iter().copied().max().unwrap_or(0);
    assert!(!status.success(), "writer was killed");

    let (mut j, rec) = Journal::open(config(dir)).expect("reopen after kill -9");
    assert!(
        rec.damage.is_empty(),
        "damage after kill -9: {:?}",
        rec.damage
    );
    let records: Vec<_> = Journal::records(dir)
        .expect("list")
        .collect::<Result<_, _>>()
        .expect("every record intact");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "contiguous seqs from 1");
        assert_eq!(r.payload, payload(r.seq), "payload of seq {} intact", r.seq);
    }
    let last = records.last().map_or(0, |r| r.seq);
    assert!(
        last >= max_acked,
        "acknowledged seq {max_acked} missing, journal ends at {last}"
    );
    let next = j
        .append(&payload(j.next_seq()))
        .expect("append after reopen");
    assert_eq!(next, last + 1);
    eprintln!(
        "kill9 round {round}: killed after {seen} acks read (max acked {max_acked}), \
         {} records on disk, torn tail cut {} bytes, {} segments",
        records.len(),
        rec.torn_bytes_cut,
        rec.segments
    );
}

fn main() {
    if std::env::var_os(PROBE).is_some() {
        println!("probe ok");
        return;
    }
    if let Some(dir) = std::env::var_os(ENV) {
        if let Err(e) = writer(Path::new(&dir)) {
            eprintln!("writer: {e}");
            std::process::exit(2);
        }
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("journal");
    let cmd = launcher();
    for r in 0..ROUNDS {
        round(&cmd, &dir, r);
    }
    eprintln!("kill9: {ROUNDS} rounds passed");
}
