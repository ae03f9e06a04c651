//! Per-tenant holds: a tenant's events wait here, in order, while no subscription covers
//! its topic (its collector is away: restarting, crashed) or while its subscribers are
//! full (a collector stopped or slow), so that the other tenants keep flowing.
//!
//! Two bounds, `output.tenant_hold_bytes` and `output.tenant_hold_ms`:
//! - When the held events reach the byte bound, the oldest held events of tenants that
//!   no subscription covers are dropped, counted, until they are below it ([`shed`]):
//!   nobody listens for them, and a client that sends lines for tenants nobody
//!   subscribes to must not hold the others back. What is held only because its
//!   subscribers are full is never dropped: if that alone fills the bound, the
//!   publisher takes nothing new from the buffer until some goes out, as a full
//!   subscriber did before holds were per tenant.
//! - Events of a tenant that no subscription covers are dropped, counted, once they
//!   have waited the time bound.
//!
//! [`shed`]: TenantHold::shed
//!
//! Each held piece keeps the [`Mark`]s of the requests it came from, so the buffer (and
//! the spool, where a crash leaves them for the next start) keeps those requests until
//! the piece is published or dropped.

use crate::buffer::Mark;
use crate::event::RoutedEvents;
use crate::route::Routed;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Events of one tenant taken out of a request, with what keeps that request buffered.
pub struct Piece {
    pub events: RoutedEvents,
    pub marks: Vec<Mark>,
    /// When the piece was first held.
    since: Instant,
    cost: usize,
    /// Its place in the order pieces were first held, across tenants.
    seq: u64,
}

/// What a held event costs besides its record: its entry in the event list.
const EVENT_COST: usize = std::mem::size_of::<Routed>();
/// What a held piece costs besides its events: the piece, its queue slot, the reference
/// counts.
const PIECE_COST: usize = 192;

impl Piece {
    /// The bytes the piece is counted as: its records, not the whole request buffer
    /// they share with the rest of the request (which the buffer's budget counts).
    fn cost_of(events: &RoutedEvents) -> usize {
        let records: usize = events
            .events
            .iter()
            .map(|e| e.record.end.saturating_sub(e.record.start) as usize)
            .sum();
        records + events.events.len() * EVENT_COST + PIECE_COST
    }

    pub fn len(&self) -> usize {
        self.events.events.len()
    }
}

/// The held pieces, per tenant, in the order they came.
pub struct TenantHold {
    queues: HashMap<Box<[u8]>, VecDeque<Piece>>,
    /// (tenant, seq) of pieces in the order they were first held, for [`shed`]; entries
    /// of pieces gone since are skipped when met, and cleared out when they are most.
    ///
    /// [`shed`]: TenantHold::shed
    order: VecDeque<(Box<[u8]>, u64)>,
    next_seq: u64,
    pieces: usize,
    bytes: usize,
    events: usize,
    limit_bytes: usize,
    max_age: Duration,
}

