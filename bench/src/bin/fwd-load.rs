//! fwd-load: Fluentd forward-protocol load generator.
//!
//! Every connection (one thread each) pre-encodes its requests once, Docker-shaped
//! records of about 300 bytes, and then writes them as fast as the receiver reads them
//! (or at `--rate` events/s in aggregate). Just before each write the sequence number
//! and the send timestamp of every event in that write are patched in place (fixed
//! width digits, so no msgpack length changes): the timestamp is the time of the write
//! of the request (for Message mode without acks, one write carries
//! `--message-batch` requests and they share the timestamp of that write).
//!
//! CompressedPackedForward cannot be patched after compression: a pool of 16 requests is
//! compressed once (gzip) and cycled; their events carry the untracked sender id
//! `c=99999` and `ts=0`, so subscribers count them but measure no latency for them.
//!
//! With `--ack` every request carries `option.chunk` and the connection waits for the
//! `{"ack": chunk}` answer before it writes the next one (lock-step, like Docker's
//! `fluentd-request-ack`); the time from the write to the ack is recorded, and
//! `acked_per_conn` lists how many events each connection had acked: connection `i`
//! is sender `i`, and its acked events are its sequence numbers `0..acked_per_conn[i]`.
//!
//! ```text
//! fwd-load --addr 127.0.0.1:24224 --mode message|forward|packed|compressed
//!          [--connections 64] [--events N] [--seconds S] [--batch 1000]
//!          [--message-batch 100] [--ack] [--rate EVENTS_PER_S] [--tag TAG]
//! ```
//!
//! `--tag TAG` gives every connection the same tag (by default each has its own).
//!
//! Prints one JSON line on stdout.

use fwdgate_bench::*;
use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Message,
    Forward,
    Packed,
    Compressed,
}

const CHUNK_LEN: usize = 16;
/// `{"ack": <fixstr 16>}` as the gateway answers it.
const ACK_LEN: usize = 1 + 4 + 1 + CHUNK_LEN;

/// One write: the bytes, where each event's log line starts, where the chunk id is.
#[derive(Clone)]
struct Unit {
    buf: Vec<u8>,
    lines: Vec<usize>,
    chunk_at: Option<usize>,
    events: u64,
    requests: u64,
}

/// `--tag`: one tag for every connection (one client and tag with many connections, as
/// containers logging with a daemon-wide tag, or a forwarder's connection pool).
static SHARED_TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn tag(sender: u32) -> Vec<u8> {
    match SHARED_TAG.get() {
        Some(t) => t.clone().into_bytes(),
        None => format!("docker.{}", &container_id(sender)[..12]).into_bytes(),
    }
}

/// Option map: `size` for the batch modes, `compressed` when gzip, `chunk` when acked.
/// Returns the offset of the chunk's 16 characters.
fn put_option(out: &mut Vec<u8>, size: Option<usize>, gzip: bool, ack: bool) -> Option<usize> {
    let n = size.is_some() as usize + gzip as usize + ack as usize;
    put_map_header(out, n);
    if let Some(s) = size {
        put_str(out, b"size");
        put_uint(out, s as u64);
    }
    if gzip {
        put_str(out, b"compressed");
        put_str(out, b"gzip");
    }
    if ack {
        put_str(out, b"chunk");
        put_str(out, &[b'0'; CHUNK_LEN]);
        return Some(out.len() - CHUNK_LEN);
    }
    None
}

/// `[time, record]` entries, concatenated; line offsets relative to `out`'s start.
fn put_entries(out: &mut Vec<u8>, sender: u32, n: usize, lines: &mut Vec<usize>, base_ns: u64) {
    for i in 0..n {
        put_array_header(out, 2);
        put_event_time(out, base_ns + i as u64);
        lines.push(put_record(out, sender, i as u64, 0));
    }
}

