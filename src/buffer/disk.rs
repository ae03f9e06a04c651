//! The reader thread: while the buffer is spilled (the memory queue was full, or a
//! restart found unpublished records), it reads the spool from where the spill began,
//! record by record, turns each back into routed events and hands them to the
//! publisher within the memory budget. When it reaches the end of what is written, the
//! buffer goes back to memory.

use super::memory::{Budget, Held};
use super::spool::reader::{Read, SegmentReader};
use super::spool::record::Record;
use super::spool::{segment_path, Mode, Spool};
use crate::event::RoutedEvents;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

/// Turns a record read back from the spool into the routed events of its requests, as
/// intake would have (requests read together may be merged). What it cannot use (bad
/// requests, heartbeats) it leaves out.
pub trait Expand: Send + Sync {
    fn expand(&self, record: &Record) -> Vec<RoutedEvents>;
}

/// What the reader hands the publisher, in spool order.
pub enum DiskItem {
    Held(Held),
    /// Nothing to publish up to this position (damage, or requests with no events).
    Skip {
        pos: u64,
    },
    /// The reader reached the end of what is written: the memory queue goes on.
    CaughtUp,
}

pub struct DiskReader {
    pub spool: Arc<Spool>,
    pub budget: Budget,
    pub tx: mpsc::Sender<DiskItem>,
    pub expand: Arc<dyn Expand>,
    pub runtime: tokio::runtime::Handle,
}

/// Why reading stopped.
enum Stop {
    /// Shutdown, or the publisher is gone.
    Done,
}

impl DiskReader {
    pub fn run(self) {
        while let Some(from) = self.wait_for_spill() {
            if let Err(Stop::Done) = self.read_from(from) {
                return;
            }
        }
    }

    /// Waits until the buffer spills; the position from which to read.
    fn wait_for_spill(&self) -> Option<u64> {
        let mut log = self.spool.log();
        loop {
            if log.stop {
                return None;
            }
            if let Mode::Spilled { from } = log.mode {
                return Some(from);
            }
            log = self
                .spool
                .reader_wake
                .wait(log)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Reads from `cursor` until it has caught up with the writer.
    fn read_from(&self, mut cursor: u64) -> Result<(), Stop> {
        let mut reader: Option<SegmentReader> = None;
        loop {
            // Where the cursor is: which segment, and how far it may be read.
            let (base, limit) = {
                let mut log = self.spool.log();
                if log.stop {
                    return Err(Stop::Done);
                }
                if cursor >= log.end {
                    // Caught up. The writer decides under the same lock whether a new
                    // request goes to memory, so nothing falls between the two.
                    log.mode = Mode::Memory;
                    drop(log);
                    self.send(DiskItem::CaughtUp)?;
                    return Ok(());
                }
                match log.segments.range(..=cursor).next_back() {
                    Some((&base, &len)) => {
                        let end = if base == log.current {
                            log.end
                        } else {
                            base + len
                        };
                        if cursor >= end {
                            // Past this segment: on to the next one.
                            cursor = log
                                .segments
                                .range(cursor + 1..)
                                .next()
                                .map_or(log.end, |(&b, _)| b);
                            continue;
                        }
                        (base, end)
                    }
                    // Before the first segment (deleted since): start at the first.
                    None => {
                        cursor = log.segments.keys().next().copied().unwrap_or(log.end);
                        continue;
                    }
                }
            };
            if reader
                .as_ref()
                .is_none_or(|r| r.base() != base || r.position() != cursor)
            {
                match SegmentReader::open(
                    &self.spool.dir,
                    base,
                    cursor,
                    self.spool.settings.max_payload,
                ) {
                    Ok(r) => reader = Some(r),
                    Err(e) => {
                        self.unreadable(base, cursor, limit, &e);
                        self.send(DiskItem::Skip { pos: limit })?;
                        cursor = limit;
                        reader = None;
                        continue;
                    }
                }
            }
            let Some(r) = reader.as_mut() else {
                continue;
            };
            cursor = match self.read_segment(r, limit) {
                Ok(at) => at?,
                Err(e) => {
                    let at = r.position();
                    self.unreadable(base, at, limit, &e);
                    self.send(DiskItem::Skip { pos: limit })?;
                    reader = None;
                    limit
                }
            };
        }
    }

    /// Reads records up to `limit`; the position reached.
    fn read_segment(
        &self,
        r: &mut SegmentReader,
        limit: u64,
    ) -> std::io::Result<Result<u64, Stop>> {
        loop {
            match r.next(limit)? {
                Read::Record { start, end, record } => {
                    self.spool
                        .counters
                        .spool_records_replayed
                        .fetch_add(1, Ordering::Relaxed);
                    if let Err(stop) = self.hand_over(&record, start, end) {
                        return Ok(Err(stop));
                    }
                }
                Read::Damaged { start, end } => {
                    self.count_skipped(end - start);
                    let (base, offset) = self.place(start);
                    tracing::warn!(
                        path = %segment_path(&self.spool.dir, base).display(),
                        offset,
                        bytes = end - start,
                        "spool segment damaged or torn (a crash in the middle of a write, or a bad disk): skipping what cannot be read, keeping the rest"
                    );
                    if let Err(stop) = self.send(DiskItem::Skip { pos: end }) {
                        return Ok(Err(stop));
                    }
                }
                Read::End => return Ok(Ok(r.position())),
            }
        }
    }

    /// The segment and offset in it of a position, for logs.
    fn place(&self, pos: u64) -> (u64, u64) {
        let log = self.spool.log();
        let base = log
            .segments
            .range(..=pos)
            .next_back()
            .map_or(0, |(&b, _)| b);
        (base, pos - base)
    }

    fn count_skipped(&self, bytes: u64) {
        let counters = &self.spool.counters;
        counters
            .spool_damaged_regions
            .fetch_add(1, Ordering::Relaxed);
        counters
            .spool_bytes_skipped
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn unreadable(&self, base: u64, at: u64, limit: u64, e: &std::io::Error) {
        self.count_skipped(limit.saturating_sub(at));
        tracing::error!(
            path = %segment_path(&self.spool.dir, base).display(),
            offset = at - base,
            bytes = limit.saturating_sub(at),
            error = %e,
            "spool segment unreadable: skipping the rest of it"
        );
    }

    /// Expands a record and hands its events over, each within the memory budget.
    fn hand_over(&self, record: &Record, start: u64, end: u64) -> Result<(), Stop> {
        if self.spool.is_stopping() {
            return Err(Stop::Done);
        }
        let expanded = self.expand.expand(record);
        if expanded.is_empty() {
            return self.send(DiskItem::Skip { pos: end });
        }
        let last = expanded.len() - 1;
        for (i, events) in expanded.into_iter().enumerate() {
            let cost = self.budget.cost(&events);
            let (bytes, slot) = self
                .runtime
                .block_on(self.budget.acquire(cost))
                .map_err(|_| Stop::Done)?;
            self.budget.count_in(u64::from(cost));
            let held = Held {
                events,
                received_ns: record.received_ns,
                // All but the last request of a record leave the record to replay.
                pos: Some(if i == last { end } else { start }),
                bytes,
                slot: Some(slot),
            };
            self.send(DiskItem::Held(held))?;
        }
        Ok(())
    }

    fn send(&self, item: DiskItem) -> Result<(), Stop> {
        self.tx.send(item).map_err(|_| Stop::Done)
    }
}
