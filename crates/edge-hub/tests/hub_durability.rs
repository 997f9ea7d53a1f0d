//! What the hub keeps on disk: acknowledged messages (also when the hub dies without shutting down),
//! persistent sessions (the Python SDK never resubscribes), unacknowledged deliveries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use edge_hub::test_util::*;
use rumqttc::QoS;

const TO_B: (&str, &str) = (
    "toB",
    r#"FROM /messages/modules/A/outputs/out1 INTO BrokeredEndpoint("/modules/B/inputs/in1")"#,
);
const TO_CLOUD: (&str, &str) = (
    "toCloud",
    "FROM /messages/modules/A/outputs/up INTO $upstream",
);

fn events_topic(module: &str, bag: &str) -> String {
    format!("devices/{DEVICE}/modules/{module}/messages/events/{bag}")
}

fn inputs_filter(module: &str) -> String {
    format!("devices/{DEVICE}/modules/{module}/inputs/#")
}

#[test]
fn acknowledged_messages_survive_a_hub_that_dies_without_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // First life: a runtime that is dropped abruptly, with connections open and no shutdown.
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let hub = TestHub::start(&path, &[TO_CLOUD, TO_B], BTreeMap::new()).await;
            let mut a = connect(&hub, "A").await;
            for i in 0..20 {
                let out = if i % 2 == 0 { "up" } else { "out1" };
                a.client
                    .publish(
                        events_topic("A", &format!("%24.on={out}&i={i}")),
                        QoS::AtLeastOnce,
                        false,
                        format!("{i}"),
                    )
                    .await
                    .unwrap();
            }
            for _ in 0..20 {
                a.puback().await.unwrap();
            }
            // No shutdown: the runtime goes away under the hub and the client.
            hub.abandon();
            drop(a);
        });
        rt.shutdown_background();
    }
    // Second life on the same data dir.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hub = TestHub::start(&path, &[TO_CLOUD, TO_B], BTreeMap::new()).await;
        let stats = hub.handle.stats();
        assert_eq!(stats.upstream_depth, 10);
        assert_eq!(stats.modules["B"].queue_depth, 10);
        let q = hub.handle.upstream();
        let mut got = Vec::new();
        for _ in 0..10 {
            let m = tokio::time::timeout(WAIT, q.next()).await.unwrap();
            got.push(m.message.properties["i"].parse::<u32>().unwrap());
            q.ack(m.seq).await.unwrap();
        }
        assert_eq!(
            got,
            (0..20).step_by(2).collect::<Vec<_>>(),
            "in publish order"
        );
        // B (never connected before) subscribes and gets its 10 in order.
        let mut b = connect(&hub, "B").await;
        b.subscribe(&inputs_filter("B")).await;
        let mut got = Vec::new();
        for _ in 0..10 {
            let p = b.next_publish().await.unwrap();
            got.push(
                String::from_utf8(p.payload.to_vec())
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
        assert_eq!(got, (1..20).step_by(2).collect::<Vec<_>>());
        b.stop().await;
        hub.stop().await;
    });
}

