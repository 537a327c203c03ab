//! `renalscan cart-sim`: a cart controller on a serial device or a fresh pseudo-terminal
//! pair. Prints what the device sends (text or JSON lines) and sends the commands typed on
//! stdin (`start`, `stop`, `capture`, `status`, `quit`). The engine is `cartlink::sim`.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cartlink::serial;
use cartlink::sim::{self, SimOptions};

/// Arguments of `renalscan cart-sim`.
#[derive(clap::Args)]
pub struct Args {
    /// Serial device wired to the edge board (e.g. /dev/ttyUSB0).
    #[arg(long, required_unless_present = "pty", conflicts_with = "pty")]
    pub port: Option<String>,
    /// Create a pseudo-terminal pair and print the path the device side should open.
    #[arg(long)]
    pub pty: bool,
    /// Line speed (ignored by pseudo terminals).
    #[arg(value_parser = argrange::u32_in(300, 4_000_000), long, default_value_t = 115_200)]
    pub baud: u32,
    /// Send `start` at once.
    #[arg(long)]
    pub start: bool,
    /// After this many results send `stop` and exit once the device confirms it.
    #[arg(value_parser = argrange::u32_in(1, 1_000_000_000), long)]
    pub count: Option<u32>,
    /// Exit after this many seconds.
    #[arg(value_parser = argrange::f64_in(0.0, 604_800.0), long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// JSON lines on stdout instead of text: one object per message.
    #[arg(long)]
    pub json: bool,
    /// Also print heartbeats.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let duration = args
        .duration
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--duration must be a non-negative number of seconds")?;
    // Differs per run, so a restarted simulator's commands are not taken for re-sends.
    let first_command_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u16);
    let opts = SimOptions {
        json: args.json,
        verbose: args.verbose,
        start: args.start,
        count: args.count,
        duration,
        first_command_id,
    };

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = std::io::stdout().lock();

    let summary = if args.pty {
        let (mut master, slave) = serial::pty_pair().context("creating a pseudo-terminal pair")?;
        let path = serial::port_name(&slave).context("the pseudo terminal has no path")?;
        if args.json {
            println!("{}", serde_json::json!({ "event": "pty", "path": path }));
        } else {
            println!("pty      {path}");
        }
        eprintln!("cart-sim: point the device at {path}; {}", sim::INPUT_HELP);
        // `slave` stays open so the line survives the device closing and reopening it.
        let summary = sim::run(&mut master, &rx, &mut out, &opts);
        drop(slave);
        summary
    } else {
        let path = args.port.context("--port or --pty is required")?;
        let mut port = serial::open(&path, args.baud).with_context(|| format!("opening {path}"))?;
        eprintln!(
            "cart-sim: on {path} at {} baud; {}",
            args.baud,
            sim::INPUT_HELP
        );
        sim::run(&mut port, &rx, &mut out, &opts)
    }
    .context("serial line failed")?;
    log::info!(
        "cart-sim: {} results, {} commands confirmed",
        summary.results,
        summary.commands_done
    );
    Ok(())
}
