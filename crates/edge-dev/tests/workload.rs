//! Black-box test of the workload API pair: edge-dev's server (`workload_server::serve`) and
//! edge-client's `WorkloadClient` / `Identity::from_env_lookup`, over a real unix socket.
#![allow(clippy::unwrap_used)]

// The server module is compiled in directly, so this test does not depend on how lib.rs exports it
// (it is `edge_dev::workload`).
#[path = "../src/workload.rs"]
#[allow(dead_code)]
mod workload_server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edge_client::wire::sas;
use edge_client::{Identity, WorkloadClient};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// The server on a socket in a temp dir; stops when dropped.
struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    pem: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Harness {
    fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("workload.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let pem = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap()
            .cert
            .pem();
        let keys: workload_server::KeyLookup = Arc::new(|module: &str, genid: &str| {
            (module == "AggregatorModule" && genid == "gen1").then(|| KEY.to_vec())
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(workload_server::serve(
            listener,
            keys,
            pem.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Harness {
            _dir: dir,
            socket,
            pem,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn uri(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    async fn stop(mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A raw HTTP/1.1 exchange: (status, JSON body).
async fn raw(socket: &Path, request: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(socket).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn client_signs_and_fetches_trust_bundle() {
    let h = Harness::start();
    let client = WorkloadClient::new(&h.uri(), None).unwrap();
    assert_eq!(client.trust_bundle().await.unwrap(), h.pem);

    let data = b"hub.local%2Fdevices%2Fdev1%2Fmodules%2FAggregatorModule\n1700000000";
    let digest = client.sign("AggregatorModule", "gen1", data).await.unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(data);
    assert_eq!(digest, mac.finalize().into_bytes().to_vec());

    let e = client
        .sign("Nope", "gen1", b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("Module not found"), "{e}");
    let e = client
        .sign("AggregatorModule", "gen2", b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("Module not found"), "{e}");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn module_identity_from_iotedge_environment_gets_valid_tokens() {
    let h = Harness::start();
    let vars: HashMap<&str, String> = [
        ("IOTEDGE_WORKLOADURI", h.uri()),
        ("IOTEDGE_IOTHUBHOSTNAME", "hub.local".to_string()),
        ("IOTEDGE_DEVICEID", "dev1".to_string()),
        ("IOTEDGE_MODULEID", "AggregatorModule".to_string()),
        ("IOTEDGE_MODULEGENERATIONID", "gen1".to_string()),
        ("IOTEDGE_GATEWAYHOSTNAME", "localhost".to_string()),
        ("IOTEDGE_APIVERSION", "2019-01-30".to_string()),
        ("IOTEDGE_AUTHSCHEME", "sasToken".to_string()),
    ]
    .into_iter()
    .collect();
    let id = Identity::from_env_lookup(&|k: &str| vars.get(k).cloned())
        .await
        .unwrap();
    assert_eq!(id.client_id(), "dev1/AggregatorModule");
    assert_eq!(id.connect_host(), "localhost");
    assert_eq!(id.port, 8883);
    match &id.trust {
        edge_client::Trust::Pem { pem, .. } => assert_eq!(pem, &h.pem),
        other => panic!("expected the trust bundle, got {other:?}"),
    }
    let token = id.sas_token(4_000_000_000).await.unwrap();
    let parsed = sas::SasToken::parse(&token).unwrap();
    parsed
        .verify(
            &STANDARD.encode(KEY),
            "hub.local/devices/dev1/modules/AggregatorModule",
            1_700_000_000,
        )
        .unwrap();

    // A wrong generation id fails at token time with the server's message.
    let mut bad = vars.clone();
    bad.insert("IOTEDGE_MODULEGENERATIONID", "old".to_string());
    let id = Identity::from_env_lookup(&|k: &str| bad.get(k).cloned())
        .await
        .unwrap();
    let e = id.sas_token(4_000_000_000).await.unwrap_err().to_string();
    assert!(
        e.contains("Module not found") && e.contains("IOTEDGE_MODULEGENERATIONID"),
        "{e}"
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn errors_are_json_messages_with_iotedged_status_codes() {
    let h = Harness::start();
    let ok_body = format!(
        r#"{{"keyId":"primary","algo":"HMACSHA256","data":"{}"}}"#,
        STANDARD.encode(b"abc")
    );
    let sign = "/modules/AggregatorModule/genid/gen1/sign";

    let (s, b) = raw(
        &h.socket,
        &post(&format!("{sign}?api-version=2018-06-28"), &ok_body),
    )
    .await;
    assert_eq!(s, 200);
    assert!(b["digest"].is_string());

    let (s, b) = raw(&h.socket, &post(sign, &ok_body)).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            400,
            Some("The request is missing required parameter `api-version`")
        )
    );
    let (s, b) = raw(
        &h.socket,
        &post(&format!("{sign}?api-version=2016-01-01"), &ok_body),
    )
    .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            400,
            Some("The request parameter `api-version` is malformed")
        )
    );
    let (s, b) = raw(
        &h.socket,
        &post(&format!("{sign}?api-version=2018-06-28"), "{not json"),
    )
    .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some("Request body is malformed"))
    );
    let bad_algo = r#"{"keyId":"primary","algo":"MD5","data":"YWJj"}"#;
    let (s, b) = raw(
        &h.socket,
        &post(&format!("{sign}?api-version=2018-06-28"), bad_algo),
    )
    .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some("The request parameter `algo` is malformed"))
    );
    let bad_data = r#"{"keyId":"primary","algo":"HMACSHA256","data":"!!"}"#;
    let (s, b) = raw(
        &h.socket,
        &post(&format!("{sign}?api-version=2018-06-28"), bad_data),
    )
    .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (400, Some("The request parameter `data` is malformed"))
    );
    let (s, b) = raw(
        &h.socket,
        &post(
            "/modules/Other/genid/gen1/sign?api-version=2018-06-28",
            &ok_body,
        ),
    )
    .await;
    assert_eq!((s, b["message"].as_str()), (404, Some("Module not found")));

    let (s, b) = raw(&h.socket, &get("/trust-bundle?api-version=2018-06-28")).await;
    assert_eq!(s, 200);
    assert_eq!(b["certificate"].as_str(), Some(h.pem.as_str()));
    let (s, _) = raw(&h.socket, &get("/trust-bundle")).await;
    assert_eq!(s, 400);
    let (s, _) = raw(&h.socket, &get("/nothing?api-version=2018-06-28")).await;
    assert_eq!(s, 404);
    let (s, _) = raw(&h.socket, &get(&format!("{sign}?api-version=2018-06-28"))).await;
    assert_eq!(s, 405);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_returns_even_with_an_idle_connection_open() {
    let h = Harness::start();
    // An idle keep-alive connection must not keep the server from stopping.
    let _idle = UnixStream::connect(&h.socket).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.stop().await.unwrap();
}
