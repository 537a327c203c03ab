//! The view's routes, socket messages and refusals over real sockets: plain HTTP on loopback
//! (the cart's kiosk) and HTTPS with pairing (LAN access).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use operator_view::{
    parse_frame_message, Control, DecisionInfo, FrameHeader, Identity, Preview, Role, ViewConfig,
    ViewEvent, ViewServer,
};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

fn identity() -> Identity {
    Identity {
        model: "renal-test".into(),
        version: "1".into(),
        signer: "key-1".into(),
        form: "int8".into(),
        threshold: 0.4,
        ..Default::default()
    }
}

fn local(cfg: ViewConfig) -> ViewServer {
    let cfg = ViewConfig {
        enabled: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        ..cfg
    };
    ViewServer::start_with_codes(cfg, identity(), "11112222", "33334444").unwrap()
}

/// One raw HTTP exchange; returns the whole response text.
fn http(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn ws_connect(
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tungstenite::client(req, s)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })
}

fn refusal_status(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// Next text message of a given type (frames and other texts are skipped).
fn next_text<S: Read + Write>(ws: &mut WebSocket<S>, ty: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == ty {
                return v;
            }
        }
    }
    panic!("no {ty} message");
}

fn next_frame<S: Read + Write>(ws: &mut WebSocket<S>) -> (FrameHeader, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Message::Binary(b) = ws.read().unwrap() {
            let (h, jpeg) = parse_frame_message(&b).unwrap();
            return (h, jpeg.to_vec());
        }
    }
    panic!("no frame");
}

