//! Sessions and the records that leave the cart.
//!
//! A session is one child's exam. The journal holds its start, decisions, marks and end
//! (no patient data); the [`store`] holds what identifies the child (the context typed or
//! scanned) and the key frames, one folder per session named by the session id, so that
//! retention can delete a child's data by deleting one folder. [`export`] turns sessions
//! into a folder for a USB stick: a one-page PDF report ([`pdf`]), `results.csv`,
//! `session.json`, the key frames and `SHA256SUMS`.

pub mod export;
pub mod pdf;
pub mod session;
pub mod store;
pub mod time;

pub use export::{export, ExportError, ExportOptions, ExportSummary};
pub use session::{collect, read, Session, SessionState};
pub use store::{ExportMark, SessionStore, StoreError};

/// A new session id: `s-` + UTC date-time + 4 random hex digits. Sortable, unique enough
/// for one cart, and nothing in it is about the patient.
pub fn new_session_id(unix_ms: u64) -> String {
    let mut b = [0u8; 2];
    let r = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map(|_| u16::from_le_bytes(b))
        .unwrap_or((unix_ms % 65_536) as u16);
    format!("s-{}-{r:04x}", time::compact(unix_ms))
}

/// Sessions whose data is past the retention period and may go: ended (or interrupted)
/// before `cutoff_ms`, not purged yet, with a folder in the store, and released (exported
/// or accepted by the PACS: [`SessionStore::released`]). A record that never left the cart
/// is never the retention period's to delete: see [`held_past_retention`].
pub fn expired<'a>(
    sessions: &'a [Session],
    store: &SessionStore,
    cutoff_ms: u64,
) -> Vec<&'a Session> {
    past_retention(sessions, store, cutoff_ms, true)
}

/// The journal number of the oldest exam whose record has not left the cart (not purged,
/// neither exported nor accepted by the PACS): the journal's size limits keep every record
/// from it on.
pub fn oldest_unreleased(sessions: &[Session], store: &SessionStore) -> Option<u64> {
    sessions
        .iter()
        .filter(|s| s.state != SessionState::Purged && !store.released(&s.id))
        .map(|s| s.journal_seq_first)
        .min()
}

/// Sessions past the retention period kept because their record never left the cart
/// (neither exported nor accepted by the PACS).
pub fn held_past_retention<'a>(
    sessions: &'a [Session],
    store: &SessionStore,
    cutoff_ms: u64,
) -> Vec<&'a Session> {
    past_retention(sessions, store, cutoff_ms, false)
}

fn past_retention<'a>(
    sessions: &'a [Session],
    store: &SessionStore,
    cutoff_ms: u64,
    released: bool,
) -> Vec<&'a Session> {
    let present = store.ids();
    sessions
        .iter()
        .filter(|s| {
            matches!(s.state, SessionState::Ended | SessionState::Interrupted)
                && s.ended_ms.unwrap_or(s.started_ms) < cutoff_ms
                && present.binary_search(&s.id).is_ok()
                && store.released(&s.id) == released
        })
        .collect()
}
