//! The gateway in-process: bound on port 0 with `server::bind`, served with a shutdown
//! the test controls, spoken to with raw bytes over TCP and read back by a real libzmq
//! SUB socket. The timeouts run on tokio's paused clock, which jumps ahead whenever
//! every task waits, so a 60 s timeout takes no time and no sleep decides the outcome.
//! The Python suite keeps the real peers (Docker, the client libraries).

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fwdgate::config::Config;
use fwdgate::metrics::Counters;
use fwdgate::server;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `["app", 1700000000, {"log": line, "TENANT_ID": tenant}, {"chunk": chunk}]`
fn message(line: &str, tenant: &str, chunk: &str) -> Vec<u8> {
    let mut m = vec![0x94, 0xa3, b'a', b'p', b'p', 0xce];
    m.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    m.extend_from_slice(&[0x82, 0xa3, b'l', b'o', b'g']);
    str8(&mut m, line);
    m.extend_from_slice(&[0xa9]);
    m.extend_from_slice(b"TENANT_ID");
    str8(&mut m, tenant);
    m.extend_from_slice(&[0x81, 0xa5]);
    m.extend_from_slice(b"chunk");
    str8(&mut m, chunk);
    m
}

fn str8(out: &mut Vec<u8>, s: &str) {
    out.push(0xd9);
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

/// The ack of `chunk`: `{"ack": chunk}`, the chunk in the client's own form (str8).
fn ack(chunk: &str) -> Vec<u8> {
    let mut a = vec![0x81, 0xa3, b'a', b'c', b'k'];
    str8(&mut a, chunk);
    a
}

struct Running {
    tcp: String,
    zmq: String,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<Arc<Counters>>,
}

impl Running {
    async fn start(extra: &str) -> Running {
        // `extra` is a TOML file's text; the addresses are the test's.
        let mut config = Config::from_toml(extra).unwrap();
        config.input.listen = vec!["127.0.0.1:0".into()];
        config.input.udp_heartbeat = false;
        config.output.zmq_bind = vec!["tcp://127.0.0.1:*".into()];
        config.shutdown.timeout_ms = 2000;
        let config = config.finalize().unwrap();
        let bound = server::bind(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (tx, reloads) = tokio::sync::mpsc::unbounded_channel();
        let running = Running {
            tcp: bound.tcp_addrs()[0].clone(),
            zmq: bound.zmq_bound()[0].clone(),
            counters: bound.counters(),
            stop: Some(stop),
            served: tokio::spawn(async move {
                let _keep = tx;
                bound
                    .serve(
                        async {
                            let _ = stopped.await;
                        },
                        reloads,
                    )
                    .await
                    .unwrap()
            }),
        };
        running
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(&self.tcp).await.unwrap()
    }

    fn count(&self, f: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.counters).load(Ordering::Relaxed)
    }

    /// Waits (bounded) until the publisher has taken the queue's first request, which
    /// it holds while nobody is subscribed: the queue is empty again.
    async fn publisher_holds_the_first(&self) {
        for _ in 0..1000 {
            if self.count(|c| &c.queue_requests) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the publisher never took the first request");
    }

    /// Stops the gateway (as SIGTERM does) and waits until it has drained.
    async fn stop(mut self) -> Arc<Counters> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.served.await.unwrap()
    }
}

/// Reads until the gateway closes the connection; what came before.
async fn until_closed(c: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    got
}

/// A libzmq SUB socket on the gateway's endpoint, subscribed to everything.
fn subscriber(endpoint: &str) -> zmq::Socket {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvtimeo(10_000).unwrap();
    sub.connect(endpoint).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub
}

/// The next message of `sub` (blocking, bounded by its receive timeout).
async fn next_message(sub: zmq::Socket) -> (zmq::Socket, Vec<Vec<u8>>) {
    tokio::task::spawn_blocking(move || {
        let frames = sub.recv_multipart(0).expect("a message within 10 s");
        (sub, frames)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_acked_then_published_to_a_libzmq_subscriber() {
    let gw = Running::start("").await;
    // Nobody subscribed yet: the gateway holds what it accepts until someone does,
    // so this subscriber, however late its subscription arrives, gets the line.
    let sub = subscriber(&gw.zmq);
    let mut c = gw.connect().await;
    c.write_all(&message("hello", "t1", "c1")).await.unwrap();
    let mut got = vec![0u8; ack("c1").len()];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(got, ack("c1"));
    let (_sub, frames) = next_message(sub).await;
    // No service key and no container id in the record: the default service, and the
    // tag in the container id's place.
    assert_eq!(
        frames,
        [b"t1".to_vec(), b"default".to_vec(), b"app: hello".to_vec()]
    );
    drop(c);
    let counters = gw.stop().await;
    assert_eq!(counters.events_published.load(Ordering::Relaxed), 1);
    assert_eq!(counters.acks_sent.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let gw = Running::start("[limits]\nidle_timeout_ms = 600000\n").await;
    let mut c = gw.connect().await;
    let started = tokio::time::Instant::now();
    assert_eq!(until_closed(&mut c).await, b"");
    assert!(
        started.elapsed() >= Duration::from_secs(600),
        "closed early"
    );
    assert_eq!(gw.count(|c| &c.connections_idle_closed), 1);
    gw.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_request_that_stops_arriving_is_cut_off_after_the_request_timeout() {
    let gw = Running::start("[limits]\nrequest_timeout_ms = 30000\n").await;
    let mut c = gw.connect().await;
    let request = message("never finished", "t1", "slow");
    c.write_all(&request[..10]).await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(until_closed(&mut c).await, b"", "no ack for half a request");
    assert!(started.elapsed() >= Duration::from_secs(30), "closed early");
    assert_eq!(gw.count(|c| &c.connections_rejected), 1);
    assert_eq!(gw.count(|c| &c.requests), 0);
    gw.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_sends_its_ping_is_closed_after_the_handshake_timeout() {
    let gw = Running::start("[security]\nshared_key = \"k\"\nhandshake_timeout_ms = 7000\n").await;
    let mut c = gw.connect().await;
    let started = tokio::time::Instant::now();
    let got = until_closed(&mut c).await;
    assert!(
        got.starts_with(&[0x92, 0xa4, b'H', b'E', b'L', b'O']),
        "a HELO first"
    );
    assert!(started.elapsed() >= Duration::from_secs(7), "closed early");
    assert_eq!(gw.count(|c| &c.connections_rejected), 1);
    gw.stop().await;
}

#[tokio::test(start_paused = true)]
async fn past_max_connections_a_new_connection_is_closed_and_counted() {
    let gw = Running::start("[limits]\nmax_connections = 1\n").await;
    let mut first = gw.connect().await;
    first.write_all(&message("in", "t1", "a")).await.unwrap();
    let mut got = vec![0u8; ack("a").len()];
    first.read_exact(&mut got).await.unwrap();
    let mut second = gw.connect().await;
    assert_eq!(until_closed(&mut second).await, b"");
    assert_eq!(gw.count(|c| &c.connections_refused), 1);
    // The first goes on.
    first.write_all(&message("still", "t1", "b")).await.unwrap();
    first.read_exact(&mut got[..ack("b").len()]).await.unwrap();
    assert_eq!(&got[..ack("b").len()], ack("b"));
    drop(first);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_what_was_read_and_publishes_it() {
    let gw = Running::start("").await;
    let sub = subscriber(&gw.zmq);
    let mut c = gw.connect().await;
    let mut all = Vec::new();
    for i in 0..100 {
        all.extend(message(&format!("line {i}"), "t1", &format!("c{i}")));
    }
    c.write_all(&all).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..100 {
        acks.extend(ack(&format!("c{i}")));
    }
    let mut got = vec![0u8; acks.len()];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(got, acks);
    let counters = gw.stop().await;
    assert_eq!(counters.events_published.load(Ordering::Relaxed), 100);
    let mut sub = sub;
    for i in 0..100 {
        let (s, frames) = next_message(sub).await;
        sub = s;
        assert_eq!(frames[2], format!("app: line {i}").into_bytes());
    }
}

/// Sends `n` acked requests one at a time on `c`; every one must be acked.
async fn send_acked(c: &mut TcpStream, n: usize, prefix: &str) {
    for i in 0..n {
        let chunk = format!("{prefix}{i}");
        c.write_all(&message(&format!("{prefix} {i}"), "t1", &chunk))
            .await
            .unwrap();
        let mut got = vec![0u8; ack(&chunk).len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ack(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_under_drop_newest_acks_drops_and_counts_the_newest() {
    // Nobody subscribes, so what comes is held: the oldest in the publisher's hand,
    // waiting for a subscriber, and two more in the queue; then it is full.
    let gw = Running::start("[output]\nwhen_full = \"drop_newest\"\nqueue_requests = 2\n").await;
    let mut c = gw.connect().await;
    send_acked(&mut c, 1, "n").await;
    gw.publisher_holds_the_first().await;
    send_acked(&mut c, 5, "m").await;
    assert_eq!(gw.count(|c| &c.requests_dropped_queue_full), 3);
    assert_eq!(gw.count(|c| &c.queue_requests), 2);
    // A subscriber gets the three that were kept, the oldest, in order.
    let mut sub = subscriber(&gw.zmq);
    for line in ["n 0", "m 0", "m 1"] {
        let (s, frames) = next_message(sub).await;
        sub = s;
        assert_eq!(frames[2], format!("app: {line}").into_bytes());
    }
    drop(c);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_under_block_stops_reading_until_a_subscriber_drains_it() {
    let gw = Running::start("[output]\nqueue_requests = 2\n").await;
    let mut c = gw.connect().await;
    // One in the publisher's hand, two in the queue.
    send_acked(&mut c, 1, "b").await;
    gw.publisher_holds_the_first().await;
    for i in 1..3 {
        let chunk = format!("b{i}");
        c.write_all(&message(&format!("b {i}"), "t1", &chunk))
            .await
            .unwrap();
        let mut got = vec![0u8; ack(&chunk).len()];
        c.read_exact(&mut got).await.unwrap();
    }
    // The fourth waits for room: no ack while nobody takes the first ones.
    let chunk = "b3";
    c.write_all(&message("b 3", "t1", chunk)).await.unwrap();
    let mut got = vec![0u8; ack(chunk).len()];
    let early = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut got)).await;
    assert!(early.is_err(), "acked while the queue was full");
    let sub = subscriber(&gw.zmq);
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(got, ack(chunk));
    let mut sub = sub;
    for i in 0..4 {
        let (s, frames) = next_message(sub).await;
        sub = s;
        assert_eq!(frames[2], format!("app: b {i}").into_bytes());
    }
    assert_eq!(gw.count(|c| &c.requests_dropped_queue_full), 0);
    drop(c);
    gw.stop().await;
}
