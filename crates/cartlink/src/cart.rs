//! Cart-controller side of the link: a sans-I/O state machine, usable on the cart's
//! microcontroller and by `renalscan cart-sim`.
//!
//! It acknowledges every result it receives (also re-sent copies: the first ack may have
//! been lost), reports each result to the application once, and re-sends each command
//! until the device echoes its id in a Status or Heartbeat.

use crate::frame::{self, DecodeStats, FrameBuf, FrameDecoder};
use crate::msg::*;
use crate::seq::SeqWindow;

/// Timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Re-send an unconfirmed command after this long.
    pub resend_command_after_ms: u64,
    /// The device counts as gone when silent for this long.
    pub peer_timeout_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            resend_command_after_ms: 300,
            peer_timeout_ms: 3_000,
        }
    }
}

/// What the controller reports to the cart application.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The device introduced itself (at start-up, periodically, or after silence).
    Hello(Hello),
    /// A result, reported once however often it was re-sent.
    Result(ResultMsg),
    Status(Status),
    Heartbeat(Heartbeat),
    /// The device confirmed it executed this command.
    CommandDone {
        command: Command,
        id: CommandId,
    },
    /// The device speaks protocol versions we do not; results are still acknowledged.
    Incompatible {
        device_min: u8,
        device_max: u8,
    },
    /// The operator view's pairing codes, for the display.
    Pairing(Pairing),
    /// The device's open exam changed (protocol 2 devices).
    Exam(ExamState),
    /// What waits for the hospital PACS changed (protocol 2 devices with a PACS).
    Outbox(OutboxState),
    /// The device speaks too old a protocol for this command; it was not sent.
    CommandUnsupported {
        command: Command,
        id: CommandId,
    },
}

/// Counters for displays and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControllerStats {
    pub results: u32,
    pub results_duplicate: u32,
    pub acks_sent: u32,
    /// Acks dropped because the ack queue was full (the device re-sends; no harm).
    pub acks_dropped: u32,
    pub commands_sent: u32,
    pub commands_resent: u32,
    pub commands_done: u32,
    /// Intact frames that only the cart sends (loopback or crossed wiring).
    pub unexpected: u32,
}

/// The command queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl core::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("command queue full")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for QueueFull {}

#[derive(Debug, Clone)]
struct Outstanding {
    cmd: Command,
    id: CommandId,
    last_sent_ms: Option<u64>,
}

/// Cart side of the link.
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: ControllerConfig,
    decoder: FrameDecoder,
    session: Option<u32>,
    seen: SeqWindow,
    acks: heapless::Deque<Ack, 16>,
    /// Commands are sent one at a time, in order.
    commands: heapless::Deque<Outstanding, 4>,
    next_id: u16,
    last_rx_ms: Option<u64>,
    device: Option<Hello>,
    last_status: Option<Status>,
    stats: ControllerStats,
    pairing: Option<Pairing>,
    exam: Option<ExamState>,
    outbox: Option<OutboxState>,
}

impl Controller {
    /// `first_command_id` should differ between cart boots (a timer or noise reading
    /// will do): the device ignores a command whose id equals the last one it ran.
    pub fn new(cfg: ControllerConfig, first_command_id: u16) -> Self {
        Self {
            cfg,
            decoder: FrameDecoder::new(),
            session: None,
            seen: SeqWindow::new(),
            acks: heapless::Deque::new(),
            commands: heapless::Deque::new(),
            next_id: first_command_id,
            last_rx_ms: None,
            device: None,
            last_status: None,
            stats: ControllerStats::default(),
            pairing: None,
            exam: None,
            outbox: None,
        }
    }

    /// The device's PACS outbox, once a protocol-2 device with a PACS has said.
    pub fn outbox(&self) -> Option<&OutboxState> {
        self.outbox.as_ref()
    }

    /// The device's open exam, once a protocol-2 device has said.
    pub fn exam(&self) -> Option<&ExamState> {
        self.exam.as_ref()
    }

