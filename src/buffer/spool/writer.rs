//! The spool's writer thread. It appends the records of every connection in the order
//! they were handed over, several at a time with one sync (group commit), then puts
//! each request's events in the memory queue while there is room there, and only then
//! answers the connections, which may ack. Because it alone appends and fills the
//! memory queue, the memory queue's order is the spool's order.
//!
//! A write or sync that fails leaves no torn record before later good ones: the segment
//! is cut back to its last good length (or, if even that fails, left behind for a new
//! segment), the requests of the group are answered with the error (not acked), and
//! the next group is tried afresh.

use super::record::{self};
use super::{create_segment, Mode, Spool, SpoolError};
use crate::buffer::memory::{Item, Memory};
use crate::config::Fsync;
use crate::event::RoutedEvents;
use bytes::Bytes;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// A request to append, from intake.
pub enum Append {
    Record(Box<Pending>),
    /// A client connection ended: passed on in order when the buffer is in memory.
    Ended(u64),
}

/// One hand-off's requests, on their way to disk.
pub struct Pending {
    pub received_ns: u64,
    pub frames: Vec<Bytes>,
    /// The record's size on disk, reserved in the spool's size bound.
    pub len: u64,
    /// The routed events, kept in memory for the publisher while there is room.
    pub events: RoutedEvents,
    /// Answered once the record is written (and synced as configured) or has failed.
    pub reply: oneshot::Sender<Result<(), SpoolError>>,
}

/// The most requests written with one sync.
const GROUP_MAX: usize = 1024;
/// The most bytes written with one sync.
const GROUP_BYTES: usize = 8 << 20;

pub struct Writer {
    pub spool: Arc<Spool>,
    pub file: File,
    /// The current segment's first position and length.
    pub base: u64,
    pub len: u64,
    pub memory: Memory,
    last_sync: Instant,
    /// Written since the last sync.
    unsynced: bool,
    buf: Vec<u8>,
    /// True since a write failed, until one succeeds: logged once.
    failing: bool,
}

impl Writer {
    pub fn new(spool: Arc<Spool>, file: File, base: u64, memory: Memory) -> Writer {
        Writer {
            spool,
            file,
            base,
            len: 0,
            memory,
            last_sync: Instant::now(),
            unsynced: false,
            buf: Vec::new(),
            failing: false,
        }
    }

    pub fn run(mut self, receiver: mpsc::Receiver<Append>) {
        loop {
            let first = match self.next_sync_due() {
                Some(due) => match receiver.recv_timeout(due) {
                    Ok(a) => a,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.sync_now();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match receiver.recv() {
                    Ok(a) => a,
                    Err(_) => break,
                },
            };
            let mut group = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(append) = next.take() {
                match append {
                    Append::Record(p) => {
                        bytes += p.len as usize;
                        group.push(*p);
                    }
                    Append::Ended(connection) => {
                        // Keeps its place: the records before it go first.
                        self.write_group(std::mem::take(&mut group));
                        bytes = 0;
                        if self.spool.log().mode == Mode::Memory {
                            self.memory.mark(Item::Ended(connection));
                        }
                    }
                }
                if group.len() < GROUP_MAX && bytes < GROUP_BYTES {
                    next = receiver.try_recv().ok();
                }
            }
            self.write_group(group);
        }
        self.sync_now();
    }

    /// With `fsync = "interval"` and unsynced data: how long until the sync is due.
    fn next_sync_due(&self) -> Option<std::time::Duration> {
        (self.spool.settings.fsync == Fsync::Interval && self.unsynced).then(|| {
            self.spool
                .settings
                .fsync_interval
                .saturating_sub(self.last_sync.elapsed())
        })
    }

    fn sync_now(&mut self) {
        if self.unsynced && self.spool.settings.fsync != Fsync::Never {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(error = %e, "spool sync failed");
                self.spool
                    .counters
                    .spool_write_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
    }

    fn write_group(&mut self, group: Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        let start = self.base + self.len;
        self.buf.clear();
        // Each record's start and end position.
        let mut spans = Vec::with_capacity(group.len());
        let mut encoded = true;
        for p in &group {
            let at = self.buf.len() as u64;
            let events = u32::try_from(p.events.events.len()).unwrap_or(u32::MAX);
            let from = record::Sender {
                peer: &p.events.peer,
                host: p.events.peer_host.as_deref(),
            };
            encoded &=
                record::encode(&mut self.buf, p.received_ns, events, from, &p.frames).is_some();
            spans.push((start + at, start + self.buf.len() as u64));
        }
        let written = if encoded {
            self.append()
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request too large to spool",
            ))
        };
        match written {
            Ok(()) => self.accepted(group, spans),
            Err(e) => self.refused(group, e),
        }
        if self.len >= self.spool.settings.segment_bytes {
            self.rotate();
        }
    }

