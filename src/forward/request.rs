//! One forward-protocol request, decoded as ranges of its frame: the tag, the entries in
//! whichever mode the client chose, and the options. Nothing is copied.

use super::msgpack::{Cursor, Kind, ReadError};
use super::scan::{Limits, Scanner};
use super::time::{read_time, EventTime, TimeError};
use std::ops::Range;
use thiserror::Error;

/// How the entries of a PackedForward request are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The option map of a request (all fields optional on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The whole msgpack value of `chunk`, header included, to echo in the ack.
    pub chunk: Option<Range<usize>>,
    pub compressed: Compression,
    /// `fluent_signal`: 0 logs, 1 metrics, 2 traces.
    pub signal: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk: None,
            compressed: Compression::None,
            signal: 0,
        }
    }
}

/// The events of a request, in the mode the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entries {
    /// Message mode: a single event.
    Message(Result<Event, EventError>),
    /// Forward mode: `count` `[time, record]` arrays starting at `start` of the frame.
    Forward { start: usize, count: u64 },
    /// PackedForward: a msgpack stream of entries in this range of the frame
    /// (compressed as the options say).
    Packed(Range<usize>),
}

/// A decoded request; all ranges index the frame it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub tag: Range<usize>,
    pub entries: Entries,
    pub options: Options,
}

/// One event: its time and the range of its record (a msgpack map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time: EventTime,
    pub record: Range<usize>,
}

