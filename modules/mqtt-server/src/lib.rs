//! # mqtt-server: MqttServerModule
//!
//! An MQTT 3.1.1 and 5 server (default `0.0.0.0:1889`) for devices that cannot afford TLS or an
//! IoT Hub identity. Every application message a device publishes becomes an edgeHub message on
//! output `output1` (or a mapped output), and a device's QoS 1/2 publish is acknowledged
//! (PUBACK/PUBREC) only once edgeHub acknowledged it.
//!
//! ## Parts
//! - [`settings`]: [`Settings`] (layered by edge-module: defaults -> JSON file -> `MQTT_*`
//!   environment -> flags) and
//!   [`settings::Routing`], the part the module twin may change live.
//! - [`codec`]: [`codec::ServerCodec`], one codec for both versions on rumqtt's own packet code.
//! - [`message`]: device publish -> edgeHub [`Message`] (properties, `$.ct`/`$.ce`, id, time).
//! - [`forward`]: the [`Forwarder`] trait (edgeHub in production, a recorder in tests) and the
//!   bounded forwarding buffer with back-pressure and retries.
//! - [`spool`]: the optional durable spool (one queue of an edge-store store) behind the buffer.
//! - [`broker`]: sessions, subscriptions (shared, with identifiers), retained messages for device
//!   subscribers; [`state`]: their optional persistence (an edge-store store).
//! - [`limits`]: what a device may send so that every forwarded message fits edgeHub.
//! - [`acl`]: the optional Mosquitto-style ACL file (`MQTT_ACL_FILE`): who may publish and
//!   subscribe where (file format, matching rules, `%c`/`%u` patterns and how each refusal looks
//!   to a device are documented there and in the README, "Access control").
//! - `connection`: one client connection's state machine.
//! - [`metrics`]: Prometheus counters, served on `:9600/metrics`.
//! - [`Server`] / [`run`]: accept loops (plain and optional TLS), shutdown; [`ServerHandle`]
//!   applies module twin settings live; [`Auth`] checks optional credentials.
//! - The binary (`src/main.rs`, `src/edgehub.rs`): CLI, environment, signals, the edgeHub
//!   [`Forwarder`] on `edge_client`, and the module twin loop (desired -> live -> reported).
//!
//! ## Why not rumqttd (the design card's choice)
//!
//! rumqttd 0.20 was measured here (2026-11-24; the module README, "Why not rumqttd"): it acknowledges a
//! publish when the message enters its in-memory log, *before* any link (our code) sees it, and it
//! persists nothing, so a crash loses what was acknowledged but not yet forwarded. The link also
//! does not see the publish QoS, `retain` is always false, keep-alive 0 is refused without
//! CONNACK (rumqtt#943), QoS is not downgraded to the subscription's (rumqtt#707), an oversize
//! payload drops the connection without PUBACK, the local link silently stops after ~200 queued
//! messages unless `ready()` is called on `Unschedule` (rumqtt#582), a network client can evict
//! the link by taking its client id, MQTT 5 is incomplete (rumqtt#621), and with 10 MB x 10
//! segments its RSS plateaued at 140-151 MB (Mosquitto: 11.5 MB). Its speed was fine (QoS 0
//! end to end about Mosquitto 2.0.11's; QoS 1, 50k x 1 KB: 0.72 s vs 0.9 s), but the
//! requirement "acknowledge a device only after edgeHub has the message" cannot be met through
//! rumqttd's acknowledgements at all.
//!
//! ntex-mqtt can hold the PUBACK (measured: a 300 ms handler gave PUBACK/PUBREC at ~303 ms),
//! but the last version that builds with our Rust 1.85 is 6.4.1, a branch that gets no more
//! fixes, and it has no session store either.
//!
//! So this server runs its own session logic on rumqtt's maintained codecs
//! (`rumqttc::mqttbytes::v4` and `rumqttc::v5::mqttbytes::v5`, already in our dependency tree
//! through `edge-client`): the acknowledgement for a QoS 1/2 publish is a future that resolves
//! when the forwarding buffer reports edgeHub's PUBACK, and acknowledgements go out in the order
//! the publishes arrived (MQTT 3.1.1 section 4.6).
//!
//! Measured here (2026-11-24, x86_64, 2 vCPU, release, stdout sink): stripped binary 6.3 MB;
//! RSS 5.3 MB idle, 9.3 MB with 200 paho clients and 2,000 QoS 1 messages, 46-48 MB plateau
//! after 150,000 x 1 KB (bounded by the 16 MiB default buffer); `mosquitto_pub -l` 50,000 x
//! 1 KB: QoS 0 0.33 s, QoS 1 0.93 s, QoS 2 1.37 s.
//!
//! ## Delivery guarantees
//! - QoS 1/2 from a device: PUBACK/PUBREC only after edgeHub acknowledged (or, with a spool,
//!   the message is committed to disk); a crash of this module
//!   loses nothing acknowledged (the device still holds what was not). A device resend after a
//!   crash or reconnect may give edgeHub a duplicate (at-least-once); a QoS 2 resend on the same
//!   session is recognised by packet id and not forwarded twice.
//! - While edgeHub is unreachable, messages wait in a bounded in-memory buffer
//!   (`buffer_messages`, `buffer_bytes`) and are retried; past the bound, device sockets are not
//!   read (TCP back-pressure), logged once per episode and counted in `mqtt_backpressure_total`.
//!   Nothing is dropped silently. Without a spool the buffer is memory only and holds only
//!   messages not yet acknowledged to devices, so a crash loses none that were acknowledged.
//! - With `spool_path` ([`spool`]), the buffer is also on disk (redb, group commit): devices are
//!   acknowledged once their message is committed, and a crash's leftovers go at the next start.
//! - Sessions, subscriptions and retained messages live in memory and survive reconnects; with
//!   `state_path` ([`state`]) they are also kept on disk and survive restarts.

