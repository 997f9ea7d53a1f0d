//! `edge-hub`: the local edgeHub: an MQTT 3.1.1 server (TLS, and optionally plain TCP for local
//! processes) that speaks edgeHub's module protocol, routes messages and keeps them in a durable store.
//! `edge-dev` composes it with the rest of a local IoT Edge runtime; every crate's tests run their
//! modules against it (feature `test-util`).
//!
//! Parts:
//! - [`Hub::start`] / [`HubHandle`]: the server, its control API (desired patches, direct methods,
//!   stats) and the `$upstream` queue consumer [`UpstreamQueue`].
//! - `conn`: one task per MQTT connection: authentication (SAS), authorization (own topics only),
//!   publishes -> routes -> durable queues -> PUBACK, delivery of a module's input queue, twins, methods.
//! - `store`: `<data_dir>/hub.redb`, an `edge_store::Store` (one writer thread, group commit): the
//!   queues, persistent sessions, twins.
//! - `twin`: desired/reported properties and merge patches. `acl`: topic filters and who may use which.
//! - [`pki`]: the development CA and the hub's server certificate (rcgen), kept across runs.
//! - `test_util` (feature `test-util`): helpers the tests of every crate share (a small disk that
//!   fills up).
//!
//! Why not rumqttd: it acknowledges a publish before the application sees it (measured; ARCHITECTURE.md,
//! "Neither server is rumqttd"), so a crash
//! would lose acknowledged messages. Here the PUBACK goes out only after the message is committed to disk.
//! The server is built on rumqttc's MQTT 3.1.1 codec (`rumqttc::mqttbytes::v4`) with our own session
//! logic, so every acknowledgement is ours to time.
//!
//! Semantics in short: a module's publish to its events topic is routed, written to every matched
//! queue in one durable redb transaction (concurrent publishes share a commit), and only then
//! acknowledged; QoS 2 closes the connection (edgeHub has none). A module's input queue is delivered
//! while it is connected and subscribed, at most `max_inflight_per_client` unacknowledged, removed on
//! PUBACK, resent (DUP) after a reconnect. Clean-session-0 subscriptions are stored, because the
//! Python SDK never subscribes again after a reconnect. Expired messages are dropped when read and by a
//! periodic sweep. A reported-properties patch is also routed as a message from
//! `/twinChangeNotifications` (body: the patch, `$.cdid`/`$.cmid` set), committed with the twin.
//!
//! Measured here (2 vCPU VM, ext4, release build, 1 KiB QoS 1, rumqttc clients, loopback): durable
//! publishes 12-29k msg/s from one client and 26-45k msg/s from three (group commit); module -> route
//! -> module 9-13k msg/s end to end. `tests/hub_throughput.rs` repeats the measurement.

mod acl;
mod conn;
pub mod pki;
mod store;
mod twin;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use edge_client::wire::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinSet;

use self::store::{QueueKey, Store, UPSTREAM};

pub use self::acl::filter_matches;
// Public for the fuzz targets (`fuzz/`): the subscription rules and the module twins.
pub use self::acl::{may_subscribe, valid_filter, SubscribeRefused};
pub use self::twin::{PatchError, TwinState};

