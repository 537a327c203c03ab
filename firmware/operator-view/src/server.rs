//! The view's threads: one accepting connections, one encoding frames, one per connection
//! (capped). Routes: the page and its two files, `/api/whoami`, `/api/pair`, `/api/state`,
//! and the socket at `/ws`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::assets;
use crate::auth::{self, Auth, Role};
use crate::config::{ConfigError, ViewConfig};
use crate::http::{read_request, Request, Response};
use crate::hub::{Hub, Stats};
use crate::protocol::{Control, Identity, Preview, ViewEvent};
use crate::ws;

/// Why the view could not start. Screening does not depend on it: the runtime logs this and
/// goes on without a view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source} (is another renalscan-edge or web server using the port? set ui.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS file {path}: {why} (ui.tls_cert / ui.tls_key must be PEM files)")]
    Tls { path: PathBuf, why: String },
    #[error("cannot start a view thread: {0}")]
    Thread(std::io::Error),
}

/// What every connection thread shares.
pub(crate) struct Ctx {
    pub cfg: ViewConfig,
    pub hub: Arc<Hub>,
    pub auth: Auth,
    pub identity: Identity,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connection threads alive.
    pub conns: AtomicUsize,
    /// Random per start: a page that reconnects to a restarted device learns that the event
    /// numbers began again.
    pub instance: String,
}

/// The running view. Dropping it stops its threads (within about 200 ms).
pub struct ViewServer {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl ViewServer {
    /// Validates the config, binds and starts the threads.
    pub fn start(cfg: ViewConfig, identity: Identity) -> Result<Self, ViewError> {
        Self::start_with(cfg, identity, Auth::new())
    }

    /// [`ViewServer::start`] with known pairing codes (tests).
    pub fn start_with_codes(
        cfg: ViewConfig,
        identity: Identity,
        operator: &str,
        viewer: &str,
    ) -> Result<Self, ViewError> {
        Self::start_with(
            cfg,
            identity,
            Auth::with_codes(operator.into(), viewer.into()),
        )
    }

    fn start_with(cfg: ViewConfig, identity: Identity, auth: Auth) -> Result<Self, ViewError> {
        cfg.validate()?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::server_config(c, k)?),
            _ => None,
        };
        let listener = TcpListener::bind(cfg.listen).map_err(|source| ViewError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ViewError::Bind {
            addr: cfg.listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ViewError::Bind { addr, source })?;
        let hub = Arc::new(Hub::new(
            cfg.preview_max_side,
            cfg.jpeg_quality,
            cfg.history,
        ));
        let ctx = Arc::new(Ctx {
            cfg,
            hub,
            auth,
            identity,
            tls,
            conns: AtomicUsize::new(0),
            instance: crate::auth::random_hex(8),
        });
        let mut threads = Vec::new();
        let c = ctx.clone();
        threads.push(
            std::thread::Builder::new()
                .name("view-encode".into())
                .spawn(move || c.hub.encode_loop())
                .map_err(ViewError::Thread)?,
        );
        let c = ctx.clone();
        threads.push(
            std::thread::Builder::new()
                .name("view-accept".into())
                .spawn(move || accept_loop(listener, c))
                .map_err(ViewError::Thread)?,
        );
        let scheme = if ctx.tls.is_some() { "https" } else { "http" };
        log::info!("operator view at {scheme}://{addr}/");
        if !addr.ip().is_loopback() || !ctx.cfg.trust_loopback {
            let (o, v) = ctx.auth.codes();
            log::info!(
                "operator view pairing codes: operator {o}, viewer {v} (valid until restart)"
            );
        }
        Ok(Self { ctx, addr, threads })
    }

    /// Where it listens (the port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to open.
    pub fn url(&self) -> String {
        let scheme = if self.ctx.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/", self.addr)
    }

    /// The pairing codes (operator, viewer), for the device's own console and cart screen.
    pub fn pairing_codes(&self) -> (String, String) {
        let (o, v) = self.ctx.auth.codes();
        (o.to_string(), v.to_string())
    }

    /// Hands a frame over (latest wins). Cheap: a move into a slot and a notify.
    pub fn publish(&self, p: Preview) {
        self.ctx.hub.publish(p);
    }

    /// Adds an event to the timeline.
    pub fn event(&self, e: ViewEvent) {
        self.ctx.hub.event(e);
    }

    /// Replaces the health record the pages show.
    pub fn health(&self, v: serde_json::Value) {
        self.ctx.hub.health(v);
    }

    /// The next control an operator sent.
    pub fn take_control(&self) -> Option<Control> {
        self.ctx.hub.take_control()
    }

    pub fn stats(&self) -> Stats {
        self.ctx.hub.stats()
    }

    /// The preview rate cap.
    pub fn preview_interval(&self) -> Duration {
        Duration::from_secs_f32(1.0 / self.ctx.cfg.preview_fps)
    }
}

