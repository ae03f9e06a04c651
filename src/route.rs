//! Routing: which tenant, service, container and line each record belongs to. One pass
//! over the record's keys, no allocation: the result is byte spans of the request.
//! A routing key is a plain top-level key or a path into nested maps (`path`); the
//! pass enters only the maps and arrays that some configured path goes into.

pub mod path;

pub use path::{KeyPath, PathError, Step};

use crate::config::RouteConfig;
use crate::forward::msgpack::{Cursor, Kind, ReadError};
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
    /// The levels of the record that some routing key reaches into; `nodes[0]` is the
    /// record itself. A plain key is an entry of `nodes[0]`; a path such as
    /// `$.kubernetes.namespace_name` an entry `kubernetes` there whose child node holds
    /// `namespace_name`. Only the maps and arrays on a configured path are entered.
    nodes: Vec<Node>,
    tag_regex: Option<Regex>,
}

/// Why a router cannot be built from a configuration (validation refuses both first).
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route.tag_regex: {0}")]
    TagRegex(#[from] regex::Error),
    #[error("route.{list}: {key:?}: {source}")]
    Path {
        list: &'static str,
        key: String,
        source: PathError,
    },
}

/// What a routing key routes: its rank in each list it appears in (its first position
/// there: a key earlier in its list wins).
#[derive(Debug, Clone, Copy, Default)]
struct Target {
    tenant: Option<usize>,
    service: Option<usize>,
    line: Option<usize>,
    container: bool,
}

/// One step that some routing key takes from a level of the record: the value there
/// may be routed itself (`target`), and may be entered (`child`, an index of
/// `Router::nodes`).
#[derive(Debug, Clone)]
struct Entry<K> {
    step: K,
    target: Target,
    child: Option<usize>,
}

