//! Shared pieces of the end-to-end benchmark tools: a tiny argument parser, the
//! hand-rolled msgpack writer, the Docker-shaped record, the log line with its patchable
//! sequence number and send timestamp, and histogram summaries.
//!
//! The log line of every generated event starts with a fixed-width header
//!
//! ```text
//! c=00003 seq=000001234 ts=1764118000123456789 <filler up to LOG_LEN bytes>
//! ```
//!
//! `c` is the sender (connection) id, `seq` counts that sender's events from 0, `ts` is
//! the wall-clock time (ns since the epoch) at which the request carrying the event was
//! written. Every field has a fixed width, so the digits can be patched in a
//! pre-encoded buffer without changing any msgpack length. `c=99999` marks an event
//! whose `seq` is not tracked and `ts=0` an event without a timestamp (the
//! CompressedPackedForward pool, which cannot be patched after compression).

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of every record's `log` value.
pub const LOG_LEN: usize = 128;
/// Sender id meaning "do not track the sequence of this event".
pub const UNTRACKED_SENDER: u32 = 99_999;
/// Offsets inside the log line.
pub const C_OFF: usize = 2; // "c=" then 5 digits
pub const C_LEN: usize = 5;
pub const SEQ_OFF: usize = 12; // "c=00000 seq=" then 9 digits
pub const SEQ_LEN: usize = 9;
pub const TS_OFF: usize = 25; // "... seq=000000000 ts=" then 19 digits
pub const TS_LEN: usize = 19;

/// Nanoseconds since the epoch, from the wall clock (comparable across processes).
#[inline]
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Writes `v` as exactly `out.len()` decimal digits (zero-padded, high digits cut).
#[inline]
pub fn put_digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Parses up to the first non-digit; None when `s` starts with no digit.
#[inline]
pub fn parse_digits(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add((b - b'0') as u64);
        n += 1;
    }
    (n > 0).then_some(v)
}

/// The log line of one event, `LOG_LEN` bytes, with `seq` and `ts` filled in.
pub fn log_line(sender: u32, seq: u64, ts: u64) -> Vec<u8> {
    let mut line = format!(
        "c={:05} seq={:09} ts={:019} ",
        sender,
        seq % 1_000_000_000,
        ts
    )
    .into_bytes();
    // Filler that varies with the sequence number so that lines are not all identical.
    let words = [
        "GET /api/v1/items",
        "status=200",
        "bytes=5120",
        "user=alice",
        "region=eu-west",
        "duration_ms=12",
        "cache=miss",
        "upstream=10.0.3.7:8080",
        "trace=4bf92f3577b34da6",
    ];
    let mut i = seq as usize;
    while line.len() < LOG_LEN {
        line.extend_from_slice(words[i % words.len()].as_bytes());
        line.push(b' ');
        i = i.wrapping_mul(7).wrapping_add(3);
    }
    line.truncate(LOG_LEN);
    line
}

/// Patches sender, seq and ts in a log line that starts at `at` in `buf`.
#[inline]
pub fn patch_line(buf: &mut [u8], at: usize, seq: u64, ts: u64) {
    put_digits(&mut buf[at + SEQ_OFF..at + SEQ_OFF + SEQ_LEN], seq);
    put_digits(&mut buf[at + TS_OFF..at + TS_OFF + TS_LEN], ts);
}

/// What a subscriber reads back from a log line: (sender, seq, ts).
#[inline]
pub fn parse_line(line: &[u8]) -> Option<(u32, u64, u64)> {
    if line.len() < TS_OFF + TS_LEN || &line[..2] != b"c=" {
        return None;
    }
    let c = parse_digits(&line[C_OFF..C_OFF + C_LEN])? as u32;
    let seq = parse_digits(&line[SEQ_OFF..SEQ_OFF + SEQ_LEN])?;
    let ts = parse_digits(&line[TS_OFF..TS_OFF + TS_LEN])?;
    Some((c, seq, ts))
}

/// 64 hex digits for sender `i`.
pub fn container_id(i: u32) -> String {
    let mut s = String::with_capacity(64);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    while s.len() < 64 {
        x ^= x >> 31;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 29;
        s.push_str(&format!("{:016x}", x));
    }
    s.truncate(64);
    s
}

pub fn tenant(i: u32) -> String {
    format!("tenant-{}", i % 8)
}

pub fn service(i: u32) -> String {
    format!("svc-{}", i % 4)
}

