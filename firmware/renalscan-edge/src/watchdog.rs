//! systemd readiness, status and watchdog (the `sd_notify` protocol), without libsystemd.
//!
//! The protocol is one datagram of `KEY=value` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). With `Type=notify` and
//! `WatchdogSec=`, systemd passes `$WATCHDOG_USEC` and restarts the service when no
//! `WATCHDOG=1` arrives within it; we ping at half that period, as sd_watchdog_enabled(3)
//! recommends. Outside systemd (no `$NOTIFY_SOCKET`) every call is a cheap no-op, so the same
//! binary runs from a shell, under qemu in CI, or in a container.
//!
//! Pings must prove that the pipeline is making progress, not merely that some thread is
//! alive: call [`Watchdog::tick`] from the main loop (it pings when due), or give a
//! [`Heartbeat`] to [`spawn_pinger`], which pings only while the beat keeps advancing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a notification was not delivered. Callers usually log it and continue: systemd will
/// act on the missing ping itself.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// Sending to `$NOTIFY_SOCKET` failed.
    #[error("sd_notify to {socket}: {source}")]
    Send {
        /// The socket as given in `$NOTIFY_SOCKET`.
        socket: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// Abstract socket name, without the leading `@`.
    Abstract(Vec<u8>),
}

/// A connection to systemd's notification socket (or nothing, outside systemd).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(Target, String)>,
    socket: Option<UnixDatagram>,
    interval: Option<Duration>,
}

impl Notifier {
    /// From the process environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        Self::from_parts(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// From explicit values (tests, or a caller that reads its own environment). The
    /// watchdog applies only when `watchdog_pid` is unset or names `pid`.
    pub fn from_parts(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Self {
        let target = match notify_socket {
            None | Some("") => None,
            Some(s) => match s.strip_prefix('@') {
                Some(name) => Some((Target::Abstract(name.as_bytes().to_vec()), s.to_string())),
                None if s.starts_with('/') => Some((Target::Path(PathBuf::from(s)), s.to_string())),
                None => {
                    log::warn!("NOTIFY_SOCKET={s:?} is neither a path nor @abstract; ignored");
                    None
                }
            },
        };
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(pid));
        let interval = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours && target.is_some())
            .map(|u| Duration::from_micros(u / 2));
        let socket = if target.is_some() {
            match UnixDatagram::unbound() {
                Ok(s) => Some(s),
                Err(e) => {
                    log::warn!("cannot create a notification socket: {e}");
                    None
                }
            }
        } else {
            None
        };
        if let Some((_, name)) = &target {
            log::info!(
                "systemd notify socket {name}; watchdog {}",
                interval.map_or("off".to_string(), |i| format!("ping every {i:?}"))
            );
        }
        Self {
            target,
            socket,
            interval,
        }
    }

    /// Whether we run under a supervisor that listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`); `None` when not requested.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Sends one raw notification (`KEY=value` lines). A no-op outside systemd.
    pub fn notify(&self, message: &str) -> Result<(), WatchdogError> {
        let (Some(sock), Some((target, name))) = (&self.socket, &self.target) else {
            return Ok(());
        };
        let sent = match target {
            Target::Path(p) => sock.send_to(message.as_bytes(), p),
            Target::Abstract(n) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(n)
                    .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
            }
        };
        sent.map(drop).map_err(|source| WatchdogError::Send {
            socket: name.clone(),
            source,
        })
    }

    /// Start-up finished (bundle verified, source open): `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> Result<(), WatchdogError> {
        self.notify(&format!(
            "READY=1\nSTATUS={}\nMAINPID={}",
            one_line(status),
            std::process::id()
        ))
    }

    /// A human status line, shown by `systemctl status`.
    pub fn status(&self, status: &str) -> Result<(), WatchdogError> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    /// One watchdog keep-alive.
    pub fn ping(&self) -> Result<(), WatchdogError> {
        self.notify("WATCHDOG=1")
    }

    /// Orderly shutdown has begun.
    pub fn stopping(&self) -> Result<(), WatchdogError> {
        self.notify("STOPPING=1")
    }
}

/// The protocol is line based: a status must not inject other keys.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

/// Pings from the main loop: call [`Watchdog::tick`] once per iteration (every frame, and
/// while waiting for a probe); it sends at most one ping per interval.
#[derive(Debug)]
pub struct Watchdog {
    notifier: Notifier,
    last: Option<Instant>,
}

impl Watchdog {
    /// Wraps a notifier.
    pub fn new(notifier: Notifier) -> Self {
        Self {
            notifier,
            last: None,
        }
    }

