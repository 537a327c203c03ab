//! kill -9 mid-run, then reopen: every acknowledged record is there and intact, nothing is
//! damaged, and the journal takes appends again.
//!
//! The test re-executes its own binary with `KILL9_WRITER_DIR` set to act as the writer:
//! it appends records and prints each seq on stdout only after `append` returned. The
//! parent SIGKILLs it at a random moment (after a random number of acknowledgements, so
//! mid-write, mid-sync and mid-rotation all get hit over the rounds).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use journal::{Journal, JournalConfig};

const ENV: &str = "KILL9_WRITER_DIR";
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

/// Starts the writer; under a qemu runner without binfmt the binary cannot be exec'ed
/// directly, so fall back to the emulator.
fn spawn_writer(dir: &Path) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let run = |cmd: &mut Command| {
        cmd.env(ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
    };
    match run(&mut Command::new(&exe)) {
        Ok(c) => c,
        Err(e) if e.raw_os_error() == Some(8) => {
            // ENOEXEC: foreign binary, no binfmt handler.
            run(Command::new("qemu-aarch64-static")
                .args(["-L", "/usr/aarch64-linux-gnu"])
                .arg(&exe))
            .expect("spawn writer under qemu")
        }
        Err(e) => panic!("spawn writer: {e}"),
    }
}

fn round(dir: &Path, round: usize) {
    let mut child = spawn_writer(dir);
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
    if let Some(dir) = std::env::var_os(ENV) {
        if let Err(e) = writer(Path::new(&dir)) {
            eprintln!("writer: {e}");
            std::process::exit(2);
        }
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("journal");
    for r in 0..ROUNDS {
        round(&dir, r);
    }
    eprintln!("kill9: {ROUNDS} rounds passed");
}
