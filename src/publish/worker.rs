//! The publisher thread: takes requests' events from the buffer in order and sends them
//! on the XPUB socket. It reads the socket's subscription messages to know whether
//! anybody is subscribed, holds publications while nobody is (the buffer behind it
//! fills, then spills to the spool or holds intake back), joins Docker's split lines
//! when asked to, and applies the `drop_oldest` policy while it is stalled.

use super::format::{Encoder, Sink};
use super::ratelimit::TenantLimiter;
use crate::buffer::{Delivery, Mark, Next, Outlet};
use crate::config::{Format, SlowSubscriber};
use crate::event::RoutedEvents;
use crate::metrics::{Counters, TenantCounts};
use crate::partial::{Joined, Joiner};
use crate::route::Router;
use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one wait on the socket lasts before the worker looks at the buffer again.
const TICK_MS: i64 = 20;

/// One nap of the worker between polls of a buffer that was just busy, and how many
/// empty naps in a row make it park (see [`Worker::next`]). A longer nap hands
/// ZeroMQ's I/O thread larger bursts, each costing one wakeup of it and of the
/// subscriber: at 100k lock-step requests/s, 500 µs took 4-7% less gateway CPU per
/// request than 100 µs (and 1 ms a little less again). A publication waits at most
/// one nap more; an idle, parked worker is woken at once.
const NAP: Duration = Duration::from_micros(500);
const MAX_NAPS: u32 = 10;

/// The longest the worker parks without looking at the clock: the spool's checkpoint
/// and split lines' deadlines are kept while nothing comes.
const PARK: Duration = Duration::from_millis(250);

/// How often subscription messages are read while publishing.
const SUB_CHECK: Duration = Duration::from_millis(10);

pub struct Worker {
    pub ctx: zmq::Context,
    pub socket: zmq::Socket,
    /// Each `zmq_bind` endpoint as configured, and as bound (its port picked).
    pub binds: Vec<(String, String)>,
    /// Settings reloaded on SIGHUP.
    pub reloads: std::sync::mpsc::Receiver<super::Reload>,
    /// The addresses of `zmq_connect` host names, connected and let go as they change.
    pub dialer: super::endpoints::Dialer,
    pub outlet: Outlet,
    /// Docker's split lines being joined (`input.join_partial`), with the rules that
    /// route a joined line.
    pub joiner: Option<(Joiner<Mark>, Arc<ArcSwap<Router>>)>,
    pub encoder: Encoder,
    pub counters: Arc<Counters>,
    pub tenants: Arc<TenantCounts>,
    pub hold_without_subscribers: bool,
    pub slow_subscriber: SlowSubscriber,
    /// How long to wait for a subscriber once intake has closed (shutdown).
    pub linger: Duration,
    /// True while publications are held for want of a subscriber (logged once).
    pub holding: bool,
    /// The per-tenant rate limit (`limits.tenant_events_per_second`), if any, and the
    /// per-tenant count of what it dropped.
    pub limiter: Option<TenantLimiter>,
    pub rate_limited: Arc<TenantCounts>,
}

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

/// What the worker does next.
enum Step {
    Publish(Delivery),
    Ended(u64),
    /// Nothing came: look at the clock (split lines' deadlines).
    Idle,
    Stop,
}

