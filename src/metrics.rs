//! Counters and gauges of what the gateway does, shared by every task, and their
//! Prometheus text rendering (served by `server::http`).

use crate::sync::lock;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Monotonic counters (each added to where the thing happens) and a few gauges.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_accepted: AtomicU64,
    /// Gauge: connections open now.
    pub connections_active: AtomicU64,
    /// Connections closed because their input could not be trusted.
    pub connections_rejected: AtomicU64,
    /// Gauge: connections holding a place under the connection limits.
    pub connections_admitted: AtomicU64,
    /// Connections refused at accept: source not allowed, or a connection limit.
    pub connections_refused: AtomicU64,
    /// Connections closed for sending nothing within `limits.idle_timeout_ms`.
    pub connections_idle_closed: AtomicU64,
    pub requests: AtomicU64,
    /// Requests whose chunk id was accepted before (a client's resend): acked again,
    /// not published again.
    pub requests_duplicate: AtomicU64,
    /// Resends that arrived while their original (same client, same chunk id) was still
    /// being handled, and waited for its outcome.
    pub resend_waits: AtomicU64,
    pub bytes_received: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Requests with `fluent_signal` 1 or 2 (metrics, traces): accepted, not published.
    pub signal_requests: AtomicU64,
    /// Events skipped because they were invalid inside a valid request.
    pub events_invalid: AtomicU64,
    pub events_published: AtomicU64,
    /// Events accepted and dropped on purpose by the `null` output format.
    pub events_discarded: AtomicU64,
    /// Events lost because ZeroMQ refused to send them.
    pub events_dropped: AtomicU64,
    /// Requests and events dropped by the `drop_newest` / `drop_oldest` queue policies.
    pub requests_dropped_queue_full: AtomicU64,
    pub events_dropped_queue_full: AtomicU64,
    /// Events still held for want of a subscriber when the gateway stopped.
    pub events_dropped_no_subscriber: AtomicU64,
    /// Events over their tenant's rate limit.
    pub events_dropped_rate_limit: AtomicU64,
    /// Events the `rainbond` format could not publish: a service id that Rainbond's
    /// eventlog cannot cut out of its message.
    pub events_dropped_rainbond_service_id: AtomicU64,
    /// Gauges: what tenants' holds keep (bytes as counted by `output.tenant_hold_bytes`,
    /// events, tenants).
    pub tenant_hold_bytes: AtomicU64,
    pub tenant_hold_events: AtomicU64,
    pub tenant_hold_tenants: AtomicU64,
    /// Gauge: topics (subscription prefixes) subscribed to at the ZeroMQ socket.
    pub zmq_subscriptions: AtomicU64,
    pub acks_sent: AtomicU64,
    /// Gauge: requests and bytes waiting in the publisher queue.
    pub queue_requests: AtomicU64,
    pub queue_bytes: AtomicU64,
    /// Requests and events dropped because the spool was full (`spool.max_bytes`), by
    /// the `drop_newest` / `drop_oldest` policies.
    pub requests_dropped_spool_full: AtomicU64,
    pub events_dropped_spool_full: AtomicU64,
    /// Requests not acknowledged because their spool write failed (a full disk).
    pub requests_refused_spool: AtomicU64,
    /// Spool writes or syncs that failed.
    pub spool_write_errors: AtomicU64,
    /// Gauges: bytes and segment files of the spool on disk.
    pub spool_bytes: AtomicU64,
    pub spool_segments: AtomicU64,
    /// Records read back from the spool (after a restart, or while the memory queue
    /// was full).
    pub spool_records_replayed: AtomicU64,
    /// Damaged or unreadable parts of spool segments skipped, and their bytes.
    pub spool_damaged_regions: AtomicU64,
    pub spool_bytes_skipped: AtomicU64,
    /// Gauge: when the oldest request held by the buffer was received (nanoseconds
    /// since the Unix epoch), 0 when none is held.
    pub buffer_head_received_ns: AtomicU64,
    /// Hand-overs that waited for another connection of the same client that might hold
    /// an earlier request (`input.keep_client_order`), and waits that gave up after a
    /// second.
    pub order_waits: AtomicU64,
    pub order_wait_timeouts: AtomicU64,
    /// Gauge: ZeroMQ peers connected to the PUB socket (subscribers that connected to a
    /// bound endpoint, and connect endpoints whose peer is up).
    pub zmq_peers: AtomicU64,
    /// Gauge: addresses the `zmq_connect` host names resolved to, connected now.
    pub zmq_connect_addresses: AtomicU64,
    /// Gauges: bytes of the intake memory budget (`limits.intake_memory_bytes`) held by
    /// read buffers and decompressions, and the budget itself (0: none).
    pub intake_memory_bytes: AtomicU64,
    pub intake_memory_limit_bytes: AtomicU64,
    /// Reads and decompressions that waited for room in the intake budget.
    pub intake_memory_waits: AtomicU64,
    /// Decompressions that gave their room back and started again with more.
    pub decompress_restarts: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Counters {
    /// One line's worth of fields for the shutdown log.
    pub fn summary(&self) -> String {
        format!(
            "connections={} rejected={} requests={} duplicates={} bytes={} events_published={} events_discarded={} events_invalid={} events_dropped={} dropped_queue_full={} dropped_spool_full={} dropped_no_subscriber={} dropped_rate_limit={} dropped_rainbond_service_id={} refused_spool={} spool_replayed={} spool_skipped_bytes={} signal_requests={} acks={} heartbeats={}",
            get(&self.connections_accepted),
            get(&self.connections_rejected),
            get(&self.requests),
            get(&self.requests_duplicate),
            get(&self.bytes_received),
            get(&self.events_published),
            get(&self.events_discarded),
            get(&self.events_invalid),
            get(&self.events_dropped),
            get(&self.events_dropped_queue_full),
            get(&self.events_dropped_spool_full),
            get(&self.events_dropped_no_subscriber),
            get(&self.events_dropped_rate_limit),
            get(&self.events_dropped_rainbond_service_id),
            get(&self.requests_refused_spool),
            get(&self.spool_records_replayed),
            get(&self.spool_bytes_skipped),
            get(&self.signal_requests),
            get(&self.acks_sent),
            get(&self.heartbeats),
        )
    }

    /// Subtracts from a gauge without wrapping below zero.
    pub fn decrease(gauge: &AtomicU64, by: u64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(by))
        });
    }
}

