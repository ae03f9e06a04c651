//! zmq-raw-pub: the libzmq reference. A bare PUB socket, SNDHWM raised, binds, waits
//! `--wait-ms` for subscribers to connect, then sends `--messages` three-frame messages
//! built like the gateway's `seed` output (tenant, service, `<12-char id>: <line>`, with
//! 128-byte Docker-shaped lines from 64 senders, seq and send timestamp patched in just
//! before each send), as fast as libzmq takes them. Then closes the socket and the
//! context (linger lets queued messages out) and prints one JSON line with the CPU time
//! of the whole process, all threads (its ZeroMQ I/O thread included).
//!
//! ```text
//! zmq-raw-pub --bind tcp://127.0.0.1:6400 --messages 2000000 [--sndhwm 10000000]
//!             [--wait-ms 700] [--senders 64] [--rate MSGS_PER_S]
//! ```

use fwdgate_bench::*;
use std::time::{Duration, Instant};

fn main() {
    let a = Args::parse(&[]);
    let endpoint = a.str("bind", "tcp://127.0.0.1:6400");
    let messages: u64 = a.num("messages", 2_000_000);
    let hwm: i32 = a.num("sndhwm", 10_000_000);
    let wait = Duration::from_millis(a.num("wait-ms", 700));
    let senders: u32 = a.num("senders", 64);
    let rate: f64 = a.num("rate", 0.0);
    assert!(senders > 0 && senders < UNTRACKED_SENDER);

    let ctx = zmq::Context::new();
    let publ = ctx.socket(zmq::PUB).expect("socket");
    publ.set_sndhwm(hwm).expect("sndhwm");
    publ.set_linger(30_000).expect("linger");
    publ.bind(&endpoint).expect("bind");
    std::thread::sleep(wait);

    let tenants: Vec<Vec<u8>> = (0..senders).map(|i| tenant(i).into_bytes()).collect();
    let services: Vec<Vec<u8>> = (0..senders).map(|i| service(i).into_bytes()).collect();
    let mut lines: Vec<Vec<u8>> = (0..senders)
        .map(|i| {
            let mut f = container_id(i).as_bytes()[..12].to_vec();
            f.extend_from_slice(b": ");
            f.extend_from_slice(&log_line(i, 0, 0));
            f
        })
        .collect();
    let mut seqs = vec![0u64; senders as usize];

    let cpu0 = self_cpu_seconds();
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut errors = 0u64;
    for k in 0..messages {
        if rate > 0.0 && k % 256 == 0 {
            let due = t0 + Duration::from_secs_f64(k as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let i = (k % senders as u64) as usize;
        patch_line(&mut lines[i], 14, seqs[i], now_ns());
        seqs[i] += 1;
        let ok = publ.send(&tenants[i], zmq::SNDMORE).is_ok()
            && publ.send(&services[i], zmq::SNDMORE).is_ok()
            && publ.send(&lines[i], 0).is_ok();
        if ok {
            sent += 1;
        } else {
            errors += 1;
        }
    }
    let send_secs = t0.elapsed().as_secs_f64();
    drop(publ);
    drop(ctx); // waits (linger) until queued messages are written
    let total_secs = t0.elapsed().as_secs_f64();
    let cpu = self_cpu_seconds() - cpu0;
    println!(
        "{{\"tool\": \"zmq-raw-pub\", \"messages\": {}, \"rate\": {}, \"errors\": {}, \"send_seconds\": {:.4}, \"total_seconds\": {:.4}, \"send_msgs_per_s\": {:.0}, \"cpu_s\": {:.3}, \"cpu_s_per_million\": {:.4}}}",
        sent,
        rate,
        errors,
        send_secs,
        total_secs,
        sent as f64 / send_secs.max(1e-9),
        cpu,
        cpu / (sent.max(1) as f64 / 1e6)
    );
}
