//! Data-plane benchmark: time per event for every forward-protocol mode, over
//! Docker-shaped records.
//!
//! Each iteration does exactly what a connection task does with bytes it has read:
//! `Scanner::scan` finds each frame, the frame is split off the buffer without copying,
//! `decode_request` decodes it and `expand_request` routes its events. The other groups
//! also run the publisher's encoder, in the seed and in the batch format, into a
//! counting sink (no ZeroMQ).
//!
//! Every input is built before timing starts; each iteration handles 1000 events.
//!
//! ```sh
//! cargo bench --bench decode -- --warm-up-time 1 --measurement-time 3
//! ```

// A benchmark, like a test, fails loudly on a broken fixture.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fwdgate::config::{Format, InputConfig, OutputConfig, RouteConfig};
use fwdgate::event::RoutedEvents;
use fwdgate::expand::{expand_request, ExpandLimits};
use fwdgate::forward::msgpack_write::{array_head, bin_head, map_head, str_head, write_uint};
use fwdgate::forward::{decode_request, Limits, Scanner};
use fwdgate::publish::format::{Encoder, Sink};
use fwdgate::route::Router;
use std::convert::Infallible;
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

/// Events per iteration, whatever the mode.
const EVENTS: usize = 1000;
/// Target length of each record's `log` value.
const LOG_LEN: usize = 128;
/// First event time, in seconds since the epoch.
const BASE_SECS: u32 = 1_700_000_000;
/// Containers the events are spread over (each with its own id, name, tenant, service).
const CONTAINERS: usize = 4;

// ---------------------------------------------------------------------------------------
// Msgpack for the inputs below, with the gateway's own writer.

fn put_str_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(str_head(len).as_bytes());
}

/// Always the 32-bit form, as some clients write every string.
fn put_str32_header(out: &mut Vec<u8>, len: usize) {
    out.push(0xdb);
    out.extend_from_slice(&u32::try_from(len).expect("str32 length").to_be_bytes());
}

fn put_bin_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(bin_head(len).as_bytes());
}

fn put_array_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(array_head(len).as_bytes());
}

fn put_map_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(map_head(u32::try_from(len).expect("map length")).as_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_str_header(out, s.len());
    out.extend_from_slice(s);
}

fn put_uint(out: &mut Vec<u8>, n: u32) {
    write_uint(out, u64::from(n));
}

fn put_event_time(out: &mut Vec<u8>, secs: u32, nanos: u32) {
    out.extend_from_slice(&[0xd7, 0x00]);
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
}

// ---------------------------------------------------------------------------------------
// Docker-shaped events.

/// A small deterministic generator, so every run benchmarks the same bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "GET",
    "POST",
    "/api/v1/items",
    "/healthz",
    "200",
    "404",
    "503",
    "upstream",
    "latency",
    "ms",
    "user=42",
    "request_id=",
    "ok",
    "retrying",
    "connection",
    "reset",
    "cache",
    "miss",
    "hit",
    "level=info",
    "level=warn",
    "took",
    "bytes",
    "sent",
];

struct Container {
    id: String,
    name: String,
    tenant: String,
    service: String,
}

fn containers(rng: &mut XorShift) -> Vec<Container> {
    (0..CONTAINERS)
        .map(|n| {
            let mut id = String::with_capacity(64);
            for _ in 0..4 {
                id.push_str(&format!("{:016x}", rng.next()));
            }
            Container {
                id,
                name: format!("/app-{n}"),
                tenant: format!("tenant-{}", n % 2),
                service: format!("service-{n}"),
            }
        })
        .collect()
}

/// A log line of about `LOG_LEN` bytes, different for every event.
fn log_line(i: usize, rng: &mut XorShift) -> String {
    let mut line = format!("{i:06} ");
    while line.len() < LOG_LEN {
        let word = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        line.push_str(word);
        line.push(' ');
    }
    line.truncate(LOG_LEN);
    line
}

/// One `[time, record]` pair's parts: the encoded time and the encoded record.
struct Event {
    time: Vec<u8>,
    record: Vec<u8>,
}

