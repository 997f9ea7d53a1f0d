//! One simulated device: its own rumqttc client and event loop, a schedule, one message in flight
//! at a time (like the seed's `await PublishAsync` and an ESP8266's PubSubClient), reconnects with
//! backoff, and republishing of the unacknowledged message after a reconnect.
//!
//! Sessions are clean: after a reconnect the server has no session, rumqttc drops its pending
//! list, and this task publishes the outstanding message again (counted in `resent`). Across a
//! reconnect QoS 1 and 2 are therefore at-least-once; the sent log's `attempts` says how often a
//! message went out.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::model::{device_rng, Fault, Generator, STREAM_CHAOS};
use crate::settings::{Mode, Settings};
use crate::stats::Stats;

/// One line of the sent log: a message that was handed to the MQTT client.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SentRecord {
    pub client_id: String,
    pub seq: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
    pub fault: Option<Fault>,
    /// Wall clock, RFC 3339 UTC, when the message was first handed to the client.
    pub sent_at: String,
    /// true: acknowledged (PUBACK / PUBCOMP); false: not acknowledged when the run stopped;
    /// null: QoS 0, written to the socket without acknowledgement.
    pub acked: Option<bool>,
    /// Microseconds from first publish to acknowledgement.
    pub latency_us: Option<u64>,
    /// How many times it was published (more than 1 after reconnects).
    pub attempts: u32,
}

pub(crate) struct Shared {
    pub settings: watch::Receiver<Settings>,
    pub stats: Arc<Stats>,
    pub log: Option<mpsc::Sender<SentRecord>>,
    pub seed: u64,
    pub devices: u32,
    pub start: Instant,
    pub start_time: Option<DateTime<Utc>>,
}

/// What the device loop needs from either protocol version's event loop.
#[derive(Debug)]
enum Ev {
    ConnAck,
    /// A PUBLISH was written with this packet id (0 for QoS 0).
    Sent(u16),
    PubAck(u16),
    PubComp(u16),
    /// Our DISCONNECT went out.
    Closed,
    Other,
    /// The connection broke or could not be made; the next poll reconnects (after backoff).
    Lost(String),
}

type Events = Pin<Box<dyn Stream<Item = Ev> + Send>>;

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    fn try_publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: String,
    ) -> Result<(), NotQueued> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos_of(qos), retain, payload)
                .map_err(|e| NotQueued::V4(Box::new(e))),
            Client::V5(c) => c
                .try_publish(topic, qos5_of(qos), retain, payload)
                .map_err(|e| NotQueued::V5(Box::new(e))),
        }
    }

    fn try_disconnect(&self) {
        // the connection may be gone already; then there is nothing to close
        match self {
            Client::V4(c) => drop(c.try_disconnect()),
            Client::V5(c) => drop(c.try_disconnect()),
        }
    }
}

/// A request rumqttc did not queue (its request channel is closed or full).
#[derive(Debug, thiserror::Error)]
enum NotQueued {
    #[error(transparent)]
    V4(Box<rumqttc::ClientError>),
    #[error(transparent)]
    V5(Box<rumqttc::v5::ClientError>),
}

struct Conn {
    client: Client,
    events: Events,
}

/// The client id (and fleet `deviceId`) of device `index`.
pub fn client_id(prefix: &str, mode: Mode, index: u32) -> String {
    match mode {
        Mode::Seed => prefix.to_string(),
        _ => format!("{prefix}-{index:05}"),
    }
}

fn connect(s: &Settings, id: &str, jitter: ChaCha8Rng) -> Conn {
    let keep_alive = s.keep_alive_s.max(Duration::from_secs(1));
    let backoff = Backoff {
        min_ms: s.reconnect_min_ms,
        max_ms: s.reconnect_max_ms,
        next_ms: s.reconnect_min_ms,
        jitter,
    };
    if s.mqtt5 {
        let mut o = rumqttc::v5::MqttOptions::new(id, s.host.clone(), s.port);
        o.set_keep_alive(keep_alive);
        o.set_clean_start(true);
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, 8);
        Conn {
            client: Client::V5(client),
            events: event_stream_v5(eventloop, backoff),
        }
    } else {
        let mut o = MqttOptions::new(id, s.host.clone(), s.port);
        o.set_keep_alive(keep_alive);
        o.set_clean_session(true);
        o.set_inflight(10);
        let (client, eventloop) = AsyncClient::new(o, 8);
        Conn {
            client: Client::V4(client),
            events: event_stream(eventloop, backoff),
        }
    }
}

