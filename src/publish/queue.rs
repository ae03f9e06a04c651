//! The queue between connection tasks and the publisher thread, bounded in requests and
//! in bytes. A full queue either holds the connection back (the default: it stops
//! reading, so TCP flow control holds the client) or drops requests by policy, counted.

use super::Batch;
use crate::config::WhenFull;
use crate::metrics::Counters;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// The sending side, cloned into every connection task.
#[derive(Clone)]
pub struct Queue {
    pub(super) sender: mpsc::Sender<Batch>,
    pub(super) bytes: Arc<Semaphore>,
    pub(super) max_bytes: usize,
    pub(super) when_full: WhenFull,
    /// Under `drop_oldest`: senders waiting for room, and the most bytes one of them
    /// needs. A stalled publisher drops the oldest requests while someone waits and
    /// the queue is actually full (no slot, or fewer free bytes than needed).
    pub(super) pressure: Arc<Pressure>,
    pub(super) counters: Arc<Counters>,
}

/// How often a connection waiting under `drop_oldest` looks for room again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(20);

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

/// The publisher has stopped; the batch was not accepted.
#[derive(Debug, Error)]
#[error("publisher stopped")]
pub struct QueueClosed;

impl Queue {
    /// Hands the batch to the publisher, waiting for room as the policy says. Once this
    /// returns `Ok`, the request may be acked: the batch is queued, or was dropped by
    /// the configured drop policy (and counted).
    pub async fn send(&self, mut batch: Batch) -> Result<(), QueueClosed> {
        // A batch larger than the whole budget takes all of it rather than never fitting.
        let cost = batch.data.len().clamp(1, self.max_bytes);
        let permits = u32::try_from(cost).unwrap_or(u32::MAX);
        match self.when_full {
            WhenFull::Block => {
                batch.permit = Some(self.acquire(permits).await?);
                self.enqueue(batch, cost).await
            }
            WhenFull::DropOldest => {
                let p = &self.pressure;
                p.waiting.fetch_add(1, Ordering::SeqCst);
                p.needed_bytes.fetch_max(cost as u64, Ordering::SeqCst);
                let sent = async {
                    batch.permit = Some(loop {
                        // One drop may free too few bytes: ask for another meanwhile.
                        match tokio::time::timeout(RETRY, self.acquire(permits)).await {
                            Ok(permit) => break permit?,
                            Err(_) => p.take_grant(),
                        }
                    });
                    self.count_in(cost);
                    let mut batch = batch;
                    loop {
                        match self.sender.try_send(batch) {
                            Ok(()) => return Ok(()),
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                self.count_out(cost);
                                return Err(QueueClosed);
                            }
                            Err(mpsc::error::TrySendError::Full(b)) => {
                                batch = b;
                                tokio::time::sleep(RETRY).await;
                                p.take_grant();
                            }
                        }
                    }
                }
                .await;
                p.take_grant();
                if p.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
                    p.needed_bytes.store(0, Ordering::SeqCst);
                }
                sent
            }
            WhenFull::DropNewest => {
                match self.bytes.clone().try_acquire_many_owned(permits) {
                    Ok(p) => batch.permit = Some(p),
                    Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueClosed),
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        self.drop_full(batch);
                        return Ok(());
                    }
                }
                self.count_in(cost);
                match self.sender.try_send(batch) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(batch)) => {
                        self.count_out(cost);
                        self.drop_full(batch);
                        Ok(())
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.count_out(cost);
                        Err(QueueClosed)
                    }
                }
            }
        }
    }

    async fn acquire(&self, permits: u32) -> Result<OwnedSemaphorePermit, QueueClosed> {
        self.bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| QueueClosed)
    }

    /// Sends, waiting for a slot. The gauges count the batch in before the send: the
    /// publisher may take it (and count it out) before `send` returns here.
    async fn enqueue(&self, batch: Batch, cost: usize) -> Result<(), QueueClosed> {
        self.count_in(cost);
        self.sender.send(batch).await.map_err(|_| {
            self.count_out(cost);
            QueueClosed
        })
    }

    fn count_in(&self, cost: usize) {
        self.counters.queue_requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .queue_bytes
            .fetch_add(cost as u64, Ordering::Relaxed);
    }

    fn count_out(&self, cost: usize) {
        Counters::decrease(&self.counters.queue_requests, 1);
        Counters::decrease(&self.counters.queue_bytes, cost as u64);
    }

    fn drop_full(&self, mut batch: Batch) {
        let n = batch.events.len() as u64;
        for ticket in batch.spooled.drain(..) {
            ticket.done();
        }
        let before = self
            .counters
            .requests_dropped_queue_full
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .events_dropped_queue_full
            .fetch_add(n, Ordering::Relaxed);
        // One line per thousand dropped requests: the counters carry the rest.
        if before % 1000 == 0 {
            tracing::warn!(peer = %batch.peer, dropped_requests = before + 1, "publisher queue full: dropping new requests (when_full = drop_newest)");
        }
    }
}
