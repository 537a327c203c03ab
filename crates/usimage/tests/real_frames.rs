//! Scan-area detection, de-identification and anatomy gating on real ultrasound frames.
//!
//! Fixtures: the project's test material (`docs/test-material.md` gives provenance and
//! licences: pydicom-data 1.0.0, MIT; itk-pocus 0.3.2, Apache-2.0), fetched on first use.

use std::path::PathBuf;

use usimage::detect::iou;
use usimage::{Detector, GreyFrame, Normalization, Preprocessor, ScanKind, UsFile};

/// In the cache of this checkout (the run-time CARGO_MANIFEST_DIR wins over the compiled-in
/// one: the target directory may be shared with another checkout).
fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..");
    fixtures::for_tests(&root).join("ultrasound").join(rel)
}

fn first_frame(rel: &str) -> (UsFile, GreyFrame) {
    let file = UsFile::open(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let frame = file.frame(0).unwrap_or_else(|e| panic!("{rel}: {e}"));
    (file, frame)
}

/// Fraction of box `a` lying inside box `b`.
fn inside_fraction(a: [u32; 4], b: [u32; 4]) -> f32 {
    let ix = a[2].min(b[2]).saturating_sub(a[0].max(b[0])) as f32;
    let iy = a[3].min(b[3]).saturating_sub(a[1].max(b[1])) as f32;
    ix * iy / ((a[2] - a[0]) as f32 * (a[3] - a[1]) as f32)
}

/// Whether box `outer` contains box `inner`.
fn contains(outer: [u32; 4], inner: [u32; 4]) -> bool {
    outer[0] <= inner[0] && outer[1] <= inner[1] && outer[2] >= inner[2] && outer[3] >= inner[3]
}

/// DICOM regions: parsed as the README lists them. The region is the scanner's image region
/// (the rectangle it draws the image in, black margins and burned-in text included); the
/// detector never sees it (it only gets the frame) and its `image_area` must match it,
/// IoU >= 0.9. The echo box `bbox` (what the model input is cropped to) lies inside it.
/// OBXXXX1A: the sector is empty (drawn at grey 1 on a black screen, a faint near-field band
/// only), so no pane is found (`bbox` zero, no anatomy) but the image region is; its largest
/// region is the one checked (the second, a Doppler strip below it, is empty).
#[test]
fn dicom_regions_match_the_detected_image_area() {
    let cases = [
        (
            "dicom/JPGLosslessP14SV1_1s_1f_8b.dcm",
            [14, 38, 1010, 758],
            ScanKind::Sector,
        ),
        (
            "dicom/color3d_jpeg_baseline.dcm",
            [84, 31, 595, 414],
            ScanKind::Sector,
        ),
        (
            "dicom/sonoque_anechoic-3mm-3mm.dcm",
            [0, 0, 2083, 1455],
            ScanKind::Linear,
        ),
        ("dicom/OBXXXX1A.dcm", [120, 60, 800, 518], ScanKind::None),
    ];
    let mut det = Detector::default();
    for (rel, region, kind) in cases {
        let (file, frame) = first_frame(rel);
        let r = file
            .regions()
            .iter()
            .map(|r| r.bbox)
            .max_by_key(|b| (b[2] - b[0]) * (b[3] - b[1]));
        assert_eq!(r, Some(region), "{rel}: region sequence");
        let area = det.detect(&frame);
        let v = iou(area.image_area, region);
        println!(
            "{rel}: image area {:?} vs region {region:?}: IoU {v:.3}; box {:?} {:?}, IoU {:.3}",
            area.image_area,
            area.bbox,
            area.kind,
            iou(area.bbox, region)
        );
        assert!(v >= 0.9, "{rel}: image area {:?}", area.image_area);
        assert_eq!(area.kind, kind, "{rel}");
        assert!(
            area.bbox == [0; 4] || contains(area.image_area, area.bbox),
            "{rel}: {area:?}"
        );
        if kind == ScanKind::None {
            assert!(area.no_anatomy, "{rel}");
            assert_eq!(area.bbox, [0; 4], "{rel}");
        } else {
            assert!(!area.no_anatomy, "{rel}");
            assert!(
                inside_fraction(area.bbox, region) >= 0.95,
                "{rel}: {:?} outside {region:?}",
                area.bbox
            );
            // The fan is a substantial part of the region, not a fragment of it.
            assert!(iou(area.bbox, region) >= 0.5, "{rel}: {:?}", area.bbox);
        }
    }
}

/// Hand-annotated image areas of the PNG screen grabs (read off the frames by eye, +-5 px,
/// before the detector existed): detected box IoU >= 0.9; the image area contains the box.
#[test]
fn png_frames_match_annotated_image_areas() {
    let cases = [
        (
            "frames/itk-pocus__butterfly-vsync_f300.png",
            [83, 113, 685, 978],
        ),
        (
            "frames/itk-pocus__clarius-ocular-image.png",
            [264, 86, 1018, 872],
        ),
        ("frames/itk-pocus__interson-image.jpg", [388, 60, 912, 850]),
        (
            "frames/itk-pocus__sonosite-anon-eye1.jpg",
            [387, 41, 723, 640],
        ),
        (
            "frames/itk-pocus__sonoque-mean-crop_f50.png",
            [581, 35, 1535, 1395],
        ),
    ];
    let mut det = Detector::default();
    for (rel, truth) in cases {
        let (_, frame) = first_frame(rel);
        let area = det.detect(&frame);
        let v = iou(area.bbox, truth);
        println!(
            "{rel}: detected {:?} {:?}, annotated {truth:?}, IoU {v:.3}; image area {:?}",
            area.bbox, area.kind, area.image_area
        );
        assert!(v >= 0.9, "{rel}: {:?} vs {truth:?} (IoU {v:.3})", area.bbox);
        assert!(!area.no_anatomy, "{rel}");
        assert!(
            contains(area.image_area, area.bbox),
            "{rel}: image area {:?} does not contain {:?}",
            area.image_area,
            area.bbox
        );
    }
}

/// The Sonoque frame's burned-in ID / gender / age text must not reach the model input:
/// scribbling over it changes nothing in the output.
#[test]
fn sonoque_burned_in_text_is_absent_from_the_output() {
    let (_, frame) = first_frame("frames/itk-pocus__sonoque-mean-crop_f50.png");
    // "ID: 3a", "Name:", "Gender: M  Age: 22" (and the date/settings column on the left).
    let text = [[1700u32, 35, 2040, 190], [50, 35, 380, 370]];
    let mut pre = Preprocessor::new(224, Normalization::caffe_bgr());
    let mut a = vec![0f32; pre.output_len()];
    let info = pre.process(&frame, &mut a).unwrap();
    for t in text {
        assert_eq!(
            inside_fraction(t, info.crop),
            0.0,
            "text box {t:?} inside crop {:?}",
            info.crop
        );
    }
    let mut scribbled = frame.clone();
    let w = frame.width();
    for t in text {
        for y in t[1]..t[3] {
            for x in t[0]..t[2] {
                scribbled.grey_mut()[(y * w + x) as usize] = if (x + y) % 3 == 0 { 255 } else { 0 };
            }
        }
    }
    let mut b = vec![0f32; pre.output_len()];
    let info2 = pre.process(&scribbled, &mut b).unwrap();
    assert_eq!(info.crop, info2.crop);
    assert!(a == b, "burned-in text changed the model input");
}

/// Frames with nothing in view are flagged (not errors); frames with anatomy are not.
#[test]
fn frames_without_anatomy_are_flagged() {
    // Philips OB: the sector is empty apart from a faint near-field band.
    let (_, ob) = first_frame("dicom/OBXXXX1A.dcm");
    let mut pre = Preprocessor::new(64, Normalization::caffe_bgr());
    let mut out = vec![0f32; pre.output_len()];
    let info = pre.process(&ob, &mut out).unwrap();
    assert!(info.area.no_anatomy, "{:?}", info.area);
    // Sonosite eye with its image area blanked (probe lifted): UI remains, anatomy gone.
    let (_, mut eye) = first_frame("frames/itk-pocus__sonosite-anon-eye1.jpg");
    let w = eye.width();
    for y in 41..640 {
        for x in 387..723 {
            eye.grey_mut()[(y * w + x) as usize] = 0;
        }
    }
    assert!(pre.process(&eye, &mut out).unwrap().area.no_anatomy);
}

/// Cine objects: every frame addressable; colour (Doppler) pixels flagged in RGB objects.
#[test]
fn cine_frames_and_colour_masks() {
    let file = UsFile::open(&fixture("dicom/color3d_jpeg_baseline.dcm")).unwrap();
    assert_eq!(file.frame_count(), 120);
    let mut f = GreyFrame::default();
    file.frame_into(119, &mut f).unwrap();
    assert_eq!((f.width(), f.height()), (640, 480));
    assert!(file.frame_into(120, &mut f).is_err());
    let (_, us1) = first_frame("dicom/US1_UNCR.dcm");
    let coloured = us1
        .colour_mask()
        .map_or(0, |m| m.iter().filter(|&&c| c != 0).count());
    assert!(
        coloured > 1000,
        "power Doppler pixels not flagged: {coloured}"
    );
}

/// Sonoque DICOM: the "ID / Name / Gender / Age" column starts right where the skin line
/// ends (the "I" of "ID" is drawn over the image's last columns, x 1705-1708; the image
/// fades out at x = 1710). Nothing right of that may fall inside the detected scan area:
/// block-sized mask edges would take in the "D".
#[test]
fn sonoque_dicom_text_column_is_outside_the_mask() {
    let (_, frame) = first_frame("dicom/sonoque_anechoic-3mm-3mm.dcm");
    let mut det = Detector::default();
    det.detect(&frame);
    let mut inside = 0;
    let mut text = 0;
    for y in 60..210 {
        for x in 1711..2010 {
            if frame.grey()[(y * frame.width() + x) as usize] > 60 {
                text += 1;
                inside += u32::from(det.inside(x, y));
            }
        }
    }
    assert!(
        text > 200,
        "expected burned-in text there ({text} bright pixels)"
    );
    assert_eq!(
        inside, 0,
        "{inside} of {text} text pixels inside the scan area"
    );
}
