//! zmq-count: native ZeroMQ subscriber for the benchmark.
//!
//! Subscribes to everything (RCVHWM 0: unlimited, so no message is dropped on this
//! side), counts three-frame messages and the events (records) they carry, checks each
//! sender's sequence numbers (from the `c=… seq=… ts=…` header of the line, see the
//! crate docs) and records the latency from the embedded send timestamp to the moment
//! the message is received, per event. With `--format seed` (the default) each message
//! is one event, its last frame `<container id>: <line>`; with `--format batch` the
//! last frame is a Forward-mode message `[tag, [[time, record], ...]]` and every
//! record's `log` is checked the same way. Exits when `--expected` events arrived, or
//! after `--idle` seconds without a message (once the first arrived), or
//! `--start-wait` seconds with none, or `--max-seconds` in all. Prints one JSON line;
//! `received` counts events, `messages` messages.
//!
//! `--exact` keeps every tracked (sender, seq) received: `duplicates` counts the
//! events received again, and `seen` lists, per sender, the ranges of sequence numbers
//! received (`[sender, from, to)`), so that a caller who knows which lines were acked
//! can tell exactly which of them did not arrive, whatever the order. With
//! `--stop-file PATH` the idle rule applies only once that file exists (a soak whose
//! load pauses keeps its subscriber).
//!
//! ```text
//! zmq-count --connect tcp://127.0.0.1:6362 [--format seed|batch] [--expected N]
//!           [--idle 2] [--start-wait 30] [--max-seconds 120] [--ready-file PATH]
//!           [--exact] [--stop-file PATH]
//! ```

use fwdgate_bench::*;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// Sequence checking per sender.
struct Sequences {
    next: Vec<u64>,
    gaps: u64,
    out_of_order: u64,
    untracked: u64,
    /// With `--exact`: a bit per (sender, seq) received.
    seen: Option<Vec<Vec<u64>>>,
    duplicates: u64,
}

impl Sequences {
    fn new(exact: bool) -> Sequences {
        Sequences {
            next: vec![0; UNTRACKED_SENDER as usize + 1],
            gaps: 0,
            out_of_order: 0,
            untracked: 0,
            seen: exact.then(|| vec![Vec::new(); UNTRACKED_SENDER as usize]),
            duplicates: 0,
        }
    }

    /// Marks (c, seq) received; counts it as a duplicate when it was already.
    fn mark(&mut self, c: u32, seq: u64) {
        let Some(seen) = &mut self.seen else {
            return;
        };
        let bits = &mut seen[c as usize];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize((word + 1).next_power_of_two(), 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        }
        bits[word] |= 1 << bit;
    }

    /// `[sender, from, to]` for every run of sequence numbers received.
    fn ranges(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (c, bits) in self.seen.iter().flatten().enumerate() {
            let mut run: Option<u64> = None;
            for (w, &word) in bits.iter().enumerate() {
                for b in 0..64 {
                    let seq = w as u64 * 64 + b;
                    match (word & (1 << b) != 0, run) {
                        (true, None) => run = Some(seq),
                        (false, Some(from)) => {
                            out.push(format!("[{c}, {from}, {seq}]"));
                            run = None;
                        }
                        _ => {}
                    }
                }
            }
            if let Some(from) = run {
                out.push(format!("[{c}, {from}, {}]", bits.len() as u64 * 64));
            }
        }
        out
    }

    /// Checks one event's line, received at `t` (ns); false when it is not a bench line.
    fn check(&mut self, line: &[u8], t: u64, hist: &mut Histogram<u64>) -> bool {
        let Some((c, seq, ts)) = parse_line(line) else {
            return false;
        };
        if ts != 0 {
            record_ns(hist, t.saturating_sub(ts));
        }
        if c >= UNTRACKED_SENDER {
            self.untracked += 1;
            return true;
        }
        self.mark(c, seq);
        let want = &mut self.next[c as usize];
        if seq == *want {
            *want += 1;
        } else if seq > *want {
            self.gaps += seq - *want;
            *want = seq + 1;
        } else {
            self.out_of_order += 1;
        }
        true
    }
}

