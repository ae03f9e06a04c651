//! The body of a `batch`-format message: a Fluentd Forward-mode message without
//! options, `[tag, [[time, record], ...]]`, written by hand into a buffer sized in
//! advance. Every piece has a length function and a writer built on the same header
//! bytes, so the size computed to split a group and to allocate the ZeroMQ message is
//! the size written.

use crate::forward::msgpack::Cursor;
pub use crate::forward::msgpack_write::{array_head, map_head, str_head, Head};
use crate::forward::EventTime;

/// Bytes of an EventTime: fixext8 (`0xd7`), ext type 0, seconds and nanoseconds as
/// big-endian u32, as Fluentd writes it.
pub const EVENT_TIME_LEN: usize = 10;

/// The EventTime of `t`. Seconds past what a u32 holds (after 2106) are clamped: the
/// EventTime layout has no room for them.
pub fn event_time(t: EventTime) -> [u8; EVENT_TIME_LEN] {
    let secs = u32::try_from(t.secs).unwrap_or(u32::MAX);
    let mut out = [0xd7, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    out[2..6].copy_from_slice(&secs.to_be_bytes());
    out[6..10].copy_from_slice(&t.nanos.to_be_bytes());
    out
}

/// Key-value pairs added in front of every record's own pairs
/// (`input.source_address_key`, `input.source_hostname_key`), as the `json` format
/// does. Empty when none is configured: records are then copied verbatim.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    pairs: &'a [(&'a str, &'a str)],
    /// Their encoded size, worked out once per batch.
    len: usize,
}