fn preview(frame: u64) -> Preview {
    Preview {
        pixels: vec![120; 200 * 150],
        width: 200,
        height: 150,
        header: FrameHeader {
            frame,
            threshold: 0.4,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn every_route_answers_with_its_status_and_the_security_headers() {
    let v = local(ViewConfig::default());
    let a = v.addr();
    let page = http(a, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&page), 200);
    assert!(page.contains("Screening aid — not a diagnosis"));
    assert!(page.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"));
    assert!(page.contains("X-Content-Type-Options: nosniff"));
    assert!(page.contains("Referrer-Policy: no-referrer"));
    assert!(page.contains("Cache-Control: no-store"));
    assert!(http(a, "GET /app.js HTTP/1.1\r\n\r\n").contains("text/javascript"));
    assert!(http(a, "GET /app.css HTTP/1.1\r\n\r\n").contains("text/css"));
    let who = http(a, "GET /api/whoami HTTP/1.1\r\n\r\n");
    assert!(who.contains(r#""role":"operator""#), "{who}");
    assert!(http(a, "GET /api/state HTTP/1.1\r\n\r\n").contains("renal-test"));
    assert_eq!(status(&http(a, "GET /nope HTTP/1.1\r\n\r\n")), 404);
    assert_eq!(status(&http(a, "DELETE / HTTP/1.1\r\n\r\n")), 405);
    assert_eq!(status(&http(a, "GET /ws HTTP/1.1\r\n\r\n")), 426);
    // Pairing is for HTTPS only.
    assert_eq!(
        status(&http(
            a,
            "POST /api/pair HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        )),
        400
    );
    // Malformed and oversized requests.
    assert_eq!(status(&http(a, "\u{1}\u{2}garbage\r\n\r\n")), 400);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(status(&http(a, &big)), 431);
    assert_eq!(
        status(&http(
            a,
            "POST /api/pair HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
        )),
        413
    );
    assert!(v.stats().refused >= 6);
}

#[test]
fn the_socket_checks_origin_and_caps_viewers() {
    let v = local(ViewConfig {
        max_viewers: 1,
        ..Default::default()
    });
    let a = v.addr();
    let own = format!("http://{a}");
    assert_eq!(refusal_status(ws_connect(a, None).unwrap_err()), 403);
    assert_eq!(
        refusal_status(ws_connect(a, Some("http://evil.example")).unwrap_err()),
        403
    );
    let mut first = ws_connect(a, Some(&own)).unwrap();
    assert_eq!(next_text(&mut first, "hello")["role"], "operator");
    assert_eq!(refusal_status(ws_connect(a, Some(&own)).unwrap_err()), 503);
    drop(first);
    // The slot frees when the page leaves.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match ws_connect(a, Some(&own)) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn frames_events_and_controls_travel_and_bad_messages_are_refused() {
    let v = local(ViewConfig::default());
    let a = v.addr();
    let own = format!("http://{a}");
    v.event(ViewEvent::Decision {
        info: DecisionInfo {
            seq: 1,
            journal_seq: Some(41),
            kind: "first".into(),
            abnormal: true,
            class: "cyst".into(),
            p_abnormal: 0.8,
            threshold: 0.4,
            frames: 5,
            ..Default::default()
        },
        thumb: vec![50; 224 * 224],
        size: 224,
    });
    let mut ws = ws_connect(a, Some(&own)).unwrap();
    let hello = next_text(&mut ws, "hello");
    assert_eq!(hello["identity"]["signer"], "key-1");
    ws.send(Message::text(r#"{"type":"resume","since":0}"#))
        .unwrap();
    let e = next_text(&mut ws, "event");
    assert_eq!(
        (e["id"].as_u64(), e["event"]["journal_seq"].as_u64()),
        (Some(1), Some(41))
    );
    v.publish(preview(9));
    let (h, jpeg) = next_frame(&mut ws);
    assert_eq!(h.frame, 9);
    assert_eq!((h.width, h.height), (200, 150));
    assert_eq!(&jpeg[..2], b"\xff\xd8");

    // Controls reach the runtime in order.
    ws.send(Message::text(r#"{"type":"control","action":"freeze"}"#))
        .unwrap();
    ws.send(Message::text(
        r#"{"type":"mark","journal_seq":41,"agree":true}"#,
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    while got.len() < 2 && Instant::now() < deadline {
        got.extend(v.take_control());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        got,
        [
            Control::Freeze,
            Control::Mark {
                journal_seq: 41,
                agree: true
            }
        ]
    );

    // Malformed: an error reply, the socket stays.
    ws.send(Message::text("{not json")).unwrap();
    assert!(next_text(&mut ws, "error")["message"]
        .as_str()
        .unwrap()
        .contains("malformed"));
    ws.send(Message::text(r#"{"type":"control","action":"reboot"}"#))
        .unwrap();
    assert!(next_text(&mut ws, "error")["message"]
        .as_str()
        .unwrap()
        .contains("unknown control"));

    // A reconnecting page gets only what it missed.
    v.event(ViewEvent::Mark {
        journal_seq: 41,
        agree: true,
        unix_ms: 1,
    });
    let mut again = ws_connect(a, Some(&own)).unwrap();
    again
        .send(Message::text(r#"{"type":"resume","since":1}"#))
        .unwrap();
    let e = next_text(&mut again, "event");
    assert_eq!(
        (e["id"].as_u64(), e["event"]["kind"].as_str()),
        (Some(2), Some("mark"))
    );

    // Oversized: closed with 1009, and the view goes on serving.
    ws.send(Message::text("x".repeat(10_000))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut closed = None;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(f)) => {
                closed = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(closed, Some(1009));
    // A new page got the latest frame (9) on arrival; the next one follows.
    v.publish(preview(10));
    let mut f = next_frame(&mut again).0.frame;
    if f == 9 {
        f = next_frame(&mut again).0.frame;
    }
    assert_eq!(f, 10);
}

#[test]
fn a_viewer_sees_but_cannot_act() {
    let v = local(ViewConfig {
        local_role: Role::Viewer,
        ..Default::default()
    });
    let a = v.addr();
    let mut ws = ws_connect(a, Some(&format!("http://{a}"))).unwrap();
    assert_eq!(next_text(&mut ws, "hello")["role"], "viewer");
    ws.send(Message::text(r#"{"type":"control","action":"capture"}"#))
        .unwrap();
    let e = next_text(&mut ws, "error");
    assert!(e["message"].as_str().unwrap().contains("viewer"), "{e}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(v.take_control(), None);
}

// ---- HTTPS and pairing ----------------------------------------------------------------

struct Tls {
    _dir: tempfile::TempDir,
    view: ViewServer,
    client: Arc<rustls::ClientConfig>,
}

fn tls_view() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let view = local(ViewConfig {
        tls_cert: Some(cert),
        tls_key: Some(key),
        trust_loopback: false,
        ..Default::default()
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        _dir: dir,
        view,
        client: Arc::new(client),
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_stream(t: &Tls) -> TlsStream {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(t.client.clone(), name).unwrap();
    let s = TcpStream::connect(t.view.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, s)
}

fn https(t: &Tls, raw: &str) -> String {
    let mut s = tls_stream(t);
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn lan_access_pairs_over_https_and_refuses_bad_sessions() {
    let t = tls_view();
    let a = t.view.addr();
    let origin = format!("https://{a}");
    assert!(t.view.url().starts_with("https://"));
    // The page itself is public (it holds no data) and asks to pair.
    assert_eq!(status(&https(&t, "GET / HTTP/1.1\r\n\r\n")), 200);
    let who = https(&t, "GET /api/whoami HTTP/1.1\r\n\r\n");
    assert!(who.contains(r#""pairing":true"#), "{who}");
    assert_eq!(status(&https(&t, "GET /api/state HTTP/1.1\r\n\r\n")), 401);
    assert_eq!(
        status(&https(
            &t,
            "GET /api/state HTTP/1.1\r\nCookie: rs_view=forged\r\n\r\n"
        )),
        401
    );
    let pair = |code: &str, origin: &str| {
        let body = format!(r#"{{"code":"{code}"}}"#);
        https(
            &t,
            &format!(
                "POST /api/pair HTTP/1.1\r\nHost: {a}\r\nOrigin: {origin}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    assert_eq!(status(&pair("11112222", "https://evil.example")), 403);
    assert_eq!(status(&pair("99999999", &origin)), 403);
    let ok = pair("1111-2222", &origin);
    assert_eq!(status(&ok), 200, "{ok}");
    let cookie = ok
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .unwrap()
        .to_string();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let token = cookie.split(';').next().unwrap();
    let state = https(
        &t,
        &format!("GET /api/state HTTP/1.1\r\nCookie: {token}\r\n\r\n"),
    );
    assert!(state.contains(r#""role":"operator""#), "{state}");

    // The socket: a forged cookie is refused, the paired one gets in.
    let ws_with = |cookie: &str| {
        let mut req = format!("wss://{a}/ws").into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        // The handshake error is large: keep only the status of a refusal.
        tungstenite::client(req, tls_stream(&t)).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => {
                r.status().as_u16()
            }
            _ => 0,
        })
    };
    match ws_with("rs_view=forged") {
        Err(status) => assert_eq!(status, 401),
        Ok(_) => panic!("forged cookie not refused"),
    }
    let (mut ws, _) = ws_with(token).unwrap_or_else(|s| panic!("paired socket refused: {s}"));
    assert_eq!(next_text(&mut ws, "hello")["role"], "operator");
    // Viewer code: a viewer.
    let viewer = pair("33334444", &origin);
    assert!(viewer.contains(r#""role":"viewer""#), "{viewer}");
}

#[test]
fn bad_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let cfg = ViewConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(cert.clone()),
        tls_key: Some(dir.path().join("missing.pem")),
        ..Default::default()
    };
    let e = ViewServer::start(cfg, identity())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cert.pem"), "{e}");
}
