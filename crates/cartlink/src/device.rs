//! Device (edge runtime) side of the link: a sans-I/O state machine.
//!
//! The runtime owns the serial port and the clock; it hands received bytes to
//! [`Link::receive`], asks [`Link::poll_transmit`] for frames to write until it returns
//! `None`, and calls both at least every few tens of milliseconds so timers fire.
//! Keeping I/O out makes the same code run on Linux, on a microcontroller and in tests.

use crate::frame::{self, DecodeStats, FrameBuf, FrameDecoder};
use crate::msg::*;

/// Most unacknowledged results a [`Link`] may hold: the cart's duplicate window must cover
/// every result that can still be re-sent.
pub const MAX_PENDING: usize = crate::seq::SeqWindow::SPAN as usize;

/// Hello period while the cart is heard in an older protocol version than ours.
pub const HELLO_UNTIL_UPGRADED_MS: u64 = 1_000;

/// Timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Re-send an unacknowledged result after this long.
    pub resend_after_ms: u64,
    /// Repeat Hello this often, so a cart that restarts learns who we are. A cart that
    /// reappears after [`Self::peer_timeout_ms`] of silence gets one at once.
    pub hello_every_ms: u64,
    /// Send Status at least this often.
    pub status_every_ms: u64,
    /// Send a Heartbeat when nothing else was sent for this long.
    pub heartbeat_every_ms: u64,
    /// The cart counts as gone when silent for this long.
    pub peer_timeout_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            resend_after_ms: 500,
            hello_every_ms: 5_000,
            status_every_ms: 1_000,
            heartbeat_every_ms: 250,
            peer_timeout_ms: 3_000,
        }
    }
}

/// Who the device is, for [`Hello`]. Longer strings are truncated at a char boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    pub device_id: &'a str,
    pub model_id: &'a str,
    pub model_version: &'a str,
}

/// A classification as the runtime produces it; the link adds session and sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classification {
    pub timestamp_ms: u64,
    pub p_abnormal: f32,
    pub class: Class,
    pub confidence: f32,
    pub flags: u8,
}

/// The runtime's part of [`Status`]; the link fills in drops, pending and last command.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceStatus {
    pub state: State,
    pub fps: f32,
    pub latency_ms: f32,
    pub frames_dropped: u32,
    pub journal: JournalHealth,
}

impl Default for DeviceStatus {
    fn default() -> Self {
        Self {
            state: State::Idle,
            fps: 0.0,
            latency_ms: 0.0,
            frames_dropped: 0,
            journal: JournalHealth::Disabled,
        }
    }
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub results_queued: u32,
    pub results_sent: u32,
    pub results_resent: u32,
    pub results_acked: u32,
    /// Results dropped unacknowledged: the oldest, when `N` newer ones followed, or a new
    /// screening result that would have pushed an unacknowledged capture out of the window.
    pub results_dropped: u32,
    /// Acks for results no longer pending (duplicates, other sessions).
    pub acks_stale: u32,
    pub commands: u32,
    pub commands_duplicate: u32,
    /// Intact frames that only the device sends (loopback or crossed wiring).
    pub unexpected: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    msg: ResultMsg,
    last_sent_ms: Option<u64>,
}

impl Pending {
    fn is_capture(&self) -> bool {
        self.msg.flags & crate::flags::CAPTURE != 0
    }
}

/// Device side of the link. Keeps the `N` (1..=[`MAX_PENDING`], checked at compile time)
/// most recent results until each is acknowledged.
#[derive(Debug, Clone)]
pub struct Link<const N: usize = 16> {
    cfg: LinkConfig,
    hello: Hello,
    started_ms: u64,
    pending: heapless::Vec<Pending, N>,
    next_seq: u32,
    status: DeviceStatus,
    /// Something the cart should hear about now (state change, command, drop).
    status_due: bool,
    last_command: Option<CommandId>,
    decoder: FrameDecoder,
    last_rx_ms: Option<u64>,
    last_tx_ms: Option<u64>,
    last_hello_ms: Option<u64>,
    last_status_ms: Option<u64>,
    stats: LinkStats,
    /// The operator view's pairing codes, sent after every Hello.
    pairing: Option<Pairing>,
    pairing_due: bool,
    /// The open exam, sent when it changes and after every Hello, to carts that speak
    /// protocol 2.
    exam: ExamState,
    exam_due: bool,
    /// The PACS outbox, when the runtime has one; same rules as the exam.
    outbox: Option<OutboxState>,
    outbox_due: bool,
}

