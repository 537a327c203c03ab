//! Adding an output is one trait: a sink written the way the edge README shows, plugged into
//! a run beside the journal, sees every decision after the journal has numbered it, with the
//! frame it was made on.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use common::*;
use renalscan_edge::config::{Config, SourceKind};
use renalscan_edge::events::{Decision, SinkState};
use renalscan_edge::infer::Classifier;
use renalscan_edge::runtime::{self, RunOptions};
use renalscan_edge::sink::build::Outputs;
use renalscan_edge::sink::journal::JournalSink;
use renalscan_edge::sink::{FrameView, Receipt, Sink, SinkError};

// ---- the sink: what a maintainer writes (under 40 lines) ----
/// What the sink keeps of each decision.
#[derive(Debug, Clone)]
struct Seen {
    journal_seq: Option<u64>,
    abnormal: bool,
    crop: Option<(u32, u32)>,
    has_map: bool,
}

/// Keeps every decision with its journal number and what its frame offers.
struct Tally(Arc<Mutex<Vec<Seen>>>);

impl Sink for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    fn decision(&mut self, d: &Decision, frame: &FrameView<'_>) -> Result<Receipt, SinkError> {
        let seen = Seen {
            journal_seq: d.journal.seq(),
            abnormal: d.abnormal,
            crop: frame.scan_area_crop().map(|c| (c.width(), c.height())),
            has_map: frame.activation_map().is_some(),
        };
        self.0.lock().map_err(SinkError::new)?.push(seen);
        Ok(Receipt::None)
    }
}
// ---- end of the sink ----

#[test]
fn a_sink_in_under_40_lines_sees_numbered_decisions_and_their_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    let mut pattern = vec![false; 6];
    pattern.extend([true; 6]);
    write_frames(&frames, &pattern);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let mut cfg = Config::default();
    cfg.source.kind = SourceKind::Replay;
    cfg.source.replay.path = Some(frames);
    cfg.source.replay.fps = 0.0;
    cfg.aggregate.window = 3;
    cfg.aggregate.min_frames = 2;
    cfg.journal.dir = tmp.path().join("journal");
    let classifier = Classifier::open(&bundle, Some(&keys_of(&bundle)), Default::default(), None)
        .expect("bundle");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut outputs = Outputs::default();
    outputs.push(JournalSink::open(&cfg.journal).unwrap());
    outputs.push(Tally(seen.clone()));
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = RunOptions {
        rss_every: 0,
        status_tx: Some(tx),
    };
    let summary = runtime::run(
        &cfg,
        classifier,
        outputs,
        Arc::new(AtomicBool::new(false)),
        &opts,
    )
    .expect("run");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, summary.counters.decisions, "{seen:?}");
    assert!(seen.iter().any(|s| !s.abnormal) && seen.iter().any(|s| s.abnormal));
    let seqs: Vec<u64> = seen
        .iter()
        .map(|s| s.journal_seq.expect("journalled"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    for s in &seen {
        let (w, h) = s.crop.expect("a scan-area crop");
        assert!(w > 100 && h > 100, "{s:?}");
        assert!(s.has_map, "{s:?}");
    }
    let last = rx.try_iter().last().expect("a final status");
    assert_eq!(last.sinks["tally"].state, SinkState::Ok);
    assert_eq!(last.sinks["journal"].state, SinkState::Ok);
}
