//! The operator view: the page a clinician looks at during the scan, served by the edge
//! runtime on its own threads.
//!
//! The runtime hands it frames ([`Preview`], latest wins) and events ([`ViewEvent`]); the
//! server encodes each frame once for every viewer, keeps a numbered event history that a
//! page replays after a reconnect, and turns the operator's buttons into [`Control`]s the
//! runtime polls. Nothing here can block the screening thread: publishing is a copy into a
//! slot and a notify; encoding, sockets and TLS live on the view's threads.
//!
//! Security follows from where the page is used: bound to loopback by default (the cart's own
//! kiosk browser, trusted with the configured local role); LAN access only over TLS, with a
//! pairing code shown on the device exchanged for a session cookie, two roles (a viewer sees,
//! an operator acts), `Origin` checked on the socket and a strict Content-Security-Policy.
//! No patient identifier is ever put in a URL, a title, a file name or a log line: the
//! runtime sends none.

mod assets;
mod auth;
mod config;
mod http;
mod hub;
mod protocol;
mod server;
mod tls;
mod ws;

pub use auth::Role;
pub use config::{ConfigError, ViewConfig};
pub use hub::Stats;
pub use protocol::{
    parse_frame_message, Control, DecisionInfo, ExamContext, FrameHeader, Identity, Preview,
    ViewEvent, FRAME_MAGIC,
};
pub use server::{ViewError, ViewServer};
pub use ws::is_timeout;
