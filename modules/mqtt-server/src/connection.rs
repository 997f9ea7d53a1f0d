//! One client connection: CONNECT, then a single `select!` over the socket, the pending
//! edgeHub acknowledgements, deliveries for this client's subscriptions, keep-alive, takeover
//! and shutdown.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};

use crate::acl::{self, ClientAcl, Denied, Kind};
use crate::broker::Attached;
use crate::codec::{
    CodecError, ConnectInfo, DisconnectReason, Inbound, Outbound, Pub, PubRefusal, Refusal,
    ServerCodec, ServerLimits, SubFilter, SubRefusal, Version,
};
use crate::forward::Pipeline;
use crate::limits::{self, Exceeded};
use crate::message::to_edge_message;
use crate::Shared;

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (no will, unless MQTT 5 asked for it).
    Clean { with_will: bool },
    /// Anything else: the will is published.
    Abnormal,
    /// The server is shutting down.
    Shutdown,
}

type AckFuture = futures_util::future::BoxFuture<'static, Option<Outbound>>;

struct Conn<W> {
    writer: W,
    enc: ServerCodec,
    buf: BytesMut,
    write_timeout: Duration,
    client: String,
    peer: SocketAddr,
}

impl<W: AsyncWrite + Unpin> Conn<W> {
    /// Answers a CONNECT with a refusing CONNACK (the connection then closes).
    async fn refuse_connect(&mut self, refusal: Refusal) {
        let _ = self
            .send(Outbound::ConnAck {
                session_present: false,
                refusal: Some(refusal),
                props: None,
            })
            .await;
    }

    async fn send(&mut self, pkt: Outbound) -> Result<(), ()> {
        match self.try_send(pkt).await {
            Ok(()) => Ok(()),
            Err(Some(e)) => {
                tracing::warn!(client = %self.client, peer = %self.peer, error = %e, "cannot encode a packet for this client; closing");
                Err(())
            }
            Err(None) => Err(()),
        }
    }

    /// Like `send`, but an encoding failure (e.g. larger than the MQTT 5 client's maximum packet
    /// size) is returned as `Err(Some(..))` and leaves the connection usable.
    async fn try_send(&mut self, pkt: Outbound) -> Result<(), Option<CodecError>> {
        self.buf.clear();
        if let Err(e) = self.enc.encode(pkt, &mut self.buf) {
            return Err(Some(e));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.write_timeout, self.writer.write_all(&self.buf)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(client = %self.client, error = %e, "write failed");
                Err(None)
            }
            Err(_) => {
                tracing::warn!(client = %self.client, peer = %self.peer, timeout = ?self.write_timeout,
                    "disconnecting client: it does not read (write blocked past write_timeout)");
                Err(None)
            }
        }
    }
}

fn refuse_label(e: &CodecError) -> DisconnectReason {
    match e {
        CodecError::TooLarge { .. } => DisconnectReason::PacketTooLarge,
        CodecError::NotUtf8 => DisconnectReason::TopicNameInvalid,
        _ => DisconnectReason::MalformedPacket,
    }
}

