//! Arbitrary bytes from a client never panic the decoder: they decode, wait for more, or fail.

use bytes::BytesMut;
use mqtt_server::codec::ServerCodec;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn v4_connect() -> Vec<u8> {
    vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 0]
}

fn v5_connect() -> Vec<u8> {
    vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0, 0, 0, 0]
}

fn drain(codec: &mut ServerCodec, buf: &mut BytesMut) {
    for _ in 0..1000 {
        match codec.decode(buf) {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn garbage_before_connect(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut codec = ServerCodec::new(4096);
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut codec, &mut buf);
    }

    #[test]
    fn garbage_after_v4_connect(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut codec = ServerCodec::new(4096);
        let mut buf = BytesMut::from(&v4_connect()[..]);
        prop_assert!(matches!(codec.decode(&mut buf), Ok(Some(_))));
        buf.extend_from_slice(&bytes);
        drain(&mut codec, &mut buf);
    }

    #[test]
    fn garbage_after_v5_connect(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut codec = ServerCodec::new(4096);
        let mut buf = BytesMut::from(&v5_connect()[..]);
        prop_assert!(matches!(codec.decode(&mut buf), Ok(Some(_))));
        buf.extend_from_slice(&bytes);
        drain(&mut codec, &mut buf);
    }

    /// Packets with a valid fixed header and random bodies reach the packet parsers themselves.
    #[test]
    fn framed_random_packets_v5(kind in 1u8..16, flags in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut codec = ServerCodec::new(4096);
        let mut buf = BytesMut::from(&v5_connect()[..]);
        prop_assert!(matches!(codec.decode(&mut buf), Ok(Some(_))));
        buf.extend_from_slice(&[(kind << 4) | flags, body.len() as u8]);
        buf.extend_from_slice(&body);
        drain(&mut codec, &mut buf);
    }

    #[test]
    fn framed_random_packets_v4(kind in 1u8..16, flags in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut codec = ServerCodec::new(4096);
        let mut buf = BytesMut::from(&v4_connect()[..]);
        prop_assert!(matches!(codec.decode(&mut buf), Ok(Some(_))));
        buf.extend_from_slice(&[(kind << 4) | flags, body.len() as u8]);
        buf.extend_from_slice(&body);
        drain(&mut codec, &mut buf);
    }

    #[test]
    fn framed_random_connects(level in prop_oneof![Just(4u8), Just(5u8)], body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut codec = ServerCodec::new(4096);
        let mut pkt = vec![0x10, (body.len() + 7) as u8, 0, 4, b'M', b'Q', b'T', b'T', level];
        pkt.extend_from_slice(&body);
        let mut buf = BytesMut::from(&pkt[..]);
        drain(&mut codec, &mut buf);
    }
}
