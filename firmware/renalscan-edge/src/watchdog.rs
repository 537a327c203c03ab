//! systemd readiness, status and watchdog, through the `sd-notify` crate (the `sd_notify`
//! protocol in pure Rust, no libsystemd).
//!
//! With `Type=notify` and `WatchdogSec=`, systemd passes `$WATCHDOG_USEC` and restarts the
//! service when no `WATCHDOG=1` arrives within it; we ping at half that period, as
//! sd_watchdog_enabled(3) recommends. Outside systemd (no `$NOTIFY_SOCKET`) every call is a
//! cheap no-op, so the same binary runs from a shell, under qemu in CI, or in a container.
//! The socket must be a path (systemd's `/run/systemd/notify`); `sd-notify` does not reach
//! abstract `@name` sockets, so one is reported at start and ignored.
//!
//! What is ours is the policy: pings must prove that the pipeline is making progress, not
//! merely that some thread is alive. Call [`Watchdog::tick`] from the main loop (it pings
//! when due), or give a [`Heartbeat`] to [`spawn_pinger`], which pings only while the beat
//! keeps advancing.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

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

/// Notifications to systemd (or nothing, outside systemd).
#[derive(Debug)]
pub struct Notifier {
    /// `$NOTIFY_SOCKET` when it is one `sd-notify` can reach.
    socket: Option<String>,
    interval: Option<Duration>,
}

impl Notifier {
    /// From the process environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        let socket = match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if s.starts_with('/') => Some(s),
            Ok(s) if !s.is_empty() => {
                log::warn!(
                    "NOTIFY_SOCKET={s:?} is not a path (abstract sockets are not supported): \
                     systemd will not hear readiness or watchdog pings; use Type=simple or a \
                     path socket"
                );
                None
            }
            _ => None,
        };
        // A watchdog meant for another process (WATCHDOG_PID) is not ours: sd-notify checks.
        let interval = sd_notify::watchdog_enabled().filter(|_| socket.is_some());
        Self::new(socket, interval)
    }

    /// A notifier for `socket` (what `$NOTIFY_SOCKET` says) pinging every half of
    /// `watchdog`; `None` for either turns that part off.
    fn new(socket: Option<String>, watchdog: Option<Duration>) -> Self {
        let interval = watchdog.filter(|w| !w.is_zero()).map(|w| w / 2);
        if let Some(name) = &socket {
            log::info!(
                "systemd notify socket {name}; watchdog {}",
                interval.map_or("off".to_string(), |i| format!("ping every {i:?}"))
            );
        }
        Self { socket, interval }
    }

    /// Whether we run under a supervisor that listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`); `None` when not requested.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Sends one notification. A no-op outside systemd.
    fn notify(&self, states: &[NotifyState<'_>]) -> Result<(), WatchdogError> {
        let Some(name) = &self.socket else {
            return Ok(());
        };
        sd_notify::notify(states).map_err(|source| WatchdogError::Send {
            socket: name.clone(),
            source,
        })
    }

    /// Start-up finished (bundle verified, source open): `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> Result<(), WatchdogError> {
        let status = one_line(status);
        self.notify(&[
            NotifyState::Ready,
            NotifyState::Status(&status),
            NotifyState::MainPid(std::process::id()),
        ])
    }

    /// A human status line, shown by `systemctl status`.
    pub fn status(&self, status: &str) -> Result<(), WatchdogError> {
        self.notify(&[NotifyState::Status(&one_line(status))])
    }

    /// One watchdog keep-alive.
    pub fn ping(&self) -> Result<(), WatchdogError> {
        self.notify(&[NotifyState::Watchdog])
    }

    /// Orderly shutdown has begun.
    pub fn stopping(&self) -> Result<(), WatchdogError> {
        self.notify(&[NotifyState::Stopping])
    }
}

/// The protocol is line based: a status must not inject other keys (`sd-notify` sends the
/// text as given).
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
    spawn_pinger_counting(notifier, heartbeat, stop, None)
}

/// [`spawn_pinger`], counting the pings it sent into `sent`.
fn spawn_pinger_counting(
    notifier: Notifier,
    heartbeat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
    sent: Option<Arc<AtomicU64>>,
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
                match notifier.ping() {
                    Ok(()) => {
                        if let Some(s) = &sent {
                            s.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => log::warn!("{e}"),
                }
            }
        })?;
    Ok(Some(handle))
}

#[cfg(test)]
mod tests {
    //! The datagrams themselves are checked end to end, by the binary under a real
    //! `$NOTIFY_SOCKET` (`tests/replay.rs`): the environment is per process, so unit tests
    //! here cover the policy only.
    use super::*;

    #[test]
    fn main_loop_pings_once_per_interval() {
        let n = Notifier::new(Some("/run/x".into()), Some(Duration::from_secs(3)));
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(1500)));
        let mut w = Watchdog::new(n);
        let t0 = Instant::now();
        assert!(w.tick(t0));
        assert!(!w.tick(t0 + Duration::from_millis(1000)));
        assert!(w.tick(t0 + Duration::from_millis(1600)));
    }

    #[test]
    fn without_systemd_everything_is_a_no_op() {
        let n = Notifier::new(None, None);
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x").unwrap();
        n.ping().unwrap();
        let mut w = Watchdog::new(n);
        assert!(!w.tick(Instant::now()));
        assert_eq!(
            Notifier::new(Some("/run/x".into()), Some(Duration::ZERO)).interval,
            None
        );
    }

    #[test]
    fn a_status_cannot_inject_keys() {
        assert_eq!(one_line("screening\nWATCHDOG=1\r"), "screening WATCHDOG=1 ");
    }

    #[test]
    fn pinger_pings_only_while_the_pipeline_beats() {
        // Counts pings through a notifier whose sends always succeed (no socket in the
        // environment): the pinger's decisions are what is under test.
        let n = Notifier::new(Some("/run/x".into()), Some(Duration::from_millis(200)));
        let beat = Arc::new(Heartbeat::default());
        let stop = Arc::new(AtomicBool::new(false));
        let pings = Arc::new(AtomicU64::new(0));
        let h = spawn_pinger_counting(n, beat.clone(), stop.clone(), Some(pings.clone()))
            .unwrap()
            .unwrap();
        for _ in 0..8 {
            beat.beat();
            std::thread::sleep(Duration::from_millis(60));
        }
        let alive = pings.load(Ordering::Relaxed);
        assert!(alive >= 2, "{alive} pings while beating");
        // Stuck pipeline: no more pings.
        std::thread::sleep(Duration::from_millis(400));
        let before = pings.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            pings.load(Ordering::Relaxed),
            before,
            "pinged without progress"
        );
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }
}
