//! The memory queue between intake and the publisher, bounded in requests
//! (`output.queue_requests`) and in bytes of memory really held (`output.queue_bytes`,
//! counted with [`RoutedEvents::memory_cost`]).
//!
//! Without a spool, a full queue holds the connection back (`when_full = "block"`: it
//! stops reading, TCP flow control holds the client) or drops by policy, counted. With
//! a spool, intake never waits for this queue: what does not fit stays on disk only and
//! the publisher reads it back from there.

use crate::config::WhenFull;
use crate::event::RoutedEvents;
use crate::metrics::Counters;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Events on their way to the publisher, with the budget they hold.
pub struct Held {
    pub events: RoutedEvents,
    pub received_ns: u64,
    /// The spool position after the request's record, when it is spooled.
    pub pos: Option<u64>,
    /// The bytes it holds of `queue_bytes`, given back once it is published.
    pub bytes: OwnedSemaphorePermit,
    /// Its place among `queue_requests`, given back once the publisher takes it.
    pub slot: Option<OwnedSemaphorePermit>,
}

/// What the queue carries, in order.
pub enum Item {
    Held(Held),
    /// From here on the publisher reads the spool (the reader knows from where).
    Spilled,
    /// A client connection ended (the publisher finishes its split lines).
    Ended(u64),
}

/// The sending side, for intake (and the spool writer). The queue ends when every
/// sender is gone.
#[derive(Clone)]
pub struct Memory {
    tx: mpsc::Sender<Item>,
    pub budget: Budget,
}

/// The queue's bounds, shared by its senders, the spool's reader and the publisher.
#[derive(Clone)]
pub struct Budget {
    pub bytes: Arc<Semaphore>,
    pub max_bytes: usize,
    pub slots: Arc<Semaphore>,
    /// Under `drop_oldest`: connections waiting for room, and what they need.
    pub pressure: Arc<Pressure>,
    pub counters: Arc<Counters>,
}

/// The queue is gone: the publisher stopped.
#[derive(Debug)]
pub struct Closed;

/// How often a connection waiting under `drop_oldest` looks for room again.
const RETRY: Duration = Duration::from_millis(20);

/// What connections waiting under `drop_oldest` need. The publisher drops one queued
/// request per waiting connection (a grant); a connection that got its room, or still
/// found none, takes its grant back, so no more is dropped than is needed.
#[derive(Debug, Default)]
pub struct Pressure {
    pub waiting: AtomicU64,
    pub granted: AtomicU64,
    pub needed_bytes: AtomicU64,
}

impl Pressure {
    /// True when a connection waits for room that no drop has been granted for yet.
    pub fn wants_drop(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > self.granted.load(Ordering::SeqCst)
    }

    pub fn grant(&self) {
        self.granted.fetch_add(1, Ordering::SeqCst);
    }

    fn take_grant(&self) {
        let _ = self
            .granted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |g| g.checked_sub(1));
    }
}

/// How a request was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Held for the publisher (in memory or in the spool).
    Kept,
    /// Dropped by the `drop_newest` policy, counted: it may be acked.
    Dropped,
}

impl Memory {
    pub fn new(
        queue_requests: usize,
        queue_bytes: usize,
        counters: Arc<Counters>,
    ) -> (Memory, mpsc::Receiver<Item>) {
        let (tx, rx) = mpsc::channel();
        let max_bytes = queue_bytes.min(u32::MAX as usize);
        let budget = Budget {
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
            slots: Arc::new(Semaphore::new(queue_requests)),
            pressure: Arc::new(Pressure::default()),
            counters,
        };
        (Memory { tx, budget }, rx)
    }

    /// Queues `events` if there is room now; false (and the events dropped) if not,
    /// or if the publisher is gone.
    pub fn try_push(&self, events: RoutedEvents, received_ns: u64, pos: Option<u64>) -> bool {
        let Ok((bytes, slot)) = self.budget.try_acquire(self.budget.cost(&events)) else {
            return false;
        };
        self.send(Held {
            events,
            received_ns,
            pos,
            bytes,
            slot: Some(slot),
        })
        .is_ok()
    }

    /// Sends a marker (no budget: markers are few and small).
    pub fn mark(&self, item: Item) {
        let _ = self.tx.send(item);
    }

    /// Sends, counted in the queue gauges first: the publisher may take it (and count
    /// it out) before `send` returns.
    fn send(&self, held: Held) -> Result<(), Closed> {
        let cost = held.bytes.num_permits() as u64;
        self.budget.count_in(cost);
        self.tx.send(Item::Held(held)).map_err(|_| {
            self.budget.count_out(cost);
            Closed
        })
    }

