//! What the requests of one read leave to do once they are decoded: their events, merged
//! into as few batches as possible, and the acks to send once those batches are with
//! the publisher.
//!
//! Clients in Message mode (fluent-logger libraries, Docker's async mode) send one
//! small request per record, and one read often holds a hundred of them. Handing each
//! to the publisher alone costs a queue operation, a thread wakeup and an allocation
//! per record; merged, the cost is paid once per read.

use crate::dedup::Flight;
use crate::event::RoutedEvents;
use crate::forward::{Compression, Request};
use crate::route::{same_bytes, Line, Routed, Span};
use bytes::Bytes;

/// A merged batch is handed off once it holds this many events or bytes, so that one
/// read of many requests still reaches subscribers in bounded pieces.
const MAX_EVENTS: usize = 4096;
const MAX_BYTES: usize = 1 << 20;

/// The batches, acks and chunk ids of the requests handled since the last hand-off.
#[derive(Default)]
pub struct Handoff {
    /// Keep each request's bytes beside its events (for the spool).
    keep_frames: bool,
    /// Complete batches, in request order, to send before `merging`.
    ready: Vec<Ready>,
    /// The batch being merged from consecutive requests of one read.
    merging: Option<Merging>,
    /// Acks to write once every batch above is with the publisher, in request order.
    pub acks: Vec<u8>,
    /// How many acks `acks` holds.
    pub ack_count: u64,
    /// The chunks in flight, to mark accepted once their batches are handed off.
    pub chunks: Vec<Flight>,
    /// The intake budget the batches' bytes hold (their read buffer, decompressed
    /// entries) until the buffer layer has them.
    pub memory: super::intake_memory::Grant,
}

/// The events of requests handled together, and the requests' bytes when kept.
pub struct Ready {
    pub events: RoutedEvents,
    pub frames: Vec<Bytes>,
}

impl Ready {
    /// Copies what is small out of the read buffer it was read into (which holds
    /// `allocation` bytes), so that waiting to be held does not keep the buffer alive.
    pub fn unpin(&mut self, allocation: usize) {
        self.events.unpin(allocation);
        for frame in &mut self.frames {
            crate::event::unpin(frame, allocation);
        }
    }
}

/// A batch whose data will be `region[start..end]`, the requests merged into it. Until
/// it is closed its `data` is its first request's bytes (which begin at `start`, so the
/// spans hold), to spare a reference count update per request.
struct Merging {
    batch: RoutedEvents,
    frames: Vec<Bytes>,
    region: Bytes,
    start: usize,
    end: usize,
}

impl Merging {
    fn close(mut self) -> Ready {
        self.batch.data = self.region.slice(self.start..self.end);
        Ready {
            events: self.batch,
            frames: self.frames,
        }
    }
}

impl Handoff {
    /// `keep_frames`: keep each request's bytes with its events, for the spool.
    pub fn new(keep_frames: bool) -> Handoff {
        Handoff {
            keep_frames,
            ..Handoff::default()
        }
    }

    /// Adds the batch of a request whose bytes are `region[at..at + batch.data.len()]`
    /// and whose spans index those bytes (an uncompressed request). It joins the batch
    /// being merged when both come from the same region and have the same tag; requests
    /// in between that published nothing (heartbeats, duplicates) are simply covered.
    pub fn merge(&mut self, batch: RoutedEvents, region: &Bytes, at: usize) {
        if let Some(m) = &mut self.merging {
            let same_tag = same_bytes(m.batch.tag.get(&m.batch.data), batch.tag.get(&batch.data));
            let end = at + batch.data.len();
            if same_tag && m.region.as_ptr() == region.as_ptr() && end - m.start <= MAX_BYTES {
                let shift = (at - m.start) as u32;
                m.end = end;
                m.batch
                    .events
                    .extend(batch.events.iter().map(|e| shifted(e, shift)));
                if self.keep_frames {
                    m.frames.push(batch.data);
                }
                return;
            }
        }
        self.close_merging();
        let end = at + batch.data.len();
        let frames = if self.keep_frames {
            vec![batch.data.clone()]
        } else {
            Vec::new()
        };
        self.merging = Some(Merging {
            batch,
            frames,
            region: region.clone(),
            start: at,
            end,
        });
    }

    /// Adds the batch of `request`, whose bytes are `frame`, at `region[at..]`: merged
    /// with the batches before it when its spans index those bytes (an uncompressed
    /// request), else on its own (its data is the decompressed entries).
    pub fn add(
        &mut self,
        batch: RoutedEvents,
        request: &Request,
        region: &Bytes,
        at: usize,
        frame: Bytes,
    ) {
        if request.options.compressed == Compression::None {
            self.merge(batch, region, at);
        } else {
            self.push(batch, frame);
        }
    }

    /// Adds a batch that cannot be merged (its data is not the request's bytes, which
    /// are `frame`).
    fn push(&mut self, batch: RoutedEvents, frame: Bytes) {
        self.close_merging();
        let frames = if self.keep_frames {
            vec![frame]
        } else {
            Vec::new()
        };
        self.ready.push(Ready {
            events: batch,
            frames,
        });
    }

    /// Queues an ack and, when duplicates are tracked, the chunk in flight it
    /// acknowledges.
    pub fn ack(&mut self, ack: Vec<u8>, chunk: Option<Flight>) {
        self.acks.extend_from_slice(&ack);
        self.ack_count += 1;
        self.chunks.extend(chunk);
    }

    /// True when `chunk` was accepted earlier in this hand-off (a resend read together
    /// with the original).
    pub fn holds_chunk(&self, chunk: &[u8]) -> bool {
        self.chunks.iter().any(|c| c.chunk() == chunk)
    }

