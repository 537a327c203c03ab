//! The DICOM objects of one exam: a Secondary Capture per key frame (the scan area with the
//! heatmap overlay) and one Comprehensive SR following TID 1500 with a measurement group per
//! decision. Every UID is made here, once; the outbox keeps the bytes, so a resend after a
//! crash is the same object and the PACS stores it once.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{dicom_value, DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use contract::events::{ModelIdentity, SessionContext, Side};
use records::Session;

use crate::codes::{self, Code};
use crate::uid::{new_uid, uid_for};

/// Secondary Capture Image Storage.
pub const SC_CLASS: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;
/// Comprehensive SR Storage.
pub const SR_CLASS: &str = uids::COMPREHENSIVE_SR_STORAGE;
/// Said in every series description: what these objects are, and are not.
pub const DISCLAIMER: &str = "screening aid, not for diagnosis";

/// Who makes the objects: General Equipment, and the SR's device observer.
#[derive(Debug, Clone)]
pub struct Equipment {
    pub manufacturer: String,
    pub model_name: String,
    /// The cart's id (`cartlink.device_id`); the observer UID is derived from it.
    pub device_id: String,
    /// The runtime's version.
    pub software_version: String,
}

impl Equipment {
    /// The runtime's equipment description for a device id.
    pub fn renalscan(device_id: &str, software_version: &str) -> Self {
        Self {
            manufacturer: "renalscan".into(),
            model_name: "renalscan-edge".into(),
            device_id: device_id.into(),
            software_version: software_version.into(),
        }
    }
}

/// Patient and study attributes copied from a replayed DICOM study; they win over the
/// session's entered context.
pub use contract::events::SourceStudy;

/// Everything an exam's objects are made from.
#[derive(Debug, Clone)]
pub struct ExamInput<'a> {
    pub session: &'a Session,
    /// The entered context; `None` after retention or when nothing was entered.
    pub context: Option<&'a SessionContext>,
    /// Key frames: (journal number of the decision, PNG of the model input with its heatmap).
    pub key_frames: &'a [(u64, Vec<u8>)],
    pub equipment: &'a Equipment,
    pub source: Option<&'a SourceStudy>,
    /// When the objects are made (Unix ms).
    pub now_ms: u64,
}

/// What an object is; Secondary Captures go before the SR that references them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SecondaryCapture,
    StructuredReport,
}

/// One Part-10 object, ready to queue.
#[derive(Debug, Clone)]
pub struct Made {
    pub kind: Kind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// The Part-10 file (preamble, meta group, explicit VR little endian data set).
    pub bytes: Vec<u8>,
}

