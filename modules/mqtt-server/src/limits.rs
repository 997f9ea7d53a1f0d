//! What a device may send so that its messages always fit edgeHub (pure, no IO).
//!
//! Every device publish becomes one edgeHub message whose MQTT topic carries the property bag
//! (`devices/{d}/modules/{m}/messages/events/$.on=output1&...&mqtt-topic=...&mqtt-client-id=...`), every
//! key and value percent-encoded (a byte can take three). An MQTT topic holds at most 65,535 bytes, and
//! edgeHub takes at most 262,144 bytes of body plus properties. A device topic or client id of tens of
//! kilobytes would overflow the first: such a message could never be forwarded, and before these limits
//! it stalled the module's link to edgeHub for every device.
//!
//! So the server bounds each part a device controls, and refuses at the device what cannot fit,
//! before acknowledging anything:
//!
//! | what | limit | refused with (MQTT 5) | MQTT 3.1.1 |
//! |---|---|---|---|
//! | client id | [`MAX_CLIENT_ID`] bytes | CONNACK 0x85 Client Identifier not valid | CONNACK 2 identifier rejected |
//! | user name | [`MAX_USERNAME`] bytes | CONNACK 0x86 Bad User Name or Password | CONNACK 4 bad user name or password |
//! | topic (publish and will) | [`MAX_TOPIC`] bytes | PUBACK/PUBREC 0x90 Topic Name invalid (QoS 0: DISCONNECT 0x90); will: CONNACK 0x90 | connection closed; will: CONNACK 5 |
//! | forwarded MQTT 5 properties (user properties, content type, correlation data) | [`MAX_PROPERTIES`] bytes | PUBACK/PUBREC 0x97 Quota exceeded (QoS 0: DISCONNECT 0x97); will: CONNACK 0x97 | (3.1.1 has none) |
//! | the whole edgeHub message (body, after `deviceId` enrichment, plus all properties) | 262,144 bytes | PUBACK/PUBREC 0x97 Quota exceeded (QoS 0: DISCONNECT 0x97); will: CONNACK 0x97 | connection closed; will: CONNACK 5 |
//!
//! With the first four at their limits, the encoded topic stays below 40 KB whatever the device and
//! module names (IoT Hub allows 128 characters each), so only the last check depends on the message.
//! The payload limit (`max_payload`, a DISCONNECT 0x95 Packet too large) is a setting and comes first.

use crate::codec::{ConnectInfo, PubProps};

/// Longest client id, in bytes. IoT Hub's own device ids are at most 128 characters.
pub const MAX_CLIENT_ID: usize = 256;
/// Longest user name, in bytes.
pub const MAX_USERNAME: usize = 1024;
/// Longest topic name, in bytes (MQTT allows 65,535).
pub const MAX_TOPIC: usize = 4096;
/// Most bytes of MQTT 5 properties that are forwarded as edgeHub properties: each user property
/// counts its key, its value and 2, plus the content type and the correlation data.
pub const MAX_PROPERTIES: usize = 8192;

/// Which limit a device went past; each maps to a reason code and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    ClientId,
    Username,
    Topic,
    Properties,
    /// Body plus properties over edgeHub's message size limit.
    MessageSize,
}

impl Exceeded {
    /// Label of the `refused` metric.
    pub fn label(self) -> &'static str {
        match self {
            Exceeded::ClientId => "client_id_too_long",
            Exceeded::Username => "username_too_long",
            Exceeded::Topic => "topic_too_long",
            Exceeded::Properties => "properties_too_large",
            Exceeded::MessageSize => "too_large_for_edgehub",
        }
    }
}

/// A refusal: which limit, and a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub exceeded: Exceeded,
    pub detail: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

fn refused(exceeded: Exceeded, detail: String) -> Refused {
    Refused { exceeded, detail }
}

/// Bytes of MQTT 5 properties that would become edgeHub properties.
pub fn properties_size(p: &PubProps) -> usize {
    p.user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>()
        + p.content_type.as_ref().map_or(0, String::len)
        + p.correlation_data.as_ref().map_or(0, |c| c.len())
}

