//! Shared by the integration tests: a deterministic noisy line.
#![allow(dead_code)]

/// The workspace's one seeded generator, with the draws a noisy line needs.
#[derive(Debug, Clone)]
pub struct Rng(seeded::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seeded::Rng::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.u64()
    }

    /// True with probability `ppm` parts per million.
    pub fn chance(&mut self, ppm: u32) -> bool {
        self.0.below(1_000_000) < u64::from(ppm)
    }

    pub fn byte(&mut self) -> u8 {
        (self.0.u32() >> 24) as u8
    }
}

/// Corrupts a byte stream: flips bits in, drops, and inserts random bytes (zeros included,
/// which split frames), each with its own rate in parts per million per byte.
#[derive(Debug, Clone)]
pub struct Noise {
    pub rng: Rng,
    pub flip_ppm: u32,
    pub drop_ppm: u32,
    pub insert_ppm: u32,
    /// Bytes changed so far.
    pub hits: u64,
}

impl Noise {
    pub fn new(seed: u64, ppm: u32) -> Self {
        Self {
            rng: Rng::new(seed),
            flip_ppm: ppm,
            drop_ppm: ppm,
            insert_ppm: ppm,
            hits: 0,
        }
    }

    pub fn clean() -> Self {
        Self::new(1, 0)
    }

    pub fn apply(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.rng.chance(self.insert_ppm) {
                self.hits += 1;
                // A quarter of the inserted bytes are delimiters.
                let x = if self.rng.next().is_multiple_of(4) {
                    0
                } else {
                    self.rng.byte()
                };
                out.push(x);
            }
            if self.rng.chance(self.drop_ppm) {
                self.hits += 1;
                continue;
            }
            if self.rng.chance(self.flip_ppm) {
                self.hits += 1;
                out.push(b ^ (1 << (self.rng.next() % 8)));
                continue;
            }
            out.push(b);
        }
    }
}
