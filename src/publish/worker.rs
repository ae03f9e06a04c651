//! The publisher thread: takes batches from the queue in order and sends them on the
//! XPUB socket. It reads the socket's subscription messages to know whether anybody is
//! subscribed, holds publications while nobody is, and applies the queue's drop policy
//! while it is stalled.

use super::format::{Encoder, Sink};
use super::ratelimit::TenantLimiter;
use super::{Batch, Pressure};
use crate::config::{Format, SlowSubscriber};
use crate::metrics::{Counters, TenantCounts};
use crate::spool::Ticket;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// How long one wait on the socket lasts before the worker looks at the queue again.
const TICK_MS: i64 = 20;

/// One nap of the worker between polls of a queue that was just busy, and how many
/// empty naps in a row make it park (see [`Worker::next_batch`]). A longer nap hands
/// ZeroMQ's I/O thread larger bursts, each costing one wakeup of it and of the
/// subscriber: at 100k lock-step requests/s, 500 µs took 4-7% less gateway CPU per
/// request than 100 µs (and 1 ms a little less again). A publication waits at most
/// one nap more; an idle, parked worker is woken at once.
const NAP: Duration = Duration::from_micros(500);
const MAX_NAPS: u32 = 10;

/// How often subscription messages are read while publishing.
const SUB_CHECK: Duration = Duration::from_millis(10);

pub struct Worker {
    pub ctx: zmq::Context,
    pub socket: zmq::Socket,
    pub rx: mpsc::Receiver<Batch>,
    pub encoder: Encoder,
    pub counters: Arc<Counters>,
    pub tenants: Arc<TenantCounts>,
    pub hold_without_subscribers: bool,
    pub slow_subscriber: SlowSubscriber,
    /// What connections waiting for room under `drop_oldest` need, and the queue's
    /// byte budget, to tell whether the queue is really full.
    pub pressure: Arc<Pressure>,
    pub bytes: Arc<Semaphore>,
    /// How long to wait for a subscriber once the queue has closed (shutdown).
    pub linger: Duration,
    /// True while publications are held for want of a subscriber (logged once).
    pub holding: bool,
    /// Spool tickets of published requests, released after [`SPOOL_GRACE`].
    pub published: VecDeque<(Instant, Ticket)>,
    /// The per-tenant rate limit (`limits.tenant_events_per_second`), if any, and the
    /// per-tenant count of what it dropped.
    pub limiter: Option<TenantLimiter>,
    pub rate_limited: Arc<TenantCounts>,
}

/// How long a published request stays in the spool: time for libzmq to write it out.
const SPOOL_GRACE: Duration = Duration::from_secs(1);

/// Topics with at least one subscriber. XPUB (not verbose) reports a topic when its
/// first subscriber arrives and its removal when the last one leaves or disconnects.
#[derive(Default)]
struct Subscriptions(HashSet<Vec<u8>>);

impl Subscriptions {
    /// Reads every pending subscription message without blocking.
    fn update(&mut self, socket: &zmq::Socket) {
        while let Ok(msg) = socket.recv_bytes(zmq::DONTWAIT) {
            match msg.split_first() {
                Some((1, topic)) => {
                    self.0.insert(topic.to_vec());
                }
                Some((0, topic)) => {
                    self.0.remove(topic);
                }
                _ => {}
            }
        }
    }

    fn any(&self) -> bool {
        !self.0.is_empty()
    }
}

