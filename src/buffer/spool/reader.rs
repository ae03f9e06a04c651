//! Reading records back from one segment, in order, from any record's position. Damage
//! (a torn tail after a crash, a bad sector, a flipped bit) is skipped: the reader looks
//! for the next record that checks out and says how much it passed over. It holds at
//! most a chunk of the file and the record being read.

use super::record::{find_magic, Header, Record, HEADER_LEN, MAGIC};
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How much of the file is read at once.
const CHUNK: usize = 1 << 20;

/// What the next read found.
#[derive(Debug)]
pub enum Read {
    /// A record at `start`, ending before `end` (positions in the log).
    Record {
        start: u64,
        end: u64,
        record: Record,
    },
    /// Bytes from `start` to `end` that are no record; a good record (or the limit)
    /// follows.
    Damaged { start: u64, end: u64 },
    /// Nothing more before the limit.
    End,
}

pub struct SegmentReader {
    file: File,
    /// The segment's first position.
    base: u64,
    /// The log position of `buf[0]`.
    pos: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` already read.
    at: usize,
    max_payload: usize,
}

impl SegmentReader {
    /// Opens the segment starting at `base` to read from log position `from`.
    pub fn open(dir: &Path, base: u64, from: u64, max_payload: usize) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            file: File::open(super::segment_path(dir, base))?,
            base,
            pos: from.max(base),
            buf: Vec::new(),
            at: 0,
            max_payload,
        })
    }

    /// The first position of the segment read.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The log position of the next byte to read.
    pub fn position(&self) -> u64 {
        self.pos + self.at as u64
    }

    fn available(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Makes at least `n` bytes available from the position, as far as the file and
    /// `limit` allow; returns how many are.
    fn fill(&mut self, n: usize, limit: u64) -> io::Result<usize> {
        let room = limit.saturating_sub(self.position());
        let need = (n as u64).min(room) as usize;
        if self.available() >= need {
            return Ok(self.available().min(room as usize));
        }
        // Read ahead a chunk, never past the limit.
        let want = (n.max(CHUNK) as u64).min(room) as usize;
        self.buf.drain(..self.at);
        self.pos += self.at as u64;
        self.at = 0;
        if self.buf.capacity() > 4 * CHUNK && want <= CHUNK {
            self.buf.shrink_to(CHUNK);
        }
        while self.buf.len() < want {
            let have = self.buf.len();
            self.buf.resize(want, 0);
            let offset = self.pos - self.base + have as u64;
            let read = match self.file.read_at(&mut self.buf[have..], offset) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.buf.truncate(have);
                    continue;
                }
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            };
            self.buf.truncate(have + read);
            if read == 0 {
                break;
            }
        }
        Ok(self.available())
    }

    /// Reads the next record before `limit`.
    pub fn next(&mut self, limit: u64) -> io::Result<Read> {
        let start = self.position();
        if start >= limit {
            return Ok(Read::End);
        }
        match self.record_at_position(limit)? {
            Some(len) => {
                let header = self.header().ok_or_else(broken)?;
                let payload =
                    Bytes::copy_from_slice(&self.buf[self.at + HEADER_LEN..self.at + len]);
                let record = header.decode(payload).map_err(|_| broken())?;
                self.at += len;
                Ok(Read::Record {
                    start,
                    end: start + len as u64,
                    record,
                })
            }
            None => self.skip_damage(start, limit),
        }
    }

    fn header(&self) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = self
            .buf
            .get(self.at..self.at + HEADER_LEN)?
            .try_into()
            .ok()?;
        Header::parse(bytes, self.max_payload).ok()
    }

    /// The length of the good record at the position, if one is there (whole before
    /// `limit`, its checksum right); it is then available in the buffer.
    fn record_at_position(&mut self, limit: u64) -> io::Result<Option<usize>> {
        if self.fill(HEADER_LEN, limit)? < HEADER_LEN {
            return Ok(None);
        }
        let Some(header) = self.header() else {
            return Ok(None);
        };
        let len = header.record_len();
        if self.position() + len as u64 > limit || self.fill(len, limit)? < len {
            return Ok(None);
        }
        let payload = &self.buf[self.at + HEADER_LEN..self.at + len];
        Ok(header.verify(payload).then_some(len))
    }

    /// Moves past damage at `start` to the next good record, or to `limit`.
    fn skip_damage(&mut self, start: u64, limit: u64) -> io::Result<Read> {
        self.at += 1;
        loop {
            if self.position() >= limit {
                self.to(limit);
                return Ok(Read::Damaged { start, end: limit });
            }
            let available = self.fill(CHUNK, limit)?;
            match find_magic(&self.buf[self.at..]) {
                Some(i) => {
                    self.at += i;
                    if self.record_at_position(limit)?.is_some() {
                        return Ok(Read::Damaged {
                            start,
                            end: self.position(),
                        });
                    }
                    self.at += 1;
                }
                None if available < MAGIC.len() || self.position() + available as u64 >= limit => {
                    self.to(limit);
                    return Ok(Read::Damaged { start, end: limit });
                }
                // Keep the last bytes: a magic may begin there.
                None => self.at += available + 1 - MAGIC.len(),
            }
        }
    }

    /// Moves the position to `to`, dropping what is buffered.
    fn to(&mut self, to: u64) {
        self.buf.clear();
        self.at = 0;
        self.pos = to;
    }
}

fn broken() -> io::Error {
    io::Error::other("a spool record changed while it was read")
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode, Sender};
    use super::*;

    const FROM: Sender<'static> = Sender {
        peer: "127.0.0.1:9",
        host: None,
    };

    fn frame(i: usize) -> Bytes {
        Bytes::from(format!("request {i:05} {}", "x".repeat(i % 50)).into_bytes())
    }

    /// A segment of `n` records starting at `base`; returns the file bytes and each
    /// record's start.
    fn segment(dir: &Path, base: u64, n: usize) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(base + bytes.len() as u64);
            encode(&mut bytes, i as u64, 1, FROM, &[frame(i)]).unwrap();
        }
        std::fs::write(super::super::segment_path(dir, base), &bytes).unwrap();
        (bytes, starts)
    }

    fn read_all(dir: &Path, base: u64, from: u64, limit: u64) -> (Vec<u64>, Vec<(u64, u64)>) {
        let mut r = SegmentReader::open(dir, base, from, 1 << 20).unwrap();
        let (mut got, mut damaged) = (Vec::new(), Vec::new());
        loop {
            match r.next(limit).unwrap() {
                Read::Record { record, .. } => got.push(record.received_ns),
                Read::Damaged { start, end } => damaged.push((start, end)),
                Read::End => return (got, damaged),
            }
        }
    }

    #[test]
    fn records_come_back_in_order_from_any_record() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, starts) = segment(dir.path(), 1000, 3000);
        let end = 1000 + bytes.len() as u64;
        let (got, damaged) = read_all(dir.path(), 1000, 1000, end);
        assert_eq!(got, (0..3000).collect::<Vec<u64>>());
        assert!(damaged.is_empty());
        let (got, _) = read_all(dir.path(), 1000, starts[2500], end);
        assert_eq!(got, (2500..3000).collect::<Vec<u64>>());
        // The limit stops the reader, as the end of what is written does.
        let (got, _) = read_all(dir.path(), 1000, 1000, starts[10]);
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn damage_in_the_middle_costs_only_the_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = segment(dir.path(), 0, 5000);
        // One flipped byte inside record 1234's payload, one inside 4000's header.
        bytes[starts[1234] as usize + 20] ^= 1;
        bytes[starts[4000] as usize + 5] ^= 1;
        std::fs::write(super::super::segment_path(dir.path(), 0), &bytes).unwrap();
        let (got, damaged) = read_all(dir.path(), 0, 0, bytes.len() as u64);
        let want: Vec<u64> = (0..5000).filter(|&i| i != 1234 && i != 4000).collect();
        assert_eq!(got, want);
        assert_eq!(
            damaged,
            [(starts[1234], starts[1235]), (starts[4000], starts[4001])]
        );
    }

    #[test]
    fn a_torn_tail_is_damage_up_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = segment(dir.path(), 0, 10);
        let full = bytes.len();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&[0, 0, 1, 0, 1, 2, 3]);
        std::fs::write(super::super::segment_path(dir.path(), 0), &bytes).unwrap();
        let (got, damaged) = read_all(dir.path(), 0, 0, bytes.len() as u64);
        assert_eq!(got.len(), 10);
        assert_eq!(damaged, [(full as u64, bytes.len() as u64)]);
        // A limit past the file's end (the file was cut short) is damage too.
        let (got, damaged) = read_all(dir.path(), 0, starts[9], full as u64 + 100);
        assert_eq!(got, [9]);
        assert_eq!(damaged, [(full as u64, full as u64 + 100)]);
    }

    #[test]
    fn large_records_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let big = Bytes::from(vec![b'z'; 3 * CHUNK + 17]);
        encode(&mut bytes, 1, 1, FROM, std::slice::from_ref(&big)).unwrap();
        encode(&mut bytes, 2, 1, FROM, &[frame(1)]).unwrap();
        std::fs::write(super::super::segment_path(dir.path(), 0), &bytes).unwrap();
        let mut r = SegmentReader::open(dir.path(), 0, 0, 4 * CHUNK).unwrap();
        let Read::Record { record, .. } = r.next(bytes.len() as u64).unwrap() else {
            panic!("no record")
        };
        assert_eq!(record.region, big);
        assert!(matches!(
            r.next(bytes.len() as u64).unwrap(),
            Read::Record { .. }
        ));
        assert!(matches!(r.next(bytes.len() as u64).unwrap(), Read::End));
    }
}
