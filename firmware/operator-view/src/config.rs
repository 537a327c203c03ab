//! `[ui]` in the edge runtime's config: where the view listens and what it allows.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::Role;

/// The view's settings. Every key optional; unknown keys refused.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// Serve the view.
    pub enabled: bool,
    /// Address and port. Loopback by default; any other address needs `tls_cert` and
    /// `tls_key`.
    pub listen: SocketAddr,
    /// Preview frames per second sent to each viewer, at most.
    pub preview_fps: f32,
    /// Longest side of the preview image in pixels.
    pub preview_max_side: u32,
    /// JPEG quality of the preview, 1-100.
    pub jpeg_quality: u8,
    /// Pages connected at once (a cart screen and a few tablets).
    pub max_viewers: usize,
    /// Role of a browser on the device itself (the cart's kiosk): `operator` or `viewer`.
    pub local_role: Role,
    /// Give loopback clients `local_role` without pairing. Turn off where other software on
    /// the device must not act as the operator (every page then pairs, over HTTPS).
    pub trust_loopback: bool,
    /// PEM certificate chain for LAN access over HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Origins a page may connect from besides the view's own (`https://cart-3.ward.local`).
    pub allowed_origins: Vec<String>,
    /// Events kept for pages that reconnect.
    pub history: usize,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            preview_fps: 15.0,
            preview_max_side: 640,
            jpeg_quality: 75,
            max_viewers: 4,
            local_role: Role::Operator,
            trust_loopback: true,
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            history: 500,
        }
    }
}

/// A `[ui]` value out of range; the message names the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("ui.{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

impl ViewConfig {
    /// Range checks, and the rule that only loopback may go without TLS.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.preview_fps > 0.0 && self.preview_fps <= 30.0) {
            return Err(err(
                "preview_fps",
                format!("must be in (0, 30], got {}", self.preview_fps),
            ));
        }
        if !(64..=1920).contains(&self.preview_max_side) {
            return Err(err(
                "preview_max_side",
                format!("must be 64..=1920, got {}", self.preview_max_side),
            ));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(err(
                "jpeg_quality",
                format!("must be 1..=100, got {}", self.jpeg_quality),
            ));
        }
        if !(1..=16).contains(&self.max_viewers) {
            return Err(err(
                "max_viewers",
                format!("must be 1..=16, got {}", self.max_viewers),
            ));
        }
        if !(10..=10_000).contains(&self.history) {
            return Err(err(
                "history",
                format!("must be 10..=10000, got {}", self.history),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(err("tls_key", "tls_cert is set: set tls_key too")),
            (None, Some(_)) => return Err(err("tls_cert", "tls_key is set: set tls_cert too")),
            _ => {}
        }
        if !self.listen.ip().is_loopback() && !self.tls() {
            return Err(err(
                "listen",
                format!(
                    "{} is reachable from the network: set ui.tls_cert and ui.tls_key (LAN access \
                     is only served over HTTPS), or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
        if !self.trust_loopback && !self.tls() {
            return Err(err(
                "trust_loopback",
                "false needs pairing, and pairing needs HTTPS: set ui.tls_cert and ui.tls_key",
            ));
        }
        for o in &self.allowed_origins {
            if !(o.starts_with("https://") || o.starts_with("http://127.0.0.1")) || o.ends_with('/')
            {
                return Err(err(
                    "allowed_origins",
                    format!("{o:?} must be an https origin without a path (https://host[:port])"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the view is served over HTTPS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_valid() {
        let c = ViewConfig::default();
        assert!(c.listen.ip().is_loopback());
        c.validate().unwrap();
    }

    #[test]
    fn lan_without_tls_is_refused_with_the_fix() {
        let c = ViewConfig {
            listen: "0.0.0.0:8443".parse().unwrap(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "listen");
        assert!(e.message.contains("tls_cert"), "{e}");
        let c = ViewConfig {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..c
        };
        c.validate().unwrap();
    }

    #[test]
    fn ranges_are_checked_by_name() {
        for (c, key) in [
            (
                ViewConfig {
                    preview_fps: 0.0,
                    ..Default::default()
                },
                "preview_fps",
            ),
            (
                ViewConfig {
                    max_viewers: 0,
                    ..Default::default()
                },
                "max_viewers",
            ),
            (
                ViewConfig {
                    jpeg_quality: 0,
                    ..Default::default()
                },
                "jpeg_quality",
            ),
            (
                ViewConfig {
                    tls_cert: Some("c.pem".into()),
                    ..Default::default()
                },
                "tls_key",
            ),
            (
                ViewConfig {
                    allowed_origins: vec!["https://x/".into()],
                    ..Default::default()
                },
                "allowed_origins",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().key, key);
        }
    }
}
