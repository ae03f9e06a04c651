//! One spool record: the requests of one hand-off, as received, with what replay needs
//! to publish them again. Pure encoding and decoding, no I/O.
//!
//! ```text
//! record  = magic "FWR1" | length u32 | crc32 u32 | payload          (big endian)
//! payload = received_ns u64 | events u32 | peer_len u16 | peer | host_len u16 | host
//!           | frames u32 | frame_len u32 * frames | the frames, back to back
//! ```
//!
//! The checksum covers the length field and the payload, so a flipped length is caught
//! like a flipped byte. The magic lets a reader find the next record after a damaged
//! one, so one bad sector costs the records in it, not the rest of the segment.

use bytes::{Buf, BufMut, Bytes};
use std::sync::Arc;
use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"FWR1";
/// Magic, length and checksum.
pub const HEADER_LEN: usize = 12;

/// What a record says, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the request's last byte arrived (nanoseconds since the Unix epoch).
    pub received_ns: u64,
    /// Events it held when it was accepted (what a drop of it loses).
    pub events: u32,
    pub peer: Arc<str>,
    /// The client's host name, when it was looked up (`input.source_hostname_key`).
    pub host: Option<Arc<str>>,
    /// The requests, back to back, each a complete msgpack value: contiguous, so that
    /// requests read together can be published together again.
    pub region: Bytes,
    /// Where each request ends in `region`.
    pub ends: Vec<usize>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BadRecord {
    #[error("no record magic")]
    Magic,
    #[error("record length {0} over the cap")]
    TooLong(usize),
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record payload malformed")]
    Malformed,
}

/// Who sent a record's requests.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub peer: &'a str,
    pub host: Option<&'a str>,
}

/// The bytes a record of these frames takes on disk.
pub fn encoded_len(from: Sender<'_>, frames: &[Bytes]) -> usize {
    HEADER_LEN + payload_len(from, frames)
}

/// A name as stored: at most 64 KiB (peers and host names are far shorter).
fn short(name: &str) -> &[u8] {
    &name.as_bytes()[..name.len().min(u16::MAX as usize)]
}

fn payload_len(from: Sender<'_>, frames: &[Bytes]) -> usize {
    let names = short(from.peer).len() + from.host.map_or(0, |h| short(h).len());
    8 + 4 + 2 + 2 + names + 4 + frames.iter().map(|f| 4 + f.len()).sum::<usize>()
}

/// Appends one record to `out`. `None` when it cannot be framed (a payload over 4 GiB,
/// which the request caps rule out).
pub fn encode(
    out: &mut Vec<u8>,
    received_ns: u64,
    events: u32,
    from: Sender<'_>,
    frames: &[Bytes],
) -> Option<()> {
    let len = u32::try_from(payload_len(from, frames)).ok()?;
    let count = u32::try_from(frames.len()).ok()?;
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.put_u32(len);
    out.put_u32(0); // the checksum, filled in below
    out.put_u64(received_ns);
    out.put_u32(events);
    for name in [Some(from.peer), from.host] {
        let name = name.map_or(&b""[..], short);
        out.put_u16(name.len() as u16);
        out.extend_from_slice(name);
    }
    out.put_u32(count);
    for frame in frames {
        out.put_u32(u32::try_from(frame.len()).ok()?);
    }
    for frame in frames {
        out.extend_from_slice(frame);
    }
    let crc = checksum(&out[start + 4..start + 8], &out[start + HEADER_LEN..]);
    out[start + 8..start + HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    Some(())
}

fn checksum(length: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(length);
    h.update(payload);
    h.finalize()
}

/// The header of a record: its payload length and checksum, once the magic and the
/// length cap are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub payload_len: usize,
    crc: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN], max_payload: usize) -> Result<Header, BadRecord> {
        if b[..4] != MAGIC {
            return Err(BadRecord::Magic);
        }
        let payload_len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        if payload_len > max_payload {
            return Err(BadRecord::TooLong(payload_len));
        }
        let crc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        Ok(Header { payload_len, crc })
    }

    /// The whole record's length on disk.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// True when `payload` is this record's (its checksum matches).
    pub fn verify(&self, payload: &[u8]) -> bool {
        let length = (self.payload_len as u32).to_be_bytes();
        payload.len() == self.payload_len && checksum(&length, payload) == self.crc
    }

    /// Checks the payload against the checksum and decodes it.
    pub fn decode(&self, payload: Bytes) -> Result<Record, BadRecord> {
        if !self.verify(&payload) {
            return Err(BadRecord::Checksum);
        }
        decode_payload(payload).ok_or(BadRecord::Malformed)
    }
}

