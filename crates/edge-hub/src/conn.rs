//! One MQTT connection: CONNECT and SAS authentication, then a single loop that reads the client's
//! packets, sends PUBACKs in order once their messages are durable, delivers the module's input queue
//! (at most N unacknowledged) and sends what the hub pushes (desired patches, method requests).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edge_client::wire::{self, topics, Message};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::store::{self, Op, QueueKey, Record, UPSTREAM};
use super::{acl, now_ms, ConnRef, Inner, ModuleRt, Outbound, Session};

/// Room for the topic (with its property bag) above the message size limit.
const TOPIC_SLACK: usize = 65_536;
/// Publishes of one client waiting for their commit, at most (then the hub stops reading from it).
const PENDING_MAX: usize = 256;

/// What to do when a pending publish has been handled: send these publishes (if subscribed), then the
/// PUBACK; or close the connection.
struct Action {
    publishes: Vec<Outbound>,
    puback: Option<u16>,
    fail: Option<String>,
}

type Pending = Pin<Box<dyn Future<Output = Action> + Send>>;

fn ready(publishes: Vec<Outbound>, puback: Option<u16>) -> Pending {
    Box::pin(std::future::ready(Action {
        publishes,
        puback,
        fail: None,
    }))
}

/// Serves one connection until it ends.
pub(super) async fn run<S>(
    inner: Arc<Inner>,
    stream: S,
    peer: SocketAddr,
    close: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let codec = Codec {
        max_incoming_size: inner.config.max_message_size + TOPIC_SLACK,
        max_outgoing_size: inner.config.max_message_size.saturating_mul(2) + TOPIC_SLACK,
    };
    let mut framed = Framed::new(stream, codec);
    let timeout = Duration::from_secs(inner.config.connect_timeout_secs.max(1));
    let connect = match tokio::time::timeout(timeout, framed.next()).await {
        Err(_) => {
            tracing::warn!(%peer, "no MQTT CONNECT within {timeout:?}; closing");
            return;
        }
        Ok(None) => {
            tracing::debug!(%peer, "connection closed before CONNECT");
            return;
        }
        Ok(Some(Err(e))) => {
            tracing::warn!(%peer, error = %e, "not a valid MQTT 3.1.1 CONNECT; closing (the hub speaks MQTT 3.1.1, over TLS on its TLS port)");
            return;
        }
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        Ok(Some(Ok(other))) => {
            tracing::warn!(%peer, packet = ?packet_name(&other), "the first packet was not CONNECT; closing");
            return;
        }
    };
    if connect.protocol != Protocol::V4 {
        tracing::warn!(%peer, client_id = %connect.client_id, "refused: MQTT 5 is not supported; connect with MQTT 3.1.1 as edgeHub requires");
        let _ = framed
            .send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::RefusedProtocolVersion,
                false,
            )))
            .await;
        return;
    }
    let module = match authenticate(&inner, &connect) {
        Ok(m) => m,
        Err((code, reason)) => {
            let hint = match connect.client_id.split_once('/') {
                Some((_, m)) if !m.is_empty() => {
                    format!("`edge-dev module-cred {m}` prints working credentials")
                }
                _ => "`edge-dev module-cred <module>` prints working credentials".to_string(),
            };
            tracing::warn!(%peer, client_id = %connect.client_id, code = ?code, "refused connection: {reason}; {hint}");
            let _ = framed
                .send(Packet::ConnAck(ConnAck::new(code, false)))
                .await;
            return;
        }
    };
    if !inner.store.is_writable() {
        // nothing could be stored: clients back off and come again once the disk has room
        tracing::warn!(%peer, module = %module, "refused connection (server unavailable): the hub store cannot write (disk full?); free space on the data directory's disk");
        let _ = framed
            .send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::ServiceUnavailable,
                false,
            )))
            .await;
        return;
    }
    let Some(rt) = inner.modules.get(&module).cloned() else {
        // authenticate() only accepts modules with a key, and every such module has a runtime.
        return;
    };
    let mut conn = Conn::new(inner, rt, module, connect, peer);
    conn.serve(framed, close).await;
    conn.finish();
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// Checks the client id, username and SAS token; the module name, or the CONNACK code and the reason.
fn authenticate(inner: &Inner, connect: &Connect) -> Result<String, (ConnectReturnCode, String)> {
    let not_authorized = |r: String| (ConnectReturnCode::NotAuthorized, r);
    let bad_login = |r: String| (ConnectReturnCode::BadUserNamePassword, r);
    let cid = connect.client_id.as_str();
    let device_id = inner.config.device_id.as_str();
    let (device, module) = cid.split_once('/').ok_or_else(|| {
        not_authorized(format!(
            "client id {cid:?} is not `<device>/<module>`; a module connects with client id `{device_id}/<module>`"
        ))
    })?;
    if device != device_id {
        return Err(not_authorized(format!(
            "device {device:?} is not this edge device ({device_id:?})"
        )));
    }
    if module.is_empty() || module.contains('/') {
        return Err(not_authorized(format!(
            "client id {cid:?} does not name one module"
        )));
    }
    let key = inner.keys.get(module).ok_or_else(|| {
        not_authorized(format!(
            "there is no module {module:?} in this deployment; add it to the manifest or fix the name"
        ))
    })?;
    let login = connect.login.as_ref().ok_or_else(|| {
        bad_login("no username and password; the username is `<hub>/<device>/<module>/?api-version=...`, the password a SAS token".into())
    })?;
    let user = wire::parse_username(&login.username).map_err(|e| bad_login(e.to_string()))?;
    if user.device != device || user.module.as_deref() != Some(module) {
        return Err(bad_login(format!(
            "the username {:?} names another identity than the client id {cid:?}",
            login.username
        )));
    }
    let token =
        wire::sas::SasToken::parse(&login.password).map_err(|e| bad_login(e.to_string()))?;
    let resource = wire::sas::resource_uri(&inner.config.iothub_hostname, device, Some(module));
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    token
        .verify(key, &resource, now)
        .map_err(|e| bad_login(e.to_string()))?;
    Ok(module.to_string())
}

