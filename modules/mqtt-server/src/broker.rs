//! Sessions, subscriptions (shared ones and subscription identifiers included) and retained
//! messages for device subscribers; in memory, and also on disk when a state file is configured
//! ([`crate::state`]).
//!
//! The lock is a plain `std::sync::Mutex` held only for map updates and `try_send`s: nothing here
//! awaits, so one slow subscriber can never stall a publisher.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::{matches, QoS};
use tokio::sync::{mpsc, watch, Notify};

use crate::codec::{DisconnectReason, Pub, SubFilter};
use crate::metrics::Metrics;
use crate::state::{StateOp, StateSink};

/// Why the broker asks a connection to close.
#[derive(Debug, Default)]
pub struct Kick {
    notify: Notify,
    reason: Mutex<Option<(DisconnectReason, &'static str)>>,
}

impl Kick {
    /// Asks the connection to close with `reason` (the first reason wins).
    /// Returns true for the first kick.
    pub fn kick(&self, reason: DisconnectReason, why: &'static str) -> bool {
        let mut first = false;
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
                *r = Some((reason, why));
                first = true;
            }
        }
        self.notify.notify_one();
        first
    }

    /// Resolves once [`Kick::kick`] was called; returns the reason.
    pub async fn kicked(&self) -> (DisconnectReason, &'static str) {
        loop {
            if let Ok(r) = self.reason.lock() {
                if let Some(r) = *r {
                    return r;
                }
            }
            self.notify.notified().await;
        }
    }
}

struct Link {
    id: u64,
    tx: mpsc::Sender<Pub>,
    kick: Arc<Kick>,
    /// Closes (sender dropped) once the connection handed its state back.
    gone: watch::Receiver<()>,
}

