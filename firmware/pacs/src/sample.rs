//! A made-up exam (two decisions, one key frame) for tests and `renalscan-edge pacs sample`.

use contract::events::{Decision, DecisionKind, JournalState, ModelIdentity, SessionContext, Side};
use records::{Session, SessionState};

/// An ended session with a normal and an abnormal (hydronephrosis) decision.
pub fn session() -> Session {
    let d = |jseq: u64, abnormal: bool, kind: DecisionKind| {
        (
            jseq,
            Decision {
                seq: jseq,
                kind,
                abnormal,
                p_abnormal: if abnormal { 0.91 } else { 0.08 },
                class: if abnormal {
                    "hydronephrosis".into()
                } else {
                    "normal".into()
                },
                confidence: 0.8,
                frames: 6,
                frame_index: jseq * 10,
                threshold: 0.41,
                threshold_source: contract::events::ThresholdSource::Bundle,
                low_quality: false,
                unix_ms: 1_796_000_000_000 + jseq * 1000,
                uptime_ms: jseq * 1000,
                model: "renal-resnet50@1.2.0".into(),
                snapshot: None,
                journal: JournalState::Committed { seq: jseq },
                session: Some("s-20261204T101500-ab12".into()),
                trace: None,
            },
        )
    };
    Session {
        id: "s-20261204T101500-ab12".into(),
        started_ms: 1_796_000_000_000,
        ended_ms: Some(1_796_000_060_000),
        state: SessionState::Ended,
        model: Some(ModelIdentity {
            name: "renal-resnet50".into(),
            version: "1.2.0".into(),
            bundle_sha256: "ab".repeat(32),
            signer: "demo-2026".into(),
            threshold: 0.41,
        }),
        decisions: vec![
            d(11, false, DecisionKind::First),
            d(14, true, DecisionKind::Change),
        ],
        marks: Vec::new(),
        journal_seq_first: 10,
    }
}

/// Context as a barcode scanner enters it.
pub fn context() -> SessionContext {
    SessionContext {
        patient_id: Some("MRN-00417".into()),
        accession: Some("ACC-2291".into()),
        operator: Some("rn-7".into()),
        side: Some(Side::Left),
    }
}

/// A key frame PNG (448 x 224: grey input beside it with a red blob), as the runtime draws.
pub fn key_frame() -> Vec<u8> {
    let img = image::RgbImage::from_fn(448, 224, |x, y| {
        let g = ((x % 224 + y) / 2 % 256) as u8;
        let (dx, dy) = (x as i32 - 336, y as i32 - 112);
        if x >= 224 && dx * dx + dy * dy < 40 * 40 {
            image::Rgb([230, g / 3, 20])
        } else {
            image::Rgb([g, g, g])
        }
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("in-memory PNG");
    png
}

/// The made-up exam's objects (one Secondary Capture, then the SR), made now.
pub fn objects() -> Vec<crate::Made> {
    let session = session();
    let frames = vec![(14, key_frame())];
    crate::exam_objects(&crate::ExamInput {
        session: &session,
        context: Some(&context()),
        key_frames: &frames,
        equipment: &crate::Equipment::renalscan("cart-07", "0.1.0"),
        source: None,
        now_ms: crate::outbox::now_ms(),
    })
    .expect("the sample exam's objects")
}
