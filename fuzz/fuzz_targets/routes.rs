//! edgeHub's route grammar (`edge_routes`): parse, print, parse again, and evaluate against
//! arbitrary messages.
//!
//! Input: `route text \0 message body \0 property bag \0 source`, the last three optional: the
//! body is evaluated by `$body` conditions, the bag (edgeHub's wire form, `k=v&$.ct=...`) gives
//! the application and system properties, the source byte picks where the message came from.
//!
//! Checks: no panic (conditions nest at most 128 levels; deeper is an error); a route that
//! parses prints as text that parses back to the same route; evaluation never panics, the table
//! (with the template's routes) takes a message through a route only if the route alone matches.
#![no_main]

use std::collections::BTreeMap;

use edge_routes::{MessageSource, Route, RouteMessage, RouteTable};
use libfuzzer_sys::fuzz_target;

const TEMPLATE_ROUTES: [(&str, &str); 2] = [
    (
        "mqttserverToAggregator",
        "FROM /messages/modules/MqttServerModule/outputs/output1 INTO BrokeredEndpoint(\"/modules/AggregatorModule/inputs/temperature\")",
    ),
    (
        "aggregatorToCloud",
        "FROM /messages/modules/AggregatorModule/* INTO $upstream",
    ),
];

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0);
    let Ok(text) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let body = parts
        .next()
        .unwrap_or(br#"{"temp": 38.5, "deviceId": "bed-7"}"#);
    let bag = String::from_utf8_lossy(
        parts
            .next()
            .unwrap_or(b"$.ct=application%2Fjson&$.ce=utf-8"),
    );
    let source = parts.next().and_then(|s| s.first().copied()).unwrap_or(0);

    let Ok(route) = Route::parse("fuzzed", text) else {
        return;
    };
    let printed = route.to_string();
    let again = Route::parse("fuzzed", &printed)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(
        again, route,
        "{text:?} printed as {printed:?} parses to another route"
    );
    assert_eq!(again.to_string(), printed, "printing is not stable");
    for p in [0u8, 9] {
        let _ = route.clone().with_options(Some(p), Some(60));
    }

    let mut msg = edge_client::wire::Message::new(body.to_vec());
    if edge_client::wire::decode_property_bag(&bag, &mut msg).is_err() {
        return;
    }
    let system: BTreeMap<String, String> = msg.system_properties();
    let source = match source % 5 {
        0 => MessageSource::Module {
            module: "MqttServerModule",
            output: "output1",
        },
        1 => MessageSource::Module {
            module: "AggregatorModule",
            output: "",
        },
        2 => MessageSource::Device,
        3 => MessageSource::TwinChangeNotification {
            module: Some("AggregatorModule"),
        },
        _ => MessageSource::TwinChangeNotification { module: None },
    };
    let m = RouteMessage {
        source,
        system_properties: &system,
        properties: &msg.properties,
        body: &msg.body,
    };
    let alone = route.matches(&m);
    let mut all: Vec<Route> = TEMPLATE_ROUTES
        .iter()
        .map(|(n, t)| Route::parse(n, t).expect("the template's routes parse"))
        .collect();
    all.push(route.clone());
    let table = RouteTable::new(all).expect("distinct names");
    let taken = table.evaluate(&m);
    if taken.iter().any(|r| r.name == "fuzzed") {
        assert!(
            alone,
            "the table took a route that does not match on its own"
        );
    }
    if let Some(c) = &route.condition {
        if route.source.matches(&source) {
            assert_eq!(
                c.matches(&m),
                alone,
                "the condition alone disagrees with the route"
            );
        }
    }
});