/// Serves one accepted socket until it closes, the client is kicked or `shutdown` flips.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    pipeline: Pipeline,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let max_incoming = shared.settings.max_payload + 65_536 + 1024;
    let mut frames = FramedRead::new(reader, ServerCodec::new(max_incoming));
    let mut conn = Conn {
        writer,
        enc: ServerCodec::new(max_incoming),
        buf: BytesMut::with_capacity(1024),
        write_timeout: Duration::from_secs(shared.settings.write_timeout_secs.max(1)),
        client: String::from("?"),
        peer,
    };

    // 1. CONNECT within connect_timeout
    let first = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(shared.settings.connect_timeout_secs.max(1)), frames.next()) => r,
        _ = shutdown.changed() => return,
    };
    let info = match first {
        Err(_) => {
            tracing::warn!(%peer, "refusing connection: no CONNECT within connect_timeout");
            shared.metrics.refused("connect_timeout");
            return;
        }
        Ok(None) => return,
        Ok(Some(Err(e))) => {
            tracing::warn!(%peer, reason = %e, "refusing connection: bad first packet");
            shared.metrics.refused(e.label());
            return;
        }
        Ok(Some(Ok(Inbound::UnsupportedProtocol(level)))) => {
            tracing::warn!(%peer, level, "refusing connection: unsupported MQTT protocol level (3.1.1 and 5 are spoken)");
            shared.metrics.refused("protocol_version");
            conn.enc = ServerCodec::for_version(Version::V311);
            conn.refuse_connect(Refusal::UnsupportedProtocol).await;
            return;
        }
        Ok(Some(Ok(Inbound::Connect(info)))) => info,
        Ok(Some(Ok(other))) => {
            tracing::warn!(%peer, packet = ?other, "refusing connection: first packet is not CONNECT");
            shared.metrics.refused("not_connect");
            return;
        }
    };
    let mut info: ConnectInfo = *info;
    conn.enc = ServerCodec::for_version(info.version);
    conn.enc.max_outgoing = info.max_packet_size;

    // 2. validate client id, credentials, will
    let mut assigned = None;
    if info.client_id.chars().any(char::is_control) {
        tracing::warn!(%peer, client = ?info.client_id, "refusing connection: control characters in the client id");
        shared.metrics.refused("bad_client_id");
        conn.refuse_connect(Refusal::BadClientId).await;
        return;
    }
    if info.client_id.is_empty() {
        if info.version == Version::V311 && !info.clean {
            tracing::warn!(%peer, "refusing connection: empty client id with clean session 0");
            shared.metrics.refused("bad_client_id");
            conn.refuse_connect(Refusal::BadClientId).await;
            return;
        }
        info.client_id = format!("auto-{}", uuid::Uuid::new_v4());
        assigned = Some(info.client_id.clone());
    }
    // bounded so that every message this client sends (and its will) fits edgeHub
    if let Err(r) = limits::check_connect(&info) {
        tracing::warn!(%peer, client = %truncated(&info.client_id), reason = %r, "refusing connection: over a limit");
        shared.metrics.refused(r.exceeded.label());
        conn.refuse_connect(match r.exceeded {
            Exceeded::ClientId => Refusal::BadClientId,
            Exceeded::Username => Refusal::BadUserNamePassword,
            Exceeded::Topic => Refusal::TopicNameInvalid,
            Exceeded::Properties | Exceeded::MessageSize => Refusal::QuotaExceeded,
        })
        .await;
        return;
    }
    conn.client = info.client_id.clone();
    let client = info.client_id.clone();
    if let Some(auth) = &shared.auth {
        if !auth.check(info.username.as_deref(), info.password.as_deref()) {
            tracing::warn!(client = %client, %peer, user = ?info.username, "refusing connection: bad username or password");
            shared.metrics.refused("bad_credentials");
            conn.refuse_connect(Refusal::BadUserNamePassword).await;
            return;
        }
    }
    if let Some(method) = &info.auth_method {
        tracing::warn!(client = %client, %peer, method = %method, "refusing connection: MQTT 5 enhanced authentication is not supported");
        shared.metrics.refused("bad_auth_method");
        conn.refuse_connect(Refusal::BadAuthenticationMethod).await;
        return;
    }
    if let Some(w) = &info.will {
        if w.topic.is_empty()
            || !rumqttc::mqttbytes::valid_topic(&w.topic)
            || w.topic.chars().any(char::is_control)
        {
            tracing::warn!(client = %client, %peer, topic = ?w.topic, "refusing connection: invalid will topic");
            shared.metrics.refused("invalid_topic");
            conn.refuse_connect(Refusal::NotAuthorized).await;
            return;
        }
    }
    // the lines of the ACL file that apply to this connection
    let client_acl: Option<ClientAcl> = shared
        .acl
        .as_ref()
        .map(|a| a.for_client(&client, info.username.as_deref()));
    // A will the client may not write is dropped and the connection accepted, as Mosquitto does (it
    // checks the will when it would publish it, and drops it then). The file does not change while
    // the server runs, so deciding now gives the same outcome, with the warning while the client
    // is there to see it.
    let will_denied = match (&client_acl, &info.will) {
        (Some(a), Some(w)) => a
            .check_write(&w.topic)
            .err()
            .map(|why| (why, w.topic.clone())),
        _ => None,
    };
    if let Some((why, topic)) = will_denied {
        shared.metrics.refused("not_authorized_will");
        log_acl_refusal(&shared, &client, peer, Kind::Will, &topic, why);
        info.will = None;
    }
    if let Some(w) = &info.will {
        // the will is forwarded like any publish: it must fit edgeHub too
        let will = Pub {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            dup: false,
            pkid: 0,
            props: w.props.clone(),
        };
        let routing = shared.routing();
        let msg = to_edge_message(&will, &client, routing.enrich_device_id, chrono::Utc::now());
        let fits = if w.payload.len() > routing.max_payload {
            Err(limits::message_too_large(
                w.payload.len(),
                routing.max_payload,
            ))
        } else {
            pipeline.check(routing.output_for(&w.topic), &msg)
        };
        if let Err(r) = fits {
            tracing::warn!(client = %client, %peer, reason = %r, "refusing connection: the will message cannot be forwarded");
            shared.metrics.refused(r.exceeded.label());
            conn.refuse_connect(Refusal::QuotaExceeded).await;
            return;
        }
    }

    // 3. attach the session
    let max_expiry = shared.settings.session_expiry_secs;
    let persist_for = match info.session_expiry {
        Some(secs) => Duration::from_secs(u64::from(secs).min(max_expiry)),
        None if info.clean => Duration::ZERO,
        None => Duration::from_secs(max_expiry),
    };
    let Attached {
        conn_id,
        session_present,
        mut rx,
        kick,
        replay,
        incoming_qos2,
        alive,
    } = shared
        .broker
        .connect(&client, info.clean, persist_for)
        .await;
    let props = (info.version == Version::V5).then(|| ServerLimits {
        receive_max: shared.settings.max_inflight,
        max_packet_size: u32::try_from(max_incoming).unwrap_or(u32::MAX),
        assigned_client_id: assigned,
        session_expiry: info
            .session_expiry
            .map(|s| u32::try_from(u64::from(s).min(max_expiry)).unwrap_or(u32::MAX))
            .filter(|s| Some(*s) != info.session_expiry),
    });
    if conn
        .send(Outbound::ConnAck {
            session_present,
            refusal: None,
            props,
        })
        .await
        .is_err()
    {
        shared
            .broker
            .disconnect(&client, conn_id, replay, incoming_qos2, None);
        return;
    }
    shared.metrics.connected_clients.inc();
    shared.metrics.connections_total.inc();
    tracing::info!(client = %client, %peer, version = info.version.label(), clean = info.clean,
        keep_alive = info.keep_alive, session_present, "client connected");

    let mut state = Session {
        acl: client_acl,
        qos2: incoming_qos2,
        outgoing: BTreeMap::new(),
        next_pkid: 1,
        session_expiry_update: None,
        inflight_in: HashSet::new(),
        backlog: std::collections::VecDeque::new(),
    };
    let end = run_loop(
        &mut conn,
        &mut frames,
        &mut state,
        &info,
        &shared,
        &pipeline,
        &mut shutdown,
        &mut rx,
        &kick,
        replay,
    )
    .await;
    shared.metrics.connected_clients.dec();

    // 4. will, session hand-back
    let publish_will = matches!(end, End::Abnormal | End::Clean { with_will: true });
    let expiry = state
        .session_expiry_update
        .map(|s| Duration::from_secs(u64::from(s).min(max_expiry)));
    // MQTT 5: the will goes when its delay passes or when the session ends, whichever is first
    let session_lasts = expiry.unwrap_or(persist_for);
    tracing::info!(client = %client, %peer, reason = ?end, "client disconnected");
    if publish_will {
        if let Some(w) = info.will.take() {
            let p = Pub {
                topic: w.topic,
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
                dup: false,
                pkid: 0,
                props: w.props,
            };
            let delay = u64::from(w.delay_secs).min(session_lasts.as_secs());
            publish_will_message(p, client.clone(), shared.clone(), pipeline.clone(), delay);
        }
    }
    let mut unacked: Vec<Pub> = state
        .outgoing
        .into_values()
        .map(|(mut p, _)| {
            p.dup = true;
            p
        })
        .collect();
    // what the session still owed and never sent (the replay, cut short)
    unacked.extend(state.backlog.drain(..));
    // closed first: a publish racing this drain then finds the link closed and queues the message in
    // the session (or hands it to another shared-group member) instead of it being dropped with `rx`
    rx.close();
    while let Ok(p) = rx.try_recv() {
        if p.qos != QoS::AtMostOnce {
            unacked.push(p);
        }
    }
    shared
        .broker
        .disconnect(&client, conn_id, unacked, state.qos2, expiry);
    // a connection taking over this client id waits for this
    drop(alive);
}