/// A session's queue of messages for later, counted against a budget shared by all sessions.
/// Each message has a sequence number (its key in the optional state file).
struct Offline {
    items: VecDeque<(u64, Pub)>,
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Offline {
    fn new(total: Arc<AtomicUsize>) -> Offline {
        Offline {
            items: VecDeque::new(),
            bytes: 0,
            total,
        }
    }

    /// Appends unless the session's `max_items` or the shared `max_bytes` would be exceeded.
    fn push(&mut self, seq: u64, p: Pub, max_items: usize, max_bytes: usize) -> bool {
        let n = p.payload.len() + p.topic.len();
        if self.items.len() >= max_items || self.total.load(Ordering::Relaxed) + n > max_bytes {
            return false;
        }
        self.total.fetch_add(n, Ordering::Relaxed);
        self.bytes += n;
        self.items.push_back((seq, p));
        true
    }

    fn drain(&mut self) -> Vec<Pub> {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.items.drain(..).map(|(_, p)| p).collect()
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Session {
    link: Option<Link>,
    /// Keyed by the filter as subscribed (`$share/{group}/{filter}` for a shared subscription).
    subs: BTreeMap<String, SubFilter>,
    /// Keep the session after the client leaves, for `expiry`.
    persistent: bool,
    expiry: Duration,
    left_at: Option<Instant>,
    offline: Offline,
    incoming_qos2: HashSet<u16>,
}

impl Session {
    /// True once a detached session's expiry has passed.
    fn expired(&self, now: Instant) -> bool {
        self.link.is_none()
            && self
                .left_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.expiry)
    }
}

/// What a connection gets when it attaches to its session.
pub struct Attached {
    pub conn_id: u64,
    pub session_present: bool,
    pub rx: mpsc::Receiver<Pub>,
    pub kick: Arc<Kick>,
    /// Messages queued while the client was away (send them first).
    pub replay: Vec<Pub>,
    /// QoS 2 packet ids received but not yet released (PUBREL) before the client left.
    pub incoming_qos2: HashSet<u16>,
    /// Drop this after [`Broker::disconnect`]: a connection taking over waits for it.
    pub alive: watch::Sender<()>,
}

/// The session and retained-message store.
pub struct Broker {
    core: Mutex<Core>,
    next_id: AtomicU64,
    queue: usize,
    max_retained: usize,
    retained_refused: AtomicU64,
    offline_bytes: usize,
    offline_total: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// Where changes go when sessions and retained messages are persisted (`state_path`).
    state: Option<StateSink>,
    next_seq: AtomicU64,
}

#[derive(Default)]
struct Core {
    sessions: HashMap<String, Session>,
    retained: BTreeMap<String, Pub>,
    /// Round-robin position per shared subscription (`$share/{group}/{filter}`).
    shared_rr: HashMap<String, usize>,
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// `$share/{group}/{filter}` -> `(group, filter)`; `None` for a filter that is not shared.
pub fn shared_parts(f: &str) -> Option<(&str, &str)> {
    f.strip_prefix("$share/")?.split_once('/')
}

/// Whether a subscription filter is acceptable: a valid filter, or a shared subscription with a
/// non-empty group name without wildcards and a valid filter.
pub(crate) fn valid_subscription(f: &str) -> bool {
    if f.starts_with("$share/") {
        return match shared_parts(f) {
            Some((group, filter)) => {
                !group.is_empty()
                    && !group.contains(['+', '#'])
                    && !filter.is_empty()
                    && rumqttc::mqttbytes::valid_filter(filter)
            }
            None => false,
        };
    }
    rumqttc::mqttbytes::valid_filter(f)
}

impl Broker {
    /// A broker whose sessions queue at most `queue` messages each and `offline_bytes` in all,
    /// and which retains at most `max_retained` topics.
    pub fn new(
        queue: usize,
        max_retained: usize,
        offline_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Broker {
        Broker {
            core: Mutex::new(Core::default()),
            next_id: AtomicU64::new(1),
            queue,
            max_retained,
            retained_refused: AtomicU64::new(0),
            offline_bytes,
            offline_total: Arc::new(AtomicUsize::new(0)),
            metrics,
            state: None,
            next_seq: AtomicU64::new(1),
        }
    }

    /// Persists sessions and retained messages through `sink`, starting from what a previous run
    /// left (`loaded`). Call before any client connects.
    pub fn restore(&mut self, sink: StateSink, loaded: crate::state::Loaded) {
        let now = Instant::now();
        let mut max_seq = 0;
        let mut expired = Vec::new();
        {
            let mut core = self.lock();
            for r in loaded.retained {
                core.retained.insert(r.topic.clone(), r);
            }
            self.metrics
                .retained_messages
                .set(core.retained.len() as i64);
            for l in loaded.sessions {
                let left_ago = l.left_ago.unwrap_or(Duration::ZERO);
                if left_ago >= l.expiry {
                    expired.push(l.client);
                    continue;
                }
                let mut offline = Offline::new(self.offline_total.clone());
                let mut dropped = false;
                for (seq, p) in l.queued {
                    max_seq = max_seq.max(seq);
                    // a smaller budget than the last run's drops what no longer fits
                    if !offline.push(seq, p, self.queue, self.offline_bytes) {
                        self.metrics.dropped("offline_queue_full");
                        dropped = true;
                    }
                }
                if dropped {
                    // the file keeps only what memory kept
                    sink.send(StateOp::Unqueue {
                        client: l.client.clone(),
                    });
                    for (seq, p) in &offline.items {
                        sink.send(StateOp::Queue {
                            client: l.client.clone(),
                            seq: *seq,
                            record: crate::state::encode_pub(p),
                        });
                    }
                }
                core.sessions.insert(
                    l.client,
                    Session {
                        link: None,
                        subs: l.subs.into_iter().map(|f| (f.filter.clone(), f)).collect(),
                        persistent: true,
                        expiry: l.expiry,
                        left_at: Some(now.checked_sub(left_ago).unwrap_or(now)),
                        offline,
                        incoming_qos2: l.qos2.into_iter().collect(),
                    },
                );
            }
            if !core.sessions.is_empty() || !core.retained.is_empty() {
                tracing::info!(
                    sessions = core.sessions.len(),
                    retained = core.retained.len(),
                    "restored device sessions and retained messages from the state file"
                );
            }
        }
        for client in &expired {
            sink.send(StateOp::DropSession {
                client: client.clone(),
            });
        }
        if !expired.is_empty() {
            tracing::info!(
                sessions = expired.len(),
                "stored sessions expired while the server was down; dropped"
            );
        }
        self.next_seq.store(max_seq + 1, Ordering::Relaxed);
        self.state = Some(sink);
    }

    /// Waits (at most `within`) until every change to sessions and retained messages is on disk.
    pub fn flush_state(&self, within: Duration) -> bool {
        self.state.as_ref().is_none_or(|s| s.flush(within))
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // a panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the whole server would, so recover the guard
        match self.core.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn save_session(&self, client: &str, s: &Session) {
        if let Some(state) = &self.state {
            if s.persistent {
                let left_ago = s.left_at.map(|t| t.elapsed());
                let qos2: Vec<u16> = s.incoming_qos2.iter().copied().collect();
                state.send(StateOp::Session {
                    client: client.to_string(),
                    meta: crate::state::encode_session(&s.subs, s.expiry, left_ago, &qos2),
                });
            }
        }
    }

    fn forget_session(&self, client: &str) {
        if let Some(state) = &self.state {
            state.send(StateOp::DropSession {
                client: client.to_string(),
            });
        }
    }

    /// Queues `p` for a session whose client is away (persisted); false when the queue is full.
    fn queue_offline(&self, client: &str, s: &mut Session, p: Pub) -> bool {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let record = self.state.as_ref().map(|_| crate::state::encode_pub(&p));
        if !s.offline.push(seq, p, self.queue, self.offline_bytes) {
            return false;
        }
        if let (Some(state), Some(record)) = (&self.state, record) {
            state.send(StateOp::Queue {
                client: client.to_string(),
                seq,
                record,
            });
        }
        true
    }

    /// Ends a session: its shared-subscription messages go to other members of their groups.
    fn end_session(&self, core: &mut Core, client_id: &str) {
        if let Some(mut s) = core.sessions.remove(client_id) {
            let left = s.offline.drain();
            self.forget_session(client_id);
            for p in left {
                if p.props.shared.is_some() && self.redispatch(core, client_id, p).is_some() {
                    self.metrics.dropped("shared_no_member");
                }
            }
        }
    }

    /// Attaches a new connection to `client_id`'s session, taking over from any connection
    /// that holds it. `clean` discards the old session, and so does its expiry having passed;
    /// `persist_for` is how long the session outlives the connection (zero: it ends with it).
    pub async fn connect(&self, client_id: &str, clean: bool, persist_for: Duration) -> Attached {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let kick = Arc::new(Kick::default());
        // take over: close the connection holding this client id and wait (bounded) until it
        // handed back its session state (unacknowledged messages, QoS 2 packet ids)
        for _ in 0..3 {
            let gone = {
                let core = self.lock();
                match core.sessions.get(client_id).and_then(|s| s.link.as_ref()) {
                    Some(link) => {
                        tracing::info!(
                            client = client_id,
                            "client id taken over by a new connection; closing the old one"
                        );
                        let _ = link.kick.kick(
                            DisconnectReason::SessionTakenOver,
                            "session taken over by a new connection with the same client id",
                        );
                        link.gone.clone()
                    }
                    None => break,
                }
            };
            let mut gone = gone;
            let _ = tokio::time::timeout(Duration::from_secs(5), async move {
                while gone.changed().await.is_ok() {}
            })
            .await;
        }
        let (alive, gone) = watch::channel(());
        let mut core = self.lock();
        if let Some(old) = core.sessions.get_mut(client_id) {
            // still attached after the waits above: that connection is stuck; detach it
            old.link = None;
        }
        // a session whose expiry passed is gone, whether or not the periodic sweep saw it yet
        let expired = core
            .sessions
            .get(client_id)
            .is_some_and(|s| s.expired(Instant::now()));
        if clean || expired {
            self.end_session(&mut core, client_id);
        }
        let session_present = core.sessions.contains_key(client_id);
        let s = core
            .sessions
            .entry(client_id.to_string())
            .or_insert_with(|| Session {
                link: None,
                subs: BTreeMap::new(),
                persistent: false,
                expiry: Duration::ZERO,
                left_at: None,
                offline: Offline::new(self.offline_total.clone()),
                incoming_qos2: HashSet::new(),
            });
        let was_persistent = s.persistent;
        s.persistent = !persist_for.is_zero();
        s.expiry = persist_for;
        s.left_at = None;
        s.link = Some(Link {
            id: conn_id,
            tx,
            kick: kick.clone(),
            gone,
        });
        let replay = s.offline.drain();
        let incoming_qos2 = std::mem::take(&mut s.incoming_qos2);
        if let Some(state) = &self.state {
            if !replay.is_empty() {
                state.send(StateOp::Unqueue {
                    client: client_id.to_string(),
                });
            }
            if s.persistent {
                self.save_session(client_id, s);
            } else if was_persistent {
                self.forget_session(client_id);
            }
        }
        Attached {
            conn_id,
            session_present,
            rx,
            kick,
            replay,
            incoming_qos2,
            alive,
        }
    }

    /// Detaches connection `conn_id`. Unacknowledged outgoing messages and QoS 2 state are kept
    /// for a persistent session; a non-persistent one ends here. Messages that came through a
    /// shared subscription go to another member of its group when one is connected.
    pub fn disconnect(
        &self,
        client_id: &str,
        conn_id: u64,
        unacked: Vec<Pub>,
        incoming_qos2: HashSet<u16>,
        persist_for: Option<Duration>,
    ) {
        let mut core = self.lock();
        let Some(s) = core.sessions.get(client_id) else {
            return;
        };
        let current = s.link.as_ref().map(|l| l.id) == Some(conn_id);
        // a member leaving hands its shared-subscription messages to the others
        let mut own = Vec::with_capacity(unacked.len());
        for p in unacked {
            if p.props.shared.is_some() {
                if let Some(back) = self.redispatch(&mut core, client_id, p) {
                    own.push(back);
                }
            } else {
                own.push(p);
            }
        }
        let Some(s) = core.sessions.get_mut(client_id) else {
            return;
        };
        if !current {
            // taken over: hand what this connection still owed to the session
            if s.persistent {
                for p in own {
                    if let Some(link) = &s.link {
                        if link.tx.try_send(p).is_err() {
                            self.metrics.dropped("takeover_queue_full");
                        }
                    } else if !self.queue_offline(client_id, s, p) {
                        self.metrics.dropped("offline_queue_full");
                    }
                }
            }
            return;
        }
        s.link = None;
        if let Some(d) = persist_for {
            s.expiry = d;
            s.persistent = !d.is_zero();
        }
        if !s.persistent {
            // its shared messages that no other member could take are dropped with it
            let dropped = own.iter().filter(|p| p.props.shared.is_some()).count();
            for _ in 0..dropped {
                self.metrics.dropped("shared_no_member");
            }
            self.end_session(&mut core, client_id);
            return;
        }
        s.left_at = Some(Instant::now());
        s.incoming_qos2 = incoming_qos2;
        let older = s.offline.drain();
        if let Some(state) = &self.state {
            state.send(StateOp::Unqueue {
                client: client_id.to_string(),
            });
        }
        for p in own.into_iter().chain(older) {
            if !self.queue_offline(client_id, s, p) {
                self.metrics.dropped("offline_queue_full");
            }
        }
        self.save_session(client_id, s);
    }

    /// Gives a message that reached `from` through a shared subscription to another member of the
    /// group (a connected one first); returns it when no other member can take it.
    fn redispatch(&self, core: &mut Core, from: &str, mut p: Pub) -> Option<Pub> {
        let key = p.props.shared.clone()?;
        let mut members: Vec<(String, QoS, Option<usize>)> = core
            .sessions
            .iter()
            .filter(|(id, _)| id.as_str() != from)
            .filter_map(|(id, s)| s.subs.get(&key).map(|f| (id.clone(), f.qos, f.id)))
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let start = next_rr(core, &key);
        let Some(i) = pick_member(core, &members, start) else {
            return Some(p);
        };
        let (id, qos, sid) = &members[i];
        p.qos = min_qos(p.qos, *qos);
        p.dup = false;
        p.pkid = 0;
        p.props.subscription_ids = sid.iter().copied().collect();
        if let Some(s) = core.sessions.get_mut(id) {
            self.deliver_to(id, s, p);
        }
        None
    }

    /// Adds subscriptions; returns the granted QoS per filter (None: invalid filter) and the
    /// retained messages to send now (none for shared subscriptions, as MQTT 5 says).
    pub fn subscribe(
        &self,
        client_id: &str,
        filters: &[SubFilter],
    ) -> (Vec<Option<QoS>>, Vec<Pub>) {
        let mut core = self.lock();
        let mut granted = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        let mut new_subs = Vec::new();
        for f in filters {
            if !valid_subscription(&f.filter) {
                granted.push(None);
                continue;
            }
            granted.push(Some(f.qos));
            new_subs.push(f.clone());
        }
        let Some(s) = core.sessions.get_mut(client_id) else {
            return (granted, retained);
        };
        let mut send_retained = Vec::new();
        for f in new_subs {
            let existed = s.subs.insert(f.filter.clone(), f.clone()).is_some();
            let shared = f.filter.starts_with("$share/");
            if !shared && (f.retain_handling == 0 || (f.retain_handling == 1 && !existed)) {
                send_retained.push(f);
            }
        }
        self.save_session(client_id, s);
        for f in send_retained {
            let now = Instant::now();
            for (topic, p) in &core.retained {
                if p.props.expires_at.is_some_and(|at| at <= now) {
                    continue;
                }
                if matches(topic, &f.filter) {
                    let mut p = p.clone();
                    p.qos = min_qos(p.qos, f.qos);
                    p.retain = true;
                    p.dup = false;
                    p.pkid = 0;
                    p.props.subscription_ids = f.id.into_iter().collect();
                    retained.push(p);
                }
            }
        }
        (granted, retained)
    }

    /// Removes subscriptions.
    pub fn unsubscribe(&self, client_id: &str, filters: &[String]) {
        let mut core = self.lock();
        if let Some(s) = core.sessions.get_mut(client_id) {
            for f in filters {
                s.subs.remove(f);
            }
            self.save_session(client_id, s);
        }
    }

    /// Stores a retained message (an empty payload deletes) and delivers `p` to every matching
    /// subscriber at min(publish QoS, subscription QoS), and to one member of each matching shared
    /// subscription's group (round-robin over the connected members that have room).
    pub fn publish(&self, from: &str, p: &Pub) {
        let mut core = self.lock();
        if p.retain {
            if p.payload.is_empty() {
                if core.retained.remove(&p.topic).is_some() {
                    if let Some(state) = &self.state {
                        state.send(StateOp::Unretain {
                            topic: p.topic.clone(),
                        });
                    }
                }
            } else if core.retained.len() >= self.max_retained
                && !core.retained.contains_key(&p.topic)
            {
                // a device inventing topics must not grow memory without bound
                self.metrics.dropped("retained_limit");
                let n = self.retained_refused.fetch_add(1, Ordering::Relaxed);
                if n % 1000 == 0 {
                    tracing::warn!(client = %from, topic = ?p.topic, max = self.max_retained, refused = n + 1,
                        "retained message not stored: max_retained reached (the message itself is forwarded)");
                }
            } else {
                let mut r = p.clone();
                r.dup = false;
                r.pkid = 0;
                if let Some(state) = &self.state {
                    state.send(StateOp::Retain {
                        topic: p.topic.clone(),
                        record: crate::state::encode_pub(&r),
                    });
                }
                core.retained.insert(p.topic.clone(), r);
            }
            self.metrics
                .retained_messages
                .set(core.retained.len() as i64);
        }
        let mut deliveries: Vec<(String, Pub)> = Vec::new();
        let mut groups: BTreeMap<String, Vec<(String, QoS, Option<usize>)>> = BTreeMap::new();
        for (id, s) in core.sessions.iter() {
            let mut best: Option<&SubFilter> = None;
            let mut ids = Vec::new();
            for (key, f) in &s.subs {
                if let Some((_, filter)) = shared_parts(key) {
                    if matches(&p.topic, filter) {
                        groups
                            .entry(key.clone())
                            .or_default()
                            .push((id.clone(), f.qos, f.id));
                    }
                    continue;
                }
                if f.no_local && id == from {
                    continue;
                }
                if matches(&p.topic, &f.filter) {
                    ids.extend(f.id);
                    if best.is_none_or_lower(f.qos) {
                        best = Some(f);
                    }
                }
            }
            let Some(f) = best else { continue };
            let mut d = p.clone();
            d.qos = min_qos(p.qos, f.qos);
            d.retain = f.retain_as_published && p.retain;
            d.dup = false;
            d.pkid = 0;
            d.props.subscription_ids = ids;
            d.props.shared = None;
            deliveries.push((id.clone(), d));
        }
        for (key, mut members) in groups {
            // a stable order, so round-robin visits each member in turn
            members.sort_by(|a, b| a.0.cmp(&b.0));
            let start = next_rr(&mut core, &key);
            let Some(i) = pick_member(&core, &members, start) else {
                self.metrics.dropped("shared_no_member");
                continue;
            };
            let (id, qos, sid) = &members[i];
            let mut d = p.clone();
            d.qos = min_qos(p.qos, *qos);
            d.retain = false;
            d.dup = false;
            d.pkid = 0;
            d.props.subscription_ids = sid.iter().copied().collect();
            d.props.shared = Some(key);
            deliveries.push((id.clone(), d));
        }
        for (id, d) in deliveries {
            if let Some(s) = core.sessions.get_mut(&id) {
                self.deliver_to(&id, s, d);
            }
        }
    }

    /// Hands `d` to the session's connection, or queues it while the client is away.
    fn deliver_to(&self, id: &str, s: &mut Session, d: Pub) {
        match &s.link {
            Some(link) => match link.tx.try_send(d) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(d)) => {
                    if d.qos == QoS::AtMostOnce {
                        self.metrics.dropped("subscriber_queue_full");
                    } else {
                        if link.kick.kick(
                            DisconnectReason::QuotaExceeded,
                            "subscriber queue full: the client does not read fast enough",
                        ) {
                            tracing::warn!(client = %id, "subscriber does not keep up (queue of {} full); disconnecting it", self.queue);
                            self.metrics.refused("slow_subscriber");
                        }
                        if !(s.persistent && self.queue_offline(id, s, d)) {
                            self.metrics.dropped("subscriber_queue_full");
                        }
                    }
                }
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    if s.persistent && d.qos != QoS::AtMostOnce && !self.queue_offline(id, s, d) {
                        self.metrics.dropped("offline_queue_full");
                    }
                }
            },
            None => {
                if d.qos != QoS::AtMostOnce && !self.queue_offline(id, s, d) {
                    self.metrics.dropped("offline_queue_full");
                }
            }
        }
    }

    /// Ends persistent sessions whose client has been away longer than their expiry.
    pub fn expire(&self, now: Instant) -> usize {
        let mut core = self.lock();
        let gone: Vec<String> = core
            .sessions
            .iter()
            .filter(|(_, s)| s.expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.end_session(&mut core, id);
        }
        gone.len()
    }

    /// When `client_id`'s session ends if its client stays away: its expiry from now, or `None`
    /// when it has no session or a connection holds it.
    pub fn session_expiry(&self, client_id: &str) -> Option<Duration> {
        let core = self.lock();
        let s = core.sessions.get(client_id)?;
        if s.link.is_some() {
            return None;
        }
        let left = s.left_at?;
        Some(s.expiry.saturating_sub(left.elapsed()))
    }

    /// True when a connection holds `client_id`'s session now.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.link.is_some())
    }

    /// Number of sessions held (connected or not).
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Kicks every connected client (server shutdown).
    pub fn kick_all(&self) {
        let core = self.lock();
        for s in core.sessions.values() {
            if let Some(l) = &s.link {
                let _ = l
                    .kick
                    .kick(DisconnectReason::ServerShuttingDown, "server shutting down");
            }
        }
    }
}

/// The round-robin start for shared subscription `key`, advancing it.
fn next_rr(core: &mut Core, key: &str) -> usize {
    let rr = core.shared_rr.entry(key.to_string()).or_insert(0);
    let start = *rr;
    *rr = rr.wrapping_add(1);
    start
}

/// The member of a shared subscription's group that gets the next message: the first, from
/// `start` round, whose client is connected and has room; else the first with a persistent session
/// (it queues the message until its client is back); else none.
fn pick_member(
    core: &Core,
    members: &[(String, QoS, Option<usize>)],
    start: usize,
) -> Option<usize> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    let order = (0..n).map(|k| (start + k) % n);
    let connected = order.clone().find(|&i| {
        core.sessions
            .get(&members[i].0)
            .and_then(|s| s.link.as_ref())
            .is_some_and(|l| l.tx.capacity() > 0)
    });
    // else a persistent member queues it; else a connected member that is full (it is disconnected as
    // a slow subscriber, as for any subscription)
    connected
        .or_else(|| {
            order.clone().find(|&i| {
                core.sessions
                    .get(&members[i].0)
                    .is_some_and(|s| s.persistent)
            })
        })
        .or_else(|| {
            order.clone().find(|&i| {
                core.sessions
                    .get(&members[i].0)
                    .is_some_and(|s| s.link.is_some())
            })
        })
}

