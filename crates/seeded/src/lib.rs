//! One seeded random generator for everything in renalscan that must repeat bit for bit:
//! the phantom's images, training's patient splits, shuffles and initialisations, and the
//! synthetic data of tests.
//!
//! The bits come from ChaCha8 (`rand_chacha`), whose output is specified, so a seed gives the
//! same stream on x86_64 and aarch64 and across dependency updates. What is ours is only the
//! thin layer a seeded pipeline needs on top: seed derivation by integer mixing (items
//! generated in any order or subset), floats of a fixed resolution, and Box-Muller through
//! the pure-Rust `libm` (the system's `log`/`sin` may differ in the last bit between
//! platforms).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// SplitMix64 finaliser: a bijective integer mix, used to derive independent seeds.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed for item `index` of stream `tag` under `seed`: independent of any other item, so
/// items can be generated in any order or subset.
pub fn derive(seed: u64, tag: u64, index: u64) -> u64 {
    mix64(mix64(seed ^ mix64(tag)) ^ index)
}

/// ChaCha8 with the helpers renalscan's generators need.
#[derive(Debug, Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// A generator; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Next 32 random bits.
    pub fn u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// Next 64 random bits.
    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1), 24-bit resolution (exactly representable in f32).
    pub fn f(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [0, 1), 53-bit resolution (exactly representable in f64).
    pub fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f()
    }

    /// Uniform integer in [lo, hi] (inclusive); the modulo bias (under 2^-32 relative for the
    /// small ranges used here) does not matter for test data or rendering.
    pub fn int(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.0.next_u32() % (hi - lo).saturating_add(1).max(1)
    }

    /// Uniform in `0..n` (`n` of 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.next_u64() % n
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.f() < p
    }

    /// A pair of independent standard normals (Box-Muller).
    pub fn normal2(&mut self) -> (f32, f32) {
        // 1 - u keeps the logarithm finite.
        let u1 = 1.0 - self.f();
        let u2 = self.f();
        let r = libm::sqrtf(-2.0 * libm::logf(u1));
        let (s, c) = libm::sincosf(std::f32::consts::TAU * u2);
        (r * c, r * s)
    }

    /// A standard normal.
    pub fn normal(&mut self) -> f32 {
        self.normal2().0
    }

    /// Fisher-Yates shuffle, in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.f().to_bits(), b.f().to_bits());
            assert_eq!(a.uniform().to_bits(), b.uniform().to_bits());
        }
        assert_ne!(Rng::new(1).u64(), Rng::new(2).u64());
        assert_ne!(derive(1, 2, 3), derive(1, 2, 4));
        assert_ne!(derive(1, 2, 3), derive(1, 3, 3));
    }

    /// The stream is ChaCha8's, pinned: a change here changes every phantom image and split.
    #[test]
    fn stream_is_pinned() {
        let mut r = Rng::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.u64()).collect();
        let mut c = ChaCha8Rng::seed_from_u64(0);
        let want: Vec<u64> = (0..3).map(|_| c.next_u64()).collect();
        assert_eq!(got, want);
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn ranges_hold() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            let f = r.f();
            assert!((0.0..1.0).contains(&f));
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            let i = r.int(2, 5);
            assert!((2..=5).contains(&i));
            assert!(r.below(7) < 7);
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.int(4, 4), 4);
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for _ in 0..n / 2 {
            let (a, b) = r.normal2();
            s += (a + b) as f64;
            s2 += (a * a + b * b) as f64;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn shuffle_is_a_permutation_and_moves_things() {
        let mut r = Rng::new(11);
        let mut v: Vec<u32> = (0..100).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert!(
            v.iter()
                .enumerate()
                .filter(|(i, x)| *i as u32 != **x)
                .count()
                > 90
        );
    }
}