#[tokio::test]
async fn subscriptions_of_clean_session_0_survive_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_B], BTreeMap::new()).await;
    let mut b = connect(&hub, "B").await;
    b.subscribe(&inputs_filter("B")).await;
    b.subscribe("$iothub/twin/res/#").await;
    b.stop().await;
    // A message for B while B is away.
    let mut a = connect(&hub, "A").await;
    a.client
        .publish(
            events_topic("A", "%24.on=out1"),
            QoS::AtLeastOnce,
            false,
            "while-away",
        )
        .await
        .unwrap();
    a.puback().await.unwrap();
    a.stop().await;
    hub.stop().await;

    let hub = TestHub::start(dir.path(), &[TO_B], BTreeMap::new()).await;
    // B comes back like the Python SDK: clean session 0, and no SUBSCRIBE.
    let mut b = TestClient::spawn(module_options(&hub, "B", Some(hub.client_config())));
    assert_eq!(
        b.connected().await,
        Ok(true),
        "session present after the restart"
    );
    let p = b.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"while-away");
    let mut a = connect(&hub, "A").await;
    a.client
        .publish(
            events_topic("A", "%24.on=out1"),
            QoS::AtLeastOnce,
            false,
            "after",
        )
        .await
        .unwrap();
    a.puback().await.unwrap();
    let p = b.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"after");
    // The twin subscription came back too.
    b.client
        .publish("$iothub/twin/GET/?$rid=7", QoS::AtLeastOnce, false, " ")
        .await
        .unwrap();
    let p = b.next_publish().await.unwrap();
    assert!(
        p.topic.starts_with("$iothub/twin/res/200/?$rid=7"),
        "{}",
        p.topic
    );
    b.stop().await;
    a.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn clean_session_1_discards_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_B], BTreeMap::new()).await;
    let mut b = connect(&hub, "B").await;
    b.subscribe(&inputs_filter("B")).await;
    b.stop().await;
    let mut o = module_options(&hub, "B", Some(hub.client_config()));
    o.set_clean_session(true);
    let mut b = TestClient::spawn(o);
    assert_eq!(b.connected().await, Ok(false));
    b.stop().await;
    // Back with clean session 0: nothing kept, so a routed message is not delivered until it subscribes.
    let mut b = TestClient::spawn(module_options(&hub, "B", Some(hub.client_config())));
    assert_eq!(b.connected().await, Ok(false));
    let mut a = connect(&hub, "A").await;
    a.client
        .publish(
            events_topic("A", "%24.on=out1"),
            QoS::AtLeastOnce,
            false,
            "queued",
        )
        .await
        .unwrap();
    a.puback().await.unwrap();
    assert_eq!(hub.handle.stats().modules["B"].queue_depth, 1);
    b.subscribe(&inputs_filter("B")).await;
    let p = b.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"queued");
    a.stop().await;
    b.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn unacknowledged_deliveries_are_resent_with_dup_and_at_most_n_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(dir.path(), parse_routes(&[TO_B]), BTreeMap::new(), |c| {
        c.max_inflight_per_client = 2;
    })
    .await;
    let mut a = connect(&hub, "A").await;
    for i in 0..4 {
        a.client
            .publish(
                events_topic("A", "%24.on=out1"),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .unwrap();
        a.puback().await.unwrap();
    }
    let mut o = module_options(&hub, "B", Some(hub.client_config()));
    o.set_manual_acks(true);
    let mut b = TestClient::spawn(o);
    b.connected().await.unwrap();
    b.subscribe(&inputs_filter("B")).await;
    let p0 = b.next_publish().await.unwrap();
    let p1 = b.next_publish().await.unwrap();
    assert_eq!((&p0.payload[..], &p1.payload[..]), (&b"0"[..], &b"1"[..]));
    assert!(!p0.dup && !p1.dup);
    // The limit is 2: nothing more until one is acknowledged.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.next_publish())
            .await
            .is_err()
    );
    b.client.ack(&p0).await.unwrap();
    let p2 = b.next_publish().await.unwrap();
    assert_eq!(&p2.payload[..], b"2");
    // Leave without acknowledging 1 and 2: they come again, marked DUP.
    b.stop().await;
    let mut o = module_options(&hub, "B", Some(hub.client_config()));
    o.set_manual_acks(true);
    let mut b = TestClient::spawn(o);
    assert_eq!(b.connected().await, Ok(true));
    let r1 = b.next_publish().await.unwrap();
    let r2 = b.next_publish().await.unwrap();
    assert_eq!((&r1.payload[..], &r2.payload[..]), (&b"1"[..], &b"2"[..]));
    assert!(r1.dup && r2.dup);
    b.client.ack(&r1).await.unwrap();
    b.client.ack(&r2).await.unwrap();
    let r3 = b.next_publish().await.unwrap();
    assert_eq!(&r3.payload[..], b"3");
    assert!(!r3.dup);
    b.client.ack(&r3).await.unwrap();
    let h = hub.handle.clone();
    eventually("B's queue drains", || {
        h.stats().modules["B"].queue_depth == 0
    })
    .await;
    assert_eq!(hub.handle.stats().modules["B"].messages_out, 4);
    a.stop().await;
    b.stop().await;
    hub.stop().await;
}

