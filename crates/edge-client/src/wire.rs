//! The edgeHub / IoT Hub MQTT wire formats, pure (no IO): messages and their property bags, topics,
//! SAS tokens, connection strings and the MQTT username.
//!
//! Formats follow what Microsoft's SDKs put on the wire (azure-iot-sdk-python `mqtt_topic_iothub.py`,
//! `sastoken.py`; azure-iot-sdk-c `iothubtransport_mqtt_common.c`), so the same functions serve the
//! module side (this crate's client) and the hub side (edge-dev).

use std::collections::BTreeMap;

use bytes::Bytes;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// edgeHub's (and IoT Hub's) maximum message size in bytes (body plus properties).
pub const MAX_MESSAGE_SIZE: usize = 262_144;

/// The MQTT api-version our client puts in its username.
pub const MQTT_API_VERSION: &str = "2018-06-30";

/// Everything is percent-encoded except ALPHA DIGIT `-` `_` `.` `~`: Python's `quote(s, safe="")`,
/// which the Python SDK uses for property bags and SAS tokens.
const QUOTE_ALL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `s` like Python's `urllib.parse.quote(s, safe="")`.
pub fn quote(s: &str) -> String {
    utf8_percent_encode(s, QUOTE_ALL).to_string()
}

/// Percent-decodes `s`; `+` stays `+` (it is not a space in topics or tokens).
pub fn unquote(s: &str) -> Result<String, WireError> {
    unquote_borrowed(s).map(|c| c.into_owned())
}

/// [`unquote`] without a copy when there is nothing to decode (no `%`), the common case.
fn unquote_borrowed(s: &str) -> Result<std::borrow::Cow<'_, str>, WireError> {
    // text is UTF-8 already: without a `%` there is nothing to decode or check (the decoder's own
    // scan goes byte by byte, and validates the text again)
    if !s.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(s));
    }
    percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| WireError::BadEncoding {
            text: s.to_string(),
        })
}

/// What is wrong with a topic, property bag, token, connection string or username.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Percent-decoding produced bytes that are not UTF-8.
    #[error("{text:?} percent-decodes to bytes that are not UTF-8; encode property keys and values as UTF-8 before percent-encoding")]
    BadEncoding { text: String },
    /// A property bag entry cannot be read.
    #[error(
        "property bag {bag:?}: {reason}; expected url-encoded `key=value` pairs joined by `&`"
    )]
    BadPropertyBag { bag: String, reason: String },
    /// A topic this client (identity) may not publish to, or that is malformed.
    #[error("topic {topic:?}: {reason}")]
    BadTopic { topic: String, reason: String },
    /// A shared access key that is not base64.
    #[error("the shared access key is not valid base64 ({reason}); copy the key exactly as IoT Hub / edge-dev printed it")]
    BadKey { reason: String },
    /// A connection string that is missing a key or has a bad one.
    #[error("connection string: {reason}; expected `HostName=<hub>;DeviceId=<device>[;ModuleId=<module>];SharedAccessKey=<base64>[;GatewayHostName=<gateway>]`")]
    ConnectionString { reason: String },
    /// A SAS token that cannot be parsed.
    #[error("SAS token: {reason}; expected `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded base64>&se=<unix seconds>[&skn=<key name>]`")]
    BadSasToken { reason: String },
    /// A SAS token that parsed but does not grant access.
    #[error("SAS token rejected: {reason}")]
    SasTokenRejected { reason: String },
    /// An MQTT username that is not `{hub}/{device}[/{module}]/?api-version=...`.
    #[error("MQTT username {username:?}: {reason}; expected `<hub>/<device>[/<module>]/?api-version=2018-06-30`")]
    BadUsername { username: String, reason: String },
}

/// A device-to-cloud / module message: body, system properties and application properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The payload, opaque bytes.
    pub body: Bytes,
    /// `$.mid`
    pub message_id: Option<String>,
    /// `$.cid`
    pub correlation_id: Option<String>,
    /// `$.uid`
    pub user_id: Option<String>,
    /// `$.ct`, e.g. `application/json`
    pub content_type: Option<String>,
    /// `$.ce`, e.g. `utf-8`
    pub content_encoding: Option<String>,
    /// `$.ctime`, ISO 8601
    pub creation_time: Option<String>,
    /// `$.exp`, ISO 8601
    pub expiry: Option<String>,
    /// `$.on`: the output a module sent the message to
    pub output_name: Option<String>,
    /// `$.cdid`: set by the hub on delivery
    pub connection_device_id: Option<String>,
    /// `$.cmid`: set by the hub on delivery
    pub connection_module_id: Option<String>,
    /// `$.ifid`
    pub interface_id: Option<String>,
    /// Application (custom) properties.
    pub properties: BTreeMap<String, String>,
}

/// The system property wire keys in the order the Python SDK writes them, then the ones it does not write.
const SYSTEM_KEYS: [&str; 11] = [
    "$.on", "$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.ifid", "$.exp", "$.ctime", "$.cdid",
    "$.cmid",
];

impl Message {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    /// A JSON message: the serialized value, content type `application/json`, content encoding `utf-8`
    /// (which is what makes `$body` usable in edgeHub route conditions).
    pub fn json(value: &serde_json::Value) -> Self {
        let mut m = Message::new(value.to_string().into_bytes());
        m.content_type = Some("application/json".to_string());
        m.content_encoding = Some("utf-8".to_string());
        m
    }

