//! The workload API server of edge-dev (the part of iotedged that modules call), HTTP/1.1 over a unix
//! socket, with the two endpoints module clients use:
//! - `POST /modules/{m}/genid/{g}/sign?api-version=..` body `{"keyId":"primary","algo":"HMACSHA256",
//!   "data":"<base64>"}` -> `200 {"digest":"<base64 HMAC-SHA256>"}`;
//! - `GET /trust-bundle?api-version=..` -> `200 {"certificate":"<PEM>"}`.
//!
//! Errors are JSON `{"message": ...}` with iotedged's status codes and texts: an unknown module or
//! generation id is `404 Module not found`, a missing or malformed parameter or body is `400`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::UnixListener;
use tokio::sync::watch;

/// Looks up a module's key bytes by module id and generation id; `None` for an unknown module.
pub type KeyLookup = Arc<dyn Fn(&str, &str) -> Option<Vec<u8>> + Send + Sync>;

/// The oldest api-version with the sign and trust-bundle endpoints.
const MIN_API_VERSION: &str = "2018-06-28";

/// Largest request body accepted, bytes (a sign request carries a short string to sign).
const MAX_BODY: usize = 64 * 1024;

struct State {
    keys: KeyLookup,
    trust_bundle_pem: String,
}

/// Serves the workload API on `listener` until `shutdown` resolves; then stops accepting, lets open
/// connections finish their current request, and returns.
pub async fn serve(
    listener: UnixListener,
    keys: KeyLookup,
    trust_bundle_pem: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(State {
        keys,
        trust_bundle_pem,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "workload API: accept failed");
                        continue;
                    }
                };
                let state = state.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "workload API connection ended with an error");
                            }
                        }
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let body = value.to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "message": message.into() }))
}

fn bad_param(name: &str) -> Response<Full<Bytes>> {
    error(
        StatusCode::BAD_REQUEST,
        format!("The request parameter `{name}` is malformed"),
    )
}

/// Checks `api-version` of the query: present, a `YYYY-MM-DD` date, not older than 2018-06-28.
fn check_api_version(query: Option<&str>) -> Result<(), Box<Response<Full<Bytes>>>> {
    let version = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == "api-version").then(|| v.to_string())
        })
    });
    let Some(v) = version else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "The request is missing required parameter `api-version`",
        )));
    };
    let is_date = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    // ISO dates compare correctly as strings.
    if !is_date || v.as_str() < MIN_API_VERSION {
        return Err(Box::new(bad_param("api-version")));
    }
    Ok(())
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["trust-bundle"]) => {
            if let Err(r) = check_api_version(query.as_deref()) {
                return *r;
            }
            json(
                StatusCode::OK,
                serde_json::json!({ "certificate": state.trust_bundle_pem }),
            )
        }
        (Method::POST, ["modules", module, "genid", genid, "sign"]) => {
            if let Err(r) = check_api_version(query.as_deref()) {
                return *r;
            }
            let module = percent_decode(module);
            let genid = percent_decode(genid);
            let (Some(module), Some(genid)) = (module, genid) else {
                return bad_param("name");
            };
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::BAD_REQUEST, "Request body is malformed"),
            };
            sign(state, &module, &genid, &body)
        }
        (_, ["trust-bundle"]) | (_, ["modules", _, "genid", _, "sign"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "Not found"),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[derive(serde::Deserialize)]
struct SignRequest {
    #[serde(rename = "keyId")]
    key_id: String,
    algo: String,
    data: String,
}

fn sign(state: &State, module: &str, genid: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(req) = serde_json::from_slice::<SignRequest>(body) else {
        return error(StatusCode::BAD_REQUEST, "Request body is malformed");
    };
    if req.key_id != "primary" && req.key_id != "secondary" {
        return bad_param("keyId");
    }
    if req.algo != "HMACSHA256" {
        return bad_param("algo");
    }
    let Ok(data) = STANDARD.decode(req.data.as_bytes()) else {
        return bad_param("data");
    };
    let Some(key) = (state.keys)(module, genid) else {
        return error(StatusCode::NOT_FOUND, "Module not found");
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "Could not sign");
    };
    mac.update(&data);
    let digest = STANDARD.encode(mac.finalize().into_bytes());
    json(StatusCode::OK, serde_json::json!({ "digest": digest }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(check_api_version(Some("api-version=2018-06-28")).is_ok());
        assert!(check_api_version(Some("x=1&api-version=2019-01-30")).is_ok());
        assert!(check_api_version(None).is_err());
        assert!(check_api_version(Some("api-version=2017-01-01")).is_err());
        assert!(check_api_version(Some("api-version=latest")).is_err());
        assert!(check_api_version(Some("api-version=2020-1-01")).is_err());
    }
}
