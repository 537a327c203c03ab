//! Answers Orthanc cannot be made to give, from a small SCP on dicom-ul's server side: A700
//! repeated past the retry cap, C000, B000 (a warning), an association rejected, and a port
//! nobody listens on.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::server::ServerAssociationOptions;
use dicom_ul::pdu::{PDataValueType, Pdu};
use pacs::status::Action;
use pacs::{sample, DrainConfig, Outbox, PacsAddr, Timeouts};

/// An SCP on loopback that answers every C-STORE with `status`; counts stores.
struct FakeScp {
    port: u16,
    stores: Arc<AtomicUsize>,
}

fn fake_scp(ae: &'static str, status: u16) -> FakeScp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stores = Arc::new(AtomicUsize::new(0));
    let counted = stores.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let opts = ServerAssociationOptions::new()
                .accept_called_ae_title()
                .ae_title(ae)
                .with_abstract_syntax(uids::VERIFICATION)
                .with_abstract_syntax(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
                .with_abstract_syntax(uids::COMPREHENSIVE_SR_STORAGE)
                .with_transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .with_transfer_syntax(uids::IMPLICIT_VR_LITTLE_ENDIAN);
            let Ok(mut assoc) = opts.establish(stream) else {
                continue; // rejected: the rejection went out
            };
            let mut cmd = Vec::new();
            let mut pending: Option<InMemDicomObject> = None;
            loop {
                let pdu = match assoc.receive() {
                    Ok(p) => p,
                    Err(_) => break,
                };
                match pdu {
                    Pdu::PData { data } => {
                        for pdv in data {
                            match pdv.value_type {
                                PDataValueType::Command => {
                                    cmd.extend_from_slice(&pdv.data);
                                    if pdv.is_last {
                                        let c = InMemDicomObject::read_dataset_with_ts(
                                            &cmd[..],
                                            &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                                        )
                                        .unwrap();
                                        cmd.clear();
                                        let field: u16 = c
                                            .element(tags::COMMAND_FIELD)
                                            .unwrap()
                                            .to_int()
                                            .unwrap();
                                        if field == 0x0030 {
                                            respond(
                                                &mut assoc,
                                                pdv.presentation_context_id,
                                                &c,
                                                0x8030,
                                                0,
                                            );
                                        } else {
                                            pending = Some(c);
                                        }
                                    }
                                }
                                PDataValueType::Data => {
                                    if pdv.is_last {
                                        if let Some(c) = pending.take() {
                                            counted.fetch_add(1, Ordering::SeqCst);
                                            respond(
                                                &mut assoc,
                                                pdv.presentation_context_id,
                                                &c,
                                                0x8001,
                                                status,
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Pdu::ReleaseRQ => {
                        let _ = assoc.send(&Pdu::ReleaseRP);
                        break;
                    }
                    _ => break,
                }
            }
        }
    });
    FakeScp { port, stores }
}

fn respond(
    assoc: &mut dicom_ul::association::ServerAssociation<std::net::TcpStream>,
    pc: u8,
    rq: &InMemDicomObject,
    field: u16,
    status: u16,
) {
    use dicom_core::{PrimitiveValue as P, VR};
    let id: u16 = rq.element(tags::MESSAGE_ID).unwrap().to_int().unwrap();
    let class = rq
        .element(tags::AFFECTED_SOP_CLASS_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut els = vec![
        (tags::AFFECTED_SOP_CLASS_UID, VR::UI, P::from(class)),
        (tags::COMMAND_FIELD, VR::US, P::from(field)),
        (tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, P::from(id)),
        (tags::COMMAND_DATA_SET_TYPE, VR::US, P::from(0x0101_u16)),
        (tags::STATUS, VR::US, P::from(status)),
    ];
    if let Ok(uid) = rq.element(tags::AFFECTED_SOP_INSTANCE_UID) {
        els.push((
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            P::from(uid.to_str().unwrap().to_string()),
        ));
    }
    assoc.send(&pacs::scu::command_pdu(pc, els)).unwrap();
}

/// An outbox holding one exam: a Secondary Capture, then the SR.
fn queued(dir: &std::path::Path) -> Outbox {
    let session = sample::session();
    let made = sample::objects();
    let mut ob = Outbox::open(dir).unwrap();
    ob.enqueue(&session.id, &made).unwrap();
    ob
}

fn addr(ae: &str, port: u16) -> PacsAddr {
    format!("{ae}@127.0.0.1:{port}").parse().unwrap()
}

fn cfg(cap: u32) -> DrainConfig {
    DrainConfig {
        link: pacs::LinkOptions {
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                io: Duration::from_secs(5),
            },
            tls: None,
        },
        retry_cap: cap,
        pace: None,
    }
}

#[test]
fn a700_is_retried_up_to_the_cap_then_quarantined() {
    let scp = fake_scp("FAKE", 0xA700);
    let dir = tempfile::tempdir().unwrap();
    let mut ob = queued(dir.path());
    for round in 1..=2 {
        let r = ob.drain(&addr("FAKE", scp.port), &cfg(3));
        assert_eq!(
            r.stopped.as_ref().map(|s| s.0),
            Some(Action::RetryCapped),
            "round {round}: {r:?}"
        );
        assert_eq!((r.sent, r.quarantined), (0, 0));
        assert_eq!(ob.counts().pending, 2);
    }
    // Third A700 for the Secondary Capture: the cap; it is set aside and the SR tried.
    let r = ob.drain(&addr("FAKE", scp.port), &cfg(3));
    assert_eq!(r.quarantined, 1, "{r:?}");
    let c = ob.counts();
    assert_eq!((c.pending, c.quarantined), (1, 1));
    let sc = &ob.items()[0];
    assert!(
        sc.last_error.as_deref().unwrap().contains("0xA700"),
        "{sc:?}"
    );
    assert_eq!(scp.stores.load(Ordering::SeqCst), 4);
}

#[test]
fn c000_quarantines_at_once_and_b000_counts_as_stored() {
    let refuses = fake_scp("FAKE", 0xC000);
    let dir = tempfile::tempdir().unwrap();
    let mut ob = queued(dir.path());
    let r = ob.drain(&addr("FAKE", refuses.port), &cfg(3));
    assert_eq!((r.sent, r.quarantined), (0, 2), "{r:?}");
    assert!(r.stopped.is_none());
    // Put back, a PACS that warns: stored.
    assert_eq!(ob.retry(None).unwrap(), 2);
    let warns = fake_scp("FAKE", 0xB000);
    let r = ob.drain(&addr("FAKE", warns.port), &cfg(3));
    assert_eq!((r.sent, r.quarantined), (2, 0), "{r:?}");
    assert_eq!(ob.counts().sent, 2);
    assert!(
        !dir.path().join("objects").read_dir().unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "dcm")),
        "sent files are deleted"
    );
}

#[test]
fn a_rejected_association_holds_the_queue_as_a_configuration_error() {
    let scp = fake_scp("FAKE", 0);
    let dir = tempfile::tempdir().unwrap();
    let mut ob = queued(dir.path());
    let r = ob.drain(&addr("WRONG_AE", scp.port), &cfg(3));
    let (action, why) = r.stopped.unwrap();
    assert_eq!(action, Action::HoldConfig, "{why}");
    assert!(
        why.contains("rejected permanently") && why.contains("WRONG_AE"),
        "{why}"
    );
    assert_eq!(ob.counts().pending, 2);
    assert_eq!(scp.stores.load(Ordering::SeqCst), 0);
}

#[test]
fn nobody_listening_backs_off() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut ob = queued(dir.path());
    let r = ob.drain(&addr("ORTHANC", port), &cfg(3));
    let (action, why) = r.stopped.unwrap();
    assert_eq!(action, Action::Backoff, "{why}");
    assert!(why.contains("cannot connect"), "{why}");
    assert_eq!(ob.counts().pending, 2);
}