/// The child half of `acknowledged_messages_survive_kill_9`: a hub and a publisher in this process,
/// printing `ACK n` after the n-th PUBACK, until it is killed.
#[test]
#[ignore = "started as a child process by acknowledged_messages_survive_kill_9"]
fn kill_9_child() {
    let Ok(dir) = std::env::var("EDGE_DEV_HUB_CHILD_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hub = TestHub::start(std::path::Path::new(&dir), &[TO_CLOUD], BTreeMap::new()).await;
        let mut a = connect(&hub, "A").await;
        let client = a.client.clone();
        tokio::spawn(async move {
            for i in 0..100_000u32 {
                if client
                    .publish(
                        events_topic("A", &format!("%24.on=up&i={i}")),
                        QoS::AtLeastOnce,
                        false,
                        format!("{i}"),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut acked = 0u32;
        // Bounded: the parent kills this process long before.
        while acked < 100_000 {
            if a.puback().await.is_err() {
                break;
            }
            acked += 1;
            println!("ACK {acked}");
        }
    });
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDGE_DEV_HUB_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = 0u32;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("ACK ") {
            seen = n.trim().parse().unwrap();
            if seen >= 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        seen >= 300,
        "the child acknowledged only {seen} messages before it ended"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hub = TestHub::start(dir.path(), &[TO_CLOUD], BTreeMap::new()).await;
        let depth = hub.handle.stats().upstream_depth;
        assert!(
            depth >= u64::from(seen),
            "{depth} stored < {seen} acknowledged"
        );
        let q = hub.handle.upstream();
        let mut got = Vec::new();
        for _ in 0..depth {
            let m = tokio::time::timeout(WAIT, q.next()).await.unwrap();
            got.push(m.message.properties["i"].parse::<u32>().unwrap());
            q.ack(m.seq).await.unwrap();
        }
        // PUBACKs come in publish order: the first `seen` messages are all there, in order.
        assert_eq!(&got[..seen as usize], &(0..seen).collect::<Vec<_>>()[..]);
        hub.stop().await;
    });
}

#[tokio::test]
async fn expired_messages_are_swept_from_queues_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    let routes = vec![edge_routes::Route::parse(
        "toC",
        r#"FROM /messages/modules/A/outputs/c INTO BrokeredEndpoint("/modules/C/inputs/in")"#,
    )
    .unwrap()
    .with_options(None, Some(1))
    .unwrap()];
    let hub = TestHub::start_with(dir.path(), routes, BTreeMap::new(), |c| {
        c.sweep_interval_secs = 1
    })
    .await;
    let mut a = connect(&hub, "A").await;
    a.client
        .publish(events_topic("A", "%24.on=c"), QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    a.puback().await.unwrap();
    assert_eq!(hub.handle.stats().modules["C"].queue_depth, 1);
    let h = hub.handle.clone();
    eventually("C's expired message is swept", || {
        let s = h.stats();
        s.modules["C"].queue_depth == 0 && s.expired == 1
    })
    .await;
    a.stop().await;
    hub.stop().await;
    // Gone from disk too.
    let hub = TestHub::start(dir.path(), &[], BTreeMap::new()).await;
    assert_eq!(hub.handle.stats().modules["C"].queue_depth, 0);
    hub.stop().await;
}

#[tokio::test]
async fn messages_for_an_input_without_subscription_wait_without_blocking_other_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let routes = [
        (
            "one",
            r#"FROM /messages/modules/A/outputs/one INTO BrokeredEndpoint("/modules/B/inputs/in1")"#,
        ),
        (
            "two",
            r#"FROM /messages/modules/A/outputs/two INTO BrokeredEndpoint("/modules/B/inputs/in2")"#,
        ),
    ];
    let hub = TestHub::start_with(dir.path(), parse_routes(&routes), BTreeMap::new(), |c| {
        c.max_inflight_per_client = 1;
    })
    .await;
    let mut a = connect(&hub, "A").await;
    for i in 0..100 {
        a.client
            .publish(
                events_topic("A", "%24.on=one"),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .unwrap();
    }
    a.client
        .publish(
            events_topic("A", "%24.on=two"),
            QoS::AtLeastOnce,
            false,
            "two",
        )
        .await
        .unwrap();
    for _ in 0..101 {
        a.puback().await.unwrap();
    }
    let mut b = connect(&hub, "B").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/B/inputs/in2/#"))
        .await;
    let p = b.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"two");
    b.subscribe(&format!("devices/{DEVICE}/modules/B/inputs/in1/#"))
        .await;
    for i in 0..100 {
        let p = b.next_publish().await.unwrap();
        assert_eq!(p.payload, format!("{i}").as_bytes());
    }
    a.stop().await;
    b.stop().await;
    hub.stop().await;
}

/// Connects module `module`, retrying while the hub refuses (it does while its store cannot write).
async fn connect_retrying(hub: &TestHub, module: &str) -> TestClient {
    for _ in 0..300 {
        let mut c = TestClient::spawn(module_options(hub, module, Some(hub.client_config())));
        if c.connected().await.is_ok() {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("module {module} could not connect for 30 s");
}

/// The chaos harness's disk-full failure (its CI run: nothing went upstream after the disk had room
/// again, and a panic in the log). The `$upstream` sink removed each delivered message by committing
/// from its own thread, beside the store's writer; when it committed between the writer's failed
/// commit and the writer's reopen of the file, redb panicked on its own assertion and took the
/// `$upstream` task with it. Here a module publishes to `$upstream` while a consumer takes and removes
/// messages, the disk fills and frees again: every publish that was acknowledged reaches the
/// consumer, and the consumer (the sink) never dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_keeps_flowing_after_the_disk_fills_and_frees() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(disk) = SmallDisk::mount_at(&data, "6m") else {
        return;
    };
    let hub = TestHub::start(dir.path(), &[TO_CLOUD], BTreeMap::new()).await;

    // the sink: take, remove (retrying while the store refuses), record
    let q = hub.handle.upstream();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut got = std::collections::HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(m) = tokio::time::timeout(Duration::from_millis(200), q.next()).await else {
                    continue;
                };
                while q.ack(m.seq).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                got.insert(m.message.properties["i"].parse::<u32>().unwrap());
            }
            got
        })
    };

    // the module: one QoS 1 publish at a time; a publish counts once its PUBACK came
    let publisher = {
        let stop = stop.clone();
        let hub_ref = &hub;
        async move {
            let mut acked = Vec::new();
            let mut a = connect_retrying(hub_ref, "A").await;
            let body = vec![b'x'; 4096];
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let topic = events_topic("A", &format!("%24.on=up&i={i}"));
                let sent = a
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, body.clone())
                    .await;
                match (
                    sent,
                    tokio::time::timeout(Duration::from_secs(2), a.puback()).await,
                ) {
                    (Ok(()), Ok(Ok(_))) => acked.push(i),
                    // refused (the hub closes the connection without PUBACK): connect again
                    _ => {
                        drop(a);
                        a = connect_retrying(hub_ref, "A").await;
                    }
                }
            }
            a.stop().await;
            acked
        }
    };
    let timeline = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let filler = disk.fill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::fs::remove_file(&filler).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (acked, ()) = tokio::join!(publisher, timeline);
    assert!(!acked.is_empty());
    // drain: the sink goes on until every acknowledged publish arrived (bounded)
    let rest = hub.handle.upstream();
    let got = sink.await.expect("the $upstream sink died");
    let mut got = got;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.iter().any(|i| !got.contains(i)) {
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledged publishes never reached upstream: {:?}",
            acked
                .iter()
                .filter(|i| !got.contains(i))
                .take(10)
                .collect::<Vec<_>>()
        );
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(500), rest.next()).await {
            rest.ack(m.seq).await.unwrap();
            got.insert(m.message.properties["i"].parse::<u32>().unwrap());
        }
    }
    hub.stop().await;
}
