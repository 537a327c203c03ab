//! The durable log: segment files, synced appends, recovery, rotation, retention, readers.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::fault::FaultSwitch;
use crate::format::{self, Item, HEADER_LEN};
use crate::{Damage, JournalConfig, JournalError, Recovery};

/// Segment files are named by the seq of their first record, zero-padded so that names
/// sort like numbers: `00000000000000000001.seg`.
const SEGMENT_EXT: &str = "seg";
const LOCK_FILE: &str = "LOCK";

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

/// Segment files of `dir`, sorted by first seq. Other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let err = |e| JournalError::io("listing", dir, dir, e);
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
}

/// One committed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// The bytes given to `append`.
    pub payload: Vec<u8>,
}

/// The durable, single-writer journal. A lock file keeps a second process out.
pub struct Journal {
    cfg: JournalConfig,
    faults: FaultSwitch,
    _lock: File,
    /// Oldest first; the last one is being written.
    segments: Vec<Segment>,
    file: File,
    /// Length of the current segment up to the last synced record.
    committed_len: u64,
    /// A failed write may have left bytes past `committed_len`; cut them first.
    dirty: bool,
    next_seq: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.cfg.dir)
            .field("segments", &self.segments.len())
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `cfg.dir`, recovering what is there.
    pub fn open(cfg: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        Self::open_with(cfg, FaultSwitch::new())
    }

    /// [`Journal::open`] with an I/O fault seam, for fault tests.
    pub fn open_with(
        cfg: JournalConfig,
        faults: FaultSwitch,
    ) -> Result<(Self, Recovery), JournalError> {
        cfg.validate()?;
        let dir = cfg.dir.clone();
        let io = |op, path: &Path| {
            let (dir, path) = (dir.clone(), path.to_path_buf());
            move |e| JournalError::io(op, &dir, &path, e)
        };
        if !dir.is_dir() {
            faults
                .create()
                .and_then(|()| fs::create_dir_all(&dir))
                .map_err(io("creating", &dir))?;
            // The new directory's entry must survive power loss like the files in it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                faults.sync_dir(parent).map_err(io("syncing", parent))?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        if !lock_path.exists() {
            faults.create().map_err(io("creating", &lock_path))?;
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(JournalError::Locked { dir }),
            Err(TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
        }

        let mut rec = Recovery::default();
        let mut segments = Vec::new();
        let listed = list_segments(&dir)?;
        rec.segments = listed.len();
        let mut last: Option<u64> = None;
        let mut current: Option<File> = None;
        for (i, (first_seq, path)) in listed.iter().enumerate() {
            let is_last = i + 1 == listed.len();
            let (after, expect) = match last {
                Some(l) => (l, l.saturating_add(1)),
                None => (first_seq.saturating_sub(1), *first_seq),
            };
            let data = fs::read(path).map_err(io("reading", path))?;
            let mut bytes = data.len() as u64;
            let (items, seg_last) = format::scan(&data, after, Some(expect));
            for item in items {
                match item {
                    Item::Record { .. } => rec.records += 1,
                    Item::Damaged {
                        offset,
                        len,
                        missing,
                    } => rec.damage.push(note_damage(path, offset, len, missing)),
                    Item::Gap { offset, missing } => {
                        rec.damage.push(note_damage(path, offset, 0, missing))
                    }
                    Item::Tail { offset, len } if is_last => {
                        let f = open_rw(path).map_err(io("opening", path))?;
                        faults
                            .set_len(&f, offset as u64)
                            .and_then(|()| faults.sync_data(&f))
                            .map_err(io("truncating the torn tail of", path))?;
                        log::warn!(
                            "journal {}: cut a torn tail of {len} bytes at byte {offset} \
                             (a write interrupted by a crash; it was never acknowledged)",
                            path.display()
                        );
                        rec.torn_bytes_cut = len as u64;
                        bytes = offset as u64;
                        current = Some(f);
                    }
                    Item::Tail { offset, len } => {
                        rec.damage.push(note_damage(path, offset, len, 0))
                    }
                }
            }
            if seg_last > after {
                last = Some(seg_last);
            }
            segments.push(Segment {
                first_seq: *first_seq,
                path: path.clone(),
                bytes,
            });
        }
        rec.last_seq = last;
        let named = segments.last().map_or(1, |s| s.first_seq);
        let next_seq = last.map_or(named, |l| l.saturating_add(1).max(named));
        rec.next_seq = next_seq;

        let file = match (current, segments.last()) {
            (Some(f), _) => f,
            (None, Some(s)) => open_rw(&s.path).map_err(io("opening", &s.path))?,
            (None, None) => {
                let (f, s) = create_segment(&dir, next_seq, &faults)?;
                segments.push(s);
                f
            }
        };
        let committed_len = segments.last().map_or(0, |s| s.bytes);
        let mut j = Journal {
            cfg,
            faults,
            _lock: lock,
            segments,
            file,
            committed_len,
            dirty: false,
            next_seq,
            buf: Vec::new(),
        };
        j.retire();
        log::info!(
            "journal {}: {} records in {} segments, next seq {next_seq}",
            dir.display(),
            rec.records,
            rec.segments
        );
        Ok((j, rec))
    }

    /// Appends one record; returns its seq once it is written and fdatasync'ed.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, JournalError> {
        self.append_batch(&[payload]).map(|r| r.start)
    }

    /// Appends several records with one fdatasync: all are committed or none is
    /// acknowledged. Returns their seqs. A batch always goes into one segment.
    pub fn append_batch<P: AsRef<[u8]>>(
        &mut self,
        payloads: &[P],
    ) -> Result<Range<u64>, JournalError> {
        let max = self.cfg.max_record_bytes;
        if let Some(p) = payloads.iter().find(|p| p.as_ref().len() > max) {
            let len = p.as_ref().len();
            return Err(JournalError::TooLarge { len, max });
        }
        if payloads.is_empty() {
            return Ok(self.next_seq..self.next_seq);
        }
        let path = self.current_path().to_path_buf();
        if self.dirty {
            self.faults
                .set_len(&self.file, self.committed_len)
                .map_err(|e| self.err("cutting a failed write from", &path, e))?;
            self.dirty = false;
        }
        let size: u64 = payloads
            .iter()
            .map(|p| (HEADER_LEN + p.as_ref().len()) as u64)
            .sum();
        if self.committed_len > 0 && self.committed_len + size > self.cfg.segment_bytes {
            self.rotate()?;
        }
        let path = self.current_path().to_path_buf();
        self.buf.clear();
        for (i, p) in payloads.iter().enumerate() {
            format::encode(&mut self.buf, self.next_seq + i as u64, p.as_ref());
        }
        let written = self
            .faults
            .write_all_at(&self.file, &self.buf, self.committed_len)
            .and_then(|()| self.faults.sync_data(&self.file));
        if let Err(e) = written {
            self.dirty = true;
            return Err(self.err("appending to", &path, e));
        }
        self.committed_len += size;
        if let Some(s) = self.segments.last_mut() {
            s.bytes = self.committed_len;
        }
        let seqs = self.next_seq..self.next_seq + payloads.len() as u64;
        self.next_seq = seqs.end;
        Ok(seqs)
    }

    /// Seq the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// Segment files on disk (after retention).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes in all segment files.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Reads every committed record of the journal in `dir`, oldest first. Damage yields
    /// an `Err` item and reading goes on with the records after it; an incomplete tail of
    /// the last segment (a write in progress or a torn one) is not returned.
    pub fn records(dir: impl AsRef<Path>) -> Result<Records, JournalError> {
        Ok(Records {
            segments: list_segments(dir.as_ref())?.into(),
            dir: dir.as_ref().to_path_buf(),
            pending: VecDeque::new(),
            last: None,
        })
    }

    fn current_path(&self) -> &Path {
        self.segments.last().map_or(&self.cfg.dir, |s| &s.path)
    }

    fn err(&self, op: &'static str, path: &Path, e: std::io::Error) -> JournalError {
        JournalError::io(op, &self.cfg.dir, path, e)
    }

    /// Starts a new segment named after the next seq. Every record in the old one is
    /// already synced, so only the new directory entry needs an fsync.
    fn rotate(&mut self) -> Result<(), JournalError> {
        let (file, seg) = create_segment(&self.cfg.dir, self.next_seq, &self.faults)?;
        log::info!("journal: new segment {}", seg.path.display());
        self.file = file;
        self.committed_len = 0;
        self.segments.push(seg);
        self.retire();
        Ok(())
    }

    /// Deletes the oldest segments beyond the retention limits, never the current one and
    /// never one holding a record at or after the keep-from pin. Best effort: a failure is
    /// logged and retried at the next rotation.
    fn retire(&mut self) {
        let max_n = self.cfg.max_segments.unwrap_or(usize::MAX);
        let max_b = self.cfg.max_total_bytes.unwrap_or(u64::MAX);
        let keep = self.cfg.keep_from.get();
        let mut removed = false;
        while self.segments.len() > 1 && (self.segments.len() > max_n || self.total_bytes() > max_b)
        {
            // Segment 0 holds the records before segment 1's first one.
            if let Some(k) = keep.filter(|k| self.segments[1].first_seq > *k) {
                log::warn!(
                    "journal retention: {} segments, {} bytes, over the limits ({} segments, \
                     {max_b} bytes), kept: records from seq {k} have not left the cart \
                     (export or forward those exams)",
                    self.segments.len(),
                    self.total_bytes(),
                    self.cfg.max_segments.map_or("no".into(), |n| n.to_string()),
                );
                break;
            }
            let s = &self.segments[0];
            if let Err(e) = self.faults.remove_file(&s.path) {
                log::warn!("journal retention: cannot delete {}: {e}", s.path.display());
                break;
            }
            log::info!(
                "journal retention: deleted {} ({} bytes, records from seq {})",
                s.path.display(),
                s.bytes,
                s.first_seq
            );
            self.segments.remove(0);
            removed = true;
        }
        if removed {
            if let Err(e) = self.faults.sync_dir(&self.cfg.dir) {
                log::warn!(
                    "journal retention: fsync of {}: {e}",
                    self.cfg.dir.display()
                );
            }
        }
    }
}

