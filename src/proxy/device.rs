//! The proxy's ZeroMQ sockets and the threads that use them: one runs libzmq's
//! steerable proxy (XSUB in, XPUB out; ZeroMQ sockets are not thread-safe, so this
//! thread owns all four of its sockets), one steers it through the control socket
//! (`STATISTICS`, `TERMINATE`) on behalf of any task through a [`Steering`] handle, and
//! the observer (`observe`).

use super::metrics::{Observed, Statistics, StatisticsError};
use super::observe::{self, Observer};
use super::{Given, ProxyError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::oneshot;

/// How long closing waits for messages still queued for a peer (publications to a
/// subscriber, subscriptions to a publisher) before dropping them.
pub const LINGER: Duration = Duration::from_secs(1);
const CONTROL: &str = "inproc://fwdgate-proxy-control";
/// How long the steering thread waits for the proxy to take a command and answer.
/// The proxy reads its control socket between bursts of forwarded messages, so it
/// answers within milliseconds unless the machine is starved.
const CONTROL_WAIT: Duration = Duration::from_secs(2);

/// A request to the steering thread.
enum Command {
    Statistics(oneshot::Sender<Result<Statistics, SteerError>>),
    Terminate,
}

#[derive(Debug, Error)]
pub enum SteerError {
    #[error("the proxy has stopped")]
    Stopped,
    #[error("the proxy did not answer within {0:?}")]
    Timeout(Duration),
    #[error("control socket: {0}")]
    Control(zmq::Error),
    #[error(transparent)]
    Reply(#[from] StatisticsError),
}

/// Sends commands to the proxy; cheap to clone. When every handle is gone the proxy
/// is told to terminate.
#[derive(Clone)]
pub struct Steering {
    commands: mpsc::Sender<Command>,
}

impl Steering {
    /// libzmq's counters, as they are now.
    pub async fn statistics(&self) -> Result<Statistics, SteerError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Statistics(reply))
            .map_err(|_| SteerError::Stopped)?;
        // The steering thread gives up on the proxy after CONTROL_WAIT for each of
        // sending and receiving; this bound only guards against that thread being gone.
        let bound = CONTROL_WAIT * 3;
        match tokio::time::timeout(bound, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SteerError::Stopped),
            Err(_) => Err(SteerError::Timeout(bound)),
        }
    }

    /// Asks the proxy to stop forwarding and return.
    pub fn terminate(&self) {
        // Err: the steering thread has ended, after sending TERMINATE itself.
        let _ = self.commands.send(Command::Terminate);
    }
}

/// The running proxy's threads.
pub struct Device {
    /// The endpoints bound, as libzmq reports them (with the port actually bound).
    pub xsub_bound: Vec<String>,
    pub xpub_bound: Vec<String>,
    pub steering: Steering,
    /// True while libzmq's proxy runs.
    pub running: Arc<AtomicBool>,
    /// The proxy's result once it has returned and closed its sockets.
    pub ended: oneshot::Receiver<Result<(), zmq::Error>>,
    pub threads: Threads,
}

