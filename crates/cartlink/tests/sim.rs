//! `renalscan cart-sim`'s engine against a device link that opens the pty by path, the
//! way the edge runtime opens a serial device.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cartlink::device::{Classification, DeviceStatus, Identity, Link, LinkConfig};
use cartlink::serial::{millis_since, open, port_name, pty_pair, receive_link, transmit_link};
use cartlink::sim::{run, SimOptions};
use cartlink::{Class, Command, State};

#[test]
fn sim_starts_prints_results_and_stops() {
    let (mut master, slave) = pty_pair().unwrap();
    let path = port_name(&slave).expect("slave path");
    let stop = Arc::new(AtomicBool::new(false));
    let dev = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut port = open(&path, 115_200).expect("open pty slave by path");
            let start = Instant::now();
            let clock = || millis_since(start);
            let id = Identity {
                device_id: "edge-sim",
                model_id: "renal",
                model_version: "1",
            };
            let mut link: Link = Link::new(LinkConfig::default(), id, 9, 0);
            let mut screening = false;
            let mut last = 0;
            let mut commands = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = receive_link(&mut link, &mut port, clock, |c| {
                    screening = c == Command::StartScreening;
                    commands.push(c);
                });
                if r.is_err() && stop.load(Ordering::Relaxed) {
                    break;
                }
                r.unwrap();
                if screening && clock() - last >= 20 {
                    last = clock();
                    link.push_result(Classification {
                        timestamp_ms: last,
                        p_abnormal: 0.1,
                        class: Class::Normal,
                        confidence: 0.9,
                        flags: 0,
                    });
                }
                link.set_status(DeviceStatus {
                    state: if screening {
                        State::Screening
                    } else {
                        State::Idle
                    },
                    ..DeviceStatus::default()
                });
                if transmit_link(&mut link, &mut port, clock).is_err() {
                    assert!(stop.load(Ordering::Relaxed));
                    break;
                }
            }
            commands
        })
    };
    let (tx, rx) = mpsc::channel();
    tx.send("status".to_string()).unwrap();
    let opts = SimOptions {
        start: true,
        count: Some(5),
        duration: Some(Duration::from_secs(20)),
        first_command_id: 77,
        ..SimOptions::default()
    };
    let mut out = Vec::new();
    let summary = run(&mut master, &rx, &mut out, &opts).unwrap();
    stop.store(true, Ordering::Relaxed);
    let commands = dev.join().unwrap();
    drop(slave);
    let text = String::from_utf8(out).unwrap();
    println!("{text}");
    assert!(summary.results >= 5, "{summary:?}");
    assert!(text.contains("hello    device=edge-sim"));
    assert!(text.contains("result   #0 "));
    assert!(text.contains("done     StopScreening (id 78)"));
    assert!(text.contains("link     up"));
    assert_eq!(commands, [Command::StartScreening, Command::StopScreening]);
    // Status is updated between receive and transmit, so the confirming Status already
    // shows the new state.
    let done = text.find("done     StartScreening").unwrap();
    assert!(
        text[done..]
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("status   screening"),
        "{text}"
    );
}
