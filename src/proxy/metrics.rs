//! What the proxy counts, and its Prometheus text rendering.
//!
//! Two sources: libzmq's own counters, which the steerable proxy sends in answer to
//! `STATISTICS` (decoded here), and what the observer thread sees on the sockets
//! (connections, subscription messages), kept in [`Observed`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// The counters of one side of the proxy, as libzmq keeps them: a multipart message
/// counts once, its bytes are the sum of its frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

/// libzmq's answer to `STATISTICS`. The frontend is the XSUB side: publications come
/// in there, subscription messages go out there to the publishers. The backend is the
/// XPUB side: subscription messages come in, publications go out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statistics {
    pub frontend: Side,
    pub backend: Side,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StatisticsError {
    #[error("the proxy's statistics reply has {0} frames, not 8")]
    Frames(usize),
    #[error("frame {index} of the proxy's statistics reply has {len} bytes, not 8")]
    FrameSize { index: usize, len: usize },
}

impl Statistics {
    /// Decodes the 8 frames of the reply: for the frontend then the backend, messages
    /// in, bytes in, messages out, bytes out. libzmq copies each `uint64_t` from memory,
    /// so the byte order is this machine's.
    pub fn decode<F: AsRef<[u8]>>(frames: &[F]) -> Result<Statistics, StatisticsError> {
        if frames.len() != 8 {
            return Err(StatisticsError::Frames(frames.len()));
        }
        let mut values = [0u64; 8];
        for (index, (frame, value)) in frames.iter().zip(values.iter_mut()).enumerate() {
            let frame = frame.as_ref();
            let bytes: [u8; 8] = frame.try_into().map_err(|_| StatisticsError::FrameSize {
                index,
                len: frame.len(),
            })?;
            *value = u64::from_ne_bytes(bytes);
        }
        let side = |v: &[u64]| Side {
            messages_in: v[0],
            bytes_in: v[1],
            messages_out: v[2],
            bytes_out: v[3],
        };
        Ok(Statistics {
            frontend: side(&values[..4]),
            backend: side(&values[4..]),
        })
    }
}

/// What the observer thread counts (gauges, and the subscription messages).
#[derive(Debug, Default)]
pub struct Observed {
    /// Gauge: peers connected to the XSUB endpoints (gateways, other publishers).
    pub publishers: AtomicU64,
    /// Gauge: peers connected to the XPUB endpoints.
    pub subscribers: AtomicU64,
    /// Gauge: distinct topics that at least one subscriber subscribes to.
    pub subscriptions: AtomicU64,
    /// Subscription messages from the XPUB side, each passed upstream.
    pub subscribes: AtomicU64,
    pub unsubscribes: AtomicU64,
}