fn truncated<const L: usize>(s: &str) -> heapless::String<L> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

fn elapsed(now: u64, since: Option<u64>, period: u64) -> bool {
    since.is_none_or(|t| now.saturating_sub(t) >= period)
}

impl<const N: usize> Link<N> {
    const CAPACITY_OK: () = assert!(N > 0 && N <= MAX_PENDING, "Link capacity out of range");

    /// `session` should differ between boots (random, or a boot counter) so the cart does
    /// not mistake this boot's results for duplicates of the last one's.
    pub fn new(cfg: LinkConfig, id: Identity<'_>, session: u32, now_ms: u64) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_OK;
        Self {
            cfg,
            hello: Hello {
                protocol_version: frame::PROTOCOL_VERSION,
                min_protocol_version: frame::MIN_PROTOCOL_VERSION,
                session,
                device_id: truncated(id.device_id),
                model_id: truncated(id.model_id),
                model_version: truncated(id.model_version),
            },
            started_ms: now_ms,
            pending: heapless::Vec::new(),
            next_seq: 0,
            status: DeviceStatus::default(),
            status_due: true,
            last_command: None,
            decoder: FrameDecoder::new(),
            last_rx_ms: None,
            last_tx_ms: None,
            last_hello_ms: None,
            last_status_ms: None,
            stats: LinkStats::default(),
            pairing: None,
            pairing_due: false,
            exam: ExamState { open: None },
            exam_due: false,
            outbox: None,
            outbox_due: false,
        }
    }

    /// Tells the cart what waits for the hospital PACS.
    pub fn set_outbox(&mut self, state: OutboxState) {
        if self.outbox != Some(state) {
            self.outbox = Some(state);
            self.outbox_due = true;
        }
    }

    /// Tells the cart which exam is open (`None`: none). An id longer than
    /// [`EXAM_ID_LEN`] is sent truncated; the runtime's ids are shorter.
    pub fn set_exam(&mut self, open: Option<&str>) {
        let state = ExamState {
            open: open.map(truncated),
        };
        if state != self.exam {
            self.exam = state;
            self.exam_due = true;
        }
    }

    /// The protocol version frames go out in: the cart's, as its last frame showed, and
    /// the oldest we speak until it is heard (a version-1 cart discards newer frames).
    pub fn peer_version(&self) -> u8 {
        self.decoder
            .peer_version()
            .unwrap_or(frame::MIN_PROTOCOL_VERSION)
            .clamp(frame::MIN_PROTOCOL_VERSION, frame::PROTOCOL_VERSION)
    }

    /// Shows these pairing codes on the cart's display: sent now and after every Hello (a
    /// restarted cart learns them again). Carts older than the message discard it.
    pub fn set_pairing(&mut self, operator: &str, viewer: &str) {
        self.pairing = Some(Pairing {
            operator: truncated(operator),
            viewer: truncated(viewer),
        });
        self.pairing_due = true;
    }

    pub fn session(&self) -> u32 {
        self.hello.session
    }

