//! [`ModuleClient`]: the edgeHub / IoT Hub MQTT client with a background task that owns the connection.
//!
//! The task keeps one rumqttc connection at a time (a fresh `EventLoop` per connection, so packet ids
//! start at 1 and map one to one onto our publishes), and reconnects with exponential backoff and
//! jitter. Outgoing messages wait in a bounded queue; at most `max_in_flight` of them are on the wire
//! awaiting PUBACK; a message's `send_output` future resolves when the hub acknowledged it. Messages
//! not acknowledged when a connection breaks are sent again on the next one (at-least-once: the hub may
//! see a message twice). The SAS token is renewed by reconnecting with a new one at `token_renew_percent`
//! of its lifetime, after the in-flight messages are acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::error::ClientError;
use crate::identity::Identity;
use crate::wire::{self, topics, Message, MAX_MESSAGE_SIZE};

/// Client settings. Every field has a default; unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientOptions {
    /// First reconnect delay, milliseconds; doubles per failed attempt. Default 1000.
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay, milliseconds. Default 60000. Each delay is jittered to 50-100 %.
    pub reconnect_max_ms: u64,
    /// SAS token lifetime, seconds. Default 3600.
    pub token_ttl_secs: u64,
    /// Renew the token (by reconnecting) after this percentage of its lifetime. Default 80.
    pub token_renew_percent: u8,
    /// Outgoing messages that may wait for the connection, count; `send_output` waits when it is
    /// full, `try_send_output` fails with `QueueFull`. Default 1000.
    pub queue_capacity: usize,
    /// Outgoing messages on the wire awaiting PUBACK, count (1-64). Default 32.
    pub max_in_flight: u16,
    /// Acknowledge input messages as soon as they arrive instead of when the application calls
    /// [`InputMessage::ack`]. Default false (at-least-once).
    pub auto_ack: bool,
    /// MQTT keep-alive, seconds. Default 60 (as the Python SDK).
    pub keep_alive_secs: u64,
    /// One connection attempt (TCP, TLS, CONNACK) may take this long, seconds. Default 10.
    pub connect_timeout_secs: u64,
    /// `connect` keeps retrying transient failures (hub not up yet) this long before it gives up,
    /// seconds. Errors that need a fix (auth refused, TLS trust) fail at once. Default 30.
    pub first_connect_timeout_secs: u64,
    /// `shutdown` waits this long for queued and in-flight messages to be acknowledged, seconds. Default 10.
    pub shutdown_timeout_secs: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            reconnect_initial_ms: 1000,
            reconnect_max_ms: 60_000,
            token_ttl_secs: 3600,
            token_renew_percent: 80,
            queue_capacity: 1000,
            max_in_flight: 32,
            auto_ack: false,
            keep_alive_secs: 60,
            connect_timeout_secs: 10,
            first_connect_timeout_secs: 30,
            shutdown_timeout_secs: 10,
        }
    }
}

/// Reconnect delay before attempt `attempt` (0-based): `initial * 2^attempt`, capped at `max`, then
/// scaled by `jitter` (a factor in 0.5..=1.0).
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(30));
    let d = initial.saturating_mul(factor).min(max);
    d.mul_f64(jitter.clamp(0.5, 1.0))
}

/// What the client reports to the application.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // inputs are the common case; boxing them would cost an allocation each
pub enum Event {
    /// A message routed to one of the module's inputs.
    Input(InputMessage),
    /// A desired-properties patch (with its `$version`).
    DesiredPatch(Value),
    /// The full twin `{"desired": .., "reported": ..}`, after every (re)connect.
    Twin(Value),
    /// A direct-method call; answer it with [`MethodRequest::respond`].
    Method(MethodRequest),
    /// Connected (again) to the hub, with its subscriptions in place (every SUBACK received).
    Connected,
    /// The connection broke, or could not be made; the client retries by itself.
    Disconnected(String),
}

/// The stream of [`Event`]s of one client.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has shut down.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// A message that arrived on an input.
#[derive(Debug)]
pub struct InputMessage {
    /// The input name (from `BrokeredEndpoint("/modules/{m}/inputs/{input}")`).
    pub input: String,
    /// The message.
    pub message: Message,
    acker: Option<Acker>,
}

#[derive(Debug)]
struct Acker {
    epoch: u64,
    publish: rumqttc::Publish,
    ctrl: mpsc::UnboundedSender<Ctrl>,
}

impl InputMessage {
    /// Whether the hub marked this delivery as a repeat (MQTT DUP): it sent the message before, on
    /// this connection or an earlier one, and did not see it acknowledged. The receiver may have
    /// processed it already (its acknowledgement was lost with the connection).
    pub fn redelivered(&self) -> bool {
        self.acker.as_ref().is_some_and(|a| a.publish.dup)
    }

    /// Acknowledges the message to the hub (MQTT PUBACK). Until then the hub keeps it and sends it
    /// again after a reconnect, so call this once the message is processed (or safely stored). If the
    /// connection it came on is gone, nothing is sent: the hub will deliver it again. Without `ack`
    /// (and without `auto_ack`) the hub stops sending once its in-flight window for this client is full.
    pub fn ack(mut self) {
        if let Some(a) = self.acker.take() {
            let _ = a.ctrl.send(Ctrl::Ack {
                epoch: a.epoch,
                publish: a.publish,
            });
        }
    }
}

