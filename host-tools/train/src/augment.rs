//! Ultrasound augmentation for stage 2, applied to the preprocessed model input.
//!
//! It runs after usimage preprocessing (undoing only the channel normalisation, then redoing
//! it), so the device's preprocessing stays the single definition of what the model sees; an
//! augmented view is a plausible other acquisition of the same scan area: different gain and
//! dynamic range (gamma), a slightly rotated or zoomed probe position, fresh speckle, the
//! other side (horizontal flip). Every draw is a function of (seed, image hash, view).

use usimage::Normalization;

use seeded::Rng;

/// Bumped whenever the transform or its parameter ranges change: part of the cache key.
pub const AUG_VERSION: u32 = 1;

/// Largest rotation, degrees.
pub const MAX_ROTATION_DEG: f32 = 10.0;
/// Largest relative zoom in or out.
pub const MAX_SCALE: f32 = 0.10;
/// Gain range (multiplies echo intensities).
pub const GAIN: (f32, f32) = (0.8, 1.2);
/// Gamma range (log-uniform): dynamic-range / contrast change.
pub const GAMMA: (f32, f32) = (0.8, 1.25);
/// Largest standard deviation of the multiplicative speckle.
pub const MAX_SPECKLE: f32 = 0.15;

/// One view's transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugParams {
    /// Mirror left-right.
    pub flip: bool,
    /// Rotation, degrees (counter-clockwise).
    pub rotation_deg: f32,
    /// Zoom factor (> 1 enlarges).
    pub scale: f32,
    /// Intensity gain.
    pub gain: f32,
    /// Intensity gamma on the 0-1 scale.
    pub gamma: f32,
    /// Standard deviation of the multiplicative speckle (0: none).
    pub speckle: f32,
    /// Seed of the speckle field.
    pub noise_seed: u64,
}

impl AugParams {
    /// The identity transform (view 0, the original).
    pub fn identity() -> Self {
        Self {
            flip: false,
            rotation_deg: 0.0,
            scale: 1.0,
            gain: 1.0,
            gamma: 1.0,
            speckle: 0.0,
            noise_seed: 0,
        }
    }

    /// The transform of `view` of the image with content hash `image`; view 0 is the
    /// original, every other view a seeded random draw.
    pub fn draw(seed: u64, image: &[u8; 32], view: u32) -> Self {
        if view == 0 {
            return Self::identity();
        }
        let mut h = seed ^ u64::from(view).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for c in image.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            h = seeded::mix64(h ^ u64::from_le_bytes(b));
        }
        let mut r = Rng::new(h);
        let mut u = |lo: f32, hi: f32| lo + (hi - lo) * r.uniform() as f32;
        let flip = u(0.0, 1.0) < 0.5;
        let rotation_deg = u(-MAX_ROTATION_DEG, MAX_ROTATION_DEG);
        let scale = u(1.0 - MAX_SCALE, 1.0 + MAX_SCALE);
        let gain = u(GAIN.0, GAIN.1);
        let gamma = u(GAMMA.0.ln(), GAMMA.1.ln()).exp();
        let speckle = u(0.0, MAX_SPECKLE);
        Self {
            flip,
            rotation_deg,
            scale,
            gain,
            gamma,
            speckle,
            noise_seed: r.u64(),
        }
    }
}

