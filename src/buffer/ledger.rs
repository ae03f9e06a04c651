//! The publisher's record of what it has published from the spool, and the checkpoint
//! that follows it.
//!
//! Every request taken from the buffer gets an entry, in spool order, with the position
//! after its record. An entry is done once its events are published (or dropped on
//! purpose); published ones count only after a grace period, since ZeroMQ's send
//! returning means libzmq holds the message, not that it left. The checkpoint is the
//! position of the last entry of the done prefix: everything before it needs no
//! replay. It is written at most every `checkpoint_interval`, so after `kill -9` a
//! restart publishes again at most what was published in the last interval and grace.

use super::spool::{checkpoint, Spool};
use crate::config::Fsync;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a published request stays in the spool: time for libzmq to write it out.
pub const PUBLISH_GRACE: Duration = Duration::from_secs(1);

pub struct Ledger {
    spool: Arc<Spool>,
    /// The id of `entries[0]`.
    first: u64,
    entries: VecDeque<Entry>,
    /// Everything before this position is published.
    published: u64,
    /// What the checkpoint file says.
    written: u64,
    last_write: Instant,
    /// True after a checkpoint write failed, until one succeeds: logged once.
    failing: bool,
}

struct Entry {
    pos: u64,
    /// From when it counts as published; `None` while it is not.
    done: Option<Instant>,
}

impl Ledger {
    /// A ledger whose checkpoint is at `start`.
    pub fn new(spool: Arc<Spool>, start: u64) -> Ledger {
        Ledger {
            spool,
            first: 0,
            entries: VecDeque::new(),
            published: start,
            written: start,
            last_write: Instant::now(),
            failing: false,
        }
    }

    /// Adds an entry for a request whose record ends at (or, for all but the last
    /// request of a record, starts at) `pos`; returns its id.
    pub fn register(&mut self, pos: u64) -> u64 {
        let id = self.first + self.entries.len() as u64;
        self.entries.push_back(Entry { pos, done: None });
        id
    }

    /// The request is published (`grace`: it counts a grace period from now) or needs
    /// no publishing (dropped, unreadable).
    pub fn done(&mut self, id: u64, grace: bool) {
        let Some(i) = id.checked_sub(self.first) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(i as usize) {
            let now = Instant::now();
            e.done = Some(if grace { now + PUBLISH_GRACE } else { now });
        }
    }

    /// Moves the published position over the done prefix, and writes the checkpoint and
    /// deletes published segments when it is time (at once with `force`).
    pub fn maintain(&mut self, force: bool) {
        let now = Instant::now();
        while let Some(e) = self.entries.front() {
            match e.done {
                Some(at) if at <= now => {
                    self.published = self.published.max(e.pos);
                    self.entries.pop_front();
                    self.first += 1;
                }
                _ => break,
            }
        }
        let due = force || self.last_write.elapsed() >= self.spool.settings.checkpoint_interval;
        if self.published > self.written && due {
            self.write();
        }
    }

    fn write(&mut self) {
        self.last_write = Instant::now();
        let sync = self.spool.settings.fsync != Fsync::Never;
        match checkpoint::write(&self.spool.dir, self.published, sync) {
            Ok(()) => {
                self.written = self.published;
                self.failing = false;
                self.spool.collect(self.published);
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(dir = %self.spool.dir.display(), error = %e, "cannot write the spool checkpoint; a restart would publish again what was published since the last one");
                }
            }
        }
    }

    /// At the end: the socket has lingered, so what was published left; the grace is
    /// over for all of it.
    pub fn close(&mut self) {
        let now = Instant::now();
        for e in &mut self.entries {
            if let Some(at) = &mut e.done {
                *at = (*at).min(now);
            }
        }
        self.maintain(true);
    }

    /// How far the spool is published, as the ledger knows it now.
    pub fn published(&self) -> u64 {
        self.published
    }
}