    /// Adds (or replaces) an application property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    fn field(&self, wire_key: &str) -> Option<&Option<String>> {
        Some(match wire_key {
            "$.on" => &self.output_name,
            "$.mid" => &self.message_id,
            "$.cid" => &self.correlation_id,
            "$.uid" => &self.user_id,
            "$.ct" => &self.content_type,
            "$.ce" => &self.content_encoding,
            "$.ifid" => &self.interface_id,
            "$.exp" => &self.expiry,
            "$.ctime" => &self.creation_time,
            "$.cdid" => &self.connection_device_id,
            "$.cmid" => &self.connection_module_id,
            _ => return None,
        })
    }

    fn field_mut(&mut self, wire_key: &str) -> Option<&mut Option<String>> {
        Some(match wire_key {
            "$.on" => &mut self.output_name,
            "$.mid" => &mut self.message_id,
            "$.cid" => &mut self.correlation_id,
            "$.uid" => &mut self.user_id,
            "$.ct" => &mut self.content_type,
            "$.ce" => &mut self.content_encoding,
            "$.ifid" => &mut self.interface_id,
            "$.exp" => &mut self.expiry,
            "$.ctime" => &mut self.creation_time,
            "$.cdid" => &mut self.connection_device_id,
            "$.cmid" => &mut self.connection_module_id,
            _ => return None,
        })
    }

    /// The system properties that are set, by wire key (`$.mid`, `$.ct`, ...).
    pub fn system_properties(&self) -> BTreeMap<String, String> {
        SYSTEM_KEYS
            .iter()
            .filter_map(|k| {
                self.field(k)
                    .and_then(|v| v.clone())
                    .map(|v| (k.to_string(), v))
            })
            .collect()
    }

    /// Sets the system property with this wire key; `false` if the key is not a system property.
    pub fn set_system_property(&mut self, wire_key: &str, value: String) -> bool {
        match self.field_mut(wire_key) {
            Some(f) => {
                *f = Some(value);
                true
            }
            None => false,
        }
    }

    /// Size as edgeHub counts it against [`MAX_MESSAGE_SIZE`]: body plus property keys and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .system_properties()
                .iter()
                .chain(self.properties.iter())
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Encodes a message's properties as a property bag: system properties in the order
/// `$.on $.mid $.cid $.uid $.ct $.ce $.ifid $.exp` (as the Python SDK), then `$.ctime $.cdid $.cmid`,
/// then application properties sorted by key; every key and value percent-encoded with nothing safe
/// but ALPHA DIGIT `-_.~`. Empty system property values are left out, as the Python SDK does.
pub fn encode_property_bag(msg: &Message) -> String {
    let mut out = String::new();
    let system = SYSTEM_KEYS.iter().filter_map(|k| match msg.field(k) {
        Some(Some(v)) if !v.is_empty() => Some((*k, v.as_str())),
        _ => None,
    });
    let custom = msg.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (k, v) in system.chain(custom) {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&quote(k));
        out.push('=');
        out.push_str(&quote(v));
    }
    out
}

/// Decodes a property bag into `into`: known system keys (`$.mid`, `$.on`, `$.cdid`, ...) set the
/// message's fields, every other key becomes an application property. `+` is not a space. An empty bag,
/// empty entries (`a=1&&b=2`, a trailing `&`) and a key without `=` (value "") are accepted.
pub fn decode_property_bag(bag: &str, into: &mut Message) -> Result<(), WireError> {
    for entry in bag.split('&') {
        if entry.is_empty() {
            continue;
        }
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        if k.is_empty() {
            return Err(WireError::BadPropertyBag {
                bag: bag.to_string(),
                reason: format!("entry {entry:?} has an empty key"),
            });
        }
        // every message delivered to a module carries a bag of about ten entries: a key is
        // copied only for an application property, a value once
        let key = unquote_borrowed(k)?;
        let value = unquote(v)?;
        match into.field_mut(&key) {
            Some(field) => *field = Some(value),
            None => {
                into.properties.insert(key.into_owned(), value);
            }
        }
    }
    Ok(())
}

/// Topic names of the IoT Hub / edgeHub MQTT protocol (device and module ids are not encoded, as the
/// SDKs do not encode them either).
pub mod topics {
    use super::{quote, unquote, WireError};

    /// Twin responses; subscribe before the first GET / reported PATCH.
    pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
    /// Desired-property patches.
    pub const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
    /// Direct-method requests.
    pub const METHOD_REQUESTS: &str = "$iothub/methods/POST/#";

    /// `devices/{d}/modules/{m}/messages/events/{bag}`: a module's output messages.
    pub fn module_events(device: &str, module: &str, bag: &str) -> String {
        format!("devices/{device}/modules/{module}/messages/events/{bag}")
    }

    /// `devices/{d}/messages/events/{bag}`: a device's telemetry.
    pub fn device_events(device: &str, bag: &str) -> String {
        format!("devices/{device}/messages/events/{bag}")
    }

    /// `devices/{d}/modules/{m}/inputs/{input}/{bag}`: a message the hub delivers to a module input.
    pub fn module_input(device: &str, module: &str, input: &str, bag: &str) -> String {
        format!("devices/{device}/modules/{module}/inputs/{input}/{bag}")
    }

    /// The filter a module subscribes to for its inputs (`devices/{d}/modules/{m}/inputs/#`).
    pub fn module_inputs_filter(device: &str, module: &str) -> String {
        format!("devices/{device}/modules/{module}/inputs/#")
    }

    /// `(input, bag)` of an input topic for this module; `None` if the topic is not one of its inputs.
    /// The bag is `""` when the topic has none.
    pub fn parse_module_input(topic: &str, device: &str, module: &str) -> Option<(String, String)> {
        // `devices/{device}/modules/{module}/inputs/`, matched piece by piece (once per message)
        let rest = topic
            .strip_prefix("devices/")?
            .strip_prefix(device)?
            .strip_prefix("/modules/")?
            .strip_prefix(module)?
            .strip_prefix("/inputs/")?;
        let (input, bag) = match rest.split_once('/') {
            Some((i, b)) => (i, b),
            None => (rest, ""),
        };
        if input.is_empty() || bag.contains('/') {
            return None;
        }
        Some((input.to_string(), bag.to_string()))
    }

    // Request ids are percent-encoded in topics, as the Python SDK does (uuids need no encoding).