    /// True when nothing waits to be handed off or acked.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.merging.is_none() && self.ack_count == 0
    }

    /// True when it is time to hand off before taking more requests.
    pub fn is_full(&self) -> bool {
        let merged = self.merging.as_ref().map_or(0, |m| m.batch.events.len());
        let ready: usize = self.ready.iter().map(|b| b.events.events.len()).sum();
        merged + ready >= MAX_EVENTS
    }

    /// The batches to send, in request order; the acks and chunks stay.
    pub fn take_batches(&mut self) -> Vec<Ready> {
        self.close_merging();
        std::mem::take(&mut self.ready)
    }

    fn close_merging(&mut self) {
        if let Some(m) = self.merging.take() {
            self.ready.push(m.close());
        }
    }
}

/// `e` with every span moved `by` bytes later.
fn shifted(e: &Routed, by: u32) -> Routed {
    let s = |span: Span| Span {
        start: span.start + by,
        end: span.end + by,
    };
    Routed {
        time: e.time,
        tenant: e.tenant.map(s),
        service: e.service.map(s),
        container: s(e.container),
        line: match e.line {
            Line::Bytes(span) => Line::Bytes(s(span)),
            Line::Json(span) => Line::Json(s(span)),
        },
        record: s(e.record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;
    use crate::expand::{expand_request, ExpandLimits};
    use crate::forward::decode_request;
    use crate::route::Router;
    use std::sync::Arc;

    const LIMITS: ExpandLimits = ExpandLimits {
        max_depth: 32,
        max_decompressed: 1 << 20,
    };

    /// A Message request: `[tag, 1700000000, {"log": line, "TENANT_ID": tenant}]`.
    fn message(tag: &str, line: &str, tenant: &str) -> Vec<u8> {
        let mut f = vec![0x93, 0xa0 | tag.len() as u8];
        f.extend_from_slice(tag.as_bytes());
        f.extend_from_slice(&[0xce, 0x65, 0x53, 0xf1, 0x00, 0x82, 0xa3]);
        f.extend_from_slice(b"log");
        f.push(0xa0 | line.len() as u8);
        f.extend_from_slice(line.as_bytes());
        f.push(0xa9);
        f.extend_from_slice(b"TENANT_ID");
        f.push(0xa0 | tenant.len() as u8);
        f.extend_from_slice(tenant.as_bytes());
        f
    }

    /// Message requests `(tag, line, tenant)` read together, routed and merged: the
    /// region they were read in, and the batches.
    fn merged(requests: &[(&str, &str, &str)]) -> (Bytes, Vec<RoutedEvents>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (tag, line, tenant) in requests {
            bytes.extend(message(tag, line, tenant));
            ends.push(bytes.len());
        }
        let region = Bytes::from(bytes);
        let router = Router::new(&RouteConfig::default()).unwrap();
        let peer: Arc<str> = "test".into();
        let mut h = Handoff::new(true);
        let mut at = 0;
        for end in ends {
            let frame = region.slice(at..end);
            let request = decode_request(&frame).unwrap();
            let (batch, _) = expand_request(frame, &request, &router, LIMITS, &peer).unwrap();
            h.merge(batch.unwrap(), &region, at);
            at = end;
        }
        let batches = h.take_batches();
        // Each batch keeps the bytes of the requests merged into it.
        let frames: usize = batches.iter().map(|b| b.frames.len()).sum();
        assert_eq!(frames, requests.len());
        (region, batches.into_iter().map(|b| b.events).collect())
    }

    fn lines(b: &RoutedEvents) -> Vec<(&[u8], &[u8])> {
        b.events
            .iter()
            .map(|e| {
                let Line::Bytes(line) = e.line else {
                    panic!("line is not a string")
                };
                (e.tenant.unwrap().get(&b.data), line.get(&b.data))
            })
            .collect()
    }

    #[test]
    fn requests_with_one_tag_become_one_batch_with_shifted_spans() {
        let (region, batches) = merged(&[
            ("app", "one", "t1"),
            ("app", "two", "t2"),
            ("app", "three", "t1"),
        ]);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].data, region);
        assert_eq!(batches[0].tag.get(&batches[0].data), b"app");
        assert_eq!(
            lines(&batches[0]),
            [
                (&b"t1"[..], &b"one"[..]),
                (b"t2", b"two"),
                (b"t1", b"three")
            ]
        );
    }

    #[test]
    fn a_new_tag_starts_a_new_batch() {
        let (_, batches) = merged(&[
            ("app", "one", "t1"),
            ("web", "two", "t1"),
            ("web", "three", "t1"),
        ]);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].tag.get(&batches[0].data), b"app");
        assert_eq!(lines(&batches[0]), [(&b"t1"[..], &b"one"[..])]);
        assert_eq!(batches[1].tag.get(&batches[1].data), b"web");
        assert_eq!(
            lines(&batches[1]),
            [(&b"t1"[..], &b"two"[..]), (b"t1", b"three")]
        );
    }

    #[test]
    fn acks_and_chunks_are_kept_in_order() {
        let dedup = crate::dedup::Dedup::new(4, 4).unwrap();
        let crate::dedup::Check::New(flight) = dedup.check(&"p".into(), b"c1") else {
            panic!("c1 is new")
        };
        let mut h = Handoff::default();
        assert!(h.is_empty());
        h.ack(vec![1, 2], Some(flight));
        h.ack(vec![3], None);
        assert!(!h.is_empty());
        assert_eq!(h.acks, [1, 2, 3]);
        assert_eq!(h.ack_count, 2);
        assert!(h.holds_chunk(b"c1"));
        assert!(!h.holds_chunk(b"c2"));
    }
}
