//! The control API of a running `edge-dev up` (default `127.0.0.1:53000`, iotedgehubdev's port), and
//! the client the CLI commands (`edge-dev send`, `twin`, `invoke`, `upstream`, `monitor`) use.
//!
//! | method and path | body | what it does |
//! |---|---|---|
//! | `POST /api/v1/messages` | `{"inputName": "input1", "data": "...", "moduleName"?: "M", "properties"?: {"k": "v"}, "contentType"?: "application/json"}` | queues a message for the module's input, as a route would (iotedgehubdev's request; `moduleName` may be left out when the deployment has one module) |
//! | `PATCH /api/v1/modules/{module}/twin/desired` | a JSON merge patch | merges it into the module's desired properties; the module gets a desired-properties patch; answers `{"version": n}` |
//! | `POST /api/v1/modules/{module}/methods/{method}` | `{"payload": any, "timeoutSecs"?: 30}` | calls the module's direct method; answers `{"status": n, "payload": any}` |
//! | `GET /api/v1/upstream` | | `{"online": bool, "depth": n}` |
//! | `PUT /api/v1/upstream` | `{"online": false}` | takes the upstream link down (messages stay in the store-and-forward queue) or up (they drain) |
//! | `GET /api/v1/monitor?module=M&output=O` | | a stream of JSON lines, one per message the hub takes, with where its routes sent it |
//!
//! Errors are `{"error": "..."}` with a status that says whose fault it is (400 the request, 404 an unknown
//! module, 409 a module that is not connected, 504 a method that did not answer). The API listens on
//! loopback by default: anyone who reaches it can drive the modules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use bytes::Bytes;
use edge_client::wire::Message;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::EdgeDevError;
use edge_hub::{HubError, HubHandle};

/// iotedgehubdev's port for the same API.
pub const DEFAULT_ADDR: &str = "127.0.0.1:53000";

/// The file under the data folder where a running `edge-dev up` writes its API's URL.
pub fn url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api.url")
}

/// What the API drives.
#[derive(Clone)]
pub struct ApiState {
    pub hub: HubHandle,
    /// The upstream link: true delivers, false keeps messages in the store-and-forward queue.
    pub online: Arc<watch::Sender<bool>>,
    /// The module `POST /api/v1/messages` targets when the request names none (the deployment's only
    /// module); `None` when there are several.
    pub default_module: Option<String>,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let status = match &e {
            HubError::UnknownModule(_) => StatusCode::NOT_FOUND,
            HubError::NotConnected { .. } => StatusCode::CONFLICT,
            HubError::MethodTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            HubError::BadPatch(_) | HubError::Config(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendRequest {
    input_name: String,
    data: Value,
    module_name: Option<String>,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
    content_type: Option<String>,
}

async fn send_message(State(s): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: SendRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "expected {{\"inputName\": \"...\", \"data\": ..., \"moduleName\"?: \"...\"}}: {e}"
        ))
    })?;
    let module = match (req.module_name, &s.default_module) {
        (Some(m), _) => m,
        (None, Some(m)) => m.clone(),
        (None, None) => {
            return Err(bad(
                "the deployment has several modules: say which with \"moduleName\"",
            ))
        }
    };
    let mut msg = match req.data {
        // a string is sent as it is (iotedgehubdev's form); anything else as JSON
        Value::String(text) => Message::new(text.into_bytes()),
        other => Message::json(&other),
    };
    if let Some(ct) = req.content_type {
        msg.content_type = Some(ct);
    }
    msg.message_id = Some(uuid::Uuid::new_v4().to_string());
    msg.properties = req.properties;
    s.hub.inject(&module, &req.input_name, msg).await?;
    Ok(Json(
        json!({ "module": module, "input": req.input_name, "queued": true }),
    ))
}

