//! Any bytes -> decode (image, DICOM, raw V4L2) -> scan-area detection -> model input.
//! Must never panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usimage::v4l2::{decode_buffer, PixelFormat};
use usimage::{GreyFrame, Normalization, Preprocessor, UsFile};

fuzz_target!(|data: &[u8]| {
    let mut pre = Preprocessor::new(32, Normalization::caffe_bgr());
    let mut out = vec![0f32; pre.output_len()];
    let mut frame = GreyFrame::default();
    if let Ok(file) = UsFile::from_bytes(data) {
        for i in 0..file.frame_count().min(3) {
            if file.frame_into(i, &mut frame).is_ok() {
                let _ = pre.process(&frame, &mut out);
            }
        }
        let _ = file.frame_into(file.frame_count(), &mut frame);
    }
    // Raw capture buffers: first 5 bytes choose format and geometry.
    if data.len() > 5 {
        let format =
            [PixelFormat::Yuyv, PixelFormat::Grey, PixelFormat::Mjpeg][usize::from(data[0] % 3)];
        let (w, h) = (u32::from(data[1]) * 4 + 1, u32::from(data[2]) * 4 + 1);
        let stride = usize::from(u16::from_le_bytes([data[3], data[4]]));
        if decode_buffer(format, &data[5..], w, h, stride, &mut frame).is_ok() {
            let _ = pre.process(&frame, &mut out);
        }
    }
});