impl<'a> Extra<'a> {
    pub fn new(pairs: &'a [(&'a str, &'a str)]) -> Extra<'a> {
        let len = pairs
            .iter()
            .map(|(k, v)| str_head(k.len()).size() + k.len() + str_head(v.len()).size() + v.len())
            .sum();
        Extra { pairs, len }
    }

    fn count(&self) -> u32 {
        self.pairs.len() as u32
    }

    fn write(&self, out: &mut Out<'_>) {
        for (k, v) in self.pairs {
            out.put(str_head(k.len()).as_bytes());
            out.put(k.as_bytes());
            out.put(str_head(v.len()).as_bytes());
            out.put(v.as_bytes());
        }
    }
}

/// A record as it goes into the body: either its bytes as received, or a new map
/// header counting the extra pairs, the extra pairs, then the record's own pairs.
#[derive(Debug, Clone, Copy)]
enum Record<'a> {
    Verbatim(&'a [u8]),
    Extended { head: Head, pairs: &'a [u8] },
}

impl<'a> Record<'a> {
    /// Plans how `record` (a msgpack map) is written. The header is rewritten with
    /// the new count, so it may grow: fixmap to map16, map16 to map32.
    fn plan(record: &'a [u8], extra: &Extra<'_>) -> Record<'a> {
        if extra.pairs.is_empty() {
            return Record::Verbatim(record);
        }
        let mut c = Cursor::new(record);
        let count = c
            .map_len()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .and_then(|n| n.checked_add(extra.count()));
        match (count, record.get(c.pos()..)) {
            (Some(n), Some(pairs)) => Record::Extended {
                head: map_head(n),
                pairs,
            },
            // Every record was checked to be a map when it was routed, and no map in a
            // 32-bit batch holds 2^32 entries; were either false, the record is still
            // published, unchanged.
            _ => Record::Verbatim(record),
        }
    }

    fn len(&self, extra: &Extra<'_>) -> usize {
        match self {
            Record::Verbatim(bytes) => bytes.len(),
            Record::Extended { head, pairs } => head.size() + extra.len + pairs.len(),
        }
    }

    fn write(&self, out: &mut Out<'_>, extra: &Extra<'_>) {
        match self {
            Record::Verbatim(bytes) => out.put(bytes),
            Record::Extended { head, pairs } => {
                out.put(head.as_bytes());
                extra.write(out);
                out.put(pairs);
            }
        }
    }
}

/// Size of the entry `[time, record]` for `record`, as [`write_entry`] writes it.
pub fn entry_len(record: &[u8], extra: &Extra<'_>) -> usize {
    1 + EVENT_TIME_LEN + Record::plan(record, extra).len(extra)
}

/// Writes the entry `[time, record]`.
pub fn write_entry(out: &mut Out<'_>, time: EventTime, record: &[u8], extra: &Extra<'_>) {
    out.put(&[0x92]);
    out.put(&event_time(time));
    Record::plan(record, extra).write(out, extra);
}

/// Size of a whole body: `[tag, entries]` with `count` entries of `entries_len` bytes.
pub fn body_len(tag_len: usize, count: usize, entries_len: usize) -> usize {
    1 + str_head(tag_len).size() + tag_len + array_head(count).size() + entries_len
}

/// Writes the start of a body, up to the header of its `count` entries.
pub fn write_body_start(out: &mut Out<'_>, tag: &[u8], count: usize) {
    out.put(&[0x92]);
    out.put(str_head(tag.len()).as_bytes());
    out.put(tag);
    out.put(array_head(count).as_bytes());
}

/// Writes into a buffer allocated at the size computed in advance. It never panics:
/// were a size wrong, the excess would be cut (and `written` would tell; the tests
/// check it).
pub struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, pos: 0 }
    }

    pub fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }

    /// Bytes put so far, including any that did not fit.
    pub fn written(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn event_time_layout() {
        let t = EventTime {
            secs: 0x0102_0304,
            nanos: 0x0506_0708,
        };
        assert_eq!(event_time(t), [0xd7, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let late = EventTime {
            secs: u64::from(u32::MAX) + 5,
            nanos: 1,
        };
        assert_eq!(event_time(late)[2..6], [0xff; 4]);
    }

    /// Writes one entry of `record` with `extra` and decodes it with rmpv.
    fn entry_value(record: &rmpv::Value, extra: &[(&str, &str)]) -> (usize, rmpv::Value) {
        let bytes = encoded(record);
        let extra = Extra::new(extra);
        let len = entry_len(&bytes, &extra);
        let mut buf = vec![0; len];
        let mut out = Out::new(&mut buf);
        write_entry(&mut out, EventTime::default(), &bytes, &extra);
        assert_eq!(out.written(), len);
        let v = rmpv::decode::read_value(&mut &buf[..]).unwrap();
        (len, v)
    }

    fn string_map(n: usize) -> rmpv::Value {
        rmpv::Value::Map(
            (0..n)
                .map(|i| (format!("k{i}").into(), rmpv::Value::from(i)))
                .collect(),
        )
    }

    #[test]
    fn extra_pairs_grow_the_map_header() {
        let extra = [("addr", "127.0.0.1"), ("host", "localhost")];
        // 13 + 2 pairs fit a fixmap, 14 + 2 need map16, 65534 + 2 need map32.
        for (n, head) in [(13usize, 0x8f), (14, 0xde), (65533, 0xde), (65534, 0xdf)] {
            let record = string_map(n);
            let (len, v) = entry_value(&record, &extra);
            let plain = encoded(&record);
            let rmpv::Value::Array(entry) = v else {
                panic!("not an array")
            };
            let rmpv::Value::Map(pairs) = &entry[1] else {
                panic!("record is not a map")
            };
            assert_eq!(pairs.len(), n + 2);
            assert_eq!(pairs[0], ("addr".into(), "127.0.0.1".into()));
            assert_eq!(pairs[1], ("host".into(), "localhost".into()));
            let rmpv::Value::Map(own) = &record else {
                unreachable!()
            };
            assert_eq!(&pairs[2..], &own[..]);
            // The entry's record starts after 0x92 and the 10-byte time.
            let mut written = vec![0; len];
            let extra = Extra::new(&extra);
            write_entry(
                &mut Out::new(&mut written),
                EventTime::default(),
                &plain,
                &extra,
            );
            assert_eq!(written[11], head, "{n} pairs");
        }
    }

    #[test]
    fn records_are_copied_verbatim_without_extra_pairs() {
        // A fixmap written as map16, which rmpv would not produce: kept as it came.
        let record = [0xde, 0x00, 0x01, 0xa1, b'a', 0x01];
        let extra = Extra::default();
        let len = entry_len(&record, &extra);
        let mut buf = vec![0; len];
        write_entry(
            &mut Out::new(&mut buf),
            EventTime::default(),
            &record,
            &extra,
        );
        assert_eq!(&buf[11..], &record);
    }

    #[test]
    fn out_cuts_what_does_not_fit() {
        let mut buf = [0u8; 3];
        let mut out = Out::new(&mut buf);
        out.put(b"ab");
        out.put(b"cd");
        assert_eq!(out.written(), 4);
        assert_eq!(&buf, b"ab\0");
    }
}
