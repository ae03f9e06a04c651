//! The disk spool: accepted requests are appended to segment files before they are
//! acked, so that a crash loses nothing that was acked. Whatever was spooled and not yet
//! published is replayed on the next start.
//!
//! A segment is a sequence of records `[u32 length][u32 crc32][payload]` (big endian),
//! the payload `[u16 peer length][peer][request frame]`: the bytes the client sent (a
//! JSON request as its msgpack equivalent), not re-encoded per event. One writer thread
//! appends and syncs for many connections at once (group commit). Each record's
//! [`Ticket`] travels with its batch; when the batch is published (or dropped by policy)
//! the ticket is marked done, and a segment whose records are all done is deleted once
//! the writer has moved past it. A torn tail (a crash in the middle of a write) fails its
//! length or checksum test on replay and is cut off, never replayed as garbage.

use crate::config::{Fsync, SpoolConfig};
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::oneshot;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("spool write failed: {0}")]
    Write(String),
    #[error("spool writer stopped")]
    Stopped,
}

const HEADER: usize = 8;
const SUFFIX: &str = ".spool";

/// The spool, shared by every connection task and the publisher.
pub struct Spool {
    sender: Mutex<Option<std_mpsc::Sender<Append>>>,
    /// The writer thread, joined by `close`.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    state: Arc<Mutex<Segments>>,
}

struct Append {
    peer: Arc<str>,
    frame: Bytes,
    reply: oneshot::Sender<Result<u64, String>>,
}

/// Records still to be published, per segment, and which segment is being written.
#[derive(Default)]
struct Segments {
    dir: PathBuf,
    outstanding: HashMap<u64, u64>,
    current: u64,
}

impl Segments {
    fn path(&self, segment: u64) -> PathBuf {
        segment_path(&self.dir, segment)
    }

    /// Deletes `segment` when nothing in it is outstanding and it is not being written.
    fn collect(&mut self, segment: u64) {
        if segment != self.current && self.outstanding.get(&segment).copied().unwrap_or(0) == 0 {
            self.outstanding.remove(&segment);
            let path = self.path(segment);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete published spool segment");
                }
            }
        }
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SUFFIX}"))
}

/// A spooled request, until its batch is published. Marking it done lets its segment
/// be deleted; dropping it without `done` keeps the record for the next start.
pub struct Ticket {
    state: Arc<Mutex<Segments>>,
    segment: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket(segment {})", self.segment)
    }
}

impl Ticket {
    /// The request was published (or dropped on purpose): it need not be replayed.
    pub fn done(self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(n) = s.outstanding.get_mut(&self.segment) {
                *n = n.saturating_sub(1);
            }
            s.collect(self.segment);
        }
    }
}

/// A request read back from the spool at start.
pub struct Replayed {
    pub peer: Arc<str>,
    pub frame: Bytes,
    pub ticket: Ticket,
}

