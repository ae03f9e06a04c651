//! fwd-drain: the loopback reference. Accepts TCP connections, reads and discards
//! everything (one thread per connection, 256 KiB reads), counts bytes. Prints
//! `listening <addr>` on stderr once bound, then one JSON line on stdout when
//! `--expect-conns` connections have come and gone, or after `--idle` seconds without
//! a byte (once the first arrived), or after `--max-seconds`.
//!
//! ```text
//! fwd-drain [--listen 127.0.0.1:0] [--expect-conns 64] [--idle 2] [--max-seconds 120]
//! ```

use fwdgate_bench::*;
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct State {
    bytes: AtomicU64,
    closed: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Instant>,
}

fn main() {
    let a = Args::parse(&[]);
    let listen = a.str("listen", "127.0.0.1:0");
    let expect: u64 = a.num("expect-conns", 0);
    let idle = Duration::from_secs_f64(a.num("idle", 2.0));
    let max = Duration::from_secs_f64(a.num("max-seconds", 120.0));
    let listener = TcpListener::bind(&listen).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    eprintln!("listening {}", listener.local_addr().expect("addr"));
    let started = Instant::now();
    let st = Arc::new(State {
        bytes: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        first: Mutex::new(None),
        last: Mutex::new(started),
    });
    let cpu0 = self_cpu_seconds();
    let mut accepted = 0u64;
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).ok();
                accepted += 1;
                let st = st.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut seen = false;
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if !seen {
                                    seen = true;
                                    st.first.lock().unwrap().get_or_insert_with(Instant::now);
                                }
                                st.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }
                    *st.last.lock().unwrap() = Instant::now();
                    st.closed.fetch_add(1, Ordering::Relaxed);
                });
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => eprintln!("accept: {e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
        let closed = st.closed.load(Ordering::Relaxed);
        if expect > 0 && accepted >= expect && closed >= accepted {
            break;
        }
        if started.elapsed() > max {
            break;
        }
        let first = *st.first.lock().unwrap();
        if first.is_some() && closed >= accepted && st.last.lock().unwrap().elapsed() > idle {
            break;
        }
    }
    let bytes = st.bytes.load(Ordering::Relaxed);
    let first = st.first.lock().unwrap().unwrap_or(started);
    let last = *st.last.lock().unwrap();
    let secs = last
        .saturating_duration_since(first)
        .as_secs_f64()
        .max(1e-9);
    println!(
        "{{\"tool\": \"fwd-drain\", \"connections\": {}, \"bytes\": {}, \"seconds\": {:.4}, \"mb_per_s\": {:.2}, \"cpu_s\": {:.3}}}",
        accepted,
        bytes,
        secs,
        bytes as f64 / secs / 1e6,
        self_cpu_seconds() - cpu0
    );
}
