//! Property tests: round trips, resynchronisation under corruption, and exactly-once
//! delivery between the device and cart state machines over a noisy line.

mod common;

use cartlink::cart::{Controller, ControllerConfig, Event};
use cartlink::device::{Classification, Identity, Link, LinkConfig};
use cartlink::*;
use common::Noise;
use proptest::prelude::*;

fn hstring<const N: usize>() -> impl Strategy<Value = heapless::String<N>> {
    proptest::string::string_regex(&format!(".{{0,{N}}}"))
        .unwrap()
        .prop_map(|s| {
            let mut out = heapless::String::new();
            for c in s.chars() {
                if out.push(c).is_err() {
                    break;
                }
            }
            out
        })
}

fn class() -> impl Strategy<Value = Class> {
    proptest::sample::select(Class::ALL.to_vec())
}

fn command_id() -> impl Strategy<Value = CommandId> {
    any::<u16>().prop_map(CommandId)
}

fn exam_context() -> impl Strategy<Value = ExamContext> {
    (
        hstring(),
        hstring(),
        hstring(),
        proptest::option::of(proptest::sample::select(vec![Side::Left, Side::Right])),
    )
        .prop_map(|(patient_id, accession, operator, side)| ExamContext {
            patient_id,
            accession,
            operator,
            side,
        })
}

fn message() -> impl Strategy<Value = Message> {
    let hello = (
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
        hstring(),
        hstring(),
        hstring(),
    )
        .prop_map(
            |(
                protocol_version,
                min_protocol_version,
                session,
                device_id,
                model_id,
                model_version,
            )| {
                Message::Hello(Hello {
                    protocol_version,
                    min_protocol_version,
                    session,
                    device_id,
                    model_id,
                    model_version,
                })
            },
        );
    let result = (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<f32>(),
        class(),
        any::<f32>(),
        any::<u8>(),
    )
        .prop_map(
            |(session, seq, timestamp_ms, p_abnormal, class, confidence, flags)| {
                Message::Result(ResultMsg {
                    session,
                    seq,
                    timestamp_ms,
                    p_abnormal,
                    class,
                    confidence,
                    flags,
                })
            },
        );
    let state = proptest::sample::select(vec![
        State::Idle,
        State::Screening,
        State::NoSignal,
        State::Fault,
    ]);
    let journal = proptest::sample::select(vec![
        JournalHealth::Ok,
        JournalHealth::Degraded,
        JournalHealth::Failed,
        JournalHealth::Disabled,
    ]);
    let status = (
        state,
        any::<f32>(),
        any::<f32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        journal,
        proptest::option::of(command_id()),
    )
        .prop_map(
            |(
                state,
                fps,
                latency_ms,
                frames_dropped,
                results_dropped,
                results_pending,
                journal,
                last_command,
            )| {
                Message::Status(Status {
                    state,
                    fps,
                    latency_ms,
                    frames_dropped,
                    results_dropped,
                    results_pending,
                    journal,
                    last_command,
                })
            },
        );
    let heartbeat = (
        any::<u32>(),
        any::<u64>(),
        proptest::option::of(command_id()),
    )
        .prop_map(|(session, uptime_ms, last_command)| {
            Message::Heartbeat(Heartbeat {
                session,
                uptime_ms,
                last_command,
            })
        });
    prop_oneof![
        hello,
        result,
        status,
        heartbeat,
        command_id().prop_map(Message::StartScreening),
        command_id().prop_map(Message::StopScreening),
        command_id().prop_map(Message::Capture),
        (any::<u32>(), any::<u32>()).prop_map(|(session, seq)| Message::Ack(Ack { session, seq })),
        (hstring(), hstring())
            .prop_map(|(operator, viewer)| Message::Pairing(Pairing { operator, viewer })),
        (command_id(), exam_context())
            .prop_map(|(id, context)| Message::StartExam(StartExam { id, context })),
        command_id().prop_map(Message::EndExam),
        proptest::option::of(hstring()).prop_map(|open| Message::Exam(ExamState { open })),
        (any::<u16>(), any::<u16>(), any::<bool>()).prop_map(|(pending, quarantined, held)| {
            Message::Outbox(OutboxState {
                pending,
                quarantined,
                held,
            })
        }),
    ]
}

fn encoded(msg: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_WIRE_FRAME];
    let n = encode(msg, &mut buf).expect("every message fits a frame");
    buf[..n].to_vec()
}

fn decode_all(bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    FrameDecoder::new().feed(bytes, |r| {
        if let Ok(m) = r {
            out.push(m)
        }
    });
    out
}