    /// Queues a result for delivery and returns its sequence number, or `None` when this
    /// screening result was dropped to keep a capture.
    ///
    /// The link keeps the `N` most recent results until they are acknowledged. A result
    /// that falls `N` or more behind the newest is dropped unacknowledged and counted in
    /// [`Status::results_dropped`]: a fresh result matters more than a stale one, and the
    /// cart's duplicate window ([`crate::seq::SeqWindow`]) only reaches that far back.
    ///
    /// A capture ([`crate::flags::CAPTURE`]) is the exception: the clinician asked for that
    /// frame, and the next screening result repeats what the dropped ones said. While an
    /// unacknowledged capture sits at the window's edge, new screening results are dropped
    /// and counted instead, without a sequence number, so the capture stays within the
    /// cart's window and is re-sent until acknowledged. Only a newer capture pushes an
    /// older one out (`N` captures outstanding).
    pub fn push_result(&mut self, c: Classification) -> Option<u32> {
        let seq = self.next_seq;
        // `N` fits in u32: it is at most MAX_PENDING.
        let falls_out = |p: &Pending| seq.wrapping_sub(p.msg.seq) >= N as u32;
        if c.flags & crate::flags::CAPTURE == 0
            && self.pending.iter().any(|p| p.is_capture() && falls_out(p))
        {
            self.count_dropped(1);
            log::debug!("cartlink: screening result dropped to keep an unacknowledged capture");
            return None;
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        let before = self.pending.len();
        self.pending.retain(|p| !falls_out(p));
        if self.pending.is_full() {
            // Unreachable given the retain above; kept so a full buffer can never panic.
            self.pending.remove(0);
        }
        let dropped = before - self.pending.len();
        if dropped > 0 {
            self.count_dropped(dropped);
            log::warn!("cartlink: {dropped} unacknowledged result(s) dropped before {seq}");
        }
        let msg = ResultMsg {
            session: self.hello.session,
            seq,
            timestamp_ms: c.timestamp_ms,
            p_abnormal: c.p_abnormal,
            class: c.class,
            confidence: c.confidence,
            flags: c.flags,
        };
        // Cannot fail: at most N - 1 results remain.
        let _ = self.pending.push(Pending {
            msg,
            last_sent_ms: None,
        });
        self.stats.results_queued = self.stats.results_queued.saturating_add(1);
        Some(seq)
    }

    fn count_dropped(&mut self, n: usize) {
        self.stats.results_dropped = self
            .stats
            .results_dropped
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        self.status_due = true;
    }

    /// Updates the runtime's status. A change of state or journal health is sent at once;
    /// fps and latency ride on the periodic Status.
    pub fn set_status(&mut self, s: DeviceStatus) {
        if s.state != self.status.state || s.journal != self.status.journal {
            self.status_due = true;
        }
        self.status = s;
    }

    /// Handles bytes from the cart, calling `on_command` once per new command (re-sent
    /// copies are recognised by their id and not repeated).
    pub fn receive(&mut self, data: &[u8], now_ms: u64, mut on_command: impl FnMut(Command)) {
        let mut decoder = core::mem::take(&mut self.decoder);
        decoder.feed(data, |r| {
            if let Ok(msg) = r {
                self.handle(msg, now_ms, &mut on_command);
            }
        });
        self.decoder = decoder;
    }

    fn handle(&mut self, msg: Message, now_ms: u64, on_command: &mut impl FnMut(Command)) {
        if !self.peer_alive(now_ms) {
            // The cart (re)appeared: introduce ourselves before anything else.
            self.last_hello_ms = None;
        }
        self.last_rx_ms = Some(now_ms);
        if let Message::Ack(ack) = msg {
            let pos = self
                .pending
                .iter()
                .position(|p| ack.session == self.hello.session && p.msg.seq == ack.seq);
            match pos {
                Some(i) => {
                    self.pending.remove(i);
                    self.stats.results_acked = self.stats.results_acked.saturating_add(1);
                }
                None => self.stats.acks_stale = self.stats.acks_stale.saturating_add(1),
            }
        } else if let Some((cmd, id)) = Command::from_message(&msg) {
            // Echo either way, so the cart stops re-sending soon.
            self.status_due = true;
            if self.last_command == Some(id) {
                self.stats.commands_duplicate = self.stats.commands_duplicate.saturating_add(1);
            } else {
                self.last_command = Some(id);
                self.stats.commands = self.stats.commands.saturating_add(1);
                // ExamContext's Debug leaves the identifiers out.
                log::info!("cartlink: command {cmd:?} ({})", id.0);
                on_command(cmd);
            }
        } else {
            self.stats.unexpected = self.stats.unexpected.saturating_add(1);
        }
    }

    /// Writes the next frame that is due into `buf` and returns its length, or `None` when
    /// nothing is due. Call repeatedly until `None`.
    pub fn poll_transmit(&mut self, now_ms: u64, buf: &mut FrameBuf) -> Option<usize> {
        let msg = self.next_message(now_ms)?;
        self.last_tx_ms = Some(now_ms);
        match frame::encode_as(&msg, self.peer_version(), buf) {
            Ok(n) => Some(n),
            Err(e) => {
                // Unreachable with bounded fields; skip rather than wedge the link.
                log::error!("cartlink: cannot encode {msg:?}: {e}");
                None
            }
        }
    }

    fn next_message(&mut self, now: u64) -> Option<Message> {
        // A cart that is heard but still frames in an older version either is an older cart
        // or has not heard a Hello yet (exam commands wait for one): repeat it sooner.
        let hello_every = if self.peer_alive(now) && self.peer_version() < frame::PROTOCOL_VERSION {
            self.cfg.hello_every_ms.min(HELLO_UNTIL_UPGRADED_MS)
        } else {
            self.cfg.hello_every_ms
        };
        if elapsed(now, self.last_hello_ms, hello_every) {
            self.last_hello_ms = Some(now);
            self.pairing_due = self.pairing.is_some();
            self.exam_due = true;
            self.outbox_due = self.outbox.is_some();
            return Some(Message::Hello(self.hello.clone()));
        }
        if self.pairing_due {
            self.pairing_due = false;
            if let Some(p) = &self.pairing {
                return Some(Message::Pairing(p.clone()));
            }
        }
        if self.exam_due && self.peer_version() >= 2 {
            self.exam_due = false;
            return Some(Message::Exam(self.exam.clone()));
        }
        if self.outbox_due && self.peer_version() >= 2 {
            self.outbox_due = false;
            if let Some(o) = self.outbox {
                return Some(Message::Outbox(o));
            }
        }
        if self.status_due {
            return Some(self.take_status(now));
        }
        let resend = self.cfg.resend_after_ms;
        let due = |p: &Pending| elapsed(now, p.last_sent_ms, resend);
        // A due capture goes first: it is the one result that holds the window back.
        let next = (self.pending.iter())
            .position(|p| p.is_capture() && due(p))
            .or_else(|| self.pending.iter().position(due));
        if let Some(p) = next.and_then(|i| self.pending.get_mut(i)) {
            if p.last_sent_ms.is_some() {
                self.stats.results_resent = self.stats.results_resent.saturating_add(1);
            } else {
                self.stats.results_sent = self.stats.results_sent.saturating_add(1);
            }
            p.last_sent_ms = Some(now);
            return Some(Message::Result(p.msg));
        }
        if elapsed(now, self.last_status_ms, self.cfg.status_every_ms) {
            return Some(self.take_status(now));
        }
        if elapsed(now, self.last_tx_ms, self.cfg.heartbeat_every_ms) {
            return Some(Message::Heartbeat(Heartbeat {
                session: self.hello.session,
                uptime_ms: now.saturating_sub(self.started_ms),
                last_command: self.last_command,
            }));
        }
        None
    }

    fn take_status(&mut self, now: u64) -> Message {
        self.status_due = false;
        self.last_status_ms = Some(now);
        Message::Status(self.status())
    }

    /// The Status the link would send now.
    pub fn status(&self) -> Status {
        Status {
            state: self.status.state,
            fps: self.status.fps,
            latency_ms: self.status.latency_ms,
            frames_dropped: self.status.frames_dropped,
            results_dropped: self.stats.results_dropped,
            results_pending: u8::try_from(self.pending.len()).unwrap_or(u8::MAX),
            journal: self.status.journal,
            last_command: self.last_command,
        }
    }

    /// Whether the cart was heard within [`LinkConfig::peer_timeout_ms`].
    pub fn peer_alive(&self, now_ms: u64) -> bool {
        self.last_rx_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.cfg.peer_timeout_ms)
    }

