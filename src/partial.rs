//! Joining Docker's split lines. Docker cuts a line longer than 16 KiB into pieces, each
//! sent as its own record with `partial_message: "true"`, a shared `partial_id`,
//! `partial_ordinal` ("1", "2", …) and `partial_last` ("true" on the last piece). When
//! joining is on, the pieces of one connection are held and published as one line:
//! when the last piece arrives, or as much as arrived when the joined line reaches its
//! size cap, the pieces stop coming for `timeout`, or the connection ends (then the
//! record keeps `partial_message: "true"` to say it is incomplete).

use crate::forward::msgpack::{Cursor, Kind};
use crate::forward::{Event, EventTime};
use crate::publish::Batch;
use crate::route::{Line, Routed, Router, Span};
use crate::spool::Ticket;
use bytes::Bytes;
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

/// The pieces of one line seen so far.
struct Pending {
    id: Vec<u8>,
    /// The first piece: its batch data, record and line, the template of the joined
    /// record.
    data: Bytes,
    tag: Span,
    record: Span,
    line: Span,
    time: EventTime,
    joined: Vec<u8>,
    /// Spool records of the pieces, released when the joined line is published.
    tickets: Vec<Ticket>,
    peer_host: Option<Arc<str>>,
    deadline: Instant,
}

/// The partial-line state of one connection.
pub struct Joiner {
    limits: JoinLimits,
    pending: Vec<Pending>,
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

impl Joiner {
    pub fn new(limits: JoinLimits) -> Joiner {
        Joiner {
            limits,
            pending: Vec::new(),
        }
    }

    /// When the oldest held line must be published even without its last piece.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Takes a batch; returns the batches to publish now, in order: events that are not
    /// pieces pass through, pieces are held until their line is complete.
    pub fn offer(&mut self, mut batch: Batch, router: &Router) -> Vec<Batch> {
        let mut out = Vec::new();
        let mut passing = Vec::new();
        // The line this request's last piece went into, if it is still held.
        let mut held_id: Option<Vec<u8>> = None;
        let tickets = std::mem::take(&mut batch.spooled);
        for ev in std::mem::take(&mut batch.events) {
            let (Some(piece), Line::Bytes(line)) = (piece_of(&batch.data, ev.record), ev.line)
            else {
                passing.push(ev);
                continue;
            };
            let at = match self.pending.iter().position(|p| p.id == piece.id) {
                Some(at) => at,
                None => {
                    self.pending.push(Pending {
                        id: piece.id.to_vec(),
                        data: batch.data.clone(),
                        tag: batch.tag,
                        record: ev.record,
                        line,
                        time: ev.time,
                        joined: Vec::new(),
                        tickets: Vec::new(),
                        peer_host: batch.peer_host.clone(),
                        deadline: Instant::now(),
                    });
                    self.pending.len() - 1
                }
            };
            let p = &mut self.pending[at];
            p.joined.extend_from_slice(line.get(&batch.data));
            p.deadline = Instant::now() + self.limits.timeout;
            if piece.last || p.joined.len() >= self.limits.max_bytes {
                // What passed before this line goes first, to keep the order.
                if !passing.is_empty() {
                    out.push(rest_of(&batch, std::mem::take(&mut passing)));
                }
                let p = self.pending.swap_remove(at);
                held_id = held_id.filter(|h| *h != p.id);
                out.push(joined_batch(p, piece.last, router, &batch.peer));
            } else {
                held_id = Some(piece.id.to_vec());
            }
        }
        if !passing.is_empty() {
            out.push(rest_of(&batch, passing));
        }
        // The request's spool records stay until all of it is published: with a line
        // still held, that is when the line is.
        let held = held_id.and_then(|id| self.pending.iter_mut().find(|p| p.id == id));
        match (held, out.last_mut()) {
            (Some(p), _) => p.tickets.extend(tickets),
            (None, Some(last)) => last.spooled.extend(tickets),
            (None, None) => drop(tickets),
        }
        out
    }

    /// Publishes, incomplete, every line whose next piece is overdue (or all of them
    /// with `all`, when the connection ends).
    pub fn expire(&mut self, all: bool, router: &Router, peer: &Arc<str>) -> Vec<Batch> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if all || self.pending[i].deadline <= now {
                let p = self.pending.swap_remove(i);
                out.push(joined_batch(p, false, router, peer));
            } else {
                i += 1;
            }
        }
        out
    }
}