fn publish_will_message(
    p: Pub,
    client: String,
    shared: Arc<Shared>,
    pipeline: Pipeline,
    delay_secs: u64,
) {
    tokio::spawn(async move {
        if delay_secs > 0 {
            tokio::time::sleep(Duration::from_secs(delay_secs.min(3600))).await;
            // MQTT 5: a client back within the will delay cancels its will
            if shared.broker.is_connected(&client) {
                tracing::info!(client = %client, "client reconnected within its will delay; will not published");
                return;
            }
        }
        tracing::info!(client = %client, topic = %p.topic, "publishing the client's will message");
        shared.broker.publish(&client, &p);
        let routing = shared.routing();
        let msg = to_edge_message(&p, &client, routing.enrich_device_id, chrono::Utc::now());
        let _ = pipeline
            .submit(routing.output_for(&p.topic).to_string(), msg, &client)
            .await;
    });
}

struct Session {
    /// The ACL file's lines for this connection; `None` without an ACL file (everything allowed).
    acl: Option<ClientAcl>,
    /// QoS 2 packet ids received (PUBREC sent or pending) and not yet released.
    qos2: HashSet<u16>,
    /// Outgoing QoS 1/2 deliveries awaiting PUBACK / PUBREC+PUBCOMP: pkid -> (message, released).
    outgoing: BTreeMap<u16, (Pub, bool)>,
    next_pkid: u16,
    session_expiry_update: Option<u32>,
    /// MQTT 5 flow control: packet ids of the client's QoS 1/2 publishes on this connection that
    /// are not finished yet (PUBACK, or PUBCOMP for QoS 2, not sent); at most the Receive Maximum
    /// announced in CONNACK.
    inflight_in: HashSet<u16>,
    /// Messages queued while the client was away, sent as the client's receive maximum allows.
    backlog: std::collections::VecDeque<Pub>,
}