impl Drop for Journal {
    /// Cuts bytes of a failed, unacknowledged write so a later open does not recover them
    /// as records (the caller may write them again). Best effort.
    fn drop(&mut self) {
        if self.dirty {
            let cut = self.faults.set_len(&self.file, self.committed_len);
            if let Err(e) = cut.and_then(|()| self.faults.sync_data(&self.file)) {
                log::warn!(
                    "journal {}: cannot cut a failed write at close: {e}",
                    self.current_path().display()
                );
            }
        }
    }
}

fn note_damage(path: &Path, offset: usize, len: usize, missing: u64) -> Damage {
    log::error!(
        "journal {}: damaged at byte {offset}: {len} bytes skipped, {missing} records \
         missing; the records after it are kept",
        path.display()
    );
    Damage {
        path: path.to_path_buf(),
        offset: offset as u64,
        bytes: len as u64,
        missing_records: missing,
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Creates an empty segment and fsyncs the directory so the entry survives power loss.
/// Truncating is safe: a file with this name can hold no committed record, since its
/// first seq has not been acknowledged yet.
fn create_segment(
    dir: &Path,
    first_seq: u64,
    faults: &FaultSwitch,
) -> Result<(File, Segment), JournalError> {
    let path = dir.join(segment_name(first_seq));
    let file = faults
        .create()
        .and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
        })
        .and_then(|f| faults.sync_dir(dir).map(|()| f))
        .map_err(|e| JournalError::io("creating", dir, &path, e))?;
    let seg = Segment {
        first_seq,
        path,
        bytes: 0,
    };
    Ok((file, seg))
}