/// Exponential reconnect backoff with jitter: a delay in [d/2, d], d doubling up to the maximum,
/// back to the minimum after a CONNACK.
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
    jitter: ChaCha8Rng,
}

impl Backoff {
    fn after(&mut self, ev: &Ev) -> Option<Duration> {
        match ev {
            Ev::Lost(_) => {
                let base = self.next_ms;
                let d = base / 2 + self.jitter.gen_range(0..=base / 2 + 1);
                self.next_ms = base.saturating_mul(2).min(self.max_ms);
                Some(Duration::from_millis(d))
            }
            Ev::ConnAck => {
                self.next_ms = self.min_ms;
                None
            }
            _ => None,
        }
    }
}

fn map_v4(r: Result<Event, ConnectionError>) -> Ev {
    match r {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
        Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck(a.pkid),
        Ok(Event::Incoming(Packet::PubComp(a))) => Ev::PubComp(a.pkid),
        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::Sent(pkid),
        Ok(Event::Outgoing(Outgoing::Disconnect)) => Ev::Closed,
        Ok(_) => Ev::Other,
        Err(e) => Ev::Lost(e.to_string()),
    }
}

fn map_v5(r: Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>) -> Ev {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::Event as E5;
    match r {
        Ok(E5::Incoming(P5::ConnAck(_))) => Ev::ConnAck,
        Ok(E5::Incoming(P5::PubAck(a))) => Ev::PubAck(a.pkid),
        Ok(E5::Incoming(P5::PubComp(a))) => Ev::PubComp(a.pkid),
        Ok(E5::Outgoing(Outgoing::Publish(pkid))) => Ev::Sent(pkid),
        Ok(E5::Outgoing(Outgoing::Disconnect)) => Ev::Closed,
        Ok(_) => Ev::Other,
        Err(e) => Ev::Lost(e.to_string()),
    }
}

/// The event loop as a stream that owns it, so waiting on it inside `select!` never cancels a
/// half-done `poll`. After an error it sleeps (backoff) before polling again, which reconnects.
fn event_stream(eventloop: EventLoop, backoff: Backoff) -> Events {
    Box::pin(futures_util::stream::unfold(
        (eventloop, backoff, None),
        |(mut el, mut b, sleep)| async move {
            if let Some(d) = sleep {
                tokio::time::sleep(d).await;
            }
            let ev = map_v4(el.poll().await);
            let sleep = b.after(&ev);
            Some((ev, (el, b, sleep)))
        },
    ))
}

fn event_stream_v5(eventloop: rumqttc::v5::EventLoop, backoff: Backoff) -> Events {
    Box::pin(futures_util::stream::unfold(
        (eventloop, backoff, None),
        |(mut el, mut b, sleep)| async move {
            if let Some(d) = sleep {
                tokio::time::sleep(d).await;
            }
            let ev = map_v5(el.poll().await);
            let sleep = b.after(&ev);
            Some((ev, (el, b, sleep)))
        },
    ))
}

struct Outstanding {
    rec: SentRecord,
    qos: QoS,
    first: Instant,
    pkid: Option<u16>,
}

