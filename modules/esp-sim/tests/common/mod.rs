//! Test harness: a real Mosquitto on a free loopback port (stopped on Drop) and `mosquitto_sub`
//! as an independent subscriber. Tests skip, with a printed reason, when Mosquitto is absent.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub fn have_mosquitto() -> bool {
    let ok = Path::new(MOSQUITTO).exists() && which("mosquitto_sub") && which("mosquitto_pub");
    if !ok {
        eprintln!("SKIP: mosquitto (/usr/sbin/mosquitto, mosquitto_sub, mosquitto_pub) is not installed; apt-get install mosquitto mosquitto-clients");
    }
    ok
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub use edge_hub::test_util::free_port;

/// A Mosquitto process; killed when dropped.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_on(free_port(), tempfile::tempdir().unwrap())
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> Broker {
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).unwrap();
        writeln!(f, "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\nmax_queued_messages 100000\npersistence false").unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let b = Broker {
            port,
            child: Some(child),
            dir,
        };
        b.wait_ready();
        b
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mosquitto did not listen on {} within 10 s", self.port);
    }

    /// Kill the broker (connections drop abruptly, nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let conf = self.dir.path().join("mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        // The port may linger briefly; retry the spawn a few times.
        for _ in 0..50 {
            let mut child = Command::new(MOSQUITTO)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log.try_clone().unwrap())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            if child.try_wait().unwrap().is_none() {
                self.child = Some(child);
                self.wait_ready();
                return;
            }
        }
        panic!("mosquitto could not restart on port {}", self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as mosquitto_sub saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
}

/// `mosquitto_sub` on a filter, collecting messages in a background thread; killed on Drop.
pub struct Subscriber {
    child: Child,
    rx: mpsc::Receiver<Received>,
    pub got: Vec<Received>,
}

impl Subscriber {
    /// Subscribe to `filter` at QoS 2 and wait until the subscription is live (a probe round trip).
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "2",
                "-t",
                filter,
                "-t",
                "probe/#",
                "-F",
                "%j",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let r = Received {
                    topic: v["topic"].as_str().unwrap_or("").to_string(),
                    qos: v["qos"].as_u64().unwrap_or(9) as u8,
                    retain: v["retain"].as_bool().unwrap_or(false)
                        || v["retain"].as_u64() == Some(1),
                    payload: match &v["payload"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                };
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
        let mut s = Subscriber {
            child,
            rx,
            got: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "mosquitto_sub did not come up");
            let _ = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "probe/x",
                    "-m",
                    "p",
                ])
                .status();
            if let Ok(r) = s.rx.recv_timeout(Duration::from_millis(300)) {
                if r.topic == "probe/x" {
                    break;
                }
                s.got.push(r);
            }
        }
        s
    }

    /// Collect until `n` non-probe messages arrived or `timeout` passed; returns them all.
    pub fn collect(&mut self, n: usize, timeout: Duration) -> &[Received] {
        let deadline = Instant::now() + timeout;
        while self.got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(r) if r.topic.starts_with("probe/") => {}
                Ok(r) => self.got.push(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        &self.got
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read a sent log.
pub fn read_log(path: &PathBuf) -> Vec<esp_sim::SentRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A shutdown future that never fires (runs end by count or duration).
pub async fn never() {
    std::future::pending::<()>().await
}
