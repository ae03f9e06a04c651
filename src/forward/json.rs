//! JSON requests. Fluentd's in_forward accepts a connection that starts with `[` or `{`
//! as a stream of JSON values instead of msgpack; each value is turned into the same
//! msgpack request a msgpack client would have sent, so one decoder serves both.

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum JsonError {
    #[error("invalid JSON request: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// True when a connection that starts with `first` speaks JSON.
pub fn starts_json(first: u8) -> bool {
    first == b'[' || first == b'{'
}

/// Parses the next JSON value at the start of `buf`. Returns the bytes it consumed and
/// the value re-encoded as msgpack, or `None` when the value is not complete yet.
pub fn next_json_request(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, JsonError> {
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match stream.next() {
        None => {
            // Only whitespace so far: consume it so it does not pile up.
            Ok(if buf.is_empty() {
                None
            } else {
                Some((buf.len(), Vec::new()))
            })
        }
        Some(Ok(v)) => {
            let mut out = Vec::with_capacity(buf.len());
            encode(&v, &mut out);
            Ok(Some((stream.byte_offset(), out)))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(e.into()),
    }
}

fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            } else if let Some(i) = n.as_i64() {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            } else {
                out.push(0xcb);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_bits().to_be_bytes());
            }
        }
        Value::String(s) => {
            out.push(0xdb);
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            out.push(0xdd);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                encode(item, out);
            }
        }
        Value::Object(map) => {
            out.push(0xdf);
            out.extend_from_slice(&(map.len() as u32).to_be_bytes());
            for (k, item) in map {
                out.push(0xdb);
                out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                out.extend_from_slice(k.as_bytes());
                encode(item, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::request::{decode_request, Entries};

    #[test]
    fn json_message_becomes_a_request() {
        let buf = br#"["app", 1700000000, {"log": "hi"}] ["next""#;
        let (used, frame) = next_json_request(buf).unwrap().unwrap();
        assert_eq!(&buf[used..], br#" ["next""#);
        let r = decode_request(&frame).unwrap();
        assert_eq!(&frame[r.tag], b"app");
        assert!(matches!(r.entries, Entries::Message(Ok(_))));
        assert!(next_json_request(&buf[used..]).unwrap().is_none());
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(next_json_request(b"[1,,]").is_err());
    }
}
