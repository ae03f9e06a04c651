//! The publisher thread: takes requests' events from the buffer in order and sends them
//! on the XPUB socket. It reads the socket's subscription messages to know who is
//! subscribed to what. While nobody is subscribed at all it takes nothing (the buffer
//! behind it fills, then spills to the spool or holds intake back); while some are, the
//! events of a tenant that no subscription covers, or whose subscribers are full, wait
//! in that tenant's hold ([`super::hold`]) and the other tenants go on. It joins
//! Docker's split lines when asked to, and applies the `drop_oldest` policy while it is
//! stalled.

use super::format::{Encoder, Sink};
use super::hold::TenantHold;
use super::ratelimit::TenantLimiter;
use super::subscriptions::Subscriptions;
use crate::buffer::{Delivery, Mark, Next, Outlet};
use crate::config::{Format, SlowSubscriber};
use crate::event::RoutedEvents;
use crate::metrics::{Counters, TenantCounts};
use crate::partial::{Joined, Joiner};
use crate::route::Router;
use arc_swap::ArcSwap;
use std::ops::Range;
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

/// How often held tenants are tried again while the publisher is busy: a subscriber
/// that was full may have room, one that was away may be back.
const HOLD_RETRY: Duration = Duration::from_millis(5);

/// How often "tenant holds are full" may be logged.
const HOLD_FULL_WARNING: Duration = Duration::from_secs(60);

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
    /// Who is subscribed to what, as last read from the socket.
    pub subs: Subscriptions,
    /// Per-tenant holds (`output.tenant_hold_bytes` above 0, publications held without
    /// subscribers, a format that publishes).
    pub tenant_hold: Option<TenantHold>,
    /// When held tenants were last tried.
    pub hold_tried: Instant,
    /// A reused buffer for the tenant of the run being published.
    pub tenant_buf: Vec<u8>,
    /// When the holds were last said to be full, and to shed.
    pub hold_full_warned: Option<Instant>,
    pub hold_shed_warned: Option<Instant>,
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
        let hold = self.hold_without_subscribers && self.encoder.format() != Format::Null;
        let mut held: Option<Delivery> = None;
        let mut checked = Instant::now();
        let mut naps = 0;
        loop {
            self.outlet.maintain();
            self.dialer.apply(&self.socket);
            self.take_reload();
            if self.tenant_hold.as_ref().is_some_and(TenantHold::is_full) {
                // Past the holds' byte bound: what nobody subscribes to goes first; if
                // what is left is held for full subscribers, nothing new is taken until
                // some of it goes out.
                self.shed_holds();
                if self.tenant_hold.as_ref().is_some_and(TenantHold::is_full) {
                    self.wait_for_hold_room();
                    if !self.outlet.intake_closed() {
                        continue;
                    }
                }
            }
            let delivery = match held.take() {
                Some(d) => d,
                None => match self.next(&mut naps) {
                    Step::Publish(d) => d,
                    Step::Ended(connection) => {
                        self.finish_lines(Some(connection));
                        continue;
                    }
                    Step::Idle => {
                        // Subscriptions are read while idle too, so that what the
                        // metrics say of them stays current.
                        self.read_subscriptions();
                        self.expire_lines();
                        self.serve_holds(true);
                        continue;
                    }
                    Step::Stop => break,
                },
            };
            // Reading subscription messages costs a system call: do it at most every
            // SUB_CHECK while subscribers are known to be there (a subscriber that left
            // within that time may miss what is published meanwhile).
            if !self.subs.any() || checked.elapsed() >= SUB_CHECK {
                self.read_subscriptions();
                checked = Instant::now();
            }
            if hold && !self.subs.any() {
                match self.wait_for_subscriber(delivery) {
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
            self.serve_holds(false);
            self.deliver(delivery);
        }
        // What split lines are still held is published as far as it got.
        if hold && !self.subs.any() {
            self.finish_lines_unpublished();
        } else {
            self.finish_lines(None);
        }
        self.finish_holds();
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
                // Held tenants are tried again at least every TICK_MS while idle.
                let park = if self.tenant_hold.as_ref().is_some_and(|h| !h.is_empty()) {
                    Duration::from_millis(TICK_MS as u64)
                } else {
                    PARK
                };
                Some(deadline.map_or(park, |d| d.min(park)))
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
                    let actual = super::bound_endpoint(&self.socket, endpoint);
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
    fn wait_for_subscriber(&mut self, delivery: Delivery) -> Waited {
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
                self.read_subscriptions();
            }
            if self.subs.any() {
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
                self.publish(events, std::slice::from_ref(&mark));
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
                self.publish(events, &marks);
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

    /// Publishes a batch, or holds its events per tenant when per-tenant holds are on.
    /// `marks` keep the batch's requests buffered: held events keep clones of them.
    fn publish(&mut self, mut batch: RoutedEvents, marks: &[Mark]) {
        if self.limiter.is_some() {
            self.apply_rate_limit(&mut batch);
        }
        if self.tenant_hold.is_some() {
            self.publish_per_tenant(batch, marks);
            return;
        }
        let sent = if self.encoder.format() == Format::Null {
            &self.counters.events_discarded
        } else {
            &self.counters.events_published
        };
        let block = self.slow_subscriber == SlowSubscriber::Block;
        let mut sink = ZmqSink::new(&self.socket, &mut self.outlet, block, Stall::Never);
        match self.encoder.encode_batch(&batch, &mut sink) {
            Ok(n) => {
                sent.fetch_add(n, Ordering::Relaxed);
                count_tenants(&self.encoder, &batch, &self.tenants);
                self.count_unpublishable();
            }
            Err(e) => {
                self.counters
                    .events_dropped
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, events = batch.events.len(), "ZeroMQ send failed; batch dropped");
            }
        }
    }

    /// Counts what the encoder could not publish in its format as dropped; returns
    /// how many that was.
    fn count_unpublishable(&mut self) -> u64 {
        let n = self.encoder.take_unpublishable();
        if n > 0 {
            self.counters
                .events_dropped_rainbond_service_id
                .fetch_add(n, Ordering::Relaxed);
        }
        n
    }

    /// Publishes each tenant's run of the batch, or holds it: all of it when the tenant
    /// already has events held or no subscription covers it, the rest of it from the
    /// event its subscribers had no room for.
    fn publish_per_tenant(&mut self, batch: RoutedEvents, marks: &[Mark]) {
        let batch = if self.encoder.format() == Format::Batch {
            grouped_by_tenant(&self.encoder, batch)
        } else {
            batch
        };
        let mut tenant = std::mem::take(&mut self.tenant_buf);
        let now = Instant::now();
        let mut held = false;
        let mut start = 0;
        while start < batch.events.len() {
            tenant.clear();
            tenant.extend_from_slice(self.encoder.tenant_of(&batch, &batch.events[start]));
            let mut end = start + 1;
            while end < batch.events.len()
                && crate::route::same_bytes(
                    self.encoder.tenant_of(&batch, &batch.events[end]),
                    &tenant,
                )
            {
                end += 1;
            }
            let waiting = self.tenant_hold.as_ref().is_some_and(|h| h.holds(&tenant))
                || !self.subs.covers(&tenant);
            let sent = if waiting {
                0
            } else {
                self.send_events(&batch, start..end, &tenant)
            };
            if start + sent < end {
                let rest = batch.with_events(batch.events[start + sent..end].to_vec());
                if let Some(hold) = self.tenant_hold.as_mut() {
                    hold.push(&tenant, rest, marks.to_vec(), now);
                    held = true;
                }
            }
            start = end;
        }
        self.tenant_buf = tenant;
        if held {
            self.hold_gauges();
        }
    }

    /// Sends the events of `range` (all of `tenant`) until its subscribers have no
    /// room; returns how many are done with: sent, or dropped on a ZeroMQ error
    /// (counted). The rest is for the tenant's hold.
    fn send_events(&mut self, batch: &RoutedEvents, range: Range<usize>, tenant: &[u8]) -> usize {
        let block = self.slow_subscriber == SlowSubscriber::Block;
        let mut sink = ZmqSink::new(&self.socket, &mut self.outlet, block, Stall::Always);
        let total = range.len();
        let (sent, failed) = if self.encoder.format() == Format::Batch {
            // A batch message holds many events: only its first message may find the
            // subscribers full; once one went in, the rest wait for room as before.
            sink.stall = Stall::FirstMessage;
            let part;
            let events = if total == batch.events.len() {
                batch
            } else {
                part = batch.with_events(batch.events[range].to_vec());
                &part
            };
            match self.encoder.encode_batch(events, &mut sink) {
                Ok(_) => (total, None),
                Err(SinkError::Stalled) => (0, None),
                Err(SinkError::Zmq(e)) => (0, Some(e)),
            }
        } else {
            let mut sent = 0;
            let mut failed = None;
            for ev in &batch.events[range] {
                match self.encoder.encode_event(batch, ev, &mut sink) {
                    Ok(()) => sent += 1,
                    Err(SinkError::Stalled) => break,
                    Err(SinkError::Zmq(e)) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            (sent, failed)
        };
        // Events the format could not publish are done with, but not published.
        let published = sent as u64 - self.count_unpublishable();
        if published > 0 {
            self.counters
                .events_published
                .fetch_add(published, Ordering::Relaxed);
            self.tenants.add_runs([(tenant, published)]);
        }
        match failed {
            None => sent,
            Some(e) => {
                let lost = total - sent;
                self.counters
                    .events_dropped
                    .fetch_add(lost as u64, Ordering::Relaxed);
                tracing::error!(error = %e, events = lost, "ZeroMQ send failed; events dropped");
                total
            }
        }
    }

    /// Sends what held tenants have waiting, for those a subscription covers again and
    /// whose subscribers have room, and drops what waited past `output.tenant_hold_ms`
    /// with nobody subscribed. At most every [`HOLD_RETRY`] unless `force`.
    fn serve_holds(&mut self, force: bool) {
        if self.tenant_hold.as_ref().is_none_or(|h| h.is_empty())
            || (!force && self.hold_tried.elapsed() < HOLD_RETRY)
        {
            return;
        }
        let tenants = self
            .tenant_hold
            .as_ref()
            .map(TenantHold::tenants)
            .unwrap_or_default();
        self.read_subscriptions();
        let now = Instant::now();
        self.hold_tried = now;
        for tenant in tenants {
            if !self.subs.covers(&tenant) {
                continue;
            }
            while let Some((piece, held)) = self.tenant_hold.as_mut().and_then(|h| h.pop(&tenant)) {
                let n = piece.len();
                let sent = self.send_events(&piece.events, 0..n, &tenant);
                if sent < n {
                    let rest = piece
                        .events
                        .with_events(piece.events.events[sent..].to_vec());
                    if let Some(hold) = self.tenant_hold.as_mut() {
                        hold.put_back(&tenant, rest, piece.marks, held);
                    }
                    break;
                }
                for mark in piece.marks {
                    self.outlet.release(mark);
                }
            }
        }
        self.expire_holds(now);
        self.hold_gauges();
    }

    /// Drops the held events of tenants nobody has been subscribed to for
    /// `output.tenant_hold_ms`, counted, one log line per tenant.
    fn expire_holds(&mut self, now: Instant) {
        let Some(hold) = self.tenant_hold.as_mut() else {
            return;
        };
        let subs = &mut self.subs;
        let gone = hold.expired(now, &mut |t| subs.covers(t));
        self.drop_held(
            gone,
            Some("no subscription for this tenant within output.tenant_hold_ms: its held events are dropped"),
        );
    }

    /// Past `output.tenant_hold_bytes`: drops the oldest held events of tenants no
    /// subscription covers until the holds are below it, counted, one log line per
    /// tenant (at most one a minute when it goes on).
    fn shed_holds(&mut self) {
        self.read_subscriptions();
        let Some(hold) = self.tenant_hold.as_mut() else {
            return;
        };
        let subs = &mut self.subs;
        let gone = hold.shed(&mut |t| subs.covers(t));
        if gone.is_empty() {
            return;
        }
        let warn = self
            .hold_shed_warned
            .is_none_or(|at| at.elapsed() >= HOLD_FULL_WARNING);
        if warn {
            self.hold_shed_warned = Some(Instant::now());
        }
        let why = "tenant holds are full (output.tenant_hold_bytes): the oldest held events of tenants nobody subscribes to are dropped";
        self.drop_held(gone, warn.then_some(why));
        self.hold_gauges();
    }

    /// Lets go of held pieces, counted as `no_subscriber`; logs `why`, if given, once
    /// per tenant.
    fn drop_held(&mut self, gone: Vec<(Box<[u8]>, super::hold::Piece)>, why: Option<&str>) {
        let mut per_tenant: Vec<(Box<[u8]>, u64)> = Vec::new();
        for (tenant, piece) in gone {
            let n = piece.len() as u64;
            match per_tenant.last_mut() {
                Some((t, c)) if *t == tenant => *c += n,
                _ => per_tenant.push((tenant, n)),
            }
            for mark in piece.marks {
                self.outlet.discard(mark);
            }
        }
        for (tenant, n) in per_tenant {
            self.counters
                .events_dropped_no_subscriber
                .fetch_add(n, Ordering::Relaxed);
            if let Some(why) = why {
                tracing::warn!(tenant = %String::from_utf8_lossy(&tenant), events = n, "{why}");
            }
        }
    }

    /// Past the holds' byte bound: takes nothing new from the buffer until held events
    /// go out or expire (or intake closes). Meanwhile `drop_oldest` still makes room.
    fn wait_for_hold_room(&mut self) {
        // Once a minute at most: holds that hover at their bound fill again and again.
        if self
            .hold_full_warned
            .is_none_or(|at| at.elapsed() >= HOLD_FULL_WARNING)
        {
            self.hold_full_warned = Some(Instant::now());
            tracing::warn!("tenant holds are full (output.tenant_hold_bytes) of events for full subscribers: publishing nothing new until some go out");
        }
        loop {
            self.outlet.maintain();
            self.dialer.apply(&self.socket);
            self.take_reload();
            while self.outlet.must_drop() {
                let Next::Delivery(oldest) = self.outlet.next(None) else {
                    break;
                };
                self.outlet.drop_oldest(oldest);
            }
            if self.socket.poll(zmq::POLLIN, TICK_MS).unwrap_or(0) > 0 {
                self.read_subscriptions();
            }
            self.serve_holds(true);
            // A collector that left meanwhile makes its tenants' events sheddable.
            if self.tenant_hold.as_ref().is_some_and(TenantHold::is_full) {
                self.shed_holds();
            }
            let full = self.tenant_hold.as_ref().is_some_and(TenantHold::is_full);
            if !full || self.outlet.intake_closed() {
                return;
            }
        }
    }

    /// At the end: what tenants still have held. Without a spool it gets up to the
    /// linger time to go out, and what is left is dropped, counted; with one, it stays
    /// in the spool for the next start.
    fn finish_holds(&mut self) {
        let durable = self.outlet.is_durable();
        let until = Instant::now() + if durable { Duration::ZERO } else { self.linger };
        while self.tenant_hold.as_ref().is_some_and(|h| !h.is_empty()) && Instant::now() < until {
            if self.socket.poll(zmq::POLLIN, TICK_MS).unwrap_or(0) > 0 {
                self.read_subscriptions();
            }
            self.serve_holds(true);
        }
        let Some(hold) = self.tenant_hold.as_mut() else {
            return;
        };
        let left = hold.take_all();
        if left.is_empty() {
            return;
        }
        let tenants = left.len();
        let events: u64 = left.iter().map(|(_, p)| p.len() as u64).sum();
        if durable {
            // Marks let go without release keep their requests in the spool.
            drop(left);
            tracing::warn!(
                events,
                tenants,
                "shutting down: held events stay in the spool for the next start"
            );
        } else {
            for (_, piece) in left {
                for mark in piece.marks {
                    self.outlet.discard(mark);
                }
            }
            self.counters
                .events_dropped_no_subscriber
                .fetch_add(events, Ordering::Relaxed);
            tracing::warn!(
                events,
                "shutting down: held events of tenants nobody is subscribed to are dropped"
            );
        }
        self.hold_gauges();
    }

    /// Reads the subscription messages that came, and counts the topics subscribed.
    fn read_subscriptions(&mut self) {
        if self.subs.update(&self.socket) {
            self.counters
                .zmq_subscriptions
                .store(self.subs.topic_count() as u64, Ordering::Relaxed);
        }
    }

    /// Updates the holds' gauges.
    fn hold_gauges(&self) {
        let Some(hold) = &self.tenant_hold else {
            return;
        };
        let (bytes, events, tenants) = hold.totals();
        let c = &self.counters;
        c.tenant_hold_bytes.store(bytes as u64, Ordering::Relaxed);
        c.tenant_hold_events.store(events as u64, Ordering::Relaxed);
        c.tenant_hold_tenants
            .store(tenants as u64, Ordering::Relaxed);
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

/// The batch with each tenant's events together, tenants in the order they first
/// appear, events in their order within a tenant: the `batch` format sends one message
/// per tenant and service of a request, and the runs of one tenant are what is sent or
/// held as one. A batch of one tenant (the usual case) is returned as it is.
fn grouped_by_tenant(encoder: &Encoder, batch: RoutedEvents) -> RoutedEvents {
    let mut firsts: Vec<&[u8]> = Vec::new();
    let mut ranks = Vec::with_capacity(batch.events.len());
    let mut index: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for ev in &batch.events {
        let tenant = encoder.tenant_of(&batch, ev);
        let rank = match firsts.last() {
            Some(last) if crate::route::same_bytes(last, tenant) => firsts.len() - 1,
            _ => *index.entry(tenant).or_insert_with(|| {
                firsts.push(tenant);
                firsts.len() - 1
            }),
        };
        ranks.push(rank);
    }
    if firsts.len() <= 1 || ranks.windows(2).all(|w| w[0] <= w[1]) {
        return batch;
    }
    let mut order: Vec<usize> = (0..batch.events.len()).collect();
    order.sort_by_key(|&i| ranks[i]);
    let events = order.iter().map(|&i| batch.events[i]).collect();
    batch.with_events(events)
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
/// EAGAIN: under [`Stall`] the sink reports that, so the message's tenant is held;
/// otherwise it waits for room and sends it again. (libzmq checks the high-water mark
/// per frame, but counts only whole messages, so once the first frame of a message is
/// in, the rest go in too.)
struct ZmqSink<'a> {
    socket: &'a zmq::Socket,
    block: bool,
    /// True between the first and the last frame of a message.
    in_message: bool,
    outlet: &'a mut Outlet,
    stall: Stall,
    /// Messages sent whole.
    messages: usize,
}

/// When a full subscriber stops the sink rather than making it wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stall {
    Never,
    /// Only at the first message (a batch message of many events: what follows it in
    /// the same batch waits for room).
    FirstMessage,
    Always,
}

/// Why the sink did not take a frame.
#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error(transparent)]
    Zmq(#[from] zmq::Error),
    /// The message's subscribers are full; nothing of the message was sent.
    #[error("subscribers full")]
    Stalled,
}

impl<'a> ZmqSink<'a> {
    fn new(socket: &'a zmq::Socket, outlet: &'a mut Outlet, block: bool, stall: Stall) -> Self {
        ZmqSink {
            socket,
            block,
            in_message: false,
            outlet,
            stall,
            messages: 0,
        }
    }

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

    fn may_stall(&self) -> bool {
        match self.stall {
            Stall::Never => false,
            Stall::FirstMessage => self.messages == 0,
            Stall::Always => true,
        }
    }
}

impl Sink for ZmqSink<'_> {
    type Error = SinkError;

    fn frame(&mut self, bytes: &[u8], more: bool) -> Result<(), SinkError> {
        let flags = if more { zmq::SNDMORE } else { 0 };
        if !self.block || self.in_message {
            self.in_message = more;
            self.socket.send(bytes, flags)?;
            if !more {
                self.messages += 1;
            }
            return Ok(());
        }
        loop {
            match self.socket.send(bytes, flags | zmq::DONTWAIT) {
                Err(zmq::Error::EAGAIN) if self.may_stall() => return Err(SinkError::Stalled),
                Err(zmq::Error::EAGAIN) => self.wait_for_room(),
                Err(e) => {
                    self.in_message = false;
                    return Err(e.into());
                }
                Ok(()) => {
                    self.in_message = more;
                    if !more {
                        self.messages += 1;
                    }
                    return Ok(());
                }
            }
        }
    }

    fn last_frame_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), SinkError> {
        let mut msg = zmq::Message::with_size(len);
        fill(&mut msg);
        self.in_message = false;
        self.socket.send(msg, 0)?;
        self.messages += 1;
        Ok(())
    }
}