pub mod acl;
pub mod broker;
pub mod codec;
mod connection;
pub mod forward;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod settings;
pub mod spool;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The message model: edgeHub's own ([`edge_client::wire::Message`]), from device publish to edgeHub.
pub use edge_client::wire::Message;
pub use forward::{BoxFuture, ForwardError, Forwarder};
pub use metrics::Metrics;
pub use settings::{Routing, Settings};

use broker::Broker;
use forward::{Pipeline, PipelineLimits};

/// Errors of this library; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting {name}: {reason}; fix the setting (see the README's settings table)")]
    Setting { name: String, reason: String },
    #[error("cannot read {path}: {reason}; check the file exists and is readable by the module")]
    File { path: String, reason: String },
    #[error("ACL file {path}, {error}; fix that line and start the module again (or unset MQTT_ACL_FILE to turn access control off)")]
    Acl { path: String, error: acl::AclError },
    #[error("TLS setup failed: {0}; check MQTT_TLS_CERT / MQTT_TLS_KEY are PEM files of a matching certificate and key")]
    Tls(String),
    #[error("socket error: {0}; check the port is free and the address exists")]
    Io(#[from] std::io::Error),
}

/// How a user's password is stored.
#[derive(Debug, Clone)]
enum Secret {
    /// `sha256:<hex>` (unsalted; kept for old files) or a plain-text line (when allowed).
    Sha256([u8; 32]),
    /// Mosquitto 2's `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// Mosquitto 1's `$6$<salt>$<hash>`: SHA-512 of the password and then the salt.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

/// Equal without an early exit (the time does not tell how much matched).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Usernames and password hashes for optional client authentication: Mosquitto's password file
/// format, so `mosquitto_passwd` (Debian's `mosquitto` package) manages it.
#[derive(Debug, Clone)]
pub struct Auth {
    users: HashMap<String, Secret>,
}

impl Auth {
    /// Parses `username:$7$...` / `username:$6$...` lines (as `mosquitto_passwd` writes them),
    /// `username:sha256:<64 hex>`, and, with `allow_plain`, `username:password`; `#` starts a
    /// comment. A plain-text line without `allow_plain` is an error that says how to hash it.
    pub fn parse_with(text: &str, allow_plain: bool) -> Result<Auth, Error> {
        use base64::Engine as _;
        let b64 = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
        };
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| Error::Setting {
                name: format!("auth_file line {}", n + 1),
                reason: reason.to_string(),
            };
            let (user, secret) = line
                .split_once(':')
                .ok_or_else(|| bad("expected username:password"))?;
            let parsed = if let Some(rest) = secret.strip_prefix("$7$") {
                let mut it = rest.splitn(3, '$');
                let (iter, salt, hash) = (it.next(), it.next(), it.next());
                match (
                    iter.and_then(|i| i.parse::<u32>().ok()).filter(|i| (1..=10_000_000).contains(i)),
                    salt.and_then(b64),
                    hash.and_then(b64),
                ) {
                    (Some(iterations), Some(salt), Some(hash)) if !hash.is_empty() => {
                        Secret::Pbkdf2 {
                            iterations,
                            salt,
                            hash,
                        }
                    }
                    _ => return Err(bad("a $7$ line must be $7$<iterations>$<base64 salt>$<base64 hash>, as mosquitto_passwd writes it")),
                }
            } else if let Some(rest) = secret.strip_prefix("$6$") {
                match rest.split_once('$').map(|(s, h)| (b64(s), b64(h))) {
                    Some((Some(salt), Some(hash))) if hash.len() == 64 => {
                        Secret::Sha512 { salt, hash }
                    }
                    _ => return Err(bad("a $6$ line must be $6$<base64 salt>$<base64 SHA-512>")),
                }
            } else if let Some(hex) = secret.strip_prefix("sha256:") {
                Secret::Sha256(
                    parse_hex32(hex)
                        .ok_or_else(|| bad("sha256: must be followed by 64 hex digits"))?,
                )
            } else if allow_plain {
                Secret::Sha256(Sha256::digest(secret.as_bytes()).into())
            } else {
                return Err(bad(&format!(
                    "the password of {user:?} is plain text; hash the file with `mosquitto_passwd -U FILE` (or add users with `mosquitto_passwd FILE USER`), or set MQTT_AUTH_ALLOW_PLAIN=true"
                )));
            };
            users.insert(user.to_string(), parsed);
        }
        if users.is_empty() {
            return Err(Error::Setting {
                name: "auth_file".into(),
                reason: "no users in the file; add users with `mosquitto_passwd FILE USER` or unset MQTT_AUTH_FILE"
                    .into(),
            });
        }
        Ok(Auth { users })
    }

    /// [`Auth::parse_with`] allowing plain-text lines (the old behaviour).
    pub fn parse(text: &str) -> Result<Auth, Error> {
        Auth::parse_with(text, true)
    }

    /// True when the file has a line for `username`.
    pub fn has_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// True when the credentials match a user.
    pub fn check(&self, username: Option<&str>, password: Option<&str>) -> bool {
        let (Some(u), Some(p)) = (username, password) else {
            return false;
        };
        let Some(secret) = self.users.get(u) else {
            return false;
        };
        match secret {
            Secret::Sha256(expected) => {
                let got: [u8; 32] = Sha256::digest(p.as_bytes()).into();
                same(&got, expected)
            }
            Secret::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut got = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(p.as_bytes(), salt, *iterations, &mut got);
                same(&got, hash)
            }
            Secret::Sha512 { salt, hash } => {
                let mut h = sha2::Sha512::new();
                h.update(p.as_bytes());
                h.update(salt);
                same(&h.finalize(), hash)
            }
        }
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// State shared by all connections.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    routing: RwLock<Arc<Routing>>,
    pub(crate) broker: Broker,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) auth: Option<Auth>,
    pub(crate) acl: Option<acl::Acl>,
    /// Keeps ACL refusal warnings few (per client and overall).
    pub(crate) acl_log: acl::RefusalLog,
}

