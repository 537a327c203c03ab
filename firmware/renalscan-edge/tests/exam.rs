//! Exam-level replay: recorded sweeps through the device's pipeline, one model for all, and
//! the call that stands when each sweep ends.

mod common;

use common::*;
use renalscan_edge::aggregate::{exam_call_of, Input, Params};
use renalscan_edge::config::Config;
use renalscan_edge::exam::{ExamReplay, SweepOutcome};
use renalscan_edge::infer::Classifier;
use testkit::frames::{write_frames, write_frames_gain, BRIGHT, DARK};

/// The signed test bundle opened as the device opens it, in a replay with `cfg`.
fn open_replay(bundle: &std::path::Path, cfg: Config) -> ExamReplay {
    let classifier =
        Classifier::open(bundle, Some(&keys_of(bundle)), Default::default(), None).unwrap();
    ExamReplay::new(cfg, classifier).unwrap()
}

#[test]
fn each_sweep_gets_the_call_standing_at_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let normal = tmp.path().join("normal");
    write_frames(&normal, &[false; 8]);
    // Normal at first, abnormal for the second half: the window flips and the sweep ends
    // abnormal.
    let turns = tmp.path().join("turns");
    let mut pattern = vec![false; 5];
    pattern.extend([true; 7]);
    write_frames(&turns, &pattern);
    let mut cfg = Config::default();
    cfg.aggregate.window = 3;
    cfg.aggregate.min_frames = 2;
    let mut replay = open_replay(&bundle, cfg);

    let a = replay.run(&normal).expect("normal sweep");
    assert_eq!(a.frames, 8);
    assert_eq!(
        a.first_decision_frame(),
        Some(1),
        "after min_frames = 2 frames"
    );
    assert!(!a.final_decision().unwrap().abnormal && !a.exam_call().unwrap().abnormal);

    // The same replay (same model) on the next sweep starts from an empty window.
    let b = replay.run(&turns).expect("second sweep");
    assert_eq!(b.first_decision_frame(), Some(1));
    assert!(!b.decisions[0].abnormal);
    assert!(b.final_decision().unwrap().abnormal, "{:?}", b.decisions);
    assert!(b.exam_call().unwrap().abnormal);

    // Through a finding and out again, as a protocol sweep crosses a focal lesion: the live
    // call is normal again at the far pole, the exam's call stays abnormal.
    let through = tmp.path().join("through");
    let mut pattern = vec![false; 5];
    pattern.extend([true; 6]);
    pattern.extend([false; 6]);
    write_frames(&through, &pattern);
    let c = replay.run(&through).unwrap();
    assert!(!c.final_decision().unwrap().abnormal, "{:?}", c.decisions);
    let call = c.exam_call().unwrap();
    assert!(call.abnormal, "{:?}", c.decisions);
    assert!(c
        .decisions
        .iter()
        .all(|d| d.p_abnormal <= call.p_abnormal || !d.abnormal));

    // Running it again gives the same decisions: nothing depends on the clock.
    let again = replay.run(&turns).unwrap();
    let key = |o: &SweepOutcome| {
        o.decisions
            .iter()
            .map(|d| (d.frame_index, d.abnormal, d.p_abnormal.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&again), key(&b));
}

#[test]
fn a_sweep_with_nothing_to_judge_has_no_call_and_a_missing_one_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let blank = tmp.path().join("blank");
    write_frames_gain(&blank, &[0.0; 6]);
    let mut replay = open_replay(&bundle, Config::default());
    let o = replay.run(&blank).expect("blank sweep replays");
    assert_eq!(o.frames, 6);
    assert!(o.final_decision().is_none(), "{:?}", o.decisions);
    assert!(o.exam_call().is_none());
    assert_eq!(o.counters.inferred, 0);
    assert!(replay.run(&tmp.path().join("absent")).is_err());
    // The model survives the failed sweep.
    let ok = tmp.path().join("ok");
    write_frames_gain(&ok, &[DARK; 6]);
    assert!(replay.run(&ok).is_ok());
}

