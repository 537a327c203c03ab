//! Quantization arithmetic: symmetric scales, rounding, saturation, int32 biases, SQNR.
//!
//! Every rounding is half-to-even, the rule ONNX `QuantizeLinear` and tract use, so the
//! simulation and the integer graph round the same way.

/// Largest magnitude of a symmetric int8 weight: -128 is never used, so negation is exact.
pub const WEIGHT_QMAX: f32 = 127.0;
/// Activation range of ONNX `QuantizeLinear` to int8 (saturates at -128 and 127).
pub const ACT_MIN: f32 = -128.0;
/// See [`ACT_MIN`].
pub const ACT_MAX: f32 = 127.0;

/// Scale of a symmetric int8 quantizer whose clip threshold is `threshold` (the magnitude that
/// maps to 127). A dead tensor (threshold 0 or not finite) gets scale 1: every value is 0 anyway.
pub fn symmetric_scale(threshold: f32) -> f32 {
    if threshold > 0.0 && threshold.is_finite() {
        threshold / ACT_MAX
    } else {
        1.0
    }
}

/// `QuantizeLinear` to int8 with zero point 0: `saturate(round_half_even(x / scale))`.
pub fn quantize_act(x: f32, scale: f32) -> i8 {
    (x / scale).round_ties_even().clamp(ACT_MIN, ACT_MAX) as i8
}

/// Quantize then dequantize: the value the next layer sees.
pub fn fake_quant(x: f32, scale: f32) -> f32 {
    f32::from(quantize_act(x, scale)) * scale
}

/// Zero point of a non-negative (post-ReLU) activation in the full-range encoding: 0 maps to
/// -128, so all 256 int8 levels cover `[0, threshold]`.
pub const RELU_ZERO_POINT: i8 = -128;

/// Scale of the full-range encoding of a non-negative tensor whose clip threshold is
/// `threshold` (the magnitude that maps to 127): half the symmetric step.
pub fn relu_scale(threshold: f32) -> f32 {
    if threshold > 0.0 && threshold.is_finite() {
        threshold / (ACT_MAX - ACT_MIN)
    } else {
        1.0
    }
}

/// Quantize then dequantize with a zero point: `(saturate(round(x / s) + zp) - zp) * s`.
pub fn fake_quant_zp(x: f32, scale: f32, zero_point: i8) -> f32 {
    let z = f32::from(zero_point);
    let q = ((x / scale).round_ties_even() + z).clamp(ACT_MIN, ACT_MAX);
    (q - z) * scale
}

/// Per-output-channel symmetric int8 weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelWeights {
    /// Int8 values, same layout as the float kernel (output channel first).
    pub values: Vec<i8>,
    /// One scale per output channel: `max |w_c| / 127` (1 for an all-zero channel).
    pub scales: Vec<f32>,
}

/// Quantizes a kernel whose first axis (of `channels`) is the output channel.
pub fn quantize_weights(kernel: &[f32], channels: usize) -> ChannelWeights {
    let per = kernel.len() / channels.max(1);
    let mut values = Vec::with_capacity(kernel.len());
    let mut scales = Vec::with_capacity(channels);
    for c in kernel.chunks(per.max(1)).take(channels) {
        let max = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if max > 0.0 { max / WEIGHT_QMAX } else { 1.0 };
        scales.push(s);
        values.extend(
            c.iter()
                .map(|v| (v / s).round_ties_even().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8),
        );
    }
    ChannelWeights { values, scales }
}

/// Int32 bias of a quantized convolution: `round(b_c / (x_scale * w_scale_c))`, saturated to
/// the i32 range. Returns the biases and how many saturated (which would be a calibration bug).
pub fn quantize_bias(bias: &[f32], x_scale: f32, w_scales: &[f32]) -> (Vec<i32>, usize) {
    let mut saturated = 0;
    let q = bias
        .iter()
        .zip(w_scales)
        .map(|(b, ws)| {
            let v = (f64::from(*b) / (f64::from(x_scale) * f64::from(*ws))).round_ties_even();
            if v > f64::from(i32::MAX) || v < f64::from(i32::MIN) {
                saturated += 1;
            }
            v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        })
        .collect();
    (q, saturated)
}

