//! One codec for both protocol versions, built on rumqtt's own maintained packet code
//! (`rumqttc::mqttbytes::v4` for MQTT 3.1.1, `rumqttc::v5::mqttbytes::v5` for MQTT 5).
//!
//! rumqttc's codecs are written for the client side but parse and write every packet type in both
//! directions. This module adds what a server needs on top of them:
//! - the protocol version is chosen per connection by peeking at the protocol level byte of the
//!   first packet (which must be CONNECT): rumqttc's v4 `Connect::read` also accepts level 5 and
//!   would misread its properties, so the peek must come first;
//! - a version-neutral [`Inbound`]/[`Outbound`] model, so the session logic is written once;
//! - the 2-byte MQTT 5 DISCONNECT (reason 0, no properties), which rumqttc's v5 reader refuses.

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use tokio_util::codec::{Decoder, Encoder};

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// A will message as sent in CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will delay interval, seconds (0 for 3.1.1).
    pub delay_secs: u32,
    pub props: PubProps,
}

/// What a CONNECT carries, version-neutral.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub version: Version,
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5).
    pub clean: bool,
    /// Keep-alive in seconds; 0 disables the keep-alive check.
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT 5 session expiry interval in seconds (None in 3.1.1).
    pub session_expiry: Option<u32>,
    /// MQTT 5 maximum packet size the client accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5 receive maximum: unacknowledged QoS 1/2 messages the client accepts.
    pub receive_max: Option<u16>,
    /// MQTT 5 enhanced authentication method (not supported: such a CONNECT is refused).
    pub auth_method: Option<String>,
}

/// MQTT 5 publish properties we carry through (all empty for 3.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PubProps {
    pub payload_format_utf8: Option<bool>,
    pub message_expiry_secs: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    pub topic_alias: Option<u16>,
    /// MQTT 5 subscription identifiers of the subscriptions a delivery matched (outgoing only).
    pub subscription_ids: Vec<usize>,
    /// When the message expires (from `message_expiry_secs` at receipt); not on the wire.
    pub expires_at: Option<std::time::Instant>,
    /// For a delivery through a shared subscription: its `$share/{group}/{filter}`, so that a
    /// member that leaves hands the message to another member. Not on the wire.
    pub shared: Option<String>,
}

/// An application message in either direction.
#[derive(Debug, Clone)]
pub struct Pub {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub props: PubProps,
}

/// One requested subscription.
#[derive(Debug, Clone)]
pub struct SubFilter {
    pub filter: String,
    pub qos: QoS,
    /// MQTT 5: do not deliver the subscriber's own publishes back to it.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag as published.
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: 0 send retained on subscribe, 1 only if new, 2 never.
    pub retain_handling: u8,
    /// MQTT 5 subscription identifier (1 to 268,435,455), sent back with each delivery.
    pub id: Option<usize>,
}

/// Packets a server receives.
// A publish is the common packet and moves once; boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Inbound {
    Connect(Box<ConnectInfo>),
    /// CONNECT with a protocol level we do not speak (e.g. 3 = MQTT 3.1 "MQIsdp").
    UnsupportedProtocol(u8),
    Publish(Pub),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<SubFilter>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// DISCONNECT; `with_will` is MQTT 5's reason 0x04; `session_expiry` an MQTT 5 update.
    Disconnect {
        with_will: bool,
        session_expiry: Option<u32>,
    },
    /// A packet a server never receives (CONNACK, SUBACK, AUTH ...).
    Unexpected(&'static str),
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedProtocol,
    BadClientId,
    ServerUnavailable,
    BadUserNamePassword,
    NotAuthorized,
    BadAuthenticationMethod,
    /// MQTT 5 0x90 (3.1.1: 5 not authorized): the will topic cannot be taken.
    TopicNameInvalid,
    /// MQTT 5 0x97 (3.1.1: 5 not authorized): the will is over a limit.
    QuotaExceeded,
}

/// Why a QoS 1/2 publish is refused in its PUBACK/PUBREC (MQTT 5 only; 3.1.1 acknowledgements carry
/// no reason: a 3.1.1 client is disconnected instead, or, for the ACL, acknowledged without the
/// message being forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubRefusal {
    /// 0x90 Topic Name invalid.
    TopicNameInvalid,
    /// 0x97 Quota exceeded.
    QuotaExceeded,
    /// 0x87 Not authorized: the ACL file gives the client no write access to the topic.
    NotAuthorized,
}

