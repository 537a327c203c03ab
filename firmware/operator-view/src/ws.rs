//! One page's socket: `hello`, the event history it missed, health, the latest frame at most
//! at the preview rate, and its controls (operators only).

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::auth::{self, Role};
use crate::http::{Request, Response};
use crate::protocol::{ClientMessage, Control};
use crate::server::{Ctx, Timeouts};

/// Largest message a page may send (controls are tens of bytes).
pub const MAX_CLIENT_MESSAGE: usize = 4096;
/// Malformed messages tolerated before the socket is closed.
const MAX_MALFORMED: u32 = 10;
/// How long the loop waits for the page or for news before looking again.
const POLL: Duration = Duration::from_millis(10);

/// The refusal for a socket request that may not be upgraded.
pub(crate) fn check_upgrade(req: &Request, role: Option<Role>, ctx: &Ctx) -> Result<(), Response> {
    if !req.is_upgrade() || req.header("sec-websocket-key").is_none() {
        return Err(Response::error(426, "/ws is a WebSocket endpoint"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(Response::error(400, "WebSocket version 13 is required"));
    }
    if !auth::origin_allowed(
        req.header("origin"),
        req.header("host"),
        ctx.tls.is_some(),
        &ctx.cfg.allowed_origins,
    ) {
        return Err(Response::error(
            403,
            "the socket only serves the view's own page (Origin does not match); add the origin to ui.allowed_origins if it is yours",
        ));
    }
    if role.is_none() {
        return Err(Response::error(
            401,
            "not paired: enter the pairing code shown on the device",
        ));
    }
    Ok(())
}

/// Counts a viewer for as long as it lives.
struct ViewerSlot<'a>(&'a Ctx);

impl Drop for ViewerSlot<'_> {
    fn drop(&mut self) {
        self.0.hub.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upgrades and runs the socket until the page leaves or the view stops.
pub(crate) fn serve<S: Read + Write + Timeouts>(mut s: S, req: &Request, role: Role, ctx: &Ctx) {
    let max = ctx.cfg.max_viewers;
    if ctx.hub.viewers.fetch_add(1, Ordering::Relaxed) >= max {
        ctx.hub.viewers.fetch_sub(1, Ordering::Relaxed);
        ctx.hub.refused.fetch_add(1, Ordering::Relaxed);
        let _ = Response::error(
            503,
            format!("{max} pages are already watching (ui.max_viewers): close one and reload"),
        )
        .write(&mut s);
        return;
    }
    let _slot = ViewerSlot(ctx);
    let key = req.header("sec-websocket-key").unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    for (k, v) in crate::http::SECURITY_HEADERS {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes())
        .and_then(|_| s.flush())
        .is_err()
    {
        return;
    }
    if s.set_read_timeout(POLL).is_err() {
        return;
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let mut ws = WebSocket::from_raw_socket(s, WsRole::Server, Some(config));
    let mut page = Page {
        role,
        events_after: None,
        frame_sent: 0,
        health_sent: 0,
        version: u64::MAX,
        malformed: 0,
        connected: Instant::now(),
        last_frame: None,
    };
    let hello = json!({
        "type": "hello",
        "instance": ctx.instance,
        "role": role.name(),
        "identity": ctx.identity,
        "preview_fps": ctx.cfg.preview_fps,
    });
    if ws.send(Message::text(hello.to_string())).is_err() {
        return;
    }
    let interval = Duration::from_secs_f32(1.0 / ctx.cfg.preview_fps);
    loop {
        if ctx.hub.stop.load(Ordering::Relaxed) {
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "the device is shutting down".into(),
            }));
            let _ = ws.flush();
            return;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                if let Err(reply) = page.handle(t.as_str(), ctx) {
                    page.malformed += 1;
                    if ws
                        .send(Message::text(
                            json!({"type": "error", "message": reply}).to_string(),
                        ))
                        .is_err()
                    {
                        return;
                    }
                    if page.malformed >= MAX_MALFORMED {
                        let _ = ws.close(Some(CloseFrame {
                            code: CloseCode::Policy,
                            reason: "too many malformed messages".into(),
                        }));
                        let _ = ws.flush();
                        return;
                    }
                }
            }
            Ok(Message::Binary(_)) => {
                page.malformed += 1;
                let _ = ws.send(Message::text(
                    json!({"type": "error", "message": "binary messages are not accepted"})
                        .to_string(),
                ));
            }
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
                return;
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(tungstenite::Error::Capacity(e)) => {
                log::warn!("view: a page sent an oversized message ({e}): closed");
                ctx.hub.refused.fetch_add(1, Ordering::Relaxed);
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: format!("messages are limited to {MAX_CLIENT_MESSAGE} bytes").into(),
                }));
                let _ = ws.flush();
                return;
            }
            Err(_) => return,
        }
        // The page's first message says which events it has; a page that never says gets
        // the whole history after a moment.
        if page.events_after.is_none() && page.connected.elapsed() > Duration::from_secs(1) {
            page.events_after = Some(0);
        }
        if page.send_news(&mut ws, ctx, interval).is_err() {
            return;
        }
    }
}