    /// `$iothub/twin/GET/?$rid={rid}`
    pub fn twin_get(rid: &str) -> String {
        format!("$iothub/twin/GET/?$rid={}", quote(rid))
    }

    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`
    pub fn twin_reported(rid: &str) -> String {
        format!(
            "$iothub/twin/PATCH/properties/reported/?$rid={}",
            quote(rid)
        )
    }

    /// `$iothub/methods/res/{status}/?$rid={rid}`
    pub fn method_response(status: u16, rid: &str) -> String {
        format!("$iothub/methods/res/{status}/?$rid={}", quote(rid))
    }

    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version=N]`
    pub fn twin_response(status: u16, rid: &str, version: Option<u64>) -> String {
        match version {
            Some(v) => format!(
                "$iothub/twin/res/{status}/?$rid={}&$version={v}",
                quote(rid)
            ),
            None => format!("$iothub/twin/res/{status}/?$rid={}", quote(rid)),
        }
    }

    /// `$iothub/twin/PATCH/properties/desired/?$version=N`
    pub fn desired_patch(version: u64) -> String {
        format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
    }

    /// `$iothub/methods/POST/{name}/?$rid={rid}`
    pub fn method_request(name: &str, rid: &str) -> String {
        format!("$iothub/methods/POST/{name}/?$rid={}", quote(rid))
    }

    /// The percent-decoded value of query parameter `key` (e.g. `$rid`, `$version`) after the `?`.
    pub fn parse_query_param(topic: &str, key: &str) -> Option<String> {
        let (_, query) = topic.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == key {
                unquote(v).ok()
            } else {
                None
            }
        })
    }

    /// What a client's publish is, seen from the hub.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ClientPublish {
        /// Telemetry / output message with its (still encoded) property bag.
        Events { bag: String },
        /// `$iothub/twin/GET/?$rid=`
        TwinGet { rid: String },
        /// `$iothub/twin/PATCH/properties/reported/?$rid=`
        TwinReported { rid: String },
        /// `$iothub/methods/res/{status}/?$rid=`
        MethodResponse { status: u16, rid: String },
    }

    fn bad(topic: &str, reason: impl Into<String>) -> WireError {
        WireError::BadTopic {
            topic: topic.to_string(),
            reason: reason.into(),
        }
    }

    fn rid_of(topic: &str) -> Result<String, WireError> {
        match parse_query_param(topic, "$rid") {
            Some(r) if !r.is_empty() => Ok(r),
            _ => Err(bad(topic, "has no `?$rid=<request id>`")),
        }
    }

    /// Classifies a publish by the client `device`[/`module`] (hub side). `Err` for a topic that is not
    /// this client's own events topic nor one of the `$iothub` request topics.
    pub fn parse_client_publish(
        topic: &str,
        device: &str,
        module: Option<&str>,
    ) -> Result<ClientPublish, WireError> {
        if topic.starts_with("$iothub/") {
            if topic.starts_with("$iothub/twin/GET/?") {
                return Ok(ClientPublish::TwinGet {
                    rid: rid_of(topic)?,
                });
            }
            if topic.starts_with("$iothub/twin/PATCH/properties/reported/?") {
                return Ok(ClientPublish::TwinReported {
                    rid: rid_of(topic)?,
                });
            }
            if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
                let shape = || {
                    bad(
                        topic,
                        "expected `$iothub/methods/res/{status}/?$rid={rid}` with a numeric status",
                    )
                };
                let (status, tail) = rest.split_once('/').ok_or_else(shape)?;
                if status.is_empty()
                    || !status.bytes().all(|b| b.is_ascii_digit())
                    || !tail.starts_with('?')
                {
                    return Err(shape());
                }
                let status = status.parse::<u16>().map_err(|_| shape())?;
                return Ok(ClientPublish::MethodResponse {
                    status,
                    rid: rid_of(topic)?,
                });
            }
            return Err(bad(
                topic,
                "not a topic IoT Hub accepts from clients (twin GET, reported PATCH, method response)",
            ));
        }
        let prefix = match module {
            Some(m) => format!("devices/{device}/modules/{m}/messages/events"),
            None => format!("devices/{device}/messages/events"),
        };
        let who = match module {
            Some(m) => format!("module {device}/{m}"),
            None => format!("device {device}"),
        };
        let rest = topic.strip_prefix(&prefix).ok_or_else(|| {
            bad(
                topic,
                format!(
                    "{who} may only publish to `{prefix}/<properties>` and `$iothub/...` requests"
                ),
            )
        })?;
        let bag = match rest.strip_prefix('/') {
            Some(b) => b.strip_suffix('/').unwrap_or(b),
            None if rest.is_empty() => "",
            None => {
                return Err(bad(
                    topic,
                    format!(
                    "{who} may only publish to `{prefix}/<properties>` and `$iothub/...` requests"
                ),
                ))
            }
        };
        if bag.contains('/') {
            return Err(bad(
                topic,
                "the property bag contains `/`; percent-encode it as %2F",
            ));
        }
        Ok(ClientPublish::Events {
            bag: bag.to_string(),
        })
    }

    /// `(status, rid, version)` of a twin response topic (client side).
    pub fn parse_twin_response(topic: &str) -> Option<(u16, String, Option<u64>)> {
        let rest = topic.strip_prefix("$iothub/twin/res/")?;
        let (status, query) = rest.split_once("/?")?;
        let status = status.parse().ok()?;
        let q = format!("?{query}");
        let rid = parse_query_param(&q, "$rid")?;
        let version = parse_query_param(&q, "$version").and_then(|v| v.parse().ok());
        Some((status, rid, version))
    }

    /// The version of a desired-patch topic (client side); `Some(None)` if it is one without version.
    pub fn parse_desired_patch(topic: &str) -> Option<Option<u64>> {
        let rest = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/")?;
        Some(parse_query_param(rest, "$version").and_then(|v| v.parse().ok()))
    }

    /// `(name, rid)` of a direct-method request topic (client side).
    pub fn parse_method_request(topic: &str) -> Option<(String, String)> {
        let rest = topic.strip_prefix("$iothub/methods/POST/")?;
        let (name, _) = rest.split_once("/?")?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let rid = parse_query_param(rest, "$rid")?;
        Some((name.to_string(), rid))
    }
}

/// Shared access signature tokens (HMAC-SHA256 over the url-encoded resource URI and expiry).
pub mod sas {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::{quote, unquote, WireError};