impl Session {
    /// Notes that `pkt`, about to be sent, finishes one of the client's publishes.
    fn finished(&mut self, pkt: &Outbound) {
        match pkt {
            Outbound::PubAck(id)
            | Outbound::PubComp(id)
            | Outbound::PubAckRefused(id, _)
            | Outbound::PubRecRefused(id, _) => {
                self.inflight_in.remove(id);
            }
            _ => {}
        }
    }

    fn alloc_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_pkid;
            self.next_pkid = if self.next_pkid == u16::MAX {
                1
            } else {
                self.next_pkid + 1
            };
            if !self.outgoing.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }
}

async fn deliver<W: AsyncWrite + Unpin>(
    conn: &mut Conn<W>,
    state: &mut Session,
    shared: &Shared,
    mut p: Pub,
) -> Result<(), ()> {
    // the ACL file: a subscription it covers may still match topics a deny line takes away, and a
    // session may hold subscriptions or messages from before the file changed
    if let Some(acl) = &state.acl {
        if acl.check_read(&p.topic).is_err() {
            shared.metrics.dropped("not_authorized");
            tracing::debug!(client = %conn.client, topic = %truncated(&p.topic),
                "not delivered: the ACL file gives this client no read access to the topic");
            return Ok(());
        }
    }
    // MQTT 5 message expiry: drop what expired while queued, send the remaining lifetime
    if let Some(at) = p.props.expires_at {
        let now = std::time::Instant::now();
        if at <= now {
            shared.metrics.dropped("expired");
            return Ok(());
        }
        let left = at.duration_since(now).as_secs_f64().ceil();
        p.props.message_expiry_secs = Some(left.clamp(1.0, f64::from(u32::MAX)) as u32);
    }
    if p.qos != QoS::AtMostOnce {
        let Some(id) = state.alloc_pkid() else {
            shared.metrics.dropped("no_packet_id");
            return Ok(());
        };
        p.pkid = id;
        state.outgoing.insert(id, (p.clone(), false));
    } else {
        p.pkid = 0;
    }
    let pkid = p.pkid;
    match conn.try_send(Outbound::Publish(p)).await {
        Ok(()) => {
            shared.metrics.messages_out.inc();
            Ok(())
        }
        Err(Some(e)) => {
            // MQTT 5: a message larger than the client's maximum packet size is discarded
            tracing::debug!(client = %conn.client, error = %e, "message not delivered to this subscriber");
            shared.metrics.dropped("too_large_for_client");
            state.outgoing.remove(&pkid);
            Ok(())
        }
        Err(None) => Err(()),
    }
}

