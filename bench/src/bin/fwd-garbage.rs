//! fwd-garbage: hostile connections for the soak case of the benchmark.
//!
//! Opens `--rate` connections per second for `--seconds`, cycling through the kinds
//! below, each on a thread of its own, and records how each one ended. Every kind is
//! input the gateway must not trust, so the expected outcome of every connection is
//! that the gateway closes it (an end of stream, or a reset when it closed with bytes
//! of ours unread) without writing anything to it.
//!
//! | kind | what is sent |
//! |---|---|
//! | `random` | 64 B–4 KiB of pseudo-random bytes (the first one neither nil nor an array, so the first value is never a heartbeat or a request), then a half-close |
//! | `shape` | valid msgpack that is no request: a map, an int, an array of one, a tag that is an int, nil or a map, the reserved byte 0xC1, an HTTP request |
//! | `huge` | declared lengths of 4 GiB (str32, bin32 entries, array32, map32) and a 17 MiB `log` string, over `input.max_frame_size` |
//! | `truncated` | the first half of a valid request (Message, PackedForward of 300 KB, CompressedPackedForward), then a half-close |
//! | `slowloris` | a valid Message request, one byte every `--slow-interval` seconds, until the gateway cuts it off (`limits.request_timeout_ms`) |
//! | `gzip` | a CompressedPackedForward request whose 1 MB of gzip (16 members) inflates to 1 GiB of zeros |
//! | `json` | broken JSON requests: invalid syntax, an object, a tag that is a number, an unterminated string then a half-close |
//! | `deep` | 10,000 nested arrays, at the top and inside a record |
//!
//! Outcomes per connection: `closed` (the gateway closed: end of stream), `reset` (a
//! reset or a broken pipe while sending or reading: the gateway closed first),
//! `answered` (the gateway wrote bytes: unexpected), `open` (still open after
//! `--close-timeout` seconds, or `--slow-max` for slowloris: unexpected),
//! `connect_failed`. Prints one JSON line with the counts per kind, the time from the
//! last byte sent to the close (p50, max; slowloris: from the first byte), and the
//! rate achieved.
//!
//! ```text
//! fwd-garbage --addr 127.0.0.1:24224 [--rate 30] [--seconds 10] [--kinds random,shape,...]
//!             [--slow-interval 1] [--slow-max 120] [--close-timeout 20] [--max-open 2000]
//!             [--seed 1]
//! ```

use fwdgate_bench::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const KINDS: [&str; 8] = [
    "random",
    "shape",
    "huge",
    "truncated",
    "slowloris",
    "gzip",
    "json",
    "deep",
];
const OUTCOMES: [&str; 5] = ["closed", "reset", "answered", "open", "connect_failed"];

/// xorshift64*: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const T0: u32 = 1_700_000_000;

fn message(tag: &[u8], line: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_array_header(&mut b, 3);
    put_str(&mut b, tag);
    put_uint(&mut b, T0 as u64);
    put_map_header(&mut b, 1);
    put_str(&mut b, b"log");
    put_str(&mut b, line);
    b
}

fn packed(tag: &[u8], entries: &[u8], gzip: bool) -> Vec<u8> {
    let mut b = Vec::new();
    put_array_header(&mut b, 3);
    put_str(&mut b, tag);
    b.push(0xc6); // bin32, as Fluentd's compressed requests
    b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    b.extend_from_slice(entries);
    put_map_header(&mut b, gzip as usize);
    if gzip {
        put_str(&mut b, b"compressed");
        put_str(&mut b, b"gzip");
    }
    b
}

