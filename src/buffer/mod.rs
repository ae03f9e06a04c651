//! The buffer between intake and the publisher: a memory queue in front, the disk spool
//! behind it, and the bookkeeping that ties a published request to its spool record.
//!
//! ```text
//!  connections ──submit──▶ Intake ──(no spool)──────────────▶ memory queue ──▶ Outlet ──▶ publisher
//!                            │                                    ▲   ▲
//!                            └──(spool)──▶ writer thread ─────────┘   │ (while spilled)
//!                                          appends, syncs, then       │
//!                                          fills memory while there   │
//!                                          is room ──▶ segments ──▶ reader thread
//! ```
//!
//! Without a spool, the memory queue is all there is: bounded in requests and bytes, a
//! full queue holds intake back or drops by `output.when_full`.
//!
//! With a spool, every request is on disk before it is acked. Its events also go to
//! the memory queue while that has room; when it has none, the buffer *spills*: from
//! that request on, the publisher reads the spool back (the reader thread) until it has
//! caught up with what is written, then the memory queue goes on. So memory stays
//! within `queue_bytes` whatever the backlog, intake keeps acking until the spool
//! reaches `spool.max_bytes`, and the publisher sees one order: the spool's. A restart
//! starts spilled, from the checkpoint, while the listeners already accept: new
//! requests queue behind the replay.
//!
//! The publisher reports each request published (or dropped) through its [`Mark`]; the
//! ledger turns that into the checkpoint, and published segments are deleted.

pub mod disk;
mod ledger;
pub mod memory;
pub mod spool;