    /// Writes the buffer and syncs as configured; on failure cuts the segment back.
    fn append(&mut self) -> io::Result<()> {
        let good = self.len;
        let result = self.file.write_all(&self.buf).and_then(|()| {
            self.unsynced = true;
            let due = match self.spool.settings.fsync {
                Fsync::Always => true,
                Fsync::Interval => self.last_sync.elapsed() >= self.spool.settings.fsync_interval,
                Fsync::Never => false,
            };
            if due {
                self.file.sync_data()?;
                self.unsynced = false;
                self.last_sync = Instant::now();
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.cut_back(good);
                Err(e)
            }
        }
    }

    /// After a failed write: makes `good` the segment's end again, so the next record
    /// follows the last good one. If the file cannot be cut, it is left as it is (the
    /// reader skips its damaged tail) and writing goes on in a new segment.
    fn cut_back(&mut self, good: u64) {
        let cut = self.file.set_len(good).and_then(|()| {
            if self.spool.settings.fsync != Fsync::Never {
                self.file.sync_data()?;
            }
            Ok(())
        });
        if let Err(e) = cut {
            let actual = self.file.metadata().map_or(good, |m| m.len().max(good));
            tracing::error!(error = %e, segment = self.base, "cannot cut a failed spool write back; starting a new segment");
            self.spool.space.add_used(actual - good);
            self.len = actual;
            self.rotate();
        }
    }

    /// The group is on disk: records its end, puts its events in memory while the
    /// buffer is in memory and there is room, and answers the connections.
    fn accepted(&mut self, group: Vec<Pending>, spans: Vec<(u64, u64)>) {
        if self.failing {
            self.failing = false;
            self.spool.writer_failing(false);
            tracing::info!("spool writes succeed again");
        }
        {
            let mut log = self.spool.log();
            log.end = self.base + self.len;
            log.segments.insert(self.base, self.len);
            let mut replies = Vec::with_capacity(group.len());
            for (p, (start, end)) in group.into_iter().zip(spans) {
                let Pending {
                    received_ns,
                    events,
                    reply,
                    ..
                } = p;
                if log.mode == Mode::Memory && !self.memory.try_push(events, received_ns, Some(end))
                {
                    // Memory is full: from this record on the publisher reads the spool.
                    log.mode = Mode::Spilled { from: start };
                    self.memory.mark(Item::Spilled);
                    self.spool.reader_wake.notify_all();
                }
                replies.push(reply);
            }
            drop(log);
            for reply in replies {
                let _ = reply.send(Ok(()));
            }
        }
        self.spool
            .counters
            .spool_bytes
            .store(self.spool.space.used(), Ordering::Relaxed);
    }

    /// The group failed: nothing of it is acked, and its reserved room is given back.
    fn refused(&mut self, group: Vec<Pending>, e: io::Error) {
        let counters = &self.spool.counters;
        counters.spool_write_errors.fetch_add(1, Ordering::Relaxed);
        counters
            .requests_refused_spool
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        if !self.failing {
            self.failing = true;
            tracing::error!(error = %e, requests = group.len(), "spool write failed: requests not acknowledged (their connections are closed; clients resend)");
        }
        self.spool.writer_failing(true);
        let kind = e.kind();
        for p in group {
            self.spool.space.release(p.len);
            let _ = p.reply.send(Err(SpoolError::Write(kind)));
        }
    }

    /// Starts a new segment after the current one.
    fn rotate(&mut self) {
        if self.spool.settings.fsync != Fsync::Never {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(error = %e, "spool sync failed");
            }
        }
        let base = self.base + self.len;
        let sync = self.spool.settings.fsync == Fsync::Always;
        match create_segment(&self.spool.dir, base, sync) {
            Ok(file) => {
                let mut log = self.spool.log();
                log.segments.insert(self.base, self.len);
                log.segments.insert(base, 0);
                log.current = base;
                log.end = base;
                self.spool
                    .counters
                    .spool_segments
                    .store(log.segments.len() as u64, Ordering::Relaxed);
                drop(log);
                self.file = file;
                self.base = base;
                self.len = 0;
                self.unsynced = false;
            }
            // Writing goes on in this segment; the next rotation tries again.
            Err(e) => tracing::error!(error = %e, "cannot start a new spool segment"),
        }
    }
}
