//! Coded concepts of the structured report (TID 1500 and the templates it includes), with
//! SNOMED CT where SNOMED has the concept and the private scheme [`PRIVATE`] where it has not.

/// A coded concept: value, scheme designator, meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

const fn dcm(value: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme: "DCM",
        meaning,
    }
}

const fn sct(value: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme: "SCT",
        meaning,
    }
}

const fn private(value: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme: PRIVATE,
        meaning,
    }
}

/// renalscan's private coding scheme (the `99` prefix marks a local scheme, PS3.16 8.2);
/// declared in the report's Coding Scheme Identification Sequence.
pub const PRIVATE: &str = "99RENALSCAN";
/// Its name in that sequence.
pub const PRIVATE_NAME: &str = "renalscan screening concepts";

pub const IMAGING_MEASUREMENT_REPORT: Code = dcm("126000", "Imaging Measurement Report");
pub const LANGUAGE: Code = dcm("121049", "Language of Content Item and Descendants");
pub const ENGLISH: Code = Code {
    value: "en-US",
    scheme: "RFC5646",
    meaning: "English (United States)",
};
pub const OBSERVER_TYPE: Code = dcm("121005", "Observer Type");
pub const DEVICE: Code = dcm("121007", "Device");
pub const DEVICE_OBSERVER_UID: Code = dcm("121012", "Device Observer UID");
pub const DEVICE_OBSERVER_NAME: Code = dcm("121013", "Device Observer Name");
pub const DEVICE_OBSERVER_MANUFACTURER: Code = dcm("121014", "Device Observer Manufacturer");
pub const DEVICE_OBSERVER_MODEL_NAME: Code = dcm("121015", "Device Observer Model Name");
pub const PROCEDURE_REPORTED: Code = dcm("121058", "Procedure reported");
/// The procedure reported (CIDs 6028/6029).
pub const US_KIDNEY: Code = sct("16310003", "Diagnostic ultrasonography");
pub const IMAGE_LIBRARY: Code = dcm("111028", "Image Library");
pub const IMAGE_LIBRARY_GROUP: Code = dcm("126200", "Image Library Group");
pub const SOURCE: Code = sct("260753009", "Source");
pub const IMAGING_MEASUREMENTS: Code = dcm("126010", "Imaging Measurements");
pub const MEASUREMENT_GROUP: Code = dcm("125007", "Measurement Group");
pub const TRACKING_IDENTIFIER: Code = dcm("112039", "Tracking Identifier");
pub const TRACKING_UID: Code = dcm("112040", "Tracking Unique Identifier");
pub const FINDING_SITE: Code = sct("363698007", "Finding Site");
pub const KIDNEY: Code = sct("64033007", "Kidney");
pub const LATERALITY: Code = sct("272741003", "Laterality");
pub const LEFT: Code = sct("7771000", "Left");
pub const RIGHT: Code = sct("24028007", "Right");
pub const FINDING: Code = dcm("121071", "Finding");
pub const NORMAL: Code = sct("17621005", "Normal");
pub const ABNORMAL: Code = sct("263654008", "Abnormal");
pub const ALGORITHM_NAME: Code = dcm("111001", "Algorithm Name");
pub const ALGORITHM_VERSION: Code = dcm("111003", "Algorithm Version");
/// The NUM's concept: no standard concept names a classifier's probability of abnormal.
pub const P_ABNORMAL: Code = private("P-ABN", "Probability of abnormal finding");
/// The abnormality type's concept.
pub const ABNORMALITY_TYPE: Code = private("ABN-TYPE", "Most likely abnormality");
/// The NUM's units: a probability, dimensionless.
pub const UNITY: Code = Code {
    value: "1",
    scheme: "UCUM",
    meaning: "no units",
};
pub const THRESHOLD: Code = private(
    "THRESHOLD",
    "Operating threshold on probability of abnormal",
);

/// The code of a screening class's abnormality type; `None` for normal.
pub fn abnormality(class: contract::Class) -> Option<Code> {
    use contract::Class;
    Some(match class {
        Class::Normal => return None,
        Class::Stone => sct("95570007", "Kidney stone"),
        Class::Hydronephrosis => sct("43064006", "Hydronephrosis"),
        Class::Cyst => private("CYST", "Renal cyst"),
        Class::Hyperechogenicity => private("HYPERECHO", "Increased renal echogenicity"),
        Class::Sol => private("SOL", "Renal space-occupying lesion"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_abnormal_class_has_a_code_and_meanings_fit_lo() {
        for c in contract::Class::ALL {
            assert_eq!(abnormality(c).is_none(), c == contract::Class::Normal);
            if let Some(code) = abnormality(c) {
                assert!(code.meaning.len() <= 64 && code.value.len() <= 16);
            }
        }
    }
}
