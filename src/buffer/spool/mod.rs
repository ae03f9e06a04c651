//! The disk spool: an append-only log of accepted requests, in segment files, with a
//! checkpoint of how far it has been published.
//!
//! Every record has a position: its byte offset in the whole log. A segment file is
//! named after the position of its first byte (`<position, 20 digits>.seg`), so the
//! log's order is the files' order and a position names one place in one file. Only the
//! newest segment (the current one) is written; the older ones are complete. The
//! checkpoint holds the position up to which everything is published; a segment that
//! ends at or before it is deleted.
//!
//! - [`writer`]: one thread appends for every connection (group commit), cuts a failed
//!   write back so no torn record sits before a good one, and starts new segments.
//! - [`reader`]: reads records back from any position, skipping damage.
//! - [`space`]: the bound on the spool's size.
//! - [`checkpoint`]: the checkpoint file.

pub mod checkpoint;
pub mod reader;
pub mod record;
pub mod space;
pub mod writer;

use crate::config::{Fsync, SpoolConfig};
use crate::metrics::Counters;
use crate::sync::lock;
use space::Space;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("spool directory {0} is in use by another fwdgate process")]
    Locked(PathBuf),
    #[error("spool write failed: {0}")]
    Write(io::ErrorKind),
    #[error("spool writer stopped")]
    Stopped,
}

const SUFFIX: &str = ".seg";
/// Segment files of an earlier, incompatible format.
const OLD_SUFFIX: &str = ".spool";
const LOCK: &str = "lock";

/// The spool's settings, as the writer and reader use them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    /// Size at which the writer starts a new segment.
    pub segment_bytes: u64,
    pub checkpoint_interval: Duration,
    /// The largest payload a record may have: larger lengths on disk are damage.
    pub max_payload: usize,
}

/// Whether requests are kept in memory on their way to the publisher, or the publisher
/// reads them back from the spool: while the memory queue is full, and after a restart
/// until the reader has caught up with what is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Memory,
    /// Everything from this position on is read back from the spool.
    Spilled {
        from: u64,
    },
}

/// The log's shape, shared by the writer, the reader and the publisher's ledger.
#[derive(Debug)]
pub struct Log {
    /// Every segment on disk: its first position and its length.
    pub segments: BTreeMap<u64, u64>,
    /// The first position of the segment being written.
    pub current: u64,
    /// The position after the last record written (and synced as configured): the
    /// reader reads no further.
    pub end: u64,
    pub mode: Mode,
    /// Set at shutdown: the reader stops.
    pub stop: bool,
}

/// An open spool directory.
pub struct Spool {
    pub dir: PathBuf,
    pub settings: Settings,
    log: Mutex<Log>,
    /// Wakes the reader when the buffer spills, and at shutdown.
    pub reader_wake: Condvar,
    pub space: Space,
    pub counters: Arc<Counters>,
    /// True since a write failed, until one succeeds.
    failing: AtomicBool,
    /// Set at shutdown, with `Log::stop`: checked by the reader between records.
    stopping: AtomicBool,
    /// Held for the spool's lifetime: an exclusive lock on the directory.
    _lock: File,
}

/// What opening a spool found.
pub struct Opened {
    pub spool: Arc<Spool>,
    /// The segment to write to, and its first position.
    pub file: File,
    pub base: u64,
    /// Where replay starts (the checkpoint), when anything after it is unpublished.
    pub replay_from: Option<u64>,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}{SUFFIX}")
}

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_name(base))
}