    type HmacSha256 = Hmac<Sha256>;

    /// `{hub}/devices/{d}[/modules/{m}]`, not encoded.
    pub fn resource_uri(hub_host: &str, device: &str, module: Option<&str>) -> String {
        match module {
            Some(m) => format!("{hub_host}/devices/{device}/modules/{m}"),
            None => format!("{hub_host}/devices/{device}"),
        }
    }

    fn mac(key_base64: &str) -> Result<HmacSha256, WireError> {
        let key = STANDARD
            .decode(key_base64.trim())
            .map_err(|e| WireError::BadKey {
                reason: e.to_string(),
            })?;
        HmacSha256::new_from_slice(&key).map_err(|e| WireError::BadKey {
            reason: e.to_string(),
        })
    }

    /// base64(HMAC-SHA256(base64-decoded key, data)).
    pub fn sign(key_base64: &str, data: &str) -> Result<String, WireError> {
        let mut m = mac(key_base64)?;
        m.update(data.as_bytes());
        Ok(STANDARD.encode(m.finalize().into_bytes()))
    }

    /// `quote(resource_uri) + "\n" + expiry`: what the key signs.
    pub fn string_to_sign(resource_uri: &str, expiry: u64) -> String {
        format!("{}\n{expiry}", quote(resource_uri))
    }

    /// `SharedAccessSignature sr={quote(uri)}&sig={quote(signature)}&se={expiry}`.
    pub fn token_from_signature(resource_uri: &str, signature_b64: &str, expiry: u64) -> String {
        format!(
            "SharedAccessSignature sr={}&sig={}&se={expiry}",
            quote(resource_uri),
            quote(signature_b64)
        )
    }

    /// A token for `resource_uri` signed with the key, valid until `expiry` (unix seconds).
    pub fn generate(
        resource_uri: &str,
        key_base64: &str,
        expiry: u64,
    ) -> Result<String, WireError> {
        let sig = sign(key_base64, &string_to_sign(resource_uri, expiry))?;
        Ok(token_from_signature(resource_uri, &sig, expiry))
    }

    /// A parsed SAS token.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SasToken {
        /// The resource URI, decoded.
        pub resource: String,
        /// The signature, base64 (decoded from the token's url-encoding).
        pub signature: String,
        /// Expiry, unix seconds.
        pub expiry: u64,
        /// `skn`, for policy tokens.
        pub key_name: Option<String>,
        /// `sr` exactly as it appears in the token: the signature is over this text.
        pub encoded_resource: String,
    }

    impl SasToken {
        /// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]` (fields in any order).
        pub fn parse(s: &str) -> Result<SasToken, WireError> {
            let bad = |reason: String| WireError::BadSasToken { reason };
            let body = s
                .trim()
                .strip_prefix("SharedAccessSignature ")
                .ok_or_else(|| bad("does not start with `SharedAccessSignature `".to_string()))?;
            let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
            for field in body.split('&') {
                let (k, v) = field
                    .split_once('=')
                    .ok_or_else(|| bad(format!("field {field:?} has no `=`")))?;
                let slot = match k.trim() {
                    "sr" => &mut sr,
                    "sig" => &mut sig,
                    "se" => &mut se,
                    "skn" => &mut skn,
                    other => return Err(bad(format!("unknown field {other:?}"))),
                };
                if slot.replace(v.trim().to_string()).is_some() {
                    return Err(bad(format!("field {k:?} appears twice")));
                }
            }
            let encoded_resource = sr.ok_or_else(|| bad("missing `sr`".to_string()))?;
            let signature = unquote(&sig.ok_or_else(|| bad("missing `sig`".to_string()))?)?;
            let se = se.ok_or_else(|| bad("missing `se`".to_string()))?;
            let expiry = se
                .parse::<u64>()
                .map_err(|_| bad(format!("`se` {se:?} is not unix seconds")))?;
            Ok(SasToken {
                resource: unquote(&encoded_resource)?,
                signature,
                expiry,
                key_name: match skn {
                    Some(k) => Some(unquote(&k)?),
                    None => None,
                },
                encoded_resource,
            })
        }

        /// Checks that the token is for `expected_resource` (case-insensitive), has not expired at
        /// `now_unix`, and carries a signature made with this key (compared in constant time).
        pub fn verify(
            &self,
            key_base64: &str,
            expected_resource: &str,
            now_unix: u64,
        ) -> Result<(), WireError> {
            let rejected = |reason: String| WireError::SasTokenRejected { reason };
            if !self.resource.eq_ignore_ascii_case(expected_resource) {
                return Err(rejected(format!(
                    "it is for resource {:?}, but this client is {:?}; generate the token for the identity that connects",
                    self.resource, expected_resource
                )));
            }
            if self.expiry <= now_unix {
                return Err(rejected(format!(
                    "it expired at {} (now {now_unix}); generate a new one (is the clock right?)",
                    self.expiry
                )));
            }
            let sig = STANDARD
                .decode(self.signature.as_bytes())
                .map_err(|_| rejected("the signature is not base64".to_string()))?;
            let mut m = mac(key_base64)?;
            m.update(format!("{}\n{}", self.encoded_resource, self.expiry).as_bytes());
            m.verify_slice(&sig).map_err(|_| {
                rejected(
                    "the signature does not match this identity's key; check the SharedAccessKey"
                        .to_string(),
                )
            })
        }
    }
}

/// A parsed IoT Hub connection string. `Debug` does not show the key or signature.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConnectionString {
    /// `HostName`: the IoT Hub host name.
    pub host_name: String,
    /// `DeviceId`
    pub device_id: String,
    /// `ModuleId`, for a module identity.
    pub module_id: Option<String>,
    /// `SharedAccessKey`, base64.
    pub shared_access_key: Option<String>,
    /// `GatewayHostName`: the edge gateway to connect to instead of the hub.
    pub gateway_host_name: Option<String>,
    /// `SharedAccessKeyName`, for policy keys.
    pub shared_access_key_name: Option<String>,
    /// `SharedAccessSignature`: a ready token instead of a key.
    pub shared_access_signature: Option<String>,
    /// `x509=true`
    pub x509: bool,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("shared_access_key", &redact(&self.shared_access_key))
            .field("gateway_host_name", &self.gateway_host_name)
            .field("shared_access_key_name", &self.shared_access_key_name)
            .field(
                "shared_access_signature",
                &redact(&self.shared_access_signature),
            )
            .field("x509", &self.x509)
            .finish()
    }
}

