//! Modules' own Prometheus endpoints: where they are (from a module's `*METRICS_PORT` environment
//! variable in the deployment) and a small HTTP/1.0 GET to fetch their text, so the dashboard can pass
//! it on from its own origin (a tablet cannot reach the device's 127.0.0.1).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most a module's metrics page may hold.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

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

/// Fetches `url` (`http://host:port/path`) and returns the body of a 200 answer; any other outcome is
/// an error message for the person reading it.
pub async fn fetch(url: &str, timeout: Duration) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be scraped"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let work = async {
        let mut s = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| {
                format!("{url}: {e}; is the module running and its metrics port right?")
            })?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/plain\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let mut buf = Vec::new();
        s.take(MAX_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if buf.len() > MAX_BYTES {
            return Err(format!(
                "{url}: the answer is larger than {MAX_BYTES} bytes"
            ));
        }
        parse_response(&buf).map_err(|e| format!("{url}: {e}"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// The body of an HTTP/1.x 200 answer without transfer encoding (what a server sends an HTTP/1.0 client).
pub fn parse_response(buf: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer has no end of headers")?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("answered {status:?}"));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("answered with chunked encoding to an HTTP/1.0 request".into());
    }
    Ok(body.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    #[test]
    fn responses() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\na 1\n").unwrap(),
            "a 1\n"
        );
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nno")
            .unwrap_err()
            .contains("404"));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\na 1\n")
                .is_err()
        );
        assert!(parse_response(b"garbage").is_err());
    }
}