impl Spool {
    /// Opens (creating it if needed) and locks the spool directory, deletes segments the
    /// checkpoint says are published, and starts a new segment after the last one. It
    /// reads no record: what is left is read back by the reader, while the gateway
    /// already serves.
    pub fn open(
        config: &SpoolConfig,
        settings: Settings,
        counters: Arc<Counters>,
    ) -> Result<Opened, SpoolError> {
        let dir = PathBuf::from(&config.dir);
        let dir_err = |source| SpoolError::Dir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let lock = lock_dir(&dir)?;
        let mut segments = BTreeMap::new();
        let mut old_format = 0;
        for entry in std::fs::read_dir(&dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(OLD_SUFFIX) {
                old_format += 1;
            }
            let Some(base) = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry.metadata().map_err(dir_err)?.len();
            segments.insert(base, len);
        }
        if old_format > 0 {
            tracing::warn!(dir = %dir.display(), files = old_format, "spool files of an earlier format are not read");
        }
        let checkpoint = match checkpoint::read(&dir) {
            Ok(p) => p.unwrap_or(0),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "spool checkpoint unreadable; replaying the whole spool");
                0
            }
        };
        let mut deleted = Vec::new();
        segments.retain(|&base, &mut len| {
            let published = base + len <= checkpoint;
            if published {
                deleted.push(base);
            }
            !published
        });
        for base in &deleted {
            remove_segment(&dir, *base);
        }
        let (base, end) = match segments.last_key_value() {
            // A last segment that was created and never written is written on.
            Some((&base, &0)) => (base, base),
            Some((&base, &len)) => (base + len, base + len),
            // An empty spool: positions go on from the checkpoint, never back.
            None => (checkpoint, checkpoint),
        };
        let file = create_segment(&dir, base, settings.fsync == Fsync::Always).map_err(dir_err)?;
        segments.entry(base).or_insert(0);
        let first = segments.first_key_value().map_or(end, |(&b, _)| b);
        let from = checkpoint.max(first);
        let replay_from = (from < end).then_some(from);
        let used = segments.values().sum();
        counters.spool_bytes.store(used, Ordering::Relaxed);
        counters
            .spool_segments
            .store(segments.len() as u64, Ordering::Relaxed);
        let mode = match replay_from {
            Some(from) => Mode::Spilled { from },
            None => Mode::Memory,
        };
        let spool = Spool {
            dir,
            space: Space::new(config.max_bytes, used),
            settings,
            log: Mutex::new(Log {
                segments,
                current: base,
                end,
                mode,
                stop: false,
            }),
            reader_wake: Condvar::new(),
            counters,
            failing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            _lock: lock,
        };
        Ok(Opened {
            spool: Arc::new(spool),
            file,
            base,
            replay_from,
        })
    }

    /// The log's shape (a poisoned lock is taken as it is: see `sync`).
    pub fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }

    /// Deletes every segment that ends at or before `published` (except the one being
    /// written) and gives its bytes back to the size bound.
    pub fn collect(&self, published: u64) {
        let gone: Vec<(u64, u64)> = {
            let mut log = self.log();
            let current = log.current;
            let gone: Vec<(u64, u64)> = log
                .segments
                .range(..current)
                .filter(|(&base, &len)| base + len <= published)
                .map(|(&b, &l)| (b, l))
                .collect();
            for (base, _) in &gone {
                log.segments.remove(base);
            }
            self.counters
                .spool_segments
                .store(log.segments.len() as u64, Ordering::Relaxed);
            gone
        };
        if gone.is_empty() {
            return;
        }
        for &(base, len) in &gone {
            remove_segment(&self.dir, base);
            self.space.release(len);
        }
        if self.settings.fsync == Fsync::Always {
            if let Err(e) = checkpoint::sync_dir(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot sync the spool directory");
            }
        }
        self.counters
            .spool_bytes
            .store(self.space.used(), Ordering::Relaxed);
    }

    pub fn writer_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Asks the reader to stop.
    pub fn stop_reader(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.log().stop = true;
        self.reader_wake.notify_all();
    }

    /// True once the reader is asked to stop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

fn remove_segment(dir: &Path, base: u64) {
    let path = segment_path(dir, base);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a published spool segment");
        }
    }
}

/// Creates (or opens, when it exists empty) the segment starting at `base`, for
/// appending. With `sync`, its directory entry is on disk when this returns.
pub fn create_segment(dir: &Path, base: u64, sync: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, base))?;
    if sync {
        checkpoint::sync_dir(dir)?;
    }
    Ok(file)
}

/// Takes an exclusive lock on the directory's lock file, so that two gateways never
/// write one spool.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SpoolError::Dir {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            SpoolError::Locked(dir.to_path_buf())
        } else {
            SpoolError::Dir { path, source: e }
        });
    }
    Ok(file)
}