impl Drop for ViewServer {
    fn drop(&mut self) {
        self.ctx.hub.stop.store(true, Ordering::Relaxed);
        self.ctx.hub.wake_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let max_conns = ctx.cfg.max_viewers + 8;
    while !ctx.hub.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if ctx.conns.load(Ordering::Relaxed) >= max_conns {
                    ctx.hub.refused.fetch_add(1, Ordering::Relaxed);
                    log::warn!("view: too many connections: {peer} refused");
                    drop(stream);
                    continue;
                }
                ctx.conns.fetch_add(1, Ordering::Relaxed);
                let c = ctx.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("view-conn".into())
                        .spawn(move || {
                            connection(stream, peer, &c);
                            c.conns.fetch_sub(1, Ordering::Relaxed);
                        });
                if let Err(e) = spawned {
                    ctx.conns.fetch_sub(1, Ordering::Relaxed);
                    log::warn!("view: no thread for {peer}: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => {
                log::warn!("view: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn connection(stream: TcpStream, peer: SocketAddr, ctx: &Ctx) {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    match &ctx.tls {
        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
            Ok(conn) => serve(rustls::StreamOwned::new(conn, stream), peer, ctx),
            Err(e) => log::warn!("view: TLS session for {peer}: {e}"),
        },
        None => serve(Tcp(stream), peer, ctx),
    }
}

/// A plain socket with the read timeout the socket loop adjusts.
pub(crate) struct Tcp(pub TcpStream);

impl Read for Tcp {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for Tcp {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Streams whose underlying socket's read timeout can be changed.
pub(crate) trait Timeouts {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()>;
}

impl Timeouts for Tcp {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        self.0.set_read_timeout(Some(d))
    }
}

impl Timeouts for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        self.sock.set_read_timeout(Some(d))
    }
}

fn serve<S: Read + Write + Timeouts>(mut s: S, peer: SocketAddr, ctx: &Ctx) {
    let req = match read_request(&mut s) {
        Ok(r) => r,
        Err(e) => {
            if let Some(status) = e.status() {
                ctx.hub.refused.fetch_add(1, Ordering::Relaxed);
                let _ = Response::error(status, e.to_string()).write(&mut s);
            }
            return;
        }
    };
    let role = role_of(&req, peer, ctx);
    if req.path == "/ws" && req.method == "GET" {
        if let Err(resp) = ws::check_upgrade(&req, role, ctx) {
            ctx.hub.refused.fetch_add(1, Ordering::Relaxed);
            log::info!("view: socket refused for {peer}: {}", resp.status);
            let _ = resp.write(&mut s);
            return;
        }
        if let Some(role) = role {
            ws::serve(s, &req, role, ctx);
        }
        return;
    }
    let resp = route(&req, peer, role, ctx);
    if resp.status >= 400 {
        ctx.hub.refused.fetch_add(1, Ordering::Relaxed);
    }
    let _ = resp.write(&mut s);
}

/// Loopback peers get the configured local role; others need a paired session.
fn role_of(req: &Request, peer: SocketAddr, ctx: &Ctx) -> Option<Role> {
    if ctx.cfg.trust_loopback && auth::is_local(peer.ip()) {
        return Some(ctx.cfg.local_role);
    }
    let token = auth::cookie_token(req.header("cookie"))?;
    ctx.auth.session(token, Instant::now())
}

pub(crate) fn route(req: &Request, peer: SocketAddr, role: Option<Role>, ctx: &Ctx) -> Response {
    let get = req.method == "GET" || req.method == "HEAD";
    match req.path.as_str() {
        "/" | "/index.html" if get => assets::page(),
        "/app.js" if get => assets::script(),
        "/app.css" if get => assets::style(),
        // Browsers ask for it on their own; no icon, and not a refusal either.
        "/favicon.ico" if get => Response::new(204, "image/x-icon", Vec::new()),
        "/api/whoami" if get => Response::json(
            200,
            &json!({
                "role": role.map(Role::name),
                "tls": ctx.tls.is_some(),
                "pairing": role.is_none(),
            }),
        ),
        "/api/state" if get => match role {
            Some(r) => Response::json(
                200,
                &json!({"role": r.name(), "identity": ctx.identity, "stats": ctx.hub.stats()}),
            ),
            None => Response::error(
                401,
                "not paired: enter the pairing code shown on the device",
            ),
        },
        "/api/pair" if req.method == "POST" => pair(req, peer, ctx),
        "/" | "/index.html" | "/app.js" | "/app.css" | "/api/whoami" | "/api/state"
        | "/api/pair" | "/ws" => Response::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => Response::error(404, format!("no such page: {}", req.path)),
    }
}

fn pair(req: &Request, peer: SocketAddr, ctx: &Ctx) -> Response {
    if ctx.tls.is_none() {
        return Response::error(
            400,
            "pairing is for LAN access over HTTPS; on the device itself the page needs none",
        );
    }
    if !auth::origin_allowed(
        req.header("origin"),
        req.header("host"),
        true,
        &ctx.cfg.allowed_origins,
    ) {
        return Response::error(403, "pairing from another site is refused (Origin)");
    }
    let code = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_string));
    let Some(code) = code else {
        return Response::error(400, r#"send {"code": "<8 digits shown on the device>"}"#);
    };
    match ctx.auth.pair(&code, Instant::now()) {
        Ok((token, role)) => {
            log::info!("view: {peer} paired as {}", role.name());
            Response::json(200, &json!({"role": role.name()}))
                .with_header("Set-Cookie", auth::set_cookie(&token))
        }
        Err(e) => {
            log::warn!("view: pairing from {peer} refused: {e}");
            let status = if matches!(e, auth::PairError::Locked(_)) {
                429
            } else {
                403
            };
            Response::error(status, e.to_string())
        }
    }
}