impl ConnectionString {
    /// Parses `Key=Value;Key=Value`. Keys are case-sensitive as in the SDKs; values may contain `=`.
    pub fn parse(s: &str) -> Result<Self, WireError> {
        let bad = |reason: String| WireError::ConnectionString { reason };
        let mut cs = ConnectionString::default();
        let (mut host, mut device) = (None, None);
        for part in s.trim().split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{}` has no `=`", k_only(part))))?;
            let v = v.trim().to_string();
            let slot = match k.trim() {
                "HostName" => &mut host,
                "DeviceId" => &mut device,
                "ModuleId" => &mut cs.module_id,
                "SharedAccessKey" => &mut cs.shared_access_key,
                "GatewayHostName" => &mut cs.gateway_host_name,
                "SharedAccessKeyName" => &mut cs.shared_access_key_name,
                "SharedAccessSignature" => &mut cs.shared_access_signature,
                "x509" => {
                    cs.x509 = v.eq_ignore_ascii_case("true");
                    continue;
                }
                other => {
                    return Err(bad(format!(
                        "unknown key `{other}` (keys are case-sensitive)"
                    )))
                }
            };
            if v.is_empty() {
                return Err(bad(format!("`{}` is empty", k.trim())));
            }
            if slot.replace(v).is_some() {
                return Err(bad(format!("`{}` appears twice", k.trim())));
            }
        }
        cs.host_name = host.ok_or_else(|| bad("missing `HostName`".to_string()))?;
        cs.device_id = device.ok_or_else(|| bad("missing `DeviceId`".to_string()))?;
        if let Some(key) = &cs.shared_access_key {
            use base64::Engine;
            if let Err(e) = base64::engine::general_purpose::STANDARD.decode(key) {
                return Err(bad(format!("`SharedAccessKey` is not base64 ({e})")));
            }
        }
        if cs.shared_access_key.is_none() && cs.shared_access_signature.is_none() && !cs.x509 {
            return Err(bad(
                "missing `SharedAccessKey` (or `SharedAccessSignature`)".to_string(),
            ));
        }
        Ok(cs)
    }

    /// The host to connect to: the gateway if there is one, else the hub.
    pub fn connect_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }
}

// Only the key of a `key=value` fragment, so that error messages never echo a secret value.
fn k_only(part: &str) -> &str {
    if part.len() > 40 {
        "<a 40+ character fragment>"
    } else {
        part
    }
}

/// The MQTT username: `{hub}/{device}[/{module}]/?api-version={api_version}`.
pub fn username(hub_host: &str, device: &str, module: Option<&str>, api_version: &str) -> String {
    match module {
        Some(m) => format!("{hub_host}/{device}/{m}/?api-version={api_version}"),
        None => format!("{hub_host}/{device}/?api-version={api_version}"),
    }
}

/// The parts of an MQTT username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    pub hub: String,
    pub device: String,
    pub module: Option<String>,
    pub api_version: Option<String>,
}

/// Parses an MQTT username leniently: extra query parameters (`DeviceClientType`, `model-id`, ...) are
/// ignored, the `/` before `?` and the query itself are optional.
pub fn parse_username(s: &str) -> Result<Username, WireError> {
    let bad = |reason: &str| WireError::BadUsername {
        username: s.to_string(),
        reason: reason.to_string(),
    };
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    let path = path.strip_suffix('/').unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("has an empty hub, device or module name"));
    }
    let (hub, device, module) = match parts.as_slice() {
        [h, d] => (*h, *d, None),
        [h, d, m] => (*h, *d, Some(m.to_string())),
        _ => return Err(bad("has not 2 or 3 `/`-separated parts before `?`")),
    };
    let api_version = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            if k == "api-version" {
                unquote(v).ok()
            } else {
                None
            }
        })
    });
    Ok(Username {
        hub: hub.to_string(),
        device: device.to_string(),
        module,
        api_version,
    })
}

#[cfg(test)]
mod tests {
    use super::topics::*;
    use super::*;

    fn msg_py() -> Message {
        let mut m = Message::new("x").with_property("k", "v");
        m.output_name = Some("out1".into());
        m.message_id = Some("m1".into());
        m.content_type = Some("application/json".into());
        m.content_encoding = Some("utf-8".into());
        m
    }

    #[test]
    fn output_topic_is_byte_exact_with_python_sdk() {
        let m = msg_py();
        assert_eq!(
            module_events("dev1", "PyMod", &encode_property_bag(&m)),
            "devices/dev1/modules/PyMod/messages/events/%24.on=out1&%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&k=v"
        );
    }

    #[test]
    fn bag_is_byte_exact_with_python_sdk_on_special_characters() {
        // Expected output produced by azure-iot-device 2.14's encode_message_properties_in_topic.
        let mut m = Message::new("x")
            .with_property("zeta", "a&b=c")
            .with_property("Alpha", "é ü")
            .with_property("$x", "#1")
            .with_property("a~b", "-_.~")
            .with_property("k", "");
        m.message_id = Some("id 1/2".into());
        m.content_encoding = Some("utf-8".into());
        m.content_type = Some("application/json".into());
        m.output_name = Some("out put".into());
        m.correlation_id = Some("c+d".into());
        m.user_id = Some("u%".into());
        assert_eq!(
            module_events("dev1", "PyMod", &encode_property_bag(&m)),
            "devices/dev1/modules/PyMod/messages/events/%24.on=out%20put&%24.mid=id%201%2F2&%24.cid=c%2Bd\
             &%24.uid=u%25&%24.ct=application%2Fjson&%24.ce=utf-8&%24x=%231&Alpha=%C3%A9%20%C3%BC&a~b=-_.~&k=&zeta=a%26b%3Dc"
        );
        assert_eq!(
            device_events(
                "dev1",
                &encode_property_bag(&Message::new("x").with_property("k", "v"))
            ),
            "devices/dev1/messages/events/k=v"
        );
        // The SDK decodes this input bag to k="a+b+c", flag, $.on=o (custom), ct, mid "m 1".
        let mut d = Message::default();
        decode_property_bag(
            "k=a%2Bb+c&%24.ct=application%2Fjson&%24.on=o&flag&%24.mid=m%201",
            &mut d,
        )
        .unwrap();
        assert_eq!(d.properties.get("k").map(String::as_str), Some("a+b+c"));
        assert_eq!(d.content_type.as_deref(), Some("application/json"));
        assert_eq!(d.message_id.as_deref(), Some("m 1"));
        assert_eq!(
            method_response(200, "a b"),
            "$iothub/methods/res/200/?$rid=a%20b"
        );
    }

    #[test]
    fn bag_order_and_encoding() {
        let mut m = Message::new("")
            .with_property("z z", "a/b")
            .with_property("a+", "é~-_.");
        m.expiry = Some("2026-01-01T00:00:00".into());
        m.interface_id = Some("urn:x".into());
        m.user_id = Some("u".into());
        m.correlation_id = Some("c".into());
        m.creation_time = Some("t".into());
        m.connection_module_id = Some("cm".into());
        m.connection_device_id = Some("cd".into());
        m.output_name = Some("o".into());
        m.message_id = Some(String::new()); // empty: left out like the Python SDK
        assert_eq!(
            encode_property_bag(&m),
            "%24.on=o&%24.cid=c&%24.uid=u&%24.ifid=urn%3Ax&%24.exp=2026-01-01T00%3A00%3A00\
             &%24.ctime=t&%24.cdid=cd&%24.cmid=cm&a%2B=%C3%A9~-_.&z%20z=a%2Fb"
        );
        assert_eq!(encode_property_bag(&Message::new("b")), "");
    }

    #[test]
    fn bag_roundtrip_and_tolerance() {
        let mut m = msg_py();
        m.properties.insert("sp ace".into(), "1+1=2 & /".into());
        let bag = encode_property_bag(&m);
        let mut back = Message::new("x");
        decode_property_bag(&bag, &mut back).unwrap();
        assert_eq!(back, m);

        let mut d = Message::default();
        decode_property_bag("", &mut d).unwrap();
        assert_eq!(d, Message::default());
        decode_property_bag("a=1+2&&flag&%24.ct=text%2Fplain&", &mut d).unwrap();
        assert_eq!(d.properties.get("a").map(String::as_str), Some("1+2"));
        assert_eq!(d.properties.get("flag").map(String::as_str), Some(""));
        assert_eq!(d.content_type.as_deref(), Some("text/plain"));
        // $.on, $.cdid, $.cmid are message fields here (the hub sets them on delivery)
        decode_property_bag("%24.cdid=dev1&%24.cmid=M&%24.on=o&$.to=x", &mut d).unwrap();
        assert_eq!(d.connection_device_id.as_deref(), Some("dev1"));
        assert_eq!(d.connection_module_id.as_deref(), Some("M"));
        assert_eq!(d.output_name.as_deref(), Some("o"));
        assert_eq!(d.properties.get("$.to").map(String::as_str), Some("x"));
        assert!(decode_property_bag("=v", &mut d).is_err());
        assert!(decode_property_bag("k=%FF", &mut d).is_err());
    }

    #[test]
    fn system_property_access() {
        let mut m = Message::json(&serde_json::json!({"temp": 38}));
        assert_eq!(&m.body[..], br#"{"temp":38}"#);
        assert!(m.set_system_property("$.mid", "id".into()));
        assert!(!m.set_system_property("$.nope", "x".into()));
        let sp = m.system_properties();
        assert_eq!(sp.get("$.ct").map(String::as_str), Some("application/json"));
        assert_eq!(sp.get("$.ce").map(String::as_str), Some("utf-8"));
        assert_eq!(sp.get("$.mid").map(String::as_str), Some("id"));
        assert_eq!(sp.len(), 3);
        assert!(m.size() > m.body.len());
    }

    #[test]
    fn input_topics() {
        let t = module_input("dev1", "PyMod", "in1", "k=v&%24.ct=application%2Fjson");
        assert_eq!(
            t,
            "devices/dev1/modules/PyMod/inputs/in1/k=v&%24.ct=application%2Fjson"
        );
        assert_eq!(
            parse_module_input(&t, "dev1", "PyMod"),
            Some(("in1".into(), "k=v&%24.ct=application%2Fjson".into()))
        );
        assert_eq!(
            parse_module_input("devices/dev1/modules/PyMod/inputs/in1", "dev1", "PyMod"),
            Some(("in1".into(), "".into()))
        );
        assert_eq!(
            parse_module_input("devices/dev1/modules/PyMod/inputs/in1/", "dev1", "PyMod"),
            Some(("in1".into(), "".into()))
        );
        assert_eq!(parse_module_input(&t, "dev1", "Other"), None);
        assert_eq!(
            parse_module_input("devices/dev1/modules/PyMod/inputs/in1/a/b", "dev1", "PyMod"),
            None
        );
        assert_eq!(
            module_inputs_filter("d", "m"),
            "devices/d/modules/m/inputs/#"
        );
        assert_eq!(device_events("d", "a=b"), "devices/d/messages/events/a=b");
    }

    #[test]
    fn twin_and_method_topics() {
        assert_eq!(
            twin_response(200, "r1", None),
            "$iothub/twin/res/200/?$rid=r1"
        );
        assert_eq!(
            twin_response(204, "r1", Some(7)),
            "$iothub/twin/res/204/?$rid=r1&$version=7"
        );
        assert_eq!(
            desired_patch(3),
            "$iothub/twin/PATCH/properties/desired/?$version=3"
        );
        assert_eq!(
            method_request("reboot", "9"),
            "$iothub/methods/POST/reboot/?$rid=9"
        );
        assert_eq!(twin_get("a"), "$iothub/twin/GET/?$rid=a");
        assert_eq!(
            twin_reported("a"),
            "$iothub/twin/PATCH/properties/reported/?$rid=a"
        );
        assert_eq!(method_response(200, "a"), "$iothub/methods/res/200/?$rid=a");
        assert_eq!(
            parse_query_param("$iothub/twin/res/204/?$rid=r1&$version=7", "$version").as_deref(),
            Some("7")
        );
        assert_eq!(
            parse_query_param("$iothub/twin/res/204/?$rid=r1", "$version"),
            None
        );
        assert_eq!(parse_query_param("no/query", "$rid"), None);
        assert_eq!(
            parse_twin_response("$iothub/twin/res/204/?$rid=r1&$version=7"),
            Some((204, "r1".into(), Some(7)))
        );
        assert_eq!(
            parse_twin_response("$iothub/twin/res/200/?$rid=r1"),
            Some((200, "r1".into(), None))
        );
        assert_eq!(
            parse_desired_patch("$iothub/twin/PATCH/properties/desired/?$version=3"),
            Some(Some(3))
        );
        assert_eq!(parse_desired_patch("$iothub/twin/res/200/?$rid=1"), None);
        assert_eq!(
            parse_method_request("$iothub/methods/POST/reboot/?$rid=9"),
            Some(("reboot".into(), "9".into()))
        );
    }

    #[test]
    fn client_publish_classification() {
        let p = |t: &str| parse_client_publish(t, "dev1", Some("PyMod"));
        assert_eq!(
            p("devices/dev1/modules/PyMod/messages/events/%24.on=out1&k=v"),
            Ok(ClientPublish::Events {
                bag: "%24.on=out1&k=v".into()
            })
        );
        assert_eq!(
            p("devices/dev1/modules/PyMod/messages/events/"),
            Ok(ClientPublish::Events { bag: "".into() })
        );
        assert_eq!(
            p("devices/dev1/modules/PyMod/messages/events"),
            Ok(ClientPublish::Events { bag: "".into() })
        );
        assert_eq!(
            p("$iothub/twin/GET/?$rid=abc"),
            Ok(ClientPublish::TwinGet { rid: "abc".into() })
        );
        assert_eq!(
            p("$iothub/twin/PATCH/properties/reported/?$rid=abc"),
            Ok(ClientPublish::TwinReported { rid: "abc".into() })
        );
        assert_eq!(
            p("$iothub/methods/res/200/?$rid=abc"),
            Ok(ClientPublish::MethodResponse {
                status: 200,
                rid: "abc".into()
            })
        );
        assert!(p("$iothub/twin/GET/").is_err());
        assert!(p("$iothub/methods/res/xx/?$rid=1").is_err());
        assert!(p("$iothub/methods/res/2000x/?$rid=1").is_err());
        assert!(p("$iothub/other").is_err());
        assert!(p("devices/dev1/modules/Other/messages/events/").is_err());
        assert!(p("devices/dev1/modules/PyMod/messages/eventsX").is_err());
        assert!(p("devices/dev1/modules/PyMod/inputs/in1/").is_err());
        assert!(p("devices/dev1/messages/events/").is_err());
        assert!(p("devices/dev1/modules/PyMod/messages/events/a/b").is_err());
        assert_eq!(
            parse_client_publish("devices/dev1/messages/events/a=1", "dev1", None),
            Ok(ClientPublish::Events { bag: "a=1".into() })
        );
        assert!(
            parse_client_publish("devices/dev1/modules/M/messages/events/", "dev1", None).is_err()
        );
    }

    #[test]
    fn sas_token_like_python_sdk() {
        let uri = sas::resource_uri("myhub.azure-devices.net", "dev1", Some("PyMod"));
        assert_eq!(uri, "myhub.azure-devices.net/devices/dev1/modules/PyMod");
        assert_eq!(sas::resource_uri("h", "d", None), "h/devices/d");
        assert_eq!(
            sas::string_to_sign(&uri, 1_700_000_000),
            "myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2FPyMod\n1700000000"
        );
        // key "secret" base64; HMAC-SHA256("secret", "data") is a known vector
        let sig = sas::sign("c2VjcmV0", "data").unwrap();
        assert_eq!(sig, "GywWt1vSqHDBFBU8zaW8/KYzFLxyL6Fg1pDeEzzLuds=");
        let token = sas::token_from_signature(&uri, &sig, 1_700_000_000);
        assert_eq!(
            token,
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2FPyMod\
             &sig=GywWt1vSqHDBFBU8zaW8%2FKYzFLxyL6Fg1pDeEzzLuds%3D&se=1700000000"
        );
        assert!(matches!(
            sas::sign("not base64!", "x"),
            Err(WireError::BadKey { .. })
        ));
    }

    #[test]
    fn sas_token_is_byte_exact_with_python_sdk() {
        // Produced by azure-iot-device 2.14's RenewableSasToken with this key and expiry.
        let uri = sas::resource_uri("myhub.azure-devices.net", "dev1", Some("PyMod"));
        assert_eq!(
            sas::generate(
                &uri,
                "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTI=",
                1_700_000_000
            )
            .unwrap(),
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2FPyMod\
             &sig=RNdZd6PPBPXgagbLHvtkhX6oUSzaefKSjfKsE0NshI4%3D&se=1700000000"
        );
    }

    #[test]
    fn sas_token_parse_and_verify() {
        let key = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTI=";
        let uri = sas::resource_uri("hub.local", "dev1", Some("M"));
        let token = sas::generate(&uri, key, 2000).unwrap();
        let t = sas::SasToken::parse(&token).unwrap();
        assert_eq!(t.resource, uri);
        assert_eq!(t.expiry, 2000);
        assert_eq!(t.key_name, None);
        t.verify(key, &uri, 1000).unwrap();
        t.verify(key, &uri.to_uppercase(), 1000).unwrap();
        assert!(matches!(
            t.verify(key, &uri, 2000),
            Err(WireError::SasTokenRejected { .. })
        ));
        assert!(t
            .verify(key, "hub.local/devices/dev1/modules/N", 1000)
            .is_err());
        assert!(t.verify("b3RoZXJrZXk=", &uri, 1000).is_err());
        // a token whose sr was encoded differently (lowercase hex) still verifies: the signature is over sr as sent
        let lower = "hub.local%2fdevices%2fdev1%2fmodules%2fM";
        let sig = sas::sign(key, &format!("{lower}\n2000")).unwrap();
        let tok = format!(
            "SharedAccessSignature sig={}&se=2000&sr={lower}&skn=pol",
            quote(&sig)
        );
        let t2 = sas::SasToken::parse(&tok).unwrap();
        assert_eq!(t2.key_name.as_deref(), Some("pol"));
        t2.verify(key, &uri, 1000).unwrap();
        for bad in [
            "sr=a&sig=b&se=1",
            "SharedAccessSignature sr=a&sig=b",
            "SharedAccessSignature sr=a&sig=b&se=x",
            "SharedAccessSignature sr=a&sig=b&se=1&zz=1",
            "SharedAccessSignature sr=a&sr=a&sig=b&se=1",
            "SharedAccessSignature sr",
        ] {
            assert!(
                matches!(
                    sas::SasToken::parse(bad),
                    Err(WireError::BadSasToken { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn connection_strings() {
        let cs = ConnectionString::parse(
            "HostName=myhub.azure-devices.net;DeviceId=dev1;ModuleId=PyMod;SharedAccessKey=c2VjcmV0;GatewayHostName=localhost",
        )
        .unwrap();
        assert_eq!(cs.host_name, "myhub.azure-devices.net");
        assert_eq!(cs.device_id, "dev1");
        assert_eq!(cs.module_id.as_deref(), Some("PyMod"));
        assert_eq!(cs.shared_access_key.as_deref(), Some("c2VjcmV0"));
        assert_eq!(cs.connect_host(), "localhost");
        let dev = ConnectionString::parse("HostName=h;DeviceId=d;SharedAccessKey=YWJj;").unwrap();
        assert_eq!(dev.module_id, None);
        assert_eq!(dev.connect_host(), "h");

        let err = |s: &str| ConnectionString::parse(s).unwrap_err().to_string();
        assert!(err("DeviceId=d;SharedAccessKey=YWJj").contains("missing `HostName`"));
        assert!(err("HostName=h;SharedAccessKey=YWJj").contains("missing `DeviceId`"));
        assert!(err("HostName=h;DeviceId=d").contains("missing `SharedAccessKey`"));
        assert!(err("HostName=h;DeviceId=d;SharedAccessKey=!!")
            .contains("`SharedAccessKey` is not base64"));
        assert!(err("HostName=h;DeviceId=d;SharedAccessKey=YWJj;hostname=x")
            .contains("unknown key `hostname`"));
        assert!(err("HostName=h;HostName=h;DeviceId=d;SharedAccessKey=YWJj").contains("twice"));
        assert!(err("HostName=h;DeviceId;SharedAccessKey=YWJj").contains("has no `=`"));
        assert!(err("garbage").contains("expected `HostName=<hub>;DeviceId=<device>"));
    }

