//! The forwarding buffer: a bounded queue (messages and bytes) in front of edgeHub.
//!
//! A connection submits a message and gets a receiver that resolves once edgeHub acknowledged it;
//! only then does the connection send PUBACK/PUBREC. When the buffer is full, `submit` waits:
//! the connection stops reading its socket, which is the back-pressure TCP carries to the device.
//! A failed send is retried with exponential backoff (500 ms doubling to 30 s by default), so
//! while edgeHub is unreachable messages wait here, up to the bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::spool::Spool;
use edge_client::wire::Message;

/// A boxed, sendable future (what [`Forwarder::forward`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a message could not be handed to edgeHub.
#[derive(Debug, thiserror::Error)]
#[error("edgeHub did not take the message: {reason}")]
pub struct ForwardError {
    /// What went wrong.
    pub reason: String,
    /// True when sending the same message again cannot succeed (e.g. edgeHub refuses its size):
    /// it is then dropped, logged and counted instead of blocking the buffer forever.
    pub permanent: bool,
}

impl ForwardError {
    /// A failure worth retrying (edgeHub unreachable, connection broke).
    pub fn transient(reason: impl Into<String>) -> Self {
        ForwardError {
            reason: reason.into(),
            permanent: false,
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(reason: impl Into<String>) -> Self {
        ForwardError {
            reason: reason.into(),
            permanent: true,
        }
    }
}

/// Where messages go: edgeHub through `edge_client` in production, a recorder in tests.
pub trait Forwarder: Send + Sync + 'static {
    /// Sends `message` on `output`; resolves `Ok` only once the receiver acknowledged it.
    fn forward(&self, output: String, message: Message) -> BoxFuture<'_, Result<(), ForwardError>>;

    /// Whether the receiver can take `message` on `output` at all. It runs before the device is
    /// acknowledged (and before the spool), so a message that could never be forwarded is refused at
    /// the device instead of being acknowledged and then dropped. The default checks edgeHub's size
    /// limit; the edgeHub forwarder also checks the topic its identity builds.
    fn check(&self, output: &str, message: &Message) -> Result<(), crate::limits::Refused> {
        crate::message::check_size(message, output)
    }
}

/// The buffer was closed because the server is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the forwarding buffer is closed (server shutting down)")]
pub struct Closed;

struct Job {
    output: String,
    msg: Message,
    done: oneshot::Sender<()>,
    /// Key in the durable spool, to delete once edgeHub has the message.
    spool_key: Option<u64>,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Handle to submit messages; clone it per connection.
#[derive(Clone)]
pub struct Pipeline {
    msgs: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Job>,
    metrics: Arc<Metrics>,
    full: Arc<AtomicBool>,
    spool: Option<Arc<Spool>>,
    forwarder: Arc<dyn Forwarder>,
}

/// Tuning of [`Pipeline::start`].
#[derive(Debug, Clone, Copy)]
pub struct PipelineLimits {
    pub messages: usize,
    pub bytes: usize,
    pub concurrency: usize,
    pub retry: Duration,
    /// Longest wait for one send's acknowledgement before it counts as failed and is retried.
    pub attempt_timeout: Duration,
}

impl Pipeline {
    /// Starts the forwarding worker. It ends when every `Pipeline` clone is dropped and the
    /// messages already submitted were forwarded.
    pub fn start(
        limits: PipelineLimits,
        forwarder: Arc<dyn Forwarder>,
        metrics: Arc<Metrics>,
        spool: Option<Arc<Spool>>,
    ) -> (Pipeline, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let p = Pipeline {
            msgs: Arc::new(Semaphore::new(limits.messages)),
            bytes: Arc::new(Semaphore::new(limits.bytes)),
            tx,
            metrics: metrics.clone(),
            full: Arc::new(AtomicBool::new(false)),
            spool: spool.clone(),
            forwarder: forwarder.clone(),
        };
        let worker = tokio::spawn(worker(
            rx,
            forwarder,
            metrics,
            limits,
            p.full.clone(),
            spool,
        ));
        (p, worker)
    }

    /// Queues messages a previous run left in the spool (they go before nothing else: call this
    /// before accepting clients). Waits for room like any submit, so run it in its own task.
    pub async fn recover(&self, left: Vec<crate::spool::Leftover>) {
        if !left.is_empty() {
            tracing::info!(
                messages = left.len(),
                "forwarding messages left in the spool by the previous run"
            );
        }
        for (key, output, msg) in left {
            let Ok(permits) = self.reserve(&msg, "spool").await else {
                return;
            };
            let (done, _) = oneshot::channel();
            if self
                .tx
                .send(Job {
                    output,
                    msg,
                    done,
                    spool_key: Some(key),
                    _permits: permits,
                })
                .is_err()
            {
                return;
            }
        }
    }

    async fn reserve(
        &self,
        msg: &Message,
        client: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Closed> {
        let size = u32::try_from(msg.size()).map_err(|_| Closed)?;
        let m = match self.msgs.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.note_full(client);
                self.msgs
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Closed)?
            }
        };
        let b = match self.bytes.clone().try_acquire_many_owned(size) {
            Ok(p) => p,
            Err(_) => {
                self.note_full(client);
                self.bytes
                    .clone()
                    .acquire_many_owned(size)
                    .await
                    .map_err(|_| Closed)?
            }
        };
        self.metrics.buffer_messages.inc();
        self.metrics.buffer_bytes.inc_by(i64::from(size));
        Ok((m, b))
    }

