//! The dashboard fed as `edge-dev up` feeds it, through a real hub: a module's window average goes to
//! `$upstream`; the upstream sink delivers it and the dashboard shows it; a sink whose deliveries fail
//! shows the link as retrying while the message stays queued; `--offline`'s hold shows it without
//! delivering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use edge_dev::dashboard::{Dashboard, DashboardOptions, LinkState};
use edge_dev::upstream::{self, UpstreamSink};
use edge_hub::test_util::*;
use rumqttc::QoS;
use tokio::sync::{broadcast, watch};

const ROUTES: &[(&str, &str)] = &[("up", "FROM /messages/modules/A/outputs/* INTO $upstream")];
const WINDOW_END: &str = "2099-01-01T00:00:02.000Z"; // ahead: kept whatever the retention

async fn send_average(hub: &TestHub) {
    let mut a = connect(hub, "A").await;
    let topic = format!("devices/{DEVICE}/modules/A/messages/events/%24.on=AvgTemp&timestamp=2099-01-01T00%3A00%3A02.000Z");
    a.client
        .publish(topic, QoS::AtLeastOnce, false, r#"{"avg":37.5}"#)
        .await
        .unwrap();
    a.puback().await.unwrap();
    a.stop().await;
}

fn dashboard(hub: &TestHub, offline: bool) -> Dashboard {
    let h = hub.handle.clone();
    let status = Arc::new(Mutex::new(BTreeMap::new()));
    Dashboard::new(
        DashboardOptions {
            offline,
            ..Default::default()
        },
        Arc::new(move || h.stats()),
        status,
    )
}

fn points(d: &Dashboard) -> Vec<(String, String, f64)> {
    d.snapshot()
        .devices
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| (p.device.clone(), p.window_end.clone(), p.value))
        })
        .collect()
}

#[tokio::test]
async fn delivered_averages_reach_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), ROUTES, BTreeMap::new()).await;
    let dash = dashboard(&hub, false);
    let (tap, _) = broadcast::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let follow_stop = stop_rx.clone();
    let follower = tokio::spawn(dash.clone().follow(tap.subscribe(), async move {
        let mut s = follow_stop;
        let _ = s.wait_for(|v| *v).await;
    }));
    let mut sink = UpstreamSink::new(Some(&dir.path().join("up.jsonl")), None, false).unwrap();
    sink.tap = Some(tap);
    let (link_tx, link_rx) = watch::channel(None);
    sink.link = Some(link_tx);
    dash.watch_link(link_rx);
    let (_online_tx, online_rx) = watch::channel(true);
    let run = tokio::spawn(upstream::run(
        hub.handle.upstream(),
        sink,
        stop_rx,
        online_rx,
    ));

    send_average(&hub).await;
    eventually("the average on the dashboard", || {
        points(&dash) == vec![("all".to_string(), WINDOW_END.to_string(), 37.5)]
    })
    .await;
    eventually("the queue emptied", || {
        hub.handle.stats().upstream_depth == 0
    })
    .await;
    assert_eq!(dash.health().link.state, LinkState::Online);

    let _ = stop_tx.send(true);
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, follower).await.unwrap().unwrap();
    hub.stop().await;
}

#[tokio::test]
async fn failing_deliveries_show_the_link_retrying() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("no /dev/full here: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), ROUTES, BTreeMap::new()).await;
    let dash = dashboard(&hub, false);
    // Every write to /dev/full fails (no space left on device): the sink cannot deliver.
    let mut sink = UpstreamSink::new(Some(std::path::Path::new("/dev/full")), None, false).unwrap();
    let (link_tx, link_rx) = watch::channel(None);
    sink.link = Some(link_tx);
    dash.watch_link(link_rx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (_online_tx, online_rx) = watch::channel(true);
    let run = tokio::spawn(upstream::run(
        hub.handle.upstream(),
        sink,
        stop_rx,
        online_rx,
    ));

    send_average(&hub).await;
    eventually("the link retrying", || {
        dash.health().link.state == LinkState::Retrying
    })
    .await;
    let link = dash.health().link;
    assert_eq!(link.upstream_depth, 1, "the message stays queued");
    assert!(
        link.error
            .as_deref()
            .unwrap_or_default()
            .contains("/dev/full"),
        "{link:?}"
    );

    let _ = stop_tx.send(true);
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    hub.stop().await;
}

/// The upstream link switched off (`--offline`, or `edge-dev upstream offline` at run time): messages are
/// shown on the dashboard but stay queued; switched on, they are delivered, in order, and the queue empties.
#[tokio::test]
async fn offline_shows_without_delivering_and_online_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), ROUTES, BTreeMap::new()).await;
    let dash = dashboard(&hub, true);
    let (tap, _) = broadcast::channel(16);
    let rx = tap.subscribe();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (online_tx, online_rx) = watch::channel(false);
    dash.watch_online(online_rx.clone());
    let log = dir.path().join("up.jsonl");
    let mut sink = UpstreamSink::new(Some(&log), None, false).unwrap();
    sink.tap = Some(tap);
    let run = tokio::spawn(upstream::run(
        hub.handle.upstream(),
        sink,
        stop_rx.clone(),
        online_rx,
    ));
    let follower = tokio::spawn(dash.clone().follow(rx, async move {
        let mut s = stop_rx;
        let _ = s.wait_for(|v| *v).await;
    }));

    send_average(&hub).await;
    eventually("the average on the dashboard", || points(&dash).len() == 1).await;
    let health = dash.health();
    assert_eq!(health.link.state, LinkState::Offline);
    assert_eq!(health.link.upstream_depth, 1, "held, not delivered");
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "");

    online_tx.send_replace(true);
    eventually("delivered once the link is up", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    })
    .await;
    eventually("the queue empties", || {
        dash.health().link.upstream_depth == 0
    })
    .await;
    assert_eq!(dash.health().link.state, LinkState::Online);

    let _ = stop_tx.send(true);
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, follower).await.unwrap().unwrap();
    hub.stop().await;
}

/// The link switched off and on many times while messages keep coming: every message is delivered
/// in the end. (A message taken from the queue in the same instant as the link came back used to be
/// shown as "offline" and, with everything shown before it, never given back: they stayed queued until
/// edge-dev restarted. Found by the chaos harness's upstream outage.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_flowing_across_many_offline_online_flips() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), ROUTES, BTreeMap::new()).await;
    let (tap, _keep) = broadcast::channel(4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (online_tx, online_rx) = watch::channel(false);
    let log = dir.path().join("up.jsonl");
    let mut sink = UpstreamSink::new(Some(&log), None, false).unwrap();
    sink.tap = Some(tap);
    let run = tokio::spawn(upstream::run(
        hub.handle.upstream(),
        sink,
        stop_rx,
        online_rx,
    ));

    const N: usize = 300;
    let mut a = connect(&hub, "A").await;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let topic = format!("devices/{DEVICE}/modules/A/messages/events/%24.on=Out");
            a.client
                .publish(topic, QoS::AtLeastOnce, false, format!(r#"{{"i":{i}}}"#))
                .await
                .unwrap();
            a.puback().await.unwrap();
        }
        a.stop().await;
    });
    // flip the link while the messages stream in
    for flip in 0..60 {
        online_tx.send_replace(flip % 2 == 1);
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    }
    tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    online_tx.send_replace(true);
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    eventually("every message delivered once the link stays up", || {
        lines() >= N
    })
    .await;
    eventually("the queue empties", || hub.handle.upstream().depth() == 0).await;
    let _ = stop_tx.send(true);
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    hub.stop().await;
}