/// Why an exam's objects could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("key frame for decision {seq} is not a readable PNG: {source}")]
    KeyFrame { seq: u64, source: image::ImageError },
    #[error("DICOM file meta for {what}: {message}")]
    Meta { what: &'static str, message: String },
    #[error("DICOM encoding of {what}: {message}")]
    Write { what: &'static str, message: String },
}

/// Everything the SC and SR share: patient, study, equipment.
struct Common {
    patient_name: String,
    patient_id: String,
    birth_date: String,
    sex: String,
    study_uid: String,
    study_id: String,
    accession: String,
    study_date: String,
    study_time: String,
    content_date: String,
    content_time: String,
}

/// `(YYYYMMDD, HHMMSS)` of Unix milliseconds, UTC.
fn da_tm(unix_ms: u64) -> (String, String) {
    let c = records::time::compact(unix_ms);
    let (d, t) = c.split_once('T').unwrap_or((&c, "000000"));
    (d.to_string(), t.to_string())
}

/// Makes an exam's objects: the Secondary Captures (in decision order), then the SR.
pub fn exam_objects(input: &ExamInput<'_>) -> Result<Vec<Made>, ObjectError> {
    let s = input.session;
    let (study_date, study_time) = da_tm(s.started_ms);
    let (content_date, content_time) = da_tm(input.now_ms);
    let ctx = input.context.cloned().unwrap_or_default();
    let src = input.source.cloned().unwrap_or_default();
    let common = Common {
        patient_name: src.patient_name.unwrap_or_default(),
        patient_id: src.patient_id.or(ctx.patient_id).unwrap_or_default(),
        birth_date: src.patient_birth_date.unwrap_or_default(),
        sex: src.patient_sex.unwrap_or_default(),
        study_uid: src.study_uid.unwrap_or_else(new_uid),
        // SH, 16 characters: the exam's start time, `YYYYMMDDTHHMMSS`.
        study_id: src
            .study_id
            .unwrap_or_else(|| records::time::compact(s.started_ms)),
        accession: src.accession.or(ctx.accession).unwrap_or_default(),
        study_date: src.study_date.unwrap_or(study_date),
        study_time: src.study_time.unwrap_or(study_time),
        content_date,
        content_time,
    };
    let sc_series = new_uid();
    let mut out = Vec::new();
    let mut refs = Vec::new();
    for (i, (seq, png)) in input.key_frames.iter().enumerate() {
        let rgb = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .map_err(|source| ObjectError::KeyFrame { seq: *seq, source })?
            .to_rgb8();
        let uid = new_uid();
        let obj = secondary_capture(&common, input, &sc_series, &uid, i + 1, &rgb);
        out.push(Made {
            kind: Kind::SecondaryCapture,
            sop_class_uid: SC_CLASS.into(),
            bytes: part10(obj, SC_CLASS, &uid, "secondary capture")?,
            sop_instance_uid: uid.clone(),
        });
        refs.push((*seq, uid));
    }
    let sr_uid = new_uid();
    let sr = report(&common, input, &sc_series, &refs, &sr_uid);
    out.push(Made {
        kind: Kind::StructuredReport,
        sop_class_uid: SR_CLASS.into(),
        bytes: part10(sr, SR_CLASS, &sr_uid, "structured report")?,
        sop_instance_uid: sr_uid,
    });
    Ok(out)
}

fn part10(
    obj: InMemDicomObject,
    class: &str,
    uid: &str,
    what: &'static str,
) -> Result<Vec<u8>, ObjectError> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(uid)
        .implementation_class_uid(crate::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::IMPLEMENTATION_VERSION_NAME);
    let file = obj.with_meta(meta).map_err(|e| ObjectError::Meta {
        what,
        message: e.to_string(),
    })?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| ObjectError::Write {
        what,
        message: e.to_string(),
    })?;
    Ok(bytes)
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<String>) {
    let v: String = v.into();
    if v.is_empty() {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
    } else {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
}

fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn code_item(c: Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::CODE_VALUE, VR::SH, c.value);
    put(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.scheme);
    put(&mut o, tags::CODE_MEANING, VR::LO, c.meaning);
    o
}

/// Patient, General Study, General Equipment and the SOP Common parts both objects share.
fn common_modules(
    o: &mut InMemDicomObject,
    c: &Common,
    input: &ExamInput<'_>,
    class: &str,
    uid: &str,
) {
    put(o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(o, tags::SOP_CLASS_UID, VR::UI, class);
    put(o, tags::SOP_INSTANCE_UID, VR::UI, uid);
    put(
        o,
        tags::INSTANCE_CREATION_DATE,
        VR::DA,
        c.content_date.clone(),
    );
    put(
        o,
        tags::INSTANCE_CREATION_TIME,
        VR::TM,
        c.content_time.clone(),
    );
    // Patient
    put(o, tags::PATIENT_NAME, VR::PN, c.patient_name.clone());
    put(o, tags::PATIENT_ID, VR::LO, c.patient_id.clone());
    put(o, tags::PATIENT_BIRTH_DATE, VR::DA, c.birth_date.clone());
    put(o, tags::PATIENT_SEX, VR::CS, c.sex.clone());
    // General Study
    put(o, tags::STUDY_INSTANCE_UID, VR::UI, c.study_uid.clone());
    put(o, tags::STUDY_DATE, VR::DA, c.study_date.clone());
    put(o, tags::STUDY_TIME, VR::TM, c.study_time.clone());
    put(o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
    put(o, tags::STUDY_ID, VR::SH, c.study_id.clone());
    put(o, tags::ACCESSION_NUMBER, VR::SH, c.accession.clone());
    put(
        o,
        tags::STUDY_DESCRIPTION,
        VR::LO,
        "Renal ultrasound screening",
    );
    // General Equipment
    let e = input.equipment;
    put(o, tags::MANUFACTURER, VR::LO, e.manufacturer.clone());
    put(
        o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        e.model_name.clone(),
    );
    put(o, tags::DEVICE_SERIAL_NUMBER, VR::LO, e.device_id.clone());
    let model = input.session.model.as_ref();
    let mut versions = vec![e.software_version.clone()];
    if let Some(m) = model {
        versions.push(format!("{} {}", m.name, m.version));
    }
    obj_strs(o, tags::SOFTWARE_VERSIONS, VR::LO, versions);
}

fn obj_strs(o: &mut InMemDicomObject, tag: Tag, vr: VR, values: Vec<String>) {
    o.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.into_iter().collect()),
    ));
}