/// Iterator over committed records; see [`Journal::records`].
pub struct Records {
    dir: PathBuf,
    segments: VecDeque<(u64, PathBuf)>,
    pending: VecDeque<Result<Record, JournalError>>,
    last: Option<u64>,
}

impl Records {
    fn load(&mut self, first_seq: u64, path: &Path) {
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                let e = JournalError::io("reading", &self.dir, path, e);
                return self.pending.push_back(Err(e));
            }
        };
        let (after, expect) = match self.last {
            Some(l) => (l, l.saturating_add(1)),
            None => (first_seq.saturating_sub(1), first_seq),
        };
        let is_last = self.segments.is_empty();
        let (items, last) = format::scan(&data, after, Some(expect));
        if last > after {
            self.last = Some(last);
        }
        let damaged = |offset: usize, bytes: usize, missing_records| JournalError::Damaged {
            path: path.to_path_buf(),
            offset: offset as u64,
            bytes: bytes as u64,
            missing_records,
        };
        for item in items {
            self.pending.push_back(match item {
                Item::Record { seq, payload, .. } => Ok(Record {
                    seq,
                    payload: data[payload].to_vec(),
                }),
                Item::Damaged {
                    offset,
                    len,
                    missing,
                } => Err(damaged(offset, len, missing)),
                Item::Gap { offset, missing } => Err(damaged(offset, 0, missing)),
                Item::Tail { .. } if is_last => continue,
                Item::Tail { offset, len } => Err(damaged(offset, len, 0)),
            });
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            let (first_seq, path) = self.segments.pop_front()?;
            self.load(first_seq, &path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::cfg;
    use crate::{Fault, FORMAT_MAX_PAYLOAD};

    fn payload(seq: u64) -> Vec<u8> {
        format!("{{\"seq\":{seq},\"class\":\"normal\",\"p\":0.{seq:03}}}").into_bytes()
    }

    fn read_all(dir: &Path) -> Vec<Record> {
        Journal::records(dir)
            .expect("list")
            .collect::<Result<_, _>>()
            .expect("no damage")
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let segs = list_segments(dir).expect("list");
        assert_eq!(segs.len(), 1);
        segs[0].1.clone()
    }

    #[test]
    fn round_trip_and_seq_continues_after_reopen() {
        let (_t, cfg) = cfg();
        let (mut j, rec) = Journal::open(cfg.clone()).expect("open");
        assert_eq!((rec.records, rec.next_seq), (0, 1));
        for s in 1..=3 {
            assert_eq!(j.append(&payload(s)).expect("append"), s);
        }
        assert_eq!(
            j.append_batch(&[payload(4), payload(5)]).expect("batch"),
            4..6
        );
        drop(j);
        let (mut j, rec) = Journal::open(cfg.clone()).expect("reopen");
        assert_eq!(rec.records, 5);
        assert_eq!(rec.last_seq, Some(5));
        assert_eq!((rec.torn_bytes_cut, rec.damage.len()), (0, 0));
        assert_eq!(j.append(&payload(6)).expect("append"), 6);
        let got = read_all(&cfg.dir);
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert!(got.iter().all(|r| r.payload == payload(r.seq)));
    }

    #[test]
    fn second_writer_is_locked_out_and_oversize_refused() {
        let (_t, cfg) = cfg();
        let (mut j, _) = Journal::open(cfg.clone()).expect("open");
        let e = Journal::open(cfg.clone()).expect_err("second open");
        assert!(matches!(e, JournalError::Locked { .. }), "{e}");
        let big = vec![0; cfg.max_record_bytes + 1];
        assert!(matches!(j.append(&big), Err(JournalError::TooLarge { .. })));
        assert_eq!(j.next_seq(), 1, "a refused record takes no seq");
        let mut bad = cfg.clone();
        bad.max_record_bytes = FORMAT_MAX_PAYLOAD + 1;
        assert!(matches!(Journal::open(bad), Err(JournalError::Config(_))));
    }

    /// Writes three records; returns the segment and where the last record starts.
    fn three_records(cfg: &JournalConfig) -> (PathBuf, usize, Vec<u8>) {
        let (mut j, _) = Journal::open(cfg.clone()).expect("open");
        for s in 1..=3 {
            j.append(&payload(s)).expect("append");
        }
        drop(j);
        let seg = only_segment(&cfg.dir);
        let bytes = fs::read(&seg).expect("read");
        let last_start = bytes.len() - HEADER_LEN - payload(3).len();
        (seg, last_start, bytes)
    }

    /// Reopens after `damage` rewrote the segment: two records survive, the rest is cut
    /// as torn, and the next append gets seq 3.
    fn assert_cut_to_two(cfg: &JournalConfig, seg: &Path, bytes: &[u8], cut: u64) {
        fs::write(seg, bytes).expect("write");
        let (mut j, rec) = Journal::open(cfg.clone()).expect("reopen");
        assert_eq!((rec.records, rec.next_seq), (2, 3));
        assert_eq!(rec.torn_bytes_cut, cut);
        assert!(rec.damage.is_empty(), "{:?}", rec.damage);
        assert_eq!(j.append(&payload(3)).expect("append"), 3);
        drop(j);
        let got = read_all(&cfg.dir);
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(got.iter().all(|r| r.payload == payload(r.seq)));
    }

    #[test]
    fn torn_tail_at_every_byte_of_the_last_record_is_cut() {
        let (_t, cfg) = cfg();
        let (seg, last_start, full) = three_records(&cfg);
        for keep in last_start..full.len() {
            assert_cut_to_two(&cfg, &seg, &full[..keep], (keep - last_start) as u64);
        }
    }

    #[test]
    fn bit_flip_anywhere_in_the_last_record_is_detected() {
        let (_t, cfg) = cfg();
        let (seg, last_start, full) = three_records(&cfg);
        for at in last_start..full.len() {
            let mut bytes = full.clone();
            bytes[at] ^= 0x10;
            assert_cut_to_two(&cfg, &seg, &bytes, (full.len() - last_start) as u64);
        }
    }

    #[test]
    fn retention_never_deletes_records_at_or_after_the_pin() {
        let (_t, mut cfg) = cfg();
        let rec_len = (HEADER_LEN + payload(10).len()) as u64;
        cfg.segment_bytes = 2 * rec_len; // two records per segment
        cfg.max_segments = Some(2);
        cfg.keep_from.set(Some(4)); // an exam that started at seq 4 has not left the cart
        let (mut j, _) = Journal::open(cfg.clone()).expect("open");
        for s in 1..=12 {
            j.append(&payload(s)).expect("append");
        }
        let seqs: Vec<u64> = read_all(&cfg.dir).iter().map(|r| r.seq).collect();
        // The segment of seqs 1-2 could go; 3-4 holds seq 4 and stays, and all after it.
        assert_eq!(seqs, (3..=12).collect::<Vec<_>>());
        assert!(
            j.segment_count() > 2,
            "over the limit rather than losing a record"
        );
        // Exported: the pin moves on and the next rotation applies the limits again.
        cfg.keep_from.set(Some(11));
        for s in 13..=14 {
            j.append(&payload(s)).expect("append");
        }
        let seqs: Vec<u64> = read_all(&cfg.dir).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [11, 12, 13, 14]);
        cfg.keep_from.set(None);
        j.append(&payload(15)).expect("append");
        j.append(&payload(16)).expect("append");
        assert_eq!(j.segment_count(), 2);
    }

    #[test]
    fn rotation_and_retention_keep_the_newest_segments() {
        let (_t, mut cfg) = cfg();
        let rec_len = (HEADER_LEN + payload(10).len()) as u64;
        cfg.segment_bytes = 2 * rec_len; // two records per segment
        cfg.max_segments = Some(3);
        let (mut j, _) = Journal::open(cfg.clone()).expect("open");
        for s in 1..=19 {
            j.append(&payload(s)).expect("append");
        }
        assert_eq!(j.segment_count(), 3);
        let on_disk = list_segments(&cfg.dir).expect("list");
        let firsts: Vec<u64> = on_disk.iter().map(|s| s.0).collect();
        assert_eq!(firsts, [15, 17, 19], "the oldest went first");
        let seqs: Vec<u64> = read_all(&cfg.dir).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [15, 16, 17, 18, 19]);

        // A byte budget: total <= 3 records' worth keeps two segments (never the current).
        drop(j);
        cfg.max_segments = None;
        cfg.max_total_bytes = Some(3 * rec_len);
        let (mut j, rec) = Journal::open(cfg.clone()).expect("reopen");
        assert_eq!(rec.next_seq, 20);
        assert_eq!(j.segment_count(), 2, "retention applied at open");
        j.append(&payload(20)).expect("append");
        j.append(&payload(21)).expect("append");
        assert!(j.total_bytes() <= 3 * rec_len);
        let seqs: Vec<u64> = read_all(&cfg.dir).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [19, 20, 21]);
    }

    #[test]
    fn damage_in_an_older_segment_is_reported_not_truncated() {
        let (_t, mut cfg) = cfg();
        cfg.segment_bytes = 3 * (HEADER_LEN + payload(1).len()) as u64;
        let (mut j, _) = Journal::open(cfg.clone()).expect("open");
        for s in 1..=7 {
            j.append(&payload(s)).expect("append");
        }
        drop(j);
        let (_, first) = list_segments(&cfg.dir).expect("list").remove(0);
        let mut bytes = fs::read(&first).expect("read");
        let len = bytes.len();
        bytes[HEADER_LEN + 2] ^= 0xff; // payload of record 1
        fs::write(&first, &bytes).expect("write");

        let (mut j, rec) = Journal::open(cfg.clone()).expect("reopen");
        assert_eq!((rec.records, rec.next_seq, rec.torn_bytes_cut), (6, 8, 0));
        assert_eq!(rec.damage.len(), 1);
        assert_eq!(
            rec.damage[0].missing_records, 1,
            "record 1 is the damaged one"
        );
        assert_eq!(fs::read(&first).expect("read").len(), len, "left on disk");
        assert_eq!(j.append(&payload(8)).expect("append"), 8);

        let items: Vec<_> = Journal::records(&cfg.dir).expect("list").collect();
        assert!(matches!(
            items[0],
            Err(JournalError::Damaged { offset: 0, .. })
        ));
        let seqs: Vec<u64> = items.iter().flatten().map(|r| r.seq).collect();
        assert_eq!(seqs, [2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn failed_write_is_cut_and_takes_no_seq() {
        let (_t, cfg) = cfg();
        let faults = FaultSwitch::new();
        let (mut j, _) = Journal::open_with(cfg.clone(), faults.clone()).expect("open");
        j.append(&payload(1)).expect("append");
        faults.set(Some(Fault::Full));
        let e = j.append(&payload(2)).expect_err("full");
        assert!(matches!(e, JournalError::Full { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&cfg.dir.display().to_string()) && msg.contains("free space"));
        faults.set(Some(Fault::SyncFails));
        assert!(matches!(
            j.append(&payload(2)),
            Err(JournalError::Io { .. })
        ));
        faults.set(None);
        assert_eq!(j.append(&payload(2)).expect("append"), 2);
        drop(j);
        let (_, rec) = Journal::open(cfg.clone()).expect("reopen");
        assert_eq!((rec.records, rec.torn_bytes_cut), (2, 0));
        assert!(rec.damage.is_empty());
    }
}
