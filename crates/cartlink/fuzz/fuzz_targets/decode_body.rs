//! Arbitrary message bodies behind a valid CRC, so the fuzzer reaches the postcard parser
//! instead of stopping at the checksum. Nothing may panic; no CRC or COBS error may occur.
#![no_main]

use cartlink::{encode, frame_raw, FrameDecoder, FrameError, MAX_WIRE_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let mut frame = [0u8; MAX_WIRE_FRAME];
    let Ok(n) = frame_raw(body, &mut frame) else {
        return;
    };
    let mut got = None;
    FrameDecoder::new().feed(&frame[..n], |r| got = Some(r));
    match got {
        Some(Ok(msg)) => {
            let mut again = [0u8; MAX_WIRE_FRAME];
            assert!(encode(&msg, &mut again).is_ok());
        }
        Some(Err(FrameError::Crc | FrameError::Cobs | FrameError::Overflow)) => {
            panic!("valid framing rejected")
        }
        Some(Err(_)) => {}
        None => panic!("no frame from {body:?}"),
    }
});