fn secondary_capture(
    c: &Common,
    input: &ExamInput<'_>,
    series_uid: &str,
    uid: &str,
    number: usize,
    rgb: &image::RgbImage,
) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    common_modules(&mut o, c, input, SC_CLASS, uid);
    // General Series
    put(&mut o, tags::MODALITY, VR::CS, "OT");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "901");
    put(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        format!("Key frames, heatmap ({DISCLAIMER})"),
    );
    if let Some(side) = input.context.and_then(|c| c.side) {
        put(&mut o, tags::LATERALITY, VR::CS, laterality(side));
    }
    // SC Equipment
    put(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    // General Image
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, number.to_string());
    put(&mut o, tags::PATIENT_ORIENTATION, VR::CS, "");
    put(&mut o, tags::CONTENT_DATE, VR::DA, c.content_date.clone());
    put(&mut o, tags::CONTENT_TIME, VR::TM, c.content_time.clone());
    o.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        dicom_value!(Strs, ["DERIVED", "SECONDARY"]),
    ));
    put(
        &mut o,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        "Scan area of the model input beside it with the class-activation map of p(abnormal) \
         overlaid (model attention, not a lesion outline)",
    );
    put(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    // SC Image
    put(
        &mut o,
        tags::DATE_OF_SECONDARY_CAPTURE,
        VR::DA,
        c.content_date.clone(),
    );
    put(
        &mut o,
        tags::TIME_OF_SECONDARY_CAPTURE,
        VR::TM,
        c.content_time.clone(),
    );
    // Image Pixel
    o.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(3_u16),
    ));
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    o.put(DataElement::new(
        tags::PLANAR_CONFIGURATION,
        VR::US,
        PrimitiveValue::from(0_u16),
    ));
    o.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(rgb.height() as u16),
    ));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(rgb.width() as u16),
    ));
    for (tag, v) in [
        (tags::BITS_ALLOCATED, 8_u16),
        (tags::BITS_STORED, 8),
        (tags::HIGH_BIT, 7),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    }
    let mut pixels = rgb.as_raw().clone();
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pixels.into()),
    ));
    o
}

fn laterality(side: Side) -> &'static str {
    match side {
        Side::Left => "L",
        Side::Right => "R",
    }
}

/// A content item with its relationship, value type and concept name.
fn item(rel: &str, value_type: &str, concept: Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::RELATIONSHIP_TYPE, VR::CS, rel);
    put(&mut o, tags::VALUE_TYPE, VR::CS, value_type);
    put_seq(
        &mut o,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(concept)],
    );
    o
}

fn code(rel: &str, concept: Code, value: Code) -> InMemDicomObject {
    let mut o = item(rel, "CODE", concept);
    put_seq(&mut o, tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]);
    o
}

fn text(rel: &str, concept: Code, value: &str) -> InMemDicomObject {
    let mut o = item(rel, "TEXT", concept);
    put(&mut o, tags::TEXT_VALUE, VR::UT, value);
    o
}

fn uidref(rel: &str, concept: Code, value: &str) -> InMemDicomObject {
    let mut o = item(rel, "UIDREF", concept);
    put(&mut o, tags::UID, VR::UI, value);
    o
}

fn num(rel: &str, concept: Code, value: f64, units: Code) -> InMemDicomObject {
    let mut o = item(rel, "NUM", concept);
    let mut mv = InMemDicomObject::new_empty();
    put_seq(
        &mut mv,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(units)],
    );
    // DS: at most 16 characters.
    put(&mut mv, tags::NUMERIC_VALUE, VR::DS, format!("{value:.6}"));
    put_seq(&mut o, tags::MEASURED_VALUE_SEQUENCE, vec![mv]);
    o
}

fn container(rel: &str, concept: Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut o = item(rel, "CONTAINER", concept);
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut o, tags::CONTENT_SEQUENCE, children);
    o
}

fn image_ref(rel: &str, concept: Code, sc_uid: &str) -> InMemDicomObject {
    let mut o = item(rel, "IMAGE", concept);
    let mut r = InMemDicomObject::new_empty();
    put(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, SC_CLASS);
    put(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sc_uid);
    put_seq(&mut o, tags::REFERENCED_SOP_SEQUENCE, vec![r]);
    o
}

fn algorithm(children: &mut Vec<InMemDicomObject>, model: Option<&ModelIdentity>) {
    if let Some(m) = model {
        children.push(text("HAS CONCEPT MOD", codes::ALGORITHM_NAME, &m.name));
        children.push(text(
            "HAS CONCEPT MOD",
            codes::ALGORITHM_VERSION,
            &m.version,
        ));
    }
}