impl Spool {
    /// Opens the spool directory, reads back what earlier runs left (cutting torn
    /// tails), and starts the writer thread on a new segment.
    pub fn open(config: &SpoolConfig) -> Result<(Spool, Vec<Replayed>), SpoolError> {
        let dir = PathBuf::from(&config.dir);
        let dir_err = |source| SpoolError::Dir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(dir_err)? {
            let name = entry.map_err(dir_err)?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                segments.push(n);
            }
        }
        segments.sort_unstable();
        let current = segments.last().map_or(1, |n| n + 1);
        let state = Arc::new(Mutex::new(Segments {
            dir: dir.clone(),
            outstanding: HashMap::new(),
            current,
        }));
        let mut replayed = Vec::new();
        for segment in segments {
            let records = match read_segment(&segment_path(&dir, segment)) {
                Ok(records) => records,
                // Deleted since it was listed: all of it was published.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(dir_err(e)),
            };
            if let Ok(mut s) = state.lock() {
                s.outstanding.insert(segment, records.len() as u64);
                s.collect(segment);
            }
            for (peer, frame) in records {
                replayed.push(Replayed {
                    peer,
                    frame,
                    ticket: Ticket {
                        state: state.clone(),
                        segment,
                    },
                });
            }
        }
        let file = create_segment(&segment_path(&dir, current)).map_err(dir_err)?;
        let (sender, receiver) = std_mpsc::channel();
        let writer = Writer {
            file,
            written: 0,
            state: state.clone(),
            segment_bytes: config.segment_bytes,
            fsync: config.fsync,
            fsync_interval: Duration::from_millis(config.fsync_interval_ms),
            last_sync: Instant::now(),
        };
        let writer = std::thread::Builder::new()
            .name("fwdgate-spool".into())
            .spawn(move || writer.run(receiver))
            .map_err(dir_err)?;
        Ok((
            Spool {
                sender: Mutex::new(Some(sender)),
                writer: Mutex::new(Some(writer)),
                state,
            },
            replayed,
        ))
    }

    /// Appends a request and waits until it is written (and synced, as configured).
    pub async fn append(&self, peer: &Arc<str>, frame: Bytes) -> Result<Ticket, SpoolError> {
        let (reply, done) = oneshot::channel();
        let sent = match self.sender.lock() {
            Ok(s) => s.as_ref().map(|s| {
                s.send(Append {
                    peer: peer.clone(),
                    frame,
                    reply,
                })
            }),
            Err(_) => None,
        };
        if !matches!(sent, Some(Ok(()))) {
            return Err(SpoolError::Stopped);
        }
        let segment = done
            .await
            .map_err(|_| SpoolError::Stopped)?
            .map_err(SpoolError::Write)?;
        Ok(Ticket {
            state: self.state.clone(),
            segment,
        })
    }

    /// Stops the writer thread once every append sent so far is written, and waits
    /// for it: afterwards the spool's files are left as the next start will find them.
    pub fn close(&self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!("the spool writer thread panicked");
            }
        }
    }
}

fn create_segment(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reads every valid record of a segment; at the first record that is incomplete or
/// fails its checksum, the file is cut there.
fn read_segment(path: &Path) -> io::Result<Vec<(Arc<str>, Bytes)>> {
    let data = Bytes::from(std::fs::read(path)?);
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match parse_record(&data[pos..]) {
            Some((len, peer_len)) => {
                let payload = data.slice(pos + HEADER..pos + HEADER + len);
                let peer = String::from_utf8_lossy(&payload[2..2 + peer_len]).into();
                records.push((peer, payload.slice(2 + peer_len..)));
                pos += HEADER + len;
            }
            None => {
                tracing::warn!(
                    path = %path.display(),
                    offset = pos,
                    cut = data.len() - pos,
                    "spool segment has a torn or corrupt tail; cutting it off"
                );
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(pos as u64)?;
                break;
            }
        }
    }
    Ok(records)
}

/// Checks one record at the start of `b`: its payload length and its peer length, or
/// `None` when it is incomplete or its checksum fails.
fn parse_record(b: &[u8]) -> Option<(usize, usize)> {
    let len = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
    let payload = b.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc || payload.len() < 2 {
        return None;
    }
    let peer_len = u16::from_be_bytes([payload[0], payload[1]]) as usize;
    (2 + peer_len <= payload.len()).then_some((len, peer_len))
}