/// On shutdown: sends the acknowledgements whose messages reach edgeHub within the grace period,
/// so devices need not resend them (which would duplicate them upstream).
async fn drain_acks<W: AsyncWrite + Unpin>(
    conn: &mut Conn<W>,
    acks: &mut FuturesOrdered<AckFuture>,
    grace_secs: u64,
) {
    if acks.is_empty() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(grace_secs), async {
        while let Some(Some(pkt)) = acks.next().await {
            if conn.send(pkt).await.is_err() {
                return;
            }
        }
    })
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn run_loop<R, W>(
    conn: &mut Conn<W>,
    frames: &mut FramedRead<R, ServerCodec>,
    state: &mut Session,
    info: &ConnectInfo,
    shared: &Arc<Shared>,
    pipeline: &Pipeline,
    shutdown: &mut watch::Receiver<bool>,
    rx: &mut tokio::sync::mpsc::Receiver<Pub>,
    kick: &crate::broker::Kick,
    replay: Vec<Pub>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client = info.client_id.clone();
    let v5 = info.version == Version::V5;
    let max_inflight = usize::from(shared.settings.max_inflight);
    // QoS 1/2 deliveries awaiting the client's acknowledgement (MQTT 5 receive maximum)
    let max_outgoing = usize::from(info.receive_max.unwrap_or(1024).clamp(1, 1024));
    // resend what the session still owes the client (unacknowledged ones carry DUP)
    // resent as the client's receive maximum allows; what is not sent goes back to the session
    state.backlog.extend(replay);
    let keep_alive =
        (info.keep_alive > 0).then(|| Duration::from_millis(u64::from(info.keep_alive) * 1500));
    let mut deadline = Instant::now() + keep_alive.unwrap_or(Duration::from_secs(3600));
    let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                drain_acks(conn, &mut acks, shared.settings.shutdown_grace_secs).await;
                if v5 { let _ = conn.send(Outbound::Disconnect(DisconnectReason::ServerShuttingDown)).await; }
                return End::Shutdown;
            }
            (reason, why) = kick.kicked() => {
                tracing::info!(client = %client, why, "closing connection");
                if reason == DisconnectReason::ServerShuttingDown {
                    drain_acks(conn, &mut acks, shared.settings.shutdown_grace_secs).await;
                }
                if v5 { let _ = conn.send(Outbound::Disconnect(reason)).await; }
                return if reason == DisconnectReason::ServerShuttingDown { End::Shutdown } else { End::Abnormal };
            }
            Some(ack) = acks.next(), if !acks.is_empty() => {
                match ack {
                    Some(pkt) => {
                        state.finished(&pkt);
                        if conn.send(pkt).await.is_err() { return End::Abnormal; }
                    }
                    None if *shutdown.borrow() => return End::Shutdown,
                    None => {
                        // edgeHub refused a message for good (logged where it happened): no
                        // acknowledgement; closing lets the device decide whether to send it again
                        tracing::warn!(client = %client, peer = %conn.peer, "disconnecting client: a message of its was not taken by edgeHub and is not acknowledged");
                        return End::Abnormal;
                    }
                }
            }
            _ = std::future::ready(()), if !state.backlog.is_empty() && state.outgoing.len() < max_outgoing => {
                if let Some(p) = state.backlog.pop_front() {
                    if deliver(conn, state, shared, p).await.is_err() { return End::Abnormal; }
                }
            }
            Some(p) = rx.recv(), if state.backlog.is_empty() && state.outgoing.len() < max_outgoing => {
                if deliver(conn, state, shared, p).await.is_err() { return End::Abnormal; }
            }
            _ = tokio::time::sleep_until(deadline), if keep_alive.is_some() => {
                tracing::warn!(client = %client, peer = %conn.peer, keep_alive = info.keep_alive,
                    "disconnecting client: nothing received within 1.5 x keep-alive");
                shared.metrics.refused("keep_alive_timeout");
                if v5 { let _ = conn.send(Outbound::Disconnect(DisconnectReason::KeepAliveTimeout)).await; }
                return End::Abnormal;
            }
            // MQTT 5 clients are read on: the Receive Maximum they were given is enforced below
            frame = frames.next(), if v5 || acks.len() < max_inflight => {
                if let Some(k) = keep_alive { deadline = Instant::now() + k; }
                let pkt = match frame {
                    None => return End::Abnormal,
                    Some(Err(CodecError::Io(e))) => {
                        tracing::debug!(client = %client, error = %e, "socket closed");
                        return End::Abnormal;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(client = %client, peer = %conn.peer, reason = %e, "disconnecting client: bad packet");
                        shared.metrics.refused(e.label());
                        if v5 { let _ = conn.send(Outbound::Disconnect(refuse_label(&e))).await; }
                        return End::Abnormal;
                    }
                    Some(Ok(p)) => p,
                };
                match pkt {
                    Inbound::Publish(p) => {
                        match on_publish(conn, state, info, shared, pipeline, shutdown, kick, p).await {
                            Ok(Some(ack)) => acks.push_back(ack),
                            Ok(None) => {}
                            Err(end) => return end,
                        }
                    }
                    Inbound::PubRel(pkid) => {
                        state.qos2.remove(&pkid);
                        state.inflight_in.remove(&pkid);
                        if conn.send(Outbound::PubComp(pkid)).await.is_err() { return End::Abnormal; }
                    }
                    Inbound::PubAck(pkid) | Inbound::PubComp(pkid) => {
                        state.outgoing.remove(&pkid);
                    }
                    Inbound::PubRec(pkid) => {
                        if let Some(e) = state.outgoing.get_mut(&pkid) { e.1 = true; }
                        if conn.send(Outbound::PubRel(pkid)).await.is_err() { return End::Abnormal; }
                    }
                    Inbound::Subscribe { pkid, filters } => {
                        let (granted, retained) = subscribe(state, shared, &client, conn.peer, &filters);
                        if conn.send(Outbound::SubAck { pkid, granted }).await.is_err() { return End::Abnormal; }
                        for p in retained {
                            if deliver(conn, state, shared, p).await.is_err() { return End::Abnormal; }
                        }
                    }
                    Inbound::Unsubscribe { pkid, filters } => {
                        shared.broker.unsubscribe(&client, &filters);
                        if conn.send(Outbound::UnsubAck { pkid, count: filters.len() }).await.is_err() { return End::Abnormal; }
                    }
                    Inbound::PingReq => {
                        if conn.send(Outbound::PingResp).await.is_err() { return End::Abnormal; }
                    }
                    Inbound::Disconnect { with_will, session_expiry } => {
                        state.session_expiry_update = session_expiry;
                        return End::Clean { with_will };
                    }
                    Inbound::Connect(_) | Inbound::UnsupportedProtocol(_) => {
                        tracing::warn!(client = %client, peer = %conn.peer, "disconnecting client: second CONNECT on one connection");
                        shared.metrics.refused("protocol_error");
                        if v5 { let _ = conn.send(Outbound::Disconnect(DisconnectReason::ProtocolError)).await; }
                        return End::Abnormal;
                    }
                    Inbound::Unexpected(name) => {
                        tracing::warn!(client = %client, peer = %conn.peer, packet = name, "disconnecting client: packet a client must not send");
                        shared.metrics.refused("protocol_error");
                        if v5 { let _ = conn.send(Outbound::Disconnect(DisconnectReason::ProtocolError)).await; }
                        return End::Abnormal;
                    }
                }
            }
        }
    }
}

