//! Module twins (GET, reported PATCH, desired pushes, persistence) and direct methods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use edge_hub::test_util::*;
use edge_hub::HubError;
use rumqttc::QoS;
use serde_json::{json, Value};

fn manifest() -> BTreeMap<String, Value> {
    let mut d = BTreeMap::new();
    d.insert(
        "A".to_string(),
        json!({"query": "SELECT Avg(\"temp\") INTO AvgTemp FROM temperature GROUP BY TumblingWindow(second,60)"}),
    );
    d
}

async fn twin_get(c: &mut TestClient, rid: &str) -> Value {
    c.client
        .publish(
            format!("$iothub/twin/GET/?$rid={rid}"),
            QoS::AtLeastOnce,
            false,
            " ",
        )
        .await
        .unwrap();
    let p = c.next_publish().await.unwrap();
    assert_eq!(p.topic, format!("$iothub/twin/res/200/?$rid={rid}"));
    serde_json::from_slice(&p.payload).unwrap()
}

#[tokio::test]
async fn twin_get_reported_patch_and_desired_push() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[], manifest()).await;
    let mut a = connect(&hub, "A").await;
    a.subscribe("$iothub/twin/res/#").await;
    a.subscribe("$iothub/twin/PATCH/properties/desired/#").await;

    let doc = twin_get(&mut a, "1").await;
    assert_eq!(doc["desired"]["query"], manifest()["A"]["query"]);
    assert_eq!(doc["desired"]["$version"], 1);
    assert_eq!(doc["reported"], json!({"$version": 1}));

    // Reported patch: merged, version bumped, 204 with the version.
    a.client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=2",
            QoS::AtLeastOnce,
            false,
            json!({"status": "running", "n": {"x": 1, "y": 2}}).to_string(),
        )
        .await
        .unwrap();
    let p = a.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/res/204/?$rid=2&$version=2");
    a.client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=3",
            QoS::AtLeastOnce,
            false,
            json!({"n": {"y": null}}).to_string(),
        )
        .await
        .unwrap();
    let p = a.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/res/204/?$rid=3&$version=3");
    let doc = twin_get(&mut a, "4").await;
    assert_eq!(
        doc["reported"],
        json!({"status": "running", "n": {"x": 1}, "$version": 3})
    );

    // Not JSON: 400, nothing changes.
    a.client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=5",
            QoS::AtLeastOnce,
            false,
            "{not json",
        )
        .await
        .unwrap();
    let p = a.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/res/400/?$rid=5");
    assert_eq!(twin_get(&mut a, "6").await["reported"]["$version"], 3);

    // Desired patch from the hub's API: pushed with "$version" in the body.
    let v = hub
        .handle
        .update_desired("A", json!({"threshold": 38.5}))
        .await
        .unwrap();
    assert_eq!(v, 2);
    let p = a.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    let body: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body, json!({"threshold": 38.5, "$version": 2}));
    let doc = twin_get(&mut a, "7").await;
    assert_eq!(doc["desired"]["threshold"], 38.5);
    assert_eq!(doc["desired"]["$version"], 2);
    assert!(matches!(
        hub.handle.update_desired("nope", json!({})).await,
        Err(HubError::UnknownModule(_))
    ));
    assert!(matches!(
        hub.handle.update_desired("A", json!([1, 2])).await,
        Err(HubError::BadPatch(_))
    ));
    a.stop().await;
    hub.stop().await;

    // After a restart: reported properties are kept; desired is the manifest's again, under a new version.
    let hub = TestHub::start(dir.path(), &[], manifest()).await;
    let mut a = connect(&hub, "A").await;
    let doc = twin_get(&mut a, "8").await;
    assert_eq!(
        doc["reported"],
        json!({"status": "running", "n": {"x": 1}, "$version": 3})
    );
    assert_eq!(doc["desired"]["query"], manifest()["A"]["query"]);
    assert!(doc["desired"].get("threshold").is_none());
    assert_eq!(doc["desired"]["$version"], 3);
    // A module without manifest twin gets an empty one.
    let mut b = connect(&hub, "B").await;
    b.subscribe("$iothub/twin/res/#").await;
    let doc = twin_get(&mut b, "1").await;
    assert_eq!(
        doc,
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );
    a.stop().await;
    b.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn direct_methods_are_invoked_answered_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[], BTreeMap::new()).await;
    // Not connected / unknown.
    assert!(matches!(
        hub.handle
            .invoke_method("B", "reset", json!({}), Duration::from_secs(1))
            .await,
        Err(HubError::NotConnected { .. })
    ));
    assert!(matches!(
        hub.handle
            .invoke_method("Z", "reset", json!({}), Duration::from_secs(1))
            .await,
        Err(HubError::UnknownModule(_))
    ));
    let mut b = connect(&hub, "B").await;
    b.subscribe("$iothub/methods/POST/#").await;
    let h = hub.handle.clone();
    let call = tokio::spawn(async move {
        h.invoke_method("B", "reset", json!({"hard": true}), WAIT)
            .await
    });
    let p = b.next_publish().await.unwrap();
    let (name, rid) = edge_client::wire::topics::parse_method_request(&p.topic).unwrap();
    assert_eq!(name, "reset");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.payload).unwrap(),
        json!({"hard": true})
    );
    b.client
        .publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            false,
            json!({"done": 1}).to_string(),
        )
        .await
        .unwrap();
    let (status, payload) = call.await.unwrap().unwrap();
    assert_eq!((status, payload), (200, json!({"done": 1})));

    // No answer: timeout error.
    let r = hub
        .handle
        .invoke_method("B", "slow", json!(null), Duration::from_millis(300))
        .await;
    assert!(matches!(r, Err(HubError::MethodTimeout { .. })), "{r:?}");
    // A late answer to the timed-out call is ignored; the connection stays up.
    let p = b.next_publish().await.unwrap();
    let (_, rid) = edge_client::wire::topics::parse_method_request(&p.topic).unwrap();
    b.client
        .publish(
            format!("$iothub/methods/res/500/?$rid={rid}"),
            QoS::AtLeastOnce,
            false,
            "",
        )
        .await
        .unwrap();
    b.puback().await.unwrap();
    b.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn reported_changes_are_routed_as_twin_change_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let routes = [
        ("twins", "FROM /twinChangeNotifications INTO $upstream"),
        (
            "msgs",
            r#"FROM /messages/* INTO BrokeredEndpoint("/modules/B/inputs/all")"#,
        ),
    ];
    let hub = TestHub::start(dir.path(), &routes, BTreeMap::new()).await;
    let mut a = connect(&hub, "A").await;
    a.subscribe("$iothub/twin/res/#").await;
    a.client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            QoS::AtLeastOnce,
            false,
            json!({"fw": "1.2"}).to_string(),
        )
        .await
        .unwrap();
    let p = a.next_publish().await.unwrap();
    assert_eq!(p.topic, "$iothub/twin/res/204/?$rid=1&$version=2");
    let q = hub.handle.upstream();
    let m = tokio::time::timeout(WAIT, q.next()).await.unwrap();
    assert_eq!(m.module, "A");
    assert_eq!(m.message.connection_module_id.as_deref(), Some("A"));
    assert_eq!(m.message.connection_device_id.as_deref(), Some(DEVICE));
    assert_eq!(
        serde_json::from_slice::<Value>(&m.message.body).unwrap(),
        json!({"fw": "1.2"})
    );
    q.ack(m.seq).await.unwrap();
    // `/messages/*` takes messages, not twin changes.
    assert_eq!(hub.handle.stats().modules["B"].queue_depth, 0);
    a.stop().await;
    hub.stop().await;
}