/// A direct-method call.
#[derive(Debug)]
pub struct MethodRequest {
    /// Method name.
    pub name: String,
    /// Request id (answered in the response topic).
    pub rid: String,
    /// The request payload (JSON; a payload that is not JSON comes as a JSON string).
    pub payload: Value,
    ctrl: mpsc::UnboundedSender<Ctrl>,
}

impl MethodRequest {
    /// Answers the call with an HTTP-like status and a JSON payload.
    pub fn respond(self, status: u16, payload: Value) {
        let _ = self.ctrl.send(Ctrl::MethodResponse {
            rid: self.rid,
            status,
            payload: payload.to_string().into_bytes(),
        });
    }
}

/// The acknowledgement of a message handed over with [`ModuleClient::try_send_output`].
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<Result<(), ClientError>>,
}

impl Delivery {
    /// Resolves when the hub acknowledged (PUBACK) the message.
    pub async fn acked(self) -> Result<(), ClientError> {
        self.rx.await.unwrap_or(Err(ClientError::Closed))
    }
}

struct SendReq {
    topic: String,
    payload: Bytes,
    done: oneshot::Sender<Result<(), ClientError>>,
}

#[derive(Debug)]
enum Ctrl {
    TwinGet(oneshot::Sender<Result<Value, ClientError>>),
    Reported(Value, oneshot::Sender<Result<u64, ClientError>>),
    MethodResponse {
        rid: String,
        status: u16,
        payload: Vec<u8>,
    },
    Ack {
        epoch: u64,
        publish: rumqttc::Publish,
    },
    Shutdown(Option<oneshot::Sender<()>>),
}

struct Inner {
    sends: mpsc::Sender<SendReq>,
    ctrl: mpsc::UnboundedSender<Ctrl>,
    device_id: String,
    module_id: Option<String>,
    capacity: usize,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: flush and stop the background task.
        let _ = self.ctrl.send(Ctrl::Shutdown(None));
    }
}

/// A handle to a module (or device) connection; clones share the connection.
#[derive(Clone)]
pub struct ModuleClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModuleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleClient")
            .field("device_id", &self.inner.device_id)
            .field("module_id", &self.inner.module_id)
            .finish()
    }
}

