//! The whole data plane of one connection over arbitrary bytes: frames (msgpack via the
//! scanner, or JSON when the first byte is `[` or `{`), `decode_request`, the ack,
//! `expand_request`, and both output formats into a sink. Nothing may panic.
//!
//! Invariants checked besides: every range of a decoded request lies in its frame, an
//! ack is one complete msgpack value, each published message has three frames, every
//! `json` body is valid JSON, and `expand_request` (which decodes and routes most entries
//! in one pass) gives exactly what the event iterators and `Router::route` give.
//!
//! With `FWDGATE_FUZZ_VERBOSE` set, the outcome of every frame is printed to stderr, to
//! check what the seeds exercise:
//! `FWDGATE_FUZZ_VERBOSE=1 target/x86_64-unknown-linux-gnu/release/request corpus/request/*`
//! (after `cargo fuzz build request`; given files, libFuzzer names each as it runs it).

#![no_main]

use bytes::{Buf, Bytes};
use fwdgate::config::{Format, OutputConfig, RouteConfig};
use fwdgate::expand::reference::{self, Outcome};
use fwdgate::expand::{expand_request, ExpandLimits};
use fwdgate::forward::ack::encode_ack;
use fwdgate::forward::json::{json_to_msgpack, starts_json, JsonScanner};
use fwdgate::forward::{decode_request, Entries, EventTime, Limits, Request, Scanner};
use fwdgate::publish::format::{Encoder, Sink};
use fwdgate::route::{Line, Routed, Router, Span};
use libfuzzer_sys::fuzz_target;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

const LIMITS: Limits = Limits {
    max_size: 1 << 20,
    max_depth: 32,
};

const EXPAND_LIMITS: ExpandLimits = ExpandLimits {
    max_depth: 32,
    max_decompressed: 1 << 20,
};

/// Plain keys and record_accessor paths (short, so that the fuzzer finds them), so that
/// the one-pass walk enters nested maps and arrays where the reference skips them.
fn route_config() -> RouteConfig {
    RouteConfig {
        tenant_keys: vec!["TENANT_ID".into(), "tenant".into(), "$.k.n".into()],
        service_keys: vec!["SERVICE_ID".into(), "$['k']['l']['a.b']".into(), "$.a[1]".into()],
        line_keys: vec!["log".into(), "message".into(), "$.k".into()],
        tag_regex: r"^(?P<tenant>[^.]+)\.(?P<service>[^.]+)".into(),
        ..RouteConfig::default()
    }
}

fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("FWDGATE_FUZZ_VERBOSE").is_some())
}

macro_rules! note {
    ($($arg:tt)*) => {
        if verbose() {
            eprintln!($($arg)*);
        }
    };
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| Router::new(&route_config()).expect("valid route config"))
}

/// Collects the frames of each message and checks the message shape as it goes.
#[derive(Default)]
struct Frames {
    current: Vec<Vec<u8>>,
    messages: Vec<Vec<Vec<u8>>>,
}

impl Sink for Frames {
    type Error = Infallible;

    fn frame(&mut self, bytes: &[u8], more: bool) -> Result<(), Infallible> {
        self.current.push(bytes.to_vec());
        if !more {
            assert_eq!(self.current.len(), 3, "a message has three frames");
            self.messages.push(std::mem::take(&mut self.current));
        }
        Ok(())
    }
}

fn in_range(span: Span, len: usize) {
    assert!(
        span.start <= span.end && span.end as usize <= len,
        "{span:?} outside {len}"
    );
}

/// What `expand_request` must give for `request`: the library's reference, one walk
/// at a time (`None` when the entries do not decompress).
fn by_iterators(frame: &Bytes, request: &Request) -> Option<Outcome> {
    reference::by_iterators(frame, request, router(), EXPAND_LIMITS)
}

/// Equal events, counting two "now" times (nil or zero on the wire) as equal.
fn same_events(got: &[Routed], want: &[Routed], now: EventTime) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            let times = g.time == w.time || (g.time >= now && w.time >= now);
            times && Routed { time: w.time, ..*g } == *w
        })
}

