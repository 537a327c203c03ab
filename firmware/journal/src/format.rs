//! On-disk record layout and the segment scanner shared by recovery and readers.
//!
//! A record is a 20-byte header followed by the payload (all integers little-endian):
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 4    | magic `RSJ1`                                                 |
//! | 4      | 4    | payload length `len` (u32)                                   |
//! | 8      | 8    | sequence number (u64)                                        |
//! | 16     | 4    | CRC-32 (IEEE) over bytes 0..16 and the payload               |
//! | 20     | len  | payload                                                      |
//!
//! The CRC covers the length and the sequence number, so a flipped length or seq is caught
//! like a flipped payload byte. The magic lets the scanner find the next record after a
//! damaged one without trusting the damaged length.

/// Magic at the start of every record.
pub const MAGIC: [u8; 4] = *b"RSJ1";
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 20;
/// Largest payload the format accepts; a header claiming more is treated as damage, which
/// keeps a flipped length bit from making the scanner skip (or allocate) gigabytes.
pub const FORMAT_MAX_PAYLOAD: usize = 64 << 20;

/// Appends one encoded record to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= FORMAT_MAX_PAYLOAD);
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start..start + 16]);
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the scanner found in one segment, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A record whose CRC verified; `payload` is the byte range inside the segment.
    Record {
        offset: usize,
        seq: u64,
        payload: std::ops::Range<usize>,
    },
    /// Bytes that are not a valid record but are followed by one: damage, not a torn
    /// write. `missing` counts sequence numbers skipped across the damage.
    Damaged {
        offset: usize,
        len: usize,
        missing: u64,
    },
    /// A valid record whose seq is not the one expected next, with no damaged bytes in
    /// between (e.g. a segment file lost between two others).
    Gap { offset: usize, missing: u64 },
    /// Bytes after the last valid record: a torn or never-committed write.
    Tail { offset: usize, len: usize },
}

/// Parses the record at `off` if it is complete, its CRC verifies and its seq is above
/// `after`. Returns (seq, payload range, end offset).
fn record_at(buf: &[u8], off: usize, after: u64) -> Option<(u64, std::ops::Range<usize>, usize)> {
    let h = buf.get(off..off.checked_add(HEADER_LEN)?)?;
    if h[0..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().ok()?) as usize;
    let seq = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
    if len > FORMAT_MAX_PAYLOAD || seq <= after {
        return None;
    }
    let body = off + HEADER_LEN..off + HEADER_LEN + len;
    let payload = buf.get(body.clone())?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[0..16]);
    hasher.update(payload);
    (hasher.finalize() == crc).then_some((seq, body.clone(), body.end))
}

/// Scans a whole segment. `after` is the last seq seen before this segment (0 for none);
/// `expect` is the seq the first record should carry when the previous segment is known.
/// Returns the items and the last valid seq (or `after` when none).
pub fn scan(buf: &[u8], after: u64, mut expect: Option<u64>) -> (Vec<Item>, u64) {
    let mut items = Vec::new();
    let mut last = after;
    let mut off = 0;
    while off < buf.len() {
        if let Some((seq, payload, end)) = record_at(buf, off, last) {
            if let Some(e) = expect.filter(|&e| e != seq) {
                items.push(Item::Gap {
                    offset: off,
                    missing: seq.saturating_sub(e),
                });
            }
            items.push(Item::Record {
                offset: off,
                seq,
                payload,
            });
            last = seq;
            expect = Some(seq.saturating_add(1));
            off = end;
            continue;
        }
        // Resynchronise: the next offset holding a valid record with a higher seq.
        match (off + 1..buf.len()).find(|&o| record_at(buf, o, last).is_some()) {
            Some(next) => {
                let seq = record_at(buf, next, last).map_or(0, |r| r.0);
                let missing = expect.map_or(0, |e| seq.saturating_sub(e));
                items.push(Item::Damaged {
                    offset: off,
                    len: next - off,
                    missing,
                });
                // The Damaged item already accounts for the skipped seqs.
                expect = Some(seq);
                off = next;
            }
            None => {
                items.push(Item::Tail {
                    offset: off,
                    len: buf.len() - off,
                });
                break;
            }
        }
    }
    (items, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for (i, p) in [&b"alpha"[..], b"", b"gamma ray"].iter().enumerate() {
            starts.push(buf.len());
            encode(&mut buf, 10 + i as u64, p);
        }
        (buf, starts)
    }

    fn seqs(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Record { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn round_trip_and_empty_payload() {
        let (buf, _) = three();
        let (items, last) = scan(&buf, 9, Some(10));
        assert_eq!(seqs(&items), [10, 11, 12]);
        assert_eq!(last, 12);
        assert_eq!(items.len(), 3, "no gap, damage or tail: {items:?}");
        if let Item::Record { payload, .. } = &items[2] {
            assert_eq!(&buf[payload.clone()], b"gamma ray");
        }
    }

    #[test]
    fn zero_fill_is_a_tail_not_a_record() {
        let (mut buf, _) = three();
        buf.extend_from_slice(&[0; 64]);
        let (items, _) = scan(&buf, 0, None);
        assert_eq!(seqs(&items), [10, 11, 12]);
        assert!(matches!(items.last(), Some(Item::Tail { len: 64, .. })));
    }

    #[test]
    fn damage_in_the_middle_keeps_later_records() {
        let (mut buf, starts) = three();
        buf[starts[1] + 9] ^= 0x01; // seq byte of the second record
        let (items, last) = scan(&buf, 9, Some(10));
        assert_eq!(seqs(&items), [10, 12]);
        assert_eq!(last, 12);
        assert!(items.contains(&Item::Damaged {
            offset: starts[1],
            len: starts[2] - starts[1],
            missing: 1
        }));
    }

    #[test]
    fn seq_gap_between_valid_records_is_reported() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, b"a");
        encode(&mut buf, 5, b"b");
        let (items, _) = scan(&buf, 0, Some(1));
        assert!(items.contains(&Item::Gap {
            offset: HEADER_LEN + 1,
            missing: 3
        }));
    }
}
