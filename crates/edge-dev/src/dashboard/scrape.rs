//! Modules' own Prometheus endpoints: where they are (from a module's `*METRICS_PORT` environment
//! variable in the deployment) and a GET of their page with hyper's client, so the dashboard can pass
//! it on from its own origin (a tablet cannot reach the device's 127.0.0.1).

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::http::uri::InvalidUri;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::TokioExecutor;

use super::metrics::{OPENMETRICS, PROMETHEUS_TEXT};

/// The most a module's metrics page may hold.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// What the dashboard asks a module for: OpenMetrics, or else Prometheus text.
const ACCEPT_METRICS: &str =
    "application/openmetrics-text; version=1.0.0, text/plain; version=0.0.4; q=0.5";

/// Why a module's metrics page could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{url}: not a URL ({source}); set the module's *_METRICS_PORT to a port number")]
    BadUrl {
        url: String,
        #[source]
        source: InvalidUri,
    },
    #[error("{url}: only http:// URLs can be scraped")]
    NotHttp { url: String },
    #[error("{url}: {}; is the module running and its metrics port right?", root_cause(.source))]
    Connect {
        url: String,
        #[source]
        source: legacy::Error,
    },
    #[error("{url}: no HTTP answer ({}); is the module's metrics port right?", root_cause(.source))]
    Request {
        url: String,
        #[source]
        source: legacy::Error,
    },
    #[error("{url}: answered {status}; is the module's metrics port right?")]
    Status { url: String, status: StatusCode },
    #[error(
        "{url}: the answer is larger than {MAX_BYTES} bytes; is the module's metrics port right?"
    )]
    TooLarge { url: String },
    #[error("{url}: the answer broke off ({source}); try again")]
    Body {
        url: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("{url}: no answer within {timeout:?}; is the module stuck or overloaded?")]
    Timeout { url: String, timeout: Duration },
}

/// The innermost error of a chain, which tells what happened (`Connection refused (os error 111)`).
fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut e = e;
    while let Some(s) = e.source() {
        e = s;
    }
    e.to_string()
}

/// A module's metrics page, and how to serve it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub body: String,
    /// OpenMetrics when the module said so, else Prometheus text 0.0.4; never the module's header as
    /// it came, since the dashboard serves the page from its own origin.
    pub content_type: &'static str,
}

/// Module -> `http://127.0.0.1:PORT/metrics` for each module whose environment sets a variable ending in
/// `METRICS_PORT` (any case) to a port other than 0 (MqttServerModule's `MQTT_METRICS_PORT`).
pub fn urls_from_env<'a>(
    modules: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, env) in modules {
        let port = env
            .iter()
            .filter(|(k, _)| k.to_ascii_uppercase().ends_with("METRICS_PORT"))
            .find_map(|(_, v)| v.trim().parse::<u16>().ok().filter(|p| *p != 0));
        if let Some(p) = port {
            out.insert(name.to_string(), format!("http://127.0.0.1:{p}/metrics"));
        }
    }
    out
}

