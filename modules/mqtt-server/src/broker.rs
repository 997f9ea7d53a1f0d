//! Sessions, subscriptions and retained messages for device subscribers (in memory).
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
struct Offline {
    items: VecDeque<Pub>,
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
    fn push(&mut self, p: Pub, max_items: usize, max_bytes: usize) -> bool {
        let n = p.payload.len() + p.topic.len();
        if self.items.len() >= max_items || self.total.load(Ordering::Relaxed) + n > max_bytes {
            return false;
        }
        self.total.fetch_add(n, Ordering::Relaxed);
        self.bytes += n;
        self.items.push_back(p);
        true
    }

    fn drain(&mut self) -> Vec<Pub> {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.items.drain(..).collect()
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Session {
    link: Option<Link>,
    subs: BTreeMap<String, SubFilter>,
    /// Keep the session after the client leaves, for `expiry`.
    persistent: bool,
    expiry: Duration,
    left_at: Option<Instant>,
    offline: Offline,
    incoming_qos2: HashSet<u16>,
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
}

#[derive(Default)]
struct Core {
    sessions: HashMap<String, Session>,
    retained: BTreeMap<String, Pub>,
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

impl Broker {
    /// A broker whose per-session queues hold `queue` messages.
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
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // a panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the whole server would, so recover the guard
        match self.core.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Attaches a new connection to `client_id`'s session, taking over from any connection
    /// that holds it. `clean` discards the old session; `persist_for` is how long the session
    /// outlives the connection (zero: it ends with the connection).
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
        if clean {
            core.sessions.remove(client_id);
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
        s.persistent = !persist_for.is_zero();
        s.expiry = persist_for;
        s.left_at = None;
        s.link = Some(Link {
            id: conn_id,
            tx,
            kick: kick.clone(),
            gone,
        });
        Attached {
            conn_id,
            session_present,
            rx,
            kick,
            replay: s.offline.drain(),
            incoming_qos2: std::mem::take(&mut s.incoming_qos2),
            alive,
        }
    }

    /// Detaches connection `conn_id`. Unacknowledged outgoing messages and QoS 2 state are kept
    /// for a persistent session; a non-persistent one ends here.
    pub fn disconnect(
        &self,
        client_id: &str,
        conn_id: u64,
        unacked: Vec<Pub>,
        incoming_qos2: HashSet<u16>,
        persist_for: Option<Duration>,
    ) {
        let mut core = self.lock();
        let Some(s) = core.sessions.get_mut(client_id) else {
            return;
        };
        let current = s.link.as_ref().map(|l| l.id) == Some(conn_id);
        if !current {
            // taken over: hand what this connection still owed to the session
            if s.persistent {
                for p in unacked {
                    if let Some(link) = &s.link {
                        let _ = link.tx.try_send(p);
                    } else if !s.offline.push(p, self.queue, self.offline_bytes) {
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
            core.sessions.remove(client_id);
            return;
        }
        s.left_at = Some(Instant::now());
        s.incoming_qos2 = incoming_qos2;
        let older = s.offline.drain();
        for p in unacked.into_iter().chain(older) {
            if !s.offline.push(p, self.queue, self.offline_bytes) {
                self.metrics.dropped("offline_queue_full");
            }
        }
    }

    /// Adds subscriptions; returns the granted QoS per filter (None: invalid filter) and the
    /// retained messages to send now.
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
            if !rumqttc::mqttbytes::valid_filter(&f.filter) || f.filter.starts_with("$share/") {
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
            if f.retain_handling == 0 || (f.retain_handling == 1 && !existed) {
                send_retained.push(f);
            }
        }
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
        }
    }

    /// Stores a retained message (an empty payload deletes) and delivers `p` to every matching
    /// subscriber at min(publish QoS, subscription QoS).
    pub fn publish(&self, from: &str, p: &Pub) {
        let mut core = self.lock();
        if p.retain {
            if p.payload.is_empty() {
                core.retained.remove(&p.topic);
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
                core.retained.insert(p.topic.clone(), r);
            }
            self.metrics
                .retained_messages
                .store(core.retained.len() as i64, Ordering::Relaxed);
        }
        for (id, s) in core.sessions.iter_mut() {
            let mut best: Option<&SubFilter> = None;
            for f in s.subs.values() {
                if f.no_local && id == from {
                    continue;
                }
                if matches(&p.topic, &f.filter) && best.is_none_or_lower(f.qos) {
                    best = Some(f);
                }
            }
            let Some(f) = best else { continue };
            let mut d = p.clone();
            d.qos = min_qos(p.qos, f.qos);
            d.retain = f.retain_as_published && p.retain;
            d.dup = false;
            d.pkid = 0;
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
                            if !(s.persistent && s.offline.push(d, self.queue, self.offline_bytes))
                            {
                                self.metrics.dropped("subscriber_queue_full");
                            }
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(d)) => {
                        if s.persistent
                            && d.qos != QoS::AtMostOnce
                            && !s.offline.push(d, self.queue, self.offline_bytes)
                        {
                            self.metrics.dropped("offline_queue_full");
                        }
                    }
                },
                None => {
                    if d.qos != QoS::AtMostOnce
                        && !s.offline.push(d, self.queue, self.offline_bytes)
                    {
                        self.metrics.dropped("offline_queue_full");
                    }
                }
            }
        }
    }

    /// Ends persistent sessions whose client has been away longer than their expiry.
    pub fn expire(&self, now: Instant) -> usize {
        let mut core = self.lock();
        let before = core.sessions.len();
        core.sessions.retain(|_, s| match s.left_at {
            Some(t) if s.link.is_none() => now.saturating_duration_since(t) < s.expiry,
            _ => true,
        });
        before - core.sessions.len()
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