impl ModuleClient {
    /// Connects to the hub and starts the background task. Returns when the first connection is up;
    /// transient failures are retried for `first_connect_timeout_secs`, others (auth refused, TLS
    /// trust, workload API errors) are returned at once.
    pub async fn connect(
        identity: Identity,
        options: ClientOptions,
    ) -> Result<(ModuleClient, Events), ClientError> {
        if options.max_in_flight == 0 || options.max_in_flight > 64 {
            return Err(ClientError::Usage(format!(
                "ClientOptions::max_in_flight is {}; it must be 1-64",
                options.max_in_flight
            )));
        }
        if options.queue_capacity == 0 {
            return Err(ClientError::Usage(
                "ClientOptions::queue_capacity must be at least 1".to_string(),
            ));
        }
        let tls = crate::tls::client_config(&identity.trust)?;
        let (sends_tx, sends_rx) = mpsc::channel(options.queue_capacity);
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (first_tx, first_rx) = oneshot::channel();
        let inner = Arc::new(Inner {
            sends: sends_tx,
            ctrl: ctrl_tx.clone(),
            device_id: identity.device_id.clone(),
            module_id: identity.module_id.clone(),
            capacity: options.queue_capacity,
            task: Mutex::new(None),
        });
        let driver = Driver {
            identity,
            opts: options,
            tls,
            sends_rx,
            sends_closed: false,
            ctrl_rx,
            ctrl_tx,
            events: events_tx,
            resend: VecDeque::new(),
            waiters: HashMap::new(),
            epoch: 0,
            seq: 0,
            shutdown: None,
            shutdown_replies: Vec::new(),
        };
        let task = tokio::spawn(driver.run(first_tx));
        if let Ok(mut t) = inner.task.lock() {
            *t = Some(task);
        }
        match first_rx.await {
            Ok(Ok(())) => Ok((ModuleClient { inner }, Events { rx: events_rx })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// [`Identity::from_environment`] (the `IOTEDGE_*` variables, or `EdgeHubConnectionString` +
    /// `EdgeModuleCACertificateFile`) and then [`ModuleClient::connect`]: what a module's `main` calls.
    pub async fn from_environment(
        options: ClientOptions,
    ) -> Result<(ModuleClient, Events), ClientError> {
        let identity = Identity::from_environment().await?;
        ModuleClient::connect(identity, options).await
    }

    fn module(&self) -> Result<&str, ClientError> {
        self.inner.module_id.as_deref().ok_or_else(|| {
            ClientError::Usage(
                "send_output needs a module identity; this client is a device (use send_event)"
                    .to_string(),
            )
        })
    }

    fn output_request(
        &self,
        output: &str,
        mut msg: Message,
    ) -> Result<(String, Bytes), ClientError> {
        let module = self.module()?;
        if output.is_empty() || output.contains('/') {
            return Err(ClientError::Usage(format!(
                "output name {output:?} must be non-empty and without `/`"
            )));
        }
        msg.output_name = Some(output.to_string());
        let topic = topics::module_events(
            &self.inner.device_id,
            module,
            &wire::encode_property_bag(&msg),
        );
        check_size(&msg)?;
        check_topic(&topic)?;
        Ok((topic, msg.body))
    }

    /// Whether [`ModuleClient::send_output`] would accept `msg` for `output` (size, topic length,
    /// output name), without sending it.
    pub fn check_output(&self, output: &str, msg: Message) -> Result<(), ClientError> {
        self.output_request(output, msg).map(|_| ())
    }

    fn event_request(&self, msg: Message) -> Result<(String, Bytes), ClientError> {
        let bag = wire::encode_property_bag(&msg);
        let topic = match &self.inner.module_id {
            Some(m) => topics::module_events(&self.inner.device_id, m, &bag),
            None => topics::device_events(&self.inner.device_id, &bag),
        };
        check_size(&msg)?;
        check_topic(&topic)?;
        Ok((topic, msg.body))
    }

    async fn enqueue(&self, (topic, payload): (String, Bytes)) -> Result<Delivery, ClientError> {
        let (done, rx) = oneshot::channel();
        self.inner
            .sends
            .send(SendReq {
                topic,
                payload,
                done,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Delivery { rx })
    }

    fn try_enqueue(&self, (topic, payload): (String, Bytes)) -> Result<Delivery, ClientError> {
        let (done, rx) = oneshot::channel();
        match self.inner.sends.try_send(SendReq {
            topic,
            payload,
            done,
        }) {
            Ok(()) => Ok(Delivery { rx }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ClientError::QueueFull {
                capacity: self.inner.capacity,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ClientError::Closed),
        }
    }

    /// Sends `msg` to the module output `output` (QoS 1; `$.on` is set). Waits for room in the
    /// outgoing queue, then until the hub acknowledged the message.
    pub async fn send_output(&self, output: &str, msg: Message) -> Result<(), ClientError> {
        let req = self.output_request(output, msg)?;
        self.enqueue(req).await?.acked().await
    }

    /// Queues `msg` for output `output` without waiting; `Err(QueueFull)` when the queue is full.
    /// The returned [`Delivery`] resolves when the hub acknowledged it.
    pub fn try_send_output(&self, output: &str, msg: Message) -> Result<Delivery, ClientError> {
        let req = self.output_request(output, msg)?;
        self.try_enqueue(req)
    }

    /// Sends telemetry: for a device identity to `devices/{d}/messages/events/`, for a module to its
    /// events topic without an output name. Resolves when the hub acknowledged it.
    pub async fn send_event(&self, msg: Message) -> Result<(), ClientError> {
        let req = self.event_request(msg)?;
        self.enqueue(req).await?.acked().await
    }

    /// Like [`ModuleClient::send_event`] but without waiting for room in the queue.
    pub fn try_send_event(&self, msg: Message) -> Result<Delivery, ClientError> {
        let req = self.event_request(msg)?;
        self.try_enqueue(req)
    }

    /// The full twin `{"desired": .., "reported": ..}`. Waits for the connection if it is down (wrap it
    /// in `tokio::time::timeout` to bound that).
    pub async fn get_twin(&self) -> Result<Value, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .ctrl
            .send(Ctrl::TwinGet(tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Patches the reported properties; returns the new reported `$version` (0 if the hub sent none).
    pub async fn update_reported(&self, patch: Value) -> Result<u64, ClientError> {
        if !patch.is_object() {
            return Err(ClientError::Usage(format!(
                "a reported-properties patch must be a JSON object, not {patch}"
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .ctrl
            .send(Ctrl::Reported(patch, tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Device id of this client.
    pub fn device_id(&self) -> &str {
        &self.inner.device_id
    }

    /// Module id of this client (`None` for a device).
    pub fn module_id(&self) -> Option<&str> {
        self.inner.module_id.as_deref()
    }

    /// Waits until the queued and in-flight messages are acknowledged (at most
    /// `shutdown_timeout_secs`; what is left then fails with `Closed`), disconnects and stops the
    /// background task. Other clones of this handle stop working too.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ctrl.send(Ctrl::Shutdown(Some(tx))).is_ok() {
            let _ = rx.await;
        }
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

fn check_size(msg: &Message) -> Result<(), ClientError> {
    let size = msg.size();
    if size > MAX_MESSAGE_SIZE {
        return Err(ClientError::TooLarge {
            size,
            limit: MAX_MESSAGE_SIZE,
        });
    }
    Ok(())
}

/// An MQTT topic is a UTF-8 string with a 16-bit length: a longer one cannot be encoded (and must
/// never reach the codec, which would cut the length and corrupt the stream).
fn check_topic(topic: &str) -> Result<(), ClientError> {
    const MAX_TOPIC: usize = 65_535;
    if topic.len() > MAX_TOPIC {
        return Err(ClientError::TopicTooLong {
            len: topic.len(),
            limit: MAX_TOPIC,
        });
    }
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A publish of ours on its way to the hub.
struct Pending {
    seq: u64,
    topic: String,
    payload: Bytes,
    /// `Some` for messages (send_output / send_event), which are re-sent after a reconnect;
    /// `None` for twin requests and method responses.
    done: Option<oneshot::Sender<Result<(), ClientError>>>,
}

enum Waiter {
    Get(oneshot::Sender<Result<Value, ClientError>>),
    Reported(oneshot::Sender<Result<u64, ClientError>>),
    /// The twin GET the client makes itself after every connect.
    Internal,
}

struct TwinRequest {
    topic: String,
    payload: Bytes,
    waiter: Waiter,
}

/// One MQTT connection.
struct Conn {
    client: AsyncClient,
    rx: mpsc::Receiver<Result<rumqttc::Event, ConnectionError>>,
    poll: JoinHandle<()>,
    /// Handed to rumqttc, no packet id seen yet (in order).
    submitted: VecDeque<Pending>,
    /// On the wire, by packet id.
    inflight: HashMap<u16, Pending>,
    /// SUBACKs still expected for this connection's subscriptions; `Event::Connected` is sent when the
    /// last one arrives, so an application that reacts to it cannot miss an input routed right after.
    subacks_pending: usize,
}

impl Conn {
    fn outstanding_messages(&self) -> usize {
        self.submitted
            .iter()
            .chain(self.inflight.values())
            .filter(|p| p.done.is_some())
            .count()
    }
}

enum Exit {
    /// The connection broke: reconnect after a backoff.
    Lost(String),
    /// Reconnect now (token renewal).
    Renew,
    /// Stop the task.
    Stop,
}

struct Driver {
    identity: Identity,
    opts: ClientOptions,
    tls: Arc<rustls::ClientConfig>,
    sends_rx: mpsc::Receiver<SendReq>,
    sends_closed: bool,
    ctrl_rx: mpsc::UnboundedReceiver<Ctrl>,
    ctrl_tx: mpsc::UnboundedSender<Ctrl>,
    events: mpsc::UnboundedSender<Event>,
    /// Messages to send first on the next connection (in order).
    resend: VecDeque<Pending>,
    waiters: HashMap<String, TwinRequest>,
    epoch: u64,
    seq: u64,
    /// Deadline of a requested shutdown.
    shutdown: Option<Instant>,
    shutdown_replies: Vec<oneshot::Sender<()>>,
}

impl Driver {
    async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        let mut first = Some(first);
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            if self.shutdown.is_some() && self.nothing_to_flush() {
                break;
            }
            if self.shutdown.map(|d| Instant::now() >= d).unwrap_or(false) {
                break;
            }
            let result = self.connect_once().await;
            let exit = match result {
                Ok(conn) => {
                    attempt = 0;
                    if let Some(f) = first.take() {
                        let _ = f.send(Ok(()));
                    }
                    self.connected(conn).await
                }
                Err(e) => {
                    if let Some(f) = first.take() {
                        let budget = Duration::from_secs(self.opts.first_connect_timeout_secs);
                        if !e.is_transient() || started.elapsed() >= budget {
                            let _ = f.send(Err(e));
                            return;
                        }
                        first = Some(f);
                    }
                    tracing::warn!(error = %e, "connecting to the hub failed");
                    Exit::Lost(e.to_string())
                }
            };
            match exit {
                Exit::Stop => break,
                Exit::Renew => continue,
                Exit::Lost(reason) => {
                    // Before the first connection, `connect` itself reports the failure.
                    if first.is_none() {
                        let _ = self.events.send(Event::Disconnected(reason));
                    }
                    let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..=1.0);
                    let delay = backoff_delay(
                        attempt,
                        Duration::from_millis(self.opts.reconnect_initial_ms),
                        Duration::from_millis(self.opts.reconnect_max_ms),
                        jitter,
                    );
                    attempt = attempt.saturating_add(1);
                    if self.wait_disconnected(Instant::now() + delay).await {
                        break;
                    }
                }
            }
        }
        self.finish();
    }

    fn nothing_to_flush(&self) -> bool {
        self.resend.is_empty() && (self.sends_closed || self.sends_rx.is_empty())
    }

    /// Fails everything that is left and answers shutdown callers.
    fn finish(&mut self) {
        self.sends_rx.close();
        for p in self.resend.drain(..) {
            if let Some(d) = p.done {
                let _ = d.send(Err(ClientError::Closed));
            }
        }
        while let Ok(r) = self.sends_rx.try_recv() {
            let _ = r.done.send(Err(ClientError::Closed));
        }
        for (_, w) in self.waiters.drain() {
            match w.waiter {
                Waiter::Get(tx) => {
                    let _ = tx.send(Err(ClientError::Closed));
                }
                Waiter::Reported(tx) => {
                    let _ = tx.send(Err(ClientError::Closed));
                }
                Waiter::Internal => {}
            }
        }
        for r in self.shutdown_replies.drain(..) {
            let _ = r.send(());
        }
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        if self.shutdown.is_none() {
            self.shutdown =
                Some(Instant::now() + Duration::from_secs(self.opts.shutdown_timeout_secs));
            // Refuse new messages; the ones already queued are still delivered.
            self.sends_rx.close();
        }
        if let Some(r) = reply {
            self.shutdown_replies.push(r);
        }
    }

    /// While disconnected: handles control requests until `until`. True if the task should stop.
    async fn wait_disconnected(&mut self, until: Instant) -> bool {
        loop {
            if self.shutdown.is_some() && self.nothing_to_flush() {
                return true;
            }
            let deadline = match self.shutdown {
                Some(d) if d < until => d,
                _ => until,
            };
            tokio::select! {
                _ = sleep_until(deadline) => {
                    return self.shutdown.map(|d| Instant::now() >= d).unwrap_or(false);
                }
                c = self.ctrl_rx.recv() => match c {
                    Some(c) => self.on_ctrl(None, c),
                    None => return true,
                }
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    async fn connect_once(&mut self) -> Result<Conn, ClientError> {
        let host = self.identity.connect_host().to_string();
        let port = self.identity.port;
        let expiry = now_unix() + self.opts.token_ttl_secs;
        let token = self.identity.sas_token(expiry).await?;
        let mut mqtt = MqttOptions::new(self.identity.client_id(), host.clone(), port);
        mqtt.set_credentials(self.identity.username(), token)
            .set_keep_alive(Duration::from_secs(self.opts.keep_alive_secs.max(5)))
            .set_clean_session(false)
            .set_manual_acks(!self.opts.auto_ack)
            .set_inflight(100)
            .set_max_packet_size(MAX_MESSAGE_SIZE + 64 * 1024, MAX_MESSAGE_SIZE + 64 * 1024)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                self.tls.clone(),
            )));
        let (client, mut eventloop) = AsyncClient::new(mqtt, 4096);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_connection_timeout(self.opts.connect_timeout_secs.max(1));
        // Small messages and their acknowledgements must not wait for Nagle's algorithm (rumqttc leaves it on).
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (tx, mut rx) = mpsc::channel(256);
        let poll = tokio::spawn(async move {
            loop {
                let r = eventloop.poll().await;
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    break;
                }
            }
        });
        let first = tokio::time::timeout(
            Duration::from_secs(self.opts.connect_timeout_secs.max(1) + 5),
            rx.recv(),
        )
        .await;
        let failure = match first {
            Ok(Some(Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))))) => None,
            Ok(Some(Ok(other))) => Some(ClientError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            ))),
            Ok(Some(Err(e))) => Some(classify(&e, &self.identity, true)),
            Ok(None) => Some(ClientError::Closed),
            Err(_) => Some(ClientError::Unreachable {
                host: host.clone(),
                port,
                reason: format!("no CONNACK within {} s", self.opts.connect_timeout_secs + 5),
            }),
        };
        if let Some(e) = failure {
            poll.abort();
            return Err(e);
        }
        self.epoch += 1;
        Ok(Conn {
            client,
            rx,
            poll,
            submitted: VecDeque::new(),
            inflight: HashMap::new(),
            subacks_pending: 0,
        })
    }

    fn submit(&mut self, conn: &mut Conn, p: Pending) {
        match conn
            .client
            .try_publish(p.topic.clone(), QoS::AtLeastOnce, false, p.payload.to_vec())
        {
            Ok(()) => conn.submitted.push_back(p),
            Err(e) => {
                // Only possible with a topic rumqttc refuses (wildcards) or a full request channel.
                if let Some(d) = p.done {
                    let _ = d.send(Err(ClientError::Usage(format!(
                        "cannot publish to {:?}: {e}; topics must not contain `+` or `#`",
                        p.topic
                    ))));
                }
            }
        }
    }

    fn publish_twin_requests(&mut self, conn: &mut Conn) {
        let reqs: Vec<(String, Bytes)> = self
            .waiters
            .values()
            .map(|w| (w.topic.clone(), w.payload.clone()))
            .collect();
        for (topic, payload) in reqs {
            let seq = self.next_seq();
            self.submit(
                conn,
                Pending {
                    seq,
                    topic,
                    payload,
                    done: None,
                },
            );
        }
    }

    fn add_twin_request(
        &mut self,
        conn: Option<&mut Conn>,
        topic_of: impl Fn(&str) -> String,
        payload: Bytes,
        waiter: Waiter,
    ) {
        let rid = uuid::Uuid::new_v4().to_string();
        let topic = topic_of(&rid);
        self.waiters.insert(
            rid,
            TwinRequest {
                topic: topic.clone(),
                payload: payload.clone(),
                waiter,
            },
        );
        if let Some(conn) = conn {
            let seq = self.next_seq();
            self.submit(
                conn,
                Pending {
                    seq,
                    topic,
                    payload,
                    done: None,
                },
            );
        }
    }

    async fn connected(&mut self, mut conn: Conn) -> Exit {
        let module = self.identity.module_id.clone();
        let mut filters = vec![topics::TWIN_RESPONSES.to_string()];
        if let Some(m) = &module {
            filters.push(topics::module_inputs_filter(&self.identity.device_id, m));
        }
        filters.push(topics::METHOD_REQUESTS.to_string());
        filters.push(topics::DESIRED_PATCHES.to_string());
        conn.subacks_pending = filters.len();
        for f in filters {
            if let Err(e) = conn.client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                conn.poll.abort();
                return Exit::Lost(format!("cannot subscribe to {f}: {e}"));
            }
        }
        // Re-send what the previous connection did not get acknowledged, in order.
        let resend: Vec<Pending> = self.resend.drain(..).collect();
        for p in resend {
            self.submit(&mut conn, p);
        }
        // Twin requests still unanswered, then the full twin for the application.
        self.waiters
            .retain(|_, w| !matches!(w.waiter, Waiter::Internal));
        self.publish_twin_requests(&mut conn);
        self.add_twin_request(
            Some(&mut conn),
            topics::twin_get,
            Bytes::from_static(b" "),
            Waiter::Internal,
        );
        tracing::info!(
            host = self.identity.connect_host(),
            port = self.identity.port,
            "connected to the hub"
        );

        let renew_at = if self.identity.can_renew() {
            let secs =
                self.opts.token_ttl_secs * u64::from(self.opts.token_renew_percent.min(100)) / 100;
            Some(Instant::now() + Duration::from_secs(secs.max(1)))
        } else {
            None
        };
        let mut renewing: Option<Instant> = None;
        let window = usize::from(self.opts.max_in_flight);
        let exit = loop {
            // Done flushing for a shutdown or a token renewal: leave this connection.
            if conn.outstanding_messages() == 0 {
                if self.shutdown.is_some() && self.nothing_to_flush() {
                    break Exit::Stop;
                }
                if renewing.is_some() && self.shutdown.is_none() {
                    break Exit::Renew;
                }
            }
            if renewing.map(|d| Instant::now() >= d).unwrap_or(false) {
                break Exit::Renew;
            }
            if self.shutdown.map(|d| Instant::now() >= d).unwrap_or(false) {
                break Exit::Stop;
            }
            let can_send =
                renewing.is_none() && !self.sends_closed && conn.outstanding_messages() < window;
            let timer = [
                renew_at.filter(|_| renewing.is_none()),
                renewing,
                self.shutdown,
            ]
            .into_iter()
            .flatten()
            .min();
            let timer_on = timer.is_some();
            let timer = timer.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = conn.rx.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(&mut conn, ev),
                    Some(Err(e)) => break Exit::Lost(classify(&e, &self.identity, false).to_string()),
                    None => break Exit::Lost("the connection task ended".to_string()),
                },
                req = self.sends_rx.recv(), if can_send => match req {
                    Some(r) => {
                        let seq = self.next_seq();
                        self.submit(&mut conn, Pending { seq, topic: r.topic, payload: r.payload, done: Some(r.done) });
                    }
                    None => self.sends_closed = true,
                },
                c = self.ctrl_rx.recv() => match c {
                    Some(c) => self.on_ctrl(Some(&mut conn), c),
                    None => break Exit::Stop,
                },
                _ = sleep_until(timer), if timer_on => {
                    if renewing.is_none() && renew_at.map(|r| Instant::now() >= r).unwrap_or(false) {
                        tracing::info!("renewing the SAS token: reconnecting after in-flight messages are acknowledged");
                        renewing = Some(Instant::now() + Duration::from_secs(30));
                    }
                }
            }
        };
        match exit {
            Exit::Lost(_) => {}
            Exit::Renew | Exit::Stop => {
                // Polite DISCONNECT, then give the connection a moment to write it.
                let _ = conn.client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(ev) = conn.rx.recv().await {
                        match ev {
                            Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            }
        }
        conn.poll.abort();
        // Unacknowledged messages go first on the next connection, in their original order.
        let mut left: Vec<Pending> = conn
            .inflight
            .into_values()
            .chain(conn.submitted)
            .filter(|p| p.done.is_some())
            .collect();
        left.sort_by_key(|p| p.seq);
        for p in left.into_iter().rev() {
            self.resend.push_front(p);
        }
        if let Exit::Renew = exit {
            let _ = self
                .events
                .send(Event::Disconnected("renewing the SAS token".to_string()));
        }
        exit
    }

    fn on_ctrl(&mut self, conn: Option<&mut Conn>, c: Ctrl) {
        match c {
            Ctrl::TwinGet(tx) => self.add_twin_request(
                conn,
                topics::twin_get,
                Bytes::from_static(b" "),
                Waiter::Get(tx),
            ),
            Ctrl::Reported(patch, tx) => self.add_twin_request(
                conn,
                topics::twin_reported,
                Bytes::from(patch.to_string().into_bytes()),
                Waiter::Reported(tx),
            ),
            Ctrl::MethodResponse {
                rid,
                status,
                payload,
            } => match conn {
                Some(conn) => {
                    let seq = self.next_seq();
                    let topic = topics::method_response(status, &rid);
                    self.submit(
                        conn,
                        Pending {
                            seq,
                            topic,
                            payload: Bytes::from(payload),
                            done: None,
                        },
                    );
                }
                None => tracing::warn!(rid, "method response dropped: not connected"),
            },
            Ctrl::Ack { epoch, publish } => {
                if let Some(conn) = conn {
                    if epoch == self.epoch {
                        let _ = conn.client.try_ack(&publish);
                    }
                }
            }
            Ctrl::Shutdown(reply) => self.begin_shutdown(reply),
        }
    }

    fn on_event(&mut self, conn: &mut Conn, ev: rumqttc::Event) {
        match ev {
            // rumqttc numbers our QoS 1 publishes in the order we handed them over.
            rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(p) = conn.submitted.pop_front() {
                    conn.inflight.insert(pkid, p);
                }
            }
            rumqttc::Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(p) = conn.inflight.remove(&ack.pkid) {
                    if let Some(d) = p.done {
                        let _ = d.send(Ok(()));
                    }
                }
            }
            rumqttc::Event::Incoming(Packet::Publish(p)) => self.on_publish(conn, p),
            rumqttc::Event::Incoming(Packet::SubAck(s)) => {
                if s.return_codes
                    .contains(&rumqttc::SubscribeReasonCode::Failure)
                {
                    tracing::warn!(
                        client_id = %self.identity.client_id(),
                        "the hub refused a subscription (SUBACK 0x80): inputs, twin patches or methods will not arrive; \
                         see the hub's log for which topic this identity may not use"
                    );
                }
                if conn.subacks_pending > 0 {
                    conn.subacks_pending -= 1;
                    if conn.subacks_pending == 0 {
                        let _ = self.events.send(Event::Connected);
                    }
                }
            }
            _ => {}
        }
    }

    fn ack_now(&self, conn: &Conn, p: &rumqttc::Publish) {
        if !self.opts.auto_ack {
            let _ = conn.client.try_ack(p);
        }
    }

    fn on_publish(&mut self, conn: &mut Conn, p: rumqttc::Publish) {
        let topic = p.topic.clone();
        if let Some((status, rid, version)) = topics::parse_twin_response(&topic) {
            self.ack_now(conn, &p);
            let Some(req) = self.waiters.remove(&rid) else {
                return;
            };
            let body = || String::from_utf8_lossy(&p.payload).into_owned();
            match req.waiter {
                Waiter::Get(tx) => {
                    let _ = tx.send(twin_result(status, &p.payload, body()));
                }
                Waiter::Internal => match twin_result(status, &p.payload, body()) {
                    Ok(v) => {
                        let _ = self.events.send(Event::Twin(v));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the twin after connecting failed")
                    }
                },
                Waiter::Reported(tx) => {
                    let r = if (200..300).contains(&status) {
                        Ok(version.unwrap_or(0))
                    } else {
                        Err(ClientError::TwinStatus {
                            status,
                            body: body(),
                        })
                    };
                    let _ = tx.send(r);
                }
            }
            return;
        }
        if topics::parse_desired_patch(&topic).is_some() {
            self.ack_now(conn, &p);
            match serde_json::from_slice::<Value>(&p.payload) {
                Ok(v) => {
                    let _ = self.events.send(Event::DesiredPatch(v));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "desired-properties patch that is not JSON ignored")
                }
            }
            return;
        }
        if let Some((name, rid)) = topics::parse_method_request(&topic) {
            self.ack_now(conn, &p);
            let payload = serde_json::from_slice::<Value>(&p.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&p.payload).into_owned())
            });
            let _ = self.events.send(Event::Method(MethodRequest {
                name,
                rid,
                payload,
                ctrl: self.ctrl_tx.clone(),
            }));
            return;
        }
        if let Some(module) = self.identity.module_id.clone() {
            if let Some((input, bag)) =
                topics::parse_module_input(&topic, &self.identity.device_id, &module)
            {
                let mut message = Message::new(p.payload.clone());
                if let Err(e) = wire::decode_property_bag(&bag, &mut message) {
                    // A message we cannot read would come back forever if not acknowledged.
                    tracing::warn!(error = %e, topic, "input message with a bad property bag dropped");
                    self.ack_now(conn, &p);
                    return;
                }
                let acker = if self.opts.auto_ack || p.qos == QoS::AtMostOnce {
                    None
                } else {
                    Some(Acker {
                        epoch: self.epoch,
                        publish: p,
                        ctrl: self.ctrl_tx.clone(),
                    })
                };
                let _ = self.events.send(Event::Input(InputMessage {
                    input,
                    message,
                    acker,
                }));
                return;
            }
        }
        tracing::debug!(
            topic,
            "publish on an unexpected topic acknowledged and ignored"
        );
        self.ack_now(conn, &p);
    }
}