async fn patch_desired(
    State(s): State<ApiState>,
    UrlPath(module): UrlPath<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: Value = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body must be a JSON merge patch (an object): {e}"
        ))
    })?;
    if !patch.is_object() {
        return Err(bad("the body must be a JSON merge patch (an object)"));
    }
    let version = s.hub.update_desired(&module, patch).await?;
    Ok(Json(json!({ "version": version })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InvokeRequest {
    #[serde(default)]
    payload: Value,
    timeout_secs: Option<f64>,
}

async fn invoke(
    State(s): State<ApiState>,
    UrlPath((module, method)): UrlPath<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: InvokeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InvokeRequest {
            payload: Value::Null,
            timeout_secs: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            bad(format!(
                "expected {{\"payload\": ..., \"timeoutSecs\"?: n}}: {e}"
            ))
        })?
    };
    let timeout = match req.timeout_secs {
        Some(t) if t.is_finite() && t > 0.0 && t <= 300.0 => Duration::from_secs_f64(t),
        Some(t) => return Err(bad(format!("timeoutSecs {t}: give 0 < seconds <= 300"))),
        None => Duration::from_secs(30),
    };
    let (status, payload) = s
        .hub
        .invoke_method(&module, &method, req.payload, timeout)
        .await?;
    Ok(Json(json!({ "status": status, "payload": payload })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRequest {
    online: bool,
}

async fn get_upstream(State(s): State<ApiState>) -> Json<Value> {
    Json(json!({ "online": *s.online.borrow(), "depth": s.hub.upstream().depth() }))
}

async fn put_upstream(State(s): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: UpstreamRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("expected {{\"online\": true|false}}: {e}")))?;
    if s.online.send_replace(req.online) != req.online {
        if req.online {
            tracing::info!("upstream link up again (API): queued messages drain");
        } else {
            tracing::warn!(
                "upstream link taken down (API): messages stay in the store-and-forward queue"
            );
        }
    }
    Ok(get_upstream(State(s)).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MonitorQuery {
    module: Option<String>,
    output: Option<String>,
}

async fn monitor(State(s): State<ApiState>, Query(q): Query<MonitorQuery>) -> Response {
    let rx = s.hub.monitor();
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let q_module = q.module.clone();
        let q_output = q.output.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        if q_module.as_ref().is_some_and(|m| *m != e.module)
                            || q_output.as_ref().is_some_and(|o| *o != e.output)
                        {
                            continue;
                        }
                        let mut line = e.to_json().to_string();
                        line.push('\n');
                        return Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let line = format!("{}\n", json!({ "missed": n }));
                        return Some((Ok(Bytes::from(line)), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/messages", post(send_message))
        .route(
            "/api/v1/modules/{module}/twin/desired",
            patch(patch_desired),
        )
        .route("/api/v1/modules/{module}/methods/{method}", post(invoke))
        .route("/api/v1/upstream", get(get_upstream).put(put_upstream))
        .route("/api/v1/monitor", get(monitor))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "the control API stopped");
    }
}

/// A client of a running edge-dev's API (the CLI commands).
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
}

impl Client {
    /// The API of the edge-dev running on `data_dir` (from the URL it wrote there), or at `url`.
    pub fn find(data_dir: &Path, url: Option<&str>) -> Result<Client, EdgeDevError> {
        let text = match url {
            Some(u) => u.to_string(),
            None => std::fs::read_to_string(url_file(data_dir)).map_err(|_| {
                EdgeDevError::Config(format!(
                    "no running edge-dev found on data folder {} (it writes {} while `edge-dev up` runs); start it, or give --api-url",
                    data_dir.display(),
                    url_file(data_dir).display()
                ))
            })?,
        };
        let host = text
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                EdgeDevError::Config(format!(
                    "{text:?} is not an API address like http://127.0.0.1:53000"
                ))
            })?;
        Ok(Client { addr })
    }

    async fn open(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>, EdgeDevError>
    {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| {
                EdgeDevError::Config(format!(
                    "cannot reach edge-dev's API at {} ({e}); is `edge-dev up` running?",
                    self.addr
                ))
            })?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| EdgeDevError::Upstream(format!("API: {e}")))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Request<http_body_util::Full<Bytes>>, EdgeDevError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes))
            .map_err(|e| EdgeDevError::Config(format!("API request {path}: {e}")))
    }

    /// One request; the JSON answer, or an error with the API's message.
    pub async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, EdgeDevError> {
        use http_body_util::BodyExt as _;
        let mut sender = self.open().await?;
        let resp = sender
            .send_request(self.request(method, path, body)?)
            .await
            .map_err(|e| EdgeDevError::Upstream(format!("API {path}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| EdgeDevError::Upstream(format!("API {path}: {e}")))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(EdgeDevError::Config(format!("{status}: {msg}")));
        }
        Ok(value)
    }

    /// Streams the monitor's JSON lines to `line` until the runtime stops or `line` returns false.
    pub async fn monitor(
        &self,
        module: Option<&str>,
        output: Option<&str>,
        mut line: impl FnMut(&str) -> bool,
    ) -> Result<(), EdgeDevError> {
        use http_body_util::BodyExt as _;
        let mut query = Vec::new();
        if let Some(m) = module {
            query.push(format!("module={}", edge_client::wire::quote(m)));
        }
        if let Some(o) = output {
            query.push(format!("output={}", edge_client::wire::quote(o)));
        }
        let path = if query.is_empty() {
            "/api/v1/monitor".to_string()
        } else {
            format!("/api/v1/monitor?{}", query.join("&"))
        };
        let mut sender = self.open().await?;
        let resp = sender
            .send_request(self.request(hyper::Method::GET, &path, None)?)
            .await
            .map_err(|e| EdgeDevError::Upstream(format!("API {path}: {e}")))?;
        if !resp.status().is_success() {
            return Err(EdgeDevError::Config(format!("monitor: {}", resp.status())));
        }
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| EdgeDevError::Upstream(format!("monitor: {e}")))?;
            if let Ok(data) = frame.into_data() {
                pending.extend_from_slice(&data);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let rest = pending.split_off(nl + 1);
                    let text = String::from_utf8_lossy(&pending[..nl]).into_owned();
                    pending = rest;
                    if !line(&text) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}
