//! Duplicate detection for result sequence numbers.

/// Remembers which of the last [`SeqWindow::SPAN`] sequence numbers were seen, like an
/// anti-replay window. A result older than the window counts as a duplicate: the device
/// keeps only the last [`crate::device::MAX_PENDING`] or fewer results, all within the
/// window of the newest (it drops older ones), so an older one can only be a late copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqWindow {
    /// Highest sequence number seen.
    top: Option<u32>,
    /// Bit `i` set: `top - i` was seen.
    bits: u64,
}

impl SeqWindow {
    /// Width of the window.
    pub const SPAN: u32 = 64;

    pub const fn new() -> Self {
        Self { top: None, bits: 0 }
    }

    /// Records `seq`; true if it had not been seen before.
    pub fn insert(&mut self, seq: u32) -> bool {
        let Some(top) = self.top else {
            self.top = Some(seq);
            self.bits = 1;
            return true;
        };
        if seq > top {
            let shift = seq - top;
            self.bits = if shift >= Self::SPAN {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = Some(seq);
            return true;
        }
        let back = top - seq;
        if back >= Self::SPAN {
            return false;
        }
        let mask = 1u64 << back;
        let new = self.bits & mask == 0;
        self.bits |= mask;
        new
    }

    /// Forgets everything (new device session).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_reordering() {
        let mut w = SeqWindow::new();
        assert!(w.insert(5));
        assert!(!w.insert(5));
        assert!(w.insert(7));
        assert!(w.insert(6));
        assert!(!w.insert(6));
        assert!(w.insert(100));
        assert!(!w.insert(7)); // fell out of the window
        assert!(w.insert(99));
        assert!(w.insert(u32::MAX));
        assert!(!w.insert(u32::MAX));
    }

    proptest::proptest! {
        /// Within the window, `insert` is exactly "not seen before".
        #[test]
        fn matches_a_set(seqs in proptest::collection::vec(0u32..200, 0..300)) {
            let mut w = SeqWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut top = 0u32;
            for s in seqs {
                let expect_new = !seen.contains(&s) && (seen.is_empty() || s + SeqWindow::SPAN > top);
                proptest::prop_assert_eq!(w.insert(s), expect_new, "seq {}", s);
                seen.insert(s);
                top = top.max(s);
            }
        }
    }
}
