//! The cart-controller simulator behind `renalscan cart-sim` (feature `std`): a
//! [`Controller`] on a port, commands from text lines, events printed as text or JSON.
//! Here rather than in the CLI so that it is tested with the rest of the crate.

use std::format;
use std::io::{self, Read, Write};
use std::string::String;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};
use std::vec::Vec;
use std::writeln;

use crate::cart::{Controller, ControllerConfig, Event};
use crate::msg::{flags, Command, ExamContext, JournalHealth, State};
use crate::serial::{millis_since, service_controller};

/// What the simulator is asked to do.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Print heartbeats too.
    pub verbose: bool,
    /// Send StartScreening at once.
    pub start: bool,
    /// After this many results send StopScreening and exit once it is confirmed.
    pub count: Option<u32>,
    /// Exit after this long.
    pub duration: Option<Duration>,
    /// First command id; varies per run by default so a restarted simulator's
    /// commands are not mistaken for re-sent copies.
    pub first_command_id: u16,
}

/// One line typed by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Command(Command),
    /// Print the last status and link counters.
    Status,
    Quit,
}

/// Words the simulator understands, for its help line.
pub const INPUT_HELP: &str = "commands: start | stop | capture | \
    exam [patient=ID] [accession=A] [operator=O] [side=left|right] | end-exam | status | quit";

/// An `exam` line's fields (case kept: identifiers are case-sensitive).
fn parse_exam<'a>(fields: impl Iterator<Item = &'a str>) -> Result<Command, String> {
    let (mut patient, mut accession, mut operator, mut side) = ("", "", "", None);
    for f in fields {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("exam field {f:?} is not key=value; {INPUT_HELP}"))?;
        match k.to_ascii_lowercase().as_str() {
            "patient" => patient = v,
            "accession" => accession = v,
            "operator" => operator = v,
            "side" => {
                side = Some(match v.to_ascii_lowercase().as_str() {
                    "left" | "l" => contract::Side::Left,
                    "right" | "r" => contract::Side::Right,
                    _ => return Err(format!("side {v:?} is neither left nor right")),
                })
            }
            _ => return Err(format!("unknown exam field {k:?}; {INPUT_HELP}")),
        }
    }
    ExamContext::new(patient, accession, operator, side)
        .map(Command::StartExam)
        .map_err(|e| format!("{e}"))
}

/// Parses one input line; `Ok(None)` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<Input>, String> {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("").to_ascii_lowercase();
    Ok(Some(match first.as_str() {
        "" => return Ok(None),
        "exam" => Input::Command(parse_exam(words)?),
        "end-exam" => Input::Command(Command::EndExam),
        "start" | "s" => Input::Command(Command::StartScreening),
        "stop" | "x" => Input::Command(Command::StopScreening),
        "capture" | "c" => Input::Command(Command::Capture),
        "status" | "?" => Input::Status,
        "quit" | "q" | "exit" => Input::Quit,
        other => return Err(format!("unknown command {other:?}; {INPUT_HELP}")),
    }))
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Idle => "idle",
        State::Screening => "screening",
        State::NoSignal => "no-signal",
        State::Fault => "fault",
    }
}

fn journal_name(j: JournalHealth) -> &'static str {
    match j {
        JournalHealth::Ok => "ok",
        JournalHealth::Degraded => "degraded",
        JournalHealth::Failed => "failed",
        JournalHealth::Disabled => "disabled",
    }
}