    /// The protocol version frames go out in: the newest both sides speak, the oldest we
    /// speak until the device's Hello says.
    pub fn peer_version(&self) -> u8 {
        self.device
            .as_ref()
            .map_or(frame::MIN_PROTOCOL_VERSION, |h| {
                h.protocol_version
                    .clamp(frame::MIN_PROTOCOL_VERSION, frame::PROTOCOL_VERSION)
            })
    }

    /// The pairing codes to show, once the device has sent them.
    pub fn pairing(&self) -> Option<&Pairing> {
        self.pairing.as_ref()
    }

    /// Queues a command; it is sent (and re-sent) by [`Self::poll_transmit`].
    pub fn send_command(&mut self, cmd: Command) -> Result<CommandId, QueueFull> {
        let id = CommandId(self.next_id);
        self.commands
            .push_back(Outstanding {
                cmd,
                id,
                last_sent_ms: None,
            })
            .map_err(|_| QueueFull)?;
        self.next_id = self.next_id.wrapping_add(1);
        Ok(id)
    }

    /// Handles bytes from the device, reporting what happened through `on_event`.
    pub fn receive(&mut self, data: &[u8], now_ms: u64, mut on_event: impl FnMut(Event)) {
        let mut decoder = core::mem::take(&mut self.decoder);
        decoder.feed(data, |r| {
            if let Ok(msg) = r {
                self.handle(msg, now_ms, &mut on_event);
            }
        });
        self.decoder = decoder;
    }

    fn handle(&mut self, msg: Message, now_ms: u64, on_event: &mut impl FnMut(Event)) {
        self.last_rx_ms = Some(now_ms);
        match msg {
            Message::Hello(h) => {
                self.enter_session(h.session);
                if !(h.min_protocol_version..=h.protocol_version).contains(&frame::PROTOCOL_VERSION)
                {
                    on_event(Event::Incompatible {
                        device_min: h.min_protocol_version,
                        device_max: h.protocol_version,
                    });
                }
                self.device = Some(h.clone());
                on_event(Event::Hello(h));
            }
            Message::Result(r) => {
                self.enter_session(r.session);
                let ack = Ack {
                    session: r.session,
                    seq: r.seq,
                };
                if !self.acks.iter().any(|a| *a == ack) {
                    if self.acks.is_full() {
                        self.acks.pop_front();
                        self.stats.acks_dropped = self.stats.acks_dropped.saturating_add(1);
                    }
                    let _ = self.acks.push_back(ack);
                }
                if self.seen.insert(r.seq) {
                    self.stats.results = self.stats.results.saturating_add(1);
                    on_event(Event::Result(r));
                } else {
                    self.stats.results_duplicate = self.stats.results_duplicate.saturating_add(1);
                }
            }
            Message::Status(s) => {
                self.confirm(s.last_command, on_event);
                self.last_status = Some(s);
                on_event(Event::Status(s));
            }
            Message::Heartbeat(h) => {
                self.enter_session(h.session);
                self.confirm(h.last_command, on_event);
                on_event(Event::Heartbeat(h));
            }
            Message::Pairing(p) => {
                if self.pairing.as_ref() != Some(&p) {
                    self.pairing = Some(p.clone());
                    on_event(Event::Pairing(p));
                }
            }
            Message::Exam(e) => {
                if self.exam.as_ref() != Some(&e) {
                    self.exam = Some(e.clone());
                    on_event(Event::Exam(e));
                }
            }
            Message::Outbox(o) => {
                if self.outbox != Some(o) {
                    self.outbox = Some(o);
                    on_event(Event::Outbox(o));
                }
            }
            _ => self.stats.unexpected = self.stats.unexpected.saturating_add(1),
        }
    }

    /// A new session means the device restarted: its sequence numbers start afresh.
    fn enter_session(&mut self, session: u32) {
        if self.session != Some(session) {
            if self.session.is_some() {
                log::info!("cartlink: device session changed to {session:#010x}");
            }
            self.session = Some(session);
            self.seen.reset();
            self.acks.clear();
        }
    }

