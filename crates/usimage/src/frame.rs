//! The grey frame every decoder produces and every later stage consumes.
//!
//! Ultrasound B-mode is grey; colour on screen is Doppler or user interface. Decoders keep the
//! grey (luma) plane and, where the source had colour, a mask of the clearly coloured pixels so
//! the detector and the model input can leave them out.

use crate::error::DecodeError;

/// Largest accepted side, in pixels: larger sources are refused before anything is allocated.
pub const MAX_SIDE: u32 = 16_384;
/// Largest accepted frame, in pixels (256 MPixel).
pub const MAX_PIXELS: u64 = 256 * 1024 * 1024;

/// Chroma (max - min of R, G, B) above which a pixel counts as coloured. Grey ultrasound has
/// R = G = B; lossy compression and 4:2:2 subsampling leave a few levels of chroma noise.
pub const COLOUR_CHROMA: u8 = 40;

/// A decoded frame: 8-bit grey, row-major, `width * height` bytes, plus an optional per-pixel
/// colour mask (1 = coloured, to be ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GreyFrame {
    width: u32,
    height: u32,
    grey: Vec<u8>,
    colour: Vec<u8>,
    has_colour: bool,
}

/// Checks frame dimensions against the limits (no zero sides, no absurd sizes).
pub fn check_dims(width: u32, height: u32) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::Empty { width, height });
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge { width, height });
    }
    Ok(())
}

impl GreyFrame {
    /// Wraps a grey buffer; its length must be `width * height`.
    pub fn from_grey(width: u32, height: u32, grey: Vec<u8>) -> Result<Self, DecodeError> {
        check_dims(width, height)?;
        let expected = width as usize * height as usize;
        if grey.len() != expected {
            return Err(DecodeError::Truncated {
                what: "grey buffer",
                expected,
                got: grey.len(),
            });
        }
        Ok(Self {
            width,
            height,
            grey,
            colour: Vec::new(),
            has_colour: false,
        })
    }

    /// Builds a frame from interleaved RGB8 (`width * height * 3` bytes).
    pub fn from_rgb(width: u32, height: u32, rgb: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Self::default();
        f.set_from_rgb(width, height, rgb)?;
        Ok(f)
    }

    /// Resizes the buffers for a new frame, reusing their capacity (device path: no
    /// allocation once the largest frame size has been seen).
    pub fn reset(&mut self, width: u32, height: u32, with_colour: bool) -> Result<(), DecodeError> {
        check_dims(width, height)?;
        let n = width as usize * height as usize;
        self.width = width;
        self.height = height;
        self.grey.resize(n, 0);
        self.has_colour = with_colour;
        if with_colour {
            self.colour.resize(n, 0);
        }
        Ok(())
    }

    /// Overwrites this frame with interleaved RGB8, reusing the buffers.
    pub fn set_from_rgb(&mut self, width: u32, height: u32, rgb: &[u8]) -> Result<(), DecodeError> {
        check_dims(width, height)?;
        let n = width as usize * height as usize;
        if rgb.len() < 3 * n {
            return Err(DecodeError::Truncated {
                what: "RGB pixels",
                expected: 3 * n,
                got: rgb.len(),
            });
        }
        self.reset(width, height, true)?;
        let mut any = false;
        for ((g, c), px) in self
            .grey
            .iter_mut()
            .zip(self.colour.iter_mut())
            .zip(rgb.chunks_exact(3))
        {
            let (r, gr, b) = (px[0], px[1], px[2]);
            *g = luma(r, gr, b);
            let chroma = r.max(gr).max(b) - r.min(gr).min(b);
            let coloured = chroma > COLOUR_CHROMA;
            any |= coloured;
            *c = u8::from(coloured);
        }
        self.has_colour = any;
        Ok(())
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Grey pixels, row-major.
    pub fn grey(&self) -> &[u8] {
        &self.grey[..self.width as usize * self.height as usize]
    }

    /// Mutable grey pixels (for decoders writing in place).
    pub fn grey_mut(&mut self) -> &mut [u8] {
        let n = self.width as usize * self.height as usize;
        &mut self.grey[..n]
    }

    /// Colour mask (1 = coloured pixel), when the source had any colour.
    pub fn colour_mask(&self) -> Option<&[u8]> {
        self.has_colour
            .then(|| &self.colour[..self.width as usize * self.height as usize])
    }

    /// Mutable colour mask; call [`GreyFrame::reset`] with `with_colour` first.
    pub fn colour_mask_mut(&mut self) -> Option<&mut [u8]> {
        let n = self.width as usize * self.height as usize;
        self.has_colour.then(|| &mut self.colour[..n])
    }

    /// Marks whether the colour mask holds any coloured pixel (decoders call this after
    /// filling it, so frames that are grey throughout skip the mask later).
    pub fn set_has_colour(&mut self, has: bool) {
        self.has_colour = has && self.colour.len() >= self.width as usize * self.height as usize;
    }
}

/// ITU-R BT.601 luma in integer arithmetic (deterministic on every target).
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((77 * u32::from(r) + 150 * u32::from(g) + 29 * u32::from(b) + 128) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_grey_stays_grey_and_colour_is_flagged() {
        let rgb = [100u8, 100, 100, 255, 0, 0, 250, 250, 250];
        let f = GreyFrame::from_rgb(3, 1, &rgb).unwrap();
        assert_eq!(f.grey(), &[100, 77, 250]);
        assert_eq!(f.colour_mask().unwrap(), &[0, 1, 0]);
    }

    #[test]
    fn limits_refuse_zero_and_absurd_sizes() {
        assert!(matches!(check_dims(0, 10), Err(DecodeError::Empty { .. })));
        assert!(matches!(
            check_dims(20_000, 10),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(check_dims(16_384, 16_384).is_ok());
        assert!(matches!(
            check_dims(16_385, 2),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(GreyFrame::from_grey(2, 2, vec![0; 3]).is_err());
    }
}
