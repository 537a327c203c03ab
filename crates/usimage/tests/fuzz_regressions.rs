//! Inputs `cargo fuzz` found (see `tests/fuzz-regressions/`): each must give a typed error
//! quickly, without panicking or allocating without bound.

use std::time::Instant;

use usimage::{DecodeError, UsFile};

fn check(name: &str) -> DecodeError {
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/fuzz-regressions")
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    let t = Instant::now();
    let e = UsFile::from_bytes(&bytes).expect_err(name);
    assert!(t.elapsed().as_secs_f64() < 2.0, "{name}: {:?}", t.elapsed());
    println!("{name}: {e}");
    e
}

#[test]
fn corrupt_jpeg_that_crashed_zune_jpeg() {
    // zune-jpeg 0.5.15 (image's JPEG decoder) panicked in its AVX2 IDCT on this file.
    let e = check("zune-jpeg-idct-panic.jpg");
    assert!(!matches!(e, DecodeError::DecoderPanic(_)), "{e}");
}

#[test]
fn tiny_jpeg_declaring_145_mpixel() {
    // 1.3 kB claiming 11568 x 12589: decoding it took 12 s before the plausibility check.
    assert!(matches!(
        check("jpeg-header-145-mpixel.jpg"),
        DecodeError::Implausible { .. }
    ));
}

#[test]
fn dicom_unknown_vr_with_huge_length() {
    // dicom-rs read "\0\0" as UN with a 1.6 GB length and allocated it.
    assert!(matches!(
        check("dicom-unknown-vr-oom.dcm"),
        DecodeError::DicomParse(_)
    ));
}

#[test]
fn dicom_stray_sequence_delimiter() {
    // A sequence delimiter with nothing open and a non-zero length: dicom-rs then parsed
    // pixel bytes as a header and allocated a 3.9 GB declared length.
    assert!(matches!(
        check("dicom-stray-delimiter-oom.dcm"),
        DecodeError::DicomParse(_)
    ));
}

#[test]
fn dicom_binary_value_of_a_ragged_length() {
    // SOP Instance UID mutated to VR UL with 10 bytes: dicom-rs read two ULs, skipped the
    // rest, took the next element's VR bytes for an unknown VR and allocated a 1.7 GB length.
    let e = check("dicom-ul-odd-length-oom.dcm");
    assert!(matches!(e, DecodeError::DicomParse(_)), "{e}");
    assert!(e.to_string().contains("(0008,0018)"), "{e}");
}
