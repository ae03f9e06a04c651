//! One request in, its routed events out: decompression, event iteration and
//! routing, with no I/O. The connection task calls it per request; the benches call it
//! directly.

use crate::event::RoutedEvents;
use crate::forward::compression::{decompress, DecompressError};
use crate::forward::msgpack::{Cursor, ReadError};
use crate::forward::request::{entry_head, ForwardEvents, PackedEvents};
use crate::forward::{Compression, Entries, Event, EventError, Limits, Request};
use crate::route::{Routed, Router, Span, TagRoute, SCANNED};
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// Caps that apply while a request is expanded.
#[derive(Debug, Clone, Copy)]
pub struct ExpandLimits {
    /// Nesting cap for entries that arrive packed (never scanned as part of the frame).
    pub max_depth: usize,
    pub max_decompressed: usize,
}

/// Events of a request that were skipped: how many, and the first reason.
#[derive(Debug, Default)]
pub struct Invalid {
    pub count: u64,
    pub first: Option<EventError>,
}

impl Invalid {
    fn add(&mut self, e: EventError) {
        self.count += 1;
        self.first.get_or_insert(e);
    }
}

/// Decodes and routes one entry in a single pass over its bytes, when it has the
/// common shape (`entry_head`): `skip_value` moves past the record's values that are
/// neither str nor bin nor entered by a routing path (each may open `value_depth`
/// levels), `skip_element` past entry elements after the record. `None` leaves the entry
/// to the event iterator, which decodes it (and reports what is wrong with it) in full.
#[inline(always)]
fn route_entry<'a>(
    c: &mut Cursor<'a>,
    data: &'a [u8],
    router: &Router,
    tag: &TagRoute,
    value_depth: usize,
    skip_value: &mut impl FnMut(&mut Cursor<'a>, usize) -> Result<Range<usize>, ReadError>,
    skip_element: &mut impl FnMut(&mut Cursor<'a>) -> Result<Range<usize>, ReadError>,
) -> Option<Routed> {
    let (time, elements) = entry_head(c, data)?;
    let routed = router
        .route_record(data, tag, time, c, value_depth, skip_value)
        .ok()?;
    for _ in 2..elements {
        skip_element(c).ok()?;
    }
    Some(routed)
}

/// `route_entry` for an entry of a packed stream, which no scanner has seen: every skip
/// enforces the depth cap the scanner would, counting the entry array as level 1 and
/// the record as level 2, so that only entries the scanner accepts are routed here.
#[inline(always)]
fn route_packed_entry<'a>(
    c: &mut Cursor<'a>,
    data: &'a [u8],
    router: &Router,
    tag: &TagRoute,
    max_depth: usize,
) -> Option<Routed> {
    let value_depth = max_depth.checked_sub(2)?;
    route_entry(
        c,
        data,
        router,
        tag,
        value_depth,
        &mut |c, depth| c.skip_capped(depth),
        &mut |c| c.skip_capped(value_depth + 1),
    )
}

/// The most events room is made for in advance (the rest grow the vector as usual):
/// the estimates come from what a peer sent.
const PRESIZE_MAX: usize = 1 << 16;

/// Routes every valid event of `request` (decoded from `frame`) into one batch.
/// The batch is `None` when no event was valid. Only a decompression failure fails the
/// whole request.
pub fn expand_request(
    frame: Bytes,
    request: &Request,
    router: &Router,
    limits: ExpandLimits,
    peer: &Arc<str>,
) -> Result<(Option<RoutedEvents>, Invalid), DecompressError> {
    let plain = match &request.entries {
        Entries::Packed(range) if request.options.compressed != Compression::None => {
            Some(decompress(
                request.options.compressed,
                &frame[range.clone()],
                limits.max_decompressed,
            )?)
        }
        _ => None,
    };
    Ok(expand_decompressed(
        frame, plain, request, router, limits, peer,
    ))
}

