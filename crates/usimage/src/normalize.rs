//! Pixel-to-tensor normalisation, with parameters a model manifest supplies.
//!
//! The model's expectations (channel order, mean, scale) are data, not code: the manifest
//! pins them, training and device read them from there, so the two can never disagree.

use serde::{Deserialize, Serialize};

/// Channel order the network was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue (torchvision style).
    Rgb,
    /// Blue, green, red (Caffe / Keras ResNet-50 v1 style).
    Bgr,
}

/// How 0-255 pixel values become network inputs: `(value - mean[c]) / std[c]`, with the
/// channels in `order`. Means and stds are given in the *output* channel order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel order of the output tensor.
    pub order: ChannelOrder,
    /// Per output channel mean, on the 0-255 scale.
    pub mean: [f32; 3],
    /// Per output channel divisor, on the 0-255 scale.
    pub std: [f32; 3],
}

impl Normalization {
    /// Caffe preprocessing, which the Keras ImageNet ResNet-50 v1 weights expect:
    /// RGB->BGR, subtract the ImageNet BGR means, no scaling.
    pub fn caffe_bgr() -> Self {
        Self {
            order: ChannelOrder::Bgr,
            mean: [103.939, 116.779, 123.68],
            std: [1.0, 1.0, 1.0],
        }
    }

    /// Writes an interleaved RGB8 image (`width * height * 3` bytes) as a planar CHW tensor.
    ///
    /// # Panics
    /// If `rgb.len() != 3 * out.len() / 3` is violated, i.e. `out.len() != rgb.len()`.
    pub fn rgb_to_chw(&self, rgb: &[u8], out: &mut [f32]) {
        assert_eq!(rgb.len(), out.len(), "RGB buffer and tensor sizes differ");
        let plane = rgb.len() / 3;
        let src_channel = match self.order {
            ChannelOrder::Rgb => [0usize, 1, 2],
            ChannelOrder::Bgr => [2usize, 1, 0],
        };
        for c in 0..3 {
            let (mean, inv_std) = (self.mean[c], 1.0 / self.std[c]);
            let src = src_channel[c];
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = (f32::from(rgb[3 * i + src]) - mean) * inv_std;
            }
        }
    }

    /// Writes a grey8 image as a planar CHW tensor with three equal channels (before
    /// normalisation), which is how grey ultrasound enters an RGB-trained network.
    ///
    /// # Panics
    /// If `out.len() != 3 * grey.len()`.
    pub fn grey_to_chw(&self, grey: &[u8], out: &mut [f32]) {
        assert_eq!(
            3 * grey.len(),
            out.len(),
            "grey buffer and tensor sizes differ"
        );
        let plane = grey.len();
        for c in 0..3 {
            let (mean, inv_std) = (self.mean[c], 1.0 / self.std[c]);
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, &g) in dst.iter_mut().zip(grey) {
                *d = (f32::from(g) - mean) * inv_std;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caffe_swaps_to_bgr_and_subtracts_means() {
        let n = Normalization::caffe_bgr();
        // Two pixels: pure red, pure blue.
        let rgb = [255u8, 0, 0, 0, 0, 255];
        let mut out = [0f32; 6];
        n.rgb_to_chw(&rgb, &mut out);
        // Channel 0 is blue: pixel 0 has none, pixel 1 is full.
        assert_eq!(out[0], -103.939);
        assert_eq!(out[1], 255.0 - 103.939);
        // Channel 2 is red.
        assert_eq!(out[4], 255.0 - 123.68);
        assert_eq!(out[5], -123.68);
    }

    #[test]
    fn grey_fills_three_channels() {
        let n = Normalization {
            order: ChannelOrder::Rgb,
            mean: [0.0, 10.0, 20.0],
            std: [1.0, 2.0, 4.0],
        };
        let mut out = [0f32; 6];
        n.grey_to_chw(&[100, 40], &mut out);
        assert_eq!(out, [100.0, 40.0, 45.0, 15.0, 20.0, 5.0]);
    }
}
