//! Finds where the next complete msgpack value ends, validating it on the way.
//!
//! The scanner is resumable: when the buffer holds only part of a value it returns
//! `Ok(None)` and remembers how far it got, so the next call after more bytes arrive
//! continues from there instead of re-reading a large frame from byte 0. It never
//! allocates per element: it keeps one counter per open array or map, and the number of
//! open containers is capped by `max_depth`.

use super::msgpack::{header, Header};
use thiserror::Error;

/// Why a byte stream is not a msgpack value the gateway will accept.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScanError {
    #[error("reserved msgpack byte 0xc1 at offset {0}")]
    Reserved(usize),
    #[error(
        "value declares {declared} bytes at offset {offset}, over the frame cap of {cap} bytes"
    )]
    TooLarge {
        offset: usize,
        declared: u64,
        cap: usize,
    },
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
}

/// Caps applied while scanning.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest complete value, in bytes.
    pub max_size: usize,
    /// Deepest nesting of arrays and maps.
    pub max_depth: usize,
}

/// Resumable scanner for one msgpack value at a time.
#[derive(Debug)]
pub struct Scanner {
    limits: Limits,
    /// Offset of the first byte not yet accounted for.
    pos: usize,
    /// Items still expected in each open container, innermost last.
    open: Vec<u64>,
    /// The buffer length the last `Ok(None)` waits for, when a declared length says.
    awaiting: usize,
}

impl Scanner {
    pub fn new(limits: Limits) -> Self {
        Scanner {
            limits,
            pos: 0,
            open: Vec::new(),
            awaiting: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes of the value in progress that have been validated so far.
    pub fn progress(&self) -> usize {
        self.pos
    }

    /// Forgets any partial progress; call when the buffer is replaced.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
        self.awaiting = 0;
    }

    /// How long the buffer must be, at least, before the value in progress can be
    /// complete: as far as a declared str, bin or ext length reaches, else the bytes
    /// validated so far. Lets the reader make room for a large value at once.
    pub fn awaiting(&self) -> usize {
        self.awaiting.max(self.pos)
    }

    /// Returns the length of the complete value at the start of `buf`, `None` when more
    /// bytes are needed. `buf` must start with the same bytes as on the previous call
    /// (it may only have grown) until a value is returned or the scanner is reset.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ScanError> {
        loop {
            let Some(h) = header(&buf[self.pos.min(buf.len())..]) else {
                return Ok(None);
            };
            let h = match h {
                Ok(h) => h,
                Err(()) => {
                    let at = self.pos;
                    self.reset();
                    return Err(ScanError::Reserved(at));
                }
            };
            let done = match h {
                Header::Scalar { len } => {
                    let end = self.pos as u64 + len;
                    if end > self.limits.max_size as u64 {
                        return Err(self.too_large(end));
                    }
                    if (buf.len() as u64) < end {
                        self.awaiting = end as usize;
                        return Ok(None);
                    }
                    self.pos = end as usize;
                    self.finish_item()
                }
                Header::Container { header_len, items } => {
                    let body_start = self.pos as u64 + header_len as u64;
                    // Every item takes at least one byte: a count that cannot fit under
                    // the cap is rejected before anything is reserved for it.
                    if body_start + items > self.limits.max_size as u64 {
                        return Err(self.too_large(body_start + items));
                    }
                    self.pos = body_start as usize;
                    if items == 0 {
                        self.finish_item()
                    } else {
                        if self.open.len() >= self.limits.max_depth {
                            let depth = self.limits.max_depth;
                            self.reset();
                            return Err(ScanError::TooDeep(depth));
                        }
                        self.open.push(items);
                        false
                    }
                }
            };
            if done {
                let len = self.pos;
                self.reset();
                return Ok(Some(len));
            }
        }
    }

    fn too_large(&mut self, declared: u64) -> ScanError {
        let offset = self.pos;
        self.reset();
        ScanError::TooLarge {
            offset,
            declared,
            cap: self.limits.max_size,
        }
    }

    /// Accounts for one finished item; true when that finished the top-level value.
    fn finish_item(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> Scanner {
        Scanner::new(Limits {
            max_size: 1 << 20,
            max_depth: 8,
        })
    }

    #[test]
    fn scalars_and_containers() {
        let mut s = scanner();
        assert_eq!(s.scan(&[0x01, 0xff]), Ok(Some(1)));
        assert_eq!(s.scan(&[0xc0]), Ok(Some(1)));
        assert_eq!(s.scan(&[0x92, 0x01, 0xa1, b'x', 0x00]), Ok(Some(4)));
        assert_eq!(s.scan(&[0x81, 0xa1, b'k', 0x90]), Ok(Some(4)));
        assert_eq!(s.scan(&[0xd7, 0, 1, 2, 3, 4, 5, 6, 7, 8]), Ok(Some(10)));
        assert_eq!(s.scan(&[0xc7, 2, 0, 1, 2]), Ok(Some(5)));
        assert_eq!(s.scan(&[0xdb, 0, 0, 0, 1, b'z']), Ok(Some(6)));
    }

    #[test]
    fn awaits_the_declared_end_of_a_large_payload() {
        // ["tag", bin32 of 1000 bytes]: the end is known once the bin header is in.
        let mut value = vec![0x92, 0xa3, b't', b'a', b'g', 0xc6, 0, 0, 0x03, 0xe8];
        value.resize(value.len() + 1000, 7);
        let mut s = scanner();
        assert_eq!(s.scan(&value[..3]), Ok(None));
        assert_eq!(s.awaiting(), 5);
        assert_eq!(s.scan(&value[..12]), Ok(None));
        assert_eq!(s.awaiting(), value.len());
        assert_eq!(s.scan(&value[..900]), Ok(None));
        assert_eq!(s.awaiting(), value.len());
        assert_eq!(s.scan(&value), Ok(Some(value.len())));
        assert_eq!(s.awaiting(), 0);
    }

    #[test]
    fn resumes_byte_by_byte() {
        let value = [
            0x93, 0xa3, b't', b'a', b'g', 0xce, 0, 0, 0, 9, 0x81, 0xa1, b'k', 0xc4, 2, 1, 2,
        ];
        let mut s = scanner();
        for end in 0..value.len() {
            assert_eq!(s.scan(&value[..end]), Ok(None), "prefix of {end}");
        }
        assert_eq!(s.scan(&value), Ok(Some(value.len())));
        assert_eq!(s.progress(), 0);
    }

    #[test]
    fn rejects_reserved_byte() {
        assert_eq!(scanner().scan(&[0x91, 0xc1]), Err(ScanError::Reserved(1)));
    }

    #[test]
    fn rejects_huge_declared_lengths_without_the_bytes() {
        let mut s = scanner();
        assert!(matches!(
            s.scan(&[0xc6, 0xff, 0xff, 0xff, 0xff]),
            Err(ScanError::TooLarge { .. })
        ));
        assert!(matches!(
            s.scan(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(ScanError::TooLarge { .. })
        ));
        assert!(matches!(
            s.scan(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            Err(ScanError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_deep_nesting() {
        let deep = vec![0x91u8; 100_000];
        assert_eq!(scanner().scan(&deep), Err(ScanError::TooDeep(8)));
        let ok = [0x91, 0x91, 0x91, 0x90];
        assert_eq!(scanner().scan(&ok), Ok(Some(4)));
    }
}