/// Applies `p` in place to a planar `3 x side x side` model input normalised with `norm`.
/// Geometry is an inverse-mapped bilinear resample about the centre (outside the image:
/// black, as outside a scan sector); intensities are clamped to 0-255 before renormalising.
pub fn apply(input: &mut [f32], side: usize, norm: &Normalization, p: &AugParams) {
    let plane = side * side;
    if input.len() != 3 * plane || *p == AugParams::identity() {
        return;
    }
    // Back to 0-255 intensities.
    let mut img: Vec<f32> = input
        .chunks_exact(plane)
        .zip(norm.mean.iter().zip(&norm.std))
        .flat_map(|(ch, (&m, &s))| ch.iter().map(move |&v| v * s + m))
        .collect();
    if p.flip || p.rotation_deg != 0.0 || p.scale != 1.0 {
        let (sin, cos) = p.rotation_deg.to_radians().sin_cos();
        let c = (side as f32 - 1.0) / 2.0;
        let mut out = vec![0f32; img.len()];
        for y in 0..side {
            for x in 0..side {
                let mut u = x as f32 - c;
                let v = y as f32 - c;
                if p.flip {
                    u = -u;
                }
                // Inverse of "rotate by theta, then zoom by scale".
                let sx = (cos * u + sin * v) / p.scale + c;
                let sy = (-sin * u + cos * v) / p.scale + c;
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let at = |ch: &[f32], xi: f32, yi: f32| -> f32 {
                    if xi < 0.0 || yi < 0.0 || xi >= side as f32 || yi >= side as f32 {
                        0.0
                    } else {
                        ch[yi as usize * side + xi as usize]
                    }
                };
                for k in 0..3 {
                    let ch = &img[k * plane..(k + 1) * plane];
                    let top = at(ch, x0, y0) * (1.0 - fx) + at(ch, x0 + 1.0, y0) * fx;
                    let bottom =
                        at(ch, x0, y0 + 1.0) * (1.0 - fx) + at(ch, x0 + 1.0, y0 + 1.0) * fx;
                    out[k * plane + y * side + x] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        img = out;
    }
    // One speckle factor per pixel, shared by the three channels (grey stays grey).
    let mut rng = Rng::new(p.noise_seed);
    let noise: Vec<f32> = if p.speckle > 0.0 {
        (0..plane)
            .map(|_| (1.0 + p.speckle * rng.normal()).max(0.0))
            .collect()
    } else {
        Vec::new()
    };
    for (i, v) in img.iter_mut().enumerate() {
        let mut t = (*v / 255.0).clamp(0.0, 1.0);
        if p.gamma != 1.0 {
            t = t.powf(p.gamma);
        }
        t *= p.gain;
        if let Some(n) = noise.get(i % plane) {
            t *= n;
        }
        *v = (t * 255.0).clamp(0.0, 255.0);
    }
    for (k, (ch, dst)) in img
        .chunks_exact(plane)
        .zip(input.chunks_exact_mut(plane))
        .enumerate()
    {
        for (d, &v) in dst.iter_mut().zip(ch) {
            *d = (v - norm.mean[k]) / norm.std[k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: usize = 32;

    /// A grey ramp with a bright spot left of centre, normalised like the model input.
    fn input(norm: &Normalization) -> Vec<f32> {
        let mut grey = vec![0f32; S * S];
        for y in 0..S {
            for x in 0..S {
                grey[y * S + x] = (x * 4 + y) as f32 + if (5..9).contains(&x) { 60.0 } else { 0.0 };
            }
        }
        (0..3)
            .flat_map(|k| grey.iter().map(move |g| (g - norm.mean[k]) / norm.std[k]))
            .collect()
    }

    fn grey_at(v: &[f32], norm: &Normalization, x: usize, y: usize) -> f32 {
        v[y * S + x] * norm.std[0] + norm.mean[0]
    }

    #[test]
    fn draws_are_deterministic_and_vary() {
        let a = AugParams::draw(1, &[3; 32], 1);
        assert_eq!(a, AugParams::draw(1, &[3; 32], 1));
        assert_ne!(a, AugParams::draw(1, &[3; 32], 2), "views differ");
        assert_ne!(a, AugParams::draw(2, &[3; 32], 1), "seeds differ");
        assert_ne!(a, AugParams::draw(1, &[4; 32], 1), "images differ");
        assert_eq!(AugParams::draw(9, &[3; 32], 0), AugParams::identity());
        for v in 1..50 {
            let p = AugParams::draw(7, &[1; 32], v);
            assert!(p.rotation_deg.abs() <= MAX_ROTATION_DEG);
            assert!((p.scale - 1.0).abs() <= MAX_SCALE + 1e-6);
            assert!((GAIN.0..=GAIN.1).contains(&p.gain));
            assert!(p.gamma >= GAMMA.0 - 1e-6 && p.gamma <= GAMMA.1 + 1e-6);
        }
        let norm = Normalization::caffe_bgr();
        let (mut x, mut y) = (input(&norm), input(&norm));
        apply(&mut x, S, &norm, &a);
        apply(&mut y, S, &norm, &a);
        assert_eq!(x, y, "same params, same pixels");
    }

    #[test]
    fn flip_mirrors_and_gain_scales() {
        let norm = Normalization::caffe_bgr();
        let orig = input(&norm);
        let mut f = orig.clone();
        let flip = AugParams {
            flip: true,
            ..AugParams::identity()
        };
        apply(&mut f, S, &norm, &flip);
        for y in 0..S {
            for x in 0..S {
                let (a, b) = (
                    grey_at(&f, &norm, x, y),
                    grey_at(&orig, &norm, S - 1 - x, y),
                );
                assert!((a - b).abs() < 1e-3, "({x},{y}): {a} vs {b}");
            }
        }
        let mut g = orig.clone();
        let gain = AugParams {
            gain: 1.1,
            ..AugParams::identity()
        };
        apply(&mut g, S, &norm, &gain);
        for (x, y) in [(0, 0), (3, 7), (6, 20), (31, 31)] {
            let (a, b) = (grey_at(&g, &norm, x, y), grey_at(&orig, &norm, x, y));
            assert!((a - (1.1 * b).min(255.0)).abs() < 1e-2, "{a} vs 1.1 x {b}");
        }
    }

    #[test]
    fn rotation_keeps_size_and_centre() {
        let norm = Normalization::caffe_bgr();
        let orig = input(&norm);
        let mut r = orig.clone();
        let p = AugParams {
            rotation_deg: 10.0,
            scale: 1.1,
            ..AugParams::identity()
        };
        apply(&mut r, S, &norm, &p);
        assert_eq!(r.len(), orig.len());
        assert_ne!(r, orig);
        // The centre maps onto itself (between pixels 15 and 16 here): neighbours stay close.
        let (a, b) = (grey_at(&r, &norm, 15, 15), grey_at(&orig, &norm, 15, 15));
        assert!((a - b).abs() < 8.0, "{a} vs {b}");
        // Speckle is multiplicative: it changes echoes, black stays black.
        let s = AugParams {
            speckle: 0.15,
            noise_seed: 3,
            ..AugParams::identity()
        };
        let mut n = orig.clone();
        apply(&mut n, S, &norm, &s);
        assert!(grey_at(&n, &norm, 0, 0).abs() < 1e-3);
        assert!((grey_at(&n, &norm, 20, 20) - grey_at(&orig, &norm, 20, 20)).abs() > 1e-3);
    }
}
