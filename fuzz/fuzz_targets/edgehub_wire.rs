//! edgeHub's wire formats, both sides: topics, property bags, request ids, SAS tokens, connection
//! strings and MQTT usernames (`edge_client::wire`, which the module client and the hub in
//! `edge-dev` share), and the hub's topic filter rules (`edge_hub`).
//!
//! Input: a structured case (`arbitrary`). Checks: no panic, and what one side writes the other
//! side reads back the same (topics, bags, request ids, tokens, usernames).
#![no_main]

use arbitrary::Arbitrary;
use edge_client::wire::{self, sas, topics, Message};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Case {
    /// A property bag as it arrives in a topic.
    Bag(String),
    /// A topic a module or device publishes, seen from the hub.
    ClientPublish {
        topic: String,
        device: String,
        module: Option<String>,
    },
    /// A topic the hub delivers to a module, seen from the module.
    Delivery {
        topic: String,
        device: String,
        module: String,
    },
    /// Topics written by one side and read by the other.
    Written {
        device: String,
        module: String,
        input: String,
        bag: String,
        rid: String,
        status: u16,
        version: Option<u64>,
        method: String,
    },
    Username(String),
    UsernameWritten {
        hub: String,
        device: String,
        module: Option<String>,
        api_version: String,
    },
    ConnectionString(String),
    SasToken {
        token: String,
        key: String,
        resource: String,
        now: u64,
    },
    SasWritten {
        resource: String,
        key: Vec<u8>,
        expiry: u64,
    },
    Quote(String),
    /// The hub's subscription rules.
    Filter {
        filter: String,
        topic: String,
        device: String,
        module: String,
    },
}

/// Neither empty nor holding a character that the topic layout uses as a separator.
fn plain(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '?', '&', '#', '+', '\0'])
}

fn bag_round_trip(bag: &str) {
    let mut m = Message::new(&b"{}"[..]);
    if wire::decode_property_bag(bag, &mut m).is_err() {
        return;
    }
    let written = wire::encode_property_bag(&m);
    let mut again = Message::new(&b"{}"[..]);
    wire::decode_property_bag(&written, &mut again)
        .unwrap_or_else(|e| panic!("a bag we wrote ({written:?}) does not decode: {e}"));
    assert_eq!(
        wire::encode_property_bag(&again),
        written,
        "a bag we wrote does not decode to the same message"
    );
    assert!(
        !written.contains('/'),
        "a bag we wrote holds a '/': {written:?}"
    );
    let _ = m.size();
}

