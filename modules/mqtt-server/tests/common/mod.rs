//! Test harness: a server on 127.0.0.1:0 with a recording forwarder; it stops on Drop.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mqtt_server::{
    BoxFuture, ForwardError, Forwarder, Listeners, Message, Server, ServerHandle, Settings,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

/// A forwarder that records what it was given. `fail` makes it refuse (edgeHub down); `hold`
/// makes it wait until `release` (edgeHub slow).
#[derive(Default)]
pub struct Recorder {
    pub messages: Mutex<Vec<(String, Message)>>,
    pub fail: AtomicBool,
    pub hold: AtomicBool,
    /// Refuse for good (as edgeHub does for a message over its size limit).
    pub refuse: AtomicBool,
    pub calls: AtomicUsize,
    released: Notify,
    changed: Notify,
}

impl Recorder {
    pub fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.released.notify_waiters();
    }

    pub fn count(&self) -> usize {
        self.messages.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn snapshot(&self) -> Vec<(String, Message)> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits (bounded) until at least `n` messages were recorded.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<(String, Message)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            if self.count() >= n {
                return self.snapshot();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.snapshot();
                panic!(
                    "expected {n} forwarded messages, got {}: {:?}",
                    got.len(),
                    got.iter().map(|(_, m)| m.body.clone()).collect::<Vec<_>>()
                );
            }
        }
    }

    pub fn bodies(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .map(|(_, m)| String::from_utf8_lossy(&m.body).to_string())
            .collect()
    }
}

impl Forwarder for Recorder {
    fn forward(&self, output: String, message: Message) -> BoxFuture<'_, Result<(), ForwardError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            loop {
                let released = self.released.notified();
                if !self.hold.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            if self.refuse.load(Ordering::SeqCst) {
                return Err(ForwardError::permanent(
                    "test: message too large for edgeHub",
                ));
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(ForwardError::transient("test: edgeHub unreachable"));
            }
            if let Ok(mut m) = self.messages.lock() {
                m.push((output, message));
            }
            self.changed.notify_waiters();
            Ok(())
        })
    }
}

pub struct Harness {
    pub addr: SocketAddr,
    pub port: u16,
    pub metrics_addr: SocketAddr,
    pub tls_port: Option<u16>,
    pub recorder: Arc<Recorder>,
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn test_settings() -> Settings {
    Settings {
        forward_retry_ms: 20,
        shutdown_grace_secs: 1,
        ..Settings::default()
    }
}

impl Harness {
    pub async fn start(settings: Settings) -> Harness {
        Self::start_with(settings, Arc::new(Recorder::default()), None).await
    }

    pub async fn start_with(
        settings: Settings,
        recorder: Arc<Recorder>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Harness {
        init_logs();
        let mqtt = TcpListener::bind("127.0.0.1:0").await.expect("bind mqtt");
        let metrics = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let addr = mqtt.local_addr().expect("addr");
        let metrics_addr = metrics.local_addr().expect("addr");
        let (tls, tls_port) = match tls {
            Some(a) => {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind tls");
                let p = l.local_addr().expect("addr").port();
                (Some((l, a)), Some(p))
            }
            None => (None, None),
        };
        let server = Server::new(settings, recorder.clone()).expect("valid settings");
        let handle = server.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listeners = Listeners {
                mqtt,
                tls,
                metrics: Some(metrics),
            };
            server
                .run(listeners, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        Harness {
            addr,
            port: addr.port(),
            metrics_addr,
            tls_port,
            recorder,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Tells the server to stop without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("metrics connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Runs a command (bounded by `timeout` seconds via coreutils `timeout`) and returns
/// (success, stdout, stderr).
pub async fn run_cmd(program: &str, args: &[String], timeout_secs: u32) -> (bool, String, String) {
    let program = program.to_string();
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("timeout")
            .arg(timeout_secs.to_string())
            .arg(&program)
            .args(&args)
            .output()
            .expect("command runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .expect("join")
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Runs a Python script (paho-mqtt) with the given arguments.
pub async fn python(
    script: &str,
    script_args: &[String],
    timeout_secs: u32,
) -> (bool, String, String) {
    let mut a = vec!["-c".to_string(), script.to_string()];
    a.extend_from_slice(script_args);
    run_cmd("python3", &a, timeout_secs).await
}

// ---- log capture, so tests can check the log line that names client and reason ----

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init_logs() {
    let buf = LOGS
        .get_or_init(|| Arc::new(Mutex::new(Vec::new())))
        .clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("mqtt_server=info"))
        .with_ansi(false)
        .with_writer(move || Capture(buf.clone()))
        .try_init();
}

/// All log output so far.
pub fn logs() -> String {
    LOGS.get()
        .and_then(|l| {
            l.lock()
                .ok()
                .map(|v| String::from_utf8_lossy(&v).to_string())
        })
        .unwrap_or_default()
}

/// Waits (bounded) until a log line contains every one of `needles`.
pub async fn wait_log(needles: &[&str], within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let all = logs();
        if let Some(line) = all.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        if tokio::time::Instant::now() > deadline {
            panic!("no log line with {needles:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