impl Device {
    /// Creates the sockets, binds every endpoint and starts the threads.
    pub fn start(
        xsub_bind: &[Given],
        xpub_bind: &[Given],
        send_hwm: i32,
        observed: Arc<Observed>,
    ) -> Result<Device, ProxyError> {
        let ctx = zmq::Context::new();
        let linger = i32::try_from(LINGER.as_millis()).unwrap_or(i32::MAX);
        let xsub = ctx.socket(zmq::XSUB).map_err(ProxyError::Socket)?;
        xsub.set_linger(linger).map_err(ProxyError::Socket)?;
        // XPUB as it comes, not ZMQ_XPUB_VERBOSE nor VERBOSER: it passes a topic
        // upstream once, when its first subscriber arrives, and its removal once, when
        // the last one leaves or disconnects. That is "is anybody subscribed to this
        // tenant", which a gateway asks. VERBOSE would pass every subscriber's
        // subscribe but still only the last unsubscribe, and the XSUB, which counts
        // subscribes per topic, would then never see its count reach zero and never
        // pass the removal on: the topic would stay subscribed upstream for good.
        // VERBOSER passes every unsubscribe too, but the XSUB still passes only the
        // last of them: publishers would see two subscribes and one unsubscribe.
        let xpub = ctx.socket(zmq::XPUB).map_err(ProxyError::Socket)?;
        xpub.set_linger(linger).map_err(ProxyError::Socket)?;
        // What a subscriber that stops reading for a while gets back when it reads
        // again; the XSUB side needs none: the proxy forwards as fast as it reads.
        xpub.set_sndhwm(send_hwm).map_err(ProxyError::Socket)?;
        let capture = ctx.socket(zmq::XPUB).map_err(ProxyError::Socket)?;
        capture.set_linger(0).map_err(ProxyError::Socket)?;
        capture
            .set_sndhwm(observe::CAPTURE_HWM)
            .map_err(ProxyError::Socket)?;
        capture.bind(observe::CAPTURE).map_err(ProxyError::Socket)?;
        let control = ctx.socket(zmq::PAIR).map_err(ProxyError::Socket)?;
        control.set_linger(0).map_err(ProxyError::Socket)?;
        control.bind(CONTROL).map_err(ProxyError::Socket)?;
        let steer = ctx.socket(zmq::PAIR).map_err(ProxyError::Socket)?;
        steer.set_linger(0).map_err(ProxyError::Socket)?;
        let wait = i32::try_from(CONTROL_WAIT.as_millis()).unwrap_or(i32::MAX);
        steer.set_sndtimeo(wait).map_err(ProxyError::Socket)?;
        steer.set_rcvtimeo(wait).map_err(ProxyError::Socket)?;
        steer.connect(CONTROL).map_err(ProxyError::Socket)?;
        // The monitors start before any bind, so that no connection goes uncounted.
        let observer = Observer::new(&ctx, &xsub, &xpub, &capture)?;
        let xsub_bound = bind_all(&xsub, xsub_bind)?;
        let xpub_bound = bind_all(&xpub, xpub_bind)?;

        // From here on, a failure must stop what was started.
        let stop_observer = Arc::new(AtomicBool::new(false));
        let observing = observer.spawn(observed, stop_observer.clone())?;
        let running = Arc::new(AtomicBool::new(true));
        let (done, ended) = oneshot::channel();
        let sockets = ProxySockets {
            xsub,
            xpub,
            capture,
            control,
        };
        // The steering thread first: if the proxy's thread cannot start, dropping the
        // handle ends it again.
        let (commands, inbox) = mpsc::channel();
        let steering = std::thread::Builder::new()
            .name("fwdgate-proxy-steer".into())
            .spawn(move || steer_loop(&steer, &inbox));
        let steering = match steering {
            Ok(handle) => handle,
            Err(e) => {
                stop_observer.store(true, Ordering::Relaxed);
                Threads(vec![observing]).join();
                return Err(ProxyError::Thread(e));
            }
        };
        let proxy_running = running.clone();
        let stop_on_end = stop_observer.clone();
        let proxying = std::thread::Builder::new()
            .name("fwdgate-proxy".into())
            .spawn(move || {
                let result = sockets.run();
                proxy_running.store(false, Ordering::Relaxed);
                stop_on_end.store(true, Ordering::Relaxed);
                let _ = done.send(result);
            });
        let proxying = match proxying {
            Ok(handle) => handle,
            Err(e) => {
                stop_observer.store(true, Ordering::Relaxed);
                drop(commands);
                Threads(vec![steering, observing]).join();
                return Err(ProxyError::Thread(e));
            }
        };
        Ok(Device {
            xsub_bound,
            xpub_bound,
            steering: Steering { commands },
            running,
            ended,
            threads: Threads(vec![proxying, steering, observing]),
        })
    }
}

/// The proxy's threads.
pub struct Threads(Vec<std::thread::JoinHandle<()>>);

impl Threads {
    /// Waits (blocking) for every thread to end. Once the proxy has returned, the last
    /// socket closed ends the context, which waits up to [`LINGER`] for what is still
    /// queued.
    pub fn join(self) {
        for t in self.0 {
            if t.join().is_err() {
                tracing::error!("a proxy thread panicked");
            }
        }
    }
}

/// The four sockets of libzmq's proxy, moved into its thread.
struct ProxySockets {
    xsub: zmq::Socket,
    xpub: zmq::Socket,
    capture: zmq::Socket,
    control: zmq::Socket,
}

impl ProxySockets {
    /// Forwards until TERMINATE, then closes the sockets (dropping them).
    fn run(mut self) -> Result<(), zmq::Error> {
        zmq::proxy_steerable_with_capture(
            &mut self.xsub,
            &mut self.xpub,
            &mut self.capture,
            &mut self.control,
        )
    }
}

