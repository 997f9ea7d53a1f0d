//! Turning a device publish into an edgeHub message (pure, no IO).

use std::collections::BTreeMap;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;

use crate::codec::Pub;
use edge_client::wire::Message;

/// Whether edgeHub takes `msg` on `output` by size: body plus properties (as edgeHub counts them,
/// `$.on` included) at most [`edge_client::wire::MAX_MESSAGE_SIZE`]. A message from
/// [`to_edge_message`] has no `$.on` yet: it is set when the message is sent to `output`.
pub fn check_size(msg: &Message, output: &str) -> Result<(), crate::limits::Refused> {
    let on = match &msg.output_name {
        None => "$.on".len() + output.len(),
        Some(_) => 0,
    };
    let size = msg.size() + on;
    let limit = edge_client::wire::MAX_MESSAGE_SIZE;
    if size > limit {
        return Err(crate::limits::message_too_large(size, limit));
    }
    Ok(())
}

/// True when `body` is a JSON document encoded in UTF-8.
pub fn is_json_utf8(body: &[u8]) -> bool {
    match std::str::from_utf8(body) {
        Ok(s) => serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok(),
        Err(_) => false,
    }
}

fn qos_num(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Adds `"deviceId": client_id` to a JSON object body that lacks `deviceId`; other bodies are
/// returned unchanged.
pub fn enrich(body: &Bytes, client_id: &str) -> Bytes {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return body.clone();
    };
    if map.contains_key("deviceId") {
        return body.clone();
    }
    map.insert(
        "deviceId".into(),
        serde_json::Value::String(client_id.to_string()),
    );
    match serde_json::to_vec(&serde_json::Value::Object(map)) {
        Ok(v) => Bytes::from(v),
        Err(_) => body.clone(),
    }
}

