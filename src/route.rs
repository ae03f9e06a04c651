//! Routing: which tenant, service, container and line each record belongs to. One pass
//! over the record's keys, no allocation: the result is byte spans of the request.

use crate::config::RouteConfig;
use crate::forward::msgpack::{Cursor, ReadError};
use crate::forward::{Event, EventTime};
use regex::bytes::Regex;
use std::ops::Range;

/// A byte range of a batch's data, in 32 bits to keep routed events small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

// Spans are where a request's offsets become 32-bit: no silent truncation here.
#[deny(clippy::cast_possible_truncation)]
impl Span {
    /// The span of `r`, an offset range within one request's buffer, which
    /// configuration keeps below 4 GiB (`config::MAX_REQUEST_BYTES`).
    #[inline]
    pub fn of(r: Range<usize>) -> Span {
        debug_assert!(r.end <= u32::MAX as usize, "span {r:?} past 4 GiB");
        Span {
            start: u32::try_from(r.start).unwrap_or(u32::MAX),
            end: u32::try_from(r.end).unwrap_or(u32::MAX),
        }
    }

    #[inline]
    pub fn get(self, data: &[u8]) -> &[u8] {
        &data[self.start as usize..self.end as usize]
    }

    #[inline]
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    #[inline]
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// What the published line is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The payload of a string or binary value, as is.
    Bytes(Span),
    /// A msgpack value to render as JSON (a non-string line value, or the whole record
    /// when no line key is present).
    Json(Span),
}

/// One event with everything the publisher needs, as spans of the batch data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub time: EventTime,
    /// `None`: the configured default tenant.
    pub tenant: Option<Span>,
    /// `None`: the configured default service.
    pub service: Option<Span>,
    pub container: Span,
    pub line: Line,
    /// The whole record (a msgpack map).
    pub record: Span,
}

/// What the tag of a request says, worked out once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagRoute {
    pub tag: Span,
    pub tenant: Option<Span>,
    pub service: Option<Span>,
}

/// The routing rules of a gateway.
#[derive(Debug, Clone)]
pub struct Router {
    /// Every distinct routing key with what it routes, so that each record key is
    /// looked up once.
    keys: Vec<RoutingKey>,
    /// Bit `n` set when some routing key is `n` bytes long (bit 63: 63 or more), to pass
    /// over most other record keys without comparing bytes.
    key_lengths: u64,
    tag_regex: Option<Regex>,
}

/// One routing key and its rank in each list it appears in (its first position there:
/// a key earlier in its list wins).
#[derive(Debug, Clone)]
struct RoutingKey {
    key: Box<[u8]>,
    tenant: Option<usize>,
    service: Option<usize>,
    line: Option<usize>,
    container: bool,
}

/// Length of the container id prefix in a seed line, as `docker ps` shows it.
pub const SHORT_ID_LEN: usize = 12;

/// `a == b`, without a call to `memcmp` for the short keys records are made of: two
/// overlapping word loads compare keys of 4 to 16 bytes, a byte loop shorter ones.
#[inline(always)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word8 = |s: &[u8], at: usize| s[at..at + 8].try_into().map(u64::from_ne_bytes).ok();
    let word4 = |s: &[u8], at: usize| s[at..at + 4].try_into().map(u32::from_ne_bytes).ok();
    match n {
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        0..=3 => (0..n).all(|i| a[i] == b[i]),
        _ => a == b,
    }
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

fn routing_keys(config: &RouteConfig) -> Vec<RoutingKey> {
    let mut keys: Vec<RoutingKey> = Vec::new();
    // A key listed twice keeps its first (best) rank.
    for (rank, key) in config.tenant_keys.iter().enumerate() {
        routing_key_entry(&mut keys, key).tenant.get_or_insert(rank);
    }
    for (rank, key) in config.service_keys.iter().enumerate() {
        routing_key_entry(&mut keys, key)
            .service
            .get_or_insert(rank);
    }
    for (rank, key) in config.line_keys.iter().enumerate() {
        routing_key_entry(&mut keys, key).line.get_or_insert(rank);
    }
    routing_key_entry(&mut keys, &config.container_id_key).container = true;
    keys
}

/// The entry of `key` in `keys`, added (routing nothing yet) when it is not there.
fn routing_key_entry<'a>(keys: &'a mut Vec<RoutingKey>, key: &str) -> &'a mut RoutingKey {
    let at = match keys.iter().position(|k| *k.key == *key.as_bytes()) {
        Some(at) => at,
        None => {
            keys.push(RoutingKey {
                key: key.as_bytes().into(),
                tenant: None,
                service: None,
                line: None,
                container: false,
            });
            keys.len() - 1
        }
    };
    &mut keys[at]
}