fn main() {
    let a = Args::parse(&["exact"]);
    let endpoint = a.str("connect", "tcp://127.0.0.1:6362");
    let expected: u64 = a.num("expected", 0);
    let idle = Duration::from_secs_f64(a.num("idle", 2.0));
    let start_wait = Duration::from_secs_f64(a.num("start-wait", 30.0));
    let max = Duration::from_secs_f64(a.num("max-seconds", 120.0));
    let ready_file = a.str("ready-file", "");
    let stop_file = a.str("stop-file", "");
    let exact = a.flag("exact");
    let batch = match a.str("format", "seed").as_str() {
        "seed" => false,
        "batch" => true,
        other => {
            eprintln!("--format: {other} is neither seed nor batch");
            std::process::exit(2);
        }
    };

    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).expect("socket");
    sub.set_rcvhwm(0).expect("rcvhwm");
    sub.set_rcvtimeo(100).expect("rcvtimeo");
    sub.set_subscribe(b"").expect("subscribe");
    sub.connect(&endpoint).expect("connect");
    if !ready_file.is_empty() {
        std::fs::write(&ready_file, b"connected\n").ok();
    }

    let started = Instant::now();
    let cpu0 = self_cpu_seconds();
    let mut hist = new_hist();
    let mut seqs = Sequences::new(exact);
    let (mut received, mut messages, mut bytes, mut malformed) = (0u64, 0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = started;
    let mut frames: [zmq::Message; 3] = [
        zmq::Message::new(),
        zmq::Message::new(),
        zmq::Message::new(),
    ];
    let mut stop_reason = "max-seconds";
    'outer: loop {
        if expected > 0 && received >= expected {
            stop_reason = "expected";
            break;
        }
        let now = Instant::now();
        if now - started > max {
            break;
        }
        match first {
            None if now - started > start_wait => {
                stop_reason = "start-wait";
                break;
            }
            Some(_)
                if now - last > idle
                    && (stop_file.is_empty() || std::path::Path::new(&stop_file).exists()) =>
            {
                stop_reason = "idle";
                break;
            }
            _ => {}
        }
        // One message: frames until one without MORE.
        let mut n = 0usize;
        loop {
            let slot = n.min(2);
            match sub.recv(&mut frames[slot], 0) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) if n == 0 => continue 'outer,
                Err(zmq::Error::EAGAIN) => continue, // rest of a message in flight
                Err(e) => {
                    eprintln!("recv: {e}");
                    break 'outer;
                }
            }
            n += 1;
            bytes += frames[slot].len() as u64;
            if !frames[slot].get_more() {
                break;
            }
        }
        let t = now_ns();
        last = Instant::now();
        first.get_or_insert(last);
        messages += 1;
        if n != 3 {
            received += 1;
            malformed += 1;
            continue;
        }
        let f3: &[u8] = &frames[2];
        if batch {
            // Every record of the body is one event; a body that does not decode
            // counts as one malformed event.
            let mut bad = 0;
            match batch_lines(f3, |line| {
                if !seqs.check(line, t, &mut hist) {
                    bad += 1;
                }
            }) {
                Some(events) => received += events,
                None => {
                    received += 1;
                    bad = 1;
                }
            }
            malformed += bad;
        } else {
            received += 1;
            // "<12-char container id>: <line>"
            let ok = f3.len() > 14 && &f3[12..14] == b": " && seqs.check(&f3[14..], t, &mut hist);
            if !ok {
                malformed += 1;
            }
        }
    }
    let secs = match first {
        Some(f) => (last - f).as_secs_f64().max(1e-9),
        None => 0.0,
    };
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    println!(
        "{{\"tool\": \"zmq-count\", \"format\": \"{}\", \"received\": {}, \"messages\": {}, \"expected\": {}, \"missing\": {}, \"seq_gaps\": {}, \"out_of_order\": {}, \"malformed\": {}, \"untracked\": {}, \"bytes\": {}, \"seconds\": {:.4}, \"events_per_s\": {:.0}, \"msgs_per_s\": {:.0}, \"mb_per_s\": {:.2}, \"cpu_s\": {:.3}, \"stop\": \"{}\", {}{}}}",
        if batch { "batch" } else { "seed" },
        received,
        messages,
        expected,
        expected.saturating_sub(received),
        seqs.gaps,
        seqs.out_of_order,
        malformed,
        seqs.untracked,
        bytes,
        secs,
        per_s(received),
        per_s(messages),
        if secs > 0.0 { bytes as f64 / secs / 1e6 } else { 0.0 },
        self_cpu_seconds() - cpu0,
        stop_reason,
        hist_json("latency", &hist),
        if exact {
            format!(
                ", \"duplicates\": {}, \"seen\": [{}]",
                seqs.duplicates,
                seqs.ranges().join(", ")
            )
        } else {
            String::new()
        }
    );
}