/// Settings of the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// The IoT Hub host name of the local device, as it appears in SAS tokens (`sr`) and MQTT user
    /// names. Default `edge-dev.local`.
    pub iothub_hostname: String,
    /// The edge device's id. Default `edge-dev-device`.
    pub device_id: String,
    /// Directory of the durable store `hub.redb`. Default `.edge-dev`.
    pub data_dir: PathBuf,
    /// Largest message (body plus properties) in bytes a module may publish; larger ones close the
    /// connection. Default 262144 (edgeHub's limit).
    pub max_message_size: usize,
    /// How long (seconds) a queued message is kept when its route sets no `timeToLiveSecs`; older
    /// messages are dropped with a log line. Default 7200 (edgeHub's default).
    pub store_and_forward_ttl_secs: u32,
    /// Messages delivered to one module and not yet acknowledged (PUBACK), at most. Default 16.
    pub max_inflight_per_client: usize,
    /// Seconds a new connection has to complete TLS and send CONNECT. Default 10.
    pub connect_timeout_secs: u64,
    /// Seconds between sweeps that drop expired messages from every queue (also the queues of
    /// modules that are not connected). Default 60.
    pub sweep_interval_secs: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            iothub_hostname: "edge-dev.local".into(),
            device_id: "edge-dev-device".into(),
            data_dir: PathBuf::from(".edge-dev"),
            max_message_size: edge_client::wire::MAX_MESSAGE_SIZE,
            store_and_forward_ttl_secs: 7200,
            max_inflight_per_client: 16,
            connect_timeout_secs: 10,
            sweep_interval_secs: 60,
        }
    }
}

/// A module the hub lets in, with its symmetric key (raw bytes, not base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleIdentity {
    pub module_id: String,
    pub primary_key: Vec<u8>,
}

/// The bound listeners the hub serves: TLS (what modules use, port 8883 in production) and optionally
/// plain TCP for local processes.
#[derive(Debug, Default)]
pub struct HubListeners {
    pub tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    pub plain: Option<TcpListener>,
}

/// Errors of the hub's API.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub store: {0}")]
    Store(String),
    #[error("cannot create the data directory {path}: {source}; check the --data-dir setting and permissions")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid hub settings: {0}")]
    Config(String),
    #[error(
        "module {0:?} is not a module of this deployment; check the name against the manifest"
    )]
    UnknownModule(String),
    #[error(
        "module {module:?} is not connected (or has not subscribed to {what}); start it, or wait until it connects"
    )]
    NotConnected { module: String, what: String },
    #[error("module {module:?} did not answer method {method:?} within {timeout:?}; is its method handler running?")]
    MethodTimeout {
        module: String,
        method: String,
        timeout: Duration,
    },
    #[error(transparent)]
    BadPatch(#[from] PatchError),
    #[error(
        "no message with sequence number {0} was handed out by this queue (already acknowledged?)"
    )]
    UnknownSeq(u64),
    #[error("the hub has stopped")]
    Stopped,
}

/// The sender of messages injected with `edge-dev send` (as the monitor and the module's record show it).
pub const INJECTED: &str = "$edgeDev";

impl From<store::StoreError> for HubError {
    fn from(e: store::StoreError) -> Self {
        HubError::Store(e.0)
    }
}

/// A message the hub took (from a module's output, or injected), and where its routes sent it.
#[derive(Debug, Clone)]
pub struct MonitorEvent {
    /// When the hub stored it.
    pub time: DateTime<Utc>,
    /// The module that sent it (`$edgeDev` for a message injected with `edge-dev send`).
    pub module: String,
    pub output: String,
    /// The endpoints it was queued for: `$upstream`, `module/{name}/{input}`; empty when no route
    /// matched (the message was acknowledged and dropped, as edgeHub does).
    pub targets: Vec<String>,
    pub message: Message,
}

impl MonitorEvent {
    /// The event as one JSON object (body as text when it is UTF-8, else base64).
    pub fn to_json(&self) -> Value {
        let body = match std::str::from_utf8(&self.message.body) {
            Ok(text) => serde_json::from_str::<Value>(text)
                .unwrap_or_else(|_| Value::String(text.to_string())),
            Err(_) => {
                use base64::Engine as _;
                serde_json::json!({
                    "base64": base64::engine::general_purpose::STANDARD.encode(&self.message.body)
                })
            }
        };
        serde_json::json!({
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "module": self.module,
            "output": self.output,
            "targets": self.targets,
            "properties": self.message.properties,
            "systemProperties": self.message.system_properties(),
            "body": body,
        })
    }
}