fn report(
    c: &Common,
    input: &ExamInput<'_>,
    sc_series: &str,
    refs: &[(u64, String)],
    uid: &str,
) -> InMemDicomObject {
    let s = input.session;
    let side = input.context.and_then(|c| c.side);
    let mut o = InMemDicomObject::new_empty();
    common_modules(&mut o, c, input, SR_CLASS, uid);
    // SR Document Series
    put(&mut o, tags::MODALITY, VR::CS, "SR");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, new_uid());
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "902");
    put(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        format!("Renal screening result ({DISCLAIMER})"),
    );
    put_seq(
        &mut o,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    );
    // SR Document General
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put(&mut o, tags::CONTENT_DATE, VR::DA, c.content_date.clone());
    put(&mut o, tags::CONTENT_TIME, VR::TM, c.content_time.clone());
    put_seq(
        &mut o,
        tags::PERFORMED_PROCEDURE_CODE_SEQUENCE,
        vec![code_item(codes::US_KIDNEY)],
    );
    if !refs.is_empty() {
        let mut series = InMemDicomObject::new_empty();
        put(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, sc_series);
        put_seq(
            &mut series,
            tags::REFERENCED_SOP_SEQUENCE,
            refs.iter()
                .map(|(_, u)| {
                    let mut r = InMemDicomObject::new_empty();
                    put(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, SC_CLASS);
                    put(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, u.clone());
                    r
                })
                .collect(),
        );
        let mut study = InMemDicomObject::new_empty();
        put(
            &mut study,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            c.study_uid.clone(),
        );
        put_seq(&mut study, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
        put_seq(
            &mut o,
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![study],
        );
    }
    // The private coding scheme, declared.
    let mut scheme = InMemDicomObject::new_empty();
    put(
        &mut scheme,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        codes::PRIVATE,
    );
    put(
        &mut scheme,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        codes::PRIVATE_NAME,
    );
    put(
        &mut scheme,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        "renalscan",
    );
    put_seq(
        &mut o,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![scheme],
    );
    // SR Document Content: the root container (TID 1500).
    put(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut o,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(codes::IMAGING_MEASUREMENT_REPORT)],
    );
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut o, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);

    let e = input.equipment;
    let mut root = vec![
        code("HAS CONCEPT MOD", codes::LANGUAGE, codes::ENGLISH),
        code("HAS OBS CONTEXT", codes::OBSERVER_TYPE, codes::DEVICE),
        uidref(
            "HAS OBS CONTEXT",
            codes::DEVICE_OBSERVER_UID,
            &uid_for(&e.device_id),
        ),
        text("HAS OBS CONTEXT", codes::DEVICE_OBSERVER_NAME, &e.device_id),
        text(
            "HAS OBS CONTEXT",
            codes::DEVICE_OBSERVER_MANUFACTURER,
            &e.manufacturer,
        ),
        text(
            "HAS OBS CONTEXT",
            codes::DEVICE_OBSERVER_MODEL_NAME,
            &e.model_name,
        ),
        code(
            "HAS CONCEPT MOD",
            codes::PROCEDURE_REPORTED,
            codes::US_KIDNEY,
        ),
    ];
    if !refs.is_empty() {
        let images = refs
            .iter()
            .map(|(_, u)| image_ref("CONTAINS", codes::SOURCE, u))
            .collect();
        root.push(container(
            "CONTAINS",
            codes::IMAGE_LIBRARY,
            vec![container("CONTAINS", codes::IMAGE_LIBRARY_GROUP, images)],
        ));
    }
    let groups = s
        .decisions
        .iter()
        .map(|(jseq, d)| {
            let mut g = vec![
                text(
                    "HAS OBS CONTEXT",
                    codes::TRACKING_IDENTIFIER,
                    &format!("{} decision {jseq} ({:?})", s.id, d.kind).to_lowercase(),
                ),
                uidref("HAS OBS CONTEXT", codes::TRACKING_UID, &new_uid()),
            ];
            let mut site = code("HAS CONCEPT MOD", codes::FINDING_SITE, codes::KIDNEY);
            if let Some(side) = side {
                put_seq(
                    &mut site,
                    tags::CONTENT_SEQUENCE,
                    vec![code(
                        "HAS CONCEPT MOD",
                        codes::LATERALITY,
                        match side {
                            Side::Left => codes::LEFT,
                            Side::Right => codes::RIGHT,
                        },
                    )],
                );
            }
            g.push(site);
            g.push(code(
                "CONTAINS",
                codes::FINDING,
                if d.abnormal {
                    codes::ABNORMAL
                } else {
                    codes::NORMAL
                },
            ));
            if d.abnormal {
                if let Some(t) = contract::Class::from_label(&d.class).and_then(codes::abnormality)
                {
                    g.push(code("CONTAINS", codes::ABNORMALITY_TYPE, t));
                }
            }
            let mut p = num(
                "CONTAINS",
                codes::P_ABNORMAL,
                f64::from(d.p_abnormal),
                codes::UNITY,
            );
            let mut modifiers = Vec::new();
            algorithm(&mut modifiers, s.model.as_ref());
            if let Some((_, u)) = refs.iter().find(|(seq, _)| seq == jseq) {
                modifiers.push(image_ref("INFERRED FROM", codes::SOURCE, u));
            }
            put_seq(&mut p, tags::CONTENT_SEQUENCE, modifiers);
            g.push(p);
            g.push(num(
                "CONTAINS",
                codes::THRESHOLD,
                f64::from(d.threshold),
                codes::UNITY,
            ));
            container("CONTAINS", codes::MEASUREMENT_GROUP, g)
        })
        .collect();
    root.push(container("CONTAINS", codes::IMAGING_MEASUREMENTS, groups));
    put_seq(&mut o, tags::CONTENT_SEQUENCE, root);
    o
}