/// A request the gateway cannot accept; the connection is closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    #[error("request is a {0}, not an array")]
    NotArray(&'static str),
    #[error("request array has {0} elements")]
    Arity(u64),
    #[error("tag is a {0}, not a string")]
    TagNotString(&'static str),
    #[error("second element is a {0}: not a time, entries array or packed entries")]
    BadEntries(&'static str),
    #[error("option is a {0}, not a map")]
    OptionNotMap(&'static str),
    #[error("unsupported compression {0:?}")]
    Compression(String),
    #[error("malformed request: {0}")]
    Malformed(#[from] ReadError),
}

/// An event the gateway skips (and counts); the rest of its request goes on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EventError {
    #[error("entry is a {0}, not a [time, record] array")]
    NotEntry(&'static str),
    #[error("bad time: {0}")]
    Time(#[from] TimeError),
    #[error("record is a {0}, not a map")]
    RecordNotMap(&'static str),
    #[error("malformed entry: {0}")]
    Malformed(#[from] ReadError),
    #[error("packed entries are not valid msgpack: {0}")]
    Packed(String),
}

/// Decodes one complete frame (as found by the scanner) into a request.
pub fn decode_request(frame: &[u8]) -> Result<Request, RequestError> {
    let mut c = Cursor::new(frame);
    let kind = c.peek_kind()?;
    if kind != Kind::Array {
        return Err(RequestError::NotArray(kind.name()));
    }
    let len = c.array_len()?;
    if len < 2 {
        return Err(RequestError::Arity(len));
    }
    let tag_kind = c.peek_kind()?;
    if tag_kind != Kind::Str {
        return Err(RequestError::TagNotString(tag_kind.name()));
    }
    let tag = c.str()?;
    let (entries, option_at) = match c.peek_kind()? {
        Kind::Array if !is_v15_time(&c) => {
            let count = c.array_len()?;
            let start = c.pos();
            // Only an option after the entries needs their end; the frame was scanned
            // whole, so the entries themselves are read (and checked) later.
            if len > 2 {
                for _ in 0..count {
                    c.skip()?;
                }
            }
            (Entries::Forward { start, count }, 2)
        }
        Kind::Str | Kind::Bin => (Entries::Packed(c.bytes()?), 2),
        Kind::Int | Kind::Float | Kind::Ext | Kind::Nil | Kind::Array => {
            if len < 3 {
                return Err(RequestError::Arity(len));
            }
            let event = read_time(&mut c, frame)
                .map_err(EventError::from)
                .and_then(|time| {
                    let record = match len {
                        // Nothing follows the record: it runs to the end of the frame (one
                        // complete value, as the scanner splits them), so it is walked
                        // only once, by the router, instead of twice.
                        3 if c.peek_kind() == Ok(Kind::Map) => c.pos()..frame.len(),
                        _ => read_record(&mut c)?,
                    };
                    Ok(Event { time, record })
                });
            if event.is_err() {
                // Move past whatever the time and record were, to reach the option.
                c = Cursor::new(frame);
                c.array_len()?;
                c.skip()?;
                c.skip()?;
                c.skip()?;
            }
            (Entries::Message(event), 3)
        }
        other => return Err(RequestError::BadEntries(other.name())),
    };
    let options = if len > option_at {
        read_options(&mut c, frame)?
    } else {
        Options::default()
    };
    Ok(Request {
        tag,
        entries,
        options,
    })
}

/// A Message-mode request may carry the v1.5 time `[EventTime, {metadata}]` in the
/// place where Forward mode has its entries array. A time's first element is a time
/// (EventTime, integer, float or nil); anything else makes it Forward entries, whose
/// bad entries are then skipped one by one.
fn is_v15_time(c: &Cursor<'_>) -> bool {
    let mut probe = c.clone();
    match probe.array_len() {
        Ok(n) if n > 0 => matches!(
            probe.peek_kind(),
            Ok(Kind::Ext | Kind::Int | Kind::Float | Kind::Nil)
        ),
        _ => false,
    }
}

fn read_record(c: &mut Cursor<'_>) -> Result<Range<usize>, EventError> {
    let kind = c.peek_kind()?;
    if kind != Kind::Map {
        c.skip()?;
        return Err(EventError::RecordNotMap(kind.name()));
    }
    Ok(c.skip()?)
}

fn read_options(c: &mut Cursor<'_>, frame: &[u8]) -> Result<Options, RequestError> {
    let mut opts = Options::default();
    if c.nil() {
        return Ok(opts);
    }
    let kind = c.peek_kind()?;
    if kind != Kind::Map {
        return Err(RequestError::OptionNotMap(kind.name()));
    }
    let n = c.map_len()?;
    for _ in 0..n {
        let key = if c.peek_kind()? == Kind::Str {
            Some(c.str()?)
        } else {
            c.skip()?;
            None
        };
        match key.map(|k| &frame[k]) {
            Some(b"chunk") => opts.chunk = Some(c.skip()?),
            Some(b"compressed") => {
                let value = if c.peek_kind()? == Kind::Str {
                    &frame[c.str()?]
                } else {
                    let r = c.skip()?;
                    &frame[r]
                };
                opts.compressed = match value {
                    b"gzip" => Compression::Gzip,
                    b"zstd" => Compression::Zstd,
                    b"text" | b"" => Compression::None,
                    other => {
                        return Err(RequestError::Compression(
                            String::from_utf8_lossy(other).into_owned(),
                        ))
                    }
                };
            }
            Some(b"fluent_signal") => {
                opts.signal = match c.number() {
                    Ok(super::msgpack::Number::Unsigned(n)) => n,
                    _ => {
                        c.skip()?;
                        0
                    }
                }
            }
            _ => {
                c.skip()?;
            }
        }
    }
    Ok(opts)
}

/// Decodes one `[time, record]` entry at the cursor and moves past it, whatever it holds.
fn decode_entry<'a>(c: &mut Cursor<'a>, buf: &'a [u8]) -> Result<Event, EventError> {
    let start = c.pos();
    let result = (|| {
        let kind = c.peek_kind()?;
        if kind != Kind::Array {
            return Err(EventError::NotEntry(kind.name()));
        }
        let n = c.array_len()?;
        if n < 2 {
            return Err(EventError::NotEntry("short array"));
        }
        let time = read_time(c, buf)?;
        let record = read_record(c)?;
        for _ in 2..n {
            c.skip()?;
        }
        Ok(Event { time, record })
    })();
    if result.is_err() {
        *c = Cursor::at(buf, start);
        c.skip()?;
    }
    result
}

/// Reads the head of a `[time, record, ...]` entry when it has the common shape: an
/// array of at least two elements whose time is not an array (so is one scalar value)
/// and reads as a time, and whose record is a map. Returns the time and the element
/// count, with the cursor at the record. `None` for anything else, which
/// `decode_entry` handles (and explains), as it does v1.5 `[time, metadata]` times.
#[inline]
pub fn entry_head(c: &mut Cursor<'_>, buf: &[u8]) -> Option<(EventTime, u64)> {
    if c.peek_kind().ok()? != Kind::Array {
        return None;
    }
    let elements = c.array_len().ok()?;
    if elements < 2 || c.peek_kind().ok()? == Kind::Array {
        return None;
    }
    let time = read_time(c, buf).ok()?;
    if c.peek_kind().ok()? != Kind::Map {
        return None;
    }
    Some((time, elements))
}

/// The events of a Forward-mode request.
pub struct ForwardEvents<'a> {
    cursor: Cursor<'a>,
    buf: &'a [u8],
    left: u64,
}

impl<'a> ForwardEvents<'a> {
    pub fn new(frame: &'a [u8], start: usize, count: u64) -> Self {
        ForwardEvents {
            cursor: Cursor::at(frame, start),
            buf: frame,
            left: count,
        }
    }
}

impl<'a> ForwardEvents<'a> {
    /// Reads the next entry with `read` instead of `next`, when `read` can: it gets a
    /// cursor at the entry and returns `None` to leave the entry to `next`, untouched.
    #[inline]
    pub fn read_with<R>(&mut self, read: impl FnOnce(&mut Cursor<'a>) -> Option<R>) -> Option<R> {
        if self.left == 0 {
            return None;
        }
        let mut c = self.cursor.clone();
        let r = read(&mut c)?;
        self.cursor = c;
        self.left -= 1;
        Some(r)
    }
}

impl Iterator for ForwardEvents<'_> {
    type Item = Result<Event, EventError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = decode_entry(&mut self.cursor, self.buf);
        if let Err(EventError::Malformed(_)) = r {
            // The frame was scanned whole, so this cannot happen; stop rather than loop.
            self.left = 0;
        }
        Some(r)
    }
}

/// The events of a PackedForward entry stream. The stream was never scanned (it was
/// opaque bytes inside a bin or str), so each entry is validated before it is read.
pub struct PackedEvents<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    scanner: Scanner,
}

impl<'a> PackedEvents<'a> {
    pub fn new(buf: &'a [u8], range: Range<usize>, limits: Limits) -> Self {
        PackedEvents {
            buf,
            pos: range.start,
            end: range.end,
            scanner: Scanner::new(limits),
        }
    }
}

impl<'a> PackedEvents<'a> {
    /// Bytes of the stream not read yet.
    pub fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    /// Reads the next entry with `read` instead of `next`, when `read` can: it gets a
    /// cursor at the entry that ends where the packed stream ends, and returns `None` to
    /// leave the entry to `next`, untouched. `read` must accept only entries the scanner
    /// accepts under this stream's limits, so it has to enforce the depth cap itself.
    #[inline]
    pub fn read_with<R>(&mut self, read: impl FnOnce(&mut Cursor<'a>) -> Option<R>) -> Option<R> {
        if self.pos >= self.end {
            return None;
        }
        let mut c = Cursor::at(&self.buf[..self.end], self.pos);
        let r = read(&mut c)?;
        self.pos = c.pos();
        Some(r)
    }
}

impl Iterator for PackedEvents<'_> {
    type Item = Result<Event, EventError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let rest = &self.buf[self.pos..self.end];
        match self.scanner.scan(rest) {
            Ok(Some(n)) => {
                let entry = &self.buf[..self.pos + n];
                let mut c = Cursor::at(entry, self.pos);
                self.pos += n;
                Some(decode_entry(&mut c, entry))
            }
            Ok(None) => {
                self.pos = self.end;
                Some(Err(EventError::Packed(format!(
                    "{} trailing bytes are an incomplete entry",
                    rest.len()
                ))))
            }
            Err(e) => {
                self.pos = self.end;
                self.scanner.reset();
                Some(Err(EventError::Packed(e.to_string())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: [u8; 5] = [0xce, 0x65, 0x53, 0xf1, 0x00]; // 1700000000

    fn message(option: &[u8]) -> Vec<u8> {
        let mut f = vec![if option.is_empty() { 0x93 } else { 0x94 }, 0xa1, b't'];
        f.extend_from_slice(&TIME);
        f.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xa2, b'h', b'i']);
        f.extend_from_slice(option);
        f
    }

    #[test]
    fn message_mode_with_each_option_form() {
        for option in [&[][..], &[0x80], &[0xc0]] {
            let f = message(option);
            let r = decode_request(&f).unwrap();
            assert_eq!(&f[r.tag.clone()], b"t");
            let Entries::Message(Ok(ev)) = r.entries else {
                panic!("not a message: {r:?}")
            };
            assert_eq!(ev.time.secs, 1_700_000_000);
            assert_eq!(f[ev.record.start], 0x81);
            assert_eq!(r.options, Options::default());
        }
    }

    #[test]
    fn chunk_is_kept_byte_for_byte() {
        let f = message(&[
            0x82, 0xa5, b'c', b'h', b'u', b'n', b'k', 0xd9, 2, b'i', b'd', 0xa1, b'x', 0x01,
        ]);
        let r = decode_request(&f).unwrap();
        assert_eq!(&f[r.options.chunk.unwrap()], &[0xd9, 2, b'i', b'd']);
    }

    #[test]
    fn forward_mode_skips_bad_entries_only() {
        let mut f = vec![0x92, 0xa1, b't', 0x93];
        f.push(0x92);
        f.extend_from_slice(&TIME);
        f.extend_from_slice(&[0x80]);
        f.extend_from_slice(&[0x92, 0x01, 0xa1, b'x']); // record is not a map
        f.push(0x92);
        f.extend_from_slice(&TIME);
        f.extend_from_slice(&[0x81, 0xa1, b'k', 0x02]);
        let r = decode_request(&f).unwrap();
        let Entries::Forward { start, count } = r.entries else {
            panic!()
        };
        let events: Vec<_> = ForwardEvents::new(&f, start, count).collect();
        assert_eq!(events.len(), 3);
        assert!(events[0].is_ok());
        assert_eq!(events[1], Err(EventError::RecordNotMap("string")));
        assert!(events[2].is_ok());
    }

    #[test]
    fn v15_time_in_message_mode() {
        let mut f = vec![
            0x93, 0xa1, b't', 0x92, 0xd7, 0x00, 0, 0, 0, 1, 0, 0, 0, 2, 0x80, 0x80,
        ];
        let r = decode_request(&f).unwrap();
        let Entries::Message(Ok(ev)) = r.entries else {
            panic!("{r:?}")
        };
        assert_eq!((ev.time.secs, ev.time.nanos), (1, 2));
        f[3] = 0x90; // an empty Forward array instead
        f.truncate(4);
        f[0] = 0x92;
        assert_eq!(
            decode_request(&f).unwrap().entries,
            Entries::Forward { start: 4, count: 0 }
        );
    }

    #[test]
    fn forward_with_a_bad_first_entry_stays_forward() {
        // ["t", ["x", [1700000000, {"log": "a"}]], {"chunk": "c1"}]
        let mut f = vec![0x93, 0xa1, b't', 0x92, 0xa1, b'x', 0x92];
        f.extend_from_slice(&TIME);
        f.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xa1, b'a']);
        f.extend_from_slice(&[0x81, 0xa5, b'c', b'h', b'u', b'n', b'k', 0xa2, b'c', b'1']);
        let r = decode_request(&f).unwrap();
        let Entries::Forward { start, count } = r.entries else {
            panic!("{r:?}")
        };
        let events: Vec<_> = ForwardEvents::new(&f, start, count).collect();
        assert_eq!(events[0], Err(EventError::NotEntry("string")));
        assert!(events[1].is_ok());
        assert!(r.options.chunk.is_some());
    }

    #[test]
    fn request_errors() {
        assert_eq!(
            decode_request(&[0x01]),
            Err(RequestError::NotArray("integer"))
        );
        assert_eq!(
            decode_request(&[0x93, 0x01, 0x01, 0x80]),
            Err(RequestError::TagNotString("integer"))
        );
        assert_eq!(
            decode_request(&[0x93, 0xa1, b't', 0x80, 0x80]),
            Err(RequestError::BadEntries("map"))
        );
    }

    #[test]
    fn entry_head_takes_the_common_shape_only() {
        let mut entry = vec![0x93];
        entry.extend_from_slice(&TIME);
        entry.extend_from_slice(&[0x80, 0x01]);
        let mut c = Cursor::new(&entry);
        let (time, elements) = entry_head(&mut c, &entry).unwrap();
        assert_eq!((time.secs, elements), (1_700_000_000, 3));
        assert_eq!(c.pos(), 1 + TIME.len(), "cursor at the record");

        let mut v15 = vec![0x92, 0x91];
        v15.extend_from_slice(&TIME);
        v15.push(0x80);
        let mut not_map = vec![0x92];
        not_map.extend_from_slice(&TIME);
        not_map.push(0x90);
        let mut truncated = vec![0x92];
        truncated.extend_from_slice(&TIME[..3]);
        for bytes in [
            &[0x81, 0x01, 0x80][..],
            &[0x91, 0x01],
            &[0x92, 0xa1, b'x', 0x80],
            &v15,
            &not_map,
            &truncated,
        ] {
            assert_eq!(
                entry_head(&mut Cursor::new(bytes), bytes),
                None,
                "{bytes:x?}"
            );
        }
    }

    #[test]
    fn forward_entries_are_walked_in_decode_only_to_reach_an_option() {
        let mut f = vec![0x92, 0xa1, b't', 0x92, 0x92, 0x01, 0x80];
        // Without an option the entries are left to `ForwardEvents`, which stops at the
        // first that is cut short (a scanned frame never has one).
        assert_eq!(
            decode_request(&f).unwrap().entries,
            Entries::Forward { start: 4, count: 2 }
        );
        f[0] = 0x93;
        f.push(0xc0);
        f[3] = 0x91;
        let r = decode_request(&f).unwrap();
        assert_eq!(r.entries, Entries::Forward { start: 4, count: 1 });
        assert_eq!(r.options, Options::default());
        // An entry count that runs past the frame leaves no option to read.
        f[3] = 0x92;
        assert_eq!(
            decode_request(&f),
            Err(RequestError::Malformed(ReadError::Truncated))
        );
    }
}