/// Inference workers change how many frames are in the model at once, never what is
/// decided or in which order: the same sweep through 1, 2 and 3 workers (and 2 workers with
/// 2 intra-op threads each) gives the same decisions, bit for bit, on the same frames, and
/// the same counts.
#[test]
fn workers_decide_exactly_what_one_thread_decides_in_frame_order() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let sweep = tmp.path().join("sweep");
    // Normal, a blank run, abnormal, back to normal: gated frames between classified ones
    // must keep their place in the order too.
    let mut gains = vec![DARK; 4];
    gains.extend([0.0, 0.0]);
    gains.extend([BRIGHT; 6]);
    gains.push(0.0);
    gains.extend([DARK; 7]);
    write_frames_gain(&sweep, &gains);
    let run = |threads: usize, workers: Option<usize>| {
        let mut cfg = Config::default();
        cfg.aggregate.window = 3;
        cfg.aggregate.min_frames = 2;
        cfg.model.threads = Some(threads);
        cfg.model.workers = workers;
        let mut replay = open_replay(&bundle, cfg);
        let o = replay.run(&sweep).expect("sweep");
        let key: Vec<_> = o
            .decisions
            .iter()
            .map(|d| {
                (
                    d.seq,
                    d.frame_index,
                    d.kind,
                    d.abnormal,
                    d.p_abnormal.to_bits(),
                )
            })
            .collect();
        let c = o.counters;
        let expected = match (threads, workers) {
            (1, _) => 0,
            (_, Some(w)) => w,
            (_, None) => 2,
        };
        assert_eq!(
            o.workers, expected,
            "model.threads = {threads}, workers {workers:?}"
        );
        (key, (c.processed, c.inferred, c.gated, c.skipped, c.errors))
    };
    let one = run(1, None);
    assert!(
        one.0.len() >= 2,
        "the sweep flips at least once: {:?}",
        one.0
    );
    assert!(one.0.windows(2).all(|w| w[0].1 < w[1].1), "{:?}", one.0);
    assert_eq!(one.1 .0, gains.len() as u64);
    assert_eq!(one.1 .1, 17, "every non-blank frame classified");
    // Two and three single-threaded workers; two workers with two intra-op threads each.
    for (threads, workers) in [(2, None), (3, Some(3)), (4, None)] {
        assert_eq!(
            run(threads, workers),
            one,
            "{threads} cores, {workers:?} workers"
        );
    }
}

/// The recorded aggregation inputs give back the device's own exam call at the configured
/// settings (resets after a blank run included), and another call at other settings: what
/// `renalscan eval --sweeps` builds its exam operating points on.
#[test]
fn recorded_aggregation_replays_the_devices_call() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    // Abnormal, a blank run long enough to start a new window, then normal.
    let sweep = tmp.path().join("sweep");
    let mut gains = vec![BRIGHT; 4];
    gains.extend([0.0; 3]);
    gains.extend([DARK; 6]);
    write_frames_gain(&sweep, &gains);
    let mut cfg = Config::default();
    cfg.aggregate.window = 3;
    cfg.aggregate.min_frames = 2;
    cfg.aggregate.reset_after_gated = 3;
    let mut replay = open_replay(&bundle, cfg);
    let o = replay.run(&sweep).unwrap();
    let pushes = o
        .inputs
        .iter()
        .filter(|s| matches!(s, Input::Push(_)))
        .count();
    assert_eq!(pushes as u64, o.counters.inferred);
    let reset = o.inputs.iter().position(|s| *s == Input::Reset);
    assert_eq!(reset, Some(4), "{:?}", o.inputs);
    // Each input names the frame it came from: the bright frames 0-3, none for the reset,
    // then dark frames after the blank run (4-6, gated), in order.
    assert_eq!(o.input_frames.len(), o.inputs.len());
    assert_eq!(
        o.input_frames[..5],
        [Some(0), Some(1), Some(2), Some(3), None]
    );
    let after: Vec<u64> = o.input_frames[5..].iter().map(|f| f.unwrap()).collect();
    assert!(!after.is_empty() && after[0] >= 7, "{after:?}");
    assert!(after.windows(2).all(|w| w[0] < w[1]), "{after:?}");
    assert_eq!(o.params.window, 3);
    let device = o.exam_call().map(|d| d.abnormal);
    assert_eq!(device, Some(true));
    assert_eq!(exam_call_of(o.params, &o.inputs), device);
    // A threshold above every frame's p(abnormal) would have called it normal.
    let top = o
        .inputs
        .iter()
        .filter_map(|s| match s {
            Input::Push(s) => Some(s.p_abnormal),
            Input::Reset => None,
        })
        .fold(0.0f32, f32::max);
    let strict = Params {
        threshold: top + 1e-3,
        ..o.params
    };
    assert_eq!(exam_call_of(strict, &o.inputs), Some(false));
    // Another sweep starts a new record.
    let again = replay.run(&sweep).unwrap();
    assert_eq!(again.inputs, o.inputs);
}
