//! Joining Docker's split lines. Docker cuts a line longer than 16 KiB into pieces, each
//! sent as its own record with `partial_message: "true"`, a shared `partial_id`,
//! `partial_ordinal` ("1", "2", …) and `partial_last` ("true" on the last piece). When
//! joining is on, the pieces of one connection are held and published as one line:
//! when the last piece arrives, or as much as arrived when the joined line reaches its
//! size cap, the pieces stop coming for `timeout`, or the connection ends (then the
//! record keeps `partial_message: "true"` to say it is incomplete).
//!
//! The joiner sits before the publisher, after the buffer, so that lines are joined the
//! same way whether their pieces come from memory or are read back from the spool.
//! What holds a request in the buffer (a mark, `M`) stays with the lines its pieces are
//! held in, so that the request leaves the buffer only once all of it is published.

use crate::event::RoutedEvents;
use crate::forward::msgpack::{Cursor, Kind};
use crate::forward::msgpack_write::{map_head, str_head};
use crate::forward::{Event, EventTime};
use crate::route::{Line, Routed, Router, Span};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of the joiner.
#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    /// Largest joined line; past it, what was joined is published as it is.
    pub max_bytes: usize,
    /// How long to wait for the next piece.
    pub timeout: Duration,
}

/// Lines held at once, at most; past it the oldest is published as far as it got
/// (clients choose their partial ids, so the table must not grow without bound).
const MAX_PENDING: usize = 10_000;

/// The pieces of one line seen so far.
struct Pending<M> {
    /// The first piece: its batch data, record and line, the template of the joined
    /// record.
    data: Bytes,
    tag: Span,
    record: Span,
    line: Span,
    time: EventTime,
    joined: Vec<u8>,
    /// What holds the pieces' requests in the buffer, released when the line is
    /// published.
    marks: Vec<M>,
    peer_host: Option<Arc<str>>,
    /// The connection its last piece came on.
    connection: u64,
    deadline: Instant,
}

/// A line's key: the connection it comes on and its `partial_id`.
type Key = (Arc<str>, Box<[u8]>);

/// The split lines being joined, of every connection.
pub struct Joiner<M> {
    limits: JoinLimits,
    pending: HashMap<Key, Pending<M>>,
}

/// Events to publish now, and the marks to release once they are.
pub struct Joined<M> {
    pub events: RoutedEvents,
    pub marks: Vec<M>,
}

/// The partial fields of a record, when it is a piece.
struct Piece<'a> {
    id: &'a [u8],
    last: bool,
}

/// Keys Docker adds to pieces; dropped from a complete joined record.
const PARTIAL_KEYS: [&[u8]; 4] = [
    b"partial_message",
    b"partial_id",
    b"partial_ordinal",
    b"partial_last",
];

fn piece_of<'a>(data: &'a [u8], record: Span) -> Option<Piece<'a>> {
    let mut c = Cursor::at(data, record.start as usize);
    let pairs = c.map_len().ok()?;
    let (mut partial, mut id, mut last) = (false, None, false);
    for _ in 0..pairs {
        let key = match c.peek_kind() {
            Ok(Kind::Str) => c.str().ok().map(|r| &data[r]),
            _ => None,
        };
        let value = match c.peek_kind() {
            Ok(Kind::Str) => c.str().ok().map(|r| &data[r]),
            _ => {
                c.skip().ok()?;
                None
            }
        };
        match (key, value) {
            (Some(b"partial_message"), Some(v)) => partial = v == b"true",
            (Some(b"partial_id"), Some(v)) => id = Some(v),
            (Some(b"partial_last"), Some(v)) => last = v == b"true",
            _ => {}
        }
    }
    match (partial, id) {
        (true, Some(id)) => Some(Piece { id, last }),
        _ => None,
    }
}

impl<M: Clone> Joiner<M> {
    pub fn new(limits: JoinLimits) -> Joiner<M> {
        Joiner {
            limits,
            pending: HashMap::new(),
        }
    }