/// The events of `batch` that are not pieces, in a batch of their own.
fn rest_of(batch: &Batch, events: Vec<Routed>) -> Batch {
    Batch {
        data: batch.data.clone(),
        tag: batch.tag,
        peer: batch.peer.clone(),
        peer_host: batch.peer_host.clone(),
        events,
        permit: None,
        spooled: Vec::new(),
    }
}

/// Builds the joined record — the first piece's record with the joined line, and
/// without the partial keys when complete (with `partial_message` alone when not) —
/// and routes it.
fn joined_batch(p: Pending, complete: bool, router: &Router, peer: &Arc<str>) -> Batch {
    let data = &p.data[..];
    let mut record = Vec::with_capacity(p.joined.len() + p.record.len() + 16);
    let mut c = Cursor::at(data, p.record.start as usize);
    let pairs = c.map_len().unwrap_or(0);
    let mut kept = 0u32;
    record.extend_from_slice(&[0xdf, 0, 0, 0, 0]); // map32, count patched below
    for _ in 0..pairs {
        let key_start = c.pos();
        let Ok(key) = c.skip() else { break };
        let value_start = c.pos();
        let Ok(value) = c.skip() else { break };
        let key_text = Cursor::at(data, key_start).str().ok().map(|r| &data[r]);
        let drop_key = key_text
            .is_some_and(|k| PARTIAL_KEYS.contains(&k) && (complete || k != b"partial_message"));
        if drop_key {
            continue;
        }
        record.extend_from_slice(&data[key]);
        let payload = Cursor::at(data, value_start).bytes().ok();
        if payload == Some(p.line.start as usize..p.line.end as usize) {
            record.push(0xdb);
            record.extend_from_slice(&(p.joined.len() as u32).to_be_bytes());
            record.extend_from_slice(&p.joined);
        } else {
            record.extend_from_slice(&data[value]);
        }
        kept += 1;
    }
    record[1..5].copy_from_slice(&kept.to_be_bytes());
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
    Batch {
        data,
        tag: tag_route.tag,
        peer: peer.clone(),
        peer_host: p.peer_host,
        events: vec![routed],
        permit: None,
        spooled: p.tickets,
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

    /// A batch of one Docker-shaped record: tag "ctr", then the record.
    fn piece(router: &Router, log: &str, partial: Option<(&str, &str, bool)>) -> Batch {
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
        Batch {
            data: Bytes::from(data),
            tag: tag.tag,
            peer: "p".into(),
            peer_host: None,
            events: vec![ev],
            permit: None,
            spooled: Vec::new(),
        }
    }

    fn line(b: &Batch) -> Vec<u8> {
        match b.events[0].line {
            Line::Bytes(s) => s.get(&b.data).to_vec(),
            Line::Json(_) => panic!("not a string line"),
        }
    }

    fn keys(b: &Batch) -> Vec<String> {
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
        assert!(j
            .offer(piece(&router, "aaa", Some(("id1", "1", false))), &router)
            .is_empty());
        let plain = j.offer(piece(&router, "plain", None), &router);
        assert_eq!(line(&plain[0]), b"plain");
        assert!(j
            .offer(piece(&router, "bbb", Some(("id1", "2", false))), &router)
            .is_empty());
        let done = j.offer(piece(&router, "cc", Some(("id1", "3", true))), &router);
        assert_eq!(done.len(), 1);
        assert_eq!(line(&done[0]), b"aaabbbcc");
        assert_eq!(keys(&done[0]), ["log", "source"]);
        assert_eq!(done[0].tag.get(&done[0].data), b"ctr");
        assert!(j.next_deadline().is_none());
    }

    #[test]
    fn cap_and_expiry_publish_incomplete_lines() {
        let router = Router::new(&RouteConfig::default()).unwrap();
        let mut j = Joiner::new(JoinLimits {
            max_bytes: 5,
            timeout: Duration::from_secs(60),
        });
        assert!(j
            .offer(piece(&router, "abc", Some(("x", "1", false))), &router)
            .is_empty());
        let capped = j.offer(piece(&router, "def", Some(("x", "2", false))), &router);
        assert_eq!(line(&capped[0]), b"abcdef");
        assert_eq!(keys(&capped[0]), ["log", "source", "partial_message"]);
        assert!(j
            .offer(piece(&router, "zz", Some(("y", "1", false))), &router)
            .is_empty());
        let flushed = j.expire(true, &router, &"p".into());
        assert_eq!(line(&flushed[0]), b"zz");
    }
}
