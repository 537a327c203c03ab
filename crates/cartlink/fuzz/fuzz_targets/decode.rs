//! Arbitrary bytes into the decoder and both state machines: nothing may panic, and every
//! message that decodes must re-encode to a frame that decodes to the same bytes.
#![no_main]

use cartlink::cart::{Controller, ControllerConfig};
use cartlink::device::{Identity, Link, LinkConfig};
use cartlink::{encode, FrameDecoder, MAX_WIRE_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new();
    dec.feed(data, |r| {
        if let Ok(msg) = r {
            let mut a = [0u8; MAX_WIRE_FRAME];
            let n = encode(&msg, &mut a).expect("a decoded message re-encodes");
            let mut again = None;
            FrameDecoder::new().feed(&a[..n], |r| again = Some(r.expect("own frame decodes")));
            let mut b = [0u8; MAX_WIRE_FRAME];
            let m = encode(&again.expect("one frame"), &mut b).expect("re-encodes");
            assert_eq!(&a[..n], &b[..m]);
        }
    });

    // Split the input in two chunks to exercise state carried across calls.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let id = Identity {
        device_id: "fuzz",
        model_id: "m",
        model_version: "v",
    };
    let mut link: Link<8> = Link::new(LinkConfig::default(), id, 1, 0);
    let mut cart = Controller::new(ControllerConfig::default(), 0);
    let mut buf = [0u8; MAX_WIRE_FRAME];
    for (t, chunk) in [(0u64, &data[..cut]), (1_000, &data[cut..])] {
        link.receive(chunk, t, |_| {});
        cart.receive(chunk, t, |_| {});
        let mut frames = 0;
        while link.poll_transmit(t, &mut buf).is_some() {
            frames += 1;
            assert!(frames < 100);
        }
        while cart.poll_transmit(t, &mut buf).is_some() {
            frames += 1;
            assert!(frames < 200);
        }
    }
});