/// One write's worth of requests for `sender`. Message mode: `msg_batch` requests, the
/// last of them with `option.chunk` when `ack`; other modes: one request of `batch`
/// entries, with `option.chunk` when `ack`.
fn build_unit(mode: Mode, sender: u32, batch: usize, msg_batch: usize, ack: bool) -> Unit {
    let base_ns = now_ns();
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    let mut chunk_at = None;
    match mode {
        Mode::Message => {
            for i in 0..msg_batch {
                put_array_header(&mut buf, 4);
                put_str(&mut buf, &tag(sender));
                put_event_time(&mut buf, base_ns + i as u64);
                lines.push(put_record(&mut buf, sender, i as u64, 0));
                chunk_at = put_option(&mut buf, None, false, ack && i + 1 == msg_batch);
            }
        }
        Mode::Forward => {
            put_array_header(&mut buf, 3);
            put_str(&mut buf, &tag(sender));
            put_array_header(&mut buf, batch);
            put_entries(&mut buf, sender, batch, &mut lines, base_ns);
            chunk_at = put_option(&mut buf, Some(batch), false, ack);
        }
        Mode::Packed => {
            let mut entries = Vec::new();
            let mut rel = Vec::new();
            put_entries(&mut entries, sender, batch, &mut rel, base_ns);
            put_array_header(&mut buf, 3);
            put_str(&mut buf, &tag(sender));
            put_bin_header(&mut buf, entries.len());
            let at = buf.len();
            buf.extend_from_slice(&entries);
            lines.extend(rel.iter().map(|r| r + at));
            chunk_at = put_option(&mut buf, Some(batch), false, ack);
        }
        Mode::Compressed => {
            // `sender` here is the pool index: events are untracked (c=99999, ts=0) and
            // vary with the pool index through their seq-dependent filler.
            let mut entries = Vec::new();
            let mut rel = Vec::new();
            for i in 0..batch {
                put_array_header(&mut entries, 2);
                put_event_time(&mut entries, base_ns + i as u64);
                let at = put_record(&mut entries, UNTRACKED_SENDER, 0, 0);
                rel.push(at);
                let seq = sender as u64 * batch as u64 + i as u64;
                let line = log_line(UNTRACKED_SENDER, seq, 0);
                entries[at..at + LOG_LEN].copy_from_slice(&line);
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&entries).expect("gzip");
            let z = gz.finish().expect("gzip");
            put_array_header(&mut buf, 3);
            put_str(&mut buf, &tag(sender));
            put_bin_header(&mut buf, z.len());
            buf.extend_from_slice(&z);
            chunk_at = put_option(&mut buf, Some(batch), true, ack);
        }
    }
    let events = match mode {
        Mode::Message => lines.len() as u64,
        _ => batch as u64,
    };
    let requests = match mode {
        Mode::Message => lines.len() as u64,
        _ => 1,
    };
    if mode == Mode::Compressed {
        lines.clear(); // nothing to patch
    }
    Unit {
        buf,
        lines,
        chunk_at,
        events,
        requests,
    }
}

struct ConnResult {
    events: u64,
    requests: u64,
    bytes: u64,
    acks: Histogram<u64>,
    error: Option<String>,
    /// When the last write (or the last ack awaited) completed.
    end: Instant,
}

impl ConnResult {
    fn new(now: Instant) -> ConnResult {
        ConnResult {
            events: 0,
            requests: 0,
            bytes: 0,
            acks: new_hist(),
            error: None,
            end: now,
        }
    }
}

/// Patches seq and ts of every line of `u` and its chunk id; returns the expected ack.
fn prepare(u: &mut Unit, id: u32, seq: &mut u64, unit_no: u64) -> [u8; ACK_LEN] {
    let ts = now_ns();
    for &at in &u.lines {
        patch_line(&mut u.buf, at, *seq, ts);
        *seq += 1;
    }
    let mut want = [0u8; ACK_LEN];
    want[..6].copy_from_slice(&[0x81, 0xa3, b'a', b'c', b'k', 0xa0 | CHUNK_LEN as u8]);
    if let Some(c) = u.chunk_at {
        put_digits(&mut u.buf[c..c + 5], id as u64);
        u.buf[c + 5] = b'-';
        put_digits(&mut u.buf[c + 6..c + CHUNK_LEN], unit_no);
        want[6..].copy_from_slice(&u.buf[c..c + CHUNK_LEN]);
    }
    want
}