fn qos5_of(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    match q {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Run one device until `stop` turns true (then drain) or it has sent `messages_per_device`.
pub(crate) async fn run_device(
    index: u32,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut storm: watch::Receiver<u64>,
) {
    let mut settings_rx = shared.settings.clone();
    let s0 = settings_rx.borrow_and_update().clone();
    let id = client_id(&s0.client_id_prefix, s0.mode, index);
    let mut gen = Generator::new(s0.mode, shared.seed, index, id.clone());
    let mut chaos = device_rng(shared.seed, index, STREAM_CHAOS);
    let stats = &shared.stats;

    // Spread the fleet over one interval so the aggregate rate is steady and connects are spread.
    let interval0 = s0.effective_interval_ms();
    let phase_ms = interval0 * f64::from(index) / f64::from(shared.devices.max(1));
    let mut next_due = shared.start + Duration::from_secs_f64(phase_ms / 1000.0);
    let mut virtual_ms = phase_ms;
    let mut settings = s0;

    tokio::select! {
        _ = tokio::time::sleep_until(next_due) => {}
        _ = wait_true(&mut stop) => return,
    }

    let mut conn = connect(
        &settings,
        &id,
        device_rng(shared.seed, index, STREAM_CHAOS + 1),
    );
    let mut connected = false;
    let mut outstanding: Option<Outstanding> = None;
    let mut sent: u64 = 0;
    let mut draining = false;
    let mut drain_deadline = Instant::now();
    let limit = settings.messages_per_device;
    let _ = storm.borrow_and_update();
    let mut storms_alive = true;
    let mut settings_alive = true;

    loop {
        let done_sending = draining || limit.is_some_and(|l| sent >= l);
        if done_sending && outstanding.is_none() {
            break;
        }
        let can_send = connected && outstanding.is_none() && !done_sending;
        tokio::select! {
            biased;
            ev = conn.events.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Ev::ConnAck => {
                        connected = true;
                        stats.connects.fetch_add(1, Ordering::Relaxed);
                        if let Some(o) = outstanding.as_mut() {
                            // New (clean) session: nothing of ours survived; send it again.
                            o.rec.attempts += 1;
                            o.pkid = None;
                            stats.resent.fetch_add(1, Ordering::Relaxed);
                            let _ = conn.client.try_publish(o.rec.topic.clone(), o.rec.qos, o.rec.retain, o.rec.payload.clone());
                        }
                    }
                    Ev::Sent(pkid) => {
                        if let Some(o) = outstanding.as_mut() {
                            if o.qos == QoS::AtMostOnce {
                                let o = outstanding.take();
                                if let Some(o) = o {
                                    log(&shared, o.rec).await;
                                }
                            } else {
                                o.pkid = Some(pkid);
                            }
                        }
                    }
                    Ev::PubAck(pkid) => {
                        finish_if(&shared, &mut outstanding, QoS::AtLeastOnce, pkid).await;
                        maybe_drop(&mut chaos, &settings, &mut conn, &mut connected, &shared, &id, index);
                    }
                    Ev::PubComp(pkid) => {
                        finish_if(&shared, &mut outstanding, QoS::ExactlyOnce, pkid).await;
                        maybe_drop(&mut chaos, &settings, &mut conn, &mut connected, &shared, &id, index);
                    }
                    Ev::Other | Ev::Closed => {}
                    Ev::Lost(e) => {
                        if connected {
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(device = %id, error = %e, "connection lost; reconnecting with backoff");
                        } else {
                            tracing::trace!(device = %id, error = %e, "connect failed; retrying with backoff");
                        }
                        connected = false;
                    }
                }
            }
            r = stop.changed(), if !draining => {
                if r.is_err() || *stop.borrow() {
                    draining = true;
                    drain_deadline = Instant::now() + settings.drain_ms;
                }
            }
            _ = tokio::time::sleep_until(drain_deadline), if draining => break,
            r = storm.changed(), if storms_alive => {
                match r {
                    Ok(()) => {
                        if chaos.gen::<f64>() < settings.faults.storm_fraction && connected {
                            force_drop(&mut conn, &mut connected, &settings, &shared, &id, index);
                        }
                    }
                    // No storms configured (the sender is gone): stop watching.
                    Err(_) => storms_alive = false,
                }
            }
            r = settings_rx.changed(), if settings_alive => {
                match r {
                    Ok(()) => settings = settings_rx.borrow_and_update().clone(),
                    Err(_) => settings_alive = false,
                }
            }
            _ = tokio::time::sleep_until(next_due), if can_send => {
                let interval = settings.effective_interval_ms();
                let t = match shared.start_time {
                    Some(st) => st + chrono::Duration::microseconds((virtual_ms * 1000.0) as i64),
                    None => Utc::now(),
                };
                let msg = gen.next(t, interval / 1000.0, settings.effective_time_format(), settings.fever_per_day, &settings.faults);
                virtual_ms += interval;
                next_due += Duration::from_secs_f64(interval / 1000.0);
                let now = Instant::now();
                // After a long outage, do not burst more than a few intervals' worth.
                let max_lag = Duration::from_secs_f64(interval * 5.0 / 1000.0);
                if next_due + max_lag < now {
                    next_due = now;
                }
                if let Some(f) = msg.fault {
                    stats.fault(f);
                }
                let qos_n = settings.effective_qos();
                let qos = qos_of(qos_n);
                let topic = settings.topic.replace("{device}", &id);
                let retain = settings.effective_retain();
                let rec = SentRecord {
                    client_id: id.clone(),
                    seq: msg.seq,
                    topic: topic.clone(),
                    qos: qos_n,
                    retain,
                    payload: msg.payload.clone(),
                    fault: msg.fault,
                    sent_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    acked: None,
                    latency_us: None,
                    attempts: 1,
                };
                sent += 1;
                stats.published.fetch_add(1, Ordering::Relaxed);
                stats.last_publish_us.fetch_max(shared.start.elapsed().as_micros() as u64, Ordering::Relaxed);
                if let Err(e) = conn.client.try_publish(topic, qos_n, retain, msg.payload) {
                    // The request channel is closed or full; keep it outstanding so the next
                    // CONNACK sends it again.
                    tracing::debug!(device = %id, error = %e, "publish request not queued");
                }
                outstanding = Some(Outstanding { rec, qos, first: now, pkid: None });
            }
        }
    }

    if let Some(mut o) = outstanding.take() {
        if o.qos != QoS::AtMostOnce {
            stats.unacked.fetch_add(1, Ordering::Relaxed);
            o.rec.acked = Some(false);
        }
        log(&shared, o.rec).await;
    }
    // Polite goodbye: DISCONNECT, then let the event loop write it (bounded).
    if connected {
        conn.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(ev) = conn.events.next().await {
                match ev {
                    Ev::Closed | Ev::Lost(_) => break,
                    _ => {}
                }
            }
        })
        .await;
    }
}