    /// When the oldest held line must be published even without its last piece.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Takes a request's events and its mark; returns what to publish now, in order:
    /// events that are not pieces pass through, pieces are held until their line is
    /// complete. The mark goes with every line still holding a piece of this request,
    /// else with the last batch returned; with neither, it comes back alone.
    pub fn offer(&mut self, mut batch: RoutedEvents, mark: M, router: &Router) -> Vec<Joined<M>> {
        let mut out = Vec::new();
        let mut passing = Vec::new();
        // The lines this request's pieces went into that are still held.
        let mut holding: Vec<Box<[u8]>> = Vec::new();
        for ev in std::mem::take(&mut batch.events) {
            let (Some(piece), Line::Bytes(line)) = (piece_of(&batch.data, ev.record), ev.line)
            else {
                passing.push(ev);
                continue;
            };
            let key: Key = (batch.peer.clone(), piece.id.into());
            if !self.pending.contains_key(&key) {
                if self.pending.len() >= MAX_PENDING {
                    out.extend(self.evict_oldest(router));
                }
                self.pending.insert(
                    key.clone(),
                    Pending {
                        data: batch.data.clone(),
                        tag: batch.tag,
                        record: ev.record,
                        line,
                        time: ev.time,
                        joined: Vec::new(),
                        marks: Vec::new(),
                        peer_host: batch.peer_host.clone(),
                        connection: batch.connection,
                        deadline: Instant::now(),
                    },
                );
            }
            let Some(p) = self.pending.get_mut(&key) else {
                continue;
            };
            p.joined.extend_from_slice(line.get(&batch.data));
            p.connection = batch.connection;
            p.deadline = Instant::now() + self.limits.timeout;
            if piece.last || p.joined.len() >= self.limits.max_bytes {
                // What passed before this line goes first, to keep the order.
                if !passing.is_empty() {
                    out.push(Joined {
                        events: rest_of(&batch, std::mem::take(&mut passing)),
                        marks: Vec::new(),
                    });
                }
                holding.retain(|h| **h != *key.1);
                if let Some(p) = self.pending.remove(&key) {
                    out.push(joined_batch(p, piece.last, router, &batch.peer));
                }
            } else if !holding.contains(&key.1) {
                holding.push(key.1);
            }
        }
        if !passing.is_empty() {
            out.push(Joined {
                events: rest_of(&batch, passing),
                marks: Vec::new(),
            });
        }
        // The request leaves the buffer once all of it is published: with a line still
        // held, that is when the line is.
        if !holding.is_empty() {
            for id in holding {
                if let Some(p) = self.pending.get_mut(&(batch.peer.clone(), id)) {
                    p.marks.push(mark.clone());
                }
            }
        } else if let Some(last) = out.last_mut() {
            last.marks.push(mark);
        } else {
            out.push(Joined {
                events: rest_of(&batch, Vec::new()),
                marks: vec![mark],
            });
        }
        out
    }

    /// Publishes, incomplete, every line whose next piece is overdue.
    pub fn expire(&mut self, router: &Router) -> Vec<Joined<M>> {
        let now = Instant::now();
        self.take_where(router, |_, p| p.deadline <= now)
    }

    /// Publishes, incomplete, the lines whose last piece came on a connection that
    /// ended (or, with `None`, every line: the gateway stops).
    pub fn ended(&mut self, connection: Option<u64>, router: &Router) -> Vec<Joined<M>> {
        self.take_where(router, |_, p| connection.is_none_or(|c| p.connection == c))
    }

    fn take_where(
        &mut self,
        router: &Router,
        due: impl Fn(&Key, &Pending<M>) -> bool,
    ) -> Vec<Joined<M>> {
        let keys: Vec<Key> = self
            .pending
            .iter()
            .filter(|(k, p)| due(k, p))
            .map(|(k, _)| k.clone())
            .collect();
        let mut lines: Vec<(Key, Pending<M>)> = keys
            .into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|p| (k, p)))
            .collect();
        // Oldest first (the deadline moves with each piece, so this is the order in
        // which the lines last grew).
        lines.sort_by_key(|(_, p)| p.deadline);
        lines
            .into_iter()
            .map(|(k, p)| joined_batch(p, false, router, &k.0))
            .collect()
    }

    fn evict_oldest(&mut self, router: &Router) -> Option<Joined<M>> {
        let key = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.deadline)
            .map(|(k, _)| k.clone())?;
        let p = self.pending.remove(&key)?;
        Some(joined_batch(p, false, router, &key.0))
    }
}