/// Adds the subscriptions the ACL file allows (all of them without one) to the session; returns
/// the SUBACK entries and the retained messages to send.
fn subscribe(
    state: &Session,
    shared: &Shared,
    client: &str,
    peer: SocketAddr,
    filters: &[SubFilter],
) -> (Vec<Result<QoS, SubRefusal>>, Vec<Pub>) {
    // an invalid filter is reported as invalid, whatever the ACL says
    let verdicts: Vec<Result<(), Denied>> = filters
        .iter()
        .map(|f| match &state.acl {
            Some(a) if crate::broker::valid_subscription(&f.filter) => a.check_subscribe(&f.filter),
            _ => Ok(()),
        })
        .collect();
    let (from_broker, retained) = if verdicts.iter().all(Result::is_ok) {
        shared.broker.subscribe(client, filters)
    } else {
        let permitted: Vec<SubFilter> = filters
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.is_ok())
            .map(|(f, _)| f.clone())
            .collect();
        if permitted.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            shared.broker.subscribe(client, &permitted)
        }
    };
    let mut from_broker = from_broker.into_iter();
    let mut granted = Vec::with_capacity(filters.len());
    for (f, v) in filters.iter().zip(verdicts) {
        match v {
            Err(why) => {
                shared.metrics.refused("not_authorized_subscribe");
                log_acl_refusal(shared, client, peer, Kind::Subscribe, &f.filter, why);
                granted.push(Err(SubRefusal::NotAuthorized));
            }
            Ok(()) => match from_broker.next().flatten() {
                Some(q) => granted.push(Ok(q)),
                None => {
                    tracing::warn!(client = %client, filter = ?f.filter, "refusing subscription: invalid or unsupported topic filter");
                    granted.push(Err(SubRefusal::TopicFilterInvalid));
                }
            },
        }
    }
    (granted, retained)
}

/// One warning for a refusal by the ACL file, unless this client (or all clients together) had
/// one too recently ([`acl::RefusalLog`]); every refusal is counted in the metrics by the caller.
fn log_acl_refusal(
    shared: &Shared,
    client: &str,
    peer: SocketAddr,
    kind: Kind,
    topic: &str,
    why: Denied,
) {
    let Some(not_logged) = shared.acl_log.admit(client, std::time::Instant::now()) else {
        return;
    };
    let what = match kind {
        Kind::Publish => "refusing a publish (not forwarded to edgeHub, not delivered)",
        Kind::Subscribe => "refusing a subscription",
        Kind::Will => "dropping the client's will message (it will not be published)",
    };
    let topic = truncated(topic);
    let fix = acl::advice(kind, &topic, why);
    tracing::warn!(client = %truncated(client), %peer, topic = %topic, not_logged_since_last_warning = not_logged,
        "{what}: not authorized, {why}; {fix}. (This client's next ACL refusals are logged at most every {} minutes; all are counted in mqtt_refused_total.)",
        acl::RefusalLog::PER_CLIENT.as_secs() / 60);
}

