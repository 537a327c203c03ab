//! `renalscan-edge pacs echo` and `renalscan-edge outbox list|drain|retry|purge`: the PACS
//! and the outbox from a shell, with the same `--config`, `--journal` and `--pacs` flags as
//! `run`. The outbox has one owner at a time: while the runtime runs, it drains by itself and
//! these commands say so.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::{Config, PacsConfig};

/// Where the PACS and the outbox are: flags, else the config, else the defaults.
#[derive(Args, Clone)]
pub struct PacsPlaces {
    /// TOML configuration (`[pacs]`, `journal.dir`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Journal directory (overrides journal.dir): where `outbox drain` finds ended exams
    /// that were never queued.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// The PACS, `AET@HOST:PORT` (overrides pacs.called_ae, host and port).
    #[arg(long, value_name = "AET@HOST:PORT")]
    pub pacs: Option<String>,
    /// Outbox directory (overrides pacs.outbox).
    #[arg(long)]
    pub outbox: Option<PathBuf>,
}

impl PacsPlaces {
    fn resolve(&self, need_address: bool) -> anyhow::Result<PacsConfig> {
        self.resolve_all(need_address).map(|(p, _)| p)
    }

    /// The PACS settings and the whole configuration (journal, session store, device id).
    fn resolve_all(&self, need_address: bool) -> anyhow::Result<(PacsConfig, Config)> {
        let mut cfg = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(j) = &self.journal {
            cfg.journal.dir = j.clone();
        }
        let mut p = cfg.pacs.clone();
        if let Some(a) = &self.pacs {
            p.set_address(a)?;
        }
        if let Some(o) = &self.outbox {
            p.outbox = o.clone();
        }
        if need_address {
            p.validate()?;
        }
        Ok((p, cfg))
    }
}

#[derive(Subcommand)]
pub enum PacsCmd {
    /// C-ECHO: does the PACS answer, and accept our AE titles?
    Echo(PacsPlaces),
}

#[derive(Subcommand)]
pub enum OutboxCmd {
    /// Every object: state, exam, attempts, last error.
    List {
        #[command(flatten)]
        places: PacsPlaces,
        /// JSON lines on stdout instead of text: one object per outbox object.
        #[arg(long)]
        json: bool,
    },
    /// Queue ended exams the runtime did not (it stopped between an exam's end and its
    /// queueing; read from the journal), then send what is waiting (one association).
    Drain(PacsPlaces),
    /// Put quarantined objects (all, or one) back in the queue.
    Retry {
        #[command(flatten)]
        places: PacsPlaces,
        /// Only this SOP Instance UID.
        #[arg(long)]
        uid: Option<String>,
    },
    /// Delete quarantined objects (all, or one); with --pending also those still waiting.
    Purge {
        #[command(flatten)]
        places: PacsPlaces,
        #[arg(long)]
        uid: Option<String>,
        #[arg(long)]
        pending: bool,
    },
}

pub fn cmd_pacs(c: PacsCmd) -> anyhow::Result<ExitCode> {
    match c {
        PacsCmd::Echo(places) => {
            let p = places.resolve(true)?;
            let t = std::time::Instant::now();
            pacs::scu::echo(&p.addr(), &p.link()?)?;
            println!(
                "{} answered C-ECHO in {} ms (calling AE {})",
                p.addr(),
                t.elapsed().as_millis(),
                p.calling_ae
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn cmd_outbox(c: OutboxCmd) -> anyhow::Result<ExitCode> {
    match c {
        OutboxCmd::List { places, json } => {
            let p = places.resolve(false)?;
            let ob = pacs::Outbox::open(&p.outbox)?;
            if !json {
                println!(
                    "{:<12} {:<18} {:<24} {:>8}  {:<56} last error",
                    "state", "kind", "exam", "attempts", "sop instance uid"
                );
            }
            for i in ob.items() {
                if json {
                    println!("{}", serde_json::to_string(i)?);
                } else {
                    println!(
                        "{:<12} {:<18} {:<24} {:>8}  {:<56} {}",
                        format!("{:?}", i.state).to_lowercase(),
                        format!("{:?}", i.kind),
                        i.session,
                        i.attempts,
                        i.uid,
                        i.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            let c = ob.counts();
            if !json {
                println!(
                    "{} pending, {} sent, {} quarantined",
                    c.pending, c.sent, c.quarantined
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        OutboxCmd::Drain(places) => {
            let (p, cfg) = places.resolve_all(true)?;
            let mut ob = pacs::Outbox::open(&p.outbox)?;
            if cfg.journal.dir.is_dir() {
                let sessions = records::read(&cfg.journal.dir)?;
                let store = records::SessionStore::at(&cfg.session.dir);
                let eq =
                    pacs::Equipment::renalscan(&cfg.cartlink.device_id, env!("CARGO_PKG_VERSION"));
                let missed: Vec<String> =
                    ob.missed(&sessions).iter().map(|s| s.id.clone()).collect();
                for id in missed {
                    let made = pacs::session_objects(&sessions, &id, &store, &eq)?;
                    let n = ob.enqueue(&id, &made)?;
                    println!("exam {id}: {n} objects queued (it ended without being queued)");
                }
            }
            let mut dc = p.drain_config()?;
            dc.pace = crate::sink::pacs::test_pace();
            let r = ob.drain(&p.addr(), &dc);
            let c = ob.counts();
            println!(
                "sent {}, quarantined {}; {} pending, {} quarantined in all",
                r.sent, r.quarantined, c.pending, c.quarantined
            );
            match r.stopped {
                None => Ok(ExitCode::SUCCESS),
                Some((action, why)) => {
                    eprintln!("drain stopped ({action:?}): {why}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        OutboxCmd::Retry { places, uid } => {
            let p = places.resolve(false)?;
            let n = pacs::Outbox::open(&p.outbox)?.retry(uid.as_deref())?;
            println!("{n} objects back in the queue");
            Ok(ExitCode::SUCCESS)
        }
        OutboxCmd::Purge {
            places,
            uid,
            pending,
        } => {
            let p = places.resolve(false)?;
            let n = pacs::Outbox::open(&p.outbox)?.purge(uid.as_deref(), pending)?;
            println!("{n} objects purged");
            Ok(ExitCode::SUCCESS)
        }
    }
}