/// Why one filter of a SUBSCRIBE is refused (MQTT 3.1.1 SUBACK says 0x80 Failure for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubRefusal {
    /// MQTT 5 0x8F Topic Filter invalid (also a bad shared subscription name).
    TopicFilterInvalid,
    /// MQTT 5 0x87 Not authorized: the ACL file gives the client no read access to the filter.
    NotAuthorized,
}

/// Why the server disconnects a client (sent as an MQTT 5 DISCONNECT reason; 3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    ProtocolError,
    MalformedPacket,
    PacketTooLarge,
    KeepAliveTimeout,
    SessionTakenOver,
    ServerShuttingDown,
    TopicNameInvalid,
    QuotaExceeded,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
}

/// Packets a server sends.
// As for `Inbound`: the publish is the common packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outbound {
    ConnAck {
        session_present: bool,
        refusal: Option<Refusal>,
        /// MQTT 5 CONNACK properties we announce.
        props: Option<ServerLimits>,
    },
    Publish(Pub),
    PubAck(u16),
    PubRec(u16),
    /// MQTT 5 only: a PUBACK / PUBREC that refuses the publish.
    PubAckRefused(u16, PubRefusal),
    PubRecRefused(u16, PubRefusal),
    PubRel(u16),
    PubComp(u16),
    /// One entry per filter: the granted QoS, or why it was refused.
    SubAck {
        pkid: u16,
        granted: Vec<Result<QoS, SubRefusal>>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    Disconnect(DisconnectReason),
}

/// What a server announces in an MQTT 5 CONNACK.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub receive_max: u16,
    pub max_packet_size: u32,
    pub assigned_client_id: Option<String>,
    pub session_expiry: Option<u32>,
}

/// Codec errors; each says what the peer did wrong.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("packet of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("first packet is not CONNECT (packet type {0})")]
    NotConnect(u8),
    #[error("invalid UTF-8 in a topic or string field")]
    NotUtf8,
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode packet: {0}")]
    Encode(String),
}

impl CodecError {
    /// Short label for the `reason` of refusal metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CodecError::TooLarge { .. } => "oversize",
            CodecError::NotConnect(_) => "not_connect",
            CodecError::NotUtf8 => "invalid_utf8",
            CodecError::Malformed(_) => "malformed",
            CodecError::Io(_) => "io",
            CodecError::Encode(_) => "encode",
        }
    }
}

fn from_v4(e: rumqttc::mqttbytes::Error, max: usize) -> CodecError {
    use rumqttc::mqttbytes::Error as E;
    match e {
        E::PayloadSizeLimitExceeded(size) => CodecError::TooLarge { size, max },
        E::TopicNotUtf8 => CodecError::NotUtf8,
        E::Io(e) => CodecError::Io(e),
        other => CodecError::Malformed(other.to_string()),
    }
}

fn from_v5(e: rumqttc::v5::mqttbytes::Error, max: usize) -> CodecError {
    use rumqttc::v5::mqttbytes::Error as E;
    match e {
        E::PayloadSizeLimitExceeded { pkt_size, .. } => CodecError::TooLarge {
            size: pkt_size,
            max,
        },
        E::TopicNotUtf8 | E::PayloadNotUtf8(_) => CodecError::NotUtf8,
        E::Io(e) => CodecError::Io(e),
        other => CodecError::Malformed(other.to_string()),
    }
}

fn q5(q: QoS) -> QoS5 {
    match q {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn q4(q: QoS5) -> QoS {
    match q {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Result of peeking at a CONNECT's protocol level.
#[derive(Debug, PartialEq, Eq)]
enum Peek {
    NeedMore,
    Level(u8),
}

/// Reads the protocol level of the CONNECT at the start of `buf` without consuming anything.
fn peek_level(buf: &[u8]) -> Result<Peek, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(Peek::NeedMore);
    };
    if first >> 4 != 1 {
        return Err(CodecError::NotConnect(first >> 4));
    }
    // remaining length: 1 to 4 bytes
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(Peek::NeedMore);
        };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(CodecError::Malformed(
                "remaining length longer than 4 bytes".into(),
            ));
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(i), buf.get(i + 1)) else {
        return Ok(Peek::NeedMore);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Err(CodecError::Malformed(format!(
            "protocol name of {name_len} bytes in CONNECT"
        )));
    }
    let Some(name) = buf.get(i + 2..i + 2 + name_len) else {
        return Ok(Peek::NeedMore);
    };
    if name != b"MQTT" && name != b"MQIsdp" {
        return Err(CodecError::Malformed(
            "unknown protocol name in CONNECT".into(),
        ));
    }
    match buf.get(i + 2 + name_len) {
        Some(&level) => Ok(Peek::Level(level)),
        None => Ok(Peek::NeedMore),
    }
}