/// A publish the ACL file does not allow: neither forwarded nor delivered. As Mosquitto does: MQTT
/// 5 QoS 1/2 get PUBACK/PUBREC 0x87 Not authorized; MQTT 3.1.1 QoS 1/2 get a plain PUBACK/PUBREC
/// (3.1.1 has no way to say no, and a client that got no acknowledgement would resend for ever);
/// QoS 0 is dropped.
fn refuse_unauthorized_publish(
    peer: SocketAddr,
    v5: bool,
    shared: &Shared,
    client: &str,
    p: &Pub,
    why: Denied,
) -> Option<AckFuture> {
    shared.metrics.refused("not_authorized_publish");
    log_acl_refusal(shared, client, peer, Kind::Publish, &p.topic, why);
    let pkid = p.pkid;
    let pkt = match (p.qos, v5) {
        (QoS::AtMostOnce, _) => return None,
        (QoS::AtLeastOnce, true) => Outbound::PubAckRefused(pkid, PubRefusal::NotAuthorized),
        (QoS::ExactlyOnce, true) => Outbound::PubRecRefused(pkid, PubRefusal::NotAuthorized),
        (QoS::AtLeastOnce, false) => Outbound::PubAck(pkid),
        (QoS::ExactlyOnce, false) => Outbound::PubRec(pkid),
    };
    Some(Box::pin(async move { Some(pkt) }))
}

async fn refuse<W: AsyncWrite + Unpin>(
    conn: &mut Conn<W>,
    v5: bool,
    reason: DisconnectReason,
) -> End {
    if v5 {
        let _ = conn.send(Outbound::Disconnect(reason)).await;
    }
    End::Abnormal
}

/// Refuses a publish that is over a limit, before anything acknowledged or delivered it. MQTT 5
/// QoS 1/2: a PUBACK/PUBREC with the reason code (queued behind the acknowledgements already
/// pending, so they stay in order) and the connection goes on. MQTT 5 QoS 0: DISCONNECT with the
/// reason. MQTT 3.1.1 has no way to refuse a publish but to close the connection.
async fn refuse_publish<W: AsyncWrite + Unpin>(
    conn: &mut Conn<W>,
    state: &mut Session,
    v5: bool,
    shared: &Shared,
    client: &str,
    p: &Pub,
    r: limits::Refused,
) -> Result<Option<AckFuture>, End> {
    shared.metrics.refused(r.exceeded.label());
    let why = match r.exceeded {
        Exceeded::Topic => PubRefusal::TopicNameInvalid,
        _ => PubRefusal::QuotaExceeded,
    };
    let pkid = p.pkid;
    if v5 && p.qos != QoS::AtMostOnce {
        tracing::warn!(client = %client, peer = %conn.peer, topic = %truncated(&p.topic), reason = %r,
            "refusing a publish (MQTT 5 reason code {:#04x}); it is not forwarded", pub_refusal_code(why));
        state.qos2.remove(&pkid);
        let pkt = if p.qos == QoS::ExactlyOnce {
            Outbound::PubRecRefused(pkid, why)
        } else {
            Outbound::PubAckRefused(pkid, why)
        };
        return Ok(Some(Box::pin(async move { Some(pkt) })));
    }
    tracing::warn!(client = %client, peer = %conn.peer, topic = %truncated(&p.topic), reason = %r,
        "disconnecting client: a publish over a limit (not forwarded, not acknowledged)");
    Err(refuse(
        conn,
        v5,
        match r.exceeded {
            Exceeded::Topic => DisconnectReason::TopicNameInvalid,
            _ => DisconnectReason::QuotaExceeded,
        },
    )
    .await)
}

fn pub_refusal_code(why: PubRefusal) -> u8 {
    match why {
        PubRefusal::TopicNameInvalid => 0x90,
        PubRefusal::QuotaExceeded => 0x97,
        PubRefusal::NotAuthorized => 0x87,
    }
}