use crate::config::{SpoolConfig, WhenFull};
use crate::event::RoutedEvents;
use crate::metrics::Counters;
use bytes::Bytes;
pub use disk::Expand;
use disk::{DiskItem, DiskReader};
use ledger::Ledger;
pub use memory::Accepted;
use memory::{count_drop, Budget, Held, Item, Memory};
use spool::writer::{Append, Pending, Writer};
use spool::{Spool, SpoolError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

#[derive(Debug, Error)]
pub enum BufferError {
    #[error("publisher stopped")]
    Closed,
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot start the spool {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// How the buffer is set up.
pub struct Settings {
    pub queue_requests: usize,
    pub queue_bytes: usize,
    pub when_full: WhenFull,
    /// The spool, when `spool.dir` is set.
    pub spool: Option<(SpoolConfig, spool::Settings)>,
}

/// What a connection hands over: the routed events of requests read together, and the
/// requests' bytes (kept in the spool, when there is one).
pub struct Submission {
    pub events: RoutedEvents,
    pub frames: Vec<Bytes>,
    /// When the requests' last byte arrived, in nanoseconds since the Unix epoch.
    pub received_ns: u64,
}

/// The intake side, cloned into every connection.
#[derive(Clone)]
pub struct Intake {
    inner: Arc<IntakeInner>,
}

struct IntakeInner {
    memory: Memory,
    spool: Option<(Arc<Spool>, mpsc::Sender<Append>)>,
    when_full: WhenFull,
    /// Set when the last intake handle is gone (the writer sets it in spool mode, once
    /// it has written everything).
    closed: Arc<AtomicBool>,
}

impl Drop for IntakeInner {
    fn drop(&mut self) {
        if self.spool.is_none() {
            self.closed.store(true, Ordering::SeqCst);
        }
    }
}

/// A submission's outcome, to await after the next submissions have been made (so the
/// order of submissions is the order of requests, and the waits overlap).
pub enum Receipt {
    Ready(Accepted),
    Writing(oneshot::Receiver<Result<(), SpoolError>>),
}

impl Receipt {
    /// `Ok` once the requests may be acked: held (on disk when there is a spool), or
    /// dropped by policy and counted.
    pub async fn accepted(self) -> Result<Accepted, BufferError> {
        match self {
            Receipt::Ready(a) => Ok(a),
            Receipt::Writing(rx) => match rx.await {
                Ok(Ok(())) => Ok(Accepted::Kept),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(SpoolError::Stopped.into()),
            },
        }
    }
}

impl Intake {
    /// Hands requests over. Submissions are ordered: this returns once the requests
    /// have their place (waiting meanwhile for room when the buffer is full under
    /// `when_full = "block"`); the receipt then says when they may be acked.
    pub async fn submit(&self, s: Submission) -> Result<Receipt, BufferError> {
        let inner = &*self.inner;
        let Some((spool, writer)) = &inner.spool else {
            let accepted = inner
                .memory
                .push(s.events, s.received_ns, inner.when_full)
                .await
                .map_err(|_| BufferError::Closed)?;
            return Ok(Receipt::Ready(accepted));
        };
        let from = spool::record::Sender {
            peer: &s.events.peer,
            host: s.events.peer_host.as_deref(),
        };
        let len = spool::record::encoded_len(from, &s.frames) as u64;
        match inner.when_full {
            WhenFull::Block | WhenFull::DropOldest => spool.space.reserve(len).await,
            WhenFull::DropNewest => {
                if !spool.space.try_reserve(len) {
                    count_spool_full(&spool.counters, &s.events);
                    return Ok(Receipt::Ready(Accepted::Dropped));
                }
            }
        }
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            received_ns: s.received_ns,
            frames: s.frames,
            len,
            events: s.events,
            reply,
        };
        if writer.send(Append::Record(Box::new(pending))).is_err() {
            spool.space.release(len);
            return Err(SpoolError::Stopped.into());
        }
        Ok(Receipt::Writing(rx))
    }

    /// A client connection ended: the publisher finishes the split lines it holds for
    /// it (they were waiting for pieces that will not come).
    pub fn connection_ended(&self, connection: u64) {
        match &self.inner.spool {
            None => self.inner.memory.mark(Item::Ended(connection)),
            Some((_, writer)) => {
                let _ = writer.send(Append::Ended(connection));
            }
        }
    }

    /// What `/readyz` asks of the buffer.
    pub fn health(&self) -> Health {
        Health(self.inner.spool.as_ref().map(|(s, _)| s.clone()))
    }

    /// True when a spool keeps the requests' bytes (so submissions need their frames).
    pub fn keeps_frames(&self) -> bool {
        self.inner.spool.is_some()
    }
}

/// The buffer's state as `/readyz` reports it. (It holds the spool, not the intake,
/// so it does not keep intake open.)
#[derive(Clone)]
pub struct Health(Option<Arc<Spool>>);

impl Health {
    /// Shutdown: stops reading the spool back; what is left stays for the next start
    /// (the publisher then finishes with what it has taken).
    pub fn stop_reading(&self) {
        if let Some(spool) = &self.0 {
            spool.stop_reader();
        }
    }

    /// Why the gateway cannot take requests now, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        let spool = self.0.as_ref()?;
        if spool.is_failing() {
            Some("spool writes fail")
        } else if spool.space.is_full() {
            Some("spool full (spool.max_bytes)")
        } else {
            None
        }
    }
}

fn count_spool_full(counters: &Counters, events: &RoutedEvents) {
    let dropped = count_drop(
        &counters.requests_dropped_spool_full,
        &counters.events_dropped_spool_full,
        events,
    );
    if let Some(dropped) = dropped {
        tracing::warn!(peer = %events.peer, dropped_requests = dropped, "spool full: dropping new requests (when_full = drop_newest)");
    }
}

/// A request taken from the buffer: its events, and the mark that tells the buffer
/// when it is published.
pub struct Delivery {
    pub events: RoutedEvents,
    pub mark: Mark,
}

/// What holds a taken request in the buffer: its share of the memory budget, and its
/// entry in the ledger (with a spool). Clone it to keep the request until each part of
/// it is published (split lines held for their next piece); hand every clone back with
/// [`Outlet::release`]. A mark dropped without release keeps its record in the spool
/// for the next start.
#[derive(Clone)]
pub struct Mark(Arc<MarkInner>);

struct MarkInner {
    entry: Option<u64>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// What [`Outlet::next`] found.
pub enum Next {
    Delivery(Delivery),
    /// A client connection ended.
    Ended(u64),
    /// Nothing within the wait.
    Empty,
    /// Intake is closed and everything is taken (or, with a spool at shutdown, the
    /// rest stays on disk).
    Closed,
}

/// Where the publisher takes from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Memory,
    Disk,
}

/// The publisher's side.
pub struct Outlet {
    budget: Budget,
    memory_rx: mpsc::Receiver<Item>,
    phase: Phase,
    spooled: Option<Spooled>,
    closed: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

/// The spool's parts on the publisher's side.
struct Spooled {
    spool: Arc<Spool>,
    /// `when_full = "drop_oldest"`: the oldest held requests make room in the spool.
    drop_oldest: bool,
    disk_rx: mpsc::Receiver<DiskItem>,
    ledger: Ledger,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

/// Starts the buffer (opening the spool and its threads when configured).
pub fn start(
    settings: Settings,
    counters: Arc<Counters>,
    expand: Arc<dyn Expand>,
    runtime: tokio::runtime::Handle,
) -> Result<(Intake, Outlet), BufferError> {
    let (memory, memory_rx) = Memory::new(
        settings.queue_requests,
        settings.queue_bytes,
        counters.clone(),
    );
    let closed = Arc::new(AtomicBool::new(false));
    let Some((config, spool_settings)) = settings.spool else {
        let intake = Intake {
            inner: Arc::new(IntakeInner {
                memory: memory.clone(),
                spool: None,
                when_full: settings.when_full,
                closed: closed.clone(),
            }),
        };
        let outlet = Outlet {
            budget: memory.budget.clone(),
            memory_rx,
            phase: Phase::Memory,
            spooled: None,
            closed,
            counters,
        };
        return Ok((intake, outlet));
    };
    let opened = Spool::open(&config, spool_settings, counters.clone())?;
    let spool = opened.spool;
    if let Some(from) = opened.replay_from {
        tracing::info!(dir = %spool.dir.display(), from, bytes = spool.space.used(), "publishing what the spool holds from an earlier run, before new requests");
    }
    let (writer_tx, writer_rx) = mpsc::channel();
    let writer = Writer::new(spool.clone(), opened.file, opened.base, memory.clone());
    let writer_closed = closed.clone();
    let writer = std::thread::Builder::new()
        .name("fwdgate-spool-w".into())
        .spawn(move || {
            writer.run(writer_rx);
            writer_closed.store(true, Ordering::SeqCst);
        })
        .map_err(|e| BufferError::Thread("writer", e))?;
    let (disk_tx, disk_rx) = mpsc::channel();
    let reader = DiskReader {
        spool: spool.clone(),
        budget: memory.budget.clone(),
        tx: disk_tx,
        expand,
        runtime,
    };
    let reader = std::thread::Builder::new()
        .name("fwdgate-spool-r".into())
        .spawn(move || reader.run())
        .map_err(|e| BufferError::Thread("reader", e))?;
    let start = opened.replay_from.unwrap_or(opened.base);
    let budget = memory.budget.clone();
    let intake = Intake {
        inner: Arc::new(IntakeInner {
            memory,
            spool: Some((spool.clone(), writer_tx)),
            when_full: settings.when_full,
            closed: closed.clone(),
        }),
    };
    let outlet = Outlet {
        budget,
        memory_rx,
        // A restart with unpublished records begins with them.
        phase: if opened.replay_from.is_some() {
            Phase::Disk
        } else {
            Phase::Memory
        },
        spooled: Some(Spooled {
            drop_oldest: settings.when_full == WhenFull::DropOldest,
            ledger: Ledger::new(spool.clone(), start),
            spool,
            disk_rx,
            reader: Some(reader),
            writer: Some(writer),
        }),
        closed,
        counters,
    };
    Ok((intake, outlet))
}

impl Outlet {
    /// The next thing to publish, waiting up to `wait` (not at all with `None`).
    pub fn next(&mut self, wait: Option<Duration>) -> Next {
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.phase {
                Phase::Memory => match receive(&self.memory_rx, left) {
                    Ok(Item::Held(held)) => return Next::Delivery(self.deliver(held)),
                    Ok(Item::Spilled) => self.phase = Phase::Disk,
                    Ok(Item::Ended(connection)) => return Next::Ended(connection),
                    Err(false) => return self.empty(),
                    Err(true) => return Next::Closed,
                },
                Phase::Disk => {
                    let Some(s) = self.spooled.as_mut() else {
                        self.phase = Phase::Memory;
                        continue;
                    };
                    match receive(&s.disk_rx, left) {
                        Ok(DiskItem::Held(held)) => return Next::Delivery(self.deliver(held)),
                        Ok(DiskItem::Skip { pos }) => {
                            let id = s.ledger.register(pos);
                            s.ledger.done(id, false);
                        }
                        Ok(DiskItem::CaughtUp) => self.phase = Phase::Memory,
                        Err(false) => return self.empty(),
                        // The reader stopped (shutdown): the rest stays on disk.
                        Err(true) => return Next::Closed,
                    }
                }
            }
        }
    }

    fn empty(&self) -> Next {
        self.counters
            .buffer_head_received_ns
            .store(0, Ordering::Relaxed);
        Next::Empty
    }

    fn deliver(&mut self, mut held: Held) -> Delivery {
        held.slot = None;
        self.budget.count_out(held.bytes.num_permits() as u64);
        // The request taken last is the oldest held, until it is published.
        self.counters
            .buffer_head_received_ns
            .store(held.received_ns, Ordering::Relaxed);
        let entry = match (&mut self.spooled, held.pos) {
            (Some(s), Some(pos)) => Some(s.ledger.register(pos)),
            _ => None,
        };
        Delivery {
            events: held.events,
            mark: Mark(Arc::new(MarkInner {
                entry,
                _bytes: Some(held.bytes),
            })),
        }
    }

    /// The request (or this part of it) is published; once every clone of its mark is
    /// released, it leaves the buffer.
    pub fn release(&mut self, mark: Mark) {
        self.finish(mark, true);
    }

    /// The request (or this part of it) is dropped on purpose, counted by the caller;
    /// once every clone of its mark is handed back, it leaves the buffer.
    pub fn discard(&mut self, mark: Mark) {
        self.finish(mark, false);
    }

    fn finish(&mut self, mark: Mark, published: bool) {
        let Some(inner) = Arc::into_inner(mark.0) else {
            return;
        };
        if let (Some(s), Some(id)) = (&mut self.spooled, inner.entry) {
            s.ledger.done(id, published);
        }
    }

    /// Under `when_full = "drop_oldest"`: true while intake waits for room that
    /// dropping the oldest held requests would make.
    pub fn must_drop(&self) -> bool {
        match &self.spooled {
            None => self.budget.must_drop(),
            Some(s) => s.drop_oldest && s.spool.space.wants_room(),
        }
    }

    /// Drops a taken request under `drop_oldest`, counted.
    pub fn drop_oldest(&mut self, delivery: Delivery) {
        let c = &self.counters;
        let (requests, events) = match self.spooled {
            Some(_) => (&c.requests_dropped_spool_full, &c.events_dropped_spool_full),
            None => (&c.requests_dropped_queue_full, &c.events_dropped_queue_full),
        };
        if let Some(dropped) = count_drop(requests, events, &delivery.events) {
            tracing::warn!(
                dropped_requests = dropped,
                "buffer full: dropping the oldest requests (when_full = drop_oldest)"
            );
        }
        self.finish(delivery.mark, false);
        match &mut self.spooled {
            // The room is made by deleting segments: checkpoint now.
            Some(s) => s.ledger.maintain(true),
            None => self.budget.pressure.grant(),
        }
    }

    /// Checkpoints and deletes published segments when it is time. Call often.
    pub fn maintain(&mut self) {
        if let Some(s) = &mut self.spooled {
            s.ledger.maintain(false);
        }
    }

    /// True once intake is closed (shutdown).
    pub fn intake_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// True when what is not published stays in the spool for the next start.
    pub fn is_durable(&self) -> bool {
        self.spooled.is_some()
    }

    /// Stops reading the spool back (shutdown: the rest stays on disk).
    pub fn stop_reading(&mut self) {
        if let Some(s) = &self.spooled {
            s.spool.stop_reader();
        }
    }

    /// At the end, once the socket has lingered: records the checkpoint, stops the
    /// spool's threads and waits for them.
    pub fn close(mut self) {
        self.budget.close();
        if let Some(s) = &mut self.spooled {
            s.spool.stop_reader();
            s.ledger.close();
            for (name, thread) in [("reader", s.reader.take()), ("writer", s.writer.take())] {
                if let Some(t) = thread {
                    if t.join().is_err() {
                        tracing::error!("the spool {name} thread panicked");
                    }
                }
            }
            tracing::info!(
                published_to = s.ledger.published(),
                bytes_left = s.spool.space.used(),
                "spool closed"
            );
        }
        self.counters
            .buffer_head_received_ns
            .store(0, Ordering::Relaxed);
    }
}

/// One item from `rx`, waiting up to `wait` (not at all with `None`); `Err(true)` when
/// every sender is gone, `Err(false)` when nothing came.
fn receive<T>(rx: &mpsc::Receiver<T>, wait: Option<Duration>) -> Result<T, bool> {
    match wait {
        None => rx
            .try_recv()
            .map_err(|e| matches!(e, mpsc::TryRecvError::Disconnected)),
        Some(wait) => rx
            .recv_timeout(wait)
            .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected)),
    }
}

/// The spool's settings from its configuration.
pub fn spool_settings(config: &SpoolConfig, max_payload: usize) -> spool::Settings {
    // A spool bound of a few segments would be held by the one being written.
    let segment_bytes = match config.max_bytes {
        0 => config.segment_bytes,
        max => config.segment_bytes.min((max / 8).max(4096)),
    };
    spool::Settings {
        fsync: config.fsync,
        fsync_interval: Duration::from_millis(config.fsync_interval_ms),
        segment_bytes,
        checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
        max_payload,
    }
}