/// PackedForward entries of `n` Docker-shaped records (untracked sender).
fn entries(n: usize) -> Vec<u8> {
    let mut e = Vec::new();
    for i in 0..n {
        put_array_header(&mut e, 2);
        put_event_time(&mut e, now_ns() + i as u64);
        put_record(&mut e, UNTRACKED_SENDER, i as u64, 0);
    }
    e
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// The payloads of every kind but `random` (made per connection) and `slowloris`
/// (sent byte by byte): (bytes, half-close after sending).
struct Payloads {
    shape: Vec<Vec<u8>>,
    huge: Vec<Vec<u8>>,
    truncated: Vec<Vec<u8>>,
    gzip: Vec<u8>,
    json: Vec<(Vec<u8>, bool)>,
    deep: Vec<Vec<u8>>,
    slow: Vec<u8>,
}

fn payloads() -> Payloads {
    let http = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let mut tag_int = vec![0x93, 0x7b];
    tag_int.extend_from_slice(&message(b"x", b"int tag")[3..]);
    let mut tag_nil = vec![0x93, 0xc0];
    tag_nil.extend_from_slice(&message(b"x", b"nil tag")[3..]);
    let mut tag_map = vec![0x93, 0x81, 0xa1, b't', 0xa1, b'x'];
    tag_map.extend_from_slice(&message(b"x", b"map tag")[3..]);
    let shape = vec![
        b"\x81\xa1a\x01".to_vec(),
        b"\x05".to_vec(),
        b"\x91\xa3tag".to_vec(),
        b"\xc1".to_vec(),
        http,
        tag_int,
        tag_nil,
        tag_map,
    ];
    let mut log17 = b"\x93\xa3tag\xce".to_vec();
    log17.extend_from_slice(&T0.to_be_bytes());
    log17.extend_from_slice(b"\x81\xa3log\xdb");
    log17.extend_from_slice(&(17u32 << 20).to_be_bytes());
    log17.extend_from_slice(&[b'x'; 4096]);
    let huge = vec![
        b"\x93\xa3tag\xdb\xff\xff\xff\xff".to_vec(),
        b"\x93\xa3tag\xc6\xff\xff\xff\xff".to_vec(),
        b"\xdd\xff\xff\xff\xff".to_vec(),
        b"\x92\xa3tag\xdd\xff\xff\xff\xff".to_vec(),
        b"\x93\xa3tag\x01\xdf\xff\xff\xff\xff".to_vec(),
        log17,
    ];
    let msg = message(b"garbage.truncated", &[b'y'; 200]);
    let big = packed(b"garbage.truncated", &entries(1000), false);
    let gz = packed(b"garbage.truncated", &gzip(&entries(1000)), true);
    let truncated = [msg, big, gz]
        .into_iter()
        .map(|mut r| {
            r.truncate(r.len() / 2);
            r
        })
        .collect();
    // 1 GiB of zeros as 16 gzip members of 64 MiB each (several members are valid
    // gzip, as Fluent Bit writes them): about 1 MB on the wire.
    let member = gzip(&vec![0u8; 64 << 20]);
    let bomb: Vec<u8> = (0..16).flat_map(|_| member.iter().copied()).collect();
    let gzip = packed(b"garbage.bomb", &bomb, true);
    let json = vec![
        (br#"["tag", 1700000000, {"log": ]]]"#.to_vec(), false),
        (br#"{"tag": "t", "log": "x"}"#.to_vec(), false),
        (br#"[5, 1700000000, {"log": "x"}]"#.to_vec(), false),
        (
            br#"["garbage.json", 1700000000, {"log": "never ends"#.to_vec(),
            true,
        ),
    ];
    let mut deep_record = b"\x93\xa3tag\x01\x81\xa1a".to_vec();
    deep_record.extend(std::iter::repeat_n(0x91u8, 10_000));
    let deep = vec![vec![0x91u8; 10_000], deep_record];
    let slow = message(b"garbage.slowloris", &[b'z'; 200]);
    Payloads {
        shape,
        huge,
        truncated,
        gzip,
        json,
        deep,
        slow,
    }
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = 64 + rng.below(4096 - 64) as usize;
    let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
    // Not nil (a heartbeat, harmless), not an array (could start a request) and not
    // '[' (a JSON request): the first value is one the gateway must refuse.
    while matches!(b[0], 0xc0 | 0x90..=0x9f | 0xdc | 0xdd | b'[') {
        b[0] = rng.next() as u8;
    }
    b
}

#[derive(Clone, Copy)]
struct Outcome {
    kind: usize,
    what: usize,
    /// ms from the last byte sent (slowloris: the first) to the close
    close_ms: f64,
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// Waits (bounded) for the gateway to end the connection: 0 closed, 1 reset, 2 it
/// wrote something, 3 still open.
fn await_close(s: &mut TcpStream, timeout: Duration) -> usize {
    let until = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return 3;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .ok();
        match s.read(&mut buf) {
            Ok(0) => return 0,
            Ok(_) => return 2,
            Err(e) if is_reset(&e) => return 1,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return 1,
        }
    }
}

/// One connection of `kind`; returns its outcome.
fn one(addr: &str, kind: usize, bytes: &[u8], half_close: bool, o: &Opts) -> Outcome {
    let mut out = Outcome {
        kind,
        what: 4,
        close_ms: 0.0,
    };
    let Ok(mut s) = TcpStream::connect(addr) else {
        return out;
    };
    s.set_nodelay(true).ok();
    if KINDS[kind] == "slowloris" {
        let t0 = Instant::now();
        for (i, b) in bytes.iter().enumerate() {
            if t0.elapsed() > o.slow_max {
                out.what = 3;
                return out;
            }
            if let Err(e) = s.write_all(std::slice::from_ref(b)) {
                out.what = if is_reset(&e) { 1 } else { 0 };
                out.close_ms = t0.elapsed().as_secs_f64() * 1e3;
                return out;
            }
            // Never the last byte: the request must stay incomplete.
            if i + 2 >= bytes.len() {
                break;
            }
            let what = await_close(&mut s, o.slow_interval);
            if what != 3 {
                out.what = what;
                out.close_ms = t0.elapsed().as_secs_f64() * 1e3;
                return out;
            }
        }
        let left = o.slow_max.saturating_sub(t0.elapsed());
        out.what = await_close(&mut s, left);
        out.close_ms = t0.elapsed().as_secs_f64() * 1e3;
        return out;
    }
    let t0;
    match s.write_all(bytes) {
        Ok(()) => {
            t0 = Instant::now();
            if half_close {
                s.shutdown(Shutdown::Write).ok();
            }
            out.what = await_close(&mut s, o.close_timeout);
        }
        Err(e) => {
            t0 = Instant::now();
            // The gateway closed before reading it all: refused while we sent.
            out.what = if is_reset(&e) { 1 } else { 0 };
        }
    }
    out.close_ms = t0.elapsed().as_secs_f64() * 1e3;
    out
}

struct Opts {
    slow_interval: Duration,
    slow_max: Duration,
    close_timeout: Duration,
}

fn main() {
    let a = Args::parse(&[]);
    let addr = a.str("addr", "127.0.0.1:24224");
    let rate: f64 = a.num("rate", 30.0);
    let secs: f64 = a.num("seconds", 10.0);
    let seed: u64 = a.num("seed", 1);
    let max_open: usize = a.num("max-open", 2000);
    let kinds: Vec<usize> = a
        .str("kinds", &KINDS.join(","))
        .split(',')
        .map(|k| {
            KINDS.iter().position(|x| *x == k).unwrap_or_else(|| {
                eprintln!("--kinds: unknown kind {k} (known: {})", KINDS.join(", "));
                std::process::exit(2)
            })
        })
        .collect();
    let opts = Arc::new(Opts {
        slow_interval: Duration::from_secs_f64(a.num("slow-interval", 1.0)),
        slow_max: Duration::from_secs_f64(a.num("slow-max", 120.0)),
        close_timeout: Duration::from_secs_f64(a.num("close-timeout", 20.0)),
    });
    assert!(rate > 0.0 && secs > 0.0 && secs <= 3600.0 && !kinds.is_empty());

    let p = Arc::new(payloads());
    let mut rng = Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let open = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Outcome>();
    let cpu0 = self_cpu_seconds();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut started, mut waited_for_room) = (0u64, 0u64);
    let mut variant = [0usize; KINDS.len()];
    loop {
        let due = start + Duration::from_secs_f64(started as f64 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Bounded: at most --max-open connections of ours at once.
        if open.load(Ordering::Relaxed) >= max_open {
            waited_for_room += 1;
            while open.load(Ordering::Relaxed) >= max_open && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let kind = kinds[started as usize % kinds.len()];
        let v = variant[kind];
        variant[kind] += 1;
        let (bytes, half_close): (Vec<u8>, bool) = match KINDS[kind] {
            "random" => (random_bytes(&mut rng), true),
            "shape" => (p.shape[v % p.shape.len()].clone(), false),
            "huge" => (p.huge[v % p.huge.len()].clone(), false),
            "truncated" => (p.truncated[v % p.truncated.len()].clone(), true),
            "gzip" => (Vec::new(), false), // shared, below
            "json" => p.json[v % p.json.len()].clone(),
            "deep" => (p.deep[v % p.deep.len()].clone(), false),
            _ => (Vec::new(), false), // slowloris: p.slow
        };
        started += 1;
        open.fetch_add(1, Ordering::Relaxed);
        let (addr_t, tx_t, open_t, p_t, opts_t) = (
            addr.clone(),
            tx.clone(),
            open.clone(),
            p.clone(),
            opts.clone(),
        );
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let bytes: &[u8] = match KINDS[kind] {
                    "gzip" => &p_t.gzip,
                    "slowloris" => &p_t.slow,
                    _ => &bytes,
                };
                let r = one(&addr_t, kind, bytes, half_close, &opts_t);
                open_t.fetch_sub(1, Ordering::Relaxed);
                let _ = tx_t.send(r);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(Outcome {
                kind,
                what: 4,
                close_ms: 0.0,
            });
        }
    }
    let sent_for = start.elapsed().as_secs_f64();
    drop(tx);
    // Every thread ends within its own bounds (close timeout, slowloris maximum).
    let mut counts = vec![[0u64; OUTCOMES.len()]; KINDS.len()];
    let mut hists: Vec<_> = (0..KINDS.len()).map(|_| new_hist()).collect();
    for r in rx {
        counts[r.kind][r.what] += 1;
        if r.what <= 1 {
            record_ns(&mut hists[r.kind], (r.close_ms * 1e6) as u64);
        }
    }
    let mut per_kind = Vec::new();
    let mut total = [0u64; OUTCOMES.len()];
    for k in 0..KINDS.len() {
        let c = counts[k];
        let n: u64 = c.iter().sum();
        if n == 0 {
            continue;
        }
        for (t, v) in total.iter_mut().zip(c.iter()) {
            *t += v;
        }
        let fields: Vec<String> = OUTCOMES
            .iter()
            .zip(c.iter())
            .map(|(name, v)| format!("\"{name}\": {v}"))
            .collect();
        per_kind.push(format!(
            "\"{}\": {{\"sent\": {}, {}, {}}}",
            KINDS[k],
            n,
            fields.join(", "),
            hist_json("time_to_close", &hists[k])
        ));
    }
    let all: u64 = total.iter().sum();
    let fields: Vec<String> = OUTCOMES
        .iter()
        .zip(total.iter())
        .map(|(name, v)| format!("\"{name}\": {v}"))
        .collect();
    println!(
        "{{\"tool\": \"fwd-garbage\", \"rate\": {}, \"seconds\": {:.3}, \"connections\": {}, \"per_s\": {:.1}, \"waited_for_room\": {}, {}, \"cpu_s\": {:.3}, \"kinds\": {{{}}}}}",
        rate,
        sent_for,
        all,
        all as f64 / sent_for.max(1e-9),
        waited_for_room,
        fields.join(", "),
        self_cpu_seconds() - cpu0,
        per_kind.join(", ")
    );
}