/// [`expand_request`] for a request whose compressed entries (if any) the caller has
/// decompressed into `plain` (the connection does, under its memory budget).
pub fn expand_decompressed(
    frame: Bytes,
    plain: Option<Vec<u8>>,
    request: &Request,
    router: &Router,
    limits: ExpandLimits,
    peer: &Arc<str>,
) -> (Option<RoutedEvents>, Invalid) {
    let compressed = plain.is_some();
    let (data, tag_range) = match plain {
        Some(mut plain) => {
            // Keep the tag beside the entries so every span indexes one buffer.
            let tag = &frame[request.tag.clone()];
            plain.reserve_exact(tag.len());
            let tag_at = plain.len();
            plain.extend_from_slice(tag);
            let tag_end = plain.len();
            // The buffer grew by doubling: give back what is unused before it waits in
            // the queue, whose byte budget counts only what is used (shrinking in
            // place costs no copy).
            plain.shrink_to_fit();
            (Bytes::from(plain), tag_at..tag_end)
        }
        None => (frame, request.tag.clone()),
    };
    let tag = router.route_tag(&data, tag_range.clone());
    let mut events = Vec::new();
    let mut invalid = Invalid::default();
    let mut take = |events: &mut Vec<Routed>, routed: Result<Routed, EventError>| match routed {
        Ok(routed) => events.push(routed),
        Err(e) => invalid.add(e),
    };
    let route = |ev: Result<Event, EventError>| ev.map(|ev| router.route(&data, &tag, ev));
    match &request.entries {
        Entries::Message(ev) => take(&mut events, route(ev.clone())),
        Entries::Forward { start, count } => {
            // The frame was scanned whole, so `count` entries are really there.
            events.reserve((*count as usize).min(PRESIZE_MAX));
            let mut entries = ForwardEvents::new(&data, *start, *count);
            loop {
                // The frame was scanned whole, depth cap included, so a plain skip
                // meets nothing the scanner would have refused.
                let fused = entries.read_with(|c| {
                    route_entry(
                        c,
                        &data,
                        router,
                        &tag,
                        SCANNED,
                        &mut |c, _| c.skip(),
                        &mut |c| c.skip(),
                    )
                });
                match fused {
                    Some(routed) => take(&mut events, Ok(routed)),
                    None => match entries.next() {
                        Some(ev) => take(&mut events, route(ev)),
                        None => break,
                    },
                }
            }
        }
        Entries::Packed(range) => {
            let range = if compressed {
                0..tag_range.start
            } else {
                range.clone()
            };
            let packed = Limits {
                max_size: range.len(),
                max_depth: limits.max_depth,
            };
            let total = range.len();
            let mut entries = PackedEvents::new(&data, range, packed);
            loop {
                match entries
                    .read_with(|c| route_packed_entry(c, &data, router, &tag, limits.max_depth))
                {
                    Some(routed) => take(&mut events, Ok(routed)),
                    None => match entries.next() {
                        Some(ev) => take(&mut events, route(ev)),
                        None => break,
                    },
                }
                if events.len() == 1 {
                    // A stream's entries are mostly alike in size: room for as many
                    // more as the first one's size fits in what is left.
                    let first = (total - entries.remaining()).max(1);
                    events.reserve((entries.remaining() / first).min(PRESIZE_MAX));
                }
            }
        }
    }
    if events.is_empty() {
        return (None, invalid);
    }
    let batch = RoutedEvents {
        data,
        tag: Span::of(tag_range),
        peer: peer.clone(),
        peer_host: None,
        connection: 0,
        events,
    };
    (Some(batch), invalid)
}

/// The reference `expand_request` is checked against: each entry decoded by the event
/// iterators (packed ones through the scanner's rules), then routed by
/// [`Router::route`], one walk at a time, with none of the fused fast path. Shared by
/// the unit tests below and the `request` fuzz target (feature `reference`).
#[cfg(any(test, feature = "reference"))]
pub mod reference {
    use super::*;

    /// Routed events, the invalid count and the first reason.
    pub type Outcome = (Vec<Routed>, u64, Option<EventError>);