struct Conn {
    inner: Arc<Inner>,
    rt: Arc<ModuleRt>,
    module: String,
    device: String,
    client_id: String,
    peer: SocketAddr,
    id: u64,
    clean_session: bool,
    keep_alive: Option<Duration>,
    session_present: bool,
    rx: mpsc::Receiver<Outbound>,
    kick: Arc<Notify>,
    /// Our copy of the session's subscriptions (the shared map has the same).
    subscriptions: Vec<(String, u8)>,
    /// pkid -> queue entry delivered and not yet acknowledged
    inflight: HashMap<u16, QueueKey>,
    next_pkid: u16,
    scan_needed: bool,
    pending: FuturesOrdered<Pending>,
}

enum Flow {
    Continue,
    Close,
}

impl Conn {
    fn new(
        inner: Arc<Inner>,
        rt: Arc<ModuleRt>,
        module: String,
        connect: Connect,
        peer: SocketAddr,
    ) -> Conn {
        let client_id = connect.client_id.clone();
        let device = inner.config.device_id.clone();
        let (tx, rx) = mpsc::channel(256);
        let kick = Arc::new(Notify::new());
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let clean = connect.clean_session;
        let (session_present, subscriptions) = {
            let mut sessions = match inner.sessions.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let mut present = false;
            let mut subs = Vec::new();
            if let Some(old) = sessions.remove(&client_id) {
                if let Some(c) = &old.conn {
                    tracing::info!(client_id = %client_id, %peer, "the client connected again; closing its previous connection (client-id takeover)");
                    c.kick.notify_one();
                }
                if !clean && old.persistent {
                    present = true;
                    subs = old.subscriptions;
                }
            }
            sessions.insert(
                client_id.clone(),
                Session {
                    subscriptions: subs.clone(),
                    persistent: !clean,
                    conn: Some(ConnRef {
                        id,
                        tx,
                        kick: kick.clone(),
                    }),
                },
            );
            (present, subs)
        };
        let keep_alive = match connect.keep_alive {
            0 => None,
            k => Some(Duration::from_millis(u64::from(k) * 1500)),
        };
        Conn {
            inner,
            rt,
            module,
            device,
            client_id,
            peer,
            id,
            clean_session: clean,
            keep_alive,
            session_present,
            rx,
            kick,
            subscriptions,
            inflight: HashMap::new(),
            next_pkid: 0,
            scan_needed: true,
            pending: FuturesOrdered::new(),
        }
    }