/// Binds each endpoint; the error names the flag, variable or default it came from.
fn bind_all(socket: &zmq::Socket, endpoints: &[Given]) -> Result<Vec<String>, ProxyError> {
    let mut bound = Vec::with_capacity(endpoints.len());
    for given in endpoints {
        socket
            .bind(&given.value)
            .map_err(|source| ProxyError::Bind {
                origin: given.origin.clone(),
                endpoint: given.value.clone(),
                source,
            })?;
        bound.push(crate::publish::bound_endpoint(socket, &given.value));
    }
    Ok(bound)
}

/// Serves commands until TERMINATE, or until every [`Steering`] handle is gone (then
/// the proxy is terminated too, so that it never outlives its owner).
fn steer_loop(control: &zmq::Socket, inbox: &mpsc::Receiver<Command>) {
    while let Ok(command) = inbox.recv() {
        match command {
            Command::Statistics(reply) => {
                let _ = reply.send(ask_statistics(control));
            }
            Command::Terminate => break,
        }
    }
    // The proxy takes only commands it knows: anything else makes libzmq abort.
    if let Err(e) = control.send("TERMINATE", 0) {
        tracing::warn!(error = %e, "proxy: cannot send TERMINATE (has it stopped already?)");
    }
}

fn ask_statistics(control: &zmq::Socket) -> Result<Statistics, SteerError> {
    // A reply that came after an earlier request gave up would be taken for this
    // one's: drop it first.
    while control.recv_multipart(zmq::DONTWAIT).is_ok() {}
    control.send("STATISTICS", 0).map_err(|e| match e {
        zmq::Error::EAGAIN => SteerError::Timeout(CONTROL_WAIT),
        e => SteerError::Control(e),
    })?;
    let frames = control.recv_multipart(0).map_err(|e| match e {
        zmq::Error::EAGAIN => SteerError::Timeout(CONTROL_WAIT),
        e => SteerError::Control(e),
    })?;
    Ok(Statistics::decode(&frames)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::metrics::Side;

    fn loopback() -> Vec<Given> {
        vec![Given {
            value: "tcp://127.0.0.1:*".into(),
            origin: "test".into(),
        }]
    }

    /// The real libzmq's answer to STATISTICS, decoded: which side counts what.
    #[tokio::test]
    async fn statistics_and_stop_against_libzmq() {
        let observed = Arc::new(Observed::default());
        let device =
            Device::start(&loopback(), &loopback(), 100_000, observed.clone()).expect("started");
        let ctx = zmq::Context::new();
        let up = ctx.socket(zmq::XPUB).expect("socket");
        up.set_linger(0).expect("linger");
        up.set_rcvtimeo(10_000).expect("timeout");
        up.connect(&device.xsub_bound[0]).expect("connect");
        let sub = ctx.socket(zmq::SUB).expect("socket");
        sub.set_linger(0).expect("linger");
        sub.set_rcvtimeo(10_000).expect("timeout");
        sub.connect(&device.xpub_bound[0]).expect("connect");
        sub.set_subscribe(b"t").expect("subscribe");
        // once the subscription is upstream, the publisher's filter lets "t" through
        assert_eq!(up.recv_bytes(0).expect("subscription"), b"\x01t");
        for _ in 0..3 {
            up.send_multipart([&b"t"[..], b"12345"], 0).expect("send");
        }
        for _ in 0..3 {
            assert_eq!(
                sub.recv_multipart(0).expect("received"),
                [b"t".to_vec(), b"12345".to_vec()]
            );
        }
        let stats = device.steering.statistics().await.expect("statistics");
        // publications come in on the XSUB side and go out on the XPUB side; the one
        // subscription message ("\x01t", 2 bytes) the other way
        assert_eq!(
            stats.frontend,
            Side {
                messages_in: 3,
                bytes_in: 18,
                messages_out: 1,
                bytes_out: 2
            }
        );
        assert_eq!(
            stats.backend,
            Side {
                messages_in: 1,
                bytes_in: 2,
                messages_out: 3,
                bytes_out: 18
            }
        );
        // The observer thread counts the subscription from the capture socket's copy,
        // in its own time: wait for it (bounded) rather than race it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while observed.subscribes.load(Ordering::Relaxed) == 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(observed.subscribes.load(Ordering::Relaxed), 1);

        let Device {
            steering,
            running,
            ended,
            threads,
            ..
        } = device;
        steering.terminate();
        let result = tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("the proxy returned");
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
        assert!(!running.load(Ordering::Relaxed));
        // a stopped proxy answers no more
        assert!(matches!(
            steering.statistics().await,
            Err(SteerError::Stopped)
        ));
        drop(steering);
        tokio::task::spawn_blocking(move || threads.join())
            .await
            .expect("joined");
    }
}