/// Total frame length (fixed header + remaining length) if the header is complete.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut len: usize = 0;
    let mut shift = 0;
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        len += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(i + 1 + len);
        }
        shift += 7;
    }
    None
}

/// Whether `buf` holds a whole packet (fixed header and remaining length).
///
/// rumqttc takes a packet's whole frame off the buffer before it reads the body, and an MQTT 5
/// property length that runs past the end of the body comes back as `InsufficientBytes`, the
/// error that otherwise means "wait for more". With the whole frame in the buffer it means a
/// malformed packet: waiting instead dropped the packet without a word and left the packets
/// behind it unread until the client sent more (found by `fuzz/fuzz_targets/mqtt_decode.rs`).
fn has_whole_frame(buf: &[u8]) -> bool {
    frame_len(buf).is_some_and(|n| n <= buf.len())
}

fn past_the_end() -> CodecError {
    CodecError::Malformed("a length inside the packet runs past the packet's end".into())
}

/// Server side codec: decodes [`Inbound`], encodes [`Outbound`].
#[derive(Debug)]
pub struct ServerCodec {
    version: Option<Version>,
    /// Largest packet accepted from a client (remaining length), bytes.
    pub max_incoming: usize,
    /// Largest packet the client accepts (MQTT 5 maximum packet size), bytes.
    pub max_outgoing: Option<u32>,
}

impl ServerCodec {
    /// A codec that accepts packets up to `max_incoming` bytes of remaining length.
    pub fn new(max_incoming: usize) -> Self {
        ServerCodec {
            version: None,
            max_incoming,
            max_outgoing: None,
        }
    }

    /// An encoder for a connection whose version is known.
    pub fn for_version(version: Version) -> Self {
        ServerCodec {
            version: Some(version),
            max_incoming: 0,
            max_outgoing: None,
        }
    }

