//! Seeded randomness that gives the same bits on every machine.
//!
//! ChaCha8 output is fully specified, seeds are derived with integer mixing only, and the
//! few transcendental functions go through the pure-Rust `libm` crate, so a (seed, index)
//! pair renders the same image on x86_64 and aarch64.

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

/// Thin wrapper over ChaCha8 with the float helpers the generator needs.
pub struct Rand(ChaCha8Rng);

impl Rand {
    pub fn new(seed: u64) -> Self {
        Rand(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1), 24-bit resolution (exactly representable in f32).
    pub fn f(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f()
    }

    /// Uniform integer in [lo, hi] (inclusive); the tiny modulo bias does not matter here.
    pub fn int(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.0.next_u32() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.f() < p
    }

    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
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

    pub fn normal(&mut self) -> f32 {
        self.normal2().0
    }
}

/// Integer hash of a lattice point to [0, 1): the basis of the value noise below.
fn hash2(ix: i32, iz: i32, seed: u32) -> f32 {
    let mut h = (ix as u32).wrapping_mul(0x27D4_EB2D)
        ^ (iz as u32).wrapping_mul(0x1656_67B1)
        ^ seed.wrapping_mul(0x9E37_79B9);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Smooth value noise in [-1, 1] with feature size `scale` (same units as x, z).
///
/// Tissue texture (sub-resolution changes in scatterer strength), tumour heterogeneity and
/// irregular borders all come from this; it is pure arithmetic, so it is portable.
pub fn noise(x: f32, z: f32, scale: f32, seed: u32) -> f32 {
    let fx = x / scale;
    let fz = z / scale;
    let x0 = fx.floor();
    let z0 = fz.floor();
    let tx = fx - x0;
    let tz = fz - z0;
    let sx = tx * tx * (3.0 - 2.0 * tx);
    let sz = tz * tz * (3.0 - 2.0 * tz);
    let (ix, iz) = (x0 as i32, z0 as i32);
    let a = hash2(ix, iz, seed);
    let b = hash2(ix + 1, iz, seed);
    let c = hash2(ix, iz + 1, seed);
    let d = hash2(ix + 1, iz + 1, seed);
    let top = a + (b - a) * sx;
    let bot = c + (d - c) * sx;
    2.0 * (top + (bot - top) * sz) - 1.0
}

/// Two-octave noise: coarse shape plus finer detail.
pub fn fractal(x: f32, z: f32, scale: f32, seed: u32) -> f32 {
    0.7 * noise(x, z, scale, seed) + 0.3 * noise(x, z, scale * 0.45, seed ^ 0x5bd1_e995)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rand::new(42);
        let mut b = Rand::new(42);
        for _ in 0..100 {
            assert_eq!(a.f().to_bits(), b.f().to_bits());
        }
        assert_ne!(derive(1, 2, 3), derive(1, 2, 4));
        assert_ne!(derive(1, 2, 3), derive(1, 3, 3));
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut r = Rand::new(7);
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
    fn noise_is_bounded_and_smooth() {
        for i in 0..1000 {
            let x = i as f32 * 0.013;
            let v = noise(x, 0.3 * x, 0.5, 9);
            assert!((-1.0..=1.0).contains(&v));
            let w = noise(x + 1e-4, 0.3 * x, 0.5, 9);
            assert!((v - w).abs() < 0.01);
        }
    }
}
