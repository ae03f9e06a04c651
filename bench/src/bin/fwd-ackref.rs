//! fwd-ackref: the lock-step ack reference. Accepts TCP connections and answers every
//! request with `{"ack": <chunk>}`. `fwd-load --ack` ends each request with
//! `{"chunk": "<16 chars>"}` and sends the next only after the ack, so a request ends
//! where the bytes read so far end with that map: the chunk is taken from there.
//! Nothing is decoded, queued or published: one thread, one epoll set, one read and one
//! write per request (bytes are kept only when a request arrives in pieces). What this costs and
//! how long the acks take is the floor that the kernel and the loopback path set for
//! the gateway's lock-step case, measured on the same machine in the same run.
//!
//! Prints `listening <addr>` on stderr once bound, then one JSON line on stdout when
//! `--expect-conns` connections have come and gone, or after `--max-seconds`.
//!
//! ```text
//! fwd-ackref [--listen 127.0.0.1:0] [--expect-conns 200] [--max-seconds 120]
//! ```

use fwdgate_bench::*;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const CHUNK_LEN: usize = 16;
const LISTENER: u64 = u64::MAX;
/// `{"chunk": <fixstr 16>` up to the chunk's characters, as the last bytes of a request.
const TRAILER: [u8; 8] = *b"\x81\xa5chunk\xb0";

/// The chunk when `bytes` end with a complete `{"chunk": "<16 chars>"}`.
fn chunk_at_end(bytes: &[u8]) -> Option<&[u8]> {
    let n = bytes.len().checked_sub(TRAILER.len() + CHUNK_LEN)?;
    (bytes[n..n + TRAILER.len()] == TRAILER).then(|| &bytes[n + TRAILER.len()..])
}

fn watch(ep: i32, fd: i32, key: u64) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: key,
    };
    // SAFETY: `ep` and `fd` are open descriptors of this process; `ev` lives for the call.
    let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert!(rc == 0, "epoll_ctl");
}

fn main() {
    let a = Args::parse(&[]);
    let listen = a.str("listen", "127.0.0.1:0");
    let expect: u64 = a.num("expect-conns", 0);
    let max = Duration::from_secs_f64(a.num("max-seconds", 120.0));
    let listener = TcpListener::bind(&listen).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    eprintln!("listening {}", listener.local_addr().expect("addr"));
    // SAFETY: no pointers; the result is checked.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0, "epoll_create1");
    watch(ep, listener.as_raw_fd(), LISTENER);
    let started = Instant::now();
    let cpu0 = self_cpu_seconds();
    let mut conns: HashMap<u64, (TcpStream, Vec<u8>)> = HashMap::new();
    let mut next_key = 0u64;
    let (mut accepted, mut closed, mut acks, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ack = [0u8; 6 + CHUNK_LEN];
    ack[..6].copy_from_slice(&[0x81, 0xa3, b'a', b'c', b'k', 0xa0 | CHUNK_LEN as u8]);
    let mut evbuf = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while started.elapsed() < max && !(expect > 0 && accepted >= expect && closed >= accepted) {
        // SAFETY: `evbuf` has room for the `evbuf.len()` events the kernel may write.
        let got = unsafe { libc::epoll_wait(ep, evbuf.as_mut_ptr(), evbuf.len() as i32, 100) };
        for ev in evbuf.iter().take(got.max(0) as usize) {
            let key = ev.u64;
            if key == LISTENER {
                while let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true).ok();
                    s.set_nodelay(true).ok();
                    watch(ep, s.as_raw_fd(), next_key);
                    conns.insert(next_key, (s, Vec::new()));
                    next_key += 1;
                    accepted += 1;
                }
                continue;
            }
            let Some((s, pending)) = conns.get_mut(&key) else {
                continue;
            };
            let gone = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    bytes += n as u64;
                    let request = if pending.is_empty() {
                        &buf[..n]
                    } else {
                        pending.extend_from_slice(&buf[..n]);
                        &pending[..]
                    };
                    match chunk_at_end(request) {
                        Some(chunk) => {
                            ack[6..].copy_from_slice(chunk);
                            acks += 1;
                            pending.clear();
                            s.write_all(&ack).is_err()
                        }
                        None => {
                            if pending.is_empty() {
                                pending.extend_from_slice(&buf[..n]);
                            }
                            false
                        }
                    }
                }
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            };
            if gone {
                if let Some((s, _)) = conns.remove(&key) {
                    // SAFETY: removes an open descriptor from our epoll set; DEL takes no event.
                    unsafe {
                        libc::epoll_ctl(
                            ep,
                            libc::EPOLL_CTL_DEL,
                            s.as_raw_fd(),
                            std::ptr::null_mut(),
                        )
                    };
                }
                closed += 1;
            }
        }
    }
    // SAFETY: `ep` is this function's epoll descriptor, closed once, not used after.
    unsafe { libc::close(ep) };
    println!(
        "{{\"tool\": \"fwd-ackref\", \"connections\": {}, \"acks\": {}, \"bytes\": {}, \"cpu_s\": {:.3}}}",
        accepted,
        acks,
        bytes,
        self_cpu_seconds() - cpu0
    );
}
