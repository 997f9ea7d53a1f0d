//! The dashboard: a web page of what goes `$upstream` and of the edge itself, served by `edge-dev up`.
//!
//! Parts:
//! - [`model`]: per device, the window averages of the last hours and the latest alerts (pure logic).
//! - [`metrics`]: OpenMetrics text of the hub's counters, the supervisor's view and the upstream link.
//! - [`scrape`]: modules' own Prometheus endpoints, passed on under `/metrics/modules/{module}`.
//! - this module: [`Dashboard`] (the state, fed with upstream messages) and [`serve`], an axum server of
//!   the page (`assets/`, compiled into the binary), the JSON API the page uses, a server-sent event
//!   stream and `/metrics`. docs/DASHBOARD.md documents the API.
//!
//! The dashboard sees a message when the upstream sink delivered it, or, with `--offline`, when it was
//! queued for upstream: caregivers see temperatures also while the internet is away.

pub mod metrics;
pub mod model;
pub mod scrape;

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::supervisor::StatusMap;
use crate::EdgeDevError;
use edge_hub::{HubStats, StoredMessage};

pub use model::{Alert, Limits, Point, ALL_DEVICES};

/// The default address of the dashboard.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Settings of the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardOptions {
    /// The fever threshold drawn on the charts, in °C. Default 38.0 (the template's `HAVING Avg(temp) >= 38.0`).
    pub fever_threshold: f64,
    /// How much history is kept and how many points, devices and alerts. Default 6 hours, 2000 points per
    /// device, 100 devices, 200 alerts (a snapshot stays within a few tens of MB even when all are full).
    pub limits: Limits,
    /// How often the event stream sends the modules' health. Default 1 s.
    pub health_interval: Duration,
    /// The edge device's id, shown in the title.
    pub device_id: String,
    /// Whether edge-dev runs `--offline` (the upstream link state).
    pub offline: bool,
    /// Module -> URL of its own Prometheus metrics, served again under `/metrics/modules/{module}`.
    /// Default none; `edge-dev up` finds them with [`scrape::urls_from_env`].
    pub module_metrics: std::collections::BTreeMap<String, String>,
    /// A secret every request must carry (`Authorization: Bearer <token>`, the cookie
    /// `edge_dev_token`, or `?token=` once, which sets the cookie). Required when the dashboard
    /// listens beyond loopback ([`check_exposure`]); default none (loopback only).
    pub token: Option<String>,
}

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why the dashboard may not listen where it was asked to ([`check_exposure`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExposureError {
    #[error("the dashboard token is {len} characters; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 16`)")]
    ShortToken { len: usize },
    #[error("the dashboard would listen on {addr}, beyond this machine, and it shows patients' data: give it a token (--dashboard-token or EDGE_DEV_DASHBOARD_TOKEN, at least {MIN_TOKEN_LEN} characters, e.g. `openssl rand -hex 16`), or keep it on 127.0.0.1")]
    NoToken { addr: SocketAddr },
}

/// A dashboard shows patients' temperatures: it may listen beyond this machine (an address that is
/// not loopback) only with a token of at least [`MIN_TOKEN_LEN`] characters.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>) -> Result<(), ExposureError> {
    match token {
        Some(t) if t.chars().count() < MIN_TOKEN_LEN => Err(ExposureError::ShortToken {
            len: t.chars().count(),
        }),
        None if !addr.ip().is_loopback() => Err(ExposureError::NoToken { addr }),
        _ => Ok(()),
    }
}

/// Constant-time comparison of two secrets (the time does not tell how much matched).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries, if any: the bearer header, the cookie, or `?token=`.
fn presented_token(req: &axum::extract::Request) -> (Option<String>, bool) {
    let headers = req.headers();
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return (Some(t.trim().to_string()), false);
    }
    if let Some(q) = req.uri().query() {
        for (k, v) in url_pairs(q) {
            if k == "token" {
                return (Some(v), true);
            }
        }
    }
    for c in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for part in c.split(';') {
            if let Some(t) = part.trim().strip_prefix("edge_dev_token=") {
                return (Some(t.to_string()), false);
            }
        }
    }
    (None, false)
}

/// `a=b&c=d` with %-escapes decoded.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some((dec(k), dec(v)))
        })
        .collect()
}