fn twin_result(status: u16, payload: &[u8], body: String) -> Result<Value, ClientError> {
    if status != 200 {
        return Err(ClientError::TwinStatus { status, body });
    }
    serde_json::from_slice(payload)
        .map_err(|e| ClientError::Protocol(format!("twin that is not JSON ({e}): {body}")))
}

/// Turns a rumqttc error into one that says what is wrong. `connecting`: no CONNACK yet.
fn classify(e: &ConnectionError, id: &Identity, connecting: bool) -> ClientError {
    let host = id.connect_host().to_string();
    let port = id.port;
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let reason = match code {
                ConnectReturnCode::BadUserNamePassword => format!(
                    "bad user name or password (CONNACK 4): the SAS token for {} was not accepted; check the \
                     SharedAccessKey (or the workload API's module key), the device and module ids, and the clock",
                    id.client_id()
                ),
                ConnectReturnCode::NotAuthorized => format!(
                    "not authorized (CONNACK 5): the hub does not accept {}; check that this identity exists \
                     (the module is in the deployment) and that the key is its own",
                    id.client_id()
                ),
                ConnectReturnCode::ServiceUnavailable => {
                    "server unavailable (CONNACK 3): the hub is starting or overloaded".to_string()
                }
                ConnectReturnCode::BadClientId => {
                    format!("identifier rejected (CONNACK 2): client id {:?}", id.client_id())
                }
                ConnectReturnCode::RefusedProtocolVersion => {
                    "unacceptable protocol version (CONNACK 1): the hub does not speak MQTT 3.1.1".to_string()
                }
                ConnectReturnCode::Success => "CONNACK 0 reported as a refusal".to_string(),
            };
            ClientError::Refused { host, port, reason }
        }
        ConnectionError::Tls(t) => {
            let reason = match t {
                rumqttc::TlsError::TLS(r) => crate::tls::explain(r, &host, &id.trust),
                rumqttc::TlsError::Io(io) => {
                    match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(r) => crate::tls::explain(r, &host, &id.trust),
                        None => return io_error(io, host, port, connecting),
                    }
                }
                rumqttc::TlsError::DNSName(_) => {
                    format!("{host:?} is not a valid DNS name for TLS (an IP address does not match edgeHub's certificate; use localhost or the gateway's name)")
                }
                other => other.to_string(),
            };
            ClientError::Tls { host, port, reason }
        }
        ConnectionError::Io(io) => io_error(io, host, port, connecting),
        ConnectionError::NetworkTimeout => ClientError::Unreachable {
            host,
            port,
            reason: "connecting timed out".to_string(),
        },
        other => ClientError::Connection {
            host,
            port,
            reason: other.to_string(),
        },
    }
}