struct Page {
    role: Role,
    /// Events up to this id were sent (`None` until the page said where it stands).
    events_after: Option<u64>,
    frame_sent: u64,
    health_sent: u64,
    version: u64,
    malformed: u32,
    connected: Instant,
    last_frame: Option<Instant>,
}

impl Page {
    /// Acts on one text message; `Err` carries the reply for a message that was refused.
    fn handle(&mut self, text: &str, ctx: &Ctx) -> Result<(), String> {
        let msg: ClientMessage =
            serde_json::from_str(text).map_err(|e| format!("malformed message: {e}"))?;
        let control = match msg {
            ClientMessage::Resume { since } => {
                self.events_after = Some(since);
                self.version = u64::MAX;
                return Ok(());
            }
            ClientMessage::Latency { ms } => {
                ctx.hub.latency(ms);
                return Ok(());
            }
            ClientMessage::Control { action } => match action.as_str() {
                "freeze" => Control::Freeze,
                "unfreeze" => Control::Unfreeze,
                "capture" => Control::Capture,
                other => return Err(format!("unknown control {other:?}")),
            },
            ClientMessage::Mark { journal_seq, agree } => Control::Mark { journal_seq, agree },
            ClientMessage::Session { action, context } => match action.as_str() {
                "start" => Control::StartSession(context.unwrap_or_default()),
                "end" => Control::EndSession,
                other => return Err(format!("unknown session action {other:?}")),
            },
        };
        if self.role != Role::Operator {
            return Err(format!(
                "{}: this page is a viewer; pair with the operator code to act",
                control.name()
            ));
        }
        let name = control.name();
        if !ctx.hub.control(control) {
            return Err(format!("{name}: the device is busy, try again"));
        }
        Ok(())
    }

    /// Sends what changed since the last look: events, health, the latest frame.
    fn send_news<S: Read + Write>(
        &mut self,
        ws: &mut WebSocket<S>,
        ctx: &Ctx,
        interval: Duration,
    ) -> tungstenite::Result<()> {
        let (events, health, frame) = {
            let out = ctx.hub.out.lock().unwrap_or_else(|p| p.into_inner());
            let out = if out.version == self.version {
                ctx.hub
                    .out_cv
                    .wait_timeout(out, POLL)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            } else {
                out
            };
            if out.version == self.version {
                return Ok(());
            }
            self.version = out.version;
            let events: Vec<(u64, Arc<str>)> = match self.events_after {
                Some(after) => out
                    .events
                    .iter()
                    .filter(|(id, _)| *id > after)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            let health = out
                .health
                .as_ref()
                .filter(|h| h.0 > self.health_sent)
                .cloned();
            let due = self
                .last_frame
                .is_none_or(|t| t.elapsed() >= interval.mul_f32(0.8));
            let frame = out
                .frame
                .as_ref()
                .filter(|f| f.0 > self.frame_sent && due)
                .cloned();
            // A frame held back by the rate cap is sent at the next look.
            if out.frame.as_ref().is_some_and(|f| f.0 > self.frame_sent) && !due {
                self.version = u64::MAX;
            }
            (events, health, frame)
        };
        for (id, e) in events {
            ws.write(Message::text(e.to_string()))?;
            self.events_after = Some(id);
        }
        if let Some((n, h)) = health {
            ws.write(Message::text(h.to_string()))?;
            self.health_sent = n;
        }
        if let Some((n, f)) = frame {
            ws.write(Message::binary(f.as_ref().clone()))?;
            self.frame_sent = n;
            self.last_frame = Some(Instant::now());
            ctx.hub.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
        ws.flush()
    }
}

/// A read that found nothing before the socket's timeout: poll again, the peer is fine.
pub fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(
        e,
        tungstenite::Error::Io(io)
            if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    )
}