#[derive(Debug, Clone)]
enum Op {
    Flip(u8),
    Drop,
    Insert(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..=255).prop_map(Op::Flip),
        Just(Op::Drop),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::Insert),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Every message encodes within the frame bound and decodes to itself (compared by
    /// encoding, so NaN payloads count as equal).
    #[test]
    fn round_trip(msg in message()) {
        let frame = encoded(&msg);
        prop_assert!(frame.len() <= MAX_WIRE_FRAME);
        prop_assert!(frame[1..frame.len() - 1].iter().all(|&b| b != 0));
        let back = decode_all(&frame);
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(encoded(&back[0]), frame);
    }

    /// Protocol 1 frames carry every protocol-1 message unchanged and refuse the exam
    /// messages; a decoder reports each frame's version.
    #[test]
    fn versions_round_trip(msg in message()) {
        let mut buf = [0u8; MAX_WIRE_FRAME];
        match encode_as(&msg, 1, &mut buf) {
            Ok(n) => {
                prop_assert_eq!(msg.min_version(), 1);
                let (v, back) = decode_frame(&mut buf[1..n - 1].to_vec()).unwrap();
                prop_assert_eq!(v, 1);
                prop_assert_eq!(encoded(&back), encoded(&msg));
            }
            Err(e) => {
                prop_assert_eq!(msg.min_version(), 2);
                prop_assert_eq!(e, EncodeError::Version(1));
            }
        }
        let frame = encoded(&msg);
        let (v, _) = decode_frame(&mut frame[1..frame.len() - 1].to_vec()).unwrap();
        prop_assert_eq!(v, PROTOCOL_VERSION);
    }

    /// After arbitrary corruption the decoder still returns every frame whose own bytes
    /// were not touched, returns nothing that was not sent, and keeps the order.
    #[test]
    fn resync_under_corruption(
        msgs in proptest::collection::vec(message(), 1..20),
        ops in proptest::collection::vec((any::<proptest::sample::Index>(), op()), 0..12),
        garbage_prefix in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let frames: Vec<Vec<u8>> = msgs.iter().map(encoded).collect();
        let mut spans = Vec::new();
        let mut clean = Vec::new();
        for f in &frames {
            spans.push((clean.len(), clean.len() + f.len()));
            clean.extend_from_slice(f);
        }
        let mut at = std::collections::BTreeMap::new();
        for (i, o) in ops {
            at.insert(i.index(clean.len()), o);
        }
        let mut stream = garbage_prefix;
        for (i, &b) in clean.iter().enumerate() {
            match at.get(&i) {
                None => stream.push(b),
                Some(Op::Flip(m)) => stream.push(b ^ m),
                Some(Op::Drop) => {}
                Some(Op::Insert(x)) => {
                    stream.extend_from_slice(x);
                    stream.push(b);
                }
            }
        }
        let got: Vec<Vec<u8>> = decode_all(&stream).iter().map(encoded).collect();
        // In order and only what was sent: `got` is a subsequence of `frames`.
        let mut it = frames.iter();
        for g in &got {
            prop_assert!(it.any(|f| f == g), "decoded a frame that was not sent, or out of order");
        }
        // Every untouched frame arrives.
        let untouched = spans
            .iter()
            .filter(|(a, b)| at.range(*a..*b).next().is_none())
            .count();
        prop_assert!(got.len() >= untouched, "{} of {} untouched frames", got.len(), untouched);
    }
}

const ID: Identity<'static> = Identity {
    device_id: "edge-prop",
    model_id: "renal",
    model_version: "1",
};

/// Device and cart over a line that flips, drops and inserts bytes in both directions:
/// every result reaches the cart application exactly once and is acknowledged, and every
/// command runs exactly once.
/// One millisecond of traffic: everything the device has due goes down the noisy line to
/// the cart (its results' sequence numbers collected), everything the cart has due goes up
/// to the device (the commands it runs collected).
fn exchange<const N: usize>(
    link: &mut Link<N>,
    cart: &mut Controller,
    (down, up): (&mut Noise, &mut Noise),
    t: u64,
    results: &mut Vec<u32>,
    cmds: &mut Vec<Command>,
) {
    let mut buf = [0u8; MAX_WIRE_FRAME];
    let mut wire = Vec::new();
    while let Some(k) = link.poll_transmit(t, &mut buf) {
        down.apply(&buf[..k], &mut wire);
    }
    cart.receive(&wire, t, |e| {
        if let Event::Result(r) = e {
            results.push(r.seq)
        }
    });
    wire.clear();
    while let Some(k) = cart.poll_transmit(t, &mut buf) {
        up.apply(&buf[..k], &mut wire);
    }
    link.receive(&wire, t, |c| cmds.push(c));
}