fn io_error(io: &std::io::Error, host: String, port: u16, connecting: bool) -> ClientError {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused | NotFound | TimedOut | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            if connecting =>
        {
            ClientError::Unreachable {
                host,
                port,
                reason: io.to_string(),
            }
        }
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe if connecting => ClientError::Connection {
            host,
            port,
            reason: format!(
                "the hub closed the connection before CONNACK ({io}); it may have rejected this client, see the hub's log"
            ),
        },
        // Name resolution failures have no stable ErrorKind.
        _ if connecting && (io.to_string().contains("resolve") || io.to_string().contains("lookup")) => {
            ClientError::Unreachable {
                host,
                port,
                reason: format!("cannot resolve the host name ({io})"),
            }
        }
        _ => ClientError::Connection {
            host,
            port,
            reason: format!("connection lost: {io}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        assert_eq!(backoff_delay(0, i, m, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(3, i, m, 1.0), Duration::from_secs(8));
        assert_eq!(backoff_delay(6, i, m, 1.0), Duration::from_secs(60));
        assert_eq!(backoff_delay(500, i, m, 1.0), Duration::from_secs(60));
        assert_eq!(backoff_delay(3, i, m, 0.5), Duration::from_secs(4));
        assert_eq!(backoff_delay(3, i, m, 0.1), Duration::from_secs(4));
    }

    #[test]
    fn options_defaults_and_unknown_fields() {
        let o: ClientOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(o, ClientOptions::default());
        assert_eq!(o.queue_capacity, 1000);
        assert_eq!(o.token_ttl_secs, 3600);
        let o: ClientOptions =
            serde_json::from_str(r#"{"auto_ack": true, "queue_capacity": 5}"#).unwrap();
        assert!(o.auto_ack);
        assert_eq!(o.queue_capacity, 5);
        assert!(serde_json::from_str::<ClientOptions>(r#"{"queue_size": 5}"#).is_err());
    }

    #[test]
    fn refusals_are_explained() {
        let id = Identity::from_connection_string(
            "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=YWJj;GatewayHostName=localhost",
            None,
        )
        .unwrap();
        let e = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            &id,
            true,
        );
        let s = e.to_string();
        assert!(
            s.contains("localhost:8883")
                && s.contains("CONNACK 4")
                && s.contains("SharedAccessKey"),
            "{s}"
        );
        assert!(!e.is_transient());
        let e = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable),
            &id,
            true,
        );
        assert!(e.is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = classify(&ConnectionError::Io(io), &id, true);
        assert!(e.is_transient());
        assert!(
            e.to_string().contains("is edge-dev (or edgeHub) running"),
            "{e}"
        );
    }
}