async fn wait_true(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn finish_if(shared: &Shared, outstanding: &mut Option<Outstanding>, qos: QoS, pkid: u16) {
    let matches = outstanding
        .as_ref()
        .is_some_and(|o| o.qos == qos && o.pkid.is_none_or(|p| p == pkid));
    if !matches {
        return;
    }
    if let Some(mut o) = outstanding.take() {
        let us = o.first.elapsed().as_micros() as u64;
        shared.stats.acked.fetch_add(1, Ordering::Relaxed);
        shared.stats.latency(us);
        o.rec.acked = Some(true);
        o.rec.latency_us = Some(us);
        log(shared, o.rec).await;
    }
}

fn maybe_drop(
    chaos: &mut ChaCha8Rng,
    settings: &Settings,
    conn: &mut Conn,
    connected: &mut bool,
    shared: &Shared,
    id: &str,
    index: u32,
) {
    let u: f64 = chaos.gen();
    if u < settings.faults.disconnect && *connected {
        force_drop(conn, connected, settings, shared, id, index);
    }
}

/// Drop the TCP connection abruptly (no DISCONNECT, like a device losing power) and start over.
fn force_drop(
    conn: &mut Conn,
    connected: &mut bool,
    settings: &Settings,
    shared: &Shared,
    id: &str,
    index: u32,
) {
    shared.stats.forced_drops.fetch_add(1, Ordering::Relaxed);
    shared.stats.disconnects.fetch_add(1, Ordering::Relaxed);
    let attempt = shared.stats.forced_drops.load(Ordering::Relaxed);
    *conn = connect(
        settings,
        id,
        device_rng(shared.seed ^ attempt, index, STREAM_CHAOS + 1),
    );
    *connected = false;
}

async fn log(shared: &Shared, rec: SentRecord) {
    if let Some(tx) = &shared.log {
        let _ = tx.send(rec).await;
    }
}