fn events() -> Vec<Event> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let containers = containers(&mut rng);
    (0..EVENTS)
        .map(|i| {
            let c = &containers[i % CONTAINERS];
            let mut time = Vec::with_capacity(10);
            put_event_time(
                &mut time,
                BASE_SECS + (i / 100) as u32,
                (i as u32 % 100) * 10_000_000 + 123,
            );
            let mut record = Vec::with_capacity(LOG_LEN + 200);
            put_map_header(&mut record, 6);
            for (key, value) in [
                ("container_id", c.id.as_str()),
                ("container_name", c.name.as_str()),
                ("source", "stdout"),
                ("log", log_line(i, &mut rng).as_str()),
                ("TENANT_ID", c.tenant.as_str()),
                ("SERVICE_ID", c.service.as_str()),
            ] {
                put_str(&mut record, key.as_bytes());
                put_str(&mut record, value.as_bytes());
            }
            Event { time, record }
        })
        .collect()
}

const TAG: &[u8] = b"docker.3f2a9c81b0d4";

/// `[time, record]` entries back to back: the PackedForward entry stream.
fn entry_stream(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        put_array_header(&mut out, 2);
        out.extend_from_slice(&ev.time);
        out.extend_from_slice(&ev.record);
    }
    out
}

/// Message mode: one `[tag, time, record, nil]` request per event, as Docker's fluentd
/// driver sends them, all concatenated into one buffer.
fn message_stream(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        put_array_header(&mut out, 4);
        put_str(&mut out, TAG);
        out.extend_from_slice(&ev.time);
        out.extend_from_slice(&ev.record);
        out.push(0xc0);
    }
    out
}

/// Forward mode: `[tag, [[time, record], ...]]`.
fn forward_request(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    put_array_header(&mut out, 2);
    put_str(&mut out, TAG);
    put_array_header(&mut out, events.len());
    out.extend_from_slice(&entry_stream(events));
    out
}

#[derive(Clone, Copy)]
enum Packing {
    Bin,
    Str32,
}