fn decode_payload(mut p: Bytes) -> Option<Record> {
    if p.len() < 8 + 4 + 2 {
        return None;
    }
    let received_ns = p.get_u64();
    let events = p.get_u32();
    let mut names = [None, None];
    for name in &mut names {
        if p.len() < 2 {
            return None;
        }
        let len = p.get_u16() as usize;
        if p.len() < len {
            return None;
        }
        let text = p.split_to(len);
        *name = (!text.is_empty()).then(|| Arc::<str>::from(String::from_utf8_lossy(&text)));
    }
    let [peer, host] = names;
    if p.len() < 4 {
        return None;
    }
    let count = p.get_u32() as usize;
    // Each frame needs at least its length field: a count that cannot fit is damage,
    // not a reason to reserve room.
    if count > p.len() / 4 {
        return None;
    }
    let mut ends = Vec::with_capacity(count);
    let mut end = 0usize;
    for _ in 0..count {
        end = end.checked_add(p.get_u32() as usize)?;
        ends.push(end);
    }
    (end == p.len()).then_some(Record {
        received_ns,
        events,
        peer: peer.unwrap_or_else(|| "".into()),
        host,
        region: p,
        ends,
    })
}

/// Where the next record magic starts in `b`, if anywhere.
pub fn find_magic(b: &[u8]) -> Option<usize> {
    b.windows(MAGIC.len()).position(|w| w == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> (Vec<u8>, Record) {
        let frames = vec![
            Bytes::from_static(b"\x93\xa1a\x01\x80"),
            Bytes::from_static(b"\xc0"),
        ];
        let mut out = Vec::new();
        let from = Sender {
            peer: "127.0.0.1:5",
            host: Some("client.example"),
        };
        encode(&mut out, 1_700_000_000_123, 2, from, &frames).unwrap();
        assert_eq!(out.len(), encoded_len(from, &frames));
        let rec = Record {
            received_ns: 1_700_000_000_123,
            events: 2,
            peer: "127.0.0.1:5".into(),
            host: Some("client.example".into()),
            region: Bytes::from_static(b"\x93\xa1a\x01\x80\xc0"),
            ends: vec![5, 6],
        };
        (out, rec)
    }

    fn read(b: &[u8]) -> Result<Record, BadRecord> {
        let header = Header::parse(b[..HEADER_LEN].try_into().unwrap(), 1 << 20)?;
        header.decode(Bytes::copy_from_slice(&b[HEADER_LEN..header.record_len()]))
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let (bytes, rec) = record();
        assert_eq!(read(&bytes), Ok(rec));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let (bytes, _) = record();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            let result = std::panic::catch_unwind(|| {
                let Ok(header) = Header::parse(damaged[..HEADER_LEN].try_into().unwrap(), 1 << 20)
                else {
                    return false;
                };
                let end = header.record_len().min(damaged.len());
                header
                    .decode(Bytes::copy_from_slice(&damaged[HEADER_LEN..end]))
                    .is_ok()
            });
            assert_eq!(result.ok(), Some(false), "byte {i} flipped went unnoticed");
        }
    }

    #[test]
    fn a_long_length_is_refused_before_reading() {
        let (mut bytes, _) = record();
        bytes[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let header = Header::parse(bytes[..HEADER_LEN].try_into().unwrap(), 1 << 20);
        assert_eq!(header, Err(BadRecord::TooLong(u32::MAX as usize)));
    }

    #[test]
    fn the_magic_is_found_after_damage() {
        let (bytes, _) = record();
        let mut stream = b"garbage".to_vec();
        stream.extend_from_slice(&bytes);
        assert_eq!(find_magic(&stream), Some(7));
        assert_eq!(find_magic(b"FWR"), None);
    }
}