/// Handles one frame as the connection does; false when the connection would close.
fn handle(frame: Bytes) -> bool {
    if frame[..] == [0xc0] {
        note!("  heartbeat");
        return true;
    }
    let request = match decode_request(&frame) {
        Ok(r) => r,
        Err(e) => {
            note!("  request rejected: {e}");
            return false;
        }
    };
    let len = frame.len();
    assert!(request.tag.start <= request.tag.end && request.tag.end <= len);
    match &request.entries {
        Entries::Message(Ok(ev)) => {
            assert!(ev.record.start < ev.record.end && ev.record.end <= len)
        }
        Entries::Message(Err(_)) => {}
        Entries::Forward { start, .. } => assert!(*start <= len),
        Entries::Packed(r) => assert!(r.start <= r.end && r.end <= len),
    }
    if let Some(chunk) = &request.options.chunk {
        assert!(chunk.start < chunk.end && chunk.end <= len);
        let ack = encode_ack(&frame[chunk.clone()]);
        let mut s = Scanner::new(Limits {
            max_size: usize::MAX,
            max_depth: usize::MAX,
        });
        assert_eq!(s.scan(&ack), Ok(Some(ack.len())), "ack {ack:02x?}");
    }
    if request.options.signal != 0 {
        note!(
            "  signal {} request, chunk {:?}",
            request.options.signal,
            request.options.chunk
        );
        return true;
    }
    let peer: Arc<str> = Arc::from("127.0.0.1:24224");
    let mode = match &request.entries {
        Entries::Message(_) => "message",
        Entries::Forward { .. } => "forward",
        Entries::Packed(_) => "packed",
    };
    let (chunk, compressed) = (request.options.chunk.is_some(), request.options.compressed);
    let now = EventTime::now();
    let expected = by_iterators(&frame, &request);
    let (batch, invalid) = match expand_request(frame, &request, router(), EXPAND_LIMITS, &peer) {
        Ok(r) => r,
        Err(e) => {
            note!("  {mode} {compressed:?}: batch failed: {e}");
            assert!(expected.is_none(), "expand_request failed alone: {e}");
            return false;
        }
    };
    assert_eq!(invalid.count == 0, invalid.first.is_none());
    let (want_events, want_count, want_first) = expected.expect("entries decompress");
    let got_events = batch.as_ref().map_or(&[][..], |b| &b.events[..]);
    assert!(
        same_events(got_events, &want_events, now),
        "routed {got_events:?}, one walk at a time {want_events:?}"
    );
    assert_eq!((invalid.count, &invalid.first), (want_count, &want_first));
    note!(
        "  {mode} {compressed:?} chunk={chunk}: {} events, {} invalid {:?}",
        batch.as_ref().map_or(0, |b| b.events.len()),
        invalid.count,
        invalid.first.as_ref().map(|e| e.to_string())
    );
    let Some(batch) = batch else {
        return true;
    };
    assert!(!batch.events.is_empty());
    let data_len = batch.data.len();
    in_range(batch.tag, data_len);
    for ev in &batch.events {
        in_range(ev.record, data_len);
        in_range(ev.container, data_len);
        if let Some(s) = ev.tenant {
            in_range(s, data_len);
        }
        if let Some(s) = ev.service {
            in_range(s, data_len);
        }
        match ev.line {
            Line::Bytes(s) | Line::Json(s) => in_range(s, data_len),
        }
    }

    let route = route_config();
    let mut seed = Encoder::new(&OutputConfig::default(), &route);
    let mut frames = Frames::default();
    let sent = seed
        .encode_batch(&batch, &mut frames)
        .unwrap_or_else(|e| match e {});
    assert_eq!(sent as usize, batch.events.len());
    assert_eq!(frames.messages.len(), batch.events.len());

    let output = OutputConfig {
        format: Format::Json,
        topic_suffix: "\u{0}".into(),
        ..OutputConfig::default()
    };
    let mut json = Encoder::new(&output, &route);
    let mut frames = Frames::default();
    json.encode_batch(&batch, &mut frames)
        .unwrap_or_else(|e| match e {});
    for message in &frames.messages {
        assert_eq!(message[0].last(), Some(&0), "topic suffix");
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&message[2]) {
            panic!(
                "json body is not JSON ({e}): {}",
                String::from_utf8_lossy(&message[2])
            );
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let mut buf = Bytes::copy_from_slice(data);
    let json = data.first().is_some_and(|&b| starts_json(b));
    let mut scanner = Scanner::new(LIMITS);
    let mut json_scanner = JsonScanner::new(LIMITS.max_size);
    while !buf.is_empty() {
        let frame = if json {
            match json_scanner.scan(&buf) {
                Ok(Some(value)) => {
                    assert!(value.end <= buf.len(), "value {value:?} of {}", buf.len());
                    let frame = match json_to_msgpack(&buf[value.clone()]) {
                        Ok(frame) => frame,
                        Err(e) => {
                            note!("  {e}");
                            return;
                        }
                    };
                    buf.advance(value.end);
                    Bytes::from(frame)
                }
                Ok(None) => {
                    note!("  incomplete JSON, {} bytes", buf.len());
                    return;
                }
                Err(e) => {
                    note!("  {e}");
                    return;
                }
            }
        } else {
            match scanner.scan(&buf) {
                Ok(Some(n)) => buf.split_to(n),
                Ok(None) => {
                    note!("  incomplete frame, {} bytes", buf.len());
                    return;
                }
                Err(e) => {
                    note!("  scan: {e}");
                    return;
                }
            }
        };
        if !handle(frame) {
            return;
        }
    }
});