    /// Results not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    pub fn decode_stats(&self) -> &DecodeStats {
        self.decoder.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameDecoder, MAX_WIRE_FRAME};

    const ID: Identity<'static> = Identity {
        device_id: "edge-01",
        model_id: "renal-resnet50",
        model_version: "1.0.0",
    };

    fn result(i: u64) -> Classification {
        Classification {
            timestamp_ms: i,
            p_abnormal: 0.5,
            class: Class::Normal,
            confidence: 0.5,
            flags: 0,
        }
    }

    /// Everything the link sends at `now`, decoded.
    fn drain<const N: usize>(link: &mut Link<N>, now: u64) -> std::vec::Vec<Message> {
        let mut out = std::vec::Vec::new();
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let mut dec = FrameDecoder::new();
        while let Some(n) = link.poll_transmit(now, &mut buf) {
            dec.feed(&buf[..n], |r| out.push(r.unwrap()));
            assert!(out.len() < 1000, "link never quiesces");
        }
        out
    }

    fn send<const N: usize>(link: &mut Link<N>, msg: &Message, now: u64) -> std::vec::Vec<Command> {
        let mut buf = [0u8; MAX_WIRE_FRAME];
        let n = frame::encode(msg, &mut buf).unwrap();
        let mut cmds = std::vec::Vec::new();
        link.receive(&buf[..n], now, |c| cmds.push(c));
        cmds
    }

    #[test]
    fn hello_status_then_heartbeat() {
        let mut link: Link = Link::new(LinkConfig::default(), ID, 42, 0);
        let first = drain(&mut link, 0);
        assert!(
            matches!(first[0], Message::Hello(ref h) if h.session == 42 && h.device_id == "edge-01")
        );
        assert!(matches!(first[1], Message::Status(_)));
        assert_eq!(first.len(), 2);
        assert!(drain(&mut link, 100).is_empty());
        assert!(matches!(drain(&mut link, 300)[..], [Message::Heartbeat(_)]));
    }

    #[test]
    fn results_resent_until_acked() {
        let cfg = LinkConfig::default();
        let mut link: Link = Link::new(cfg, ID, 1, 0);
        drain(&mut link, 0);
        let seq = link.push_result(result(1)).expect("queued");
        let sent = drain(&mut link, 10);
        assert!(matches!(sent[..], [Message::Result(r)] if r.seq == seq));
        assert!(drain(&mut link, 100).is_empty());
        let again = drain(&mut link, 10 + cfg.resend_after_ms);
        assert!(again
            .iter()
            .any(|m| matches!(m, Message::Result(r) if r.seq == seq)));
        // An ack for another session does nothing; the right one clears it.
        send(&mut link, &Message::Ack(Ack { session: 2, seq }), 600);
        assert_eq!(link.pending(), 1);
        send(&mut link, &Message::Ack(Ack { session: 1, seq }), 600);
        assert_eq!(link.pending(), 0);
        assert!(!drain(&mut link, 5_000)
            .iter()
            .any(|m| matches!(m, Message::Result(_))));
        assert_eq!(link.stats().results_resent, 1);
    }

    #[test]
    fn full_buffer_drops_oldest_and_reports() {
        let mut link: Link<4> = Link::new(LinkConfig::default(), ID, 1, 0);
        for i in 0..6 {
            link.push_result(result(i));
        }
        assert_eq!(link.pending(), 4);
        let msgs = drain(&mut link, 0);
        assert_eq!(result_seqs(&msgs), [2, 3, 4, 5]);
        let status = msgs.iter().find_map(|m| match m {
            Message::Status(s) => Some(*s),
            _ => None,
        });
        assert_eq!(status.unwrap().results_dropped, 2);
    }

    /// Result sequence numbers in what the link sends.
    fn result_seqs(msgs: &[Message]) -> std::vec::Vec<u32> {
        msgs.iter()
            .filter_map(|m| match m {
                Message::Result(r) => Some(r.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_capture_is_kept_and_sent_first() {
        let mut link: Link<4> = Link::new(LinkConfig::default(), ID, 1, 0);
        drain(&mut link, 0);
        let capture = Classification {
            flags: crate::flags::CAPTURE,
            ..result(0)
        };
        assert_eq!(link.push_result(capture), Some(0));
        // Three screening results fit behind it; the next ones would push it out, so they
        // are dropped and counted instead, without taking a sequence number.
        for i in 1..4 {
            assert_eq!(link.push_result(result(i)), Some(i as u32));
        }
        assert_eq!(link.push_result(result(4)), None);
        assert_eq!(link.push_result(result(5)), None);
        assert_eq!(link.stats().results_dropped, 2);
        assert_eq!(result_seqs(&drain(&mut link, 10)), [0, 1, 2, 3]);
        // Nothing acked: on the resend the capture leads.
        let resend = 10 + LinkConfig::default().resend_after_ms;
        assert_eq!(result_seqs(&drain(&mut link, resend))[0], 0);
        // Once it is acknowledged, screening results flow again and push out the old ones.
        send(&mut link, &Message::Ack(Ack { session: 1, seq: 0 }), resend);
        assert_eq!(link.push_result(result(6)), Some(4));
        assert_eq!(link.push_result(result(7)), Some(5));
        assert_eq!(link.stats().results_dropped, 3);
        // A newer capture does push an older one out.
        let mut link: Link<2> = Link::new(LinkConfig::default(), ID, 1, 0);
        link.push_result(capture);
        link.push_result(capture);
        assert_eq!(link.push_result(capture), Some(2));
        assert_eq!(result_seqs(&drain(&mut link, 0)), [1, 2]);
    }

    #[test]
    fn commands_run_once_and_are_echoed() {
        let mut link: Link = Link::new(LinkConfig::default(), ID, 1, 0);
        drain(&mut link, 0);
        let start = Message::StartScreening(CommandId(9));
        assert_eq!(send(&mut link, &start, 1), [Command::StartScreening]);
        assert!(send(&mut link, &start, 2).is_empty());
        let echoed = drain(&mut link, 3);
        assert!(echoed
            .iter()
            .any(|m| matches!(m, Message::Status(s) if s.last_command == Some(CommandId(9)))));
        assert_eq!(
            send(&mut link, &Message::Capture(CommandId(10)), 4),
            [Command::Capture]
        );
        assert_eq!(link.stats().commands_duplicate, 1);
    }

    #[test]
    fn state_change_sends_status_at_once() {
        let mut link: Link = Link::new(LinkConfig::default(), ID, 1, 0);
        drain(&mut link, 0);
        link.set_status(DeviceStatus {
            state: State::Screening,
            ..DeviceStatus::default()
        });
        assert!(
            matches!(drain(&mut link, 1)[..], [Message::Status(s)] if s.state == State::Screening)
        );
    }

    #[test]
    fn loopback_is_counted_not_obeyed() {
        let mut link: Link = Link::new(LinkConfig::default(), ID, 1, 0);
        let hb = Message::Heartbeat(Heartbeat {
            session: 1,
            uptime_ms: 0,
            last_command: None,
        });
        assert!(send(&mut link, &hb, 0).is_empty());
        assert_eq!(link.stats().unexpected, 1);
    }

    #[test]
    fn long_identity_is_truncated() {
        let id = Identity {
            device_id: "ééééééééééééééééééééééééééééé",
            ..ID
        };
        let link: Link = Link::new(LinkConfig::default(), id, 1, 0);
        assert_eq!(link.hello.device_id.chars().count(), DEVICE_ID_LEN / 2);
    }
}
