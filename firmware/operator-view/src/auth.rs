//! Who may see and who may act: pairing codes exchanged for session cookies, two roles, and
//! the `Origin` rule for the socket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a page may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees the scan, the decision and the timeline.
    Viewer,
    /// Also freezes, captures and marks decisions.
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// Name of the session cookie.
pub const COOKIE: &str = "rs_view";
/// Wrong codes tolerated before pairing is locked for [`LOCKOUT`].
const MAX_FAILURES: u32 = 5;
const LOCKOUT: Duration = Duration::from_secs(60);
/// Sessions live for one shift.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 64;

/// Why a pairing attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("wrong pairing code: read the code shown on the device's console or cart screen")]
    WrongCode,
    #[error("too many wrong codes: pairing is locked for {0} s")]
    Locked(u64),
}

/// The device's pairing codes and the sessions they opened. Codes change at every start.
pub struct Auth {
    operator_code: String,
    viewer_code: String,
    state: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    sessions: HashMap<String, (Role, Instant)>,
    failures: u32,
    locked_until: Option<Instant>,
}

/// `n` random decimal digits.
fn digits(n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut b = [0u8; 32];
    while out.len() < n {
        if getrandom::fill(&mut b).is_err() {
            // No OS randomness: pairing is impossible rather than predictable.
            log::error!("no random source: LAN pairing disabled");
            return String::new();
        }
        // Bytes 250..=255 are dropped so every digit is equally likely.
        out.extend(
            b.iter()
                .filter(|&&x| x < 250)
                .map(|x| char::from(b'0' + x % 10)),
        );
    }
    out.truncate(n);
    out
}

fn token() -> Option<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// `n` random bytes as hex (not secret: identifiers). Time-based if the OS has no randomness.
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{t:x}");
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares without an early exit (the code is a secret).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes().zip(b.bytes()).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

impl Auth {
    /// Fresh codes (8 digits each).
    pub fn new() -> Self {
        Self::with_codes(digits(8), digits(8))
    }

    /// Known codes (tests).
    pub fn with_codes(operator_code: String, viewer_code: String) -> Self {
        Self {
            operator_code,
            viewer_code,
            state: Mutex::new(AuthState::default()),
        }
    }

    /// The codes, for the device's console and cart screen only.
    pub fn codes(&self) -> (&str, &str) {
        (&self.operator_code, &self.viewer_code)
    }

    /// Exchanges a code for a session token and its role.
    pub fn pair(&self, code: &str, now: Instant) -> Result<(String, Role), PairError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = s.locked_until {
            if now < until {
                return Err(PairError::Locked((until - now).as_secs().max(1)));
            }
            s.locked_until = None;
            s.failures = 0;
        }
        let code: String = code.chars().filter(|c| c.is_ascii_digit()).collect();
        let role = if same(&code, &self.operator_code) {
            Role::Operator
        } else if same(&code, &self.viewer_code) {
            Role::Viewer
        } else {
            s.failures += 1;
            if s.failures >= MAX_FAILURES {
                s.locked_until = Some(now + LOCKOUT);
                log::warn!("view: {MAX_FAILURES} wrong pairing codes: pairing locked for 60 s");
            }
            return Err(PairError::WrongCode);
        };
        s.failures = 0;
        let token = token().ok_or(PairError::WrongCode)?;
        s.sessions
            .retain(|_, (_, t)| now.duration_since(*t) < SESSION_TTL);
        if s.sessions.len() >= MAX_SESSIONS {
            // The oldest session goes.
            if let Some(k) = s
                .sessions
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                s.sessions.remove(&k);
            }
        }
        s.sessions.insert(token.clone(), (role, now));
        Ok((token, role))
    }

    /// The role of a session token, if it is valid.
    pub fn session(&self, token: &str, now: Instant) -> Option<Role> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (role, t) = s.sessions.get(token)?;
        (now.duration_since(*t) < SESSION_TTL).then_some(*role)
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self::new()
    }
}

/// The session token in a `Cookie` header.
pub fn cookie_token(cookie: Option<&str>) -> Option<&str> {
    cookie?.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE).then_some(v)
    })
}

/// The `Set-Cookie` value for a session: never readable by script, never sent cross-site,
/// only over HTTPS.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// Whether a page from `origin` may open the socket of a server reached as `host`
/// (`Host` header) with scheme `https` or not. A missing `Origin` (not a browser) is refused:
/// the socket is for pages.
pub fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    tls: bool,
    extra: &[String],
) -> bool {
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    origin == format!("{scheme}://{host}") || extra.iter().any(|e| e == origin)
}

/// Whether a peer is on the device itself.
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_give_their_roles_and_wrong_codes_lock() {
        let a = Auth::with_codes("12345678".into(), "87654321".into());
        let t0 = Instant::now();
        let (tok, role) = a.pair("1234-5678", t0).unwrap();
        assert_eq!(role, Role::Operator);
        assert_eq!(a.session(&tok, t0), Some(Role::Operator));
        assert_eq!(a.pair("87654321", t0).unwrap().1, Role::Viewer);
        assert_eq!(a.session("nope", t0), None);
        for _ in 0..4 {
            assert_eq!(a.pair("00000000", t0), Err(PairError::WrongCode));
        }
        assert_eq!(a.pair("00000000", t0), Err(PairError::WrongCode));
        // Locked now, even for the right code.
        assert!(matches!(a.pair("12345678", t0), Err(PairError::Locked(_))));
        assert!(a.pair("12345678", t0 + LOCKOUT).is_ok());
        // Sessions expire.
        assert_eq!(a.session(&tok, t0 + SESSION_TTL), None);
        assert!(a.pair("", t0 + LOCKOUT).is_err());
    }

    #[test]
    fn fresh_codes_are_eight_digits_and_differ() {
        let a = Auth::new();
        let (o, v) = a.codes();
        assert_eq!(o.len(), 8);
        assert!(o.chars().all(|c| c.is_ascii_digit()));
        assert_ne!(o, v);
    }

    #[test]
    fn cookies_and_origins() {
        assert_eq!(cookie_token(Some("a=1; rs_view=abc; b=2")), Some("abc"));
        assert_eq!(cookie_token(Some("rs_viewx=abc")), None);
        assert_eq!(cookie_token(None), None);
        let c = set_cookie("t");
        for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(flag), "{c}");
        }
        let h = Some("127.0.0.1:8080");
        assert!(origin_allowed(Some("http://127.0.0.1:8080"), h, false, &[]));
        assert!(!origin_allowed(Some("http://evil.example"), h, false, &[]));
        assert!(!origin_allowed(
            Some("https://127.0.0.1:8080"),
            h,
            false,
            &[]
        ));
        assert!(!origin_allowed(None, h, false, &[]));
        let extra = vec!["https://cart.ward".to_string()];
        assert!(origin_allowed(
            Some("https://cart.ward"),
            Some("10.0.0.2:8443"),
            true,
            &extra
        ));
    }
}
