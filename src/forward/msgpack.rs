//! The msgpack span walker of the data plane: type headers and a cursor that reads
//! values as byte ranges of the buffer, without building a `Value` or copying.

use std::ops::Range;
use thiserror::Error;

/// What a value's first bytes say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A value with no children, `len` bytes long including its header.
    Scalar { len: u64 },
    /// An array or map: `items` children (two per map entry) follow the header.
    Container { header_len: usize, items: u64 },
}

/// Reads the header at the start of `b`. `None` when `b` is too short to tell,
/// `Some(Err(()))` for the reserved byte 0xc1.
///
/// Always inlined: it runs once per value in every walk, and out of line its result
/// goes through memory (inlining it saves 6-10% of the instructions per event in
/// Forward and Message mode).
#[inline(always)]
pub fn header(b: &[u8]) -> Option<Result<Header, ()>> {
    let first = *b.first()?;
    let scalar = |len: u64| Some(Ok(Header::Scalar { len }));
    // Length-prefixed values: header size and the width of the length field.
    let sized = |width: usize, extra: u64| -> Option<Result<Header, ()>> {
        let n = be_uint(b.get(1..1 + width)?);
        Some(Ok(Header::Scalar {
            len: 1 + width as u64 + extra + n,
        }))
    };
    let counted = |width: usize, per_item: u64| -> Option<Result<Header, ()>> {
        let n = be_uint(b.get(1..1 + width)?);
        Some(Ok(Header::Container {
            header_len: 1 + width,
            items: n * per_item,
        }))
    };
    match first {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => scalar(1),
        0x80..=0x8f => Some(Ok(Header::Container {
            header_len: 1,
            items: u64::from(first & 0x0f) * 2,
        })),
        0x90..=0x9f => Some(Ok(Header::Container {
            header_len: 1,
            items: u64::from(first & 0x0f),
        })),
        0xa0..=0xbf => scalar(1 + u64::from(first & 0x1f)),
        0xc1 => Some(Err(())),
        0xc4 => sized(1, 0),
        0xc5 => sized(2, 0),
        0xc6 => sized(4, 0),
        0xc7 => sized(1, 1),
        0xc8 => sized(2, 1),
        0xc9 => sized(4, 1),
        0xca => scalar(5),
        0xcb => scalar(9),
        0xcc | 0xd0 => scalar(2),
        0xcd | 0xd1 => scalar(3),
        0xce | 0xd2 => scalar(5),
        0xcf | 0xd3 => scalar(9),
        0xd4 => scalar(3),
        0xd5 => scalar(4),
        0xd6 => scalar(6),
        0xd7 => scalar(10),
        0xd8 => scalar(18),
        0xd9 => sized(1, 0),
        0xda => sized(2, 0),
        0xdb => sized(4, 0),
        0xdc => counted(2, 1),
        0xdd => counted(4, 1),
        0xde => counted(2, 2),
        0xdf => counted(4, 2),
    }
}

#[inline]
fn be_uint(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// A value the cursor could not read as the caller expected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    #[error("value ends past the end of its buffer")]
    Truncated,
    #[error("reserved msgpack byte 0xc1")]
    Reserved,
    #[error("expected {expected}, found {found}")]
    Type {
        expected: &'static str,
        found: &'static str,
    },
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
}

/// The deepest nesting `Cursor::skip_capped` follows itself, in a fixed array rather than
/// a heap stack: deeper values are rare, and its callers leave them to the scanner.
pub const CAPPED_SKIP_DEPTH: usize = 16;

/// The broad kind of a value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nil,
    Bool,
    Int,
    Float,
    Str,
    Bin,
    Array,
    Map,
    Ext,
    Reserved,
}

impl Kind {
    #[inline]
    pub fn of(first: u8) -> Kind {
        match first {
            0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => Kind::Int,
            0x80..=0x8f | 0xde | 0xdf => Kind::Map,
            0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
            0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
            0xc0 => Kind::Nil,
            0xc1 => Kind::Reserved,
            0xc2 | 0xc3 => Kind::Bool,
            0xc4..=0xc6 => Kind::Bin,
            0xc7..=0xc9 | 0xd4..=0xd8 => Kind::Ext,
            0xca | 0xcb => Kind::Float,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Nil => "nil",
            Kind::Bool => "boolean",
            Kind::Int => "integer",
            Kind::Float => "float",
            Kind::Str => "string",
            Kind::Bin => "binary",
            Kind::Array => "array",
            Kind::Map => "map",
            Kind::Ext => "extension",
            Kind::Reserved => "reserved byte 0xc1",
        }
    }
}

/// A number read from an int or float value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