    /// The version chosen at CONNECT (None before).
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    fn decode_v4(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let max = self.max_incoming;
        let whole = has_whole_frame(src);
        let packet = match v4::Packet::read(src, max) {
            Ok(p) => p,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(n)) if !whole => {
                src.reserve(n);
                return Ok(None);
            }
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Err(past_the_end()),
            Err(e) => return Err(from_v4(e, max)),
        };
        Ok(Some(match packet {
            v4::Packet::Connect(c) => {
                let will = c.last_will.map(|w| Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: w.qos,
                    retain: w.retain,
                    delay_secs: 0,
                    props: PubProps::default(),
                });
                let (username, password) = match c.login {
                    Some(l) => (Some(l.username), Some(l.password)),
                    None => (None, None),
                };
                Inbound::Connect(Box::new(ConnectInfo {
                    version: Version::V311,
                    client_id: c.client_id,
                    clean: c.clean_session,
                    keep_alive: c.keep_alive,
                    will,
                    username,
                    password,
                    session_expiry: None,
                    max_packet_size: None,
                    receive_max: None,
                    auth_method: None,
                }))
            }
            v4::Packet::Publish(p) => Inbound::Publish(Pub {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                props: PubProps::default(),
            }),
            v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
            v4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
            v4::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
            v4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
            v4::Packet::Subscribe(s) => Inbound::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubFilter {
                        filter: f.path,
                        qos: f.qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                        id: None,
                    })
                    .collect(),
            },
            v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
                pkid: u.pkid,
                filters: u.topics,
            },
            v4::Packet::PingReq => Inbound::PingReq,
            v4::Packet::Disconnect => Inbound::Disconnect {
                with_will: false,
                session_expiry: None,
            },
            v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
            v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
            v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
            v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
        }))
    }

    fn decode_v5(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        // rumqttc refuses the short form of DISCONNECT (no reason code, no properties)
        if src.len() >= 2 && src[0] == 0xE0 && src[1] == 0x00 {
            src.advance(2);
            return Ok(Some(Inbound::Disconnect {
                with_will: false,
                session_expiry: None,
            }));
        }
        let max = self.max_incoming;
        let limit = u32::try_from(max).unwrap_or(u32::MAX);
        let whole = has_whole_frame(src);
        let packet = match v5::Packet::read(src, Some(limit)) {
            Ok(p) => p,
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(n)) if !whole => {
                src.reserve(n);
                return Ok(None);
            }
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => return Err(past_the_end()),
            Err(e) => return Err(from_v5(e, max)),
        };
        Ok(Some(match packet {
            v5::Packet::Connect(c, will, login) => {
                let will = match will {
                    Some(w) => {
                        let topic =
                            String::from_utf8(w.topic.to_vec()).map_err(|_| CodecError::NotUtf8)?;
                        let mut props = PubProps::default();
                        let mut delay_secs = 0;
                        if let Some(p) = w.properties {
                            delay_secs = p.delay_interval.unwrap_or(0);
                            props.payload_format_utf8 = p.payload_format_indicator.map(|v| v == 1);
                            props.message_expiry_secs = p.message_expiry_interval;
                            props.content_type = p.content_type;
                            props.response_topic = p.response_topic;
                            props.correlation_data = p.correlation_data;
                            props.user_properties = p.user_properties;
                        }
                        Some(Will {
                            topic,
                            payload: w.message,
                            qos: q4(w.qos),
                            retain: w.retain,
                            delay_secs,
                            props,
                        })
                    }
                    None => None,
                };
                let (session_expiry, max_packet_size, receive_max, auth_method) =
                    match &c.properties {
                        Some(p) => (
                            p.session_expiry_interval,
                            p.max_packet_size,
                            p.receive_maximum,
                            p.authentication_method.clone(),
                        ),
                        None => (None, None, None, None),
                    };
                let (username, password) = match login {
                    Some(l) => (Some(l.username), Some(l.password)),
                    None => (None, None),
                };
                Inbound::Connect(Box::new(ConnectInfo {
                    version: Version::V5,
                    client_id: c.client_id,
                    clean: c.clean_start,
                    keep_alive: c.keep_alive,
                    will,
                    username,
                    password,
                    session_expiry: Some(session_expiry.unwrap_or(0)),
                    max_packet_size,
                    receive_max,
                    auth_method,
                }))
            }
            v5::Packet::Publish(p) => {
                let topic = String::from_utf8(p.topic.to_vec()).map_err(|_| CodecError::NotUtf8)?;
                let mut props = PubProps::default();
                if let Some(pp) = p.properties {
                    props.payload_format_utf8 = pp.payload_format_indicator.map(|v| v == 1);
                    props.message_expiry_secs = pp.message_expiry_interval;
                    props.content_type = pp.content_type;
                    props.response_topic = pp.response_topic;
                    props.correlation_data = pp.correlation_data;
                    props.user_properties = pp.user_properties;
                    props.topic_alias = pp.topic_alias;
                }
                Inbound::Publish(Pub {
                    topic,
                    payload: p.payload,
                    qos: q4(p.qos),
                    retain: p.retain,
                    dup: p.dup,
                    pkid: p.pkid,
                    props,
                })
            }
            v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
            v5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
            v5::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
            v5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
            v5::Packet::Subscribe(s) => {
                let id = s.properties.as_ref().and_then(|p| p.id);
                Inbound::Subscribe {
                    pkid: s.pkid,
                    filters: s
                        .filters
                        .into_iter()
                        .map(|f| SubFilter {
                            id,
                            filter: f.path,
                            qos: q4(f.qos),
                            no_local: f.nolocal,
                            retain_as_published: f.preserve_retain,
                            retain_handling: match f.retain_forward_rule {
                                v5::RetainForwardRule::OnEverySubscribe => 0,
                                v5::RetainForwardRule::OnNewSubscribe => 1,
                                v5::RetainForwardRule::Never => 2,
                            },
                        })
                        .collect(),
                }
            }
            v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
                pkid: u.pkid,
                filters: u.filters,
            },
            v5::Packet::PingReq(_) => Inbound::PingReq,
            v5::Packet::Disconnect(d) => Inbound::Disconnect {
                with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
                session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
            },
            v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
            v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
            v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
            v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
            v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
        }))
    }

    fn encode_v4(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        let packet = match item {
            Outbound::ConnAck {
                session_present,
                refusal,
                ..
            } => v4::Packet::ConnAck(v4::ConnAck::new(
                match refusal {
                    None => v4::ConnectReturnCode::Success,
                    Some(Refusal::UnsupportedProtocol) => {
                        v4::ConnectReturnCode::RefusedProtocolVersion
                    }
                    Some(Refusal::BadClientId) => v4::ConnectReturnCode::BadClientId,
                    Some(Refusal::ServerUnavailable) => v4::ConnectReturnCode::ServiceUnavailable,
                    Some(Refusal::BadUserNamePassword) => {
                        v4::ConnectReturnCode::BadUserNamePassword
                    }
                    Some(Refusal::NotAuthorized)
                    | Some(Refusal::BadAuthenticationMethod)
                    | Some(Refusal::TopicNameInvalid)
                    | Some(Refusal::QuotaExceeded) => v4::ConnectReturnCode::NotAuthorized,
                },
                session_present && refusal.is_none(),
            )),
            Outbound::Publish(p) => v4::Packet::Publish(v4::Publish {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: p.topic,
                pkid: p.pkid,
                payload: p.payload,
            }),
            Outbound::PubAck(pkid) => v4::Packet::PubAck(v4::PubAck::new(pkid)),
            Outbound::PubRec(pkid) => v4::Packet::PubRec(v4::PubRec::new(pkid)),
            Outbound::PubAckRefused(..) | Outbound::PubRecRefused(..) => {
                return Err(CodecError::Encode(
                    "MQTT 3.1.1 acknowledgements carry no reason code".into(),
                ))
            }
            Outbound::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel::new(pkid)),
            Outbound::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
            Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
                pkid,
                granted
                    .into_iter()
                    .map(|g| match g {
                        Ok(q) => v4::SubscribeReasonCode::Success(q),
                        Err(_) => v4::SubscribeReasonCode::Failure,
                    })
                    .collect(),
            )),
            Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
            Outbound::PingResp => v4::Packet::PingResp,
            // MQTT 3.1.1 has no server DISCONNECT: the server just closes the connection
            Outbound::Disconnect(_) => return Ok(()),
        };
        packet
            .write(dst, usize::MAX)
            .map(|_| ())
            .map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn encode_v5(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        use v5::ConnectReturnCode as C;
        let packet = match item {
            Outbound::ConnAck {
                session_present,
                refusal,
                props,
            } => v5::Packet::ConnAck(v5::ConnAck {
                session_present: session_present && refusal.is_none(),
                code: match refusal {
                    None => C::Success,
                    Some(Refusal::UnsupportedProtocol) => C::UnsupportedProtocolVersion,
                    Some(Refusal::BadClientId) => C::ClientIdentifierNotValid,
                    Some(Refusal::ServerUnavailable) => C::ServerUnavailable,
                    Some(Refusal::BadUserNamePassword) => C::BadUserNamePassword,
                    Some(Refusal::NotAuthorized) => C::NotAuthorized,
                    Some(Refusal::BadAuthenticationMethod) => C::BadAuthenticationMethod,
                    Some(Refusal::TopicNameInvalid) => C::TopicNameInvalid,
                    Some(Refusal::QuotaExceeded) => C::QuotaExceeded,
                },
                properties: props.map(|l| v5::ConnAckProperties {
                    session_expiry_interval: l.session_expiry,
                    receive_max: Some(l.receive_max),
                    max_qos: None,
                    retain_available: Some(1),
                    max_packet_size: Some(l.max_packet_size),
                    assigned_client_identifier: l.assigned_client_id,
                    topic_alias_max: Some(0),
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(1),
                    shared_subscription_available: Some(1),
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                }),
            }),
            Outbound::Publish(p) => {
                let pr = &p.props;
                let has_props = PubProps {
                    shared: None,
                    ..pr.clone()
                } != PubProps::default();
                v5::Packet::Publish(v5::Publish {
                    dup: p.dup,
                    qos: q5(p.qos),
                    retain: p.retain,
                    topic: Bytes::from(p.topic.into_bytes()),
                    pkid: p.pkid,
                    payload: p.payload,
                    properties: if has_props {
                        Some(v5::PublishProperties {
                            payload_format_indicator: pr.payload_format_utf8.map(u8::from),
                            message_expiry_interval: pr.message_expiry_secs,
                            topic_alias: None,
                            response_topic: pr.response_topic.clone(),
                            correlation_data: pr.correlation_data.clone(),
                            user_properties: pr.user_properties.clone(),
                            subscription_identifiers: pr.subscription_ids.clone(),
                            content_type: pr.content_type.clone(),
                        })
                    } else {
                        None
                    },
                })
            }
            Outbound::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(pkid, None)),
            Outbound::PubRec(pkid) => v5::Packet::PubRec(v5::PubRec::new(pkid, None)),
            Outbound::PubAckRefused(pkid, why) => v5::Packet::PubAck(v5::PubAck {
                pkid,
                reason: match why {
                    PubRefusal::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
                    PubRefusal::QuotaExceeded => v5::PubAckReason::QuotaExceeded,
                    PubRefusal::NotAuthorized => v5::PubAckReason::NotAuthorized,
                },
                properties: None,
            }),
            Outbound::PubRecRefused(pkid, why) => v5::Packet::PubRec(v5::PubRec {
                pkid,
                reason: match why {
                    PubRefusal::TopicNameInvalid => v5::PubRecReason::TopicNameInvalid,
                    PubRefusal::QuotaExceeded => v5::PubRecReason::QuotaExceeded,
                    PubRefusal::NotAuthorized => v5::PubRecReason::NotAuthorized,
                },
                properties: None,
            }),
            Outbound::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(pkid, None)),
            Outbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
            Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
                pkid,
                return_codes: granted
                    .into_iter()
                    .map(|g| match g {
                        Ok(q) => v5::SubscribeReasonCode::Success(q5(q)),
                        Err(SubRefusal::TopicFilterInvalid) => {
                            v5::SubscribeReasonCode::TopicFilterInvalid
                        }
                        Err(SubRefusal::NotAuthorized) => v5::SubscribeReasonCode::NotAuthorized,
                    })
                    .collect(),
                properties: None,
            }),
            Outbound::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
                pkid,
                reasons: vec![v5::UnsubAckReason::Success; count],
                properties: None,
            }),
            Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
            Outbound::Disconnect(reason) => {
                use v5::DisconnectReasonCode as D;
                let code = match reason {
                    DisconnectReason::ProtocolError => D::ProtocolError,
                    DisconnectReason::MalformedPacket => D::MalformedPacket,
                    DisconnectReason::PacketTooLarge => D::PacketTooLarge,
                    DisconnectReason::KeepAliveTimeout => D::KeepAliveTimeout,
                    DisconnectReason::SessionTakenOver => D::SessionTakenOver,
                    DisconnectReason::ServerShuttingDown => D::ServerShuttingDown,
                    DisconnectReason::TopicNameInvalid => D::TopicNameInvalid,
                    DisconnectReason::QuotaExceeded => D::QuotaExceeded,
                    DisconnectReason::ReceiveMaximumExceeded => D::ReceiveMaximumExceeded,
                    DisconnectReason::TopicAliasInvalid => D::TopicAliasInvalid,
                };
                // Written here, not by rumqttc 0.25, whose DISCONNECT without properties says
                // remaining length 1 and then writes 2 bytes (reason code and a property length),
                // leaving a stray 0x00 on the wire. This is the spec's form: remaining length 2,
                // the reason code, property length 0.
                dst.extend_from_slice(&[0xE0, 0x02, code as u8, 0x00]);
                return Ok(());
            }
        };
        packet
            .write(dst, self.max_outgoing)
            .map(|_| ())
            .map_err(|e| CodecError::Encode(e.to_string()))
    }
}