/// What the keys of one record gave, before the tag's fallbacks, each with the rank of
/// the key that gave it.
#[derive(Debug, Default)]
struct Found {
    tenant: Option<(usize, Span)>,
    service: Option<(usize, Span)>,
    line: Option<(usize, Line)>,
    container: Option<Span>,
}

/// True when `rank` beats the rank of what was already found.
#[inline]
fn beats(rank: Option<usize>, found: Option<usize>) -> Option<usize> {
    rank.filter(|&r| found.is_none_or(|f| r < f))
}

impl Found {
    /// Notes one key/value pair whose key is a routing key. `payload` is the value's
    /// payload when it is a str or bin, `value` the whole value.
    #[inline]
    fn note(&mut self, key: &RoutingKey, is_str: bool, payload: Option<Span>, value: Span) {
        let string = payload.filter(|_| is_str);
        if let Some(s) = string {
            if let Some(rank) = beats(key.tenant, self.tenant.map(|t| t.0)) {
                self.tenant = Some((rank, s));
            }
            if let Some(rank) = beats(key.service, self.service.map(|t| t.0)) {
                self.service = Some((rank, s));
            }
        }
        if let Some(rank) = beats(key.line, self.line.map(|t| t.0)) {
            let line = match payload {
                Some(s) => Line::Bytes(s),
                None => Line::Json(value),
            };
            self.line = Some((rank, line));
        }
        if key.container && self.container.is_none() {
            if let Some(mut s) = string {
                s.end = s.end.min(s.start + SHORT_ID_LEN as u32);
                self.container = Some(s);
            }
        }
    }

    fn routed(self, tag: &TagRoute, time: EventTime, record: Span) -> Routed {
        Routed {
            time,
            tenant: self.tenant.map(|t| t.1).or(tag.tenant),
            service: self.service.map(|t| t.1).or(tag.service),
            container: self.container.unwrap_or(tag.tag),
            line: self.line.map(|l| l.1).unwrap_or(Line::Json(record)),
            record,
        }
    }
}

impl Router {
    /// Builds the router; the config must have passed validation (the regex compiles).
    pub fn new(config: &RouteConfig) -> Result<Router, regex::Error> {
        let keys = routing_keys(config);
        let key_lengths = keys.iter().fold(0, |m, k| m | length_bit(k.key.len()));
        Ok(Router {
            keys,
            key_lengths,
            tag_regex: if config.tag_regex.is_empty() {
                None
            } else {
                Some(Regex::new(&config.tag_regex)?)
            },
        })
    }

    /// Works out what the tag (at `tag` in `data`) gives: tenant and service from the
    /// tag regex, when one is configured and matches.
    pub fn route_tag(&self, data: &[u8], tag: Range<usize>) -> TagRoute {
        let base = tag.start;
        let mut route = TagRoute {
            tag: Span::of(tag.clone()),
            tenant: None,
            service: None,
        };
        if let Some(re) = &self.tag_regex {
            if let Some(caps) = re.captures(&data[tag]) {
                let group = |name| {
                    caps.name(name)
                        .map(|m| Span::of(base + m.start()..base + m.end()))
                };
                route.tenant = group("tenant");
                route.service = group("service");
            }
        }
        route
    }

    /// The routing key that `key` is, if any.
    #[inline]
    fn routing_key(&self, key: &[u8]) -> Option<&RoutingKey> {
        if self.key_lengths & length_bit(key.len()) == 0 {
            return None;
        }
        self.keys.iter().find(|k| same_bytes(&k.key, key))
    }

    /// Routes one event whose record lies in `data`. A record that turns out malformed
    /// part-way is routed by the pairs before the bad one.
    #[inline]
    pub fn route(&self, data: &[u8], tag: &TagRoute, event: Event) -> Routed {
        let mut c = Cursor::at(data, event.record.start);
        let mut found = Found::default();
        if let Ok(pairs) = c.map_len() {
            // Errors only cut the walk short; what was found before still counts.
            let _ = self.walk_pairs(data, &mut c, pairs, &mut found, &mut |c| c.skip());
        }
        found.routed(tag, event.time, Span::of(event.record))
    }

    /// Routes the record (a map) at the cursor in the same pass that finds its end,
    /// with `skip` moving past each value that is not a str or bin: the cursor ends
    /// after the record, and any value `skip` or the cursor rejects fails the whole
    /// record. On records that `Cursor::skip` gets past, this is exactly `route` with
    /// the record's range.
    #[inline]
    pub fn route_record<'a>(
        &self,
        data: &'a [u8],
        tag: &TagRoute,
        time: EventTime,
        c: &mut Cursor<'a>,
        skip: &mut impl FnMut(&mut Cursor<'a>) -> Result<Range<usize>, ReadError>,
    ) -> Result<Routed, ReadError> {
        let start = c.pos();
        let pairs = c.map_len()?;
        let mut found = Found::default();
        self.walk_pairs(data, c, pairs, &mut found, skip)?;
        Ok(found.routed(tag, time, Span::of(start..c.pos())))
    }

