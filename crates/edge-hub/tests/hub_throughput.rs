//! Throughput of durable QoS 1 publishes (group commit). Ignored by default; measure with
//! `cargo test -p edge-hub --release --test hub_throughput -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use edge_hub::test_util::*;
use rumqttc::QoS;

async fn run(clients: usize, per_client: usize, size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let routes = [("toCloud", "FROM /messages/* INTO $upstream")];
    let hub = TestHub::start(dir.path(), &routes, BTreeMap::new()).await;
    let modules = ["A", "B", "C"];
    // Client ids are per module: more clients than modules would take each other over.
    assert!(clients <= modules.len());
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..clients {
        let module = modules[i % modules.len()];
        let mut o = module_options(&hub, module, None);
        o.set_inflight(100);
        o.set_clean_session(true);
        let mut c = TestClient::spawn(o);
        c.connected().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let client = c.client.clone();
            let topic = format!("devices/{DEVICE}/modules/{module}/messages/events/%24.on=o");
            tokio::spawn(async move {
                for _ in 0..per_client {
                    client
                        .publish(topic.clone(), QoS::AtLeastOnce, false, vec![b'x'; size])
                        .await
                        .unwrap();
                }
            });
            for _ in 0..per_client {
                c.puback().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let n = clients * per_client;
    assert_eq!(hub.handle.stats().upstream_depth, n as u64);
    println!(
        "{clients} client(s) x {per_client} QoS 1 messages of {size} B, durable: {:.2} s, {:.0} msg/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn durable_publish_throughput() {
    run(1, 5000, 1024).await;
    run(3, 3000, 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn module_to_module_throughput() {
    for inflight in [1usize, 16, 64] {
        let dir = tempfile::tempdir().unwrap();
        let routes = [(
            "toB",
            r#"FROM /messages/modules/A/* INTO BrokeredEndpoint("/modules/B/inputs/in")"#,
        )];
        let hub = TestHub::start_with(dir.path(), parse_routes(&routes), BTreeMap::new(), |c| {
            c.max_inflight_per_client = inflight;
        })
        .await;
        let mut b = TestClient::spawn(module_options(&hub, "B", None));
        b.connected().await.unwrap();
        b.subscribe(&format!("devices/{DEVICE}/modules/B/inputs/#"))
            .await;
        let mut o = module_options(&hub, "A", None);
        o.set_inflight(100);
        let mut a = TestClient::spawn(o);
        a.connected().await.unwrap();
        let n = 5000;
        let start = Instant::now();
        let client = a.client.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                client
                    .publish(
                        format!("devices/{DEVICE}/modules/A/messages/events/%24.on=o"),
                        QoS::AtLeastOnce,
                        false,
                        vec![b'x'; 1024],
                    )
                    .await
                    .unwrap();
            }
        });
        let acks = tokio::spawn(async move {
            for _ in 0..n {
                a.puback().await.unwrap();
            }
            a
        });
        for _ in 0..n {
            b.next_publish().await.unwrap();
        }
        let elapsed = start.elapsed();
        let _a = acks.await.unwrap();
        println!(
            "A -> route -> B, {n} x 1 KiB QoS 1, hub in-flight window {inflight}: {:.2} s, {:.0} msg/s",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
        hub.stop().await;
    }
}