/// One line for an event, or `None` for events not shown (heartbeats unless verbose).
pub fn format_event(e: &Event, json: bool, verbose: bool) -> Option<String> {
    if matches!(e, Event::Heartbeat(_)) && !verbose {
        return None;
    }
    if json {
        return serde_json::to_string(e).ok();
    }
    Some(match e {
        Event::Hello(h) => format!(
            "hello    device={} model={} {} protocol={}..{} session={:#010x}",
            h.device_id,
            h.model_id,
            h.model_version,
            h.min_protocol_version,
            h.protocol_version,
            h.session
        ),
        Event::Result(r) => {
            let mut f = String::new();
            for (bit, name) in [
                (flags::ABNORMAL, "abnormal"),
                (flags::CAPTURE, "capture"),
                (flags::LOW_QUALITY, "low-quality"),
                (flags::AGGREGATED, "aggregated"),
                (flags::NOT_JOURNALED, "not-journaled"),
            ] {
                if r.flags & bit != 0 {
                    f.push(' ');
                    f.push_str(name);
                }
            }
            format!(
                "result   #{} t={}ms p(abnormal)={:.3} {} ({:.3}){}",
                r.seq,
                r.timestamp_ms,
                r.p_abnormal,
                r.class.label(),
                r.confidence,
                f
            )
        }
        Event::Pairing(p) => format!(
            "pairing  operator view codes: operator {} viewer {}",
            p.operator, p.viewer
        ),
        Event::Status(s) => format!(
            "status   {} fps={:.1} latency={:.0}ms frames-dropped={} results-dropped={} \
             pending={} journal={}",
            state_name(s.state),
            s.fps,
            s.latency_ms,
            s.frames_dropped,
            s.results_dropped,
            s.results_pending,
            journal_name(s.journal)
        ),
        Event::Heartbeat(h) => format!("heartbeat uptime={}ms", h.uptime_ms),
        Event::CommandDone { command, id } => format!("done     {command:?} (id {})", id.0),
        Event::Exam(x) => match &x.open {
            Some(id) => format!("exam     open {id}"),
            None => "exam     none open".into(),
        },
        Event::Outbox(o) => format!(
            "outbox   {} waiting for the PACS, {} quarantined{}",
            o.pending,
            o.quarantined,
            if o.held {
                ", HELD: check the PACS configuration"
            } else {
                ""
            }
        ),
        Event::CommandUnsupported { command, id } => format!(
            "error    {command:?} (id {}) not sent: the device's protocol is too old; \
             update the device",
            id.0
        ),
        Event::Incompatible {
            device_min,
            device_max,
        } => format!(
            "error    device speaks protocol {device_min}..{device_max}, we speak {}..{}",
            crate::frame::MIN_PROTOCOL_VERSION,
            crate::frame::PROTOCOL_VERSION
        ),
    })
}

/// What a run did, for scripts and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimSummary {
    pub results: u32,
    pub commands_done: u32,
}