    /// Queues a message, waiting while the buffer is full. The receiver resolves once the
    /// message is safe: edgeHub acknowledged it, or (with a spool) it is committed to disk.
    /// Callers check first ([`Pipeline::check`]) that the message can be forwarded at all.
    pub async fn submit(
        &self,
        output: String,
        msg: Message,
        client: &str,
    ) -> Result<oneshot::Receiver<()>, Closed> {
        let permits = self.reserve(&msg, client).await?;
        let mut spool_key = None;
        if let Some(spool) = &self.spool {
            // on a spool error (logged by the spool) the message is acknowledged after edgeHub
            if let Ok(k) = spool.put(crate::spool::encode(&output, &msg)).await {
                spool_key = Some(k);
            }
        }
        let (done, rx) = oneshot::channel();
        let safe = if spool_key.is_some() {
            let (now, rx_now) = oneshot::channel();
            let _ = now.send(());
            rx_now
        } else {
            rx
        };
        self.tx
            .send(Job {
                output,
                msg,
                done,
                spool_key,
                _permits: permits,
            })
            .map_err(|_| Closed)?;
        Ok(safe)
    }

    /// [`Forwarder::check`]: whether `msg` can ever be forwarded on `output`.
    pub fn check(&self, output: &str, msg: &Message) -> Result<(), crate::limits::Refused> {
        self.forwarder.check(output, msg)
    }

    fn note_full(&self, client: &str) {
        self.metrics.backpressure_waits.inc();
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                client,
                buffer_messages = self.metrics.buffer_messages.get(),
                buffer_bytes = self.metrics.buffer_bytes.get(),
                "forwarding buffer full (edgeHub slow or unreachable): back-pressure, device sockets are not read until there is room"
            );
        }
    }
}

async fn worker(
    mut rx: mpsc::UnboundedReceiver<Job>,
    forwarder: Arc<dyn Forwarder>,
    metrics: Arc<Metrics>,
    limits: PipelineLimits,
    full: Arc<AtomicBool>,
    spool: Option<Arc<Spool>>,
) {
    let down = Arc::new(AtomicBool::new(false));
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            job = rx.recv(), if open && inflight.len() < limits.concurrency => match job {
                Some(job) => inflight.push(process(job, forwarder.clone(), metrics.clone(), limits.retry, limits.attempt_timeout, down.clone(), spool.clone())),
                None => open = false,
            },
            Some(()) = inflight.next(), if !inflight.is_empty() => {
                if full.load(Ordering::Relaxed) && inflight.len() < limits.concurrency {
                    full.store(false, Ordering::Relaxed);
                    tracing::info!("forwarding buffer has room again: reading device sockets");
                }
            }
        }
    }
}

async fn process(
    job: Job,
    forwarder: Arc<dyn Forwarder>,
    metrics: Arc<Metrics>,
    retry: Duration,
    attempt_timeout: Duration,
    down: Arc<AtomicBool>,
    spool: Option<Arc<Spool>>,
) {
    let mut delay = retry;
    let mut refused = false;
    let size = job.msg.size();
    loop {
        let attempt = forwarder.forward(job.output.clone(), job.msg.clone());
        let result = match tokio::time::timeout(attempt_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::transient(format!(
                "no acknowledgement within {attempt_timeout:?}"
            ))),
        };
        match result {
            Ok(()) => {
                metrics.messages_forwarded.inc();
                metrics.bytes_forwarded.inc_by(size as u64);
                metrics.edgehub_connected.set(1);
                if down.swap(false, Ordering::Relaxed) {
                    tracing::info!("edgeHub accepts messages again");
                }
                break;
            }
            Err(e) if e.permanent => {
                // Forwarder::check ran before the device was answered, so this is not a size or
                // topic problem. The device is not acknowledged (without a spool it has not been
                // yet): its connection closes and it may send again; resending here could never
                // succeed.
                tracing::error!(error = %e, message_id = job.msg.message_id.as_deref().unwrap_or_default(), output = %job.output,
                    topic = job.msg.properties.get("mqtt-topic").map(String::as_str).unwrap_or(""),
                    client = job.msg.properties.get("mqtt-client-id").map(String::as_str).unwrap_or(""),
                    spooled = job.spool_key.is_some(),
                    "edgeHub refused the message for good; it is not acknowledged to the device (unless the spool already did)");
                metrics.dropped("refused_by_edgehub");
                refused = true;
                break;
            }
            Err(e) => {
                metrics.forward_failures.inc();
                metrics.edgehub_connected.set(0);
                if !down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "sending to edgeHub failed; messages wait in the buffer and are retried");
                } else {
                    tracing::debug!(error = %e, message_id = job.msg.message_id.as_deref().unwrap_or_default(), ?delay, "retrying send to edgeHub");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    if let (Some(key), Some(spool)) = (job.spool_key, &spool) {
        spool.delete(key);
    }
    metrics.buffer_messages.dec();
    metrics.buffer_bytes.dec_by(size as i64);
    if !refused {
        let _ = job.done.send(());
    }
}