    /// Walks `pairs` key/value pairs at the cursor, noting every routing key in
    /// `found`. A pair whose key is not a str cannot be a routing key: its key and
    /// value are both skipped.
    #[inline(always)]
    fn walk_pairs<'a>(
        &self,
        data: &'a [u8],
        c: &mut Cursor<'a>,
        pairs: u64,
        found: &mut Found,
        skip: &mut impl FnMut(&mut Cursor<'a>) -> Result<Range<usize>, ReadError>,
    ) -> Result<(), ReadError> {
        for _ in 0..pairs {
            let key = match c.string_or_binary()? {
                Some((key, true)) => key,
                // A bin key was just consumed; any other key is skipped first.
                Some((_, false)) => {
                    skip(c)?;
                    continue;
                }
                None => {
                    skip(c)?;
                    skip(c)?;
                    continue;
                }
            };
            let value_start = c.pos();
            let (payload, is_str) = match c.string_or_binary()? {
                Some((payload, is_str)) => (Some(Span::of(payload)), is_str),
                None => {
                    skip(c)?;
                    (None, false)
                }
            };
            if let Some(key) = self.routing_key(&data[key]) {
                let value = Span::of(value_start..c.pos());
                found.note(key, is_str, payload, value);
            }
        }
        Ok(())
    }
}