impl Shared {
    pub(crate) fn routing(&self) -> Arc<Routing> {
        match self.routing.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Listeners the server serves (bound by the caller, so tests use port 0).
pub struct Listeners {
    /// Plain MQTT.
    pub mqtt: TcpListener,
    /// Optional MQTT over TLS.
    pub tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    /// Optional Prometheus `/metrics` endpoint.
    pub metrics: Option<TcpListener>,
}

/// A handle to change routing settings and read metrics while the server runs.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Applies the module twin's desired properties: the whole `desired` section when `full`
    /// (after each connect), else a patch (see [`Routing::apply_desired`]). Returns the routing now
    /// in force (to report back) and warnings about ignored keys. Invalid documents change nothing.
    pub fn apply_desired(
        &self,
        desired: &serde_json::Value,
        full: bool,
    ) -> Result<(Routing, Vec<String>), Error> {
        let base = self.shared.settings.routing();
        let mut next = (*self.shared.routing()).clone();
        let warnings =
            next.apply_desired(desired, &base, full, self.shared.settings.max_payload)?;
        match self.shared.routing.write() {
            Ok(mut r) => *r = Arc::new(next.clone()),
            Err(p) => *p.into_inner() = Arc::new(next.clone()),
        }
        Ok((next, warnings))
    }

    /// The routing settings in force.
    pub fn routing(&self) -> Routing {
        (*self.shared.routing()).clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }
}

/// The MQTT server.
pub struct Server {
    shared: Arc<Shared>,
    forwarder: Arc<dyn Forwarder>,
    spool: Option<(Arc<spool::Spool>, Vec<spool::Leftover>)>,
}

impl Server {
    /// Validates `settings` and loads the auth and ACL files; nothing starts yet.
    pub fn new(settings: Settings, forwarder: Arc<dyn Forwarder>) -> Result<Server, Error> {
        settings.check()?;
        let (auth, acl) = load_access_files(&settings)?;
        if let Some(acl) = &acl {
            log_acl_summary(acl, auth.as_ref());
        }
        let spool = match &settings.spool_path {
            Some(path) => {
                let (s, left) = spool::Spool::open(path)?;
                Some((Arc::new(s), left))
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let mut broker = Broker::new(
            settings.session_queue,
            settings.max_retained,
            settings.offline_bytes,
            metrics.clone(),
        );
        if let Some(path) = &settings.state_path {
            let (sink, loaded) = state::open(path)?;
            broker.restore(sink, loaded);
        }
        let shared = Arc::new(Shared {
            routing: RwLock::new(Arc::new(settings.routing())),
            broker,
            metrics,
            auth,
            acl,
            acl_log: acl::RefusalLog::default(),
            settings,
        });
        Ok(Server {
            shared,
            forwarder,
            spool,
        })
    }

    /// A handle for twin updates and metrics.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then closes every connection and waits up to
    /// `shutdown_grace_secs` for messages already in flight to edgeHub.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let shared = self.shared;
        let s = &shared.settings;
        let (pipeline, worker) = Pipeline::start(
            PipelineLimits {
                messages: s.buffer_messages,
                bytes: s.buffer_bytes,
                concurrency: s.forward_concurrency,
                retry: Duration::from_millis(s.forward_retry_ms.max(1)),
                attempt_timeout: match s.forward_timeout_secs {
                    // no limit: the client resends unacknowledged messages itself after reconnecting
                    0 => Duration::from_secs(100 * 365 * 24 * 3600),
                    n => Duration::from_secs(n),
                },
            },
            self.forwarder,
            shared.metrics.clone(),
            self.spool.as_ref().map(|(s, _)| s.clone()),
        );
        let recovery = self.spool.map(|(_, left)| {
            let p = pipeline.clone();
            tokio::spawn(async move { p.recover(left).await })
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let slots = Arc::new(Semaphore::new(s.max_connections));

        tasks.spawn(accept_loop(
            listeners.mqtt,
            None,
            shared.clone(),
            pipeline.clone(),
            stop_rx.clone(),
            slots.clone(),
        ));
        if let Some((l, acceptor)) = listeners.tls {
            tasks.spawn(accept_loop(
                l,
                Some(acceptor),
                shared.clone(),
                pipeline.clone(),
                stop_rx.clone(),
                slots.clone(),
            ));
        }
        if let Some(l) = listeners.metrics {
            let m = shared.metrics.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let m = m.clone();
                        async move { ([("content-type", metrics::CONTENT_TYPE)], m.render()) }
                    }),
                );
                let r = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        {
            let shared = shared.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {
                            let n = shared.broker.expire(std::time::Instant::now());
                            if n > 0 { tracing::info!(sessions = n, "expired persistent sessions"); }
                        }
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        drop(stop_rx);
        drop(pipeline);

        shutdown.await;
        tracing::info!("shutting down: closing client connections");
        let _ = stop_tx.send(true);
        shared.broker.kick_all();
        let grace = Duration::from_secs(shared.settings.shutdown_grace_secs);
        let deadline = tokio::time::Instant::now() + grace;
        let drained = tokio::time::timeout(grace + Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
        }
        if let Some(r) = recovery {
            r.abort();
            let _ = r.await;
        }
        // the connections handed their sessions back: put them on disk
        if shared.settings.state_path.is_some() {
            let b = shared.clone();
            let saved =
                tokio::task::spawn_blocking(move || b.broker.flush_state(Duration::from_secs(5)))
                    .await
                    .unwrap_or(false);
            if !saved {
                tracing::warn!(
                    "device sessions could not all be saved before stopping (state_path)"
                );
            }
        }
        let mut worker = worker;
        // what is left of the grace period, and at least a second
        let until = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(until, &mut worker).await {
            Ok(_) => tracing::info!("forwarding buffer drained"),
            Err(_) => {
                let left = shared.metrics.buffer_messages.get();
                if shared.settings.spool_path.is_some() {
                    tracing::warn!(left, "shutdown grace over with messages still unsent; they stay in the spool and go at the next start");
                } else {
                    tracing::warn!(left, "shutdown grace over with messages still unsent; they were not acknowledged to devices, which will resend them");
                }
                // stop the retries (and let go of the spool) now
                worker.abort();
                let _ = worker.await;
            }
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads and checks the password file and the ACL file the settings name.
fn load_access_files(settings: &Settings) -> Result<(Option<Auth>, Option<acl::Acl>), Error> {
    let auth = match &settings.auth_file {
        Some(path) => Some(Auth::parse_with(
            &read_file(path)?,
            settings.auth_allow_plain,
        )?),
        None => None,
    };
    let acl = match &settings.acl_file {
        Some(path) => Some(
            acl::Acl::parse(&read_file(path)?).map_err(|error| Error::Acl {
                path: path.display().to_string(),
                error,
            })?,
        ),
        None => None,
    };
    Ok((auth, acl))
}

/// Checks the files the settings name (password file, ACL file) without starting anything, so that
/// the binary stops on a mistake in them before it connects to edgeHub.
pub fn check_files(settings: &Settings) -> Result<(), Error> {
    load_access_files(settings).map(|_| ())
}

/// What the ACL file holds, and what in it will probably not do what was meant.
fn log_acl_summary(acl: &acl::Acl, auth: Option<&Auth>) {
    let (users, anonymous, patterns) = acl.summary();
    tracing::info!(
        users,
        anonymous_lines = anonymous,
        patterns,
        "access control on: clients may publish and subscribe only where the ACL file allows"
    );
    for w in acl.warnings() {
        tracing::warn!("{w}");
    }
    match auth {
        None => tracing::warn!(
            "the ACL file is used without MQTT_AUTH_FILE: usernames are not checked, so any client can claim a `user` block's rights (and %c is always what the client claims); set MQTT_AUTH_FILE"
        ),
        Some(auth) => {
            if acl.has_anonymous_lines() {
                tracing::warn!("the ACL file has topic lines before any `user` line; they are for clients without a username, and with MQTT_AUTH_FILE every client logs in, so they never apply");
            }
            let mut missing: Vec<&str> = acl.usernames().filter(|u| !auth.has_user(u)).collect();
            missing.sort_unstable();
            if !missing.is_empty() {
                tracing::warn!(users = ?missing, "the ACL file has `user` blocks for usernames the password file does not have; nobody can log in as them");
            }
        }
    }
}

/// Convenience: `Server::new(settings, forwarder)?.run(listeners, shutdown)`.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    forwarder: Arc<dyn Forwarder>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    Server::new(settings, forwarder)?
        .run(listeners, shutdown)
        .await
}

impl Server {
    /// Serves client connections over the given byte streams instead of accepted sockets: each
    /// stream as the accept loop serves a socket, all at once, until every one has ended. Then
    /// forwarding stops; messages not yet forwarded are dropped (their devices were not
    /// acknowledged). No listener, spool, metrics endpoint or session expiry runs. For in-memory
    /// tests and fuzzing over `tokio::io::duplex` (`fuzz/fuzz_targets/mqtt_session.rs`).
    pub async fn serve_streams<S>(self, streams: Vec<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let s = &self.shared.settings;
        let (pipeline, worker) = Pipeline::start(
            PipelineLimits {
                messages: s.buffer_messages,
                bytes: s.buffer_bytes,
                concurrency: s.forward_concurrency,
                retry: Duration::from_millis(s.forward_retry_ms.max(1)),
                attempt_timeout: Duration::from_secs(match s.forward_timeout_secs {
                    0 => 100 * 365 * 24 * 3600,
                    n => n,
                }),
            },
            self.forwarder,
            self.shared.metrics.clone(),
            None,
        );
        let (_stop, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        for (i, stream) in streams.into_iter().enumerate() {
            let port = u16::try_from(i + 1).unwrap_or(u16::MAX);
            conns.spawn(connection::serve(
                stream,
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                self.shared.clone(),
                pipeline.clone(),
                stop_rx.clone(),
            ));
        }
        drop(pipeline);
        while let Some(done) = conns.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        worker.abort();
        let _ = worker.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    pipeline: Pipeline,
    mut stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    let mut conns = JoinSet::new();
    let mut last_refusal_log: Option<std::time::Instant> = None;
    let mut refused_since_log = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // e.g. out of file descriptors: wait a little instead of spinning
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // a flood must not flood the log too: at most one line per second, with the count
            shared.metrics.refused("max_connections");
            refused_since_log += 1;
            let due = match last_refusal_log {
                None => true,
                Some(t) => t.elapsed() >= Duration::from_secs(1),
            };
            if due {
                tracing::warn!(%peer, max = shared.settings.max_connections, refused = refused_since_log,
                    "refusing connection: max_connections reached");
                refused_since_log = 0;
                last_refusal_log = Some(std::time::Instant::now());
            }
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let shared = shared.clone();
        let pipeline = pipeline.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _permit = permit;
            match tls {
                None => connection::serve(sock, peer, shared, pipeline, stop).await,
                Some(acceptor) => {
                    let timeout = Duration::from_secs(shared.settings.connect_timeout_secs.max(1));
                    match tokio::time::timeout(timeout, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => connection::serve(s, peer, shared, pipeline, stop).await,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "refusing connection: TLS handshake failed");
                            shared.metrics.refused("tls_handshake");
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "refusing connection: TLS handshake timed out");
                            shared.metrics.refused("tls_handshake");
                        }
                    }
                }
            }
        });
    }
    drop(pipeline);
    while conns.join_next().await.is_some() {}
}

/// Builds a TLS acceptor (rustls, ring) from PEM certificate chain and key files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| Error::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate in the certificate file".into()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| Error::Tls(format!("bad key PEM: {e}")))?
        .ok_or_else(|| Error::Tls("no private key in the key file".into()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_plain_and_sha256() {
        let hex: String = Sha256::digest(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let a = Auth::parse(&format!("# users\nesp:pw\nnurse:sha256:{hex}\n")).expect("parses");
        assert!(a.check(Some("esp"), Some("pw")));
        assert!(a.check(Some("nurse"), Some("s3cret")));
        assert!(!a.check(Some("esp"), Some("PW")));
        assert!(!a.check(Some("x"), Some("pw")));
        assert!(!a.check(None, None));
        assert!(Auth::parse("").is_err());
        assert!(Auth::parse("u:sha256:zz").is_err());
    }

    #[test]
    fn auth_reads_mosquitto_passwd_files_and_refuses_plain_text_unless_allowed() {
        // written by Debian's mosquitto_passwd 2.0.11 (`-b -c`, and `-H sha512` for the $6$ line)
        let file = "sensor-1:$7$101$9Zyo7sr0DYoPSz5V$1GqtGkb5ouJqIpFzmc2vY8+w0Hw6MQFEQsIWscAI7Ji+OL9+PJP7mRP3YCw/3F2k+VVglZAUvjNfw+SxXGdGWw==\n\
            old-sensor:$6$3Smah4xGYAwwlnmv$z/t5mlQq2BCuC43Joy+uJKYrr/mJy4Ab04s97h0Rv123hokHVow4wv9gVfTYHqewzgF9MVa+rUZG/eOjgwrd7A==\n";
        let a = Auth::parse_with(file, false).expect("parses");
        assert!(a.check(Some("sensor-1"), Some("s3cret-pass")));
        assert!(!a.check(Some("sensor-1"), Some("s3cret-pasS")));
        assert!(a.check(Some("old-sensor"), Some("older-pass")));
        assert!(!a.check(Some("old-sensor"), Some("s3cret-pass")));
        let e = Auth::parse_with("esp:pw\n", false)
            .expect_err("plain text is refused")
            .to_string();
        assert!(
            e.contains("plain text") && e.contains("mosquitto_passwd -U"),
            "{e}"
        );
        assert!(Auth::parse_with("esp:pw\n", true).is_ok());
        assert!(Auth::parse_with("u:$7$abc$$\n", false).is_err());
        assert!(Auth::parse_with("u:$7$0$c2FsdA==$aGFzaA==\n", false).is_err());
        assert!(Auth::parse_with("u:$6$c2FsdA==$aGFzaA==\n", false).is_err());
    }
}
