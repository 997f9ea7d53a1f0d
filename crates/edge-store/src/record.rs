//! The message record: how a queued edgeHub message is stored, in a small versioned binary format
//! that does not depend on the property-bag text of the wire.
//!
//! Version 1, all integers little-endian: `[1u8][enqueued_ms i64][expiry_ms i64]`, then the strings
//! `module`, `output`, `input` (each `[u32 length][UTF-8 bytes]`), then eleven optional system
//! properties (`[0u8]` for none, `[1u8][string]`: message id, correlation id, user id, content type,
//! content encoding, creation time, expiry, output name, connection device id, connection module
//! id, interface id), then `[u32 count]` application properties as string pairs, then the body
//! (`[u32 length][bytes]`). Nothing may follow. A record of another version, a truncated one or one
//! with invalid UTF-8 is an error, never a panic.

use bytes::Bytes;
use edge_client::wire::Message;

use crate::StoreError;

/// A queued message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub enqueued_ms: i64,
    /// Milliseconds since the Unix epoch after which the message is dropped.
    pub expiry_ms: i64,
    /// The module that sent it ("" when the sender is not a module).
    pub module: String,
    pub output: String,
    /// The target input (a module's input queue), "" for `$upstream` or a queue without inputs.
    pub input: String,
    pub message: Message,
}

const RECORD_VERSION: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Messages are limited to far less than 4 GiB, the cast cannot truncate.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

/// Serializes a record.
pub fn encode_record(r: &Record) -> Vec<u8> {
    let m = &r.message;
    let mut out = Vec::with_capacity(m.body.len() + 256);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&r.enqueued_ms.to_le_bytes());
    out.extend_from_slice(&r.expiry_ms.to_le_bytes());
    put_str(&mut out, &r.module);
    put_str(&mut out, &r.output);
    put_str(&mut out, &r.input);
    for f in [
        &m.message_id,
        &m.correlation_id,
        &m.user_id,
        &m.content_type,
        &m.content_encoding,
        &m.creation_time,
        &m.expiry,
        &m.output_name,
        &m.connection_device_id,
        &m.connection_module_id,
        &m.interface_id,
    ] {
        put_opt(&mut out, f);
    }
    out.extend_from_slice(&(m.properties.len() as u32).to_le_bytes());
    for (k, v) in &m.properties {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    put_bytes(&mut out, &m.body);
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.b.len() < n {
            return Err(StoreError("truncated queue record".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| StoreError("queue record holds invalid UTF-8".into()))
    }
    fn opt(&mut self) -> Result<Option<String>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.string()?)),
            x => Err(StoreError(format!("queue record has a bad option tag {x}"))),
        }
    }
}

/// The expiry (ms since the epoch) from a record's header, without decoding the rest.
pub fn record_expiry(b: &[u8]) -> Option<i64> {
    let mut r = Reader { b };
    if r.u8().ok()? != RECORD_VERSION {
        return None;
    }
    r.i64().ok()?;
    r.i64().ok()
}

/// The target input from a record's header, without decoding the rest.
pub fn record_input(b: &[u8]) -> Option<&str> {
    let mut r = Reader { b };
    if r.u8().ok()? != RECORD_VERSION {
        return None;
    }
    r.i64().ok()?;
    r.i64().ok()?;
    r.bytes().ok()?;
    r.bytes().ok()?;
    std::str::from_utf8(r.bytes().ok()?).ok()
}

/// Deserializes a record.
pub fn decode_record(b: &[u8]) -> Result<Record, StoreError> {
    let mut r = Reader { b };
    let v = r.u8()?;
    if v != RECORD_VERSION {
        return Err(StoreError(format!(
            "queue record version {v} is unknown to this version; was the file written by a newer one?"
        )));
    }
    let enqueued_ms = r.i64()?;
    let expiry_ms = r.i64()?;
    let module = r.string()?;
    let output = r.string()?;
    let input = r.string()?;
    let mut m = Message {
        message_id: r.opt()?,
        correlation_id: r.opt()?,
        user_id: r.opt()?,
        content_type: r.opt()?,
        content_encoding: r.opt()?,
        creation_time: r.opt()?,
        expiry: r.opt()?,
        output_name: r.opt()?,
        connection_device_id: r.opt()?,
        connection_module_id: r.opt()?,
        interface_id: r.opt()?,
        ..Message::default()
    };
    let n = r.u32()?;
    for _ in 0..n {
        let k = r.string()?;
        let v = r.string()?;
        m.properties.insert(k, v);
    }
    m.body = Bytes::copy_from_slice(r.bytes()?);
    if !r.b.is_empty() {
        return Err(StoreError("queue record has trailing bytes".into()));
    }
    Ok(Record {
        enqueued_ms,
        expiry_ms,
        module,
        output,
        input,
        message: m,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record() -> Record {
        let mut m = Message::new(&b"{\"temp\":38}"[..]);
        m.content_type = Some("application/json".into());
        m.connection_device_id = Some("dev".into());
        m.properties.insert("k".into(), "v/w&x".into());
        Record {
            enqueued_ms: 1_700_000_000_000,
            expiry_ms: 1_700_000_007_200,
            module: "A".into(),
            output: "out1".into(),
            input: "in1".into(),
            message: m,
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let r = record();
        let b = encode_record(&r);
        assert_eq!(decode_record(&b).unwrap(), r);
        assert_eq!(record_expiry(&b), Some(r.expiry_ms));
        assert_eq!(record_expiry(&[1, 2]), None);
        assert_eq!(record_input(&b), Some("in1"));
        assert_eq!(record_input(&b[..20]), None);
        assert!(decode_record(&b[..b.len() - 1]).is_err());
        assert!(decode_record(&[9, 1, 2]).is_err());
        assert!(decode_record(&[]).is_err());
    }
}