/// Checks a topic and the properties of a publish (or a will).
pub fn check_message(topic: &str, props: &PubProps) -> Result<(), Refused> {
    if topic.len() > MAX_TOPIC {
        return Err(refused(
            Exceeded::Topic,
            format!(
                "topic of {} bytes; this server takes at most {MAX_TOPIC} (it travels to edgeHub inside an MQTT topic): use a shorter topic",
                topic.len()
            ),
        ));
    }
    let size = properties_size(props);
    if size > MAX_PROPERTIES {
        return Err(refused(
            Exceeded::Properties,
            format!("{size} bytes of MQTT 5 properties (user properties, content type, correlation data); this server forwards at most {MAX_PROPERTIES}: send fewer or shorter ones"),
        ));
    }
    Ok(())
}

/// Checks what a CONNECT carries: client id, user name, and the will's topic and properties.
pub fn check_connect(info: &ConnectInfo) -> Result<(), Refused> {
    if info.client_id.len() > MAX_CLIENT_ID {
        return Err(refused(
            Exceeded::ClientId,
            format!(
                "client id of {} bytes; this server takes at most {MAX_CLIENT_ID}",
                info.client_id.len()
            ),
        ));
    }
    if let Some(u) = &info.username {
        if u.len() > MAX_USERNAME {
            return Err(refused(
                Exceeded::Username,
                format!(
                    "user name of {} bytes; this server takes at most {MAX_USERNAME}",
                    u.len()
                ),
            ));
        }
    }
    if let Some(w) = &info.will {
        check_message(&w.topic, &w.props)?;
    }
    Ok(())
}

/// The refusal for an edgeHub message of `size` bytes (body plus properties) over `limit`.
pub fn message_too_large(size: usize, limit: usize) -> Refused {
    refused(
        Exceeded::MessageSize,
        format!("the edgeHub message would be {size} bytes (body plus properties); edgeHub takes at most {limit}: send a smaller payload"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::Version;

    fn connect(client_id: &str) -> ConnectInfo {
        ConnectInfo {
            version: Version::V5,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            session_expiry: None,
            max_packet_size: None,
            receive_max: None,
            auth_method: None,
        }
    }

    #[test]
    fn limits_are_inclusive_and_name_what_was_exceeded() {
        assert!(check_message(&"t".repeat(MAX_TOPIC), &PubProps::default()).is_ok());
        let e = check_message(&"t".repeat(MAX_TOPIC + 1), &PubProps::default()).unwrap_err();
        assert_eq!(e.exceeded, Exceeded::Topic);
        assert!(e.detail.contains("4097 bytes"), "{e}");

        let mut props = PubProps {
            user_properties: vec![("k".into(), "v".repeat(MAX_PROPERTIES - 3))],
            ..PubProps::default()
        };
        assert_eq!(properties_size(&props), MAX_PROPERTIES);
        assert!(check_message("t", &props).is_ok());
        props.content_type = Some("x".into());
        assert_eq!(
            check_message("t", &props).unwrap_err().exceeded,
            Exceeded::Properties
        );

        assert!(check_connect(&connect(&"c".repeat(MAX_CLIENT_ID))).is_ok());
        assert_eq!(
            check_connect(&connect(&"c".repeat(MAX_CLIENT_ID + 1)))
                .unwrap_err()
                .exceeded,
            Exceeded::ClientId
        );
        let mut c = connect("c");
        c.username = Some("u".repeat(MAX_USERNAME + 1));
        assert_eq!(check_connect(&c).unwrap_err().exceeded, Exceeded::Username);
    }

    /// With every device-controlled part at its limit, each byte percent-encoded to three, and the
    /// longest device and module names IoT Hub allows, the edgeHub topic still fits MQTT's 65,535.
    #[test]
    fn the_worst_case_topic_fits_mqtt() {
        let prefix = "devices/".len() + 128 + "/modules/".len() + 128 + "/messages/events/".len();
        // system properties: $.on (output names are short), $.mid (uuid), $.cid (correlation data,
        // counted in MAX_PROPERTIES), $.ct, $.ce, $.ctime; and mqtt-qos, mqtt-retain
        let fixed = 1024;
        let worst = prefix + fixed + 3 * (MAX_TOPIC + MAX_CLIENT_ID + MAX_PROPERTIES);
        assert!(worst < 65_535, "{worst}");
    }
}