impl Worker {
    pub fn run(mut self) {
        let mut subs = Subscriptions::default();
        let hold = self.hold_without_subscribers && self.encoder.format() != Format::Null;
        let mut held: Option<Batch> = None;
        let mut checked = Instant::now();
        let mut naps = 0;
        loop {
            self.release_published();
            let batch = match held.take() {
                Some(b) => b,
                None => match self.next_batch(&mut naps) {
                    Some(b) => b,
                    None => break,
                },
            };
            // Reading subscription messages costs a system call: do it at most every
            // SUB_CHECK while subscribers are known to be there (a subscriber that left
            // within that time may miss what is published meanwhile).
            if !subs.any() || checked.elapsed() >= SUB_CHECK {
                subs.update(&self.socket);
                checked = Instant::now();
            }
            if hold && !subs.any() {
                match self.wait_for_subscriber(&mut subs, batch) {
                    Waited::Ready(b) => held = Some(b),
                    // The held batch was dropped to make room; take the next one.
                    Waited::DroppedOldest => {}
                    Waited::GaveUp(b) => {
                        self.give_up(b);
                        break;
                    }
                }
                continue;
            }
            self.publish(batch);
        }
        // Closing waits up to the linger time for queued messages to reach subscribers;
        // after that, what was published needs no replay.
        let published = std::mem::take(&mut self.published);
        drop(self.socket);
        drop(self.ctx);
        for (_, ticket) in published {
            ticket.done();
        }
    }

    /// The next batch; `None` once the queue is closed and empty. While batches keep
    /// coming the worker naps between polls instead of parking on the queue: parked,
    /// it is woken by every request (a futex call and a context switch each, most of
    /// the cost of Docker's lock-step traffic, one small request at a time); napping,
    /// it takes the requests of a nap in one wakeup and hands them to ZeroMQ's I/O
    /// thread in one burst. After [`MAX_NAPS`] empty naps in a row it parks. Acks do
    /// not wait for this: connections ack on hand-off to the queue.
    fn next_batch(&mut self, naps: &mut u32) -> Option<Batch> {
        loop {
            match self.rx.try_recv() {
                Ok(batch) => {
                    *naps = 0;
                    return Some(batch);
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) if *naps < MAX_NAPS => {
                    *naps += 1;
                    std::thread::sleep(NAP);
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    let batch = self.rx.blocking_recv();
                    *naps = 0;
                    return batch;
                }
            }
        }
    }

    /// Marks spooled requests done once they have been out of the gateway's hands for
    /// a while: `zmq_send` returning means libzmq holds the message, not that it is on
    /// the wire yet, so a crash right after would lose it.
    fn release_published(&mut self) {
        while let Some((at, _)) = self.published.front() {
            if at.elapsed() < SPOOL_GRACE {
                break;
            }
            if let Some((_, ticket)) = self.published.pop_front() {
                ticket.done();
            }
        }
    }

    /// Waits until something subscribes, dropping queued requests meanwhile if the
    /// policy is `drop_oldest` and connections wait for room. After the queue has
    /// closed (shutdown) it waits at most `linger`.
    fn wait_for_subscriber(&mut self, subs: &mut Subscriptions, batch: Batch) -> Waited {
        if !self.holding {
            self.holding = true;
            tracing::info!("nobody is subscribed: holding publications until a subscriber arrives");
        }
        let mut give_up_at = None;
        loop {
            if must_drop(&self.pressure, &self.rx, &self.bytes) {
                // The held batch is the oldest of all.
                self.drop_oldest(batch);
                return Waited::DroppedOldest;
            }
            if self.socket.poll(zmq::POLLIN, TICK_MS).unwrap_or(0) > 0 {
                subs.update(&self.socket);
            }
            if subs.any() {
                self.holding = false;
                tracing::info!("a subscriber arrived: publishing what was held");
                return Waited::Ready(batch);
            }
            if self.rx.is_closed() {
                let at = *give_up_at.get_or_insert_with(|| Instant::now() + self.linger);
                if Instant::now() >= at {
                    return Waited::GaveUp(batch);
                }
            }
        }
    }