// ---------------------------------------------------------------------------------------
// Hand-rolled msgpack, enough for the requests the generator sends.

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len();
    match len {
        0..=31 => out.push(0xa0 | len as u8),
        32..=0xff => out.extend_from_slice(&[0xd9, len as u8]),
        0x100..=0xffff => {
            out.push(0xda);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

pub fn put_bin_header(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=0xff => out.extend_from_slice(&[0xc4, len as u8]),
        0x100..=0xffff => {
            out.push(0xc5);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xc6);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

pub fn put_array_header(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=15 => out.push(0x90 | len as u8),
        16..=0xffff => {
            out.push(0xdc);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdd);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

pub fn put_map_header(out: &mut Vec<u8>, len: usize) {
    assert!(len <= 15);
    out.push(0x80 | len as u8);
}

pub fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    }
}

/// EventTime as fixext8.
pub fn put_event_time(out: &mut Vec<u8>, ns: u64) {
    out.extend_from_slice(&[0xd7, 0x00]);
    out.extend_from_slice(&((ns / 1_000_000_000) as u32).to_be_bytes());
    out.extend_from_slice(&((ns % 1_000_000_000) as u32).to_be_bytes());
}

/// Appends one Docker-shaped record map; returns the offset of its log line in `out`.
pub fn put_record(out: &mut Vec<u8>, sender: u32, seq: u64, ts: u64) -> usize {
    put_map_header(out, 6);
    put_str(out, b"container_id");
    put_str(out, container_id(sender).as_bytes());
    put_str(out, b"container_name");
    put_str(out, format!("/bench-{:05}", sender).as_bytes());
    put_str(out, b"source");
    put_str(out, b"stdout");
    put_str(out, b"log");
    let line = log_line(sender, seq, ts);
    put_str(out, &line);
    let at = out.len() - line.len();
    put_str(out, b"TENANT_ID");
    put_str(out, tenant(sender).as_bytes());
    put_str(out, b"SERVICE_ID");
    put_str(out, service(sender).as_bytes());
    at
}

// ---------------------------------------------------------------------------------------
// Reading the gateway's `batch` format: the last frame is a Forward-mode message,
// `[tag, [[time, record], ...]]`. A small span reader, enough to find each record's
// `log` value without building values.

/// Reads a big-endian length of `width` bytes at `at`.
fn be_len(b: &[u8], at: usize, width: usize) -> Option<usize> {
    let bytes = b.get(at..at + width)?;
    Some(bytes.iter().fold(0usize, |n, &x| (n << 8) | x as usize))
}

/// A value's header at `at`: (header length, payload bytes, child values).
fn value_head(b: &[u8], at: usize) -> Option<(usize, usize, usize)> {
    let first = *b.get(at)?;
    Some(match first {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
        0x80..=0x8f => (1, 0, 2 * (first & 0x0f) as usize),
        0x90..=0x9f => (1, 0, (first & 0x0f) as usize),
        0xa0..=0xbf => (1, (first & 0x1f) as usize, 0),
        0xc4 | 0xd9 => (2, be_len(b, at + 1, 1)?, 0),
        0xc5 | 0xda => (3, be_len(b, at + 1, 2)?, 0),
        0xc6 | 0xdb => (5, be_len(b, at + 1, 4)?, 0),
        0xc7 => (3, be_len(b, at + 1, 1)?, 0),
        0xc8 => (4, be_len(b, at + 1, 2)?, 0),
        0xc9 => (6, be_len(b, at + 1, 4)?, 0),
        0xca => (1, 4, 0),
        0xcb => (1, 8, 0),
        0xcc | 0xd0 => (1, 1, 0),
        0xcd | 0xd1 => (1, 2, 0),
        0xce | 0xd2 => (1, 4, 0),
        0xcf | 0xd3 => (1, 8, 0),
        0xd4 => (2, 1, 0),
        0xd5 => (2, 2, 0),
        0xd6 => (2, 4, 0),
        0xd7 => (2, 8, 0),
        0xd8 => (2, 16, 0),
        0xdc => (3, 0, be_len(b, at + 1, 2)?),
        0xdd => (5, 0, be_len(b, at + 1, 4)?),
        0xde => (3, 0, 2 * be_len(b, at + 1, 2)?),
        0xdf => (5, 0, 2 * be_len(b, at + 1, 4)?),
        0xc1 => return None,
    })
}

/// The position just past the value at `at` (iterative: no recursion on nesting).
pub fn skip_value(b: &[u8], mut at: usize) -> Option<usize> {
    let mut pending = 1usize;
    while pending > 0 {
        let (head, payload, children) = value_head(b, at)?;
        at = at.checked_add(head + payload)?;
        pending = pending - 1 + children;
    }
    (at <= b.len()).then_some(at)
}

/// An array header at `at`: (item count, position of the first item).
fn array_at(b: &[u8], at: usize) -> Option<(usize, usize)> {
    match *b.get(at)? {
        0x90..=0x9f | 0xdc | 0xdd => {
            let (head, _, n) = value_head(b, at)?;
            Some((n, at + head))
        }
        _ => None,
    }
}

/// The payload of the str value at `at`, if it is one.
fn str_at(b: &[u8], at: usize) -> Option<&[u8]> {
    match *b.get(at)? {
        0xa0..=0xbf | 0xd9..=0xdb => {
            let (head, len, _) = value_head(b, at)?;
            b.get(at + head..at + head + len)
        }
        _ => None,
    }
}

/// The value of key `key` in the record map at `at` (`None` when absent).
fn map_str<'a>(b: &'a [u8], at: usize, key: &[u8]) -> Option<&'a [u8]> {
    let (head, _, items) = match *b.get(at)? {
        0x80..=0x8f | 0xde | 0xdf => value_head(b, at)?,
        _ => return None,
    };
    let mut pos = at + head;
    for _ in 0..items / 2 {
        let value = skip_value(b, pos)?;
        if str_at(b, pos) == Some(key) {
            return str_at(b, value);
        }
        pos = skip_value(b, value)?;
    }
    None
}

