//! Seeded randomness that gives the same bits on every machine.
//!
//! The generator is the workspace's one (`seeded`: ChaCha8, integer seed derivation,
//! pure-Rust `libm`), so a (seed, index) pair renders the same image on x86_64 and aarch64;
//! the value noise below is pure integer and float arithmetic, so it is portable too.

/// The project's one seeded generator; `Rand` is its name in the phantom's code.
pub use seeded::{derive, mix64, Rng as Rand};

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