/// Fetches `url` (`http://host:port/path`) and returns the page of a 200 answer of at most
/// [`MAX_BYTES`], all within `timeout`.
pub async fn fetch(url: &str, timeout: Duration) -> Result<Page, ScrapeError> {
    let uri: Uri = url.parse().map_err(|source| ScrapeError::BadUrl {
        url: url.to_string(),
        source,
    })?;
    if uri.scheme_str() != Some("http") {
        return Err(ScrapeError::NotHttp {
            url: url.to_string(),
        });
    }
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static(ACCEPT_METRICS));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let work = async {
        let url = url.to_string();
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(source) if source.is_connect() => return Err(ScrapeError::Connect { url, source }),
            Err(source) => return Err(ScrapeError::Request { url, source }),
        };
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            return Err(ScrapeError::Status { url, status });
        }
        let openmetrics = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.to_ascii_lowercase()
                    .starts_with("application/openmetrics-text")
            });
        let body = match Limited::new(resp.into_body(), MAX_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return Err(ScrapeError::TooLarge { url }),
            Err(source) => return Err(ScrapeError::Body { url, source }),
        };
        Ok(Page {
            body: String::from_utf8_lossy(&body).into_owned(),
            content_type: if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            },
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ScrapeError::Timeout {
            url: url.to_string(),
            timeout,
        })?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn metrics_ports_come_from_the_environment() {
        let mqtt: BTreeMap<String, String> = [
            ("MQTT_PORT".to_string(), "1889".to_string()),
            ("MQTT_METRICS_PORT".to_string(), "9600".to_string()),
        ]
        .into();
        let off: BTreeMap<String, String> =
            [("MQTT_METRICS_PORT".to_string(), "0".to_string())].into();
        let bad: BTreeMap<String, String> =
            [("x_metrics_port".to_string(), "http".to_string())].into();
        let none = BTreeMap::new();
        let urls = urls_from_env([
            ("MqttServerModule", &mqtt),
            ("Off", &off),
            ("Bad", &bad),
            ("None", &none),
        ]);
        assert_eq!(urls.len(), 1);
        assert_eq!(urls["MqttServerModule"], "http://127.0.0.1:9600/metrics");
    }

    /// A server that answers every request with `answer` and closes; returns its metrics URL.
    async fn answering(answer: Vec<u8>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut req = [0u8; 1024];
                let _ = c.read(&mut req).await;
                let _ = c.write_all(&answer).await;
            }
        });
        format!("http://{addr}/metrics")
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn pages_and_their_content_types() {
        let url = answering(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\na 1\n"
                .to_vec(),
        )
        .await;
        let page = fetch(&url, T).await.unwrap();
        assert_eq!(page.body, "a 1\n");
        assert_eq!(page.content_type, PROMETHEUS_TEXT);

        let url = answering(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0\r\nTransfer-Encoding: chunked\r\n\r\n4\r\na 1\n\r\n6\r\n# EOF\n\r\n0\r\n\r\n"
                .to_vec(),
        )
        .await;
        let page = fetch(&url, T).await.unwrap();
        assert_eq!(page.body, "a 1\n# EOF\n");
        assert_eq!(page.content_type, OPENMETRICS);

        // anything else is served as text, not as the module said
        let url =
            answering(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<script>".to_vec()).await;
        assert_eq!(fetch(&url, T).await.unwrap().content_type, PROMETHEUS_TEXT);
    }

    #[tokio::test]
    async fn failures_say_what_happened() {
        let url =
            answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno".to_vec()).await;
        let e = fetch(&url, T).await.unwrap_err();
        assert!(
            matches!(
                e,
                ScrapeError::Status {
                    status: StatusCode::NOT_FOUND,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("answered 404 Not Found"), "{e}");

        let mut big = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        big.resize(big.len() + MAX_BYTES + 1, b'a');
        let e = fetch(&answering(big).await, T).await.unwrap_err();
        assert!(matches!(e, ScrapeError::TooLarge { .. }), "{e:?}");

        let e = fetch(&answering(b"garbage".to_vec()).await, T)
            .await
            .unwrap_err();
        assert!(matches!(e, ScrapeError::Request { .. }), "{e:?}");

        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = fetch(&format!("http://{closed}/metrics"), T)
            .await
            .unwrap_err();
        assert!(matches!(e, ScrapeError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(e.to_string().contains("is the module running"), "{e}");

        // connected, never answered
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", silent.local_addr().unwrap());
        let e = fetch(&url, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, ScrapeError::Timeout { .. }), "{e:?}");

        let e = fetch("https://127.0.0.1:1/metrics", T).await.unwrap_err();
        assert!(matches!(e, ScrapeError::NotHttp { .. }), "{e:?}");
        let e = fetch("http://bad host/", T).await.unwrap_err();
        assert!(matches!(e, ScrapeError::BadUrl { .. }), "{e:?}");
    }
}
