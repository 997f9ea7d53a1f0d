//! MqttServerModule's packet decoder (`mqtt_server::codec::ServerCodec`, rumqttc's v4 and v5
//! readers underneath) on arbitrary bytes from a device.
//!
//! Input: one mode byte, then the bytes a device sends. The mode picks what came before (nothing,
//! a 3.1.1 CONNECT or an MQTT 5 CONNECT), the packet size limit and how the bytes are cut into
//! reads (1 to 32 bytes, or all at once).
//!
//! Checks: no panic; a decoded packet consumed bytes (else `FramedRead` would spin forever); the
//! packets are the same however the bytes are cut into reads; every publish becomes an edgeHub
//! message (`to_edge_message`) whose property bag decodes back to the same properties.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_server::codec::{Inbound, ServerCodec};
use tokio_util::codec::Decoder;

const V4_CONNECT: &[u8] = &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 0];
const V5_CONNECT: &[u8] = &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0, 0, 0, 0];

/// Decodes `data` fed in reads of `chunk` bytes (0: all at once). Returns the packets (as Debug
/// text) and the error that ended the stream, if any.
fn decode_all(
    prefix: &[u8],
    data: &[u8],
    max: usize,
    chunk: usize,
) -> (Vec<String>, Option<String>) {
    let mut codec = ServerCodec::new(max);
    let mut buf = BytesMut::from(prefix);
    let mut out = Vec::new();
    let mut fed = 0;
    let step = if chunk == 0 { data.len().max(1) } else { chunk };
    loop {
        // decode everything the buffer holds
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(p)) => {
                    assert!(
                        buf.len() < before,
                        "a packet was decoded without consuming input: {p:?}"
                    );
                    check_packet(&p);
                    out.push(format!("{p:?}"));
                    if matches!(p, Inbound::UnsupportedProtocol(_)) {
                        // the server answers and closes: nothing after it is read
                        return (out, None);
                    }
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e.label().to_string())),
            }
        }
        if fed >= data.len() {
            return (out, None);
        }
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
}

/// What the server does next with a packet: a publish becomes an edgeHub message.
fn check_packet(p: &Inbound) {
    let Inbound::Publish(p) = p else { return };
    let _ = mqtt_server::limits::check_message(&p.topic, &p.props);
    let now = chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default();
    for enrich in [false, true] {
        let m = mqtt_server::message::to_edge_message(p, "fuzz-client", enrich, now);
        let checked = mqtt_server::message::check_size(&m, "output1");
        let mut wire = m;
        wire.output_name = Some("output1".into());
        assert_eq!(
            checked.is_ok(),
            wire.size() <= edge_client::wire::MAX_MESSAGE_SIZE,
            "the size check counts what the sent message holds"
        );
        let bag = edge_client::wire::encode_property_bag(&wire);
        let mut back = edge_client::wire::Message::new(wire.body.clone());
        edge_client::wire::decode_property_bag(&bag, &mut back).expect("a bag we encoded decodes");
        assert_eq!(
            edge_client::wire::encode_property_bag(&back),
            bag,
            "the property bag of a device publish does not survive a round trip"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let prefix: &[u8] = match mode % 3 {
        0 => &[],
        1 => V4_CONNECT,
        _ => V5_CONNECT,
    };
    let max = if mode & 0x80 != 0 { 64 } else { 64 * 1024 };
    let chunk = usize::from((mode >> 2) & 0x1f); // 0 = all at once, else 1..=31 bytes per read
    let (whole, whole_err) = decode_all(prefix, data, max, 0);
    if chunk != 0 {
        let (cut, cut_err) = decode_all(prefix, data, max, chunk);
        // An oversize first CONNECT is refused as too large while its protocol level is not in
        // yet, and as an unsupported protocol once it is: either way it is refused.
        let refused = |p: &[String], e: &Option<String>| {
            (p.is_empty() && e.is_some())
                || (p.len() == 1 && p[0].starts_with("UnsupportedProtocol"))
        };
        if prefix.is_empty() && refused(&whole, &whole_err) && refused(&cut, &cut_err) {
            return;
        }
        assert_eq!(
            whole, cut,
            "packets differ when the bytes arrive in {chunk}-byte reads"
        );
        // an error may come earlier with everything buffered (e.g. an oversize header seen at
        // once), but whether the stream fails must not depend on how it was read
        assert_eq!(
            whole_err.is_some(),
            cut_err.is_some(),
            "the stream fails ({whole_err:?}) read at once but ({cut_err:?}) in {chunk}-byte reads"
        );
    }
});