    /// Unregisters the connection (unless a newer one took the session over).
    fn finish(&mut self) {
        let mut sessions = match self.inner.sessions.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let mine = sessions
            .get(&self.client_id)
            .and_then(|s| s.conn.as_ref())
            .map(|c| c.id == self.id)
            .unwrap_or(false);
        if mine {
            let persistent = sessions
                .get(&self.client_id)
                .map(|s| s.persistent)
                .unwrap_or(false);
            if persistent {
                if let Some(s) = sessions.get_mut(&self.client_id) {
                    s.conn = None;
                }
            } else {
                sessions.remove(&self.client_id);
            }
            self.rt.connected.store(false, Ordering::Relaxed);
        }
        tracing::info!(module = %self.module, peer = %self.peer, "module disconnected");
    }

    async fn serve<S>(&mut self, mut framed: Framed<S, Codec>, mut close: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if self.clean_session {
            // Clean session: whatever was stored for this client is discarded.
            let op = store::delete_session(&self.client_id);
            if let Err(e) = self.inner.store.write(vec![op]).await {
                tracing::error!(error = %e, "could not discard a stored session");
            }
        }
        let ack = ConnAck::new(ConnectReturnCode::Success, self.session_present);
        if framed.send(Packet::ConnAck(ack)).await.is_err() {
            return;
        }
        self.rt.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            module = %self.module,
            peer = %self.peer,
            clean_session = self.clean_session,
            session_present = self.session_present,
            subscriptions = self.subscriptions.len(),
            "module connected"
        );
        let mut last_rx = Instant::now();
        loop {
            if self.scan_needed && self.inflight.len() < self.inner.config.max_inflight_per_client {
                self.scan_needed = false;
                if let Err(e) = self.deliver(&mut framed).await {
                    tracing::info!(module = %self.module, error = %e, "delivery failed; closing");
                    return;
                }
            }
            let ka_deadline = self.keep_alive.map(|k| last_rx + k);
            let can_read = self.pending.len() < PENDING_MAX;
            let rt = self.rt.clone();
            let flow = tokio::select! {
                biased;
                _ = self.kick.notified() => {
                    tracing::info!(module = %self.module, peer = %self.peer, "closing this connection: the same client id connected again");
                    self.drain(&mut framed).await;
                    Flow::Close
                }
                _ = close.changed() => {
                    self.drain(&mut framed).await;
                    Flow::Close
                }
                Some(action) = self.pending.next(), if !self.pending.is_empty() => {
                    self.complete(&mut framed, action).await
                }
                Some(out) = self.rx.recv() => {
                    self.send_hub_publish(&mut framed, out).await
                }
                _ = rt.notify.notified() => {
                    self.scan_needed = true;
                    Flow::Continue
                }
                _ = sleep_until_opt(ka_deadline) => {
                    tracing::warn!(module = %self.module, peer = %self.peer, "no packet within 1.5 x keep-alive; closing the connection");
                    Flow::Close
                }
                packet = framed.next(), if can_read => {
                    last_rx = Instant::now();
                    match packet {
                        None => Flow::Close,
                        Some(Err(e)) => {
                            self.log_decode_error(&e);
                            Flow::Close
                        }
                        Some(Ok(p)) => self.handle(&mut framed, p).await,
                    }
                }
            };
            if let Flow::Close = flow {
                return;
            }
        }
    }

    fn log_decode_error(&self, e: &rumqttc::mqttbytes::Error) {
        match e {
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n) => tracing::warn!(
                module = %self.module,
                "closing the connection: a packet of {n} bytes exceeds the hub's maximum message size ({} bytes); send smaller messages",
                self.inner.config.max_message_size
            ),
            rumqttc::mqttbytes::Error::Io(io) => {
                tracing::debug!(module = %self.module, error = %io, "connection error")
            }
            other => {
                tracing::warn!(module = %self.module, error = %other, "closing the connection: malformed MQTT packet")
            }
        }
    }

    /// Sends what is already committed (so those publishers get their PUBACK) before closing.
    async fn drain<S>(&mut self, framed: &mut Framed<S, Codec>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(action)) => {
                    if let Flow::Close = self.complete(framed, action).await {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    fn subscribed_qos(&self, topic: &str) -> Option<u8> {
        self.subscriptions
            .iter()
            .filter(|(f, _)| acl::filter_matches(f, topic))
            .map(|(_, q)| *q)
            .max()
    }

    async fn send_hub_publish<S>(&mut self, framed: &mut Framed<S, Codec>, out: Outbound) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if self.subscribed_qos(&out.topic).is_none() {
            tracing::warn!(module = %self.module, topic = %out.topic, "not sending: the module has not subscribed to this topic (subscribe to `$iothub/twin/res/#`, `$iothub/methods/POST/#`, `$iothub/twin/PATCH/properties/desired/#` first)");
            return Flow::Continue;
        }
        let p = Publish::from_bytes(out.topic, QoS::AtMostOnce, out.payload);
        match framed.send(Packet::Publish(p)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn complete<S>(&mut self, framed: &mut Framed<S, Codec>, action: Action) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if let Some(reason) = action.fail {
            tracing::error!(module = %self.module, "closing the connection without acknowledging: {reason}");
            return Flow::Close;
        }
        for out in action.publishes {
            if let Flow::Close = self.send_hub_publish(framed, out).await {
                return Flow::Close;
            }
        }
        if let Some(pkid) = action.puback {
            if framed
                .send(Packet::PubAck(PubAck::new(pkid)))
                .await
                .is_err()
            {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn handle<S>(&mut self, framed: &mut Framed<S, Codec>, packet: Packet) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                self.on_puback(a.pkid);
                Flow::Continue
            }
            Packet::Subscribe(s) => self.on_subscribe(framed, s).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(framed, u).await,
            Packet::PingReq => match framed.send(Packet::PingResp).await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Close,
            },
            Packet::Disconnect => {
                // Finish what was received before the DISCONNECT.
                self.drain(framed).await;
                Flow::Close
            }
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                tracing::warn!(module = %self.module, "closing the connection: QoS 2 is not supported by edgeHub; use QoS 1");
                Flow::Close
            }
            other => {
                tracing::warn!(module = %self.module, packet = packet_name(&other), "closing the connection: a client may not send this packet");
                Flow::Close
            }
        }
    }

    fn on_publish(&mut self, p: Publish) -> Flow {
        let puback = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(p.pkid),
            QoS::ExactlyOnce => {
                tracing::warn!(module = %self.module, topic = %p.topic, "closing the connection: QoS 2 is not supported by edgeHub; publish with QoS 1");
                return Flow::Close;
            }
        };
        let kind = match topics::parse_client_publish(&p.topic, &self.device, Some(&self.module)) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(module = %self.module, "closing the connection: publish not allowed: {e}");
                return Flow::Close;
            }
        };
        match kind {
            topics::ClientPublish::Events { bag } => {
                match self.on_events(p.payload, &bag, puback) {
                    Ok(pending) => {
                        self.pending.push_back(pending);
                        Flow::Continue
                    }
                    Err(reason) => {
                        tracing::warn!(module = %self.module, "closing the connection: {reason}");
                        Flow::Close
                    }
                }
            }
            topics::ClientPublish::TwinGet { rid } => {
                let doc = match self.inner.twins.lock() {
                    Ok(t) => t.get(&self.module).map(super::twin::TwinState::document),
                    Err(_) => None,
                };
                let doc =
                    doc.unwrap_or_else(|| super::twin::TwinState::new(&Value::Null).document());
                let out = Outbound {
                    topic: topics::twin_response(200, &rid, None),
                    payload: Bytes::from(doc.to_string()),
                };
                self.pending.push_back(ready(vec![out], puback));
                Flow::Continue
            }
            topics::ClientPublish::TwinReported { rid } => {
                let pending = self.on_reported(&p.payload, rid, puback);
                self.pending.push_back(pending);
                Flow::Continue
            }
            topics::ClientPublish::MethodResponse { status, rid } => {
                let waiter = self
                    .inner
                    .methods
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(&rid));
                match waiter {
                    Some(w) => {
                        let _ = w.send((status, p.payload));
                    }
                    None => {
                        tracing::info!(module = %self.module, rid = %rid, "a method response for no pending call (it timed out?)")
                    }
                }
                self.pending.push_back(ready(Vec::new(), puback));
                Flow::Continue
            }
        }
    }

    /// A message to an output: route it, queue it durably in every matched endpoint in one
    /// transaction, and acknowledge once committed. `Err` closes the connection.
    fn on_events(
        &mut self,
        payload: Bytes,
        bag: &str,
        puback: Option<u16>,
    ) -> Result<Pending, String> {
        let inner = &self.inner;
        let mut msg = Message::new(payload);
        wire::decode_property_bag(bag, &mut msg).map_err(|e| format!("bad property bag: {e}"))?;
        // The size the module sent, before the hub adds $.cdid and $.cmid.
        let size = msg.size();
        msg.connection_device_id = Some(self.device.clone());
        msg.connection_module_id = Some(self.module.clone());
        if size > inner.config.max_message_size {
            return Err(format!(
                "a message of {size} bytes (body and properties) exceeds the hub's maximum of {} bytes; send smaller messages",
                inner.config.max_message_size
            ));
        }
        self.rt.messages_in.fetch_add(1, Ordering::Relaxed);
        let output = msg.output_name.clone().unwrap_or_default();
        let source = edge_routes::MessageSource::Module {
            module: &self.module,
            output: &output,
        };
        let (ops, endpoints) = self.route_ops(&msg, source, &output);
        // what `edge-dev monitor` shows (built only while someone watches)
        let event = (inner.monitor.receiver_count() > 0).then(|| super::MonitorEvent {
            time: chrono::Utc::now(),
            module: self.module.clone(),
            output: output.clone(),
            targets: ops
                .iter()
                .filter_map(|op| match op {
                    Op::Enqueue { key, record } => Some(match store::record_input(record) {
                        Some(input) if !input.is_empty() => format!("{}/{input}", key.endpoint),
                        _ => key.endpoint.clone(),
                    }),
                    _ => None,
                })
                .collect(),
            message: msg.clone(),
        });
        if ops.is_empty() {
            inner.unrouted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(module = %self.module, output = %output, "no route matches; the message is acknowledged and dropped, as edgeHub does");
            if let Some(e) = event {
                let _ = inner.monitor.send(e);
            }
            return Ok(ready(Vec::new(), puback));
        }
        let done = commit_and_announce(&self.inner, ops, endpoints);
        let monitor = inner.monitor.clone();
        Ok(Box::pin(async move {
            match done.await {
                Ok(Ok(())) => {
                    if let Some(e) = event {
                        let _ = monitor.send(e);
                    }
                    Action {
                        publishes: Vec::new(),
                        puback,
                        fail: None,
                    }
                }
                Ok(Err(e)) => Action {
                    publishes: Vec::new(),
                    puback: None,
                    fail: Some(format!("could not store the message durably: {e}")),
                },
                Err(_) => Action {
                    publishes: Vec::new(),
                    puback: None,
                    fail: Some("the store task ended before the commit".into()),
                },
            }
        }))
    }

    /// Evaluates the routes for `msg` from `source`: one enqueue per matched (endpoint, input), at the
    /// highest priority (lowest number) of the routes to it; and the endpoints, for the bookkeeping.
    fn route_ops(
        &self,
        msg: &Message,
        source: edge_routes::MessageSource<'_>,
        output: &str,
    ) -> (Vec<Op>, Vec<String>) {
        let inner = &self.inner;
        let system = msg.system_properties();
        let rm = edge_routes::RouteMessage {
            source,
            system_properties: &system,
            properties: &msg.properties,
            body: &msg.body,
        };
        let mut targets: std::collections::BTreeMap<(String, String), (u8, Option<u32>)> =
            Default::default();
        for route in inner.routes.evaluate(&rm) {
            let (endpoint, input) = match &route.sink {
                edge_routes::Sink::Upstream => (UPSTREAM.to_string(), String::new()),
                edge_routes::Sink::ModuleInput { module, input } => {
                    (store::module_endpoint(module), input.clone())
                }
            };
            let e = targets
                .entry((endpoint, input))
                .or_insert((route.priority, route.time_to_live_secs));
            if route.priority < e.0 {
                *e = (route.priority, route.time_to_live_secs);
            }
        }
        let now = now_ms();
        let mut ops = Vec::with_capacity(targets.len());
        let mut endpoints = Vec::with_capacity(targets.len());
        for ((endpoint, input), (priority, ttl)) in targets {
            let record = Record {
                enqueued_ms: now,
                expiry_ms: now.saturating_add(inner.ttl_ms(ttl)),
                module: self.module.clone(),
                output: output.to_string(),
                input,
                message: msg.clone(),
            };
            ops.push(Op::Enqueue {
                key: QueueKey {
                    endpoint: endpoint.clone(),
                    priority,
                    seq: inner.store.next_seq(),
                },
                record: store::encode_record(&record),
            });
            endpoints.push(endpoint);
        }
        (ops, endpoints)
    }

    fn on_reported(&mut self, payload: &Bytes, rid: String, puback: Option<u16>) -> Pending {
        let error = |status: u16, message: String| {
            let body = serde_json::json!({ "message": message }).to_string();
            ready(
                vec![Outbound {
                    topic: topics::twin_response(status, &rid, None),
                    payload: Bytes::from(body),
                }],
                puback,
            )
        };
        let patch: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(module = %self.module, "refused a reported-properties patch that is not JSON: {e}");
                return error(
                    400,
                    format!("the reported-properties patch is not JSON: {e}"),
                );
            }
        };
        // A reported-properties change is also a message from source `/twinChangeNotifications`
        // (edgeHub routes it like telemetry, carrying who sent it); its queue entries commit with the
        // twin.
        let (notify_ops, notify_endpoints) = if patch.is_object() {
            let mut m = Message::json(&patch);
            m.connection_device_id = Some(self.device.clone());
            m.connection_module_id = Some(self.module.clone());
            let source = edge_routes::MessageSource::TwinChangeNotification {
                module: Some(&self.module),
            };
            self.route_ops(&m, source, "")
        } else {
            (Vec::new(), Vec::new())
        };
        let submitted = {
            let mut twins = match self.inner.twins.lock() {
                Ok(t) => t,
                Err(p) => p.into_inner(),
            };
            let twin = twins
                .entry(self.module.clone())
                .or_insert_with(|| super::twin::TwinState::new(&Value::Null));
            let mut next = twin.clone();
            match next.patch_reported(&patch) {
                Err(reason) => Err(reason.to_string()),
                Ok(version) => match serde_json::to_vec(&next) {
                    Err(e) => Err(e.to_string()),
                    Ok(bytes) => {
                        *twin = next;
                        // Submitted under the lock: twin writes commit in the order they were made.
                        let mut ops = vec![store::put_twin(&self.module, bytes)];
                        ops.extend(notify_ops);
                        let commit = commit_and_announce(&self.inner, ops, notify_endpoints);
                        Ok((version, commit))
                    }
                },
            }
        };
        match submitted {
            Err(reason) => {
                tracing::warn!(module = %self.module, "refused a reported-properties patch: {reason}");
                error(400, reason)
            }
            Ok((version, commit)) => Box::pin(async move {
                match commit.await.unwrap_or_else(|_| {
                    Err(store::StoreError(
                        "the store task ended before the commit".into(),
                    ))
                }) {
                    Ok(()) => Action {
                        publishes: vec![Outbound {
                            topic: topics::twin_response(204, &rid, Some(version)),
                            payload: Bytes::new(),
                        }],
                        puback,
                        fail: None,
                    },
                    Err(e) => Action {
                        publishes: Vec::new(),
                        puback: None,
                        fail: Some(format!("could not store reported properties: {e}")),
                    },
                }
            }),
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        let Some(key) = self.inflight.remove(&pkid) else {
            tracing::debug!(module = %self.module, pkid, "PUBACK for no message in flight");
            return;
        };
        self.rt.messages_out.fetch_add(1, Ordering::Relaxed);
        self.remove_from_queue(key);
        self.scan_needed = true;
    }

    /// Deletes a delivered (or expired) entry; until the delete is committed it is never resent.
    ///
    /// A delete the store refuses (a full disk) is tried again, with pauses doubling to 10 s, until
    /// it commits or the hub stops; the entry stays marked as being deleted meanwhile. (It used to be
    /// given back at the first failure, and the module, which had acknowledged it, got it again on
    /// its next connection: the chaos harness counted hundreds of duplicates after a full disk.)
    fn remove_from_queue(&self, key: QueueKey) {
        let seq = key.seq;
        if let Ok(mut s) = self.rt.sent.lock() {
            s.remove(&seq);
        }
        if let Ok(mut d) = self.rt.deleting.lock() {
            d.insert(seq);
        }
        let store = self.inner.store.clone();
        let commit = store.submit(vec![Op::Delete { key: key.clone() }]);
        let rt = self.rt.clone();
        let module = self.module.clone();
        tokio::spawn(async move {
            let mut result = commit.await;
            let mut wait = Duration::from_millis(250);
            let mut logged = false;
            while let Err(e) = &result {
                if store.is_closed() {
                    tracing::warn!(error = %e, module = %module, "the hub stopped before a delivered message could be deleted; the module may get it again after the restart");
                    break;
                }
                if !logged {
                    tracing::error!(error = %e, module = %module, "could not delete a delivered message (is the disk full?); it is not delivered again, and the delete is tried again with pauses of up to 10 s");
                    logged = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
                result = store.write(vec![Op::Delete { key: key.clone() }]).await;
            }
            if logged && result.is_ok() {
                tracing::info!(module = %module, "a delivered message that could not be deleted before is deleted now");
            }
            if let Ok(mut d) = rt.deleting.lock() {
                d.remove(&seq);
            }
        });
    }

    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Sends queued input messages the module has subscribed to, up to the in-flight limit.
    async fn deliver<S>(&mut self, framed: &mut Framed<S, Codec>) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let max = self.inner.config.max_inflight_per_client;
        let mut free = max.saturating_sub(self.inflight.len());
        if free == 0 {
            return Ok(());
        }
        let endpoint = store::module_endpoint(&self.module);
        let in_flight: HashSet<u64> = self.inflight.values().map(|k| k.seq).collect();
        let deleting: HashSet<u64> = self
            .rt
            .deleting
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        // Only entries for inputs the module subscribed to (judged on the topic without its property
        // bag; the exact topic is checked below): others stay queued without blocking these.
        let entries = {
            let (device, module, subs) = (&self.device, &self.module, &self.subscriptions);
            let subscribed_input = |raw: &[u8]| match store::record_input(raw) {
                Some(input) => {
                    let topic = topics::module_input(device, module, input, "");
                    subs.iter().any(|(f, _)| acl::filter_matches(f, &topic))
                }
                // Unreadable: let the decoder report and drop it.
                None => true,
            };
            self.inner
                .store
                .scan(&endpoint, free, |k, raw| {
                    !in_flight.contains(&k.seq)
                        && !deleting.contains(&k.seq)
                        && subscribed_input(raw)
                })
                .map_err(|e| e.to_string())?
        };
        let now = now_ms();
        for (key, rec) in entries {
            if free == 0 {
                // More may be waiting: look again after the next PUBACK.
                break;
            }
            if rec.expiry_ms <= now {
                tracing::warn!(module = %self.module, input = %rec.input, from = %rec.module, seq = key.seq, "dropping a queued input message whose time to live passed");
                self.inner.expired.fetch_add(1, Ordering::Relaxed);
                self.remove_from_queue(key);
                continue;
            }
            let bag = wire::encode_property_bag(&rec.message);
            let topic = topics::module_input(&self.device, &self.module, &rec.input, &bag);
            let Some(qos) = self.subscribed_qos(&topic) else {
                // Not subscribed to this input (yet): it stays queued.
                continue;
            };
            let dup = match self.rt.sent.lock() {
                Ok(mut s) => !s.insert(key.seq),
                Err(_) => false,
            };
            let mut p = Publish::from_bytes(topic, QoS::AtMostOnce, rec.message.body.clone());
            if qos == 0 {
                framed
                    .send(Packet::Publish(p))
                    .await
                    .map_err(|e| e.to_string())?;
                self.rt.messages_out.fetch_add(1, Ordering::Relaxed);
                self.remove_from_queue(key);
            } else {
                let pkid = self.pkid();
                p.qos = QoS::AtLeastOnce;
                p.pkid = pkid;
                p.dup = dup;
                self.inflight.insert(pkid, key);
                framed
                    .send(Packet::Publish(p))
                    .await
                    .map_err(|e| e.to_string())?;
                free -= 1;
            }
        }
        Ok(())
    }

    async fn on_subscribe<S>(&mut self, framed: &mut Framed<S, Codec>, s: Subscribe) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut changed = false;
        for f in s.filters {
            match acl::may_subscribe(&f.path, &self.device, &self.module) {
                Ok(()) => {
                    let granted: u8 = if f.qos == QoS::AtMostOnce { 0 } else { 1 };
                    match self.subscriptions.iter_mut().find(|(p, _)| *p == f.path) {
                        Some(e) => e.1 = granted,
                        None => self.subscriptions.push((f.path.clone(), granted)),
                    }
                    changed = true;
                    codes.push(SubscribeReasonCode::Success(if granted == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    }));
                }
                Err(reason) => {
                    tracing::warn!(module = %self.module, "refused a subscription: {reason}");
                    codes.push(SubscribeReasonCode::Failure);
                }
            }
        }
        if changed {
            self.save_subscriptions().await;
            self.scan_needed = true;
        }
        match framed
            .send(Packet::SubAck(SubAck::new(s.pkid, codes)))
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn on_unsubscribe<S>(&mut self, framed: &mut Framed<S, Codec>, u: Unsubscribe) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|(f, _)| !u.topics.contains(f));
        if self.subscriptions.len() != before {
            self.save_subscriptions().await;
        }
        match framed.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// Updates the shared session and, for a persistent one, the store (before the SUBACK).
    async fn save_subscriptions(&mut self) {
        let persistent = {
            let mut sessions = match self.inner.sessions.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            match sessions.get_mut(&self.client_id) {
                Some(s) if s.conn.as_ref().map(|c| c.id) == Some(self.id) => {
                    s.subscriptions = self.subscriptions.clone();
                    s.persistent
                }
                _ => false,
            }
        };
        if persistent {
            let op = store::put_session(&self.client_id, &self.subscriptions);
            if let Err(e) = self.inner.store.write(vec![op]).await {
                tracing::error!(module = %self.module, error = %e, "could not store the session's subscriptions; after a restart the module may need to subscribe again");
            }
        }
    }
}

/// Submits `ops` and, once committed, counts the new queue entries and wakes their readers. The
/// bookkeeping runs in its own task, so it happens even if the connection that submitted the ops
/// closes before it could acknowledge them.
pub(super) fn commit_and_announce(
    inner: &Arc<Inner>,
    ops: Vec<Op>,
    endpoints: Vec<String>,
) -> tokio::sync::oneshot::Receiver<Result<(), store::StoreError>> {
    let commit = inner.store.submit(ops);
    let inner = inner.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = commit.await;
        if result.is_ok() {
            for ep in &endpoints {
                if ep == UPSTREAM {
                    inner.upstream_notify.notify_waiters();
                } else if let Some(m) = ep.strip_prefix("module/") {
                    if let Some(rt) = inner.modules.get(m) {
                        rt.notify.notify_one();
                    }
                }
            }
        }
        let _ = done_tx.send(result);
    });
    done_rx
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