    /// Queues `events` as `when_full` says (no spool). `Ok` means the request may be
    /// acked: queued, or dropped by policy and counted.
    pub async fn push(
        &self,
        events: RoutedEvents,
        received_ns: u64,
        when_full: WhenFull,
    ) -> Result<Accepted, Closed> {
        let cost = self.budget.cost(&events);
        let (bytes, slot) = match when_full {
            WhenFull::Block => self.budget.acquire(cost).await.map_err(|_| Closed)?,
            WhenFull::DropNewest => match self.budget.try_acquire(cost) {
                Ok(permits) => permits,
                Err(TryAcquireError::Closed) => return Err(Closed),
                Err(TryAcquireError::NoPermits) => {
                    self.drop_newest(&events);
                    return Ok(Accepted::Dropped);
                }
            },
            WhenFull::DropOldest => self.wait_dropping_oldest(cost).await?,
        };
        self.send(Held {
            events,
            received_ns,
            pos: None,
            bytes,
            slot: Some(slot),
        })
        .map(|()| Accepted::Kept)
    }

    /// Waits for room while the publisher drops the oldest queued requests for it.
    async fn wait_dropping_oldest(&self, cost: u32) -> Result<Permits, Closed> {
        let p = &self.budget.pressure;
        p.waiting.fetch_add(1, Ordering::SeqCst);
        p.needed_bytes.fetch_max(u64::from(cost), Ordering::SeqCst);
        let got = async {
            // One drop may free too few bytes, or no slot: ask for another meanwhile.
            let bytes = loop {
                match tokio::time::timeout(
                    RETRY,
                    self.budget.bytes.clone().acquire_many_owned(cost),
                )
                .await
                {
                    Ok(permit) => break permit.map_err(|_| Closed)?,
                    Err(_) => p.take_grant(),
                }
            };
            let slot = loop {
                match tokio::time::timeout(RETRY, self.budget.slots.clone().acquire_owned()).await {
                    Ok(permit) => break permit.map_err(|_| Closed)?,
                    Err(_) => p.take_grant(),
                }
            };
            Ok((bytes, slot))
        }
        .await;
        p.take_grant();
        if p.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            p.needed_bytes.store(0, Ordering::SeqCst);
        }
        got
    }

    fn drop_newest(&self, events: &RoutedEvents) {
        let c = &self.budget.counters;
        let dropped = count_drop(
            &c.requests_dropped_queue_full,
            &c.events_dropped_queue_full,
            events,
        );
        if let Some(dropped) = dropped {
            tracing::warn!(peer = %events.peer, dropped_requests = dropped, "publisher queue full: dropping new requests (when_full = drop_newest)");
        }
    }
}

/// A request's share of the budget: its bytes and its place among the requests.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl Budget {
    /// Waits for `cost` bytes and a place; fails once the budget is closed.
    pub async fn acquire(&self, cost: u32) -> Result<Permits, AcquireError> {
        let bytes = self.bytes.clone().acquire_many_owned(cost).await?;
        let slot = self.slots.clone().acquire_owned().await?;
        Ok((bytes, slot))
    }

    /// `cost` bytes and a place, if there are both now.
    pub fn try_acquire(&self, cost: u32) -> Result<Permits, TryAcquireError> {
        let bytes = self.bytes.clone().try_acquire_many_owned(cost)?;
        let slot = self.slots.clone().try_acquire_owned()?;
        Ok((bytes, slot))
    }

    /// The permits `events` needs: its memory cost, the whole budget at most (a request
    /// larger than the whole budget takes all of it rather than never fitting).
    pub fn cost(&self, events: &RoutedEvents) -> u32 {
        let cost = events.memory_cost().clamp(1, self.max_bytes);
        u32::try_from(cost).unwrap_or(u32::MAX)
    }

    pub fn count_in(&self, cost: u64) {
        self.counters.queue_requests.fetch_add(1, Ordering::Relaxed);
        self.counters.queue_bytes.fetch_add(cost, Ordering::Relaxed);
    }

    pub fn count_out(&self, cost: u64) {
        Counters::decrease(&self.counters.queue_requests, 1);
        Counters::decrease(&self.counters.queue_bytes, cost);
    }

    /// Under `drop_oldest`, true while a connection waits and the queue is really full:
    /// no free slot, or fewer free bytes than the waiting request needs. Dropping a
    /// request returns its bytes at once, so this turns false as soon as there is
    /// room: no more is dropped than needed.
    pub fn must_drop(&self) -> bool {
        let p = &self.pressure;
        p.wants_drop()
            && (self.slots.available_permits() == 0
                || (self.bytes.available_permits() as u64) < p.needed_bytes.load(Ordering::SeqCst))
    }

    /// Stops every wait for room: the publisher is gone.
    pub fn close(&self) {
        self.bytes.close();
        self.slots.close();
    }
}

/// Counts a request dropped by a `when_full` policy and its events. Returns the requests
/// dropped so far for the first and every thousandth: one log line for those, the
/// counters carry the rest.
pub fn count_drop(requests: &AtomicU64, events: &AtomicU64, dropped: &RoutedEvents) -> Option<u64> {
    let before = requests.fetch_add(1, Ordering::Relaxed);
    events.fetch_add(dropped.events.len() as u64, Ordering::Relaxed);
    (before % 1000 == 0).then_some(before + 1)
}