/// The dashboard's gate when it has a token: 401 without it; `?token=` sets the cookie, so the
/// page's own requests (the API, the event stream) carry it.
async fn require_token(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(want) = s.dash.inner.opts.token.clone() else {
        return next.run(req).await;
    };
    let (got, from_query) = presented_token(&req);
    if !got.is_some_and(|g| same_secret(g.as_bytes(), want.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this dashboard needs its token: open /?token=<token> once (a cookie keeps it), or send Authorization: Bearer <token>\n",
        )
            .into_response();
    }
    let mut resp = next.run(req).await;
    if from_query {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "edge_dev_token={want}; Path=/; HttpOnly; SameSite=Strict"
        )) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            fever_threshold: 38.0,
            limits: Limits::default(),
            health_interval: Duration::from_secs(1),
            device_id: String::new(),
            offline: false,
            module_metrics: Default::default(),
            token: None,
        }
    }
}

/// Where the hub's counters come from (`HubHandle::stats` in `edge-dev up`).
pub type StatsSource = Arc<dyn Fn() -> HubStats + Send + Sync>;

/// The upstream link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Upstream messages are delivered.
    Online,
    /// `--offline`: upstream messages stay in the store-and-forward queue.
    Offline,
    /// Deliveries fail (IoT Hub unreachable, disk full) and are retried; messages stay queued meanwhile.
    Retrying,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkHealth {
    pub state: LinkState,
    /// Messages waiting in the `$upstream` queue.
    pub upstream_depth: u64,
    /// Why deliveries fail, while the state is `retrying`.
    pub error: Option<String>,
}

/// One module as the hub and the supervisor see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleHealth {
    pub name: String,
    /// Whether the supervisor runs it (false for `--external` modules and those not desired running).
    pub supervised: bool,
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub given_up: Option<String>,
    /// Connected to the hub.
    pub connected: bool,
    /// Messages delivered to its inputs and acknowledged by it (what it received).
    pub received: u64,
    /// Messages it sent to its outputs.
    pub sent: u64,
    /// Messages waiting in its input queue.
    pub queue_depth: u64,
    /// `/metrics/modules/{name}` when the module serves its own metrics.
    pub metrics: Option<String>,
}

/// The edge's health: the link, the hub's drop counters and every module.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub link: LinkHealth,
    pub unrouted: u64,
    pub expired: u64,
    pub modules: Vec<ModuleHealth>,
}

/// One device's series.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSeries {
    pub device: String,
    pub latest: Option<Point>,
    /// Oldest first.
    pub points: Vec<Point>,
}

/// Everything the page shows, as `GET /api/snapshot` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub device_id: String,
    pub threshold: f64,
    pub retention_secs: i64,
    pub health: Health,
    pub devices: Vec<DeviceSeries>,
    /// Oldest first.
    pub alerts: Vec<Alert>,
}

/// What the page is told about as it happens (`GET /api/events`: `reading` and `alert`).
#[derive(Debug, Clone)]
enum PageEvent {
    Reading(Point),
    Alert(Alert),
}