/// Why an ended session's objects could not be made from the records.
#[derive(Debug, thiserror::Error)]
pub enum SessionObjectsError {
    #[error("session {0} is not in the journal")]
    NoSession(String),
    #[error("session store: {0}")]
    Store(#[from] records::StoreError),
    #[error("key frame {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Object(#[from] ObjectError),
}

/// Makes the objects of session `id` from the journal's sessions and the session store
/// (context, key frames), now.
pub fn session_objects(
    sessions: &[Session],
    id: &str,
    store: &records::SessionStore,
    equipment: &Equipment,
) -> Result<Vec<Made>, SessionObjectsError> {
    let session = sessions
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| SessionObjectsError::NoSession(id.to_string()))?;
    let context = store.context(id)?;
    let source = store.source(id)?;
    let mut frames = Vec::new();
    for (seq, path) in store.frames(id)? {
        let png = std::fs::read(&path).map_err(|source| SessionObjectsError::Read {
            path: path.clone(),
            source,
        })?;
        frames.push((seq, png));
    }
    Ok(exam_objects(&ExamInput {
        session,
        context: context.as_ref(),
        key_frames: &frames,
        equipment,
        source: source.as_ref(),
        now_ms: crate::outbox::now_ms(),
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(m: &Made, t: Tag) -> String {
        let f = dicom_object::from_reader(&m.bytes[128..]).unwrap();
        f.element(t)
            .map(|e| e.to_str().unwrap().trim_end_matches('\0').to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_replayed_study_s_attributes_win_over_the_entered_context() {
        let session = crate::sample::session();
        let ctx = crate::sample::context();
        let source = SourceStudy {
            patient_id: Some("SRC-PID".into()),
            study_uid: Some("1.2.826.0.1.3680043.2.1125.1".into()),
            patient_name: Some("Doe^Jane".into()),
            ..SourceStudy::default()
        };
        let eq = Equipment::renalscan("c", "0");
        let input = ExamInput {
            session: &session,
            context: Some(&ctx),
            key_frames: &[],
            equipment: &eq,
            source: Some(&source),
            now_ms: 0,
        };
        let made = exam_objects(&input).unwrap();
        let sr = &made[0];
        assert_eq!(tag(sr, tags::PATIENT_ID), "SRC-PID");
        assert_eq!(tag(sr, tags::PATIENT_NAME), "Doe^Jane");
        assert_eq!(
            tag(sr, tags::STUDY_INSTANCE_UID),
            "1.2.826.0.1.3680043.2.1125.1"
        );
        // What the source leaves out comes from the context.
        assert_eq!(tag(sr, tags::ACCESSION_NUMBER), "ACC-2291");
        // Without a source: the context, and a study of its own.
        let own = exam_objects(&ExamInput {
            source: None,
            ..input
        })
        .unwrap();
        assert_eq!(tag(&own[0], tags::PATIENT_ID), "MRN-00417");
        assert!(tag(&own[0], tags::STUDY_INSTANCE_UID).starts_with("2.25."));
    }
}