/// Calls `line` with the `log` value of every record of a `batch`-format body (an
/// empty slice for a record without one) and returns how many records there were;
/// `None` when the body is not a whole Forward-mode message.
pub fn batch_lines(body: &[u8], mut line: impl FnMut(&[u8])) -> Option<u64> {
    let (2, tag) = array_at(body, 0)? else {
        return None;
    };
    let (count, mut pos) = array_at(body, skip_value(body, tag)?)?;
    for _ in 0..count {
        let (2, time) = array_at(body, pos)? else {
            return None;
        };
        let record = skip_value(body, time)?;
        line(map_str(body, record, b"log").unwrap_or(b""));
        pos = skip_value(body, record)?;
    }
    (pos == body.len()).then_some(count as u64)
}

// ---------------------------------------------------------------------------------------
// Arguments: `--name value` and `--flag`, nothing fancier.

pub struct Args {
    map: HashMap<String, String>,
}

impl Args {
    pub fn parse(flags: &[&str]) -> Args {
        Args::from_vec(std::env::args().skip(1).collect(), flags)
    }
    pub fn from_vec(argv: Vec<String>, flags: &[&str]) -> Args {
        let mut map = HashMap::new();
        let mut it = argv.into_iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                eprintln!("unexpected argument {a}");
                std::process::exit(2);
            };
            if flags.contains(&name) {
                map.insert(name.to_string(), "1".to_string());
            } else if let Some(v) = it.next() {
                map.insert(name.to_string(), v);
            } else {
                eprintln!("--{name} needs a value");
                std::process::exit(2);
            }
        }
        Args { map }
    }
    pub fn str(&self, k: &str, d: &str) -> String {
        self.map.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    pub fn num<T: std::str::FromStr>(&self, k: &str, d: T) -> T {
        match self.map.get(k) {
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{k}: bad number {v}");
                std::process::exit(2)
            }),
            None => d,
        }
    }
    pub fn flag(&self, k: &str) -> bool {
        self.map.contains_key(k)
    }
}

// ---------------------------------------------------------------------------------------
// Histograms (ns) summarised as microseconds in JSON.

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram bounds")
}

pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1_000, 120_000_000_000));
}

/// `"name": {"count":…, "p50_us":…, "p99_us":…, "p999_us":…, "max_us":…}` or null.
pub fn hist_json(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("\"{name}\": null");
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "\"{name}\": {{\"count\": {}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}, \"max_us\": {:.1}}}",
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    )
}

/// CPU seconds (user + system, all threads) this process has used so far.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain C data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lines_of_a_forward_message() {
        // ["t", [[EventTime, {"log": "a", "x": [1, {}]}], [EventTime, {"n": nil}]]]
        let mut body = vec![0x92, 0xa1, b't', 0x92];
        for record in [&b"\x82\xa3log\xa1a\xa1x\x92\x01\x80"[..], b"\x81\xa1n\xc0"] {
            body.extend_from_slice(&[0x92, 0xd7, 0x00, 0, 0, 0, 1, 0, 0, 0, 2]);
            body.extend_from_slice(record);
        }
        let mut lines = Vec::new();
        assert_eq!(batch_lines(&body, |l| lines.push(l.to_vec())), Some(2));
        assert_eq!(lines, vec![b"a".to_vec(), Vec::new()]);
        assert_eq!(batch_lines(&body[..body.len() - 1], |_| {}), None);
        assert_eq!(batch_lines(b"abc: line", |_| {}), None);
    }

    #[test]
    fn generated_records_yield_their_lines() {
        let mut body = vec![0x92];
        put_str(&mut body, b"docker.x");
        put_array_header(&mut body, 20);
        for seq in 0..20 {
            body.push(0x92);
            put_event_time(&mut body, 5);
            put_record(&mut body, 3, seq, 77);
        }
        let mut parsed = Vec::new();
        assert_eq!(batch_lines(&body, |l| parsed.push(parse_line(l))), Some(20));
        let want: Vec<_> = (0..20).map(|seq| Some((3, seq, 77))).collect();
        assert_eq!(parsed, want);
    }
}