impl Observed {
    /// Subtracts one from a gauge without wrapping below zero (a disconnection whose
    /// connection was made before the monitor started is not counted twice).
    pub fn decrease(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Renders every metric of the proxy in the Prometheus text format (version 0.0.4).
pub fn render(stats: &Statistics, observed: &Observed) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "fwdgate_proxy_messages_in_total",
        "counter",
        "Messages received from publishers on the XSUB side (a multipart message counts once).",
        stats.frontend.messages_in,
    );
    metric(
        "fwdgate_proxy_bytes_in_total",
        "counter",
        "Bytes of the messages received from publishers (all frames).",
        stats.frontend.bytes_in,
    );
    metric(
        "fwdgate_proxy_messages_out_total",
        "counter",
        "Messages passed to the XPUB side, which sends each to every subscriber whose subscription matches.",
        stats.backend.messages_out,
    );
    metric(
        "fwdgate_proxy_bytes_out_total",
        "counter",
        "Bytes of the messages passed to the XPUB side (all frames).",
        stats.backend.bytes_out,
    );
    metric(
        "fwdgate_proxy_publishers",
        "gauge",
        "Peers connected to the XSUB endpoints.",
        get(&observed.publishers),
    );
    metric(
        "fwdgate_proxy_subscribers",
        "gauge",
        "Peers connected to the XPUB endpoints.",
        get(&observed.subscribers),
    );
    metric(
        "fwdgate_proxy_subscriptions",
        "gauge",
        "Distinct topics with at least one subscriber, as forwarded to the publishers.",
        get(&observed.subscriptions),
    );
    let _ = writeln!(
        out,
        "# HELP fwdgate_proxy_subscription_messages_total Subscription messages passed upstream to the publishers, by kind.\n\
         # TYPE fwdgate_proxy_subscription_messages_total counter\n\
         fwdgate_proxy_subscription_messages_total{{kind=\"subscribe\"}} {}\n\
         fwdgate_proxy_subscription_messages_total{{kind=\"unsubscribe\"}} {}",
        get(&observed.subscribes),
        get(&observed.unsubscribes),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(values: [u64; 8]) -> Vec<Vec<u8>> {
        values.iter().map(|v| v.to_ne_bytes().to_vec()).collect()
    }

    #[test]
    fn decodes_frontend_then_backend() {
        let s = Statistics::decode(&frames([1, 2, 3, 4, 5, 6, 7, u64::MAX])).expect("decoded");
        assert_eq!(
            s,
            Statistics {
                frontend: Side {
                    messages_in: 1,
                    bytes_in: 2,
                    messages_out: 3,
                    bytes_out: 4
                },
                backend: Side {
                    messages_in: 5,
                    bytes_in: 6,
                    messages_out: 7,
                    bytes_out: u64::MAX
                },
            }
        );
    }

    #[test]
    fn rejects_a_reply_of_another_shape() {
        let mut f = frames([0; 8]);
        f.pop();
        assert_eq!(Statistics::decode(&f), Err(StatisticsError::Frames(7)));
        let mut f = frames([0; 8]);
        f[3].push(0);
        assert_eq!(
            Statistics::decode(&f),
            Err(StatisticsError::FrameSize { index: 3, len: 9 })
        );
        assert_eq!(
            Statistics::decode::<Vec<u8>>(&[]),
            Err(StatisticsError::Frames(0))
        );
    }

    #[test]
    fn renders_each_family_once_with_its_value() {
        let stats = Statistics {
            frontend: Side {
                messages_in: 10,
                bytes_in: 100,
                messages_out: 3,
                bytes_out: 12,
            },
            backend: Side {
                messages_in: 3,
                bytes_in: 12,
                messages_out: 10,
                bytes_out: 100,
            },
        };
        let observed = Observed::default();
        observed.publishers.store(2, Ordering::Relaxed);
        observed.subscribers.store(1, Ordering::Relaxed);
        observed.subscriptions.store(4, Ordering::Relaxed);
        observed.subscribes.store(5, Ordering::Relaxed);
        observed.unsubscribes.store(1, Ordering::Relaxed);
        let text = render(&stats, &observed);
        for line in [
            "fwdgate_proxy_messages_in_total 10",
            "fwdgate_proxy_bytes_in_total 100",
            "fwdgate_proxy_messages_out_total 10",
            "fwdgate_proxy_bytes_out_total 100",
            "fwdgate_proxy_publishers 2",
            "fwdgate_proxy_subscribers 1",
            "fwdgate_proxy_subscriptions 4",
            "fwdgate_proxy_subscription_messages_total{kind=\"subscribe\"} 5",
            "fwdgate_proxy_subscription_messages_total{kind=\"unsubscribe\"} 1",
        ] {
            assert_eq!(
                text.lines().filter(|l| *l == line).count(),
                1,
                "{line} in:\n{text}"
            );
        }
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types.len(), 8);
        assert_eq!(helps, 8);
        // every sample belongs to a family declared before it
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                types.iter().any(|t| t.split(' ').nth(2) == Some(name)),
                "{sample} has no TYPE line"
            );
        }
    }

    #[test]
    fn gauges_do_not_wrap() {
        let o = Observed::default();
        Observed::decrease(&o.subscribers);
        assert_eq!(get(&o.subscribers), 0);
    }
}
