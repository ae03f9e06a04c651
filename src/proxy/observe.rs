//! Watches the proxy from the side: the connections on its XSUB and XPUB sockets
//! (libzmq socket monitors) and the subscription messages the XPUB side passes upstream
//! (copies from the proxy's capture socket), and keeps the gauges of [`Observed`].
//!
//! The capture socket is an XPUB that libzmq's proxy hands a copy of every frame it
//! forwards, in both directions. The observer subscribes to it with the prefixes `\x00`
//! and `\x01` only, so the capture socket itself drops every publication (they start
//! with a tenant) before it reaches this thread, and only the subscription messages
//! (`\x01topic`, `\x00topic`, one frame each) come through. Being an XPUB, the capture
//! never blocks the proxy: past its high-water mark it drops, as PUB does.

use super::metrics::Observed;
use super::ProxyError;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const CAPTURE: &str = "inproc://fwdgate-proxy-capture";
const XSUB_MONITOR: &str = "inproc://fwdgate-proxy-xsub-monitor";
const XPUB_MONITOR: &str = "inproc://fwdgate-proxy-xpub-monitor";
/// How long setting up waits for the capture socket to see the observer's two
/// subscriptions (an inproc hand-over: immediate unless the machine is starved).
const CAPTURE_SYNC: Duration = Duration::from_secs(5);
/// How often the loop looks at the stop flag when nothing happens.
const POLL_MS: i64 = 100;
/// Subscription messages that may wait for this thread before the capture socket drops
/// them (each side of an inproc pipe has its own high-water mark).
pub const CAPTURE_HWM: i32 = 100_000;

/// The observer's sockets, made before the proxy's sockets bind, so that no connection
/// and no subscription is missed.
pub struct Observer {
    xsub_monitor: zmq::Socket,
    xpub_monitor: zmq::Socket,
    capture: zmq::Socket,
}

impl Observer {
    /// Starts the monitors of `xsub` and `xpub`, subscribes to `capture` (bound at
    /// [`CAPTURE`]) and waits until the capture socket has the subscriptions.
    pub fn new(
        ctx: &zmq::Context,
        xsub: &zmq::Socket,
        xpub: &zmq::Socket,
        capture: &zmq::Socket,
    ) -> Result<Observer, ProxyError> {
        let xsub_monitor = monitor(ctx, xsub, XSUB_MONITOR)?;
        let xpub_monitor = monitor(ctx, xpub, XPUB_MONITOR)?;
        let sub = ctx.socket(zmq::SUB).map_err(ProxyError::Socket)?;
        sub.set_linger(0).map_err(ProxyError::Socket)?;
        sub.set_rcvhwm(CAPTURE_HWM).map_err(ProxyError::Socket)?;
        sub.connect(CAPTURE).map_err(ProxyError::Socket)?;
        sub.set_subscribe(b"\x00").map_err(ProxyError::Socket)?;
        sub.set_subscribe(b"\x01").map_err(ProxyError::Socket)?;
        // The capture socket applies a subscription when it reads it, which it does
        // lazily while sending; reading both here makes sure they are in place before
        // the proxy sends its first copy.
        let wait_ms = i32::try_from(CAPTURE_SYNC.as_millis()).unwrap_or(i32::MAX);
        capture.set_rcvtimeo(wait_ms).map_err(ProxyError::Socket)?;
        let mut seen = 0;
        while seen < 2 {
            match capture.recv_bytes(0) {
                Ok(m) if m == b"\x01\x00" || m == b"\x01\x01" => seen += 1,
                // nothing else subscribes to the capture socket
                Ok(_) => {}
                Err(zmq::Error::EAGAIN) => return Err(ProxyError::CaptureSync(CAPTURE_SYNC)),
                Err(e) => return Err(ProxyError::Socket(e)),
            }
        }
        Ok(Observer {
            xsub_monitor,
            xpub_monitor,
            capture: sub,
        })
    }

    /// Runs the loop in a thread until both monitored sockets are closed or `stop` is
    /// set.
    pub fn spawn(
        self,
        observed: Arc<Observed>,
        stop: Arc<AtomicBool>,
    ) -> Result<std::thread::JoinHandle<()>, ProxyError> {
        std::thread::Builder::new()
            .name("fwdgate-proxy-observe".into())
            .spawn(move || self.watch(&observed, &stop))
            .map_err(ProxyError::Thread)
    }

    fn watch(self, observed: &Observed, stop: &AtomicBool) {
        let mut topics = Topics::default();
        let mut xsub_open = true;
        let mut xpub_open = true;
        while (xsub_open || xpub_open) && !stop.load(Ordering::Relaxed) {
            let mut items = [
                self.xsub_monitor.as_poll_item(zmq::POLLIN),
                self.xpub_monitor.as_poll_item(zmq::POLLIN),
                self.capture.as_poll_item(zmq::POLLIN),
            ];
            match zmq::poll(&mut items, POLL_MS) {
                Ok(_) => {}
                // a signal arrived (SIGTERM is handled elsewhere): look again
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "proxy observer cannot poll; gauges stop");
                    return;
                }
            }
            let ready = [
                items[0].is_readable(),
                items[1].is_readable(),
                items[2].is_readable(),
            ];
            if ready[0] {
                xsub_open &= connections(&self.xsub_monitor, &observed.publishers, "publisher");
            }
            if ready[1] {
                xpub_open &= connections(&self.xpub_monitor, &observed.subscribers, "subscriber");
            }
            if ready[2] {
                while let Ok(frames) = self.capture.recv_multipart(zmq::DONTWAIT) {
                    topics.apply(&frames, observed);
                }
            }
        }
    }
}

