//! JSON requests. Fluentd's in_forward accepts a connection that starts with `[` or `{`
//! as a stream of JSON values instead of msgpack; each value is turned into the same
//! msgpack request a msgpack client would have sent, so one decoder serves both.
//!
//! Like the msgpack scanner, the boundary scanner here is resumable: a large value that
//! arrives in many reads is walked once, then parsed once.

use super::msgpack_write::{array_head, map_head, str_head};
use serde_json::Value;
use std::ops::Range;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum JsonError {
    #[error("invalid JSON request: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("JSON request starts with {0:?}, not an array or object")]
    NotContainer(char),
    #[error("JSON request over the frame cap of {0} bytes")]
    TooLarge(usize),
}

/// True when a connection that starts with `first` speaks JSON.
pub fn starts_json(first: u8) -> bool {
    first == b'[' || first == b'{'
}

/// Finds where each top-level JSON array or object ends, across reads.
#[derive(Debug)]
pub struct JsonScanner {
    max_size: usize,
    /// Offset of the value's first byte, once found.
    start: Option<usize>,
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonScanner {
    pub fn new(max_size: usize) -> Self {
        JsonScanner {
            max_size,
            start: None,
            pos: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Returns the range of the complete value at the start of `buf` (after any
    /// whitespace), `None` when more bytes are needed. `buf` must keep its bytes between
    /// calls until a value is returned.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<Range<usize>>, JsonError> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            self.pos += 1;
            let Some(start) = self.start else {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'[' | b'{' => {
                        self.start = Some(self.pos - 1);
                        self.depth = 1;
                        continue;
                    }
                    other => {
                        *self = JsonScanner::new(self.max_size);
                        return Err(JsonError::NotContainer(char::from(other)));
                    }
                }
            };
            if self.pos - start > self.max_size {
                *self = JsonScanner::new(self.max_size);
                return Err(JsonError::TooLarge(self.max_size));
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => self.depth += 1,
                b']' | b'}' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let end = self.pos;
                        *self = JsonScanner::new(self.max_size);
                        return Ok(Some(start..end));
                    }
                }
                _ => {}
            }
        }
        // Only whitespace so far stays unconsumed, but counts against the cap.
        if self.start.is_none() && self.pos > self.max_size {
            *self = JsonScanner::new(self.max_size);
            return Err(JsonError::TooLarge(self.max_size));
        }
        Ok(None)
    }
}

/// Parses one complete JSON value (as found by [`JsonScanner`]) and re-encodes it as
/// the msgpack request a msgpack client would have sent.
pub fn json_to_msgpack(value: &[u8]) -> Result<Vec<u8>, JsonError> {
    let v: Value = serde_json::from_slice(value)?;
    let mut out = Vec::with_capacity(value.len() + 16);
    encode(&v, &mut out);
    Ok(out)
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
        Value::String(s) => encode_str(s, out),
        Value::Array(items) => {
            out.extend_from_slice(array_head(items.len()).as_bytes());
            for item in items {
                encode(item, out);
            }
        }
        Value::Object(map) => {
            out.extend_from_slice(
                map_head(u32::try_from(map.len()).unwrap_or(u32::MAX)).as_bytes(),
            );
            for (k, item) in map {
                encode_str(k, out);
                encode(item, out);
            }
        }
    }
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(str_head(s.len()).as_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::request::{decode_request, Entries};

    #[test]
    fn json_message_becomes_a_request() {
        let buf = br#" ["app", 1700000000, {"log": "h]i\"}"}] ["next""#;
        let mut s = JsonScanner::new(1 << 20);
        let r = s.scan(buf).unwrap().unwrap();
        assert_eq!(&buf[r.end..], br#" ["next""#);
        let frame = json_to_msgpack(&buf[r.clone()]).unwrap();
        let req = decode_request(&frame).unwrap();
        assert_eq!(&frame[req.tag], b"app");
        assert!(matches!(req.entries, Entries::Message(Ok(_))));
        assert!(s.scan(&buf[r.end..]).unwrap().is_none());
    }

    #[test]
    fn resumes_byte_by_byte() {
        let value = br#"[ "t", 1, {"k": "a\\\"]"} ]"#;
        let mut s = JsonScanner::new(1 << 20);
        for end in 0..value.len() {
            assert!(s.scan(&value[..end]).unwrap().is_none(), "prefix {end}");
        }
        assert_eq!(s.scan(value).unwrap(), Some(0..value.len()));
    }

    #[test]
    fn errors() {
        assert!(json_to_msgpack(b"[1,,]").is_err());
        assert!(matches!(
            JsonScanner::new(100).scan(b"5"),
            Err(JsonError::NotContainer('5'))
        ));
        assert!(matches!(
            JsonScanner::new(8).scan(b"[\"0123456789\"]"),
            Err(JsonError::TooLarge(8))
        ));
    }
}
