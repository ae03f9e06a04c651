//! Renders msgpack values as JSON text, straight from the bytes: the `json` output
//! format, the `seed` line of a record whose line is not a string, and the acks of
//! clients that speak JSON. Here, below intake and publisher alike, so that neither
//! imports the other.

use crate::forward::msgpack::{Cursor, Kind, Number, ReadError};
use crate::forward::EventTime;
use base64::Engine;
use std::io::Write;

/// Writes `bytes` as a JSON string. Invalid UTF-8 becomes U+FFFD; the return value says
/// whether that happened, so the caller can keep the exact bytes elsewhere.
pub fn write_str(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            write_escaped(out, s);
            true
        }
        Err(_) => {
            write_escaped(out, &String::from_utf8_lossy(bytes));
            false
        }
    }
}

fn write_escaped(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Longest text of a map key that is not a string. Such keys are rendered as JSON and
/// then quoted; without a bound, keys nested inside keys would be escaped again at every
/// level and a tiny request could expand exponentially.
pub const MAX_KEY_TEXT: usize = 1024;

/// Why rendering stopped early.
enum Stop {
    Read(ReadError),
    /// The output passed its length limit (only for the text of non-string keys).
    Limit,
}

impl From<ReadError> for Stop {
    fn from(e: ReadError) -> Self {
        Stop::Read(e)
    }
}

/// Writes the msgpack value at the cursor as JSON and moves past it. Map keys that are
/// not strings are rendered as JSON (at most [`MAX_KEY_TEXT`] bytes of it) and then
/// quoted; an EventTime extension becomes an RFC 3339 string; other extensions
/// `{"ext": type, "data": base64}`.
pub fn write_value<'a>(
    out: &mut Vec<u8>,
    c: &mut Cursor<'a>,
    data: &'a [u8],
) -> Result<(), ReadError> {
    render(out, c, data, usize::MAX).map_err(|stop| match stop {
        Stop::Read(e) => e,
        // No output reaches usize::MAX bytes.
        Stop::Limit => ReadError::Truncated,
    })
}

fn render<'a>(
    out: &mut Vec<u8>,
    c: &mut Cursor<'a>,
    data: &'a [u8],
    limit: usize,
) -> Result<(), Stop> {
    match c.peek_kind()? {
        Kind::Nil => {
            c.nil();
            out.extend_from_slice(b"null");
        }
        Kind::Bool => {
            let v = c.boolean()?;
            out.extend_from_slice(if v { b"true" } else { b"false" });
        }
        Kind::Int | Kind::Float => write_number(out, c.number()?),
        Kind::Str | Kind::Bin => {
            let r = c.bytes()?;
            write_str(out, &data[r]);
        }
        Kind::Array => {
            let n = c.array_len()?;
            out.push(b'[');
            for i in 0..n {
                if out.len() > limit {
                    return Err(Stop::Limit);
                }
                if i > 0 {
                    out.push(b',');
                }
                render(out, c, data, limit)?;
            }
            out.push(b']');
        }
        Kind::Map => {
            let n = c.map_len()?;
            out.push(b'{');
            for i in 0..n {
                if out.len() > limit {
                    return Err(Stop::Limit);
                }
                if i > 0 {
                    out.push(b',');
                }
                write_key(out, c, data)?;
                out.push(b':');
                render(out, c, data, limit)?;
            }
            out.push(b'}');
        }
        Kind::Ext => {
            let (code, r) = c.ext()?;
            let bytes = &data[r];
            if code == 0 && bytes.len() == 8 {
                let t = EventTime {
                    secs: u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
                    nanos: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                };
                out.push(b'"');
                t.write_rfc3339(out);
                out.push(b'"');
            } else {
                let _ = write!(out, "{{\"ext\":{code},\"data\":\"");
                write_base64(out, bytes);
                out.extend_from_slice(b"\"}");
            }
        }
        Kind::Reserved => return Err(Stop::Read(ReadError::Reserved)),
    }
    Ok(())
}

/// Writes a map key: strings as themselves, anything else as its JSON text in quotes,
/// cut at [`MAX_KEY_TEXT`] bytes (marked with "…").
pub fn write_key<'a>(
    out: &mut Vec<u8>,
    c: &mut Cursor<'a>,
    data: &'a [u8],
) -> Result<(), ReadError> {
    if matches!(c.peek_kind()?, Kind::Str | Kind::Bin) {
        let r = c.bytes()?;
        write_str(out, &data[r]);
        return Ok(());
    }
    let start = c.pos();
    let mut text = Vec::new();
    match render(&mut text, c, data, MAX_KEY_TEXT) {
        Ok(()) => {}
        Err(Stop::Read(e)) => return Err(e),
        Err(Stop::Limit) => {
            *c = Cursor::at(data, start);
            c.skip()?;
        }
    }
    // Cut here too: the last element may have taken the text past the limit.
    if text.len() > MAX_KEY_TEXT {
        text.truncate(MAX_KEY_TEXT);
        text.extend_from_slice("…".as_bytes());
    }
    write_str(out, &text);
    Ok(())
}

fn write_number(out: &mut Vec<u8>, n: Number) {
    // Writing to a Vec cannot fail.
    match n {
        Number::Unsigned(u) => {
            let _ = write!(out, "{u}");
        }
        Number::Signed(i) => {
            let _ = write!(out, "{i}");
        }
        Number::Float(f) if f.is_finite() => {
            let _ = serde_json::to_writer(&mut *out, &f);
        }
        // JSON has no NaN or infinity.
        Number::Float(_) => out.extend_from_slice(b"null"),
    }
}

/// Appends the standard (padded) base64 of `bytes`.
pub fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_value(&mut out, &mut Cursor::new(bytes), bytes).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values() {
        assert_eq!(json_of(&[0x93, 0xc0, 0xc3, 0xff]), "[null,true,-1]");
        assert_eq!(
            json_of(&[0x82, 0xa1, b'a', 0xa2, b'"', b'\n', 0x01, 0x81, 0xa0, 0x90]),
            r#"{"a":"\"\n","1":{"":[]}}"#
        );
        let mut f = vec![0xcb];
        f.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        assert_eq!(json_of(&f), "1.5");
        assert_eq!(json_of(&[0xa2, 0xff, b'x']), "\"\u{fffd}x\"");
        assert_eq!(json_of(&[0xd4, 0x05, 0xff]), r#"{"ext":5,"data":"/w=="}"#);
    }

    #[test]
    fn nested_non_string_keys_stay_small() {
        // {{{...{"\"": 1}...: 1}: 1}, 40 deep: escaping doubles per level without a cap.
        let depth = 40;
        let mut v = vec![0x81u8; depth];
        v.extend_from_slice(&[0xa1, b'"']);
        v.extend(std::iter::repeat_n(0x01, depth));
        let mut out = Vec::new();
        let mut c = Cursor::new(&v);
        write_value(&mut out, &mut c, &v).unwrap();
        assert!(c.is_empty(), "the whole value was consumed");
        assert!(out.len() < 4 * MAX_KEY_TEXT, "{} bytes", out.len());
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(parsed.is_object());
    }
}