fuzz_target!(|case: Case| match case {
    Case::Bag(bag) => bag_round_trip(&bag),
    Case::ClientPublish {
        topic,
        device,
        module,
    } => {
        if let Ok(topics::ClientPublish::Events { bag }) =
            topics::parse_client_publish(&topic, &device, module.as_deref())
        {
            assert!(!bag.contains('/'));
            bag_round_trip(&bag);
        }
    }
    Case::Delivery {
        topic,
        device,
        module,
    } => {
        let _ = topics::parse_module_input(&topic, &device, &module);
        let _ = topics::parse_twin_response(&topic);
        let _ = topics::parse_desired_patch(&topic);
        let _ = topics::parse_method_request(&topic);
        let _ = topics::parse_query_param(&topic, "$rid");
    }
    Case::Written {
        device,
        module,
        input,
        bag,
        rid,
        status,
        version,
        method,
    } => {
        let mut m = Message::new(&b"x"[..]);
        if wire::decode_property_bag(&bag, &mut m).is_err() {
            return;
        }
        let bag = wire::encode_property_bag(&m);
        if plain(&device) && plain(&module) {
            // module -> hub: an output message
            let t = topics::module_events(&device, &module, &bag);
            assert_eq!(
                topics::parse_client_publish(&t, &device, Some(&module)),
                Ok(topics::ClientPublish::Events { bag: bag.clone() }),
                "{t}"
            );
            let t = topics::device_events(&device, &bag);
            assert_eq!(
                topics::parse_client_publish(&t, &device, None),
                Ok(topics::ClientPublish::Events { bag: bag.clone() }),
                "{t}"
            );
            // hub -> module: a delivery to an input
            if plain(&input) {
                let t = topics::module_input(&device, &module, &input, &bag);
                assert_eq!(
                    topics::parse_module_input(&t, &device, &module),
                    Some((input.clone(), bag.clone())),
                    "{t}"
                );
            }
        }
        if !rid.is_empty() {
            // module -> hub requests
            let t = topics::twin_get(&rid);
            assert_eq!(
                topics::parse_client_publish(&t, &device, Some(&module)),
                Ok(topics::ClientPublish::TwinGet { rid: rid.clone() }),
                "{t}"
            );
            let t = topics::twin_reported(&rid);
            assert_eq!(
                topics::parse_client_publish(&t, &device, Some(&module)),
                Ok(topics::ClientPublish::TwinReported { rid: rid.clone() }),
                "{t}"
            );
            let t = topics::method_response(status, &rid);
            assert_eq!(
                topics::parse_client_publish(&t, &device, Some(&module)),
                Ok(topics::ClientPublish::MethodResponse {
                    status,
                    rid: rid.clone()
                }),
                "{t}"
            );
            // hub -> module answers and requests
            let t = topics::twin_response(status, &rid, version);
            assert_eq!(
                topics::parse_twin_response(&t),
                Some((status, rid.clone(), version)),
                "{t}"
            );
            if plain(&method) {
                let t = topics::method_request(&method, &rid);
                assert_eq!(
                    topics::parse_method_request(&t),
                    Some((method.clone(), rid.clone())),
                    "{t}"
                );
            }
        }
        if let Some(v) = version {
            assert_eq!(
                topics::parse_desired_patch(&topics::desired_patch(v)),
                Some(Some(v))
            );
        }
    }
    Case::Username(u) => {
        if let Ok(p) = wire::parse_username(&u) {
            assert!(!p.hub.is_empty() && !p.device.is_empty());
        }
    }
    Case::UsernameWritten {
        hub,
        device,
        module,
        api_version,
    } => {
        if !plain(&hub) || !plain(&device) || !module.as_deref().is_none_or(plain) {
            return;
        }
        if api_version.contains(['&', '%', '#']) {
            return;
        }
        let u = wire::username(&hub, &device, module.as_deref(), &api_version);
        let p = wire::parse_username(&u).unwrap_or_else(|e| panic!("{u:?}: {e}"));
        assert_eq!(
            (p.hub, p.device, p.module, p.api_version),
            (hub, device, module, Some(api_version)),
            "{u}"
        );
    }
    Case::ConnectionString(s) => {
        if let Ok(cs) = wire::ConnectionString::parse(&s) {
            let _ = cs.connect_host();
            // Debug does not depend on the secrets (the key may also appear in other fields)
            let mut other = cs.clone();
            other.shared_access_key = other.shared_access_key.map(|_| "other".into());
            other.shared_access_signature = other.shared_access_signature.map(|_| "other".into());
            assert_eq!(
                format!("{cs:?}"),
                format!("{other:?}"),
                "Debug shows a secret"
            );
        }
    }
    Case::SasToken {
        token,
        key,
        resource,
        now,
    } => {
        if let Ok(t) = sas::SasToken::parse(&token) {
            let _ = t.verify(&key, &resource, now);
        }
    }
    Case::SasWritten {
        resource,
        key,
        expiry,
    } => {
        use base64::Engine as _;
        if key.is_empty() || expiry == 0 {
            return;
        }
        let key = base64::engine::general_purpose::STANDARD.encode(&key);
        let token = sas::generate(&resource, &key, expiry).expect("a base64 key signs");
        let t = sas::SasToken::parse(&token).unwrap_or_else(|e| panic!("{token:?}: {e}"));
        assert_eq!(t.resource, resource);
        assert_eq!(t.expiry, expiry);
        t.verify(&key, &resource, expiry - 1)
            .unwrap_or_else(|e| panic!("a token we signed is refused: {e}"));
        assert!(t.verify(&key, &resource, expiry).is_err(), "expired");
    }
    Case::Quote(s) => {
        assert_eq!(wire::unquote(&wire::quote(&s)).as_deref(), Ok(s.as_str()));
        let _ = wire::unquote(&s);
    }
    Case::Filter {
        filter,
        topic,
        device,
        module,
    } => {
        let matched = edge_hub::filter_matches(&filter, &topic);
        let valid = edge_hub::valid_filter(&filter);
        let allowed = edge_hub::may_subscribe(&filter, &device, &module);
        if allowed.is_ok() {
            assert!(
                valid,
                "{filter:?} may be subscribed but is not a valid filter"
            );
        }
        // a topic (no wildcards) matches itself, unless empty
        if !topic.is_empty() && !topic.contains(['+', '#']) {
            assert!(edge_hub::filter_matches(&topic, &topic), "{topic:?}");
        }
        let _ = matched;
    }
});
