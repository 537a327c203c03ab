//! Against a real PACS: Debian's Orthanc, started by the test on loopback. An exam queued while
//! the PACS is down arrives, once, when it is up; Orthanc finds each object by its SOP
//! Instance UID, shows the identifiers and disclaimers, and renders the Secondary Capture;
//! the same objects sent again (a resend after a crash) leave no duplicate.

use pacs::status::Action;
use pacs::{sample, DrainConfig, Kind, Outbox};
use testkit::orthanc::Orthanc;

#[test]
fn an_exam_queued_while_the_pacs_is_down_arrives_once_when_it_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let session = sample::session();
    let made = sample::objects();
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

/// A CA, a certificate for the PACS at 127.0.0.1 and one for the cart, as PEM files.
fn pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "renalscan test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    for (name, san) in [("pacs", "127.0.0.1"), ("cart", "cart-07.renalscan.test")] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn dicom_over_tls_with_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    let pacs = Orthanc::start_configured(
        &d.join("orthanc"),
        serde_json::json!({
            "DicomTlsEnabled": true,
            "DicomTlsCertificate": d.join("pacs.crt"),
            "DicomTlsPrivateKey": d.join("pacs.key"),
            "DicomTlsTrustedCertificates": d.join("ca.crt"),
            "DicomTlsRemoteCertificateRequired": true,
        }),
    );
    let addr: pacs::PacsAddr = pacs.address().parse().unwrap();
    let with = |client: bool| pacs::LinkOptions {
        tls: Some(
            pacs::tls::client_config(&pacs::tls::TlsFiles {
                ca: d.join("ca.crt"),
                client: client.then(|| (d.join("cart.crt"), d.join("cart.key"))),
            })
            .unwrap(),
        ),
        ..Default::default()
    };
    // Plain TCP to a TLS port, and TLS without the cart's certificate, are refused.
    assert!(pacs::scu::echo(&addr, &pacs::LinkOptions::default()).is_err());
    assert!(pacs::scu::echo(&addr, &with(false)).is_err());
    pacs::scu::echo(&addr, &with(true)).unwrap();

    let session = sample::session();
    let made = sample::objects();
    let mut ob = Outbox::open(&d.join("outbox")).unwrap();
    ob.enqueue(&session.id, &made).unwrap();
    let cfg = DrainConfig {
        link: with(true),
        ..DrainConfig::default()
    };
    let r = ob.drain(&addr, &cfg);
    assert_eq!((r.sent, r.quarantined), (2, 0), "{r:?}\n{}", pacs.log());
    for m in &made {
        assert!(pacs.lookup(&m.sop_instance_uid).is_some());
    }
    // A CA file that is not one is named.
    std::fs::write(d.join("bad.crt"), "not a certificate").unwrap();
    let e = pacs::tls::client_config(&pacs::tls::TlsFiles {
        ca: d.join("bad.crt"),
        client: None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.crt"), "{e}");
}