/// The dashboard's state; cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    opts: DashboardOptions,
    stats: StatsSource,
    status: StatusMap,
    history: Mutex<model::History>,
    events: broadcast::Sender<PageEvent>,
    /// The upstream sink's last delivery error while deliveries fail.
    link: Mutex<Option<watch::Receiver<Option<String>>>>,
    online: Mutex<Option<watch::Receiver<bool>>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Dashboard {
    pub fn new(opts: DashboardOptions, stats: StatsSource, status: StatusMap) -> Dashboard {
        let (events, _) = broadcast::channel(1024);
        let history = Mutex::new(model::History::new(opts.limits));
        Dashboard {
            inner: Arc::new(Inner {
                opts,
                stats,
                status,
                history,
                events,
                link: Mutex::new(None),
                online: Mutex::new(None),
            }),
        }
    }

    fn history(&self) -> MutexGuard<'_, model::History> {
        // The history stays consistent after any panic elsewhere: every update is one call.
        self.inner.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the upstream sink's delivery errors (`UpstreamSink::link`) for the link state.
    pub fn watch_link(&self, errors: watch::Receiver<Option<String>>) {
        *self.inner.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(errors);
    }

    /// Follows the upstream link's on/off switch (`--offline`, `edge-dev upstream offline|online`).
    pub fn watch_online(&self, online: watch::Receiver<bool>) {
        *self.inner.online.lock().unwrap_or_else(|e| e.into_inner()) = Some(online);
    }

    /// Takes the window average and the alert out of an upstream message, if it has them, and
    /// tells the page. Returns the point as kept.
    pub fn record(&self, m: &StoredMessage) -> Option<Point> {
        if let Some(a) = model::alert_from_message(m) {
            self.record_alert(a);
        }
        self.record_point(model::from_message(m)?)
    }

    /// Records a point and tells the page; `None` if it was not kept (too old, too many devices).
    pub fn record_point(&self, p: Point) -> Option<Point> {
        let stored = self.history().record(p, now_ms())?;
        let _ = self.inner.events.send(PageEvent::Reading(stored.clone()));
        Some(stored)
    }

    /// Records an alert and tells the page; `None` if it was not kept (too old, already known).
    pub fn record_alert(&self, a: Alert) -> Option<Alert> {
        let stored = self.history().record_alert(a, now_ms())?;
        let _ = self.inner.events.send(PageEvent::Alert(stored.clone()));
        Some(stored)
    }

    /// Fills the history from the end of an upstream log (the last 16 MiB), so the charts survive a
    /// restart of edge-dev. A missing file is no error. Returns the points kept.
    pub fn load_log(&self, path: &Path) -> Result<usize, EdgeDevError> {
        const TAIL: u64 = 16 * 1024 * 1024;
        let io = |e| EdgeDevError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        let len = f.metadata().map_err(io)?.len();
        let start = len.saturating_sub(TAIL);
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(io)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.lines();
        if start > 0 {
            lines.next(); // a partial line
        }
        let now = now_ms();
        let mut h = self.history();
        let mut kept = 0;
        for line in lines {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(a) = model::alert_from_log_line(&v) {
                h.record_alert(a, now);
            }
            if let Some(p) = model::from_log_line(&v) {
                if h.record(p, now).is_some() {
                    kept += 1;
                }
            }
        }
        Ok(kept)
    }

    /// Records every message of `rx` until `stop` resolves or every sender is gone.
    pub async fn follow(
        self,
        mut rx: broadcast::Receiver<StoredMessage>,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                m = rx.recv() => match m {
                    Ok(m) => {
                        self.record(&m);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("the dashboard missed {n} upstream messages (it fell behind); its charts lack them");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// The link, the hub's counters and every module (the hub's and the supervisor's, by name).
    pub fn health(&self) -> Health {
        let stats = (self.inner.stats)();
        let status = self
            .inner
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let mut names: Vec<&String> = stats.modules.keys().chain(status.keys()).collect();
        names.sort();
        names.dedup();
        let modules = names
            .into_iter()
            .map(|name| {
                let hub = stats.modules.get(name).cloned().unwrap_or_default();
                let sup = status.get(name);
                ModuleHealth {
                    name: name.clone(),
                    supervised: sup.is_some(),
                    running: sup.is_some_and(|s| s.running),
                    pid: sup.and_then(|s| s.pid),
                    restarts: sup.map(|s| s.restarts).unwrap_or(0),
                    last_exit: sup.and_then(|s| s.last_exit.clone()),
                    given_up: sup.and_then(|s| s.given_up.clone()),
                    connected: hub.connected,
                    // the hub counts from its side: what it took in from the module is what the
                    // module sent, what it gave out is what the module received
                    received: hub.messages_out,
                    sent: hub.messages_in,
                    queue_depth: hub.queue_depth,
                    metrics: self
                        .inner
                        .opts
                        .module_metrics
                        .contains_key(name.as_str())
                        .then(|| format!("/metrics/modules/{name}")),
                }
            })
            .collect();
        let error = self
            .inner
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|rx| rx.borrow().clone());
        let offline = self
            .inner
            .online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(self.inner.opts.offline, |rx| !*rx.borrow());
        let state = match (&error, offline) {
            (_, true) => LinkState::Offline,
            (Some(_), false) => LinkState::Retrying,
            (None, false) => LinkState::Online,
        };
        Health {
            link: LinkHealth {
                state,
                upstream_depth: stats.upstream_depth,
                error,
            },
            unrouted: stats.unrouted,
            expired: stats.expired,
            modules,
        }
    }

    /// Everything the page shows.
    pub fn snapshot(&self) -> Snapshot {
        let health = self.health();
        let mut h = self.history();
        h.prune(now_ms());
        let devices = h
            .devices()
            .map(|(d, points)| {
                let points: Vec<Point> = points.cloned().collect();
                DeviceSeries {
                    device: d.clone(),
                    latest: points.last().cloned(),
                    points,
                }
            })
            .collect();
        Snapshot {
            device_id: self.inner.opts.device_id.clone(),
            threshold: self.inner.opts.fever_threshold,
            retention_secs: h.limits().retention_ms / 1000,
            health,
            devices,
            alerts: h.alerts().cloned().collect(),
        }
    }

    /// OpenMetrics text ([`metrics::OPENMETRICS`]).
    pub fn metrics_text(&self) -> String {
        let health = self.health();
        let h = self.history();
        let latest: Vec<(String, f64)> = h.latest().map(|p| (p.device.clone(), p.value)).collect();
        metrics::render(&health, h.readings_total, h.alerts_total, &latest)
    }

    /// The routes; event streams end when `stop` becomes true.
    pub fn router(&self, stop: watch::Receiver<bool>) -> Router {
        Router::new()
            .route(
                "/",
                get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
            )
            .route(
                "/assets/app.js",
                get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
            )
            .route(
                "/assets/app.css",
                get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
            )
            .route(
                "/api/snapshot",
                get(|State(s): State<AppState>| async move { Json(s.dash.snapshot()) }),
            )
            .route(
                "/api/health",
                get(|State(s): State<AppState>| async move { Json(s.dash.health()) }),
            )
            .route(
                "/api/alerts",
                get(|State(s): State<AppState>| async move { Json(s.dash.snapshot().alerts) }),
            )
            .route("/api/devices/{device}", get(device_series))
            .route("/api/events", get(events))
            .route(
                "/metrics",
                get(|State(s): State<AppState>| async move {
                    (
                        [(header::CONTENT_TYPE, metrics::OPENMETRICS)],
                        s.dash.metrics_text(),
                    )
                }),
            )
            .route("/metrics/modules/{module}", get(module_metrics))
            .layer(axum::middleware::from_fn_with_state(
                AppState {
                    dash: self.clone(),
                    stop: stop.clone(),
                },
                require_token,
            ))
            .with_state(AppState {
                dash: self.clone(),
                stop,
            })
    }
}

#[derive(Clone)]
struct AppState {
    dash: Dashboard,
    stop: watch::Receiver<bool>,
}

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

/// A compiled-in file. The page loads nothing from elsewhere, and the policy says so to the browser.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"),
    );
    r
}