/// The two parts of an event's `seed` line, `<container id>: <line>`: the container id,
/// and the line, which is either bytes of `data` or JSON rendered into `scratch`.
pub fn seed_line<'a>(
    data: &'a [u8],
    ev: &Routed,
    scratch: &'a mut Vec<u8>,
) -> (&'a [u8], &'a [u8]) {
    let id = ev.container.get(data);
    let line = match ev.line {
        Line::Bytes(s) => s.get(data),
        Line::Json(s) => {
            scratch.clear();
            let bytes = s.get(data);
            if crate::forward::to_json::write_value(scratch, &mut Cursor::new(bytes), bytes)
                .is_err()
            {
                scratch.clear();
            }
            &scratch[..]
        }
    };
    (id, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut v = vec![0x80 | pairs.len() as u8];
        for (k, val) in pairs {
            for s in [k, val] {
                v.push(0xa0 | s.len() as u8);
                v.extend_from_slice(s.as_bytes());
            }
        }
        v
    }

    /// A 12-byte tag, then a record as Docker sends it.
    fn docker_data() -> Vec<u8> {
        let mut data = b"abcdef012345".to_vec();
        data.extend(record(&[
            ("container_id", "0123456789abcdef0123"),
            ("log", "hello"),
            ("TENANT_ID", "t1"),
            ("SERVICE_ID", "s1"),
        ]));
        data
    }

    fn route(config: &RouteConfig, data: &[u8], tag_len: usize) -> (Routed, TagRoute) {
        let r = Router::new(config).unwrap();
        let tag = r.route_tag(data, 0..tag_len);
        let ev = Event {
            time: EventTime::default(),
            record: tag_len..data.len(),
        };
        (r.route(data, &tag, ev), tag)
    }

    #[test]
    fn docker_record() {
        let data = docker_data();
        let (r, _) = route(&RouteConfig::default(), &data, 12);
        assert_eq!(r.tenant.unwrap().get(&data), b"t1");
        assert_eq!(r.service.unwrap().get(&data), b"s1");
        assert_eq!(r.container.get(&data), b"0123456789ab");
        let Line::Bytes(line) = r.line else {
            panic!("line is {:?}", r.line)
        };
        assert_eq!(line.get(&data), b"hello");
    }

    #[test]
    fn key_order_and_fallbacks() {
        let config = RouteConfig {
            tenant_keys: vec!["first".into(), "second".into()],
            tag_regex: r"^(?P<tenant>[^.]+)\.(?P<service>[^.]+)".into(),
            ..RouteConfig::default()
        };
        let mut data = b"acme.web".to_vec();
        data.extend(record(&[("second", "b"), ("first", "a"), ("message", "m")]));
        let (r, _) = route(&config, &data, 8);
        assert_eq!(r.tenant.unwrap().get(&data), b"a");
        assert_eq!(r.service.unwrap().get(&data), b"web");
        assert_eq!(r.container.get(&data), b"acme.web");
        let Line::Bytes(l) = r.line else { panic!() };
        assert_eq!(l.get(&data), b"m");

        let mut data = b"notag".to_vec();
        data.extend(record(&[("x", "y")]));
        let (r, _) = route(&config, &data, 5);
        assert_eq!((r.tenant, r.service), (None, None));
        assert_eq!(r.line, Line::Json(r.record));
    }

    /// `route_record` over `data[tag_len..]` with a plain skip, and where it ended.
    fn route_record(
        config: &RouteConfig,
        data: &[u8],
        tag_len: usize,
    ) -> Result<(Routed, usize), ReadError> {
        let r = Router::new(config).unwrap();
        let tag = r.route_tag(data, 0..tag_len);
        let mut c = Cursor::at(data, tag_len);
        let routed = r.route_record(data, &tag, EventTime::default(), &mut c, &mut |c| c.skip())?;
        Ok((routed, c.pos()))
    }

    #[test]
    fn same_bytes_is_slice_equality() {
        let words: Vec<Vec<u8>> = (0..=20)
            .map(|n| (0..n).map(|i| b'a' + i as u8).collect())
            .collect();
        for a in &words {
            for b in &words {
                assert_eq!(same_bytes(a, b), a == b);
                // One byte changed anywhere is seen.
                for at in 0..b.len() {
                    let mut c = b.clone();
                    c[at] ^= 0x20;
                    assert_eq!(same_bytes(a, &c), *a == c, "{a:?} {c:?}");
                }
            }
        }
    }

    #[test]
    fn route_record_is_route_in_one_pass() {
        let mut data = docker_data();
        // A nested value and a bin line, then a byte past the record.
        data[12] += 2;
        data.extend_from_slice(&[0xa1, b'n', 0x91, 0x81, 0xa1, b'k', 0xc0]);
        data.extend_from_slice(&[
            0xa7, b'm', b'e', b's', b's', b'a', b'g', b'e', 0xc4, 1, b'b',
        ]);
        let record_end = data.len();
        data.push(0x07);
        let (routed, end) = route_record(&RouteConfig::default(), &data, 12).unwrap();
        assert_eq!(end, record_end);
        assert_eq!(routed.record, Span::of(12..record_end));
        assert_eq!(
            routed,
            route(&RouteConfig::default(), &data[..record_end], 12).0
        );
        let Line::Bytes(line) = routed.line else {
            panic!("{:?}", routed.line)
        };
        assert_eq!(line.get(&data), b"hello");
    }

    #[test]
    fn a_non_string_key_skips_its_pair_only() {
        // {1: "TENANT_ID", "x": "y"}: the pair with the integer key is skipped whole;
        // "TENANT_ID" is that pair's value, not a key, so no tenant is found.
        let mut data = b"t".to_vec();
        data.extend_from_slice(&[0x82, 0x01, 0xa9]);
        data.extend_from_slice(b"TENANT_ID");
        data.extend_from_slice(&[0xa1, b'x', 0xa1, b'y']);
        let (routed, end) = route_record(&RouteConfig::default(), &data, 1).unwrap();
        assert_eq!(end, data.len());
        assert_eq!(routed.tenant, None);
        assert_eq!(routed, route(&RouteConfig::default(), &data, 1).0);
        // {1: 2, "TENANT_ID": "t"} and a bin key: the pairs after them still route.
        let mut data = b"t".to_vec();
        data.extend_from_slice(&[0x83, 0x01, 0x02, 0xc4, 0x01, b'k', 0xa1, b'v', 0xa9]);
        data.extend_from_slice(b"TENANT_ID");
        data.extend_from_slice(&[0xa1, b't']);
        let (routed, end) = route_record(&RouteConfig::default(), &data, 1).unwrap();
        assert_eq!(end, data.len());
        assert_eq!(routed.tenant.unwrap().get(&data), b"t");
        assert_eq!(routed, route(&RouteConfig::default(), &data, 1).0);
    }

    #[test]
    fn route_record_fails_on_what_it_cannot_walk() {
        let config = RouteConfig::default();
        let mut data = b"t".to_vec();
        data.extend(record(&[("log", "hello")]));
        for cut in 2..data.len() {
            assert_eq!(
                route_record(&config, &data[..cut], 1).map(|r| r.1),
                Err(ReadError::Truncated),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            route_record(&config, b"t\x91\x01", 1),
            Err(ReadError::Type { .. })
        ));
        let reserved = [b't', 0x81, 0xa1, b'k', 0xc1];
        assert_eq!(
            route_record(&config, &reserved, 1).map(|r| r.1),
            Err(ReadError::Reserved)
        );
    }

    #[test]
    fn a_key_listed_twice_keeps_its_best_rank() {
        let config = RouteConfig {
            tenant_keys: vec!["a".into(), "b".into(), "a".into()],
            line_keys: vec!["a".into()],
            ..RouteConfig::default()
        };
        let mut data = b"t".to_vec();
        data.extend(record(&[("b", "1"), ("a", "2")]));
        let (r, _) = route(&config, &data, 1);
        assert_eq!(r.tenant.unwrap().get(&data), b"2");
        let Line::Bytes(l) = r.line else { panic!() };
        assert_eq!(l.get(&data), b"2");
    }
}