/// A message taken from a durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Sequence number; pass it to [`UpstreamQueue::ack`].
    pub seq: u64,
    pub enqueued_time: DateTime<Utc>,
    /// The module that sent it and the output it sent it to.
    pub module: String,
    pub output: String,
    pub message: Message,
    /// Route priority: 0 (highest) to 9, or `edge_routes::DEFAULT_PRIORITY` (10, below all) when the
    /// route set none.
    pub priority: u8,
}

/// Counters of one module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModuleStats {
    pub connected: bool,
    /// Messages the module sent to its outputs.
    pub messages_in: u64,
    /// Messages delivered to the module's inputs and acknowledged by it.
    pub messages_out: u64,
    /// Messages waiting in its input queue (including in flight).
    pub queue_depth: u64,
}

/// A snapshot of the hub's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HubStats {
    pub modules: BTreeMap<String, ModuleStats>,
    /// Messages waiting in the `$upstream` queue.
    pub upstream_depth: u64,
    /// Messages no route matched (acknowledged and dropped, as edgeHub does).
    pub unrouted: u64,
    /// Messages dropped because their time to live passed.
    pub expired: u64,
}

/// The hub server.
pub struct Hub;

/// Per-module runtime state (for modules with an identity).
struct ModuleRt {
    /// Wakes the module's connection when its input queue got messages (a permit is kept if the
    /// connection is busy).
    notify: Notify,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    connected: AtomicBool,
    /// Sequence numbers sent at least once and not yet acknowledged (a resend carries DUP).
    sent: Mutex<HashSet<u64>>,
    /// Sequence numbers acknowledged whose delete is not committed yet (never resend them).
    deleting: Mutex<HashSet<u64>>,
}

/// Something the hub asks a connection to send.
#[derive(Debug)]
struct Outbound {
    topic: String,
    payload: Bytes,
}

/// The live connection of a session.
struct ConnRef {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    kick: Arc<Notify>,
}

/// An MQTT session (by client id).
struct Session {
    /// (filter, granted QoS)
    subscriptions: Vec<(String, u8)>,
    /// Clean session 0: kept (also on disk) after the connection ends.
    persistent: bool,
    conn: Option<ConnRef>,
}

struct Inner {
    config: HubConfig,
    /// module -> base64 key (what the SAS verifier takes)
    keys: HashMap<String, String>,
    routes: edge_routes::RouteTable,
    store: Store,
    modules: HashMap<String, Arc<ModuleRt>>,
    sessions: Mutex<HashMap<String, Session>>,
    twins: Mutex<HashMap<String, TwinState>>,
    methods: Mutex<HashMap<String, oneshot::Sender<(u16, Bytes)>>>,
    upstream_notify: Notify,
    upstream_handed: Mutex<BTreeMap<u64, QueueKey>>,
    unrouted: AtomicU64,
    expired: AtomicU64,
    next_id: AtomicU64,
    /// Every message the hub took, with where its routes sent it (`edge-dev monitor`).
    monitor: tokio::sync::broadcast::Sender<MonitorEvent>,
}

impl Inner {
    fn ttl_ms(&self, route_ttl: Option<u32>) -> i64 {
        let secs = match route_ttl {
            Some(t) if t > 0 => t,
            _ => self.config.store_and_forward_ttl_secs,
        };
        i64::from(secs) * 1000
    }

    fn client_id(&self, module: &str) -> String {
        format!("{}/{}", self.config.device_id, module)
    }

    /// The live connection of `module` if it has a subscription matching `topic`.
    fn sender_for(&self, module: &str, topic: &str) -> Option<mpsc::Sender<Outbound>> {
        let sessions = self.sessions.lock().ok()?;
        let s = sessions.get(&self.client_id(module))?;
        let conn = s.conn.as_ref()?;
        if s.subscriptions
            .iter()
            .any(|(f, _)| acl::filter_matches(f, topic))
        {
            Some(conn.tx.clone())
        } else {
            None
        }
    }
}