/// Runs the simulator until `quit`, `count` or `duration`. `input` carries typed lines
/// (a closed channel just means no more input); `out` gets one line per event.
pub fn run<P: Read + Write>(
    port: &mut P,
    input: &Receiver<String>,
    out: &mut impl Write,
    opts: &SimOptions,
) -> io::Result<SimSummary> {
    let start = Instant::now();
    let clock = || millis_since(start);
    let mut ctl = Controller::new(ControllerConfig::default(), opts.first_command_id);
    let mut summary = SimSummary::default();
    let mut input_open = true;
    let mut link_up = false;
    // Set once `count` is reached: the stop command's id and when it was sent.
    let mut stopping: Option<(crate::msg::CommandId, Instant)> = None;
    let mut stop_done = false;

    let queue = |ctl: &mut Controller, out: &mut dyn Write, cmd: Command| match ctl
        .send_command(cmd.clone())
    {
        Ok(id) => writeln!(out, "sent     {cmd:?} (id {})", id.0).map(|_| Some(id)),
        Err(e) => writeln!(out, "error    {e}").map(|_| None),
    };
    if opts.start {
        queue(&mut ctl, out, Command::StartScreening)?;
    }

    loop {
        let mut lines = Vec::new();
        service_controller(&mut ctl, port, clock, |e| {
            match &e {
                Event::Result(_) => summary.results += 1,
                Event::CommandDone { id, .. } => {
                    summary.commands_done += 1;
                    stop_done |= stopping.is_some_and(|(s, _)| s == *id);
                }
                _ => {}
            }
            if let Some(l) = format_event(&e, opts.json, opts.verbose) {
                lines.push(l);
            }
        })?;
        for l in lines {
            writeln!(out, "{l}")?;
        }
        let up = ctl.link_up(clock());
        if up != link_up {
            link_up = up;
            writeln!(out, "link     {}", if up { "up" } else { "down" })?;
        }

        while input_open {
            match input.try_recv() {
                Ok(line) => match parse_line(&line) {
                    Ok(None) => {}
                    Ok(Some(Input::Command(c))) => {
                        queue(&mut ctl, out, c)?;
                    }
                    Ok(Some(Input::Status)) => {
                        match ctl
                            .last_status()
                            .and_then(|s| format_event(&Event::Status(*s), opts.json, opts.verbose))
                        {
                            Some(l) => writeln!(out, "{l}")?,
                            None => writeln!(out, "status   (none received yet)")?,
                        }
                        writeln!(
                            out,
                            "link     {} {:?} {:?}",
                            if link_up { "up" } else { "down" },
                            ctl.stats(),
                            ctl.decode_stats()
                        )?;
                    }
                    Ok(Some(Input::Quit)) => return Ok(summary),
                    Err(e) => writeln!(out, "error    {e}")?,
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => input_open = false,
            }
        }
        out.flush()?;

        if let Some(n) = opts.count {
            if summary.results >= n && stopping.is_none() {
                if let Some(id) = queue(&mut ctl, out, Command::StopScreening)? {
                    stopping = Some((id, Instant::now()));
                }
            }
        }
        if let Some((_, since)) = stopping {
            // Give up waiting for the confirmation after a few seconds.
            if stop_done || since.elapsed() > Duration::from_secs(5) {
                return Ok(summary);
            }
        }
        if opts.duration.is_some_and(|d| start.elapsed() >= d) {
            return Ok(summary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Class, ResultMsg};

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_line(" Start \n"),
            Ok(Some(Input::Command(Command::StartScreening)))
        );
        assert_eq!(
            parse_line("capture"),
            Ok(Some(Input::Command(Command::Capture)))
        );
        assert_eq!(parse_line("q"), Ok(Some(Input::Quit)));
        assert_eq!(parse_line("  "), Ok(None));
        assert!(parse_line("launch").is_err());
    }

    #[test]
    fn parses_exams_keeping_case() {
        let want = ExamContext::new("Mrn-42", "", "", Some(contract::Side::Left)).unwrap();
        assert_eq!(
            parse_line("EXAM patient=Mrn-42 side=Left"),
            Ok(Some(Input::Command(Command::StartExam(want))))
        );
        assert_eq!(
            parse_line("end-exam"),
            Ok(Some(Input::Command(Command::EndExam)))
        );
        assert!(parse_line("exam side=up").is_err());
        assert!(parse_line("exam mrn").is_err());
        let long = format!("exam patient={}", "9".repeat(65));
        assert_eq!(
            parse_line(&long),
            Err("patient id is longer than 64 bytes".into())
        );
    }

    #[test]
    fn formats_results() {
        let r = Event::Result(ResultMsg {
            session: 1,
            seq: 3,
            timestamp_ms: 10,
            p_abnormal: 0.9,
            class: Class::Stone,
            confidence: 0.7,
            flags: flags::ABNORMAL | flags::CAPTURE,
        });
        let text = format_event(&r, false, false).unwrap();
        assert!(text.contains("#3") && text.contains("stone") && text.contains("abnormal capture"));
        let json: serde_json::Value =
            serde_json::from_str(&format_event(&r, true, false).unwrap()).unwrap();
        assert_eq!(json["event"], "result");
        assert_eq!(json["class"], "Stone");
        let hb = Event::Heartbeat(crate::msg::Heartbeat {
            session: 1,
            uptime_ms: 5,
            last_command: None,
        });
        assert_eq!(format_event(&hb, false, false), None);
        assert!(format_event(&hb, true, true).is_some());
    }
}