/// The first 64 characters of a (possibly huge) topic or client id, for a log line.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// Handles one device publish: checks, local delivery, then the edgeHub buffer. Returns the
/// acknowledgement to send once edgeHub has the message (QoS 1/2).
#[allow(clippy::too_many_arguments)]
async fn on_publish<W: AsyncWrite + Unpin>(
    conn: &mut Conn<W>,
    state: &mut Session,
    info: &ConnectInfo,
    shared: &Arc<Shared>,
    pipeline: &Pipeline,
    shutdown: &mut watch::Receiver<bool>,
    kick: &crate::broker::Kick,
    p: Pub,
) -> Result<Option<AckFuture>, End> {
    let client = &info.client_id;
    let v5 = info.version == Version::V5;
    if p.props.topic_alias.is_some() {
        tracing::warn!(client = %client, peer = %conn.peer, "disconnecting client: topic alias used but the server allows none");
        shared.metrics.refused("topic_alias");
        return Err(refuse(conn, v5, DisconnectReason::TopicAliasInvalid).await);
    }
    // control characters are legal UTF-8 but MQTT says SHOULD NOT; refusing them keeps them out
    // of logs and edgeHub properties
    if p.topic.is_empty()
        || !rumqttc::mqttbytes::valid_topic(&p.topic)
        || p.topic.chars().any(char::is_control)
    {
        tracing::warn!(client = %client, peer = %conn.peer, topic = ?p.topic, "disconnecting client: invalid topic name");
        shared.metrics.refused("invalid_topic");
        return Err(refuse(conn, v5, DisconnectReason::TopicNameInvalid).await);
    }
    let routing = shared.routing();
    if p.payload.len() > routing.max_payload {
        tracing::warn!(client = %client, peer = %conn.peer, size = p.payload.len(), max = routing.max_payload,
            "disconnecting client: payload larger than max_payload");
        shared.metrics.refused("oversize");
        return Err(refuse(conn, v5, DisconnectReason::PacketTooLarge).await);
    }
    if let Err(r) = limits::check_message(&p.topic, &p.props) {
        return refuse_publish(conn, state, v5, shared, client, &p, r).await;
    }
    if p.qos == QoS::ExactlyOnce && state.qos2.contains(&p.pkid) {
        // a resend of a QoS 2 message we already have: acknowledge again, do not forward twice
        let pkid = p.pkid;
        return Ok(Some(Box::pin(async move { Some(Outbound::PubRec(pkid)) })));
    }
    if v5 && p.qos != QoS::AtMostOnce && state.inflight_in.insert(p.pkid) {
        // MQTT 5 4.9: more unfinished QoS 1/2 publishes than the Receive Maximum is an error
        let receive_max = usize::from(shared.settings.max_inflight);
        if state.inflight_in.len() > receive_max {
            tracing::warn!(client = %client, peer = %conn.peer, receive_max,
                "disconnecting client: more unacknowledged QoS 1/2 publishes than the Receive Maximum it was given");
            shared.metrics.refused("receive_maximum_exceeded");
            return Err(refuse(conn, v5, DisconnectReason::ReceiveMaximumExceeded).await);
        }
    }
    // the ACL file, before anyone (subscribers, edgeHub, the spool) has seen the message
    if let Some(why) = state
        .acl
        .as_ref()
        .and_then(|a| a.check_write(&p.topic).err())
    {
        return Ok(refuse_unauthorized_publish(
            conn.peer, v5, shared, client, &p, why,
        ));
    }
    // what can never reach edgeHub is refused now, before anyone (subscribers, the spool, the device's
    // acknowledgement) has seen it
    let msg = to_edge_message(&p, client, routing.enrich_device_id, chrono::Utc::now());
    let output = routing.output_for(&p.topic).to_string();
    if let Err(r) = pipeline.check(&output, &msg) {
        return refuse_publish(conn, state, v5, shared, client, &p, r).await;
    }
    let mut p = p;
    p.props.expires_at = p
        .props
        .message_expiry_secs
        .map(|s| std::time::Instant::now() + Duration::from_secs(u64::from(s)));
    shared.metrics.messages_in[p.qos as usize].inc();
    shared.metrics.bytes_in.inc_by(p.payload.len() as u64);
    shared.broker.publish(client, &p);
    tracing::debug!(client = %client, topic = %p.topic, qos = p.qos as u8, output = %output, message_id = msg.message_id.as_deref().unwrap_or_default(), "forwarding");
    let done = tokio::select! {
        r = pipeline.submit(output, msg, client) => match r {
            Ok(rx) => rx,
            Err(_) => return Err(End::Shutdown),
        },
        _ = shutdown.changed() => return Err(End::Shutdown),
        // taken over while waiting for room: the new connection must not wait for the buffer
        (reason, why) = kick.kicked() => {
            tracing::info!(client = %client, why, "closing connection");
            if v5 { let _ = conn.send(Outbound::Disconnect(reason)).await; }
            return Err(End::Abnormal);
        }
    };
    let pkid = p.pkid;
    Ok(match p.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Box::pin(async move {
            done.await.ok().map(|()| Outbound::PubAck(pkid))
        })),
        QoS::ExactlyOnce => {
            state.qos2.insert(pkid);
            Some(Box::pin(async move {
                done.await.ok().map(|()| Outbound::PubRec(pkid))
            }))
        }
    })
}