    /// The notifier, for `ready`/`status`/`stopping`.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Pings when an interval has passed since the last ping; returns whether it pinged.
    /// A failed send is logged and retried on the next tick.
    pub fn tick(&mut self, now: Instant) -> bool {
        let Some(interval) = self.notifier.interval else {
            return false;
        };
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < interval)
        {
            return false;
        }
        match self.notifier.ping() {
            Ok(()) => {
                self.last = Some(now);
                true
            }
            Err(e) => {
                log::warn!("{e}");
                false
            }
        }
    }
}

/// Progress counter shared by the pipeline (bump it per loop iteration) and [`spawn_pinger`].
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    /// Records progress.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Beats so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A thread that pings every watchdog interval while `heartbeat` has advanced since its last
/// look, and stops pinging when it has not (a stuck pipeline then gets restarted by systemd).
/// Set `stop` to end the thread. Returns `None` when no watchdog was requested.
pub fn spawn_pinger(
    notifier: Notifier,
    heartbeat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
) -> io::Result<Option<JoinHandle<()>>> {
    let Some(interval) = notifier.interval else {
        return Ok(None);
    };
    let handle = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut seen = heartbeat.count();
            // Sleep in short steps so `stop` is honoured promptly.
            let step = interval.min(Duration::from_millis(100));
            let mut since = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                if since.elapsed() < interval {
                    continue;
                }
                since = Instant::now();
                let now = heartbeat.count();
                if now == seen {
                    log::warn!(
                        "pipeline made no progress for {interval:?}: withholding the watchdog ping"
                    );
                    continue;
                }
                seen = now;
                if let Err(e) = notifier.ping() {
                    log::warn!("{e}");
                }
            }
        })?;
    Ok(Some(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn path_socket_gets_ready_status_and_pings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_parts(path.to_str(), Some("3000000"), None, 42);
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(1500)));
        n.ready("screening\nWATCHDOG=1").unwrap();
        let msg = recv(&server);
        assert!(
            msg.starts_with("READY=1\nSTATUS=screening WATCHDOG=1\nMAINPID="),
            "{msg:?}"
        );
        n.status("12.5 fps").unwrap();
        assert_eq!(recv(&server), "STATUS=12.5 fps");
        // Main-loop pings: the first tick pings, the next within the interval does not.
        let mut w = Watchdog::new(n);
        let t0 = Instant::now();
        assert!(w.tick(t0));
        assert!(!w.tick(t0 + Duration::from_millis(1000)));
        assert!(w.tick(t0 + Duration::from_millis(1600)));
        assert_eq!(recv(&server), "WATCHDOG=1");
        assert_eq!(recv(&server), "WATCHDOG=1");
    }

    #[test]
    fn abstract_socket_is_reached() {
        let name = format!("renalscan-watchdog-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_parts(Some(&format!("@{name}")), None, None, 1);
        assert_eq!(n.watchdog_interval(), None);
        n.stopping().unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn without_systemd_everything_is_a_no_op() {
        let n = Notifier::from_parts(None, Some("1000000"), None, 1);
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x").unwrap();
        n.ping().unwrap();
        let mut w = Watchdog::new(n);
        assert!(!w.tick(Instant::now()));
        // A watchdog meant for another process (WATCHDOG_PID) is not ours.
        let other = Notifier::from_parts(Some("/run/x"), Some("1000000"), Some("7"), 8);
        assert_eq!(other.watchdog_interval(), None);
        // A vanished socket is a typed error naming it, not a panic.
        let gone = Notifier::from_parts(Some("/nonexistent/notify"), None, None, 1);
        let err = gone.ping().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/notify"), "{err}");
    }

    #[test]
    fn pinger_pings_only_while_the_pipeline_beats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wd.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        // WATCHDOG_USEC 200 ms -> ping every 100 ms.
        let n = Notifier::from_parts(path.to_str(), Some("200000"), None, 1);
        let beat = Arc::new(Heartbeat::default());
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_pinger(n, beat.clone(), stop.clone())
            .unwrap()
            .unwrap();
        let count = |s: &UnixDatagram| {
            let mut buf = [0u8; 64];
            std::iter::from_fn(|| s.recv(&mut buf).ok()).count()
        };
        for _ in 0..8 {
            beat.beat();
            std::thread::sleep(Duration::from_millis(60));
        }
        let alive = count(&server);
        assert!(alive >= 2, "{alive} pings while beating");
        // Stuck pipeline: no more pings.
        std::thread::sleep(Duration::from_millis(400));
        count(&server);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(count(&server), 0, "pinged without progress");
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }
}