/// Returns the simulated milliseconds it took.
fn exactly_once(seed: u64, ppm: u32, n: u32, every_ms: u64) -> Result<u64, TestCaseError> {
    let mut link: Link = Link::new(LinkConfig::default(), ID, 0xabc, 0);
    let mut cart = Controller::new(ControllerConfig::default(), 500);
    let (mut down, mut up) = (Noise::new(seed, ppm), Noise::new(!seed, ppm));
    let (mut results, mut cmds) = (Vec::new(), Vec::new());
    let exam = ExamContext::new("MRN-7", "A-1", "", Some(Side::Right)).unwrap();
    cart.send_command(Command::StartExam(exam.clone())).unwrap();
    cart.send_command(Command::StartScreening).unwrap();
    let mut pushed = 0;
    let mut t = 0u64;
    // Exam commands wait for the device's Hello, a long frame that a line this noisy
    // rarely carries intact: give them simulated time.
    while t < 600_000 {
        if pushed < n && t.is_multiple_of(every_ms) {
            link.push_result(Classification {
                timestamp_ms: t,
                p_abnormal: 0.5,
                class: Class::Cyst,
                confidence: 0.5,
                flags: 0,
            });
            pushed += 1;
            if pushed == n {
                cart.send_command(Command::StopScreening).unwrap();
                cart.send_command(Command::EndExam).unwrap();
            }
        }
        exchange(
            &mut link,
            &mut cart,
            (&mut down, &mut up),
            t,
            &mut results,
            &mut cmds,
        );
        if pushed == n && link.pending() == 0 && cart.commands_pending() == 0 {
            break;
        }
        t += 1;
    }
    // Exactly once, except results dropped from the full buffer (oldest first), which
    // must be counted. A dropped result may still have arrived before it was dropped.
    results.sort_unstable();
    let len = results.len();
    results.dedup();
    prop_assert_eq!(results.len(), len, "duplicate delivered");
    prop_assert!(results.iter().all(|&s| s < n));
    prop_assert!(
        len as u32 + link.stats().results_dropped >= n,
        "lost without being counted"
    );
    prop_assert_eq!(link.pending(), 0);
    prop_assert_eq!(
        cmds,
        vec![
            Command::StartExam(exam),
            Command::StartScreening,
            Command::StopScreening,
            Command::EndExam
        ]
    );
    if ppm == 0 {
        // A clean line acknowledges at once: nothing may be dropped at any rate. On a
        // noisy line a result can fail several resends in a row and be pushed out of the
        // buffer; that is allowed, but counted (asserted above).
        prop_assert_eq!(link.stats().results_dropped, 0);
    }
    Ok(t)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn exactly_once_over_noisy_line(
        seed in any::<u64>(),
        ppm in prop_oneof![Just(0u32), 0u32..30_000],
        n in 1u32..300,
        every_ms in 1u64..100,
    ) {
        exactly_once(seed, ppm, n, every_ms)?;
    }
}

/// Regression (found by the property above): on a line this noisy the device's Hello, which
/// exam commands wait for, rarely arrives intact; it is repeated every second until the
/// cart answers in protocol 2.
#[test]
fn exam_commands_get_through_a_very_noisy_line() {
    let took = exactly_once(15_286_772_063_701_503_180, 25_896, 16, 1).unwrap();
    eprintln!("done after {took} ms of simulated time");
    assert!(took < 60_000, "took {took} ms");
}

/// Regression: under heavy loss an old result can stay unacknowledged while many newer
/// ones are acknowledged. The link must drop it once it falls out of the cart's duplicate
/// window, or the cart would ack it as a "duplicate" without ever reporting it.
#[test]
fn stale_results_are_dropped_not_swallowed() {
    for seed in 0..40u64 {
        let cfg = LinkConfig {
            resend_after_ms: 150,
            ..LinkConfig::default()
        };
        let mut link: Link<64> = Link::new(cfg, ID, 0xabc, 0);
        let mut cart = Controller::new(ControllerConfig::default(), 500);
        let (mut down, mut up) = (Noise::new(seed, 20_000), Noise::new(!seed, 20_000));
        let mut results = Vec::new();
        let n = 300;
        let (mut pushed, mut t) = (0, 0u64);
        while t < 200_000 && !(pushed == n && link.pending() == 0) {
            if pushed < n && t % 10 == 0 {
                link.push_result(Classification {
                    timestamp_ms: t,
                    p_abnormal: 0.5,
                    class: Class::Cyst,
                    confidence: 0.5,
                    flags: 0,
                });
                pushed += 1;
            }
            exchange(
                &mut link,
                &mut cart,
                (&mut down, &mut up),
                t,
                &mut results,
                &mut Vec::new(),
            );
            t += 1;
        }
        let delivered = results.len() as u32;
        results.sort_unstable();
        results.dedup();
        assert_eq!(results.len() as u32, delivered, "seed {seed}: duplicate");
        let s = link.stats();
        assert!(
            delivered + s.results_dropped >= n,
            "seed {seed}: {delivered} + {s:?}"
        );
        assert_eq!(s.results_acked + s.results_dropped, n, "seed {seed}");
    }
}