/// The events of `batch` that are not pieces, in a batch of their own.
fn rest_of(batch: &RoutedEvents, events: Vec<Routed>) -> RoutedEvents {
    batch.with_events(events)
}

/// Builds the joined record — the first piece's record with the joined line, and
/// without the partial keys when complete (with `partial_message` alone when not) —
/// and routes it.
fn joined_batch<M>(p: Pending<M>, complete: bool, router: &Router, peer: &Arc<str>) -> Joined<M> {
    let data = &p.data[..];
    let mut record = Vec::with_capacity(p.joined.len() + p.record.len() + 16);
    let keep = |key_start: usize| {
        let key_text = Cursor::at(data, key_start).str().ok().map(|r| &data[r]);
        !key_text
            .is_some_and(|k| PARTIAL_KEYS.contains(&k) && (complete || k != b"partial_message"))
    };
    // The pairs kept, as (key, value) byte ranges: counted first, so that the map's
    // header is written once, in its smallest form.
    let mut c = Cursor::at(data, p.record.start as usize);
    let pairs = c.map_len().unwrap_or(0);
    let mut kept = Vec::with_capacity(pairs as usize);
    for _ in 0..pairs {
        let key_start = c.pos();
        let Ok(key) = c.skip() else { break };
        let value_start = c.pos();
        let Ok(value) = c.skip() else { break };
        if keep(key_start) {
            kept.push((key, value, value_start));
        }
    }
    let count = u32::try_from(kept.len()).unwrap_or(u32::MAX);
    record.extend_from_slice(map_head(count).as_bytes());
    for (key, value, value_start) in kept {
        record.extend_from_slice(&data[key]);
        let payload = Cursor::at(data, value_start).bytes().ok();
        if payload == Some(p.line.start as usize..p.line.end as usize) {
            record.extend_from_slice(str_head(p.joined.len()).as_bytes());
            record.extend_from_slice(&p.joined);
        } else {
            record.extend_from_slice(&data[value]);
        }
    }
    let record_len = record.len();
    record.extend_from_slice(p.tag.get(data));
    let data = Bytes::from(record);
    let tag_route = router.route_tag(&data, record_len..data.len());
    let routed = router.route(
        &data,
        &tag_route,
        Event {
            time: p.time,
            record: 0..record_len,
        },
    );
    Joined {
        events: RoutedEvents {
            data,
            tag: tag_route.tag,
            peer: peer.clone(),
            peer_host: p.peer_host,
            connection: p.connection,
            events: vec![routed],
        },
        marks: p.marks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn str8(out: &mut Vec<u8>, s: &[u8]) {
        out.push(0xd9);
        out.push(s.len() as u8);
        out.extend_from_slice(s);
    }

    /// A batch of one Docker-shaped record: tag "ctr", then the record. `peer` names
    /// the client and its connection.
    fn piece(
        router: &Router,
        peer: &str,
        log: &str,
        partial: Option<(&str, &str, bool)>,
    ) -> RoutedEvents {
        let mut data = b"ctr".to_vec();
        let mut pairs: Vec<(&str, String)> = vec![("log", log.into()), ("source", "stdout".into())];
        if let Some((id, ordinal, last)) = partial {
            pairs.push(("partial_message", "true".into()));
            pairs.push(("partial_id", id.into()));
            pairs.push(("partial_ordinal", ordinal.into()));
            pairs.push(("partial_last", if last { "true" } else { "false" }.into()));
        }
        data.push(0x80 | pairs.len() as u8);
        for (k, v) in &pairs {
            str8(&mut data, k.as_bytes());
            str8(&mut data, v.as_bytes());
        }
        let tag = router.route_tag(&data, 0..3);
        let ev = router.route(
            &data,
            &tag,
            Event {
                time: EventTime { secs: 1, nanos: 0 },
                record: 3..data.len(),
            },
        );
        RoutedEvents {
            data: Bytes::from(data),
            tag: tag.tag,
            peer: peer.into(),
            peer_host: None,
            connection: if peer == "b" { 2 } else { 1 },
            events: vec![ev],
        }
    }

    fn line(j: &Joined<u32>) -> Vec<u8> {
        let b = &j.events;
        match b.events[0].line {
            Line::Bytes(s) => s.get(&b.data).to_vec(),
            Line::Json(_) => panic!("not a string line"),
        }
    }

    fn keys(j: &Joined<u32>) -> Vec<String> {
        let b = &j.events;
        let data = &b.data[..];
        let mut c = Cursor::at(data, b.events[0].record.start as usize);
        let n = c.map_len().unwrap();
        (0..n)
            .map(|_| {
                let k = c.str().unwrap();
                c.skip().unwrap();
                String::from_utf8(data[k].to_vec()).unwrap()
            })
            .collect()
    }

    fn limits() -> JoinLimits {
        JoinLimits {
            max_bytes: 1000,
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn pieces_become_one_line_and_others_pass() {
        let router = Router::new(&RouteConfig::default()).unwrap();
        let mut j = Joiner::new(limits());
        let p = |log, partial| piece(&router, "p", log, partial);
        assert!(j
            .offer(p("aaa", Some(("id1", "1", false))), 1, &router)
            .is_empty());
        let plain = j.offer(p("plain", None), 2, &router);
        assert_eq!(line(&plain[0]), b"plain");
        assert_eq!(plain[0].marks, [2]);
        assert!(j
            .offer(p("bbb", Some(("id1", "2", false))), 3, &router)
            .is_empty());
        let done = j.offer(p("cc", Some(("id1", "3", true))), 4, &router);
        assert_eq!(done.len(), 1);
        assert_eq!(line(&done[0]), b"aaabbbcc");
        assert_eq!(keys(&done[0]), ["log", "source"]);
        assert_eq!(done[0].events.tag.get(&done[0].events.data), b"ctr");
        // The joined line releases every piece's request.
        assert_eq!(done[0].marks, [1, 3, 4]);
        assert!(j.next_deadline().is_none());
    }

    #[test]
    fn lines_of_two_connections_with_one_id_stay_apart() {
        let router = Router::new(&RouteConfig::default()).unwrap();
        let mut j = Joiner::new(limits());
        assert!(j
            .offer(
                piece(&router, "a", "one-", Some(("same", "1", false))),
                1,
                &router
            )
            .is_empty());
        assert!(j
            .offer(
                piece(&router, "b", "two-", Some(("same", "1", false))),
                2,
                &router
            )
            .is_empty());
        let a = j.offer(
            piece(&router, "a", "end", Some(("same", "2", true))),
            3,
            &router,
        );
        assert_eq!(line(&a[0]), b"one-end");
        assert_eq!(a[0].marks, [1, 3]);
        let b = j.ended(Some(2), &router);
        assert_eq!(line(&b[0]), b"two-");
        assert_eq!(b[0].marks, [2]);
        assert_eq!(keys(&b[0]), ["log", "source", "partial_message"]);
    }

    #[test]
    fn cap_and_expiry_publish_incomplete_lines() {
        let router = Router::new(&RouteConfig::default()).unwrap();
        let mut j = Joiner::new(JoinLimits {
            max_bytes: 5,
            timeout: Duration::from_millis(1),
        });
        let p = |log, partial| piece(&router, "p", log, partial);
        assert!(j
            .offer(p("abc", Some(("x", "1", false))), 1, &router)
            .is_empty());
        let capped = j.offer(p("def", Some(("x", "2", false))), 2, &router);
        assert_eq!(line(&capped[0]), b"abcdef");
        assert_eq!(keys(&capped[0]), ["log", "source", "partial_message"]);
        assert!(j
            .offer(p("zz", Some(("y", "1", false))), 3, &router)
            .is_empty());
        let deadline = j.next_deadline().unwrap();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let expired = j.expire(&router);
        assert_eq!(line(&expired[0]), b"zz");
        assert_eq!(expired[0].marks, [3]);
        assert!(j.ended(None, &router).is_empty());
    }
}
