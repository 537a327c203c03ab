//! The sink list and the command sources a config asks for, in delivery order: the journal
//! first (the record of truth), then key frames, the PACS outbox, snapshots, stdout, the
//! cart link, the operator view.

use super::cartlink::CartSink;
use super::journal::JournalSink;
use super::keyframes::KeyframeSink;
use super::pacs::PacsSink;
use super::snapshots::SnapshotSink;
use super::statusfile::StatusFileSink;
use super::stdout::StdoutSink;
use super::view::ViewSink;
use super::{CommandSource, Sink};
use crate::config::Config;
use crate::infer::Classifier;

/// What a run writes to and listens to.
#[derive(Default)]
pub struct Outputs {
    /// In delivery order.
    pub sinks: Vec<Box<dyn Sink>>,
    /// Polled every loop turn.
    pub commands: Vec<Box<dyn CommandSource>>,
}

impl Outputs {
    /// Adds a sink at the end of the list.
    pub fn push(&mut self, sink: impl Sink + 'static) {
        self.sinks.push(Box::new(sink));
    }
}

/// Builds the outputs of `cfg`. `stdout` false leaves stdout out (the bench).
pub fn from_config(cfg: &Config, classifier: &Classifier, stdout: bool) -> anyhow::Result<Outputs> {
    let mut out = Outputs::default();
    if cfg.journal.enabled {
        // The journal applies its limits at open, before the runtime has read which exams
        // left the cart: it keeps everything until then. The runtime's retention pass at
        // start (before the first frame) sets the real pin from the sessions it reads anyway.
        cfg.journal.keep_from.set(Some(0));
        out.push(JournalSink::open(&cfg.journal)?);
        // Key frames of exams (decisions outside a session are not kept).
        out.push(KeyframeSink::new(records::SessionStore::at(
            &cfg.session.dir,
        )));
    }
    if cfg.pacs.enabled {
        // An outbox that cannot open (another process holds it, a read-only disk) is an
        // error at start: results would silently never leave otherwise.
        out.push(PacsSink::spawn(
            &cfg.pacs,
            cfg.journal.dir.clone(),
            cfg.session.dir.clone(),
            &cfg.cartlink.device_id,
            cfg.session.retention_days,
        )?);
    }
    if cfg.snapshot.enabled {
        out.push(SnapshotSink::open(&cfg.snapshot, classifier)?);
    }
    if stdout && cfg.output.stdout {
        out.push(StdoutSink::new());
    }
    if let Some(path) = &cfg.output.status_file {
        out.push(StatusFileSink::new(path));
    }
    // The view starts before the cart link, which shows its pairing codes; its sink still
    // comes last. Screening never depends on the view: a port in use is an error in the
    // log, not a cart that refuses to screen.
    let view = if cfg.ui.enabled {
        match ViewSink::start(&cfg.ui, classifier) {
            Ok(v) => Some(v),
            Err(e) => {
                log::error!("operator view not started: {e}");
                None
            }
        }
    } else {
        None
    };
    if cfg.cartlink.enabled {
        let info = classifier.info();
        let pairing = view
            .as_ref()
            .filter(|_| !cfg.ui.listen.ip().is_loopback() || !cfg.ui.trust_loopback)
            .map(|(sink, _)| sink.server().pairing_codes());
        let (sink, commands) = CartSink::spawn(
            &cfg.cartlink,
            &info.name,
            &info.version,
            &info.labels,
            pairing,
        )?;
        out.push(sink);
        out.commands.push(Box::new(commands));
    }
    if let Some((sink, commands)) = view {
        out.push(sink);
        out.commands.push(Box::new(commands));
    }
    Ok(out)
}