/// A cursor over a buffer of msgpack values. Every read is bounds-checked, so a buffer
/// that was never scanned (or lies) yields an error, never a panic.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn peek_kind(&self) -> Result<Kind, ReadError> {
        self.buf
            .get(self.pos)
            .map(|&b| Kind::of(b))
            .ok_or(ReadError::Truncated)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let end = self.pos.checked_add(n).ok_or(ReadError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(ReadError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, ReadError> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    fn uint(&mut self, width: usize) -> Result<u64, ReadError> {
        Ok(be_uint(self.take(width)?))
    }

    fn mismatch(&self, expected: &'static str) -> ReadError {
        match self.peek_kind() {
            Ok(k) => ReadError::Type {
                expected,
                found: k.name(),
            },
            Err(e) => e,
        }
    }

    /// Reads an array header and returns its item count.
    #[inline]
    pub fn array_len(&mut self) -> Result<u64, ReadError> {
        let b = *self.buf.get(self.pos).ok_or(ReadError::Truncated)?;
        match b {
            0x90..=0x9f => {
                self.pos += 1;
                Ok(u64::from(b & 0x0f))
            }
            0xdc => {
                self.pos += 1;
                self.uint(2)
            }
            0xdd => {
                self.pos += 1;
                self.uint(4)
            }
            _ => Err(self.mismatch("array")),
        }
    }

    /// Reads a map header and returns its entry count.
    #[inline]
    pub fn map_len(&mut self) -> Result<u64, ReadError> {
        let b = *self.buf.get(self.pos).ok_or(ReadError::Truncated)?;
        match b {
            0x80..=0x8f => {
                self.pos += 1;
                Ok(u64::from(b & 0x0f))
            }
            0xde => {
                self.pos += 1;
                self.uint(2)
            }
            0xdf => {
                self.pos += 1;
                self.uint(4)
            }
            _ => Err(self.mismatch("map")),
        }
    }

    /// Reads a str or bin value and returns the range of its payload.
    #[inline]
    pub fn bytes(&mut self) -> Result<Range<usize>, ReadError> {
        match self.string_or_binary()? {
            Some((payload, _)) => Ok(payload),
            None => Err(self.mismatch("string or binary")),
        }
    }

    /// Reads a str or bin value when one is next: the range of its payload and whether
    /// it is a str. `Ok(None)`, with nothing consumed, when the next value is neither.
    #[inline]
    pub fn string_or_binary(&mut self) -> Result<Option<(Range<usize>, bool)>, ReadError> {
        let b = *self.buf.get(self.pos).ok_or(ReadError::Truncated)?;
        let (is_str, width) = match b {
            0xa0..=0xbf => {
                let start = self.pos + 1;
                let end = start + usize::from(b & 0x1f);
                if end > self.buf.len() {
                    return Err(ReadError::Truncated);
                }
                self.pos = end;
                return Ok(Some((start..end, true)));
            }
            0xd9 => (true, 1),
            0xda => (true, 2),
            0xdb => (true, 4),
            0xc4 => (false, 1),
            0xc5 => (false, 2),
            0xc6 => (false, 4),
            _ => return Ok(None),
        };
        let at = self.pos;
        self.pos += 1;
        let payload = usize::try_from(self.uint(width)?)
            .map_err(|_| ReadError::Truncated)
            .and_then(|len| {
                let start = self.pos;
                self.take(len)?;
                Ok(start..start + len)
            });
        match payload {
            Ok(payload) => Ok(Some((payload, is_str))),
            Err(e) => {
                self.pos = at;
                Err(e)
            }
        }
    }

    /// Reads a str value only (not bin) and returns the range of its payload.
    #[inline]
    pub fn str(&mut self) -> Result<Range<usize>, ReadError> {
        match self.peek_kind()? {
            Kind::Str => self.bytes(),
            _ => Err(self.mismatch("string")),
        }
    }

    /// Reads an ext value and returns its type code and the range of its data.
    pub fn ext(&mut self) -> Result<(i8, Range<usize>), ReadError> {
        let b = *self.buf.get(self.pos).ok_or(ReadError::Truncated)?;
        let len = match b {
            0xd4 => 1,
            0xd5 => 2,
            0xd6 => 4,
            0xd7 => 8,
            0xd8 => 16,
            0xc7..=0xc9 => {
                let width = match b {
                    0xc7 => 1,
                    0xc8 => 2,
                    _ => 4,
                };
                self.pos += 1;
                let len = self.uint(width)?;
                usize::try_from(len).map_err(|_| ReadError::Truncated)?
            }
            _ => return Err(self.mismatch("extension")),
        };
        if (0xd4..=0xd8).contains(&b) {
            self.pos += 1;
        }
        let code = self.byte()? as i8;
        let start = self.pos;
        self.take(len)?;
        Ok((code, start..start + len))
    }

    /// Reads an integer or float.
    pub fn number(&mut self) -> Result<Number, ReadError> {
        let b = *self.buf.get(self.pos).ok_or(ReadError::Truncated)?;
        let n = match b {
            0x00..=0x7f => {
                self.pos += 1;
                Number::Unsigned(u64::from(b))
            }
            0xe0..=0xff => {
                self.pos += 1;
                Number::Signed(i64::from(b as i8))
            }
            0xcc..=0xcf => {
                self.pos += 1;
                Number::Unsigned(self.uint(1 << (b - 0xcc))?)
            }
            0xd0..=0xd3 => {
                self.pos += 1;
                let width = 1usize << (b - 0xd0);
                let raw = self.uint(width)?;
                let shift = 64 - 8 * width as u32;
                Number::Signed(((raw << shift) as i64) >> shift)
            }
            0xca => {
                self.pos += 1;
                Number::Float(f64::from(f32::from_bits(self.uint(4)? as u32)))
            }
            0xcb => {
                self.pos += 1;
                Number::Float(f64::from_bits(self.uint(8)?))
            }
            _ => return Err(self.mismatch("number")),
        };
        Ok(n)
    }

    /// Reads a boolean.
    pub fn boolean(&mut self) -> Result<bool, ReadError> {
        match self.buf.get(self.pos) {
            Some(0xc2) => {
                self.pos += 1;
                Ok(false)
            }
            Some(0xc3) => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(self.mismatch("boolean")),
        }
    }

    /// Skips one whole value and returns the range it spanned. Iterative: it only keeps
    /// a count of values still to skip, so nesting depth costs no stack.
    #[inline]
    pub fn skip(&mut self) -> Result<Range<usize>, ReadError> {
        let start = self.pos;
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            pending += self.step()?;
        }
        Ok(start..self.pos)
    }

    /// Moves past the next value's header, and a scalar's payload; returns how many
    /// items the value holds (0 for a scalar), which follow at the cursor.
    #[inline(always)]
    fn step(&mut self) -> Result<u64, ReadError> {
        let h = header(&self.buf[self.pos.min(self.buf.len())..])
            .ok_or(ReadError::Truncated)?
            .map_err(|()| ReadError::Reserved)?;
        match h {
            Header::Scalar { len } => {
                let len = usize::try_from(len).map_err(|_| ReadError::Truncated)?;
                self.take(len)?;
                Ok(0)
            }
            Header::Container { header_len, items } => {
                self.take(header_len)?;
                // More items than bytes left cannot be real: stop before looping.
                if items > (self.buf.len() - self.pos) as u64 {
                    return Err(ReadError::Truncated);
                }
                Ok(items)
            }
        }
    }

    /// Skips one whole value like `skip`, also enforcing the scanner's depth rule: at
    /// most `max_depth` non-empty arrays or maps open at once, the value itself counting
    /// as one. Values nested deeper than `CAPPED_SKIP_DEPTH` fail with `TooDeep` too,
    /// whatever the cap, so the caller must treat `TooDeep` as "use the scanner".
    #[inline]
    pub fn skip_capped(&mut self, max_depth: usize) -> Result<Range<usize>, ReadError> {
        let start = self.pos;
        let cap = max_depth.min(CAPPED_SKIP_DEPTH);
        // Items still to skip in each open non-empty container, innermost last.
        let mut open = [0u64; CAPPED_SKIP_DEPTH];
        let mut depth = 0;
        loop {
            let items = self.step()?;
            if items > 0 {
                if depth == cap {
                    return Err(ReadError::TooDeep(max_depth));
                }
                open[depth] = items;
                depth += 1;
                continue;
            }
            // One item finished: close every container it was the last item of.
            loop {
                if depth == 0 {
                    return Ok(start..self.pos);
                }
                open[depth - 1] -= 1;
                if open[depth - 1] > 0 {
                    break;
                }
                depth -= 1;
            }
        }
    }

    /// True when the next value is nil, consuming it.
    #[inline]
    pub fn nil(&mut self) -> bool {
        if self.buf.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_every_width() {
        let cases: &[(&[u8], Number)] = &[
            (&[0x05], Number::Unsigned(5)),
            (&[0xff], Number::Signed(-1)),
            (&[0xcc, 0xff], Number::Unsigned(255)),
            (&[0xcd, 1, 0], Number::Unsigned(256)),
            (
                &[0xce, 0x6b, 0x07, 0x8e, 0x25],
                Number::Unsigned(0x6b07_8e25),
            ),
            (&[0xd0, 0x80], Number::Signed(-128)),
            (&[0xd2, 0x6b, 0x07, 0x8e, 0x25], Number::Signed(0x6b07_8e25)),
            (&[0xd2, 0xff, 0xff, 0xff, 0xfe], Number::Signed(-2)),
            (
                &[0xcb, 0x41, 0xd9, 0x54, 0xfc, 0x40, 0x20, 0x00, 0x00],
                Number::Float(1_700_000_000.5),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(Cursor::new(bytes).number().unwrap(), *want, "{bytes:x?}");
        }
    }

    #[test]
    fn strings_and_skip() {
        let buf = [0x92, 0xd9, 3, b'a', b'b', b'c', 0x81, 0xa1, b'k', 0xc0];
        let mut c = Cursor::new(&buf);
        assert_eq!(c.array_len().unwrap(), 2);
        assert_eq!(c.bytes().unwrap(), 3..6);
        assert_eq!(c.skip().unwrap(), 6..10);
        assert!(c.is_empty());
    }

    #[test]
    fn lying_counts_are_truncation_not_loops() {
        let buf = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Cursor::new(&buf).skip(), Err(ReadError::Truncated));
        assert_eq!(
            Cursor::new(&[0xdb, 0xff, 0xff, 0xff, 0xff]).bytes(),
            Err(ReadError::Truncated)
        );
    }

    #[test]
    fn capped_skip_counts_non_empty_containers_only() {
        // [[1], {}, []]: two non-empty levels; the empty ones do not count.
        let buf = [0x93, 0x91, 0x01, 0x80, 0x90, 0xc0];
        assert_eq!(Cursor::new(&buf).skip_capped(2), Ok(0..5));
        assert_eq!(Cursor::new(&buf).skip_capped(1), Err(ReadError::TooDeep(1)));
        assert_eq!(Cursor::new(&[0x01]).skip_capped(0), Ok(0..1));
        assert_eq!(Cursor::new(&[0x90]).skip_capped(0), Ok(0..1));
        assert_eq!(
            Cursor::new(&[0x91, 0x01]).skip_capped(0),
            Err(ReadError::TooDeep(0))
        );
    }

    #[test]
    fn capped_skip_agrees_with_skip_within_its_depth() {
        // {"k": [1, {"x": "yz"}], "n": nil} followed by a byte that is not skipped.
        let buf = [
            0x82, 0xa1, b'k', 0x92, 0x01, 0x81, 0xa1, b'x', 0xa2, b'y', b'z', 0xa1, b'n', 0xc0,
            0x07,
        ];
        let mut capped = Cursor::new(&buf);
        assert_eq!(capped.skip_capped(3), Ok(0..14));
        assert_eq!(capped.pos(), 14);
        assert_eq!(Cursor::new(&buf).skip(), Ok(0..14));
        assert_eq!(Cursor::new(&buf).skip_capped(2), Err(ReadError::TooDeep(2)));
    }

    #[test]
    fn capped_skip_stops_at_its_own_depth_whatever_the_cap() {
        let mut deep = vec![0x91u8; CAPPED_SKIP_DEPTH];
        deep.push(0x01);
        assert_eq!(
            Cursor::new(&deep).skip_capped(usize::MAX),
            Ok(0..deep.len())
        );
        deep.insert(0, 0x91);
        assert_eq!(
            Cursor::new(&deep).skip_capped(usize::MAX),
            Err(ReadError::TooDeep(usize::MAX))
        );
    }

    #[test]
    fn capped_skip_rejects_truncated_and_reserved() {
        let truncated: &[&[u8]] = &[
            &[],
            &[0x92, 0x01],
            &[0xa3, b'a'],
            &[0x81, 0xa1],
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
        ];
        for buf in truncated {
            assert_eq!(
                Cursor::new(buf).skip_capped(8),
                Err(ReadError::Truncated),
                "{buf:x?}"
            );
        }
        assert_eq!(
            Cursor::new(&[0x92, 0x01, 0xc1]).skip_capped(8),
            Err(ReadError::Reserved)
        );
    }

    #[test]
    fn string_or_binary_reads_either_and_leaves_the_rest() {
        let buf = [0xa2, b'h', b'i', 0xc4, 1, b'b', 0xd9, 1, b's', 0x01];
        let mut c = Cursor::new(&buf);
        assert_eq!(c.string_or_binary(), Ok(Some((1..3, true))));
        assert_eq!(c.string_or_binary(), Ok(Some((5..6, false))));
        assert_eq!(c.string_or_binary(), Ok(Some((8..9, true))));
        assert_eq!(c.string_or_binary(), Ok(None));
        assert_eq!(c.pos(), 9, "an integer is not consumed");
        for short in [
            &[][..],
            &[0xa2, b'h'],
            &[0xda, 0],
            &[0xc6, 0, 0, 0, 2, b'x'],
        ] {
            let mut c = Cursor::new(short);
            assert_eq!(
                c.string_or_binary(),
                Err(ReadError::Truncated),
                "{short:x?}"
            );
        }
    }
}
