//! fwd-conns: many-connections cases of the benchmark.
//!
//! `hold`: opens `--connections` TCP connections one after the other (at most `--rate`
//! per second, default 5000: unpaced, a sequential client outruns the gateway's accept
//! loop and its listen backlog overflows, which costs 1 s SYN retransmits), each sends one
//! Docker-shaped Message request (its own sender id, seq 0), keeps them all open, waits
//! a second, reads VmRSS of `--rss-pid` (the gateway) while they are held, holds them
//! for `--hold-seconds`, then closes them. Needs `ulimit -n` above the count.
//!
//! `churn`: opens new connections at `--rate` per second for `--seconds` (spread over
//! `--threads` threads); each sends one Message request with `option.chunk`, waits for
//! the ack (so the connection was accepted, read and served, not only queued in the
//! kernel's backlog) and closes. Reports the rate served and the latency from connect()
//! to the ack. Its lines are untracked (sender `c=99999`) unless `--sender-base N` is
//! given: then thread `t` is sender `N + t` and its `k`-th connection's line has
//! sequence number `k`, and `acked` lists the ranges `[sender, from, to)` of the lines
//! whose ack came back (a subscriber can check each of them arrived).
//!
//! ```text
//! fwd-conns hold  --addr A --connections 10000 [--rate 5000] [--hold-seconds 4] [--rss-pid PID]
//! fwd-conns churn --addr A --rate 2000 --seconds 3 [--threads 8] [--sender-base N]
//! ```

use fwdgate_bench::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn message(sender: u32, seq: u64, chunk: Option<&[u8; 16]>) -> Vec<u8> {
    let mut b = Vec::new();
    put_array_header(&mut b, 4);
    put_str(
        &mut b,
        format!("docker.{}", &container_id(sender)[..12]).as_bytes(),
    );
    let ts = now_ns();
    put_event_time(&mut b, ts);
    let at = put_record(&mut b, sender, seq, 0);
    patch_line(&mut b, at, seq, ts);
    match chunk {
        Some(c) => {
            put_map_header(&mut b, 1);
            put_str(&mut b, b"chunk");
            put_str(&mut b, c);
        }
        None => put_map_header(&mut b, 0),
    }
    b
}

fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn hold(a: &Args) {
    let addr = a.str("addr", "127.0.0.1:24224");
    let n: u32 = a.num("connections", 10_000);
    let hold = Duration::from_secs_f64(a.num("hold-seconds", 4.0));
    let pid: u32 = a.num("rss-pid", 0);
    let rate: f64 = a.num("rate", 5000.0);
    assert!(n < UNTRACKED_SENDER);
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(n as usize);
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut first_error = String::new();
    let mut per_thousand = Vec::new();
    let mut lap = Instant::now();
    for i in 0..n {
        if i > 0 && i % 1000 == 0 {
            per_thousand.push(format!("{:.3}", lap.elapsed().as_secs_f64()));
            lap = Instant::now();
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        if rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        match TcpStream::connect(&addr) {
            Ok(mut s) => {
                if s.write_all(&message(i, 0, None)).is_ok() {
                    sent += 1;
                }
                held.push(s);
            }
            Err(e) => {
                failed += 1;
                if first_error.is_empty() {
                    first_error = e.to_string();
                }
            }
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let rss = if pid > 0 { vm_rss_kb(pid) } else { 0 };
    std::thread::sleep(hold);
    let connected = held.len();
    drop(held);
    println!(
        "{{\"tool\": \"fwd-conns hold\", \"connected\": {}, \"sent\": {}, \"failed\": {}, \"first_error\": {:?}, \"connect_seconds\": {:.3}, \"seconds_per_1000\": [{}], \"rss_held_kb\": {}}}",
        connected,
        sent,
        failed,
        first_error,
        connect_secs,
        per_thousand.join(", "),
        rss
    );
}

fn churn(a: &Args) {
    let addr = a.str("addr", "127.0.0.1:24224");
    let rate: f64 = a.num("rate", 2000.0);
    let secs: f64 = a.num("seconds", 3.0);
    let threads: usize = a.num("threads", 8);
    let base: u32 = a.num("sender-base", UNTRACKED_SENDER);
    assert!(rate > 0.0 && secs > 0.0 && secs <= 3600.0 && threads > 0);
    assert!(
        base == UNTRACKED_SENDER || base as usize + threads < UNTRACKED_SENDER as usize,
        "--sender-base too large"
    );
    let per_thread = rate / threads as f64;
    let cpu0 = self_cpu_seconds();
    let start = Instant::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut hist = new_hist();
                let (mut ok, mut failed, mut k) = (0u64, 0u64, 0u64);
                let mut err = String::new();
                let sender = if base == UNTRACKED_SENDER {
                    base
                } else {
                    base + t as u32
                };
                // Runs of acked sequence numbers: (from, to).
                let mut acked: Vec<(u64, u64)> = Vec::new();
                let phase = Duration::from_secs_f64(t as f64 / rate);
                let end = start + Duration::from_secs_f64(secs);
                loop {
                    let due = start + phase + Duration::from_secs_f64(k as f64 / per_thread);
                    if due >= end {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let seq = k;
                    k += 1;
                    let mut chunk = [b'0'; 16];
                    put_digits(&mut chunk[..4], t as u64);
                    chunk[4] = b'-';
                    put_digits(&mut chunk[5..], k);
                    let t0 = Instant::now();
                    let r = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect(&addr)?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(&message(sender, seq, Some(&chunk)))?;
                        let mut ack = [0u8; 22];
                        s.read_exact(&mut ack)?;
                        if ack[6..] != chunk {
                            return Err(std::io::Error::other("wrong ack"));
                        }
                        Ok(())
                    })();
                    match r {
                        Ok(()) => {
                            ok += 1;
                            record_ns(&mut hist, t0.elapsed().as_nanos() as u64);
                            match acked.last_mut() {
                                Some(run) if run.1 == seq => run.1 = seq + 1,
                                _ => acked.push((seq, seq + 1)),
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            if err.is_empty() {
                                err = e.to_string();
                            }
                        }
                    }
                }
                let acked: Vec<String> = acked
                    .iter()
                    .map(|(from, to)| format!("[{sender}, {from}, {to}]"))
                    .collect();
                (ok, failed, hist, err, Instant::now(), acked)
            })
        })
        .collect();
    let mut hist = new_hist();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut err = String::new();
    let mut last = start;
    let mut acked = Vec::new();
    for h in handles {
        let (o, f, hh, e, end, a) = h.join().expect("thread");
        if base != UNTRACKED_SENDER {
            acked.extend(a);
        }
        ok += o;
        failed += f;
        hist.add(&hh).ok();
        if err.is_empty() {
            err = e;
        }
        last = last.max(end);
    }
    let elapsed = (last - start).as_secs_f64().max(1e-9);
    println!(
        "{{\"tool\": \"fwd-conns churn\", \"rate\": {}, \"accepted\": {}, \"failed\": {}, \"first_error\": {:?}, \"seconds\": {:.3}, \"accepted_per_s\": {:.0}, \"cpu_s\": {:.3}, {}, \"acked\": [{}]}}",
        rate,
        ok,
        failed,
        err,
        elapsed,
        ok as f64 / elapsed,
        self_cpu_seconds() - cpu0,
        hist_json("connect_latency", &hist),
        acked.join(", ")
    );
}

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    // Args::parse skips argv[0]; drop the subcommand the same way.
    let rest: Vec<String> = std::env::args().skip(2).collect();
    let a = Args::from_vec(rest, &[]);
    match cmd.as_str() {
        "hold" => hold(&a),
        "churn" => churn(&a),
        _ => {
            eprintln!("usage: fwd-conns hold|churn [options]");
            std::process::exit(2)
        }
    }
}