    #[test]
    fn usernames() {
        let u = username(
            "myhub.azure-devices.net",
            "dev1",
            Some("PyMod"),
            MQTT_API_VERSION,
        );
        assert_eq!(
            u,
            "myhub.azure-devices.net/dev1/PyMod/?api-version=2018-06-30"
        );
        assert_eq!(username("h", "d", None, "v"), "h/d/?api-version=v");
        let p = parse_username(
            "myhub.azure-devices.net/dev1/PyMod/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0%28x%29",
        )
        .unwrap();
        assert_eq!(
            p,
            Username {
                hub: "myhub.azure-devices.net".into(),
                device: "dev1".into(),
                module: Some("PyMod".into()),
                api_version: Some("2019-10-01".into()),
            }
        );
        let d = parse_username("h/d/?DeviceClientType=x&api-version=2020-09-30&model-id=dtmi:a;1")
            .unwrap();
        assert_eq!(
            (d.module, d.api_version.as_deref()),
            (None, Some("2020-09-30"))
        );
        assert_eq!(parse_username("h/d").unwrap().api_version, None);
        assert!(parse_username("h").is_err());
        assert!(parse_username("h//m/?api-version=1").is_err());
        assert!(parse_username("h/d/m/x/?api-version=1").is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(s in "\\PC{0,60}", t in "[$a-z0-9/?=&%.#+]{0,40}") {
                for input in [&s, &t] {
                    let mut m = Message::default();
                    let _ = decode_property_bag(input, &mut m);
                    let _ = topics::parse_client_publish(input, "d", Some("m"));
                    let _ = topics::parse_client_publish(&format!("$iothub/methods/res/{input}"), "d", None);
                    let _ = topics::parse_module_input(input, "d", "m");
                    let _ = topics::parse_twin_response(&format!("$iothub/twin/res/{input}"));
                    let _ = topics::parse_method_request(&format!("$iothub/methods/POST/{input}"));
                    let _ = parse_username(input);
                    let _ = sas::SasToken::parse(&format!("SharedAccessSignature {input}"));
                    let _ = ConnectionString::parse(input);
                }
            }

            #[test]
            fn any_properties_roundtrip(props in proptest::collection::btree_map("\\PC{1,8}", "\\PC{0,8}", 0..6),
                                        mid in proptest::option::of("\\PC{1,8}")) {
                let mut m = Message::new("b");
                m.message_id = mid;
                for (k, v) in props { if !k.starts_with("$.") { m.properties.insert(k, v); } }
                let bag = encode_property_bag(&m);
                prop_assert!(!bag.contains('/') && !bag.contains(' ') && !bag.contains('+'));
                let mut back = Message::new("b");
                decode_property_bag(&bag, &mut back).unwrap();
                prop_assert_eq!(back, m);
            }
        }
    }
}
