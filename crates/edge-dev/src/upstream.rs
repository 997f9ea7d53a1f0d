//! The upstream sink: what plays IoT Hub on this machine. It takes messages from the hub's durable
//! `$upstream` queue in order, appends each to the upstream log as one JSON line, prints a one-line summary,
//! optionally forwards it to a real IoT Hub as the edge device, and only then removes it from the queue. A
//! crash between the write and the removal repeats that message (at least once), never loses it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chrono::SecondsFormat;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::EdgeDevError;
use edge_hub::{StoredMessage, UpstreamQueue};

/// One line of the upstream log: `{"enqueuedTime", "module", "output", "properties", "systemProperties",
/// "body"}`, with `body` as JSON when the body is JSON in UTF-8, else `bodyBase64`.
pub fn log_line(m: &StoredMessage) -> Value {
    let mut line = json!({
        "enqueuedTime": m.enqueued_time.to_rfc3339_opts(SecondsFormat::Millis, true),
        "module": m.module,
        "output": m.output,
        "properties": m.message.properties,
        "systemProperties": m.message.system_properties(),
    });
    let body = std::str::from_utf8(&m.message.body)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(t).ok());
    if let Some(obj) = line.as_object_mut() {
        match body {
            Some(v) => obj.insert("body".into(), v),
            None => obj.insert(
                "bodyBase64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(&m.message.body)),
            ),
        };
    }
    line
}

/// The console summary of one upstream message.
pub fn summary(m: &StoredMessage) -> String {
    let body = match std::str::from_utf8(&m.message.body) {
        Ok(t) if t.len() <= 200 => t.to_string(),
        Ok(t) => format!(
            "{}... ({} bytes)",
            &t[..t.char_indices().nth(200).map(|(i, _)| i).unwrap_or(t.len())],
            t.len()
        ),
        Err(_) => format!("<{} bytes, not UTF-8>", m.message.body.len()),
    };
    format!("upstream <- {}/{}: {}", m.module, m.output, body)
}

/// Where upstream messages go.
pub struct UpstreamSink {
    log: Option<(PathBuf, std::fs::File)>,
    forward: Option<edge_client::ModuleClient>,
    /// Print a summary line on standard output for each message.
    pub console: bool,
    /// Gets a copy of each delivered message (the dashboard).
    pub tap: Option<broadcast::Sender<StoredMessage>>,
    /// While deliveries fail, the last error; `None` again once one succeeds (the dashboard's link state).
    pub link: Option<watch::Sender<Option<String>>>,
}

impl UpstreamSink {
    pub fn new(
        log: Option<&Path>,
        forward: Option<edge_client::ModuleClient>,
        console: bool,
    ) -> Result<UpstreamSink, EdgeDevError> {
        let log = match log {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(|e| EdgeDevError::Io {
                            path: dir.to_path_buf(),
                            source: e,
                        })?;
                    }
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| EdgeDevError::Io {
                        path: p.to_path_buf(),
                        source: e,
                    })?;
                Some((p.to_path_buf(), f))
            }
            None => None,
        };
        Ok(UpstreamSink {
            log,
            forward,
            console,
            tap: None,
            link: None,
        })
    }

    async fn deliver(&mut self, m: &StoredMessage) -> Result<(), EdgeDevError> {
        if let Some(client) = &self.forward {
            // IoT Hub sets the connection ids itself; the routing fields belong to this edge device.
            let mut msg = m.message.clone();
            msg.output_name = None;
            msg.connection_device_id = None;
            msg.connection_module_id = None;
            client
                .send_event(msg)
                .await
                .map_err(|e| EdgeDevError::Upstream(e.to_string()))?;
        }
        if let Some((path, f)) = &mut self.log {
            let mut line = serde_json::to_vec(&log_line(m))
                .map_err(|e| EdgeDevError::Upstream(e.to_string()))?;
            line.push(b'\n');
            let io = |e| EdgeDevError::Io {
                path: path.clone(),
                source: e,
            };
            f.write_all(&line).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        if self.console {
            println!("{}", summary(m));
        }
        if let Some(tap) = &self.tap {
            let _ = tap.send(m.clone());
        }
        Ok(())
    }
}