impl Decoder for ServerCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        match self.version {
            Some(Version::V311) => self.decode_v4(src),
            Some(Version::V5) => self.decode_v5(src),
            None => {
                let level = match peek_level(src)? {
                    Peek::NeedMore => {
                        // refuse an oversize CONNECT before buffering it
                        if let Some(len) = frame_len(src) {
                            if len > self.max_incoming + 5 {
                                return Err(CodecError::TooLarge {
                                    size: len,
                                    max: self.max_incoming,
                                });
                            }
                        }
                        return Ok(None);
                    }
                    Peek::Level(l) => l,
                };
                match level {
                    4 => {
                        self.version = Some(Version::V311);
                        self.decode_v4(src)
                    }
                    5 => {
                        self.version = Some(Version::V5);
                        self.decode_v5(src)
                    }
                    other => {
                        // answer in 3.1.1 form (what older clients understand), then close
                        self.version = Some(Version::V311);
                        src.clear();
                        Ok(Some(Inbound::UnsupportedProtocol(other)))
                    }
                }
            }
        }
    }
}

impl Encoder<Outbound> for ServerCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match self.version {
            Some(Version::V5) => self.encode_v5(item, dst),
            _ => self.encode_v4(item, dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_connect(id: &str) -> BytesMut {
        let mut c = v4::Connect::new(id);
        c.keep_alive = 0;
        let mut b = BytesMut::new();
        let _ = c.write(&mut b);
        b
    }

    #[test]
    fn picks_v4_and_decodes_connect() {
        let mut codec = ServerCodec::new(1024);
        let mut b = v4_connect("dev1");
        match codec.decode(&mut b) {
            Ok(Some(Inbound::Connect(c))) => {
                assert_eq!(c.client_id, "dev1");
                assert_eq!(c.keep_alive, 0);
                assert_eq!(c.version, Version::V311);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(codec.version(), Some(Version::V311));
    }

    #[test]
    fn picks_v5() {
        let c = v5::Connect {
            keep_alive: 30,
            client_id: "d5".into(),
            clean_start: true,
            properties: None,
        };
        let mut b = BytesMut::new();
        let _ = v5::Packet::Connect(c, None, None).write(&mut b, None);
        let mut codec = ServerCodec::new(1024);
        match codec.decode(&mut b) {
            Ok(Some(Inbound::Connect(c))) => assert_eq!(c.version, Version::V5),
            other => panic!("unexpected {other:?}"),
        }
        // the short DISCONNECT rumqttc refuses
        let mut d = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            codec.decode(&mut d),
            Ok(Some(Inbound::Disconnect { .. }))
        ));
    }

    /// Found by `fuzz/fuzz_targets/mqtt_decode.rs`: a SUBSCRIBE whose remaining length (2) ends
    /// before its property length was taken off the buffer and reported as "need more bytes", so
    /// the packet vanished and the PINGREQ behind it waited for the client's next bytes.
    #[test]
    fn a_property_length_past_the_packet_end_is_malformed_not_a_wait() {
        let mut codec = ServerCodec::new(1024);
        let mut b =
            BytesMut::from(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut b),
            Ok(Some(Inbound::Connect(_)))
        ));
        b.extend_from_slice(&[0x82, 0x02, 0x09, 0x35, 0xC0, 0x00]);
        match codec.decode(&mut b) {
            Err(CodecError::Malformed(m)) => assert!(m.contains("past the packet"), "{m}"),
            other => panic!("expected a malformed packet, got {other:?}"),
        }
        // a packet that is only incomplete still waits for more
        let mut codec = ServerCodec::new(1024);
        let mut b =
            BytesMut::from(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut b),
            Ok(Some(Inbound::Connect(_)))
        ));
        b.extend_from_slice(&[0x82, 0x08, 0x09, 0x35, 0x00]);
        assert!(matches!(codec.decode(&mut b), Ok(None)));
        b.extend_from_slice(&[0x00, 0x02, b'a', b'/', 0x01]);
        assert!(matches!(
            codec.decode(&mut b),
            Ok(Some(Inbound::Subscribe { .. }))
        ));
    }

    #[test]
    fn v5_connect_properties_are_read() {
        let mut props = v5::ConnectProperties::new();
        props.session_expiry_interval = Some(60);
        props.receive_maximum = Some(5);
        props.authentication_method = Some("SCRAM".into());
        let c = v5::Connect {
            keep_alive: 0,
            client_id: "d5".into(),
            clean_start: false,
            properties: Some(props),
        };
        let mut b = BytesMut::new();
        let _ = v5::Packet::Connect(c, None, None).write(&mut b, None);
        let mut codec = ServerCodec::new(1024);
        match codec.decode(&mut b) {
            Ok(Some(Inbound::Connect(c))) => {
                assert_eq!(c.session_expiry, Some(60));
                assert_eq!(c.receive_max, Some(5));
                assert_eq!(c.auth_method.as_deref(), Some("SCRAM"));
                assert!(!c.clean);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn partial_connect_waits_for_more() {
        let full = v4_connect("dev1");
        for cut in 0..full.len() {
            let mut codec = ServerCodec::new(1024);
            let mut b = BytesMut::from(&full[..cut]);
            assert!(matches!(codec.decode(&mut b), Ok(None)), "cut {cut}");
        }
    }

    #[test]
    fn garbage_first_packet_is_refused() {
        let mut codec = ServerCodec::new(1024);
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(matches!(
            codec.decode(&mut b),
            Err(CodecError::NotConnect(_))
        ));
    }

    #[test]
    fn mqtt31_is_unsupported() {
        let mut b = BytesMut::from(&[0x10u8, 12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3][..]);
        let mut codec = ServerCodec::new(1024);
        assert!(matches!(
            codec.decode(&mut b),
            Ok(Some(Inbound::UnsupportedProtocol(3)))
        ));
    }

    #[test]
    fn oversize_publish_is_refused() {
        let mut codec = ServerCodec::new(100);
        let mut b = v4_connect("a");
        assert!(matches!(codec.decode(&mut b), Ok(Some(_))));
        let mut p = v4::Publish::new("t", QoS::AtLeastOnce, vec![0u8; 500]);
        p.pkid = 1;
        let mut b = BytesMut::new();
        let _ = p.write(&mut b);
        assert!(matches!(
            codec.decode(&mut b),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn invalid_utf8_topic_is_refused() {
        let mut codec = ServerCodec::new(100);
        let mut b = v4_connect("a");
        assert!(matches!(codec.decode(&mut b), Ok(Some(_))));
        let mut b = BytesMut::from(&[0x30u8, 5, 0, 2, 0xff, 0xfe, b'x'][..]);
        assert!(matches!(codec.decode(&mut b), Err(CodecError::NotUtf8)));
    }

    #[test]
    fn a_v5_disconnect_is_four_well_formed_bytes_that_rumqttc_reads_back() {
        let mut c = ServerCodec::for_version(Version::V5);
        let mut buf = BytesMut::new();
        c.encode(
            Outbound::Disconnect(DisconnectReason::ReceiveMaximumExceeded),
            &mut buf,
        )
        .expect("encodes");
        assert_eq!(&buf[..], &[0xE0, 0x02, 0x93, 0x00]);
        match v5::Packet::read(&mut buf, None) {
            Ok(v5::Packet::Disconnect(d)) => assert_eq!(
                d.reason_code,
                v5::DisconnectReasonCode::ReceiveMaximumExceeded
            ),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty(), "nothing left over");
    }

    #[test]
    fn acl_refusals_are_0x87_in_mqtt5_and_0x80_in_a_311_suback() {
        let mut c = ServerCodec::for_version(Version::V5);
        let mut buf = BytesMut::new();
        c.encode(
            Outbound::PubAckRefused(7, PubRefusal::NotAuthorized),
            &mut buf,
        )
        .expect("encodes");
        assert_eq!(&buf[..], &[0x40, 0x04, 0x00, 0x07, 0x87, 0x00]);
        buf.clear();
        c.encode(
            Outbound::PubRecRefused(8, PubRefusal::NotAuthorized),
            &mut buf,
        )
        .expect("encodes");
        assert_eq!(&buf[..], &[0x50, 0x04, 0x00, 0x08, 0x87, 0x00]);
        buf.clear();
        c.encode(
            Outbound::SubAck {
                pkid: 9,
                granted: vec![
                    Ok(QoS::AtLeastOnce),
                    Err(SubRefusal::NotAuthorized),
                    Err(SubRefusal::TopicFilterInvalid),
                ],
            },
            &mut buf,
        )
        .expect("encodes");
        assert_eq!(&buf[buf.len() - 3..], &[0x01, 0x87, 0x8F]);
        let mut c = ServerCodec::for_version(Version::V311);
        buf.clear();
        c.encode(
            Outbound::SubAck {
                pkid: 9,
                granted: vec![Err(SubRefusal::NotAuthorized), Ok(QoS::AtMostOnce)],
            },
            &mut buf,
        )
        .expect("encodes");
        assert_eq!(&buf[..], &[0x90, 0x04, 0x00, 0x09, 0x80, 0x00]);
    }
}