/// Handle to a running hub; cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    inner: Arc<Inner>,
    stopped: watch::Receiver<bool>,
}

/// Consumer of the durable `$upstream` queue (higher priority first, then arrival order).
#[derive(Clone)]
pub struct UpstreamQueue {
    inner: Arc<Inner>,
}

impl Hub {
    /// Opens the store under `config.data_dir`, loads sessions and twins, and serves `listeners` until
    /// `shutdown` resolves. `desired_twins` maps module -> its desired properties from the manifest.
    pub async fn start(
        config: HubConfig,
        modules: Vec<ModuleIdentity>,
        routes: edge_routes::RouteTable,
        desired_twins: BTreeMap<String, Value>,
        listeners: HubListeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<HubHandle, HubError> {
        if config.max_inflight_per_client == 0 {
            return Err(HubError::Config(
                "max_inflight_per_client must be at least 1".into(),
            ));
        }
        if config.max_message_size == 0 {
            return Err(HubError::Config(
                "max_message_size must be at least 1".into(),
            ));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| HubError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let path = config.data_dir.join("hub.redb");
        let store = tokio::task::spawn_blocking(move || store::open(&path))
            .await
            .map_err(|e| HubError::Store(e.to_string()))??;

        for route in routes.routes() {
            if let edge_routes::Sink::ModuleInput { module, .. } = &route.sink {
                if !modules.iter().any(|m| &m.module_id == module) {
                    tracing::warn!(route = %route.name, module = %module, "route delivers to a module that is not in this deployment; its messages wait in the store until their time to live passes");
                }
            }
        }
        let keys: HashMap<String, String> = modules
            .iter()
            .map(|m| {
                (
                    m.module_id.clone(),
                    base64::engine::general_purpose::STANDARD.encode(&m.primary_key),
                )
            })
            .collect();
        let module_rts: HashMap<String, Arc<ModuleRt>> = modules
            .iter()
            .map(|m| {
                (
                    m.module_id.clone(),
                    Arc::new(ModuleRt {
                        notify: Notify::new(),
                        messages_in: AtomicU64::new(0),
                        messages_out: AtomicU64::new(0),
                        connected: AtomicBool::new(false),
                        sent: Mutex::new(HashSet::new()),
                        deleting: Mutex::new(HashSet::new()),
                    }),
                )
            })
            .collect();

        // Sessions (clean session 0) survive restarts: the Python SDK never resubscribes.
        let sessions: HashMap<String, Session> = store::sessions(&store)?
            .into_iter()
            .map(|(id, subscriptions)| {
                (
                    id,
                    Session {
                        subscriptions,
                        persistent: true,
                        conn: None,
                    },
                )
            })
            .collect();

        // Twins: stored reported properties; desired from the manifest.
        let mut twins = store::twins(&store)?;
        let mut twin_ops = Vec::new();
        let names: HashSet<&String> = keys.keys().chain(desired_twins.keys()).collect();
        for name in names {
            let desired = desired_twins
                .get(name)
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            let changed = match twins.get_mut(name) {
                Some(t) => t.set_desired_from_manifest(&desired),
                None => {
                    twins.insert(name.clone(), TwinState::new(&desired));
                    true
                }
            };
            if changed {
                if let Some(t) = twins.get(name) {
                    twin_ops.push(store::put_twin(
                        name,
                        serde_json::to_vec(t).map_err(|e| HubError::Store(e.to_string()))?,
                    ));
                }
            }
        }
        if !twin_ops.is_empty() {
            store.write(twin_ops).await?;
        }
        let upstream_depth = store.depth(UPSTREAM);
        if upstream_depth > 0 {
            tracing::info!(
                messages = upstream_depth,
                "the $upstream queue holds messages from a previous run"
            );
        }

        let inner = Arc::new(Inner {
            config,
            keys,
            routes,
            store,
            modules: module_rts,
            sessions: Mutex::new(sessions),
            twins: Mutex::new(twins),
            methods: Mutex::new(HashMap::new()),
            upstream_notify: Notify::new(),
            upstream_handed: Mutex::new(BTreeMap::new()),
            unrouted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            monitor: tokio::sync::broadcast::channel(1024).0,
        });
        let (stopped_tx, stopped_rx) = watch::channel(false);
        tokio::spawn(serve(inner.clone(), listeners, shutdown, stopped_tx));
        Ok(HubHandle {
            inner,
            stopped: stopped_rx,
        })
    }
}

async fn accept_on(
    l: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve(
    inner: Arc<Inner>,
    listeners: HubListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopped: watch::Sender<bool>,
) {
    let (tls_listener, tls_config) = match listeners.tls {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    let acceptor = tls_config.map(tokio_rustls::TlsAcceptor::from);
    let plain_listener = listeners.plain;
    let (close_tx, close_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    // Expired messages are dropped when a queue is read, and by this sweep from every queue (also those
    // of modules that never connect, which no reader would meet).
    let mut sweep_timer =
        tokio::time::interval(Duration::from_secs(inner.config.sweep_interval_secs.max(1)));
    sweep_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = sweep_timer.tick() => sweep(&inner).await,
            r = accept_on(&tls_listener) => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    if let Some(acceptor) = acceptor.clone() {
                        let inner = inner.clone();
                        let close = close_rx.clone();
                        conns.spawn(async move {
                            let timeout = Duration::from_secs(inner.config.connect_timeout_secs.max(1));
                            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => conn::run(inner, tls, peer, close).await,
                                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake failed; the client must trust the edge-dev CA (`edge-dev module-cred` prints its path) and connect to a name in the hub's certificate (localhost, edgeHub, 127.0.0.1 or the configured host name)"),
                                Err(_) => tracing::warn!(%peer, "TLS handshake timed out; closing"),
                            }
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "accepting a TLS connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            r = accept_on(&plain_listener) => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(conn::run(inner.clone(), tcp, peer, close_rx.clone()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "accepting a TCP connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(tls_listener);
    drop(plain_listener);
    tracing::info!(
        connections = conns.len(),
        "hub stopping: closing connections"
    );
    let _ = close_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 5 s; aborting them");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    // Fail pending method calls now rather than at their timeout.
    if let Ok(mut m) = inner.methods.lock() {
        m.clear();
    }
    // Flush and close the store, so the data directory can be opened again at once.
    if let Err(e) = inner.store.close().await {
        tracing::error!(error = %e, "final store flush failed");
    }
    drop(inner);
    let _ = stopped.send(true);
    tracing::info!("hub stopped");
}

/// Deletes expired queue entries that nobody holds (not in flight to a module, not handed out by the
/// upstream queue).
async fn sweep(inner: &Arc<Inner>) {
    let mut busy: HashSet<u64> = HashSet::new();
    for rt in inner.modules.values() {
        if let Ok(s) = rt.sent.lock() {
            busy.extend(s.iter().copied());
        }
        if let Ok(d) = rt.deleting.lock() {
            busy.extend(d.iter().copied());
        }
    }
    if let Ok(h) = inner.upstream_handed.lock() {
        busy.extend(h.keys().copied());
    }
    let expired = match inner.store.expired(now_ms(), 100_000) {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!(error = %e, "sweeping expired messages failed");
            return;
        }
    };
    let keys: Vec<QueueKey> = expired
        .into_iter()
        .filter(|k| !busy.contains(&k.seq))
        .collect();
    if !keys.is_empty() {
        let mut per_endpoint: BTreeMap<&str, u64> = BTreeMap::new();
        for k in &keys {
            *per_endpoint.entry(k.endpoint.as_str()).or_insert(0) += 1;
        }
        for (endpoint, n) in &per_endpoint {
            tracing::warn!(queue = %endpoint, messages = n, "dropping queued messages whose time to live passed (raise timeToLiveSecs if the receiver is often away this long)");
        }
        let n = keys.len() as u64;
        let ops = keys
            .iter()
            .cloned()
            .map(|key| store::Op::Delete { key })
            .collect();
        match inner.store.write(ops).await {
            Ok(()) => {
                inner.expired.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "could not delete expired messages"),
        }
    }
}

impl HubHandle {
    /// Every message the hub takes from now on, with its targets (a lagging receiver misses some).
    pub fn monitor(&self) -> tokio::sync::broadcast::Receiver<MonitorEvent> {
        self.inner.monitor.subscribe()
    }

    /// Queues `message` for `module`'s input `input`, durably, as a route would (what iotedgehubdev's
    /// `POST /api/v1/messages` does); the module gets it on `.../inputs/{input}` once it subscribed.
    pub async fn inject(
        &self,
        module: &str,
        input: &str,
        message: Message,
    ) -> Result<(), HubError> {
        let inner = &self.inner;
        if !inner.modules.contains_key(module) {
            return Err(HubError::UnknownModule(module.to_string()));
        }
        if input.is_empty() || input.contains(['/', '#', '+']) {
            return Err(HubError::Config(format!(
                "input name {input:?} must be non-empty and without `/`, `#` or `+`"
            )));
        }
        let now = now_ms();
        let endpoint = store::module_endpoint(module);
        let record = store::Record {
            enqueued_ms: now,
            expiry_ms: now.saturating_add(inner.ttl_ms(None)),
            module: INJECTED.to_string(),
            output: String::new(),
            input: input.to_string(),
            message: message.clone(),
        };
        let ops = vec![store::Op::Enqueue {
            key: QueueKey {
                endpoint: endpoint.clone(),
                priority: 0,
                seq: inner.store.next_seq(),
            },
            record: store::encode_record(&record),
        }];
        let done = conn::commit_and_announce(inner, ops, vec![endpoint]);
        done.await.map_err(|_| HubError::Stopped)??;
        let _ = inner.monitor.send(MonitorEvent {
            time: Utc::now(),
            module: INJECTED.to_string(),
            output: String::new(),
            targets: vec![format!("module/{module}/{input}")],
            message,
        });
        Ok(())
    }

    /// The `$upstream` queue's consumer.
    pub fn upstream(&self) -> UpstreamQueue {
        UpstreamQueue {
            inner: self.inner.clone(),
        }
    }

    /// Merges `patch` into `module`'s desired properties, bumps `$version`, stores the twin and pushes
    /// the patch to the module if it is connected and subscribed. Returns the new version.
    pub async fn update_desired(&self, module: &str, patch: Value) -> Result<u64, HubError> {
        let inner = &self.inner;
        let (version, body, commit) = {
            let mut twins = inner.twins.lock().map_err(|_| HubError::Stopped)?;
            let twin = twins
                .get_mut(module)
                .ok_or_else(|| HubError::UnknownModule(module.to_string()))?;
            let mut next = twin.clone();
            let (version, body) = next.patch_desired(&patch)?;
            let bytes = serde_json::to_vec(&next).map_err(|e| HubError::Store(e.to_string()))?;
            *twin = next;
            // Submitted under the lock: twin writes commit in the order they were made.
            let commit = inner.store.submit(vec![store::put_twin(module, bytes)]);
            (version, body, commit)
        };
        commit.await?;
        let topic = edge_client::wire::topics::desired_patch(version);
        if let Some(tx) = inner.sender_for(module, &topic) {
            let payload = Bytes::from(body.to_string());
            if tx.try_send(Outbound { topic, payload }).is_err() {
                tracing::warn!(module, version, "could not push a desired patch (connection busy or closing); the module gets it with its next twin GET");
            }
        }
        Ok(version)
    }

    /// Calls direct method `method` of `module` with `payload` and waits up to `timeout` for its answer
    /// `(status, payload)`.
    pub async fn invoke_method(
        &self,
        module: &str,
        method: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<(u16, Value), HubError> {
        let inner = &self.inner;
        if !inner.keys.contains_key(module) {
            return Err(HubError::UnknownModule(module.to_string()));
        }
        let rid = format!("{:x}", inner.next_id.fetch_add(1, Ordering::Relaxed));
        let topic = edge_client::wire::topics::method_request(method, &rid);
        let tx = inner
            .sender_for(module, &topic)
            .ok_or_else(|| HubError::NotConnected {
                module: module.to_string(),
                what: "$iothub/methods/POST/#".into(),
            })?;
        let (reply_tx, reply_rx) = oneshot::channel();
        inner
            .methods
            .lock()
            .map_err(|_| HubError::Stopped)?
            .insert(rid.clone(), reply_tx);
        let out = Outbound {
            topic,
            payload: Bytes::from(payload.to_string()),
        };
        let call = async {
            if tx.send(out).await.is_err() {
                return Err(HubError::NotConnected {
                    module: module.to_string(),
                    what: "$iothub/methods/POST/#".into(),
                });
            }
            reply_rx.await.map_err(|_| HubError::Stopped)
        };
        let result = tokio::time::timeout(timeout, call).await;
        if !matches!(result, Ok(Ok(_))) {
            let _ = inner.methods.lock().map(|mut m| m.remove(&rid));
        }
        match result {
            Ok(Ok((status, body))) => {
                let value = if body.iter().all(|b| b.is_ascii_whitespace()) {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).into_owned())
                    })
                };
                Ok((status, value))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HubError::MethodTimeout {
                module: module.to_string(),
                method: method.to_string(),
                timeout,
            }),
        }
    }

    /// Counters per module and queue depths.
    pub fn stats(&self) -> HubStats {
        let inner = &self.inner;
        // counted by the store's commits: always what the file holds
        let depths = inner.store.depth_map();
        let modules = inner
            .modules
            .iter()
            .map(|(name, rt)| {
                (
                    name.clone(),
                    ModuleStats {
                        connected: rt.connected.load(Ordering::Relaxed),
                        messages_in: rt.messages_in.load(Ordering::Relaxed),
                        messages_out: rt.messages_out.load(Ordering::Relaxed),
                        queue_depth: depths
                            .get(&store::module_endpoint(name))
                            .copied()
                            .unwrap_or(0),
                    },
                )
            })
            .collect();
        HubStats {
            modules,
            upstream_depth: depths.get(UPSTREAM).copied().unwrap_or(0),
            unrouted: inner.unrouted.load(Ordering::Relaxed),
            expired: inner.expired.load(Ordering::Relaxed),
        }
    }

    /// The module's twin document as a GET answers it (for the dashboard and tests).
    pub fn twin(&self, module: &str) -> Option<Value> {
        let twins = self.inner.twins.lock().ok()?;
        twins.get(module).map(TwinState::document)
    }

    /// Resolves when the hub has stopped after its shutdown future resolved (connections closed, store
    /// flushed and closed: the data directory may be opened by a new hub at once).
    pub async fn closed(self) {
        let mut stopped = self.stopped.clone();
        drop(self);
        while !*stopped.borrow_and_update() {
            if stopped.changed().await.is_err() {
                return;
            }
        }
    }
}

fn to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl UpstreamQueue {
    /// The next message not yet handed out, waiting for one if the queue is empty. A message stays in
    /// the store until [`UpstreamQueue::ack`]; after a restart unacknowledged messages come again.
    /// Messages past their time to live are dropped with a log line. Once the hub has stopped (its
    /// store is closed) this never returns: consumers select on their own shutdown signal.
    pub async fn next(&self) -> StoredMessage {
        let inner = &self.inner;
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let notified = inner.upstream_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let handed: HashSet<u64> = inner
                .upstream_handed
                .lock()
                .map(|h| h.keys().copied().collect())
                .unwrap_or_default();
            match inner
                .store
                .scan(UPSTREAM, 64, |k, _| !handed.contains(&k.seq))
            {
                Ok(entries) => {
                    let now = now_ms();
                    let mut expired = Vec::new();
                    let mut found = None;
                    for (key, rec) in entries {
                        if rec.expiry_ms <= now {
                            tracing::warn!(seq = key.seq, module = %rec.module, output = %rec.output, enqueued = %to_datetime(rec.enqueued_ms), "dropping an $upstream message whose time to live passed (raise timeToLiveSecs if upstream is often away this long)");
                            expired.push(key);
                            continue;
                        }
                        found = Some((key, rec));
                        break;
                    }
                    if !expired.is_empty() {
                        let n = expired.len() as u64;
                        let ops = expired
                            .into_iter()
                            .map(|key| store::Op::Delete { key })
                            .collect();
                        if let Err(e) = inner.store.write(ops).await {
                            tracing::error!(error = %e, "could not delete expired messages");
                        } else {
                            inner.expired.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    if let Some((key, rec)) = found {
                        let seq = key.seq;
                        let priority = key.priority;
                        if let Ok(mut h) = inner.upstream_handed.lock() {
                            h.insert(seq, key);
                        }
                        return StoredMessage {
                            seq,
                            enqueued_time: to_datetime(rec.enqueued_ms),
                            module: rec.module,
                            output: rec.output,
                            message: rec.message,
                            priority,
                        };
                    }
                    // Nothing now: wait for an enqueue (or re-check expiries now and then).
                    let _ = tokio::time::timeout(Duration::from_secs(60), notified).await;
                }
                Err(e) => {
                    if inner.store.is_closed() {
                        tracing::info!(
                            "the hub has stopped: the $upstream queue has nothing more to give"
                        );
                        std::future::pending::<()>().await;
                    }
                    // one line when it starts, then one a minute (a full disk can last)
                    if failing_since
                        .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(60))
                    {
                        tracing::error!(error = %e, "reading the $upstream queue failed; retrying every second");
                        failing_since = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Removes message `seq` (handed out by [`UpstreamQueue::next`]) from the store, durably (through
    /// the store's one writer, like every other write).
    pub async fn ack(&self, seq: u64) -> Result<(), HubError> {
        let inner = &self.inner;
        let key = inner
            .upstream_handed
            .lock()
            .map_err(|_| HubError::Stopped)?
            .get(&seq)
            .cloned()
            .ok_or(HubError::UnknownSeq(seq))?;
        inner.store.write(vec![store::Op::Delete { key }]).await?;
        if let Ok(mut h) = inner.upstream_handed.lock() {
            h.remove(&seq);
        }
        Ok(())
    }

    /// Gives message `seq` back without removing it: [`UpstreamQueue::next`] returns it again (for a
    /// sink that could not forward it and will retry).
    pub fn release(&self, seq: u64) {
        if let Ok(mut h) = self.inner.upstream_handed.lock() {
            h.remove(&seq);
        }
        self.inner.upstream_notify.notify_waiters();
    }

    /// Messages in the queue (including handed out, unacknowledged ones).
    pub fn depth(&self) -> u64 {
        self.inner.store.depth(UPSTREAM)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: HubConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, HubConfig::default());
        assert_eq!(c.max_message_size, 262_144);
        assert_eq!(c.store_and_forward_ttl_secs, 7200);
        assert_eq!(c.max_inflight_per_client, 16);
        let c: HubConfig =
            serde_json::from_str(r#"{"device_id": "pi", "max_inflight_per_client": 4}"#).unwrap();
        assert_eq!((c.device_id.as_str(), c.max_inflight_per_client), ("pi", 4));
        let e = serde_json::from_str::<HubConfig>(r#"{"max_inflight": 4}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