    /// What `expand_request` must give for `request`, decoded from `frame`; `None` when
    /// its entries do not decompress.
    pub fn by_iterators(
        frame: &[u8],
        request: &Request,
        router: &Router,
        limits: ExpandLimits,
    ) -> Option<Outcome> {
        let compressed = request.options.compressed != Compression::None;
        let (data, tag) = match &request.entries {
            Entries::Packed(range) if compressed => {
                let mut plain = decompress(
                    request.options.compressed,
                    &frame[range.clone()],
                    limits.max_decompressed,
                )
                .ok()?;
                let at = plain.len();
                plain.extend_from_slice(&frame[request.tag.clone()]);
                let end = plain.len();
                (plain, at..end)
            }
            _ => (frame.to_vec(), request.tag.clone()),
        };
        let tag_route = router.route_tag(&data, tag.clone());
        let results: Vec<_> = match &request.entries {
            Entries::Message(ev) => vec![ev.clone()],
            Entries::Forward { start, count } => {
                ForwardEvents::new(&data, *start, *count).collect()
            }
            Entries::Packed(range) => {
                let range = if compressed {
                    0..tag.start
                } else {
                    range.clone()
                };
                let packed = Limits {
                    max_size: range.len(),
                    max_depth: limits.max_depth,
                };
                PackedEvents::new(&data, range, packed).collect()
            }
        };
        let mut outcome: Outcome = (Vec::new(), 0, None);
        for r in results {
            match r {
                Ok(ev) => outcome.0.push(router.route(&data, &tag_route, ev)),
                Err(e) => {
                    outcome.1 += 1;
                    outcome.2.get_or_insert(e);
                }
            }
        }
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;
    use crate::forward::decode_request;
    use crate::forward::msgpack::CAPPED_SKIP_DEPTH;
    use crate::route::Line;

    const TIME: [u8; 10] = [0xd7, 0x00, 0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 7];

    /// `[TIME, {"log": "hi", "TENANT_ID": "t", "n": value}]`
    fn entry(value: &[u8]) -> Vec<u8> {
        let mut e = vec![0x92];
        e.extend_from_slice(&TIME);
        e.extend_from_slice(&[0x83, 0xa3, b'l', b'o', b'g', 0xa2, b'h', b'i']);
        e.extend_from_slice(&[0xa9]);
        e.extend_from_slice(b"TENANT_ID");
        e.extend_from_slice(&[0xa1, b't', 0xa1, b'n']);
        e.extend_from_slice(value);
        e
    }

    /// A value nesting `levels` non-empty arrays.
    fn nested(levels: usize) -> Vec<u8> {
        let mut v = vec![0x91; levels];
        v.push(0x01);
        v
    }

    fn packed_frame(entries: &[u8]) -> Vec<u8> {
        let mut f = vec![0x92, 0xa1, b't', 0xc6];
        f.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        f.extend_from_slice(entries);
        f
    }

    fn forward_frame(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut f = vec![0x92, 0xa1, b't', 0x90 | entries.len() as u8];
        entries.iter().for_each(|e| f.extend_from_slice(e));
        f
    }

    use super::reference::Outcome;

    /// The default keys, and paths that enter the value of `n` (nested arrays in
    /// `cases`) at several depths, so that the one-pass walk enters what it skips
    /// otherwise.
    fn configs() -> [RouteConfig; 2] {
        [
            RouteConfig::default(),
            RouteConfig {
                tenant_keys: vec!["$.n[0][0]".into(), "TENANT_ID".into()],
                service_keys: vec!["$.n[0]".into(), "$['n']['k']".into()],
                line_keys: vec!["$.n".into(), "log".into()],
                container_id_key: "$.n[0][0][0][0]".into(),
                ..RouteConfig::default()
            },
        ]
    }

    fn built(frame: &[u8], max_depth: usize) -> Outcome {
        built_with(&RouteConfig::default(), frame, max_depth)
    }

    fn built_with(config: &RouteConfig, frame: &[u8], max_depth: usize) -> Outcome {
        let router = Router::new(config).unwrap();
        let request = decode_request(frame).unwrap();
        let limits = ExpandLimits {
            max_depth,
            max_decompressed: 1 << 20,
        };
        let frame = Bytes::copy_from_slice(frame);
        let (batch, invalid) =
            expand_request(frame, &request, &router, limits, &"p".into()).unwrap();
        let events = batch.map(|b| b.events).unwrap_or_default();
        (events, invalid.count, invalid.first)
    }

    /// The same request through the reference.
    fn by_iterators(config: &RouteConfig, frame: &[u8], max_depth: usize) -> Outcome {
        let router = Router::new(config).unwrap();
        let request = decode_request(frame).unwrap();
        let limits = ExpandLimits {
            max_depth,
            max_decompressed: 1 << 20,
        };
        super::reference::by_iterators(frame, &request, &router, limits).unwrap()
    }

    /// Entries each path must treat alike, with the depth cap they are checked under.
    fn cases() -> Vec<(Vec<Vec<u8>>, usize)> {
        let mut v15 = vec![0x92, 0x92];
        v15.extend_from_slice(&TIME);
        v15.extend_from_slice(&[0x81, 0xa1, b'k', 0x91, 0x01]);
        v15.extend_from_slice(&entry(&[0x01])[1 + TIME.len()..]);
        let mut not_map = vec![0x92];
        not_map.extend_from_slice(&TIME);
        not_map.push(0x91);
        not_map.push(0x01);
        let mut string_time = entry(&[0x01]);
        string_time.splice(1..1 + TIME.len(), [0xa1, b'x']);
        let mut extra = entry(&[0x01]);
        extra[0] = 0x94;
        extra.extend_from_slice(&[0x91, 0x91, 0x01, 0xc0]);
        vec![
            (vec![entry(&[0x01]), entry(&nested(2)), extra.clone()], 4),
            (vec![v15, not_map, string_time, entry(&[0xc0])], 4),
            // Depth: entry array 1, record 2, then the value's own levels.
            (
                vec![entry(&nested(2)), entry(&nested(3)), entry(&[0x02])],
                4,
            ),
            (vec![extra.clone(), entry(&[0x02])], 4),
            (vec![extra, entry(&[0x02])], 5),
            (vec![entry(&[0x01])], 1),
            (vec![entry(&[0x01])], 2),
            (vec![entry(&[0x80]), entry(&[0x90])], 2),
            (
                vec![entry(&nested(CAPPED_SKIP_DEPTH + 1)), entry(&[0x01])],
                64,
            ),
            (
                vec![entry(&nested(CAPPED_SKIP_DEPTH + 1))],
                CAPPED_SKIP_DEPTH + 2,
            ),
            (vec![entry(&[0x01]), entry(&[0xc1]), entry(&[0x01])], 4),
            (vec![entry(&[0x01]), entry(&[0xdb, 0xff, 0xff, 0, 0])], 4),
        ]
    }

    #[test]
    fn packed_entries_route_as_the_scanner_and_iterator_do() {
        for config in &configs() {
            for (entries, max_depth) in cases() {
                let frame = packed_frame(&entries.concat());
                let got = built_with(config, &frame, max_depth);
                assert_eq!(
                    got,
                    by_iterators(config, &frame, max_depth),
                    "{entries:x?} depth {max_depth} {config:?}"
                );
                // Every prefix of the stream: the last entry is cut short.
                let all = entries.concat();
                for cut in 1..all.len() {
                    let frame = packed_frame(&all[..cut]);
                    assert_eq!(
                        built_with(config, &frame, max_depth),
                        by_iterators(config, &frame, max_depth),
                        "{entries:x?} cut at {cut} {config:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn packed_outcomes_at_the_depth_cap() {
        let frame = packed_frame(&[entry(&nested(2)), entry(&nested(3)), entry(&[2])].concat());
        let (events, invalid, first) = built(&frame, 4);
        assert_eq!((events.len(), invalid), (1, 1));
        assert_eq!(
            first,
            Some(EventError::Packed("nesting deeper than 4 levels".into()))
        );
        let (events, invalid, _) = built(&frame, 5);
        assert_eq!((events.len(), invalid), (3, 0));
        let Line::Bytes(line) = events[0].line else {
            panic!("{:?}", events[0].line)
        };
        assert_eq!(line.get(&frame), b"hi");
        assert_eq!(events[0].tenant.unwrap().get(&frame), b"t");
        assert_eq!(events[0].time.nanos, 7);

        let cut = packed_frame(&[&entry(&[0x01])[..], &entry(&[0x01])[..20]].concat());
        let (events, invalid, first) = built(&cut, 4);
        assert_eq!(
            (events.len(), invalid, first),
            (
                1,
                1,
                Some(EventError::Packed(
                    "20 trailing bytes are an incomplete entry".into()
                ))
            )
        );
    }

    #[test]
    fn forward_entries_route_as_the_iterator_does() {
        for (entries, _) in cases() {
            let frame = forward_frame(&entries);
            if crate::forward::msgpack::Cursor::new(&frame).skip() != Ok(0..frame.len()) {
                continue; // not a frame the scanner would pass on
            }
            for config in &configs() {
                assert_eq!(
                    built_with(config, &frame, 4),
                    by_iterators(config, &frame, 4),
                    "{entries:x?} {config:?}"
                );
            }
        }
    }
}