    /// Shutdown with nobody subscribed: what is still queued cannot be delivered.
    /// Spooled requests stay in the spool for the next start; the others are lost.
    fn give_up(&mut self, batch: Batch) {
        let (mut dropped, mut kept) = (0, 0);
        let mut held = Some(batch);
        while let Some(b) = held.take().or_else(|| self.rx.try_recv().ok()) {
            let n = self.count_out(&b);
            // A ticket dropped without `done` keeps its record.
            if !b.spooled.is_empty() {
                kept += n;
            } else {
                dropped += n;
            }
        }
        self.counters
            .events_dropped_no_subscriber
            .fetch_add(dropped, Ordering::Relaxed);
        if kept > 0 {
            tracing::warn!(events = kept, "shutting down with nobody subscribed: held events stay in the spool for the next start");
        }
        if dropped > 0 {
            tracing::warn!(
                events = dropped,
                "shutting down with nobody subscribed: held events dropped"
            );
        }
    }

    fn drop_oldest(&mut self, batch: Batch) {
        drop_oldest(&self.counters, batch);
        self.pressure.grant();
    }

    fn count_out(&self, batch: &Batch) -> u64 {
        count_out(&self.counters, batch)
    }

    fn publish(&mut self, mut batch: Batch) {
        self.count_out(&batch);
        if self.limiter.is_some() {
            self.apply_rate_limit(&mut batch);
        }
        let sent = if self.encoder.format() == Format::Null {
            &self.counters.events_discarded
        } else {
            &self.counters.events_published
        };
        let mut sink = ZmqSink {
            socket: &self.socket,
            block: self.slow_subscriber == SlowSubscriber::Block,
            in_message: false,
            rx: &mut self.rx,
            pressure: &self.pressure,
            bytes: &self.bytes,
            counters: &self.counters,
        };
        match self.encoder.encode_batch(&batch, &mut sink) {
            Ok(n) => {
                sent.fetch_add(n, Ordering::Relaxed);
                count_tenants(&self.encoder, &batch, &self.tenants);
            }
            Err(e) => {
                self.counters
                    .events_dropped
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, events = batch.events.len(), "ZeroMQ send failed; batch dropped");
            }
        }
        let now = Instant::now();
        for ticket in batch.spooled.drain(..) {
            self.published.push_back((now, ticket));
        }
    }
}

/// Under `drop_oldest`, true while a connection waits and the queue is really full:
/// no free slot, or fewer free bytes than the waiting request needs. Dropping a batch
/// returns its bytes at once, so this turns false as soon as there is room: no more is
/// dropped than needed.
fn must_drop(pressure: &Pressure, rx: &mpsc::Receiver<Batch>, bytes: &Semaphore) -> bool {
    pressure.wants_drop()
        && (rx.capacity() == 0
            || (bytes.available_permits() as u64) < pressure.needed_bytes.load(Ordering::SeqCst))
}

impl Worker {
    /// Drops the events over their tenant's rate, counting them per tenant.
    fn apply_rate_limit(&mut self, batch: &mut Batch) {
        let Some(limiter) = self.limiter.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut kept = Vec::with_capacity(batch.events.len());
        let mut dropped: Vec<(&[u8], u64)> = Vec::new();
        // Runs of one tenant take from its bucket once.
        let mut i = 0;
        for (tenant, run) in tenant_runs(&self.encoder, batch) {
            let allowed = limiter.take(tenant, run, now);
            kept.extend_from_slice(&batch.events[i..i + allowed as usize]);
            if allowed < run {
                dropped.push((tenant, run - allowed));
            }
            i += run as usize;
        }
        if dropped.is_empty() {
            return;
        }
        let n: u64 = dropped.iter().map(|d| d.1).sum();
        self.counters
            .events_dropped_rate_limit
            .fetch_add(n, Ordering::Relaxed);
        self.rate_limited.add_runs(dropped);
        batch.events = kept;
    }
}

/// Takes a batch out of the queue gauges; returns its event count.
fn count_out(counters: &Counters, batch: &Batch) -> u64 {
    Counters::decrease(&counters.queue_requests, 1);
    let cost = batch.permit.as_ref().map_or(0, |p| p.num_permits() as u64);
    Counters::decrease(&counters.queue_bytes, cost);
    batch.events.len() as u64
}