/// Throughput mode: one thread per connection writes its units back to back (paced by
/// `rate_per_conn` when > 0). The last write carries a chunk (unless `final_unit` is
/// None) and its ack is awaited, so that the connection's end time is when the
/// gateway has taken every event, not when the kernel buffered the bytes.
#[allow(clippy::too_many_arguments)]
fn run_conn(
    id: u32,
    mut stream: TcpStream,
    mut units: Vec<Unit>,
    mut final_unit: Option<Unit>,
    quota: u64,
    deadline: Instant,
    rate_per_conn: f64,
    barrier: Arc<Barrier>,
) -> ConnResult {
    let mut seq: u64 = 0;
    let mut k = 0usize;
    let mut unit_no: u64 = 0;
    let mut ack_buf = [0u8; ACK_LEN];
    barrier.wait();
    let start = Instant::now();
    let mut r = ConnResult::new(start);
    loop {
        let n_units = units.len();
        let next_events = units[k].events;
        let last = r.events + next_events >= quota || Instant::now() >= deadline;
        let u = match (&mut final_unit, last) {
            (Some(f), true) => f,
            _ => &mut units[k],
        };
        k = (k + 1) % n_units;
        if rate_per_conn > 0.0 {
            let due = start + Duration::from_secs_f64(r.events as f64 / rate_per_conn);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let want = prepare(u, id, &mut seq, unit_no);
        unit_no += 1;
        if let Err(e) = stream.write_all(&u.buf) {
            r.error = Some(format!("write: {e}"));
            break;
        }
        if u.chunk_at.is_some() {
            if let Err(e) = stream.read_exact(&mut ack_buf) {
                r.error = Some(format!("ack read: {e}"));
                break;
            }
            if ack_buf != want {
                r.error = Some(format!("unexpected ack {:02x?}", &ack_buf));
                break;
            }
        }
        r.events += u.events;
        r.requests += u.requests;
        r.bytes += u.buf.len() as u64;
        r.end = Instant::now();
        if last {
            break;
        }
    }
    close(stream);
    r
}

/// Half-closes and reads until the peer closes (bounded), so nothing is left unread.
fn close(mut stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Lock-step acks, like Docker with `fluentd-request-ack`: every request carries a chunk
/// and its connection sends nothing more until the ack arrived. One thread drives every
/// connection with epoll (hundreds of sender threads would cost the 2-core machine more
/// than the gateway does); each connection is paced to `rate_per_conn` with its phase
/// spread over the interval, so connections do not fire in bursts. Ack latency is from
/// just before the write to the ack's arrival.
fn run_acked(
    streams: Vec<TcpStream>,
    mut units: Vec<Unit>,
    quota: u64,
    deadline: Instant,
    rate_per_conn: f64,
) -> (ConnResult, Vec<u64>) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::os::fd::AsRawFd;
    let n = streams.len();
    // SAFETY: no pointers; the result is checked.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0, "epoll_create1");
    for (i, s) in streams.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ep` and the stream's descriptor are open; `ev` lives for the call.
        let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        assert!(rc == 0, "epoll_ctl");
    }
    let start = Instant::now();
    let mut r = ConnResult::new(start);
    let mut events = vec![0u64; n];
    let mut seqs = vec![0u64; n];
    let mut unit_nos = vec![0u64; n];
    let mut sent_at = vec![start; n];
    let mut wants = vec![[0u8; ACK_LEN]; n];
    let mut done = vec![false; n];
    let mut n_done = 0;
    let interval = if rate_per_conn > 0.0 {
        Duration::from_secs_f64(units[0].events as f64 / rate_per_conn)
    } else {
        Duration::ZERO
    };
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..n)
        .map(|i| Reverse((start + interval.mul_f64(i as f64 / n as f64), i)))
        .collect();
    let mut evbuf = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut ack_buf = [0u8; ACK_LEN];
    let hard_stop = deadline + Duration::from_secs(5);
    let mut streams: Vec<Option<TcpStream>> = streams.into_iter().map(Some).collect();
    while n_done < n && Instant::now() < hard_stop {
        let now = Instant::now();
        while let Some(Reverse((t, i))) = due.peek().copied() {
            if t > now {
                break;
            }
            due.pop();
            if events[i] >= quota || now >= deadline {
                done[i] = true;
                n_done += 1;
                continue;
            }
            let u = &mut units[i];
            wants[i] = prepare(u, i as u32, &mut seqs[i], unit_nos[i]);
            unit_nos[i] += 1;
            sent_at[i] = Instant::now();
            let s = streams[i].as_mut().expect("open stream");
            if let Err(e) = s.write_all(&u.buf) {
                r.error.get_or_insert(format!("write: {e}"));
                done[i] = true;
                n_done += 1;
            }
        }
        let timeout_ms = match due.peek() {
            Some(Reverse((t, _))) => {
                let now = Instant::now();
                if *t <= now {
                    0
                } else {
                    ((*t - now).as_micros().div_ceil(1000)) as i32
                }
            }
            None => 100,
        };
        // SAFETY: `evbuf` has room for the `evbuf.len()` events the kernel may write.
        let got = unsafe {
            libc::epoll_wait(
                ep,
                evbuf.as_mut_ptr(),
                evbuf.len() as i32,
                timeout_ms.min(100),
            )
        };
        for ev in evbuf.iter().take(got.max(0) as usize) {
            let i = ev.u64 as usize;
            if done[i] {
                continue;
            }
            let s = streams[i].as_mut().expect("open stream");
            let res = s.read_exact(&mut ack_buf);
            let arrived = Instant::now();
            if let Err(e) = res {
                r.error.get_or_insert(format!("ack read: {e}"));
                done[i] = true;
                n_done += 1;
                continue;
            }
            if ack_buf != wants[i] {
                r.error
                    .get_or_insert(format!("unexpected ack {:02x?}", &ack_buf));
                done[i] = true;
                n_done += 1;
                continue;
            }
            record_ns(&mut r.acks, (arrived - sent_at[i]).as_nanos() as u64);
            let u = &units[i];
            events[i] += u.events;
            r.events += u.events;
            r.requests += u.requests;
            r.bytes += u.buf.len() as u64;
            r.end = arrived;
            let next = if rate_per_conn > 0.0 {
                let phase = interval.mul_f64(i as f64 / n as f64);
                (start + phase + Duration::from_secs_f64(events[i] as f64 / rate_per_conn))
                    .max(arrived)
            } else {
                arrived
            };
            due.push(Reverse((next, i)));
        }
    }
    // SAFETY: `ep` is this function's epoll descriptor, closed once, not used after.
    unsafe { libc::close(ep) };
    let closers: Vec<_> = streams
        .iter_mut()
        .filter_map(|s| s.take())
        .map(|s| std::thread::spawn(move || close(s)))
        .collect();
    for c in closers {
        let _ = c.join();
    }
    (r, events)
}

fn main() {
    let a = Args::parse(&["ack", "no-final-ack"]);
    let addr = a.str("addr", "127.0.0.1:24224");
    let mode = match a.str("mode", "packed").as_str() {
        "message" => Mode::Message,
        "forward" => Mode::Forward,
        "packed" => Mode::Packed,
        "compressed" => Mode::Compressed,
        m => {
            eprintln!("unknown --mode {m}");
            std::process::exit(2)
        }
    };
    let conns: u32 = a.num("connections", 64);
    let events: u64 = a.num("events", 0);
    let seconds: f64 = a.num("seconds", 10.0);
    let batch: usize = a.num("batch", 1000);
    let ack = a.flag("ack");
    // With lock-step acks every Message request waits for its own ack.
    let msg_batch: usize = if ack { 1 } else { a.num("message-batch", 100) };
    let final_ack = !a.flag("no-final-ack");
    let rate: f64 = a.num("rate", 0.0);
    let shared_tag = a.str("tag", "");
    if !shared_tag.is_empty() {
        let _ = SHARED_TAG.set(shared_tag);
    }
    assert!(
        conns > 0 && conns < UNTRACKED_SENDER,
        "--connections out of range"
    );
    assert!(
        seconds > 0.0 && seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    assert!(batch > 0 && msg_batch > 0);

    // Pre-encode: per connection its own unit (its sender id is in every record), or
    // the shared compressed pool.
    let pool: Vec<Unit> = if mode == Mode::Compressed {
        (0..16)
            .map(|i| build_unit(mode, i, batch, msg_batch, ack))
            .collect()
    } else {
        Vec::new()
    };
    let unit_for = |i: u32, chunk: bool| {
        if mode == Mode::Compressed {
            if chunk == ack {
                pool[i as usize % pool.len()].clone()
            } else {
                build_unit(mode, i % 16, batch, msg_batch, chunk)
            }
        } else {
            build_unit(mode, i, batch, msg_batch, chunk)
        }
    };
    let per_conn_quota = if events == 0 {
        u64::MAX
    } else {
        events.div_ceil(conns as u64)
    };
    let mut streams = Vec::new();
    for _ in 0..conns {
        let s = TcpStream::connect(&addr).unwrap_or_else(|e| {
            eprintln!("connect {addr}: {e}");
            std::process::exit(1)
        });
        s.set_nodelay(true).ok();
        streams.push(s);
    }
    let max = Duration::from_secs_f64(seconds);
    let rate_per_conn = rate / conns as f64;
    let cpu0 = self_cpu_seconds();
    let mut acked = Vec::new();
    let (start, total, errors) = if ack {
        let units: Vec<Unit> = (0..conns).map(|i| unit_for(i, true)).collect();
        let start = Instant::now();
        let (mut r, per_conn) =
            run_acked(streams, units, per_conn_quota, start + max, rate_per_conn);
        acked = per_conn;
        let errors: Vec<String> = r.error.take().into_iter().collect();
        (start, r, errors)
    } else {
        let barrier = Arc::new(Barrier::new(conns as usize + 1));
        let mut handles = Vec::new();
        let mut deadline_tx = Vec::new();
        for (i, s) in streams.into_iter().enumerate() {
            let units = if mode == Mode::Compressed {
                let mut p = pool.clone();
                let n = p.len();
                p.rotate_left(i % n);
                p
            } else {
                vec![unit_for(i as u32, false)]
            };
            let fin = final_ack.then(|| unit_for(i as u32, true));
            let b = barrier.clone();
            let (tx, rx) = std::sync::mpsc::channel::<Instant>();
            deadline_tx.push(tx);
            handles.push(std::thread::spawn(move || {
                let deadline = rx.recv().expect("deadline");
                run_conn(
                    i as u32,
                    s,
                    units,
                    fin,
                    per_conn_quota,
                    deadline,
                    rate_per_conn,
                    b,
                )
            }));
        }
        let start = Instant::now();
        for tx in &deadline_tx {
            tx.send(start + max).ok();
        }
        barrier.wait();
        let start = Instant::now();
        let mut total = ConnResult::new(start);
        let mut errors = Vec::new();
        for h in handles {
            let r = h.join().expect("connection thread");
            total.events += r.events;
            total.requests += r.requests;
            total.bytes += r.bytes;
            total.end = total.end.max(r.end);
            if let Some(e) = r.error {
                errors.push(e);
            }
        }
        (start, total, errors)
    };
    let elapsed = (total.end - start).as_secs_f64().max(1e-9);
    let cpu = self_cpu_seconds() - cpu0;
    let errs: Vec<String> = errors.iter().take(3).map(|e| format!("{:?}", e)).collect();
    println!(
        "{{\"tool\": \"fwd-load\", \"mode\": \"{:?}\", \"connections\": {}, \"ack\": {}, \"final_ack\": {}, \"rate\": {}, \"events\": {}, \"requests\": {}, \"bytes\": {}, \"seconds\": {:.4}, \"events_per_s\": {:.0}, \"mb_per_s\": {:.2}, \"cpu_s\": {:.3}, {}, \"errors\": {}, \"error_samples\": [{}]{}}}",
        mode,
        conns,
        ack,
        final_ack && !ack,
        rate,
        total.events,
        total.requests,
        total.bytes,
        elapsed,
        total.events as f64 / elapsed,
        total.bytes as f64 / elapsed / 1e6,
        cpu,
        hist_json("ack_latency", &total.acks),
        errors.len(),
        errs.join(", "),
        if ack && mode != Mode::Compressed {
            let v: Vec<String> = acked.iter().map(|n| n.to_string()).collect();
            format!(", \"acked_per_conn\": [{}]", v.join(", "))
        } else {
            String::new()
        }
    );
}