/// Events published per tenant, with a cap on how many tenants get their own series
/// (label cardinality): the rest are summed under `tenant="_other"`.
#[derive(Debug)]
pub struct TenantCounts {
    max_tenants: usize,
    counts: Mutex<HashMap<Box<[u8]>, u64>>,
    other: AtomicU64,
}

/// The label value of tenants past the cap.
pub const OTHER_TENANTS: &str = "_other";

impl TenantCounts {
    pub fn new(max_tenants: usize) -> Self {
        TenantCounts {
            max_tenants,
            counts: Mutex::new(HashMap::new()),
            other: AtomicU64::new(0),
        }
    }

    /// Adds runs of `(tenant, events)`; one lock for the whole batch.
    pub fn add_runs<'a>(&self, runs: impl IntoIterator<Item = (&'a [u8], u64)>) {
        let mut counts = lock(&self.counts);
        for (tenant, n) in runs {
            if let Some(c) = counts.get_mut(tenant) {
                *c += n;
            } else if counts.len() < self.max_tenants {
                counts.insert(tenant.into(), n);
            } else {
                self.other.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = lock(&self.counts)
            .iter()
            .map(|(t, n)| (String::from_utf8_lossy(t).into_owned(), *n))
            .collect();
        out.sort();
        let other = get(&self.other);
        if other > 0 {
            out.push((OTHER_TENANTS.to_owned(), other));
        }
        out
    }
}

/// Renders every metric in the Prometheus text exposition format (version 0.0.4).
pub fn render(c: &Counters, tenants: &TenantCounts, rate_limited: &TenantCounts) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "fwdgate_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        get(&c.connections_accepted),
    );
    metric(
        "fwdgate_connections_active",
        "gauge",
        "Client connections open now.",
        get(&c.connections_active),
    );
    metric(
        "fwdgate_connections_rejected_total",
        "counter",
        "Connections closed for input that could not be trusted (slow requests and failed handshakes included).",
        get(&c.connections_rejected),
    );
    metric(
        "fwdgate_connections_refused_total",
        "counter",
        "Connections refused at accept: source not allowed, or a connection limit reached.",
        get(&c.connections_refused),
    );
    metric(
        "fwdgate_connections_idle_closed_total",
        "counter",
        "Connections closed after limits.idle_timeout_ms without data.",
        get(&c.connections_idle_closed),
    );
    metric(
        "fwdgate_requests_total",
        "counter",
        "Forward-protocol requests received (heartbeats excluded).",
        get(&c.requests),
    );
    metric(
        "fwdgate_requests_duplicate_total",
        "counter",
        "Resent requests whose chunk id was already accepted: acked again, not republished.",
        get(&c.requests_duplicate),
    );
    metric(
        "fwdgate_resend_waits_total",
        "counter",
        "Resent requests that arrived while their original was still being handled, and waited for its outcome.",
        get(&c.resend_waits),
    );
    metric(
        "fwdgate_signal_requests_total",
        "counter",
        "Requests with fluent_signal 1 or 2 (metrics, traces): acked, not published.",
        get(&c.signal_requests),
    );
    metric(
        "fwdgate_bytes_received_total",
        "counter",
        "Bytes read from clients.",
        get(&c.bytes_received),
    );
    metric(
        "fwdgate_heartbeats_total",
        "counter",
        "Heartbeats received (msgpack nil on TCP, UDP datagrams).",
        get(&c.heartbeats),
    );
    metric(
        "fwdgate_events_published_total",
        "counter",
        "Events sent to the ZeroMQ socket.",
        get(&c.events_published),
    );
    metric(
        "fwdgate_acks_sent_total",
        "counter",
        "Acks written to clients.",
        get(&c.acks_sent),
    );
    metric(
        "fwdgate_queue_requests",
        "gauge",
        "Requests waiting in the publisher queue.",
        get(&c.queue_requests),
    );
    metric(
        "fwdgate_queue_bytes",
        "gauge",
        "Bytes of requests waiting in the publisher queue.",
        get(&c.queue_bytes),
    );
    metric(
        "fwdgate_spool_bytes",
        "gauge",
        "Bytes of spool segment files on disk.",
        get(&c.spool_bytes),
    );
    metric(
        "fwdgate_spool_segments",
        "gauge",
        "Spool segment files on disk.",
        get(&c.spool_segments),
    );
    metric(
        "fwdgate_spool_write_errors_total",
        "counter",
        "Spool writes or syncs that failed (a full disk, an I/O error).",
        get(&c.spool_write_errors),
    );
    metric(
        "fwdgate_requests_refused_total",
        "counter",
        "Requests not acknowledged because their spool write failed (the client resends).",
        get(&c.requests_refused_spool),
    );
    metric(
        "fwdgate_spool_records_replayed_total",
        "counter",
        "Records read back from the spool: after a restart, or while the memory queue was full.",
        get(&c.spool_records_replayed),
    );
    metric(
        "fwdgate_spool_damaged_regions_total",
        "counter",
        "Damaged or unreadable parts of spool segments skipped on reading back.",
        get(&c.spool_damaged_regions),
    );
    metric(
        "fwdgate_spool_bytes_skipped_total",
        "counter",
        "Bytes of spool segments skipped as damaged or unreadable.",
        get(&c.spool_bytes_skipped),
    );
    metric(
        "fwdgate_zmq_peers",
        "gauge",
        "ZeroMQ peers connected to the PUB socket.",
        get(&c.zmq_peers),
    );
    metric(
        "fwdgate_zmq_subscriptions",
        "gauge",
        "Distinct topic prefixes subscribed to at the ZeroMQ socket, by any subscriber or collector.",
        get(&c.zmq_subscriptions),
    );
    metric(
        "fwdgate_zmq_connect_addresses",
        "gauge",
        "Addresses the zmq_connect host names resolve to, connected now.",
        get(&c.zmq_connect_addresses),
    );
    metric(
        "fwdgate_tenant_hold_bytes",
        "gauge",
        "Bytes held for tenants that no subscription covers or whose subscribers are full (output.tenant_hold_bytes bounds it).",
        get(&c.tenant_hold_bytes),
    );
    metric(
        "fwdgate_tenant_hold_events",
        "gauge",
        "Events held for tenants that no subscription covers or whose subscribers are full.",
        get(&c.tenant_hold_events),
    );
    metric(
        "fwdgate_tenant_hold_tenants",
        "gauge",
        "Tenants with events held.",
        get(&c.tenant_hold_tenants),
    );
    metric(
        "fwdgate_intake_memory_bytes",
        "gauge",
        "Bytes of the intake memory budget held by read buffers and decompressions.",
        get(&c.intake_memory_bytes),
    );
    metric(
        "fwdgate_intake_memory_limit_bytes",
        "gauge",
        "The intake memory budget (limits.intake_memory_bytes); 0: none.",
        get(&c.intake_memory_limit_bytes),
    );
    metric(
        "fwdgate_intake_memory_waits_total",
        "counter",
        "Reads and decompressions that waited for room in the intake memory budget.",
        get(&c.intake_memory_waits),
    );
    metric(
        "fwdgate_decompress_restarts_total",
        "counter",
        "Decompressions that could not get more room at once, gave theirs back and started again with twice as much.",
        get(&c.decompress_restarts),
    );
    metric(
        "fwdgate_order_waits_total",
        "counter",
        "Hand-overs that waited for an earlier request of the same client and tag on another connection.",
        get(&c.order_waits),
    );
    metric(
        "fwdgate_order_wait_timeouts_total",
        "counter",
        "Waits for an earlier request of the same client that gave up after a second (that request was still arriving).",
        get(&c.order_wait_timeouts),
    );
    let head = get(&c.buffer_head_received_ns);
    let age = if head == 0 {
        0.0
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        now.saturating_sub(head) as f64 / 1e9
    };
    let _ = writeln!(
        out,
        "# HELP fwdgate_buffer_oldest_age_seconds Age of the oldest request the buffer holds (0 when none).\n\
         # TYPE fwdgate_buffer_oldest_age_seconds gauge\n\
         fwdgate_buffer_oldest_age_seconds {age:.3}"
    );
    let _ = writeln!(
        out,
        "# HELP fwdgate_events_dropped_total Events not published, by reason.\n\
         # TYPE fwdgate_events_dropped_total counter\n\
         fwdgate_events_dropped_total{{reason=\"invalid\"}} {}\n\
         fwdgate_events_dropped_total{{reason=\"zmq_send_failed\"}} {}\n\
         fwdgate_events_dropped_total{{reason=\"null_output\"}} {}\n\
         fwdgate_events_dropped_total{{reason=\"queue_full\"}} {}\n\
         fwdgate_events_dropped_total{{reason=\"spool_full\"}} {}\n\
         fwdgate_events_dropped_total{{reason=\"no_subscriber\"}} {}\n\
         fwdgate_events_dropped_total{{reason=\"tenant_rate_limit\"}} {}\n\
         fwdgate_events_dropped_total{{reason=\"rainbond_service_id\"}} {}",
        get(&c.events_invalid),
        get(&c.events_dropped),
        get(&c.events_discarded),
        get(&c.events_dropped_queue_full),
        get(&c.events_dropped_spool_full),
        get(&c.events_dropped_no_subscriber),
        get(&c.events_dropped_rate_limit),
        get(&c.events_dropped_rainbond_service_id),
    );
    tenant_family(
        &mut out,
        "fwdgate_tenant_events_total",
        &format!(
            "Events published per tenant (tenants past the cap are summed as \"{OTHER_TENANTS}\")."
        ),
        tenants,
    );
    tenant_family(
        &mut out,
        "fwdgate_tenant_events_rate_limited_total",
        "Events dropped by the per-tenant rate limit, per tenant.",
        rate_limited,
    );
    out
}

