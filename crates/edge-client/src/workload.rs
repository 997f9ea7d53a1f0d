//! Client of the IoT Edge workload API (iotedged / aziot-edged, or edge-dev), HTTP/1.1 over a unix socket:
//! `POST /modules/{m}/genid/{g}/sign` signs SAS tokens with the module's key (which the module never
//! sees), `GET /trust-bundle` gives the CA certificates that the gateway's TLS certificate chains to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::error::ClientError;

/// The workload API version that the sign and trust-bundle endpoints exist since.
pub const WORKLOAD_API_VERSION: &str = "2018-06-28";

/// How long one workload API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A workload API client; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadClient {
    uri: String,
    socket: PathBuf,
    api_version: String,
}

impl WorkloadClient {
    /// `uri` is `unix:///path/to/workload.sock` (as in `IOTEDGE_WORKLOADURI`); `api_version` is sent as
    /// `?api-version=` (`IOTEDGE_APIVERSION`, else [`WORKLOAD_API_VERSION`]).
    pub fn new(uri: &str, api_version: Option<&str>) -> Result<Self, ClientError> {
        let path = uri
            .strip_prefix("unix://")
            .ok_or_else(|| ClientError::Workload {
                uri: uri.to_string(),
                reason: "only unix sockets are supported; expected `unix:///path/to/workload.sock`"
                    .to_string(),
            })?;
        if path.is_empty() {
            return Err(ClientError::Workload {
                uri: uri.to_string(),
                reason: "the socket path is empty; expected `unix:///path/to/workload.sock`"
                    .to_string(),
            });
        }
        Ok(WorkloadClient {
            uri: uri.to_string(),
            socket: PathBuf::from(path),
            api_version: api_version
                .filter(|v| !v.is_empty())
                .unwrap_or(WORKLOAD_API_VERSION)
                .to_string(),
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The URI this client was made from.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn err(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Workload {
            uri: self.uri.clone(),
            reason: reason.into(),
        }
    }

    /// HMAC-SHA256 of `data` with the module's primary key (the workload API's `digest`, decoded).
    pub async fn sign(
        &self,
        module_id: &str,
        generation_id: &str,
        data: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let body = serde_json::json!({
            "keyId": "primary",
            "algo": "HMACSHA256",
            "data": STANDARD.encode(data),
        });
        let path = format!(
            "/modules/{}/genid/{}/sign?api-version={}",
            crate::wire::quote(module_id),
            crate::wire::quote(generation_id),
            self.api_version
        );
        let json = self
            .request(Method::POST, &path, Some(body.to_string()))
            .await?;
        let digest = json
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| self.err(format!("sign response has no `digest` string: {json}")))?;
        STANDARD
            .decode(digest)
            .map_err(|e| self.err(format!("sign response `digest` is not base64: {e}")))
    }

    /// The trust bundle: PEM certificates the gateway's server certificate chains to.
    pub async fn trust_bundle(&self) -> Result<String, ClientError> {
        let path = format!("/trust-bundle?api-version={}", self.api_version);
        let json = self.request(Method::GET, &path, None).await?;
        json.get("certificate")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                self.err(format!(
                    "trust-bundle response has no `certificate` string: {json}"
                ))
            })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<serde_json::Value, ClientError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.request_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(self.err(format!(
                "no answer within {} s; is the workload API server (iotedged / edge-dev) healthy?",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn request_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<serde_json::Value, ClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            self.err(format!(
                "cannot connect to {} ({e}); is iotedged / edge-dev running, and is the socket mounted into the module?",
                self.socket.display()
            ))
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.err(format!("HTTP handshake failed: {e}")))?;
        let conn_task = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.err(format!("cannot build request for {path}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.err(format!("request {path} failed: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.err(format!("reading the response to {path} failed: {e}")))?
            .to_bytes();
        drop(sender);
        conn_task.abort();
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if status != StatusCode::OK {
            let message = json
                .as_ref()
                .and_then(|j| j.get("message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            let hint = match status {
                StatusCode::NOT_FOUND => "; check IOTEDGE_MODULEID and IOTEDGE_MODULEGENERATIONID",
                _ => "",
            };
            return Err(self.err(format!("{path} answered {status}: {message}{hint}")));
        }
        json.ok_or_else(|| self.err(format!("{path} answered with a body that is not JSON")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parsing() {
        let c = WorkloadClient::new("unix:///var/run/iotedge/workload.sock", None).unwrap();
        assert_eq!(c.socket_path(), Path::new("/var/run/iotedge/workload.sock"));
        assert_eq!(c.api_version, WORKLOAD_API_VERSION);
        let c = WorkloadClient::new("unix:///tmp/w.sock", Some("2019-01-30")).unwrap();
        assert_eq!(c.api_version, "2019-01-30");
        let e = WorkloadClient::new("http://localhost:15580", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only unix sockets"), "{e}");
        assert!(WorkloadClient::new("unix://", None).is_err());
    }
}