struct Writer {
    file: File,
    written: u64,
    state: Arc<Mutex<Segments>>,
    segment_bytes: u64,
    fsync: Fsync,
    fsync_interval: Duration,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self, receiver: std_mpsc::Receiver<Append>) {
        while let Ok(first) = receiver.recv() {
            // Group commit: everything that queued up meanwhile shares one write burst
            // and one sync.
            let mut group = vec![first];
            while let Ok(more) = receiver.try_recv() {
                group.push(more);
                if group.len() >= 1024 {
                    break;
                }
            }
            let result = self.write_group(&group);
            let segment = self.current();
            for append in group {
                let _ = append.reply.send(match &result {
                    Ok(()) => Ok(segment),
                    Err(e) => Err(e.to_string()),
                });
            }
            if result.is_ok() && self.written >= self.segment_bytes {
                if let Err(e) = self.rotate() {
                    tracing::error!(error = %e, "cannot start a new spool segment");
                }
            }
        }
        let _ = self.file.sync_data();
        // No more writes: the last segment goes as soon as all of it is published.
        if let Ok(mut s) = self.state.lock() {
            let last = s.current;
            s.current = 0;
            s.collect(last);
        }
    }

    fn current(&self) -> u64 {
        self.state.lock().map(|s| s.current).unwrap_or(0)
    }

    fn write_group(&mut self, group: &[Append]) -> io::Result<()> {
        let segment = self.current();
        let mut buf = Vec::new();
        for a in group {
            let peer = a.peer.as_bytes();
            let peer = &peer[..peer.len().min(u16::MAX as usize)];
            let len = 2 + peer.len() + a.frame.len();
            let len32 =
                u32::try_from(len).map_err(|_| io::Error::other("request too large to spool"))?;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&(peer.len() as u16).to_be_bytes());
            hasher.update(peer);
            hasher.update(&a.frame);
            buf.extend_from_slice(&len32.to_be_bytes());
            buf.extend_from_slice(&hasher.finalize().to_be_bytes());
            buf.extend_from_slice(&(peer.len() as u16).to_be_bytes());
            buf.extend_from_slice(peer);
            buf.extend_from_slice(&a.frame);
        }
        self.file.write_all(&buf)?;
        self.written += buf.len() as u64;
        let sync = match self.fsync {
            Fsync::Always => true,
            Fsync::Interval => self.last_sync.elapsed() >= self.fsync_interval,
            Fsync::Never => false,
        };
        if sync {
            self.file.sync_data()?;
            self.last_sync = Instant::now();
        }
        if let Ok(mut s) = self.state.lock() {
            *s.outstanding.entry(segment).or_default() += group.len() as u64;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let (old, path) = {
            let mut s = self
                .state
                .lock()
                .map_err(|_| io::Error::other("spool state poisoned"))?;
            let old = s.current;
            s.current += 1;
            (old, s.path(s.current))
        };
        self.file = create_segment(&path)?;
        self.written = 0;
        if let Ok(mut s) = self.state.lock() {
            s.collect(old);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.display().to_string(),
            fsync: Fsync::Always,
            fsync_interval_ms: 1000,
            segment_bytes: 100,
        }
    }

    #[tokio::test]
    async fn spooled_records_come_back_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let peer: Arc<str> = "127.0.0.1:1".into();
        let (spool, replayed) = Spool::open(&config(dir.path())).unwrap();
        assert!(replayed.is_empty());
        let mut tickets = Vec::new();
        for i in 0..10u8 {
            tickets.push(spool.append(&peer, Bytes::from(vec![i; 30])).await.unwrap());
        }
        spool.close();
        // Half published: the rest must come back, in order.
        for t in tickets.drain(..5) {
            t.done();
        }
        drop(tickets);
        let (spool2, replayed) = Spool::open(&config(dir.path())).unwrap();
        let frames: Vec<u8> = replayed.iter().map(|r| r.frame[0]).collect();
        // Segments hold several records; a segment goes only when all of it is done.
        assert!(frames.ends_with(&[5, 6, 7, 8, 9]), "{frames:?}");
        assert_eq!(&*replayed[0].peer, "127.0.0.1:1");
        for r in replayed {
            r.ticket.done();
        }
        spool2.close();
        let (_s, replayed) = Spool::open(&config(dir.path())).unwrap();
        assert!(replayed.is_empty());
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 7);
        let mut good = Vec::new();
        let payload = [0u8, 1, b'p', b'x', b'y'];
        good.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        good.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        good.extend_from_slice(&payload);
        let mut torn = good.clone();
        torn.extend_from_slice(&good[..good.len() - 1]);
        std::fs::write(&path, &torn).unwrap();
        let records = read_segment(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(&records[0].1[..], b"xy");
        assert_eq!(std::fs::read(&path).unwrap(), good);
        let mut corrupt = good.clone();
        corrupt[9] ^= 1;
        std::fs::write(&path, &corrupt).unwrap();
        assert!(read_segment(&path).unwrap().is_empty());
        assert!(std::fs::read(&path).unwrap().is_empty());
    }
}