/// Writes a counter family with one series per tenant.
fn tenant_family(out: &mut String, name: &str, help: &str, counts: &TenantCounts) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (tenant, n) in counts.snapshot() {
        let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {n}", escape_label(&tenant));
    }
}

/// Escapes a label value as the exposition format requires.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_cap_sums_the_rest() {
        let t = TenantCounts::new(2);
        t.add_runs([(&b"a"[..], 1), (b"b", 2), (b"c", 3), (b"a", 4)]);
        assert_eq!(
            t.snapshot(),
            [("a".into(), 5), ("b".into(), 2), (OTHER_TENANTS.into(), 3)]
        );
    }

    #[test]
    fn render_has_every_family_once() {
        let c = Counters::default();
        c.events_invalid.fetch_add(2, Ordering::Relaxed);
        let t = TenantCounts::new(10);
        t.add_runs([(&b"t\"1"[..], 7)]);
        let text = render(&c, &t, &TenantCounts::new(10));
        assert!(text.contains("fwdgate_events_dropped_total{reason=\"invalid\"} 2\n"));
        assert!(text.contains("fwdgate_tenant_events_total{tenant=\"t\\\"1\"} 7\n"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types, helps);
        assert_eq!(types, 38);
    }

    #[test]
    fn gauges_do_not_wrap() {
        let c = Counters::default();
        Counters::decrease(&c.queue_bytes, 5);
        assert_eq!(get(&c.queue_bytes), 0);
    }
}
