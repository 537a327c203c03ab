//! A stand-in for the edge runtime, for trying `renalscan cart-sim` or cart firmware
//! before the real device exists: answers commands and, while screening, sends a made-up
//! result every 200 ms.
//!
//! `cargo run -p cartlink --features std --example fake_device -- /dev/pts/N [baud]`

use std::time::Instant;

use cartlink::device::{Classification, DeviceStatus, Identity, Link, LinkConfig};
use cartlink::serial::{millis_since, open, receive_link, transmit_link};
use cartlink::{flags, Class, Command, JournalHealth, State};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: fake_device <serial device> [baud]")?;
    let baud = args.next().map_or(Ok(115_200), |b| b.parse())?;
    let mut port = open(&path, baud)?;
    let start = Instant::now();
    let clock = || millis_since(start);
    let id = Identity {
        device_id: "fake-device",
        model_id: "none",
        model_version: "0",
    };
    // Differs per run, as a real device's boot id would.
    let session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let mut link: Link = Link::new(LinkConfig::default(), id, session, clock());
    let (mut screening, mut last, mut n, mut exams) = (false, 0u64, 0u32, 0u32);
    loop {
        let mut capture = false;
        let mut exam = None;
        receive_link(&mut link, &mut port, clock, |c| match c {
            Command::StartScreening => screening = true,
            Command::StopScreening => screening = false,
            Command::Capture => capture = true,
            Command::StartExam(_) => exam = Some(true),
            Command::EndExam => exam = Some(false),
        })?;
        match exam {
            Some(true) => {
                exams += 1;
                link.set_exam(Some(&format!("s-fake-{exams:04}")));
            }
            Some(false) => link.set_exam(None),
            None => {}
        }
        let now = clock();
        if capture || (screening && now - last >= 200) {
            last = now;
            n += 1;
            let p = (n % 10) as f32 / 10.0;
            link.push_result(Classification {
                timestamp_ms: now,
                p_abnormal: p,
                class: if p >= 0.5 { Class::Cyst } else { Class::Normal },
                confidence: if p >= 0.5 { p } else { 1.0 - p },
                flags: if p >= 0.5 { flags::ABNORMAL } else { 0 }
                    | if capture { flags::CAPTURE } else { 0 },
            });
        }
        link.set_status(DeviceStatus {
            state: if screening {
                State::Screening
            } else {
                State::Idle
            },
            fps: if screening { 5.0 } else { 0.0 },
            latency_ms: 40.0,
            frames_dropped: 0,
            journal: JournalHealth::Ok,
        });
        transmit_link(&mut link, &mut port, clock)?;
    }
}