    fn confirm(&mut self, last: Option<CommandId>, on_event: &mut impl FnMut(Event)) {
        let Some(front) = self.commands.front().cloned() else {
            return;
        };
        if front.last_sent_ms.is_some() && last == Some(front.id) {
            self.commands.pop_front();
            self.stats.commands_done = self.stats.commands_done.saturating_add(1);
            on_event(Event::CommandDone {
                command: front.cmd,
                id: front.id,
            });
        }
    }

    /// Writes the next frame that is due into `buf` and returns its length, or `None`.
    /// Acks go first: they stop the device from re-sending.
    ///
    /// A command newer than the device's protocol waits until its Hello is heard, then is
    /// dropped and reported as [`Event::CommandUnsupported`] if the device is too old.
    pub fn poll_transmit(&mut self, now_ms: u64, buf: &mut FrameBuf) -> Option<usize> {
        self.poll_transmit_with(now_ms, buf, |_| {})
    }

    /// [`Self::poll_transmit`], reporting refused commands through `on_event`.
    pub fn poll_transmit_with(
        &mut self,
        now_ms: u64,
        buf: &mut FrameBuf,
        mut on_event: impl FnMut(Event),
    ) -> Option<usize> {
        let version = self.peer_version();
        while let Some(front) = self.commands.front() {
            if front.cmd.min_version() <= version {
                break;
            }
            if self.device.is_none() {
                // Not yet known whether the device speaks it: acks may still go.
                break;
            }
            if let Some(o) = self.commands.pop_front() {
                log::warn!(
                    "cartlink: device speaks protocol {version}, {:?} needs {}; not sent",
                    o.cmd,
                    o.cmd.min_version()
                );
                on_event(Event::CommandUnsupported {
                    command: o.cmd,
                    id: o.id,
                });
            }
        }
        let msg = if let Some(ack) = self.acks.pop_front() {
            self.stats.acks_sent = self.stats.acks_sent.saturating_add(1);
            Message::Ack(ack)
        } else {
            let resend = self.cfg.resend_command_after_ms;
            let front = self.commands.front_mut()?;
            if front.cmd.min_version() > version {
                return None;
            }
            match front.last_sent_ms {
                None => self.stats.commands_sent = self.stats.commands_sent.saturating_add(1),
                Some(t) if now_ms.saturating_sub(t) >= resend => {
                    self.stats.commands_resent = self.stats.commands_resent.saturating_add(1)
                }
                Some(_) => return None,
            }
            front.last_sent_ms = Some(now_ms);
            front.cmd.to_message(front.id)
        };
        frame::encode_as(&msg, version, buf).ok()
    }

