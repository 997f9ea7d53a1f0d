//! Our own module client (edge-client) against the hub: connect over TLS with a connection string and
//! the dev CA, twin, outputs routed to another module's input, reported and desired properties, methods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use edge_client::wire::Message;
use edge_client::{ClientOptions, Event, Events, Identity, ModuleClient};
use edge_hub::test_util::*;
use serde_json::{json, Value};

async fn module_client(hub: &TestHub, module: &str) -> (ModuleClient, Events) {
    let cs = format!(
        "HostName={HUB};DeviceId={DEVICE};ModuleId={module};SharedAccessKey={};GatewayHostName=localhost",
        key_b64(module)
    );
    let mut id = Identity::from_connection_string(&cs, Some(&hub.pki.ca_path)).unwrap();
    id.port = hub.tls_addr.port();
    ModuleClient::connect(id, ClientOptions::default())
        .await
        .unwrap()
}

async fn next_event(
    events: &mut Events,
    what: &str,
    mut want: impl FnMut(&Event) -> bool,
) -> Event {
    loop {
        let e = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("client ended while waiting for {what}"));
        if want(&e) {
            return e;
        }
    }
}

#[tokio::test]
async fn edge_client_modules_talk_through_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let mut desired = BTreeMap::new();
    desired.insert("B".to_string(), json!({"query": "SELECT 1"}));
    let routes = [(
        "AtoB",
        r#"FROM /messages/modules/A/outputs/* WHERE $body.temp > 37 INTO BrokeredEndpoint("/modules/B/inputs/temperature")"#,
    )];
    let hub = TestHub::start(dir.path(), &routes, desired).await;

    let (b, mut b_events) = module_client(&hub, "B").await;
    let twin = next_event(&mut b_events, "B's twin", |e| matches!(e, Event::Twin(_))).await;
    let Event::Twin(twin) = twin else {
        unreachable!()
    };
    assert_eq!(twin["desired"]["query"], "SELECT 1");

    let (a, _a_events) = module_client(&hub, "A").await;
    let t = a.get_twin().await.unwrap();
    assert_eq!(t["desired"]["$version"], 1);

    // Routed by a $body condition: 36 stays, 38 goes to B.
    a.send_output("output1", Message::json(&json!({"temp": 36})))
        .await
        .unwrap();
    a.send_output(
        "output1",
        Message::json(&json!({"temp": 38})).with_property("unit", "C"),
    )
    .await
    .unwrap();
    let e = next_event(&mut b_events, "an input message", |e| {
        matches!(e, Event::Input(_))
    })
    .await;
    let Event::Input(m) = e else { unreachable!() };
    assert_eq!(m.input, "temperature");
    assert_eq!(
        serde_json::from_slice::<Value>(&m.message.body).unwrap(),
        json!({"temp": 38})
    );
    assert_eq!(m.message.connection_module_id.as_deref(), Some("A"));
    assert_eq!(m.message.connection_device_id.as_deref(), Some(DEVICE));
    assert_eq!(
        m.message.properties.get("unit").map(String::as_str),
        Some("C")
    );
    m.ack();
    assert_eq!(hub.handle.stats().unrouted, 1);

    // Reported properties, then a desired patch from the hub.
    let v = b.update_reported(json!({"running": true})).await.unwrap();
    assert_eq!(v, 2);
    assert_eq!(hub.handle.twin("B").unwrap()["reported"]["running"], true);
    hub.handle
        .update_desired("B", json!({"query": "SELECT 2"}))
        .await
        .unwrap();
    let e = next_event(&mut b_events, "a desired patch", |e| {
        matches!(e, Event::DesiredPatch(_))
    })
    .await;
    let Event::DesiredPatch(p) = e else {
        unreachable!()
    };
    assert_eq!(p["query"], "SELECT 2");
    assert_eq!(p["$version"], 2);

    // A direct method answered by the module.
    let h = hub.handle.clone();
    let call =
        tokio::spawn(async move { h.invoke_method("B", "ping", json!({"n": 1}), WAIT).await });
    let e = next_event(&mut b_events, "a method call", |e| {
        matches!(e, Event::Method(_))
    })
    .await;
    let Event::Method(req) = e else {
        unreachable!()
    };
    assert_eq!(req.name, "ping");
    assert_eq!(req.payload, json!({"n": 1}));
    req.respond(200, json!({"pong": 1}));
    assert_eq!(call.await.unwrap().unwrap(), (200, json!({"pong": 1})));

    a.shutdown().await;
    b.shutdown().await;
    let h = hub.handle.clone();
    eventually("both modules show disconnected", || {
        let s = h.stats();
        !s.modules["A"].connected && !s.modules["B"].connected
    })
    .await;
    hub.stop().await;
}