trait BestSub {
    fn is_none_or_lower(&self, q: QoS) -> bool;
}

impl BestSub for Option<&SubFilter> {
    fn is_none_or_lower(&self, q: QoS) -> bool {
        match self {
            None => true,
            Some(f) => (f.qos as u8) < (q as u8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PubProps;
    use bytes::Bytes;

    fn sub(filter: &str, qos: QoS) -> SubFilter {
        SubFilter {
            id: None,
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }

    fn publ(topic: &str, qos: QoS, retain: bool, body: &'static [u8]) -> Pub {
        Pub {
            topic: topic.into(),
            payload: Bytes::from_static(body),
            qos,
            retain,
            dup: false,
            pkid: 7,
            props: PubProps::default(),
        }
    }

    fn broker() -> Broker {
        Broker::new(4, 2, 1 << 20, Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn delivers_at_min_qos() {
        let b = broker();
        let mut a = b.connect("sub", true, Duration::ZERO).await;
        let (g, _) = b.subscribe(
            "sub",
            &[sub("a/+", QoS::AtLeastOnce), sub("a/#/x", QoS::AtMostOnce)],
        );
        assert_eq!(g, vec![Some(QoS::AtLeastOnce), None]);
        b.publish("pub", &publ("a/b", QoS::ExactlyOnce, false, b"1"));
        b.publish("pub", &publ("a/c", QoS::AtMostOnce, false, b"2"));
        b.publish("pub", &publ("b/c", QoS::AtMostOnce, false, b"3"));
        let d1 = a.rx.try_recv().expect("first");
        assert_eq!((d1.qos, &d1.payload[..]), (QoS::AtLeastOnce, &b"1"[..]));
        let d2 = a.rx.try_recv().expect("second");
        assert_eq!(d2.qos, QoS::AtMostOnce);
        assert!(a.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn offline_queues_share_a_byte_budget() {
        let b = Broker::new(100, 10, 25, Arc::new(Metrics::default()));
        for id in ["s1", "s2"] {
            let a = b.connect(id, false, Duration::from_secs(60)).await;
            b.subscribe(id, &[sub("t", QoS::AtLeastOnce)]);
            b.disconnect(id, a.conn_id, vec![], HashSet::new(), None);
        }
        // each message costs 1 (topic) + 9 (payload) = 10 bytes: two fit, the rest are dropped
        for _ in 0..3 {
            b.publish("p", &publ("t", QoS::AtLeastOnce, false, b"123456789"));
        }
        let a1 = b.connect("s1", false, Duration::from_secs(60)).await;
        let a2 = b.connect("s2", false, Duration::from_secs(60)).await;
        assert_eq!(a1.replay.len() + a2.replay.len(), 2);
        // replayed messages left the budget: there is room again
        b.disconnect("s1", a1.conn_id, vec![], HashSet::new(), None);
        b.publish("p", &publ("t", QoS::AtLeastOnce, false, b"123456789"));
        let a1 = b.connect("s1", false, Duration::from_secs(60)).await;
        assert_eq!(a1.replay.len(), 1);
    }

    #[tokio::test]
    async fn retained_store_is_bounded() {
        let b = broker();
        for t in ["r/1", "r/2", "r/3"] {
            b.publish("p", &publ(t, QoS::AtMostOnce, true, b"x"));
        }
        b.publish("p", &publ("r/1", QoS::AtMostOnce, true, b"replaced"));
        let _a = b.connect("s", true, Duration::ZERO).await;
        let (_, r) = b.subscribe("s", &[sub("r/#", QoS::AtMostOnce)]);
        let topics: Vec<&str> = r.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, vec!["r/1", "r/2"], "the third topic was not stored");
        assert_eq!(
            &r[0].payload[..],
            b"replaced",
            "replacing within the bound works"
        );
    }

    #[tokio::test]
    async fn retained_set_replace_delete() {
        let b = broker();
        b.publish("p", &publ("r/1", QoS::AtLeastOnce, true, b"old"));
        b.publish("p", &publ("r/1", QoS::AtLeastOnce, true, b"new"));
        b.publish("p", &publ("r/2", QoS::AtLeastOnce, true, b"x"));
        b.publish("p", &publ("r/2", QoS::AtLeastOnce, true, b""));
        let _a = b.connect("s", true, Duration::ZERO).await;
        let (_, r) = b.subscribe("s", &[sub("r/#", QoS::AtMostOnce)]);
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0].payload[..], b"new");
        assert!(r[0].retain);
        assert_eq!(r[0].qos, QoS::AtMostOnce);
    }

    #[tokio::test]
    async fn persistent_session_queues_while_away_and_clean_discards() {
        let b = broker();
        let a = b.connect("s", false, Duration::from_secs(60)).await;
        assert!(!a.session_present);
        b.subscribe("s", &[sub("t", QoS::AtLeastOnce)]);
        b.disconnect("s", a.conn_id, vec![], HashSet::new(), None);
        b.publish("p", &publ("t", QoS::AtLeastOnce, false, b"1"));
        b.publish("p", &publ("t", QoS::AtMostOnce, false, b"qos0 not queued"));
        let a2 = b.connect("s", false, Duration::from_secs(60)).await;
        assert!(a2.session_present);
        assert_eq!(a2.replay.len(), 1);
        b.disconnect("s", a2.conn_id, vec![], HashSet::new(), None);
        let a3 = b.connect("s", true, Duration::ZERO).await;
        assert!(!a3.session_present);
        b.disconnect("s", a3.conn_id, vec![], HashSet::new(), None);
        assert_eq!(b.session_count(), 0);
    }

    #[tokio::test]
    async fn takeover_kicks_the_old_connection_and_waits_for_its_state() {
        let b = Arc::new(broker());
        let a = b.connect("s", false, Duration::from_secs(60)).await;
        let b2 = b.clone();
        let newer =
            tokio::spawn(async move { b2.connect("s", false, Duration::from_secs(60)).await });
        let (reason, _) = a.kick.kicked().await;
        assert_eq!(reason, DisconnectReason::SessionTakenOver);
        // the old connection hands back its QoS 2 state, then lets go
        b.disconnect("s", a.conn_id, vec![], [5u16].into_iter().collect(), None);
        drop(a.alive);
        let a2 = newer.await.expect("join");
        assert!(a2.session_present);
        assert!(a2.incoming_qos2.contains(&5));
        assert_eq!(b.session_count(), 1);
    }

    #[tokio::test]
    async fn no_local_and_expiry() {
        let b = broker();
        let mut a = b.connect("s", false, Duration::from_secs(1)).await;
        let mut f = sub("t", QoS::AtMostOnce);
        f.no_local = true;
        b.subscribe("s", &[f]);
        b.publish("s", &publ("t", QoS::AtMostOnce, false, b"own"));
        assert!(a.rx.try_recv().is_err());
        b.disconnect("s", a.conn_id, vec![], HashSet::new(), None);
        assert_eq!(b.expire(Instant::now()), 0);
        assert_eq!(b.expire(Instant::now() + Duration::from_secs(2)), 1);
    }
}