/// Builds the edgeHub message for a device publish (its output, `$.on`, is set when it is sent).
pub fn to_edge_message(
    p: &Pub,
    client_id: &str,
    enrich_device_id: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Message {
    let mut body = p.payload.clone();
    let json = is_json_utf8(&body);
    if json && enrich_device_id {
        body = enrich(&body, client_id);
    }
    let mut properties = BTreeMap::new();
    for (k, v) in &p.props.user_properties {
        // Not carried: an empty name, which an edgeHub property bag cannot hold (the hub refuses
        // the bag and closes MqttServerModule's connection, so one such publish stalled every
        // device's forwarding), and a name in the system properties' `$.` namespace, which the
        // hub would read as that system property (`$.on` would pick the output the reading is
        // routed from). Found by fuzz/fuzz_targets/mqtt_decode.rs.
        if k.is_empty() || k.starts_with("$.") {
            continue;
        }
        properties.insert(k.clone(), v.clone());
    }
    properties.insert("mqtt-topic".into(), p.topic.clone());
    properties.insert("mqtt-client-id".into(), client_id.to_string());
    properties.insert("mqtt-qos".into(), qos_num(p.qos).to_string());
    properties.insert("mqtt-retain".into(), p.retain.to_string());
    let (content_type, content_encoding) = if json {
        (
            Some("application/json".to_string()),
            Some("utf-8".to_string()),
        )
    } else {
        (p.props.content_type.clone(), None)
    };
    let correlation_id = p
        .props
        .correlation_data
        .as_ref()
        .and_then(|c| std::str::from_utf8(c).ok())
        .map(str::to_string);
    let mut msg = Message::new(body);
    msg.message_id = Some(uuid::Uuid::new_v4().to_string());
    msg.correlation_id = correlation_id;
    msg.content_type = content_type;
    msg.content_encoding = content_encoding;
    msg.creation_time = Some(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    msg.properties = properties;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PubProps;

    fn publish(topic: &str, body: &[u8], qos: QoS, retain: bool) -> Pub {
        Pub {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(body),
            qos,
            retain,
            dup: false,
            pkid: 1,
            props: PubProps::default(),
        }
    }

    #[test]
    fn json_body_gets_content_type_and_properties() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
            .expect("valid")
            .with_timezone(&chrono::Utc);
        let p = publish(
            "MyTopic",
            br#"{"temp": 38, "timecreated": "x"}"#,
            QoS::ExactlyOnce,
            true,
        );
        let m = to_edge_message(&p, "esp1", false, now);
        assert_eq!(m.body, p.payload);
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(m.properties["mqtt-topic"], "MyTopic");
        assert_eq!(m.properties["mqtt-client-id"], "esp1");
        assert_eq!(m.properties["mqtt-qos"], "2");
        assert_eq!(m.properties["mqtt-retain"], "true");
        assert_eq!(m.creation_time.as_deref(), Some("2026-11-24T08:00:00.000Z"));
        assert!(uuid::Uuid::parse_str(m.message_id.as_deref().unwrap_or_default()).is_ok());
        assert_eq!(m.output_name, None, "set when it is sent");
    }

    #[test]
    fn non_json_and_non_utf8_bodies_have_no_json_type() {
        let now = chrono::Utc::now();
        for body in [&b"38.5"[..], b"hello", b"\xff\xfe{}", b""] {
            let m = to_edge_message(&publish("t", body, QoS::AtMostOnce, false), "c", true, now);
            assert_eq!(&m.body[..], body, "body unchanged");
            if body == b"38.5" {
                // a bare number is a JSON document too
                assert_eq!(m.content_type.as_deref(), Some("application/json"));
            } else {
                assert_eq!(m.content_type, None);
                assert_eq!(m.content_encoding, None);
            }
            assert_eq!(m.properties["mqtt-qos"], "0");
            assert_eq!(m.properties["mqtt-retain"], "false");
        }
    }

    #[test]
    fn the_size_check_counts_the_output_name_as_the_sent_message_has_it() {
        let limit = edge_client::wire::MAX_MESSAGE_SIZE;
        let mut m = to_edge_message(
            &publish("t", b"", QoS::AtLeastOnce, false),
            "c",
            false,
            chrono::Utc::now(),
        );
        let mut sent = m.clone();
        sent.output_name = Some("output1".into());
        // the body that brings the sent message to the limit exactly
        let room = limit - sent.size();
        m.body = Bytes::from(vec![b'x'; room]);
        assert!(check_size(&m, "output1").is_ok());
        m.body = Bytes::from(vec![b'x'; room + 1]);
        assert!(check_size(&m, "output1").is_err());
        sent.body = m.body.clone();
        assert_eq!(sent.size(), limit + 1, "what edgeHub counts");
    }

    #[test]
    fn enrichment_adds_device_id_only_when_missing() {
        let b = enrich(&Bytes::from_static(br#"{"temp":38}"#), "esp1");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["deviceId"], "esp1");
        assert_eq!(v["temp"], 38);
        let original = Bytes::from_static(br#"{"deviceId":"x","temp":1}"#);
        assert_eq!(enrich(&original, "esp1"), original);
        let arr = Bytes::from_static(b"[1,2]");
        assert_eq!(enrich(&arr, "esp1"), arr);
    }

    #[test]
    fn user_properties_never_override_mqtt_ones() {
        let mut p = publish("t", b"x", QoS::AtLeastOnce, false);
        p.props.user_properties = vec![
            ("mqtt-topic".into(), "fake".into()),
            ("site".into(), "home".into()),
        ];
        p.props.correlation_data = Some(Bytes::from_static(b"c1"));
        p.props.content_type = Some("text/plain".into());
        let m = to_edge_message(&p, "c", false, chrono::Utc::now());
        assert_eq!(m.properties["mqtt-topic"], "t");
        assert_eq!(m.properties["site"], "home");
        assert_eq!(m.correlation_id.as_deref(), Some("c1"));
        assert_eq!(m.content_type.as_deref(), Some("text/plain"));
    }

    /// Found by `fuzz/fuzz_targets/mqtt_decode.rs`: an MQTT 5 user property with an empty name
    /// gave a property bag the hub refuses (`=`), and one named `$.on` set the output the hub
    /// routes the reading from.
    #[test]
    fn user_properties_a_property_bag_cannot_carry_are_left_out() {
        let mut p = publish("MyTopic", b"{}", QoS::AtLeastOnce, false);
        p.props.user_properties = vec![
            (String::new(), "x".into()),
            ("$.on".into(), "alerts".into()),
            ("$.mid".into(), "m1".into()),
            ("$x".into(), "kept".into()),
            ("unit".into(), "C".into()),
        ];
        let m = to_edge_message(&p, "bed-7", false, chrono::Utc::now());
        assert!(!m.properties.contains_key(""));
        assert!(!m.properties.keys().any(|k| k.starts_with("$.")));
        assert_eq!(m.properties["$x"], "kept");
        assert_eq!(m.properties["unit"], "C");
        let mut wire = m.clone();
        wire.output_name = Some("output1".into());
        let bag = edge_client::wire::encode_property_bag(&wire);
        let mut back = edge_client::wire::Message::new(wire.body.clone());
        edge_client::wire::decode_property_bag(&bag, &mut back).expect("the hub reads the bag");
        assert_eq!(back, wire);
        assert_eq!(back.output_name.as_deref(), Some("output1"));
    }
}