/// Running signal-to-quantization-noise ratio: `10 log10(sum x^2 / sum (x - y)^2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sqnr {
    signal: f64,
    noise: f64,
}

impl Sqnr {
    /// Adds a reference tensor `x` and its approximation `y`.
    pub fn add(&mut self, x: &[f32], y: &[f32]) {
        for (a, b) in x.iter().zip(y) {
            self.signal += f64::from(*a) * f64::from(*a);
            let d = f64::from(*a) - f64::from(*b);
            self.noise += d * d;
        }
    }

    /// The ratio in dB (infinite when exact, NaN without signal).
    pub fn db(&self) -> f64 {
        if self.signal == 0.0 {
            return f64::NAN;
        }
        10.0 * (self.signal / self.noise).log10()
    }
}

/// Rounded weights per conv node name, used by the rewrite instead of nearest rounding.
pub type RoundedWeights = std::collections::BTreeMap<String, ChannelWeights>;

/// The int8 weights of conv `name`: GPTQ's where `rounded` has them, else nearest rounding.
/// Rounded weights that do not fit the kernel are an error, so the rewrite and the bias
/// correction always see the same integers.
pub fn conv_weights(
    rounded: Option<&RoundedWeights>,
    name: &str,
    kernel: &[f32],
    channels: usize,
) -> Result<ChannelWeights, crate::error::QuantizeError> {
    match rounded.and_then(|r| r.get(name)) {
        Some(r) if r.values.len() == kernel.len() && r.scales.len() == channels => Ok(r.clone()),
        Some(_) => Err(crate::error::QuantizeError::Invalid(format!(
            "conv `{name}`: rounded weights do not match its kernel"
        ))),
        None => Ok(quantize_weights(kernel, channels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_per_channel_scale_rounding_and_range() {
        // Two output channels of 3 weights: the largest magnitude maps to +-127.
        let k = [62.5, -127.0, 32.2, 254.0, 127.0, -63.0];
        let q = quantize_weights(&k, 2);
        assert_eq!(q.scales, [1.0, 2.0]);
        assert_eq!(&q.values[..3], &[62, -127, 32]); // 62.5 rounds to even 62
        assert_eq!(&q.values[3..], &[127, 64, -32]); // 63.5 -> 64, -31.5 -> -32
        let zero = quantize_weights(&[0.0, 0.0], 1);
        assert_eq!(zero.scales, [1.0]);
        assert_eq!(zero.values, [0, 0]);
    }

    #[test]
    fn activations_round_half_even_and_saturate() {
        assert_eq!(quantize_act(2.5, 1.0), 2);
        assert_eq!(quantize_act(3.5, 1.0), 4);
        assert_eq!(quantize_act(-2.5, 1.0), -2);
        assert_eq!(quantize_act(1000.0, 1.0), 127);
        assert_eq!(quantize_act(-1000.0, 1.0), -128);
        assert!((fake_quant(0.26, 0.1) - 0.3).abs() < 1e-6);
        assert_eq!(fake_quant(5.0, 0.5), 5.0);
        assert_eq!(symmetric_scale(254.0), 2.0);
        assert_eq!(symmetric_scale(0.0), 1.0);
    }

    #[test]
    fn bias_uses_input_times_channel_scale() {
        let (b, sat) = quantize_bias(&[1.0, -0.5, 3e9], 0.5, &[0.01, 0.1, 1e-3]);
        assert_eq!(b[0], 200);
        assert_eq!(b[1], -10);
        assert_eq!(b[2], i32::MAX);
        assert_eq!(sat, 1);
    }

    #[test]
    fn sqnr_of_known_noise() {
        let mut s = Sqnr::default();
        s.add(&[10.0, -10.0], &[11.0, -9.0]);
        assert!((s.db() - 20.0).abs() < 1e-9);
        let mut e = Sqnr::default();
        e.add(&[1.0], &[1.0]);
        assert!(e.db().is_infinite());
    }
}