/// PackedForward: `[tag, entries, {"size": n[, "compressed": codec]}]`.
fn packed_request(entries: &[u8], packing: Packing, size: usize, codec: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    put_array_header(&mut out, 3);
    put_str(&mut out, TAG);
    match packing {
        Packing::Bin => put_bin_header(&mut out, entries.len()),
        Packing::Str32 => put_str32_header(&mut out, entries.len()),
    }
    out.extend_from_slice(entries);
    put_map_header(&mut out, 1 + usize::from(codec.is_some()));
    put_str(&mut out, b"size");
    put_uint(&mut out, u32::try_from(size).expect("size fits u32"));
    if let Some(codec) = codec {
        put_str(&mut out, b"compressed");
        put_str(&mut out, codec.as_bytes());
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip to memory");
    e.finish().expect("gzip to memory")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd to memory")
}

/// Every benchmarked input: (name, bytes as read from one connection).
fn inputs() -> Vec<(&'static str, Bytes)> {
    let events = events();
    let entries = entry_stream(&events);
    let n = events.len();
    vec![
        ("message", message_stream(&events)),
        ("forward", forward_request(&events)),
        (
            "packed_bin",
            packed_request(&entries, Packing::Bin, n, None),
        ),
        (
            "packed_str32",
            packed_request(&entries, Packing::Str32, n, None),
        ),
        (
            "compressed_gzip",
            packed_request(&gzip(&entries), Packing::Bin, n, Some("gzip")),
        ),
        (
            "compressed_zstd",
            packed_request(&zstd(&entries), Packing::Bin, n, Some("zstd")),
        ),
    ]
    .into_iter()
    .map(|(name, bytes)| (name, Bytes::from(bytes)))
    .collect()
}

// ---------------------------------------------------------------------------------------
// The data plane.

/// What one connection task holds: its scanner and the gateway's shared settings.
struct Plane {
    scanner: Scanner,
    router: Router,
    expand_limits: ExpandLimits,
    peer: Arc<str>,
}

impl Plane {
    fn new() -> Plane {
        let input = InputConfig::default();
        Plane {
            scanner: Scanner::new(Limits {
                max_size: input.max_frame_size,
                max_depth: input.max_depth,
            }),
            router: Router::new(&RouteConfig::default()).expect("default route config"),
            expand_limits: ExpandLimits {
                max_depth: input.max_depth,
                max_decompressed: input.max_decompressed_size,
            },
            peer: Arc::from("127.0.0.1:40312"),
        }
    }

    /// Scans, frames, decodes and routes every request in `input`, handing each batch to
    /// `publish`; returns the number of routed events.
    fn run(&mut self, input: &Bytes, mut publish: impl FnMut(RoutedEvents)) -> usize {
        let mut rest = input.clone();
        let mut routed = 0;
        while !rest.is_empty() {
            let len = self
                .scanner
                .scan(&rest)
                .expect("benchmark input is valid msgpack")
                .expect("benchmark input holds complete requests");
            let frame = rest.split_to(len);
            let request = decode_request(&frame).expect("benchmark request is valid");
            let (batch, invalid) = expand_request(
                frame,
                &request,
                &self.router,
                self.expand_limits,
                &self.peer,
            )
            .expect("benchmark entries decompress");
            debug_assert_eq!(invalid.count, 0);
            if let Some(batch) = batch {
                routed += batch.events.len();
                publish(batch);
            }
        }
        routed
    }
}

/// Counts frames and bytes; the last frame of each message is filled into a reused
/// buffer, as the ZeroMQ sink fills a message.
#[derive(Default)]
struct CountingSink {
    frames: u64,
    bytes: u64,
    last: Vec<u8>,
}

impl Sink for CountingSink {
    type Error = Infallible;

    fn frame(&mut self, bytes: &[u8], _more: bool) -> Result<(), Infallible> {
        self.frames += 1;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn last_frame_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), Infallible> {
        self.last.resize(len, 0);
        fill(&mut self.last);
        self.frames += 1;
        self.bytes += len as u64;
        Ok(())
    }
}

fn encoder(format: Format) -> Encoder {
    let output = OutputConfig {
        format,
        ..OutputConfig::default()
    };
    Encoder::new(&output, &RouteConfig::default())
}

/// Encodes every input in the batch format once, checking that every event is sent
/// in messages of three frames, each body a Forward-mode message (`0x92`, the tag...).
fn check_batch(inputs: &[(&'static str, Bytes)]) {
    for (name, input) in inputs {
        let mut plane = Plane::new();
        let mut encoder = encoder(Format::Batch);
        let mut sink = CountingSink::default();
        let mut sent = 0;
        plane.run(input, |batch| {
            sent += encoder
                .encode_batch(&batch, &mut sink)
                .unwrap_or_else(|e| match e {});
        });
        assert_eq!(sent, EVENTS as u64, "{name}: events sent");
        assert_eq!(sink.frames % 3, 0, "{name}: three frames per message");
        assert_eq!(sink.last.first(), Some(&0x92), "{name}: last body");
        eprintln!("input {name}: {} batch messages", sink.frames / 3);
    }
}

/// Runs each input once outside the timer, checking that every event gets through.
fn check(inputs: &[(&'static str, Bytes)]) {
    for (name, input) in inputs {
        let mut plane = Plane::new();
        let mut encoder = encoder(Format::Seed);
        let mut sink = CountingSink::default();
        let routed = plane.run(input, |batch| {
            encoder
                .encode_batch(&batch, &mut sink)
                .unwrap_or_else(|e| match e {});
        });
        eprintln!("input {name}: {} bytes for {EVENTS} events", input.len());
        assert_eq!(routed, EVENTS, "{name}: events routed");
        assert_eq!(sink.frames, 3 * EVENTS as u64, "{name}: frames published");
        let line = String::from_utf8_lossy(&sink.last);
        assert!(
            line.starts_with(&format!("{}: 000999 ", &line[..12])),
            "{name}: last line {line:?}"
        );
    }
}

fn decode(c: &mut Criterion) {
    let inputs = inputs();
    check(&inputs);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, input) in &inputs {
        group.bench_with_input(BenchmarkId::from_parameter(name), input, |b, input| {
            let mut plane = Plane::new();
            b.iter(|| plane.run(black_box(input), |batch| drop(black_box(batch))));
        });
    }
    group.finish();
}

fn decode_encode(c: &mut Criterion) {
    let inputs = inputs();
    check_batch(&inputs);
    for format in [Format::Seed, Format::Batch] {
        let mut group = c.benchmark_group(format!("decode_encode_{}", format.name()));
        group.throughput(Throughput::Elements(EVENTS as u64));
        for (name, input) in &inputs {
            group.bench_with_input(BenchmarkId::from_parameter(name), input, |b, input| {
                let mut plane = Plane::new();
                let mut encoder = encoder(format);
                let mut sink = CountingSink::default();
                b.iter(|| {
                    plane.run(black_box(input), |batch| {
                        encoder
                            .encode_batch(&batch, &mut sink)
                            .unwrap_or_else(|e| match e {});
                    })
                });
                black_box(sink.bytes);
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decode, decode_encode);
criterion_main!(benches);