impl Worker {
    pub fn run(mut self) {
        let mut subs = Subscriptions::default();
        let hold = self.hold_without_subscribers && self.encoder.format() != Format::Null;
        let mut held: Option<Delivery> = None;
        let mut checked = Instant::now();
        let mut naps = 0;
        loop {
            self.outlet.maintain();
            self.dialer.apply(&self.socket);
            self.take_reload();
            let delivery = match held.take() {
                Some(d) => d,
                None => match self.next(&mut naps) {
                    Step::Publish(d) => d,
                    Step::Ended(connection) => {
                        self.finish_lines(Some(connection));
                        continue;
                    }
                    Step::Idle => {
                        self.expire_lines();
                        continue;
                    }
                    Step::Stop => break,
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
                match self.wait_for_subscriber(&mut subs, delivery) {
                    Waited::Ready(d) => held = Some(d),
                    // The held request was dropped to make room; take the next one.
                    Waited::DroppedOldest => {}
                    Waited::GaveUp(d) => {
                        self.give_up(d);
                        break;
                    }
                }
                continue;
            }
            self.deliver(delivery);
        }
        // What split lines are still held is published as far as it got.
        if hold && !subs.any() {
            self.finish_lines_unpublished();
        } else {
            self.finish_lines(None);
        }
        // Closing waits up to the linger time for queued messages to reach subscribers;
        // after that, what was published needs no replay.
        drop(self.socket);
        drop(self.ctx);
        self.outlet.close();
    }

    /// The next thing to do. While requests keep coming the worker naps between polls
    /// instead of parking: parked, it is woken by every request (a futex call and a
    /// context switch each, most of the cost of Docker's lock-step traffic, one small
    /// request at a time); napping, it takes the requests of a nap in one wakeup and
    /// hands them to ZeroMQ's I/O thread in one burst. After [`MAX_NAPS`] empty naps in
    /// a row it parks. Acks do not wait for this: connections ack on hand-off to the
    /// buffer.
    fn next(&mut self, naps: &mut u32) -> Step {
        loop {
            let wait = if *naps < MAX_NAPS {
                None
            } else {
                let deadline = self
                    .joiner
                    .as_ref()
                    .and_then(|(j, _)| j.next_deadline())
                    .map(|d| d.saturating_duration_since(Instant::now()));
                Some(deadline.map_or(PARK, |d| d.min(PARK)))
            };
            match self.outlet.next(wait) {
                Next::Delivery(d) => {
                    *naps = 0;
                    return Step::Publish(d);
                }
                Next::Ended(connection) => return Step::Ended(connection),
                Next::Closed => return Step::Stop,
                Next::Empty if wait.is_none() => {
                    *naps += 1;
                    std::thread::sleep(NAP);
                }
                Next::Empty => return Step::Idle,
            }
        }
    }

    /// Applies a reloaded configuration, if one came. Costs one atomic load otherwise.
    fn take_reload(&mut self) {
        let Ok(reload) = self.reloads.try_recv() else {
            return;
        };
        self.encoder.set_route_defaults(&reload.route);
        self.limiter = TenantLimiter::new(reload.events_per_second, reload.burst);
        self.rebind(&reload.zmq_bind);
        self.dialer
            .reload(&self.socket, &reload.zmq_connect, reload.resolve_interval);
        tracing::info!("publisher: reloaded routes' defaults, tenant rate limit and endpoints");
    }

    /// Binds the endpoints of `wanted` not bound yet and unbinds those no longer in it.
    /// A failure is logged and leaves that endpoint as it was.
    fn rebind(&mut self, wanted: &[String]) {
        let mut kept = Vec::new();
        for (configured, actual) in std::mem::take(&mut self.binds) {
            if wanted.contains(&configured) {
                kept.push((configured, actual));
                continue;
            }
            match self.socket.unbind(&actual) {
                Ok(()) => tracing::info!(endpoint = %actual, "ZeroMQ endpoint unbound"),
                Err(e) => {
                    tracing::warn!(endpoint = %actual, error = %e, "cannot unbind ZeroMQ endpoint");
                    kept.push((configured, actual));
                }
            }
        }
        for endpoint in wanted {
            if kept.iter().any(|(c, _)| c == endpoint) {
                continue;
            }
            match self.socket.bind(endpoint) {
                Ok(()) => {
                    let actual = self
                        .socket
                        .get_last_endpoint()
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_else(|| endpoint.clone());
                    tracing::info!(endpoint = %actual, "ZeroMQ endpoint bound");
                    kept.push((endpoint.clone(), actual));
                }
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint, error = %e, "cannot bind ZeroMQ endpoint")
                }
            }
        }
        self.binds = kept;
    }

    /// Waits until something subscribes, dropping the oldest held requests meanwhile
    /// if the policy is `drop_oldest` and intake waits for room. After intake has
    /// closed (shutdown) it waits at most `linger`, and not at all with a spool.
    fn wait_for_subscriber(&mut self, subs: &mut Subscriptions, delivery: Delivery) -> Waited {
        if !self.holding {
            self.holding = true;
            tracing::info!("nobody is subscribed: holding publications until a subscriber arrives");
        }
        let mut give_up_at = None;
        loop {
            self.outlet.maintain();
            // Collectors that appear under a name, or in a reloaded configuration, are
            // what this wait may be for.
            self.dialer.apply(&self.socket);
            self.take_reload();
            if self.outlet.must_drop() {
                // The held request is the oldest of all.
                self.outlet.drop_oldest(delivery);
                return Waited::DroppedOldest;
            }
            if self.socket.poll(zmq::POLLIN, TICK_MS).unwrap_or(0) > 0 {
                subs.update(&self.socket);
            }
            if subs.any() {
                self.holding = false;
                tracing::info!("a subscriber arrived: publishing what was held");
                return Waited::Ready(delivery);
            }
            if self.outlet.intake_closed() {
                // With a spool, what is held is safe where it is: no reason to wait.
                let wait = if self.outlet.is_durable() {
                    Duration::ZERO
                } else {
                    self.linger
                };
                let at = *give_up_at.get_or_insert_with(|| Instant::now() + wait);
                if Instant::now() >= at {
                    return Waited::GaveUp(delivery);
                }
            }
        }
    }

    /// Shutdown with nobody subscribed: what is still held cannot be delivered. With a
    /// spool it stays there for the next start; without one it is lost, counted.
    fn give_up(&mut self, delivery: Delivery) {
        if self.outlet.is_durable() {
            let held = delivery.events.events.len();
            drop(delivery);
            self.outlet.stop_reading();
            tracing::warn!(
                events_in_hand = held,
                "shutting down with nobody subscribed: what is held stays in the spool for the next start"
            );
            return;
        }
        let mut dropped = delivery.events.events.len() as u64;
        drop(delivery);
        loop {
            match self.outlet.next(None) {
                Next::Delivery(d) => dropped += d.events.events.len() as u64,
                Next::Ended(_) => {}
                Next::Empty | Next::Closed => break,
            }
        }
        dropped += self.drop_held_lines();
        self.counters
            .events_dropped_no_subscriber
            .fetch_add(dropped, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                events = dropped,
                "shutting down with nobody subscribed: held events dropped"
            );
        }
    }

    /// Publishes a request's events, through the joiner when there is one.
    fn deliver(&mut self, delivery: Delivery) {
        let Delivery { events, mark } = delivery;
        match &mut self.joiner {
            None => {
                self.publish(events);
                self.outlet.release(mark);
            }
            Some((joiner, router)) => {
                let joined = joiner.offer(events, mark, &router.load());
                self.publish_joined(joined);
            }
        }
    }

    fn publish_joined(&mut self, joined: Vec<Joined<Mark>>) {
        for Joined { events, marks } in joined {
            if !events.events.is_empty() {
                self.publish(events);
            }
            for mark in marks {
                self.outlet.release(mark);
            }
        }
    }

    /// Publishes the split lines whose next piece is overdue.
    fn expire_lines(&mut self) {
        let Some((joiner, router)) = &mut self.joiner else {
            return;
        };
        let lines = joiner.expire(&router.load());
        self.publish_joined(lines);
    }

    /// Publishes the split lines of a connection that ended (or all, at the end).
    fn finish_lines(&mut self, connection: Option<u64>) {
        let Some((joiner, router)) = &mut self.joiner else {
            return;
        };
        let lines = joiner.ended(connection, &router.load());
        self.publish_joined(lines);
    }

    /// At a shutdown with nobody subscribed: split lines still held are not published;
    /// with a spool their pieces stay there.
    fn finish_lines_unpublished(&mut self) {
        let n = self.drop_held_lines();
        if !self.outlet.is_durable() {
            self.counters
                .events_dropped_no_subscriber
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Lets go of the split lines still held, unpublished; the events they held.
    fn drop_held_lines(&mut self) -> u64 {
        let Some((joiner, router)) = &mut self.joiner else {
            return 0;
        };
        joiner
            .ended(None, &router.load())
            .iter()
            .map(|line| line.events.events.len() as u64)
            .sum()
    }

    fn publish(&mut self, mut batch: RoutedEvents) {
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
            outlet: &mut self.outlet,
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
    }

    /// Drops the events over their tenant's rate, counting them per tenant.
    fn apply_rate_limit(&mut self, batch: &mut RoutedEvents) {
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

enum Waited {
    Ready(Delivery),
    DroppedOldest,
    GaveUp(Delivery),
}

/// Counts a published batch per tenant. Consecutive events of one tenant (the usual
/// case: one container per connection) make one run, so the shared map is locked once
/// per batch and touched once per run.
fn count_tenants(encoder: &Encoder, batch: &RoutedEvents, tenants: &TenantCounts) {
    tenants.add_runs(tenant_runs(encoder, batch));
}

/// The batch's events as runs of one tenant, in order: (tenant, events in the run).
fn tenant_runs<'a>(encoder: &'a Encoder, batch: &'a RoutedEvents) -> Vec<(&'a [u8], u64)> {
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
    outlet: &'a mut Outlet,
}

impl ZmqSink<'_> {
    /// Waits for the socket to take a message; meanwhile, under `drop_oldest`, drops
    /// held requests while intake waits for room.
    fn wait_for_room(&mut self) {
        let _ = self.socket.poll(zmq::POLLOUT, TICK_MS);
        self.outlet.maintain();
        while self.outlet.must_drop() {
            let Next::Delivery(oldest) = self.outlet.next(None) else {
                break;
            };
            self.outlet.drop_oldest(oldest);
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