impl TenantHold {
    pub fn new(limit_bytes: usize, max_age: Duration) -> TenantHold {
        TenantHold {
            queues: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            pieces: 0,
            bytes: 0,
            events: 0,
            limit_bytes,
            max_age,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// True when this tenant has events waiting: its new events queue behind them.
    pub fn holds(&self, tenant: &[u8]) -> bool {
        self.queues.contains_key(tenant)
    }

    /// True once the held events reach the byte bound.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.limit_bytes
    }

    /// Bytes, events and tenants held now (the metrics' gauges).
    pub fn totals(&self) -> (usize, usize, usize) {
        (self.bytes, self.events, self.queues.len())
    }

    /// Holds `events` (all of one tenant) behind what the tenant has waiting.
    pub fn push(&mut self, tenant: &[u8], events: RoutedEvents, marks: Vec<Mark>, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.order.len() > 2 * self.pieces + 64 {
            self.compact_order();
        }
        self.order.push_back((tenant.into(), seq));
        self.insert(tenant, events, marks, (now, seq), false);
    }

    /// Puts back, first in its tenant's line, a piece taken with [`TenantHold::pop`]
    /// (or what is left of it) that could not go out. It keeps its age and its place.
    pub fn put_back(&mut self, tenant: &[u8], events: RoutedEvents, marks: Vec<Mark>, held: Held) {
        self.insert(tenant, events, marks, (held.since, held.seq), true);
    }

    fn insert(
        &mut self,
        tenant: &[u8],
        events: RoutedEvents,
        marks: Vec<Mark>,
        (since, seq): (Instant, u64),
        first: bool,
    ) {
        let cost = Piece::cost_of(&events);
        let piece = Piece {
            events,
            marks,
            since,
            cost,
            seq,
        };
        self.add(piece.len(), cost);
        match self.queues.get_mut(tenant) {
            Some(q) if first => q.push_front(piece),
            Some(q) => q.push_back(piece),
            None => {
                self.queues.insert(tenant.into(), VecDeque::from([piece]));
            }
        }
    }

    /// Drops entries of `order` whose pieces are gone. Pieces leave a tenant's queue
    /// from its front only (a piece put back returns there with its own place), so the
    /// tenant's pieces are those from its front's place on.
    fn compact_order(&mut self) {
        let queues = &self.queues;
        self.order.retain(|(tenant, seq)| {
            queues
                .get(tenant)
                .and_then(VecDeque::front)
                .is_some_and(|front| front.seq <= *seq)
        });
    }

    /// Past the byte bound: takes the oldest pieces of tenants for which `covered` says
    /// no subscription exists, until the held events are below the bound or none such
    /// is left. Within a tenant, oldest first.
    pub fn shed(&mut self, covered: &mut dyn FnMut(&[u8]) -> bool) -> Vec<(Box<[u8]>, Piece)> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        while self.is_full() {
            let Some((tenant, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&tenant) else {
                continue; // gone
            };
            match q.front() {
                Some(front) if front.seq <= seq => {}
                _ => continue, // this piece went out already
            }
            if covered(&tenant) {
                // Held for full subscribers: kept, and kept in the order.
                skipped.push((tenant, seq));
                continue;
            }
            if let Some(piece) = q.pop_front() {
                if q.is_empty() {
                    self.queues.remove(&tenant);
                }
                self.sub(piece.len(), piece.cost);
                out.push((tenant, piece));
            }
        }
        for entry in skipped.into_iter().rev() {
            self.order.push_front(entry);
        }
        out
    }

    /// The tenants with events waiting.
    pub fn tenants(&self) -> Vec<Box<[u8]>> {
        self.queues.keys().cloned().collect()
    }

    /// Takes the tenant's oldest piece, and what [`TenantHold::put_back`] needs to give
    /// it back its age and place.
    pub fn pop(&mut self, tenant: &[u8]) -> Option<(Piece, Held)> {
        let q = self.queues.get_mut(tenant)?;
        let piece = q.pop_front()?;
        if q.is_empty() {
            self.queues.remove(tenant);
        }
        self.sub(piece.len(), piece.cost);
        let held = Held {
            since: piece.since,
            seq: piece.seq,
        };
        Some((piece, held))
    }

    /// Takes every piece that has waited the time bound, of the tenants for which
    /// `covered` says no subscription exists. Oldest first within a tenant.
    pub fn expired(
        &mut self,
        now: Instant,
        covered: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Vec<(Box<[u8]>, Piece)> {
        let mut out = Vec::new();
        let mut emptied = Vec::new();
        for (tenant, q) in &mut self.queues {
            let overdue = q
                .front()
                .is_some_and(|p| now.saturating_duration_since(p.since) >= self.max_age);
            if !overdue || covered(tenant) {
                continue;
            }
            while q
                .front()
                .is_some_and(|p| now.saturating_duration_since(p.since) >= self.max_age)
            {
                if let Some(p) = q.pop_front() {
                    out.push((tenant.clone(), p));
                }
            }
            if q.is_empty() {
                emptied.push(tenant.clone());
            }
        }
        for t in emptied {
            self.queues.remove(&t);
        }
        for (_, p) in &out {
            self.sub(p.len(), p.cost);
        }
        out
    }

    /// Takes everything held (shutdown).
    pub fn take_all(&mut self) -> Vec<(Box<[u8]>, Piece)> {
        let mut out = Vec::new();
        for (tenant, q) in self.queues.drain() {
            out.extend(q.into_iter().map(|p| (tenant.clone(), p)));
        }
        self.order.clear();
        self.pieces = 0;
        self.bytes = 0;
        self.events = 0;
        out
    }

    fn add(&mut self, events: usize, cost: usize) {
        self.pieces += 1;
        self.bytes += cost;
        self.events += events;
    }

    fn sub(&mut self, events: usize, cost: usize) {
        self.pieces = self.pieces.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(cost);
        self.events = self.events.saturating_sub(events);
    }
}

/// What a piece taken out keeps when it is put back: when it was first held, and its
/// place in the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    since: Instant,
    seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Line, Span};

    /// `n` events whose records are 10 bytes each.
    fn piece_of(n: usize) -> RoutedEvents {
        let span = Span { start: 0, end: 10 };
        let ev = Routed {
            time: Default::default(),
            tenant: None,
            service: None,
            container: span,
            line: Line::Bytes(span),
            record: span,
        };
        RoutedEvents {
            data: bytes::Bytes::from_static(&[0; 10]),
            tag: span,
            peer: "p".into(),
            peer_host: None,
            connection: 1,
            events: vec![ev; n],
        }
    }