async fn device_series(State(s): State<AppState>, UrlPath(device): UrlPath<String>) -> Response {
    match s.dash.snapshot().devices.into_iter().find(|d| d.device == device) {
        Some(d) => Json(d).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no readings of device {device:?} in the kept history; GET /api/snapshot lists the devices")).into_response(),
    }
}

async fn module_metrics(State(s): State<AppState>, UrlPath(module): UrlPath<String>) -> Response {
    let Some(url) = s.dash.inner.opts.module_metrics.get(&module) else {
        return (StatusCode::NOT_FOUND, format!("edge-dev knows no metrics endpoint of module {module:?}; set its *_METRICS_PORT in the deployment's env"))
            .into_response();
    };
    match scrape::fetch(url, Duration::from_secs(5)).await {
        Ok(page) => ([(header::CONTENT_TYPE, page.content_type)], page.body).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// `reading` events as points arrive, `health` every `health_interval`, `resync` when this stream fell
/// behind (the page then reloads the snapshot).
async fn events(
    State(s): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = s.dash.inner.events.subscribe();
    let mut tick = tokio::time::interval(s.dash.inner.opts.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (rx, tick, s.stop.clone(), s.dash.clone());
    let stream = futures_util::stream::unfold(
        state,
        |(mut rx, mut tick, mut stop, dash)| async move {
            if *stop.borrow() {
                return None;
            }
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                r = rx.recv() => match r {
                    Ok(PageEvent::Reading(p)) => Event::default().event("reading").data(serde_json::to_string(&p).unwrap_or_default()),
                    Ok(PageEvent::Alert(a)) => Event::default().event("alert").data(serde_json::to_string(&a).unwrap_or_default()),
                    Err(broadcast::error::RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tick.tick() => Event::default().event("health").data(serde_json::to_string(&dash.health()).unwrap_or_default()),
            };
            Some((Ok(event), (rx, tick, stop, dash)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Serves the dashboard on `listener` until `shutdown` resolves; open event streams end then too.
pub async fn serve(
    listener: TcpListener,
    dashboard: Dashboard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        check_exposure(addr, dashboard.inner.opts.token.as_deref())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    let (tx, rx) = watch::channel(false);
    let app = dashboard.router(rx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await
}
