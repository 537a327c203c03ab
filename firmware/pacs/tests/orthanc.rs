//! Against a real PACS: Debian's Orthanc, started by the test on loopback. An exam queued while
//! the PACS is down arrives, once, when it is up; Orthanc finds each object by its SOP
//! Instance UID, shows the identifiers and disclaimers, and renders the Secondary Capture;
//! the same objects sent again (a resend after a crash) leave no duplicate.

use pacs::status::Action;
use pacs::{exam_objects, sample, DrainConfig, Equipment, ExamInput, Kind, Outbox};
use testkit::orthanc::Orthanc;

#[test]
fn an_exam_queued_while_the_pacs_is_down_arrives_once_when_it_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let session = sample::session();
    let frames = vec![(14, sample::key_frame())];
    let made = exam_objects(&ExamInput {
        session: &session,
        context: Some(&sample::context()),
        key_frames: &frames,
        equipment: &Equipment::renalscan("cart-07", "0.1.0"),
        source: None,
        now_ms: 1_796_000_100_000,
    })
    .unwrap();
    let mut ob = Outbox::open(&tmp.path().join("outbox")).unwrap();
    ob.enqueue(&session.id, &made).unwrap();

    // Down: nothing listens on the port yet.
    let mut pacs = Orthanc::start(&tmp.path().join("orthanc"));
    let addr: pacs::PacsAddr = pacs.address().parse().unwrap();
    let (dicom, http) = (pacs.dicom_port, pacs.http_port);
    pacs.stop();
    let r = ob.drain(&addr, &DrainConfig::default());
    assert_eq!(
        r.stopped.as_ref().map(|s| s.0),
        Some(Action::Backoff),
        "{r:?}"
    );
    assert_eq!(ob.counts().pending, 2);

    // Up again: everything arrives, Secondary Capture first.
    let pacs = Orthanc::start_on(&tmp.path().join("orthanc"), dicom, http);
    let r = ob.drain(&addr, &DrainConfig::default());
    assert_eq!((r.sent, r.quarantined), (2, 0), "{r:?}\n{}", pacs.log());
    assert!(r.stopped.is_none());
    assert_eq!(pacs.instance_count(), 2);

    let sc = made
        .iter()
        .find(|m| m.kind == Kind::SecondaryCapture)
        .unwrap();
    let sr = made
        .iter()
        .find(|m| m.kind == Kind::StructuredReport)
        .unwrap();
    let sc_id = pacs
        .lookup(&sc.sop_instance_uid)
        .expect("SC found by its UID");
    let sr_id = pacs
        .lookup(&sr.sop_instance_uid)
        .expect("SR found by its UID");
    let tags = pacs
        .get(&format!("/instances/{sr_id}/simplified-tags"))
        .unwrap();
    assert_eq!(tags["PatientID"], "MRN-00417", "{tags}");
    assert_eq!(tags["AccessionNumber"], "ACC-2291");
    assert_eq!(tags["Modality"], "SR");
    assert_eq!(tags["VerificationFlag"], "UNVERIFIED");
    assert_eq!(tags["Manufacturer"], "renalscan");
    assert!(tags["SeriesDescription"]
        .as_str()
        .unwrap()
        .contains("not for diagnosis"));
    let sc_tags = pacs
        .get(&format!("/instances/{sc_id}/simplified-tags"))
        .unwrap();
    assert_eq!(sc_tags["ConversionType"], "WSD");
    assert_eq!(sc_tags["ImageType"], "DERIVED\\SECONDARY");
    assert_eq!(
        sc_tags["StudyInstanceUID"], tags["StudyInstanceUID"],
        "one study"
    );
    let png = pacs.get_bytes(&format!("/instances/{sc_id}/preview"));
    let preview = image::load_from_memory(&png).expect("the preview PNG decodes");
    assert_eq!((preview.width(), preview.height()), (448, 224));

    // A resend of the same objects (the crash between "stored" and "recorded as sent").
    let mut again = Outbox::open(&tmp.path().join("outbox-again")).unwrap();
    again.enqueue(&session.id, &made).unwrap();
    let r = again.drain(&addr, &DrainConfig::default());
    assert_eq!(r.sent, 2, "{r:?}");
    assert_eq!(pacs.instance_count(), 2, "no duplicate instances");
}
