//! What a C-STORE status, or a failure on the way, means for an object in the outbox.

/// The outbox's action for one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stored (success, or a warning such as coercion of data elements).
    Done,
    /// Try again later, counted against the retry cap (A7xx out of resources: Orthanc also
    /// answers A700 for errors that will never pass, hence the cap).
    RetryCapped,
    /// The PACS refuses this object for good (A9xx, Cxxx, other failures): set aside and
    /// raise an alarm; a person looks at it (`outbox retry` puts it back).
    Quarantine,
    /// Nothing can be sent until someone fixes the configuration (association rejected
    /// permanently, no accepted presentation context): hold the whole queue and alarm.
    HoldConfig,
    /// The network or the PACS is away (refused, timeout, abort): back off and retry,
    /// without a cap.
    Backoff,
}

/// The action for a DIMSE status of a C-STORE response (PS3.4 B.2.3, PS3.7 C).
pub fn store_status(status: u16) -> Action {
    match status {
        0x0000 => Action::Done,
        // Warnings: coercion of data elements, elements discarded, data set does not match
        // the SOP class; the object is stored.
        0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => Action::Done,
        0xA700..=0xA7FF => Action::RetryCapped,
        // Cancel: it was not stored; try again.
        0xFE00 => Action::RetryCapped,
        // A9xx (data set does not match SOP class), Cxxx (cannot understand), and every
        // other failure (0x0110 processing failure, 0x0122 SOP class not supported, ...).
        _ => Action::Quarantine,
    }
}

/// A status as people read it: `0xA700 (out of resources)`.
pub fn describe(status: u16) -> String {
    let what = match status {
        0x0000 => "success",
        0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => "warning, stored",
        0xA700..=0xA7FF => "refused: out of resources",
        0xA900..=0xA9FF => "error: data set does not match SOP class",
        0xC000..=0xCFFF => "error: cannot understand",
        0x0110 => "processing failure",
        0x0122 => "refused: SOP class not supported",
        0x0124 => "refused: not authorized",
        0xFE00 => "cancelled",
        _ => "failure",
    };
    format!("{status:#06X} ({what})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_table() {
        assert_eq!(store_status(0x0000), Action::Done);
        assert_eq!(store_status(0xB000), Action::Done);
        assert_eq!(store_status(0xB007), Action::Done);
        assert_eq!(store_status(0xA700), Action::RetryCapped);
        assert_eq!(store_status(0xA7FF), Action::RetryCapped);
        assert_eq!(store_status(0xA900), Action::Quarantine);
        assert_eq!(store_status(0xC000), Action::Quarantine);
        assert_eq!(store_status(0xCFFF), Action::Quarantine);
        assert_eq!(store_status(0x0122), Action::Quarantine);
        assert_eq!(describe(0xA700), "0xA700 (refused: out of resources)");
    }
}