/// The steps that routing keys take from one level of the record.
#[derive(Debug, Clone, Default)]
struct Node {
    keys: Vec<Entry<Box<[u8]>>>,
    /// Bit `n` set when some key here is `n` bytes long (bit 63: 63 or more), to pass
    /// over most other record keys without comparing bytes.
    key_lengths: u64,
    indices: Vec<Entry<u64>>,
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

/// The entry for `step` in `entries`, added (routing nothing, entering nothing) when it
/// is not there.
fn entry_for<K: PartialEq>(entries: &mut Vec<Entry<K>>, step: K) -> &mut Entry<K> {
    let at = match entries.iter().position(|e| e.step == step) {
        Some(at) => at,
        None => {
            entries.push(Entry {
                step,
                target: Target::default(),
                child: None,
            });
            entries.len() - 1
        }
    };
    &mut entries[at]
}

/// Compiles the routing keys of `config` into levels of the record.
fn compile(config: &RouteConfig) -> Result<Vec<Node>, RouterError> {
    let mut nodes = vec![Node::default()];
    let container = std::slice::from_ref(&config.container_id_key);
    let lists: [(&'static str, &[String]); 4] = [
        ("tenant_keys", &config.tenant_keys),
        ("service_keys", &config.service_keys),
        ("line_keys", &config.line_keys),
        ("container_id_key", container),
    ];
    for (list, keys) in lists {
        for (rank, key) in keys.iter().enumerate() {
            let path = KeyPath::parse(key).map_err(|source| RouterError::Path {
                list,
                key: key.clone(),
                source,
            })?;
            let target = target_of(&mut nodes, &path);
            // A key listed twice keeps its first (best) rank.
            match list {
                "tenant_keys" => _ = target.tenant.get_or_insert(rank),
                "service_keys" => _ = target.service.get_or_insert(rank),
                "line_keys" => _ = target.line.get_or_insert(rank),
                _ => target.container = true,
            }
        }
    }
    for node in &mut nodes {
        node.key_lengths = node
            .keys
            .iter()
            .fold(0, |m, k| m | length_bit(k.step.len()));
    }
    Ok(nodes)
}

/// The target at the end of `path`, adding the nodes and entries on the way.
fn target_of<'a>(nodes: &'a mut Vec<Node>, path: &KeyPath) -> &'a mut Target {
    let mut node = 0;
    let (last, inner) = match path.steps.split_last() {
        Some(split) => split,
        // A parsed path has at least one step.
        None => (&path.steps[0], &path.steps[..0]),
    };
    for step in inner {
        let fresh = nodes.len();
        let child = match step {
            Step::Key(k) => &mut entry_for(&mut nodes[node].keys, k.clone()).child,
            Step::Index(i) => &mut entry_for(&mut nodes[node].indices, u64::from(*i)).child,
        };
        node = *child.get_or_insert(fresh);
        if node == fresh {
            nodes.push(Node::default());
        }
    }
    match last {
        Step::Key(k) => &mut entry_for(&mut nodes[node].keys, k.clone()).target,
        Step::Index(i) => &mut entry_for(&mut nodes[node].indices, u64::from(*i)).target,
    }
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
    /// Notes the value of a routing key. `payload` is the value's payload when it is a
    /// str or bin, `value` the whole value.
    #[inline]
    fn note(&mut self, key: &Target, is_str: bool, payload: Option<Span>, value: Span) {
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

/// How deep a walk may still go below the value at hand, and how to skip a value that
/// is not entered: `skip(cursor, depth)` moves past one whole value that may open at
/// most `depth` non-empty maps or arrays (the scanner's rule), failing the walk past it.
type Depth = usize;

/// No depth limit of the walk's own: the record's frame was scanned whole, depth cap
/// included.
pub const SCANNED: Depth = usize::MAX;

impl Router {
    /// Builds the router; the config must have passed validation (the regex compiles,
    /// every path parses).
    pub fn new(config: &RouteConfig) -> Result<Router, RouterError> {
        Ok(Router {
            nodes: compile(config)?,
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

    /// Routes one event whose record lies in `data`. A record that turns out malformed
    /// part-way is routed by the pairs before the bad one.
    #[inline]
    pub fn route(&self, data: &[u8], tag: &TagRoute, event: Event) -> Routed {
        let mut c = Cursor::at(data, event.record.start);
        let mut found = Found::default();
        if let Ok(pairs) = c.map_len() {
            // Errors only cut the walk short; what was found before still counts.
            let _ = self.walk_pairs(
                &self.nodes[0],
                data,
                &mut c,
                pairs,
                &mut found,
                SCANNED,
                &mut |c, _| c.skip(),
            );
        }
        found.routed(tag, event.time, Span::of(event.record))
    }

    /// Routes the record (a map) at the cursor in the same pass that finds its end,
    /// with `skip` moving past each value that is neither entered nor a str or bin,
    /// each of whose values may open at most `depth` maps or arrays: the cursor ends
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
        depth: Depth,
        skip: &mut impl FnMut(&mut Cursor<'a>, Depth) -> Result<Range<usize>, ReadError>,
    ) -> Result<Routed, ReadError> {
        let start = c.pos();
        let pairs = c.map_len()?;
        let mut found = Found::default();
        self.walk_pairs(&self.nodes[0], data, c, pairs, &mut found, depth, skip)?;
        Ok(found.routed(tag, time, Span::of(start..c.pos())))
    }

    /// Walks `pairs` key/value pairs of a map at `node`'s level, noting every routing
    /// key in `found` and entering the values that a path goes on into. A pair whose key
    /// is not a str cannot be a routing key: its key and value are both skipped.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn walk_pairs<'a>(
        &self,
        node: &Node,
        data: &'a [u8],
        c: &mut Cursor<'a>,
        pairs: u64,
        found: &mut Found,
        depth: Depth,
        skip: &mut impl FnMut(&mut Cursor<'a>, Depth) -> Result<Range<usize>, ReadError>,
    ) -> Result<(), ReadError> {
        for _ in 0..pairs {
            let key = match c.string_or_binary()? {
                Some((key, true)) => key,
                // A bin key was just consumed; any other key is skipped first.
                Some((_, false)) => {
                    skip(c, depth)?;
                    continue;
                }
                None => {
                    skip(c, depth)?;
                    skip(c, depth)?;
                    continue;
                }
            };
            let key = &data[key];
            let entry = if node.key_lengths & length_bit(key.len()) == 0 {
                None
            } else {
                node.keys.iter().find(|k| same_bytes(&k.step, key))
            };
            match entry {
                Some(Entry {
                    target,
                    child: Some(child),
                    ..
                }) => self.enter(target, *child, data, c, found, depth, skip)?,
                Some(Entry { target, .. }) => leaf(target, c, found, depth, skip)?,
                None => {
                    if c.string_or_binary()?.is_none() {
                        skip(c, depth)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The value of an entry that some path goes on from: a map or array is entered
    /// (when the depth allows) and noted whole; anything else is a leaf.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn enter<'a>(
        &self,
        target: &Target,
        child: usize,
        data: &'a [u8],
        c: &mut Cursor<'a>,
        found: &mut Found,
        depth: Depth,
        skip: &mut impl FnMut(&mut Cursor<'a>, Depth) -> Result<Range<usize>, ReadError>,
    ) -> Result<(), ReadError> {
        let node = &self.nodes[child];
        let start = c.pos();
        // The value entered counts as one level, as in the scanner's rule.
        let inner = depth.saturating_sub(1);
        match c.peek_kind()? {
            Kind::Map if depth > 0 && !node.keys.is_empty() => {
                let pairs = c.map_len()?;
                self.walk_pairs(node, data, c, pairs, found, inner, skip)?;
            }
            Kind::Array if depth > 0 && !node.indices.is_empty() => {
                let items = c.array_len()?;
                for i in 0..items {
                    match node.indices.iter().find(|e| e.step == i) {
                        Some(Entry {
                            target,
                            child: Some(child),
                            ..
                        }) => self.enter(target, *child, data, c, found, inner, skip)?,
                        Some(Entry { target, .. }) => leaf(target, c, found, inner, skip)?,
                        None => _ = skip(c, inner)?,
                    }
                }
            }
            _ => return leaf(target, c, found, depth, skip),
        }
        found.note(target, false, None, Span::of(start..c.pos()));
        Ok(())
    }
}

/// The value of a routing key that no path goes on from: noted whatever it is.
#[inline(always)]
fn leaf<'a>(
    target: &Target,
    c: &mut Cursor<'a>,
    found: &mut Found,
    depth: Depth,
    skip: &mut impl FnMut(&mut Cursor<'a>, Depth) -> Result<Range<usize>, ReadError>,
) -> Result<(), ReadError> {
    let start = c.pos();
    let (payload, is_str) = match c.string_or_binary()? {
        Some((payload, is_str)) => (Some(Span::of(payload)), is_str),
        None => {
            skip(c, depth)?;
            (None, false)
        }
    };
    found.note(target, is_str, payload, Span::of(start..c.pos()));
    Ok(())
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
        let routed = r.route_record(
            data,
            &tag,
            EventTime::default(),
            &mut c,
            SCANNED,
            &mut |c, _| c.skip(),
        )?;
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

    /// A tag, then `record` as msgpack; the data and the tag's length.
    fn data_of(tag: &str, record: rmpv::Value) -> (Vec<u8>, usize) {
        let mut data = tag.as_bytes().to_vec();
        rmpv::encode::write_value(&mut data, &record).unwrap();
        (data, tag.len())
    }

    fn s(v: &str) -> rmpv::Value {
        rmpv::Value::from(v)
    }

    fn map(pairs: Vec<(&str, rmpv::Value)>) -> rmpv::Value {
        rmpv::Value::Map(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    /// A record as Fluent Bit's kubernetes filter leaves it, with extra maps beside.
    fn kubernetes_record() -> rmpv::Value {
        map(vec![
            ("log", s("GET /healthz 200")),
            ("stream", s("stdout")),
            ("time", s("2026-12-08T01:23:45.123456789Z")),
            (
                "other",
                map(vec![
                    ("namespace_name", s("not-this")),
                    ("deep", map(vec![("x", s("y"))])),
                ]),
            ),
            (
                "kubernetes",
                map(vec![
                    ("pod_name", s("web-7d4b9c-x2x9q")),
                    ("namespace_name", s("acme")),
                    ("pod_id", s("0d1f5ac1-32b5-4d8e-9a2c-1b7e0f6a4c3d")),
                    ("host", s("node-1")),
                    ("container_name", s("web")),
                    (
                        "docker_id",
                        s("4f1c8a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"),
                    ),
                    (
                        "labels",
                        map(vec![
                            ("app", s("web")),
                            ("app.kubernetes.io/name", s("storefront")),
                            ("tenant", rmpv::Value::from(42)),
                        ]),
                    ),
                    ("annotations", map(vec![("a/b", s("c"))])),
                    (
                        "ports",
                        rmpv::Value::Array(vec![rmpv::Value::from(80), s("http")]),
                    ),
                ]),
            ),
        ])
    }

    fn kubernetes_config() -> RouteConfig {
        RouteConfig {
            tenant_keys: vec!["TENANT_ID".into(), "$.kubernetes.namespace_name".into()],
            service_keys: vec!["$['kubernetes']['labels']['app.kubernetes.io/name']".into()],
            line_keys: vec!["$.log".into()],
            container_id_key: "$.kubernetes.docker_id".into(),
            ..RouteConfig::default()
        }
    }

    fn text(data: &[u8], span: Option<Span>) -> Option<&str> {
        span.map(|s| std::str::from_utf8(s.get(data)).unwrap())
    }

    #[test]
    fn nested_paths_route_a_kubernetes_record() {
        let (data, tag_len) = data_of("kube.var.log.containers.web", kubernetes_record());
        let (r, _) = route(&kubernetes_config(), &data, tag_len);
        assert_eq!(text(&data, r.tenant), Some("acme"));
        assert_eq!(text(&data, r.service), Some("storefront"));
        assert_eq!(text(&data, Some(r.container)), Some("4f1c8a1e2b3c"));
        let Line::Bytes(line) = r.line else {
            panic!("{:?}", r.line)
        };
        assert_eq!(line.get(&data), b"GET /healthz 200");
        // The one-pass walk gives the same, and ends after the record.
        let (fused, end) = route_record(&kubernetes_config(), &data, tag_len).unwrap();
        assert_eq!((fused, end), (r, data.len()));
    }

    #[test]
    fn a_plain_name_is_a_top_level_key_dots_and_all() {
        let record = map(vec![
            ("kubernetes", map(vec![("namespace_name", s("nested"))])),
            ("kubernetes.namespace_name", s("flat")),
        ]);
        let (data, tag_len) = data_of("t", record);
        for (key, tenant) in [
            ("kubernetes.namespace_name", "flat"),
            ("$.kubernetes.namespace_name", "nested"),
            ("$['kubernetes.namespace_name']", "flat"),
        ] {
            let config = RouteConfig {
                tenant_keys: vec![key.into()],
                ..RouteConfig::default()
            };
            let routed = route(&config, &data, tag_len).0;
            assert_eq!(text(&data, routed.tenant), Some(tenant), "{key}");
        }
    }

    #[test]
    fn missing_or_non_string_paths_fall_through() {
        let (data, tag_len) = data_of("acme.web", kubernetes_record());
        let config = RouteConfig {
            tenant_keys: vec![
                "$.kubernetes.missing".into(),
                "$.kubernetes.labels.tenant".into(),
                "$.log.deeper".into(),
                "$.kubernetes".into(),
                "$.kubernetes.labels.app".into(),
            ],
            service_keys: vec!["$.nothing.here".into()],
            tag_regex: r"^(?P<tenant>[^.]+)\.(?P<service>[^.]+)".into(),
            container_id_key: "$.kubernetes.ports".into(),
            line_keys: vec![
                "$.kubernetes.nothing".into(),
                "$.kubernetes.annotations".into(),
            ],
            ..RouteConfig::default()
        };
        let (r, tag) = route(&config, &data, tag_len);
        // An integer, a path through a string and a map are no tenant: the fifth key is.
        assert_eq!(text(&data, r.tenant), Some("web"));
        assert_eq!(r.service, tag.service);
        assert_eq!(text(&data, r.service), Some("web"));
        assert_eq!(r.container, tag.tag);
        // A line path to a map gives that map, as JSON.
        let Line::Json(line) = r.line else {
            panic!("{:?}", r.line)
        };
        let annotations = {
            let mut v = Vec::new();
            rmpv::encode::write_value(&mut v, &map(vec![("a/b", s("c"))])).unwrap();
            v
        };
        assert_eq!(line.get(&data), &annotations[..]);
        assert_eq!(route_record(&config, &data, tag_len).unwrap().0, r);
        // Nothing at all: the tag regex, then the defaults.
        let config = RouteConfig {
            tenant_keys: vec!["$.kubernetes.missing".into()],
            ..RouteConfig::default()
        };
        let (r, _) = route(&config, &data, tag_len);
        assert_eq!((r.tenant, r.service), (None, None));
    }

    #[test]
    fn array_indices_and_a_key_that_is_routed_and_entered() {
        let record = map(vec![(
            "items",
            rmpv::Value::Array(vec![
                s("zero"),
                map(vec![("name", s("one")), ("tenant", s("t-one"))]),
            ]),
        )]);
        let (data, tag_len) = data_of("t", record);
        let config = RouteConfig {
            tenant_keys: vec!["$.items[1].tenant".into()],
            service_keys: vec!["$.items[0]".into()],
            line_keys: vec!["$.items".into()],
            container_id_key: "$.items[1]['name']".into(),
            ..RouteConfig::default()
        };
        let (r, _) = route(&config, &data, tag_len);
        assert_eq!(text(&data, r.tenant), Some("t-one"));
        assert_eq!(text(&data, r.service), Some("zero"));
        assert_eq!(text(&data, Some(r.container)), Some("one"));
        // `items` is both entered (for the others) and the line, whole.
        let Line::Json(line) = r.line else {
            panic!("{:?}", r.line)
        };
        assert_eq!(line.get(&data)[0], 0x92);
        assert_eq!(line.end as usize, data.len());
        assert_eq!(
            route_record(&config, &data, tag_len).unwrap(),
            (r, data.len())
        );
    }

    #[test]
    fn entering_a_path_keeps_the_depth_rule_of_packed_entries() {
        // {"a": {"b": {"c": {"d": "x"}}}}: the value of "a" opens three maps.
        let record = map(vec![(
            "a",
            map(vec![("b", map(vec![("c", map(vec![("d", s("x"))]))]))]),
        )]);
        let (data, tag_len) = data_of("t", record);
        let capped = |config: &RouteConfig, depth: usize| {
            let r = Router::new(config).unwrap();
            let tag = r.route_tag(&data, 0..tag_len);
            let mut c = Cursor::at(&data, tag_len);
            r.route_record(
                &data,
                &tag,
                EventTime::default(),
                &mut c,
                depth,
                &mut |c, d| c.skip_capped(d),
            )
            .map(|r| r.tenant)
        };
        for config in [
            RouteConfig::default(),
            RouteConfig {
                tenant_keys: vec!["$.a.b.c.d".into()],
                ..RouteConfig::default()
            },
            RouteConfig {
                tenant_keys: vec!["$.a.b.x".into()],
                ..RouteConfig::default()
            },
        ] {
            // Entered or skipped, the same records pass and fail.
            assert!(
                matches!(capped(&config, 2), Err(ReadError::TooDeep(_))),
                "{config:?}"
            );
            assert!(capped(&config, 3).is_ok(), "{config:?}");
        }
        let deep = RouteConfig {
            tenant_keys: vec!["$.a.b.c.d".into()],
            ..RouteConfig::default()
        };
        assert_eq!(text(&data, capped(&deep, 3).unwrap()), Some("x"));
    }

    #[test]
    fn a_malformed_path_is_an_error_naming_its_list() {
        let config = RouteConfig {
            line_keys: vec!["$.a[".into()],
            ..RouteConfig::default()
        };
        let e = Router::new(&config).unwrap_err();
        assert_eq!(
            e.to_string(),
            "route.line_keys: \"$.a[\": unclosed `[` at character 4"
        );
    }
}