    /// Whether the device was heard within [`ControllerConfig::peer_timeout_ms`].
    pub fn link_up(&self, now_ms: u64) -> bool {
        self.last_rx_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.cfg.peer_timeout_ms)
    }

    /// The device's last Hello.
    pub fn device(&self) -> Option<&Hello> {
        self.device.as_ref()
    }

    pub fn last_status(&self) -> Option<&Status> {
        self.last_status.as_ref()
    }

    /// Commands not yet confirmed.
    pub fn commands_pending(&self) -> usize {
        self.commands.len()
    }

    pub fn stats(&self) -> &ControllerStats {
        &self.stats
    }

    pub fn decode_stats(&self) -> &DecodeStats {
        self.decoder.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Classification, Identity, Link, LinkConfig};
    use crate::frame::MAX_WIRE_FRAME;
    use std::vec::Vec;

    const ID: Identity<'static> = Identity {
        device_id: "edge",
        model_id: "m",
        model_version: "1",
    };

    /// Runs both sides for `ms` milliseconds in 10 ms steps; each frame is lost with
    /// probability `loss_pct` percent (deterministic pseudo-random).
    fn run(
        link: &mut Link,
        cart: &mut Controller,
        t: &mut u64,
        ms: u64,
        loss_pct: u64,
        events: &mut Vec<Event>,
        commands: &mut Vec<Command>,
    ) {
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ *t;
        let mut lost = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % 100 < loss_pct
        };
        let end = *t + ms;
        while *t < end {
            while let Some(n) = link.poll_transmit(*t, &mut buf) {
                if !lost() {
                    cart.receive(&buf[..n], *t, |e| events.push(e));
                }
            }
            while let Some(n) = cart.poll_transmit_with(*t, &mut buf, |e| events.push(e)) {
                if !lost() {
                    link.receive(&buf[..n], *t, |c| commands.push(c));
                }
            }
            *t += 10;
        }
    }

    fn classification(i: u64) -> Classification {
        Classification {
            timestamp_ms: i,
            p_abnormal: 0.1,
            class: Class::Stone,
            confidence: 0.9,
            flags: 0,
        }
    }

    fn results(events: &[Event]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Result(r) => Some(r.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lossy_exchange_delivers_each_result_once() {
        for loss_pct in [0, 10, 30, 50] {
            let mut link: Link = Link::new(LinkConfig::default(), ID, 7, 0);
            let mut cart = Controller::new(ControllerConfig::default(), 100);
            let (mut t, mut ev, mut cmds) = (0, Vec::new(), Vec::new());
            cart.send_command(Command::StartScreening).unwrap();
            for i in 0..10 {
                link.push_result(classification(i));
                run(
                    &mut link, &mut cart, &mut t, 50, loss_pct, &mut ev, &mut cmds,
                );
            }
            cart.send_command(Command::StopScreening).unwrap();
            run(
                &mut link, &mut cart, &mut t, 20_000, loss_pct, &mut ev, &mut cmds,
            );
            // Exactly once; a lost frame's re-send may arrive after later results.
            let mut got = results(&ev);
            got.sort_unstable();
            assert_eq!(got, (0..10).collect::<Vec<_>>(), "loss {loss_pct}%");
            assert_eq!(link.pending(), 0, "loss {loss_pct}%");
            assert_eq!(cmds, [Command::StartScreening, Command::StopScreening]);
            assert_eq!(cart.commands_pending(), 0);
            assert!(ev
                .iter()
                .any(|e| matches!(e, Event::Hello(h) if h.session == 7)));
        }
    }

    #[test]
    fn device_restart_starts_a_new_session() {
        let mut cart = Controller::new(ControllerConfig::default(), 1);
        let (mut t, mut ev, mut cmds) = (0, Vec::new(), Vec::new());
        let mut link: Link = Link::new(LinkConfig::default(), ID, 1, 0);
        link.push_result(classification(0));
        run(&mut link, &mut cart, &mut t, 100, 0, &mut ev, &mut cmds);
        let mut link: Link = Link::new(LinkConfig::default(), ID, 2, t);
        link.push_result(classification(1));
        run(&mut link, &mut cart, &mut t, 100, 0, &mut ev, &mut cmds);
        assert_eq!(results(&ev), [0, 0]);
        assert_eq!(link.pending(), 0);
    }

    #[test]
    fn pairing_codes_reach_the_cart_once_and_again_after_it_restarts() {
        let mut link = Link::new(LinkConfig::default(), ID, 7, 0);
        link.set_pairing("12345678", "87654321");
        let mut cart = Controller::new(ControllerConfig::default(), 1);
        let (mut t, mut events, mut commands) = (0, Vec::new(), Vec::new());
        run(
            &mut link,
            &mut cart,
            &mut t,
            5_000,
            0,
            &mut events,
            &mut commands,
        );
        let shown: Vec<&Pairing> = events
            .iter()
            .filter_map(|e| match e {
                Event::Pairing(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(shown.len(), 1, "{events:?}");
        assert_eq!(
            (shown[0].operator.as_str(), shown[0].viewer.as_str()),
            ("12345678", "87654321")
        );
        assert_eq!(cart.pairing().map(|p| p.viewer.as_str()), Some("87654321"));
        // A cart that restarts hears them with the next Hello.
        let mut fresh = Controller::new(ControllerConfig::default(), 9);
        let mut ev2 = Vec::new();
        run(
            &mut link,
            &mut fresh,
            &mut t,
            12_000,
            0,
            &mut ev2,
            &mut commands,
        );
        assert!(fresh.pairing().is_some());
    }

    #[test]
    fn command_queue_is_bounded() {
        let mut cart = Controller::new(ControllerConfig::default(), 0);
        for _ in 0..4 {
            cart.send_command(Command::Capture).unwrap();
        }
        assert_eq!(cart.send_command(Command::Capture), Err(QueueFull));
    }

    #[test]
    fn incompatible_device_is_reported() {
        let mut cart = Controller::new(ControllerConfig::default(), 0);
        let hello = Message::Hello(Hello {
            protocol_version: frame::PROTOCOL_VERSION,
            min_protocol_version: frame::PROTOCOL_VERSION + 1,
            session: 0,
            device_id: "x".try_into().unwrap(),
            model_id: "".try_into().unwrap(),
            model_version: "".try_into().unwrap(),
        });
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = frame::encode(&hello, &mut buf).unwrap();
        let mut ev = Vec::new();
        cart.receive(&buf[..n], 0, |e| ev.push(e));
        assert!(matches!(ev[0], Event::Incompatible { .. }));
    }

    fn context() -> ExamContext {
        ExamContext::new("MRN-0042", "ACC7", "nurse-3", Some(contract::Side::Left)).unwrap()
    }

    fn exams(events: &[Event]) -> Vec<Option<&str>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Exam(x) => Some(x.open.as_deref()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn exams_start_and_end_from_the_cart_over_a_lossy_line() {
        let mut link: Link = Link::new(LinkConfig::default(), ID, 3, 0);
        let mut cart = Controller::new(ControllerConfig::default(), 40);
        let (mut t, mut ev, mut cmds) = (0, Vec::new(), Vec::new());
        cart.send_command(Command::StartExam(context())).unwrap();
        run(&mut link, &mut cart, &mut t, 3_000, 20, &mut ev, &mut cmds);
        assert_eq!(cmds, [Command::StartExam(context())]);
        assert_eq!(cart.peer_version(), 2);
        assert_eq!(link.peer_version(), 2);
        link.set_exam(Some("s-20261204T101500Z-00af"));
        cart.send_command(Command::EndExam).unwrap();
        run(&mut link, &mut cart, &mut t, 3_000, 20, &mut ev, &mut cmds);
        link.set_exam(None);
        link.set_outbox(OutboxState {
            pending: 2,
            quarantined: 0,
            held: true,
        });
        run(&mut link, &mut cart, &mut t, 3_000, 20, &mut ev, &mut cmds);
        assert_eq!(
            cart.outbox(),
            Some(&OutboxState {
                pending: 2,
                quarantined: 0,
                held: true
            })
        );
        assert_eq!(cmds.last(), Some(&Command::EndExam));
        assert_eq!(cmds.len(), 2, "each command runs once");
        assert_eq!(
            exams(&ev),
            [None, Some("s-20261204T101500Z-00af"), None],
            "{ev:?}"
        );
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::CommandDone {
                command: Command::EndExam,
                ..
            }
        )));
    }

    #[test]
    fn identifiers_stay_out_of_debug_and_event_logs() {
        let cmd = Command::StartExam(context());
        let debug = std::format!("{cmd:?}");
        assert!(
            !debug.contains("MRN-0042") && !debug.contains("ACC7"),
            "{debug}"
        );
        let json = serde_json::to_string(&Event::CommandDone {
            command: cmd,
            id: CommandId(1),
        })
        .unwrap();
        assert!(
            !json.contains("MRN-0042") && json.contains("StartExam"),
            "{json}"
        );
    }

    #[test]
    fn too_long_identifiers_are_refused_not_truncated() {
        let long = "9".repeat(PATIENT_ID_LEN + 1);
        assert_eq!(
            ExamContext::new(&long, "", "", None),
            Err(FieldTooLong {
                field: "patient id",
                max: PATIENT_ID_LEN
            })
        );
        let widest = ExamContext::new(
            &"é".repeat(PATIENT_ID_LEN / 2),
            &"A".repeat(ACCESSION_LEN),
            &"o".repeat(OPERATOR_LEN),
            Some(contract::Side::Right),
        )
        .unwrap();
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let msg = Command::StartExam(widest).to_message(CommandId(u16::MAX));
        assert!(
            frame::encode(&msg, &mut buf).is_ok(),
            "widest context fits a frame"
        );
    }

    /// Bytes as a version-1 cart (built before protocol 2) would send them.
    fn v1_frame(msg: &Message) -> Vec<u8> {
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = frame::encode_as(msg, 1, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Version byte and message of every frame in `bytes`, as a decoder sees them.
    fn frames(bytes: &[u8]) -> Vec<(u8, Message)> {
        bytes
            .split(|&b| b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| frame::decode_frame(&mut f.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_version_1_cart_is_answered_in_version_1_and_never_sees_exam_messages() {
        let mut link: Link = Link::new(LinkConfig::default(), ID, 5, 0);
        link.set_exam(Some("s-20261204T101500Z-00af"));
        link.set_outbox(OutboxState {
            pending: 3,
            quarantined: 1,
            held: false,
        });
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let mut cmds = Vec::new();
        for t in (0..12_000).step_by(10) {
            if t == 100 {
                link.receive(&v1_frame(&Message::StartScreening(CommandId(1))), t, |c| {
                    cmds.push(c)
                });
            }
            if t > 100 && t % 200 == 0 {
                link.receive(&v1_frame(&Message::Capture(CommandId(2))), t, |c| {
                    cmds.push(c)
                });
            }
            while let Some(n) = link.poll_transmit(t, &mut buf) {
                out.extend_from_slice(&buf[..n]);
            }
        }
        let seen = frames(&out);
        assert!(seen.len() > 10);
        assert!(
            seen.iter().all(|(v, m)| *v == 1 && m.min_version() == 1),
            "{seen:?}"
        );
        assert_eq!(cmds, [Command::StartScreening, Command::Capture]);
        // A version-1 decoder: the same frames, checked against the old version range.
        assert!(seen.iter().all(|(_, m)| !matches!(
            m,
            Message::Exam(_) | Message::StartExam(_) | Message::Outbox(_)
        )));
    }

    #[test]
    fn a_version_1_device_gets_no_exam_commands_and_the_cart_is_told() {
        let mut cart = Controller::new(ControllerConfig::default(), 0);
        cart.send_command(Command::StartExam(context())).unwrap();
        cart.send_command(Command::Capture).unwrap();
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let mut ev = Vec::new();
        // Before the device is heard the exam command waits; nothing goes out.
        assert!(cart
            .poll_transmit_with(0, &mut buf, |e| ev.push(e))
            .is_none());
        let old_hello = Message::Hello(Hello {
            protocol_version: 1,
            min_protocol_version: 1,
            session: 9,
            device_id: "old".try_into().unwrap(),
            model_id: "".try_into().unwrap(),
            model_version: "".try_into().unwrap(),
        });
        cart.receive(&v1_frame(&old_hello), 10, |e| ev.push(e));
        let mut out = Vec::new();
        while let Some(n) = cart.poll_transmit_with(20, &mut buf, |e| ev.push(e)) {
            out.extend_from_slice(&buf[..n]);
        }
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::CommandUnsupported {
                command: Command::StartExam(_),
                ..
            }
        )));
        let seen = frames(&out);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(matches!(seen[0], (1, Message::Capture(_))));
    }

    #[test]
    fn an_exam_message_in_a_version_1_frame_is_malformed() {
        let msg = Message::EndExam(CommandId(3));
        let mut body = [0u8; 16];
        body[0] = 1;
        let len = postcard::to_slice(&msg, &mut body[1..]).unwrap().len();
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = frame::frame_raw(&body[..1 + len], &mut buf).unwrap();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        dec.feed(&buf[..n], |r| got.push(r));
        assert_eq!(got, [Err(frame::FrameError::Malformed)]);
        assert_eq!(
            frame::encode_as(&msg, 1, &mut buf),
            Err(frame::EncodeError::Version(1))
        );
    }
}