/// At most this many queued messages are shown (to the dashboard's tap) while upstream is offline.
const MAX_SHOWN_OFFLINE: usize = 1000;

/// Drains `queue` into `sink` until `stop` becomes true, while `online` is true. A delivery that fails
/// (IoT Hub unreachable, disk full) is retried with back-off; the message stays queued meanwhile.
///
/// While `online` is false (`--offline`, or the link taken down at run time with `edge-dev upstream
/// offline`), nothing is delivered or removed: messages stay in the store-and-forward queue, and the
/// first [`MAX_SHOWN_OFFLINE`] are handed to the sink's tap once so the dashboard still shows what would
/// go. When the link comes up again those are given back to the queue and everything drains in order.
pub async fn run(
    queue: UpstreamQueue,
    mut sink: UpstreamSink,
    mut stop: watch::Receiver<bool>,
    mut online: watch::Receiver<bool>,
) {
    // Messages shown while offline, to give back to the queue when the link is up again.
    let mut shown: Vec<u64> = Vec::new();
    // Once the sender is gone the link stays as it is.
    let mut can_change = true;
    loop {
        let is_online = *online.borrow_and_update();
        // Back online: what was shown goes back to the queue, whichever branch saw the change
        // (a message can win the race against the change and be shown after the link came back).
        if is_online && !shown.is_empty() {
            for seq in shown.drain(..) {
                queue.release(seq);
            }
        }
        if !is_online {
            // Shown messages stay handed out until the link is back, and the queue skips them on
            // every take: showing more than MAX_SHOWN_OFFLINE would make a long outage ever slower.
            let may_show = shown.len() < MAX_SHOWN_OFFLINE;
            tokio::select! {
                m = queue.next(), if may_show => {
                    if let Some(tap) = &sink.tap {
                        let _ = tap.send(m.clone());
                    }
                    shown.push(m.seq);
                }
                r = online.changed(), if can_change => {
                    can_change = r.is_ok();
                }
                _ = crate::supervisor::stopped(&mut stop) => return,
            }
            continue;
        }
        let m = tokio::select! {
            m = queue.next() => m,
            r = online.changed(), if can_change => {
                can_change = r.is_ok();
                continue;
            }
            _ = crate::supervisor::stopped(&mut stop) => return,
        };
        let mut wait = Duration::from_millis(200);
        loop {
            match sink.deliver(&m).await {
                Ok(()) => {
                    if let Some(link) = &sink.link {
                        link.send_if_modified(|v| v.take().is_some());
                    }
                    break;
                }
                Err(e) => {
                    if let Some(link) = &sink.link {
                        link.send_replace(Some(e.to_string()));
                    }
                    tracing::warn!(error = %e, seq = m.seq, "upstream delivery failed; the message stays queued, retrying in {wait:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = crate::supervisor::stopped(&mut stop) => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        // Delivered: remove it. If the store cannot (a full disk), keep trying with a growing
        // pause, holding the message as handed out, rather than giving it back and delivering it
        // again at once, over and over: that loop wrote the same message upstream a thousand times a
        // second and starved the runtime, so the store never got to reopen.
        let mut wait = Duration::from_millis(200);
        let mut logged = false;
        while let Err(e) = queue.ack(m.seq).await {
            if !logged {
                tracing::error!(error = %e, seq = m.seq, "could not remove a delivered message from the upstream queue (is the disk full?); retrying, with pauses of up to 30 s, before delivering anything else; free disk space under the data folder");
                logged = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::supervisor::stopped(&mut stop) => {
                    // given back: delivered again after the restart (at least once)
                    queue.release(m.seq);
                    return;
                }
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        if logged {
            tracing::info!(
                seq = m.seq,
                "the delivered message was removed from the upstream queue; delivering again"
            );
        }
    }
}