/// A PAIR socket receiving the connection events of `socket`.
fn monitor(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    address: &str,
) -> Result<zmq::Socket, ProxyError> {
    let events = zmq::SocketEvent::CONNECTED as i32
        | zmq::SocketEvent::ACCEPTED as i32
        | zmq::SocketEvent::DISCONNECTED as i32
        | zmq::SocketEvent::MONITOR_STOPPED as i32;
    socket
        .monitor(address, events)
        .map_err(ProxyError::Socket)?;
    let pair = ctx.socket(zmq::PAIR).map_err(ProxyError::Socket)?;
    pair.set_linger(0).map_err(ProxyError::Socket)?;
    pair.connect(address).map_err(ProxyError::Socket)?;
    Ok(pair)
}

/// Applies every pending event of a monitor to `gauge`; false once the monitored
/// socket has closed (MONITOR_STOPPED).
fn connections(pair: &zmq::Socket, gauge: &AtomicU64, peer: &str) -> bool {
    // Each event is two frames: 6 bytes (u16 event id, u32 value), then the endpoint.
    while let Ok(frames) = pair.recv_multipart(zmq::DONTWAIT) {
        let Some(head) = frames.first().filter(|f| f.len() >= 2) else {
            continue;
        };
        let endpoint = frames
            .get(1)
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .unwrap_or_default();
        match zmq::SocketEvent::from_raw(u16::from_le_bytes([head[0], head[1]])) {
            // ACCEPTED comes for every connection a bound endpoint takes, and
            // DISCONNECTED for every one that ends, whether or not its handshake
            // succeeded: the two balance.
            zmq::SocketEvent::CONNECTED | zmq::SocketEvent::ACCEPTED => {
                gauge.fetch_add(1, Ordering::Relaxed);
                tracing::info!(endpoint = %endpoint, "proxy: {peer} connected");
            }
            zmq::SocketEvent::DISCONNECTED => {
                Observed::decrease(gauge);
                tracing::info!(endpoint = %endpoint, "proxy: {peer} disconnected");
            }
            zmq::SocketEvent::MONITOR_STOPPED => return false,
            _ => {}
        }
    }
    true
}

/// The topics somebody subscribes to, from the XPUB side's subscription messages. The
/// XPUB is not verbose: it reports a topic when its first subscriber arrives and its
/// removal when the last one leaves, so each message changes the set.
#[derive(Default)]
struct Topics(HashSet<Vec<u8>>);

impl Topics {
    fn apply(&mut self, frames: &[Vec<u8>], observed: &Observed) {
        // A subscription message is one frame. A publication whose first frame starts
        // with 0x00 or 0x01 also passes the capture's filter; one of several frames is
        // told apart here. (One single-frame publication starting with those bytes
        // would be taken for a subscription message: a gateway always sends several.)
        let [frame] = frames else {
            return;
        };
        match frame.split_first() {
            Some((1, topic)) => {
                observed.subscribes.fetch_add(1, Ordering::Relaxed);
                self.0.insert(topic.to_vec());
                tracing::debug!(topic = %String::from_utf8_lossy(topic), "proxy: subscription");
            }
            Some((0, topic)) => {
                observed.unsubscribes.fetch_add(1, Ordering::Relaxed);
                self.0.remove(topic);
                tracing::debug!(topic = %String::from_utf8_lossy(topic), "proxy: unsubscription");
            }
            _ => return,
        }
        observed
            .subscriptions
            .store(self.0.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_subscribe_and_unsubscribe_messages() {
        let o = Observed::default();
        let mut t = Topics::default();
        t.apply(&[b"\x01t1".to_vec()], &o);
        t.apply(&[b"\x01t2".to_vec()], &o);
        t.apply(&[b"\x01".to_vec()], &o); // the empty topic: everything
        assert_eq!(o.subscriptions.load(Ordering::Relaxed), 3);
        t.apply(&[b"\x00t1".to_vec()], &o);
        assert_eq!(o.subscriptions.load(Ordering::Relaxed), 2);
        // a publication of several frames is not a subscription message
        t.apply(&[b"\x01t9".to_vec(), b"svc".to_vec()], &o);
        // nor is an empty frame
        t.apply(&[Vec::new()], &o);
        assert_eq!(o.subscriptions.load(Ordering::Relaxed), 2);
        assert_eq!(o.subscribes.load(Ordering::Relaxed), 3);
        assert_eq!(o.unsubscribes.load(Ordering::Relaxed), 1);
    }
}