    #[test]
    fn pieces_come_back_in_order_per_tenant() {
        let mut hold = TenantHold::new(1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        hold.push(b"a", piece_of(1), vec![], now);
        hold.push(b"b", piece_of(2), vec![], now);
        hold.push(b"a", piece_of(3), vec![], now);
        assert!(hold.holds(b"a") && hold.holds(b"b") && !hold.holds(b"c"));
        assert_eq!(hold.totals().1, 6);
        assert_eq!(hold.pop(b"a").map(|(p, _)| p.len()), Some(1));
        assert_eq!(hold.pop(b"a").map(|(p, _)| p.len()), Some(3));
        assert!(hold.pop(b"a").is_none());
        assert!(!hold.holds(b"a"), "an emptied tenant is not held");
        let (p, since) = hold.pop(b"b").expect("b's piece");
        hold.put_back(b"b", p.events, p.marks, since);
        assert_eq!(hold.totals().1, 2);
        assert_eq!(
            hold.pop(b"b").map(|(_, s)| s),
            Some(since),
            "keeps its time"
        );
        assert!(hold.is_empty());
        assert_eq!(hold.totals(), (0, 0, 0));
    }

    #[test]
    fn full_at_the_byte_bound() {
        let one = Piece::cost_of(&piece_of(10));
        let mut hold = TenantHold::new(2 * one, Duration::from_secs(60));
        let now = Instant::now();
        hold.push(b"a", piece_of(10), vec![], now);
        assert!(!hold.is_full());
        hold.push(b"b", piece_of(10), vec![], now);
        assert!(hold.is_full());
        let _ = hold.pop(b"a");
        assert!(!hold.is_full());
    }

    #[test]
    fn past_the_bound_the_oldest_uncovered_pieces_go() {
        let one = Piece::cost_of(&piece_of(10));
        let mut hold = TenantHold::new(3 * one, Duration::from_secs(60));
        let now = Instant::now();
        hold.push(b"full", piece_of(10), vec![], now); // covered: its subscriber is full
        hold.push(b"away", piece_of(10), vec![], now);
        hold.push(b"gone", piece_of(10), vec![], now);
        hold.push(b"away", piece_of(10), vec![], now);
        assert!(hold.is_full());
        let mut covered = |t: &[u8]| t == b"full";
        let shed = hold.shed(&mut covered);
        let names: Vec<&[u8]> = shed.iter().map(|(t, _)| &t[..]).collect();
        assert_eq!(
            names,
            [&b"away"[..], b"gone"],
            "oldest first, until below the bound"
        );
        assert!(!hold.is_full());
        assert!(hold.holds(b"full") && hold.holds(b"away") && !hold.holds(b"gone"));
        // Only covered pieces left past the bound: nothing is shed.
        hold.push(b"full", piece_of(10), vec![], now);
        hold.push(b"full", piece_of(10), vec![], now);
        let mut all_covered = |_: &[u8]| true;
        assert!(hold.shed(&mut all_covered).is_empty());
        assert!(hold.is_full());
        // A piece served and put back keeps its place: shed first once uncovered.
        let (p, held) = hold.pop(b"full").expect("piece");
        hold.put_back(b"full", p.events, p.marks, held);
        let mut none_covered = |_: &[u8]| false;
        let shed = hold.shed(&mut none_covered);
        assert_eq!(&*shed[0].0, b"full");
        assert_eq!(shed[0].1.seq, 0, "the first piece held");
    }

    #[test]
    fn the_order_is_kept_in_bounds_in_linear_time() {
        // One tenant with 100,000 pieces, served while more come: the order is cleared
        // of what went out without looking through the queue for each entry.
        let mut hold = TenantHold::new(usize::MAX, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..100_000 {
            hold.push(b"a", piece_of(1), vec![], now);
        }
        let started = Instant::now();
        for _ in 0..100_000 {
            assert!(hold.pop(b"a").is_some());
            hold.push(b"a", piece_of(1), vec![], now);
            assert!(hold.pop(b"a").is_some());
        }
        assert!(hold.is_empty());
        assert!(
            hold.order.len() <= 64 + 1,
            "{} entries left",
            hold.order.len()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_order_does_not_grow_with_pieces_gone() {
        let mut hold = TenantHold::new(usize::MAX, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..10_000u32 {
            let tenant = i.to_be_bytes();
            hold.push(&tenant, piece_of(1), vec![], now);
            assert!(hold.pop(&tenant).is_some());
        }
        assert!(
            hold.order.len() <= 64 + 1,
            "{} entries left",
            hold.order.len()
        );
    }

    #[test]
    fn only_uncovered_tenants_expire() {
        let mut hold = TenantHold::new(1 << 20, Duration::from_secs(10));
        let t0 = Instant::now();
        hold.push(b"away", piece_of(1), vec![], t0);
        hold.push(b"full", piece_of(1), vec![], t0);
        hold.push(b"away", piece_of(2), vec![], t0 + Duration::from_secs(5));
        let mut covered = |t: &[u8]| t == b"full";
        assert!(hold
            .expired(t0 + Duration::from_secs(9), &mut covered)
            .is_empty());
        let gone = hold.expired(t0 + Duration::from_secs(10), &mut covered);
        assert_eq!(gone.len(), 1);
        assert_eq!(&*gone[0].0, b"away");
        assert_eq!(gone[0].1.len(), 1, "the older piece only");
        let gone = hold.expired(t0 + Duration::from_secs(15), &mut covered);
        assert_eq!(gone.len(), 1);
        assert!(!hold.holds(b"away"));
        assert!(hold.holds(b"full"), "a covered tenant never expires");
        assert_eq!(hold.take_all().len(), 1);
        assert!(hold.is_empty());
    }
}
