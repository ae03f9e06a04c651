//! Counters of what the gateway did, shared by every task.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; each is added to where the thing happens.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_accepted: AtomicU64,
    /// Connections closed because their input could not be trusted.
    pub connections_rejected: AtomicU64,
    pub requests: AtomicU64,
    /// Requests whose chunk id was accepted before (a client's resend): acked again,
    /// not published again.
    pub requests_duplicate: AtomicU64,
    pub bytes_received: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Requests with `fluent_signal` 1 or 2 (metrics, traces): accepted, not published.
    pub signal_requests: AtomicU64,
    /// Events skipped because they were invalid inside a valid request.
    pub events_invalid: AtomicU64,
    pub events_published: AtomicU64,
    /// Events accepted and dropped on purpose by the `null` output format.
    pub events_discarded: AtomicU64,
    pub events_dropped: AtomicU64,
    pub acks_sent: AtomicU64,
}

impl Counters {
    /// One line's worth of fields for the shutdown log.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "connections={} rejected={} requests={} duplicates={} bytes={} events_published={} events_discarded={} events_invalid={} events_dropped={} signal_requests={} acks={} heartbeats={}",
            g(&self.connections_accepted),
            g(&self.connections_rejected),
            g(&self.requests),
            g(&self.requests_duplicate),
            g(&self.bytes_received),
            g(&self.events_published),
            g(&self.events_discarded),
            g(&self.events_invalid),
            g(&self.events_dropped),
            g(&self.signal_requests),
            g(&self.acks_sent),
            g(&self.heartbeats),
        )
    }
}