/// Drops a queued batch under `when_full = drop_oldest`, counted (its permit returns
/// to the queue as it is dropped).
fn drop_oldest(counters: &Counters, mut batch: Batch) {
    let n = count_out(counters, &batch);
    for ticket in batch.spooled.drain(..) {
        ticket.done();
    }
    let before = counters
        .requests_dropped_queue_full
        .fetch_add(1, Ordering::Relaxed);
    counters
        .events_dropped_queue_full
        .fetch_add(n, Ordering::Relaxed);
    if before % 1000 == 0 {
        tracing::warn!(
            dropped_requests = before + 1,
            "publisher queue full: dropping the oldest requests (when_full = drop_oldest)"
        );
    }
}

enum Waited {
    Ready(Batch),
    DroppedOldest,
    GaveUp(Batch),
}

/// Counts a published batch per tenant. Consecutive events of one tenant (the usual
/// case: one container per connection) make one run, so the shared map is locked once
/// per batch and touched once per run.
fn count_tenants(encoder: &Encoder, batch: &Batch, tenants: &TenantCounts) {
    tenants.add_runs(tenant_runs(encoder, batch));
}

/// The batch's events as runs of one tenant, in order: (tenant, events in the run).
fn tenant_runs<'a>(encoder: &'a Encoder, batch: &'a Batch) -> Vec<(&'a [u8], u64)> {
    let mut runs: Vec<(&[u8], u64)> = Vec::new();
    for ev in &batch.events {
        let tenant = encoder.tenant_of(batch, ev);
        match runs.last_mut() {
            Some((t, n)) if crate::route::same_bytes(t, tenant) => *n += 1,
            _ => runs.push((tenant, 1)),
        }
    }
    runs
}

/// Frames straight onto the socket. Without `block`, a subscriber past its high-water
/// mark misses the message (libzmq drops it for that subscriber alone). With `block`
/// (ZMQ_XPUB_NODROP), a full subscriber makes the first frame of a message fail with
/// EAGAIN; the sink waits for room and sends it again. (libzmq checks the high-water
/// mark per frame, but counts only whole messages, so once the first frame of a
/// message is in, the rest go in too.)
struct ZmqSink<'a> {
    socket: &'a zmq::Socket,
    block: bool,
    /// True between the first and the last frame of a message.
    in_message: bool,
    rx: &'a mut mpsc::Receiver<Batch>,
    pressure: &'a Pressure,
    bytes: &'a Semaphore,
    counters: &'a Counters,
}

impl ZmqSink<'_> {
    /// Waits for the socket to take a message; meanwhile, under `drop_oldest`, drops
    /// queued requests while connections wait for room.
    fn wait_for_room(&mut self) {
        let _ = self.socket.poll(zmq::POLLOUT, TICK_MS);
        while must_drop(self.pressure, self.rx, self.bytes) {
            let Ok(oldest) = self.rx.try_recv() else {
                break;
            };
            drop_oldest(self.counters, oldest);
            self.pressure.grant();
        }
    }
}

impl Sink for ZmqSink<'_> {
    type Error = zmq::Error;

    fn frame(&mut self, bytes: &[u8], more: bool) -> Result<(), zmq::Error> {
        let flags = if more { zmq::SNDMORE } else { 0 };
        if !self.block || self.in_message {
            self.in_message = more;
            return self.socket.send(bytes, flags);
        }
        loop {
            match self.socket.send(bytes, flags | zmq::DONTWAIT) {
                Err(zmq::Error::EAGAIN) => self.wait_for_room(),
                other => {
                    self.in_message = more && other.is_ok();
                    return other;
                }
            }
        }
    }

    fn last_frame_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), zmq::Error> {
        let mut msg = zmq::Message::with_size(len);
        fill(&mut msg);
        self.in_message = false;
        self.socket.send(msg, 0)
    }
}
