//! The operator view in a real browser: Debian's chromium driven over WebDriver
//! (chromium-driver, headless) against renalscan-edge replaying a sweep with the tiny model:
//! normal frames, the probe lifted, abnormal frames, looped. Checks the banner, that the bar
//! shows exactly the decision the runtime printed, the "probe lifted" badge with no decision
//! shown, that freeze yields exactly one classify-on-freeze decision, and that agree is
//! journalled; saves a screenshot of each state (`$CARGO_TARGET_DIR/operator-view/`).
//!
//! Needs `chromium` and `chromedriver` (`scripts/setup.sh` installs both); without them the
//! test fails and says so.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Just enough WebDriver (W3C) for this test.
struct Driver {
    base: String,
    session: String,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base, path);
        let r = match (method, body) {
            ("GET", _) => ureq::get(&url).call(),
            ("DELETE", _) => ureq::delete(&url).call(),
            (_, b) => ureq::post(&url).send_json(b.unwrap_or(json!({}))),
        };
        match r {
            Ok(resp) => resp.into_json::<Value>().unwrap()["value"].clone(),
            Err(ureq::Error::Status(code, resp)) => {
                panic!(
                    "WebDriver {method} {path}: {code} {}",
                    resp.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    fn start(port: u16) -> Self {
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium").unwrap().display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"]
            }
        }}});
        let v = ureq::post(&format!("{base}/session"))
            .send_json(caps)
            .unwrap()
            .into_json::<Value>()
            .unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Self { base, session }
    }

    fn s(&self, p: &str) -> String {
        format!("/session/{}{p}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({"url": url})));
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    fn element(&self, css: &str) -> String {
        let e = self.call(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        e[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/click")),
            Some(json!({})),
        );
    }

    /// Types into a field as a keyboard (or a barcode scanner) would.
    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        );
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Polls `script` until it returns something truthy; returns it.
    fn until(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

/// All-black frames: the probe lifted off the skin.
fn write_black(dir: &Path, from: usize, n: usize) {
    for i in from..from + n {
        image::GrayImage::new(640, 480)
            .save(dir.join(format!("frame_{i:05}.png")))
            .unwrap();
    }
}

fn shots_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let d = base.join("operator-view");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_operator_view_in_a_real_browser() {
    let (Some(_), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
        panic!(
            "this test drives Debian's chromium over WebDriver: install it with \
             `bash scripts/setup.sh` (apt packages chromium and chromium-driver)"
        );
    };
    let tmp = tempfile::tempdir().unwrap();
    // The sweep: 24 normal frames, 16 with the probe lifted, 24 abnormal; looped at 8 fps.
    let frames = tmp.path().join("frames");
    let mut gains = vec![testkit::frames::DARK; 24];
    gains.extend([testkit::frames::BRIGHT; 40]);
    testkit::frames::write_frames_gain(&frames, &gains);
    write_black(&frames, 24, 16);
    let bundle = write_bundle(&tmp.path().join("bundle"), 0.5);
    let cfg = tmp.path().join("edge.toml");
    std::fs::write(
        &cfg,
        "[aggregate]\nwindow = 6\nmin_frames = 3\nreport_every_s = 1.0\n[output]\nstatus_every_s = 0.5\n",
    )
    .unwrap();
    let jdir = tmp.path().join("journal");
    let sdir = tmp.path().join("sessions");
    let port = free_port();
    let ui = format!("127.0.0.1:{port}");
    let args = run_args(
        &cfg,
        &bundle,
        &frames,
        &[
            "--fps",
            "8",
            "--loop",
            "--journal",
            jdir.to_str().unwrap(),
            "--sessions-dir",
            sdir.to_str().unwrap(),
            "--ui",
            &ui,
        ],
    );
    let edge = Running::spawn(&args);
    let decisions = || edge.decisions();

    let dport = free_port();
    let _driver_proc = Killed(
        Command::new(chromedriver)
            .arg(format!("--port={dport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let d = Driver::start(dport);
    // The runtime needs a moment to load the model and bind.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://{ui}/api/whoami"))
        .call()
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the view did not start:\n{}",
            edge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.go(&format!("http://{ui}/"));
    // The cart's kiosk screen: a 1280 x 800 viewport.
    let inner = d.js(
        "return [window.outerHeight - window.innerHeight, window.outerWidth - window.innerWidth]",
    );
    let (dh, dw) = (
        inner[0].as_i64().unwrap_or(0),
        inner[1].as_i64().unwrap_or(0),
    );
    d.call(
        "POST",
        &d.s("/window/rect"),
        Some(json!({"width": 1280 + dw, "height": 800 + dh})),
    );
    let shots = shots_dir();

    // The banner, always.
    let banner = d.js("return document.getElementById('banner').textContent");
    assert_eq!(banner, "Screening aid — not a diagnosis");

    // A decision appears; its bar is the runtime's decision of that number.
    let shown = d.until(
        "a decision on the page",
        Duration::from_secs(30),
        "const v = document.getElementById('verdict'); const f = document.getElementById('bar-fill');
         return v.dataset.seq && f.dataset.p ? [v.dataset.seq, f.dataset.p, v.textContent] : null",
    );
    let seq: u64 = shown[0].as_str().unwrap().parse().unwrap();
    let p_page: f64 = shown[1].as_str().unwrap().parse().unwrap();
    let printed = decisions()
        .into_iter()
        .find(|x| x["seq"] == seq)
        .unwrap_or_else(|| panic!("decision {seq} is on the page but was not printed"));
    let p_json = printed["p_abnormal"].as_f64().unwrap();
    assert!(
        (p_page - p_json).abs() < 1e-6,
        "page {p_page} vs JSON {p_json}"
    );
    let verdict = if printed["abnormal"] == true {
        "Abnormal"
    } else {
        "Normal"
    };
    assert_eq!(shown[2], verdict);
    d.screenshot(&shots.join("1-decision.png"));

    // The probe lifted: the badge says so and no decision is shown.
    let lifted = d.until(
        "the probe-lifted badge",
        Duration::from_secs(30),
        "const b = document.getElementById('badge');
         return b.dataset.gate === 'probe_lifted' && !b.hidden
           ? [b.textContent, document.getElementById('verdict').textContent,
              document.getElementById('bar-fill').dataset.p] : null",
    );
    assert_eq!(lifted, json!(["Probe lifted", "—", ""]));
    d.screenshot(&shots.join("2-probe-lifted.png"));

    // Wait for an abnormal decision on screen (the overlay drawn), then freeze.
    d.until(
        "an abnormal decision",
        Duration::from_secs(30),
        "return document.getElementById('verdict').textContent === 'Abnormal'",
    );
    d.screenshot(&shots.join("3-abnormal.png"));
    let freezes = || decisions().iter().filter(|x| x["kind"] == "freeze").count();
    assert_eq!(freezes(), 0);
    d.click("#freeze");
    d.until(
        "the frozen frame's decision",
        Duration::from_secs(15),
        "return !document.getElementById('frozen-tag').hidden &&
           document.getElementById('aggregated').textContent.startsWith('classify-on-freeze')",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(freezes(), 1, "freeze must yield exactly one decision");
    let frozen = decisions()
        .into_iter()
        .find(|x| x["kind"] == "freeze")
        .unwrap();
    assert_eq!(frozen["frames"], 1);
    d.screenshot(&shots.join("4-frozen.png"));
    d.click("#freeze"); // unfreeze
    d.until(
        "live again",
        Duration::from_secs(15),
        "return document.getElementById('frozen-tag').hidden",
    );
    assert_eq!(freezes(), 1);

    // Agree with the latest journalled decision: journalled as a mark with its number.
    d.until(
        "the agree button",
        Duration::from_secs(15),
        "return !document.getElementById('agree').disabled",
    );
    d.click("#agree");
    let marked = d.until(
        "the mark on the timeline",
        Duration::from_secs(15),
        "const m = [...document.querySelectorAll('#timeline li')]
            .find(li => li.querySelector('.t-mark').textContent === 'agreed');
         return m ? Number(m.dataset.journal) : null",
    );
    let jseq = marked.as_u64().unwrap();
    d.screenshot(&shots.join("5-agreed.png"));
    let records: Vec<Value> = journal::Journal::records(&jdir)
        .unwrap()
        .map(|r| serde_json::from_slice(&r.unwrap().payload).unwrap())
        .collect();
    let marks: Vec<&Value> = records.iter().filter(|r| r["record"] == "mark").collect();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0]["kind"], "agree");
    assert_eq!(marks[0]["decision_seq"].as_u64(), Some(jseq));
    assert_eq!(marks[0]["from"], "view");

    // An exam opened from the page with a scanned patient identifier: the decisions carry
    // its session; the identifier is in no URL, title or log line.
    let patient = "MRN-48213-KQ";
    d.click("#exam-start");
    d.type_into("#ctx-patient", patient);
    d.type_into("#ctx-accession", "ACC-1");
    d.click("#exam-form button[type=submit]");
    let state = d.until(
        "the exam bar",
        Duration::from_secs(15),
        "const t = document.getElementById('exam-state').textContent;
         return t.startsWith('Exam open') ? t : null",
    );
    let session = state
        .as_str()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(session.starts_with("s-"), "{state}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !decisions().iter().any(|x| x["session"] == session.as_str()) {
        assert!(
            Instant::now() < deadline,
            "no decision in session {session}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.screenshot(&shots.join("6-exam.png"));
    let where_ = d.js("return document.title + ' ' + location.href");
    assert!(!where_.as_str().unwrap().contains(patient));
    d.click("#exam-end");
    d.until(
        "the exam closed",
        Duration::from_secs(15),
        "return document.getElementById('exam-state').textContent === 'No exam open'",
    );
    let ctx = std::fs::read_to_string(sdir.join(&session).join("context.json")).unwrap();
    assert!(ctx.contains(patient));
    assert!(
        !edge.log().contains(patient),
        "the identifier reached the log"
    );

    // Refusals while screening: beyond max viewers, a wrong Origin, garbage and an
    // oversized message; each refused, and decisions keep coming.
    let n_before = decisions().len();
    let socket = |origin: &str| {
        let mut req =
            tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{ui}/ws"))
                .unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        let s = std::net::TcpStream::connect(&ui).unwrap();
        tungstenite::client(req, s)
            .map(|(ws, _)| ws)
            .map_err(|e| match e {
                tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => {
                    r.status().as_u16()
                }
                _ => 0,
            })
    };
    let own = format!("http://{ui}");
    assert_eq!(socket("http://evil.example").err(), Some(403));
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match socket(&own) {
            Ok(ws) => open.push(ws),
            Err(status) => {
                assert_eq!(status, 503);
                refused += 1;
            }
        }
    }
    // The browser holds one of the four places.
    assert_eq!((open.len(), refused), (3, 3));
    for ws in &mut open {
        let _ = ws.send(tungstenite::Message::text("{garbage"));
        let _ = ws.send(tungstenite::Message::text("x".repeat(100_000)));
    }
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(15);
    while decisions().len() < n_before + 2 {
        assert!(
            Instant::now() < deadline,
            "screening stalled after the refusals"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // What the page measured, decision to screen (the budget is the bench's).
    let lat = d.js("return window.rsView.latencies");
    let lat: Vec<f64> = lat
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(!lat.is_empty());
    eprintln!(
        "decision-to-screen latency over {} decisions: max {:.0} ms; screenshots in {}",
        lat.len(),
        lat.iter().cloned().fold(0.0, f64::max),
        shots.display()
    );
    // The page must not have failed its own script or the CSP.
    let errs = edge.log().matches("panicked").count();
    assert_eq!(errs, 0, "{}", edge.log());
}
