//! One budget for the memory clients can make the gateway hold while their requests
//! come in (`limits.intake_memory_bytes`): read buffers above a small floor per
//! connection, room made for the declared rest of a request, and decompressed
//! entries. A connection that cannot get room waits for it without reading, so TCP's
//! flow control slows its client, instead of allocating.
//!
//! What a connection holds under the budget is a [`Grant`], given back when dropped:
//! the read buffer's share goes with the requests read into it until the buffer layer
//! has taken them (and counts them under `output.queue_bytes` from then on).

use crate::forward::compression::{self, DecompressError, Within};
use crate::forward::Compression;
use crate::metrics::Counters;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The budget is kept in KiB: one permit each, so that a single acquisition (at most
/// `u32::MAX` permits) may be as large as any budget.
const UNIT: usize = 1024;

/// What a read buffer may hold outside the budget: room for the next read of a request
/// in progress (64 KiB) and the start of the one after it. A connection whose requests
/// are smaller never touches the budget; one between requests holds no buffer at all.
pub const READ_FLOOR: usize = 128 * 1024;

/// The gateway's intake budget.
pub struct IntakeMemory {
    /// `None`: no budget (`limits.intake_memory_bytes = 0`).
    permits: Option<Arc<Semaphore>>,
    /// The budget, in units (changed by a reload).
    limit: std::sync::atomic::AtomicUsize,
    counters: Arc<Counters>,
}

/// Bytes of the budget held; given back when dropped.
#[derive(Default)]
pub struct Grant {
    held: Option<Held>,
}

struct Held {
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    units: usize,
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT)
}

impl Grant {
    /// How many bytes it holds.
    pub fn bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.units * UNIT)
    }

    /// Takes `other`'s bytes into this grant.
    pub fn merge(&mut self, mut other: Grant) {
        match (&mut self.held, other.held.take()) {
            (Some(mine), Some(theirs)) => {
                mine.units += theirs.units;
                // Moved, not given back: `theirs` must not release them when dropped.
                let mut theirs = theirs;
                theirs.units = 0;
            }
            (None, theirs) => self.held = theirs,
            (Some(_), None) => {}
        }
    }

    /// Gives back what is above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if let Some(h) = &mut self.held {
            let keep = units(bytes);
            if h.units > keep {
                h.give_back(h.units - keep);
            }
        }
    }
}

impl Held {
    fn give_back(&mut self, units: usize) {
        self.units -= units;
        self.permits.add_permits(units);
        self.counters
            .intake_memory_bytes
            .fetch_sub((units * UNIT) as u64, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.units > 0 {
            self.give_back(self.units);
        }
    }
}

impl IntakeMemory {
    /// A budget of `limit` bytes; 0: none.
    pub fn new(limit: usize, counters: Arc<Counters>) -> IntakeMemory {
        let permits = (limit > 0).then(|| Arc::new(Semaphore::new(units(limit))));
        counters
            .intake_memory_limit_bytes
            .store((units(limit) * UNIT) as u64, Ordering::Relaxed);
        IntakeMemory {
            permits,
            limit: units(limit).into(),
            counters,
        }
    }

    /// Makes the budget `limit` bytes: more room at once, less as what is held beyond
    /// it is given back. False when the budget would be turned on or off, which only a
    /// restart does.
    pub fn resize(&self, limit: usize) -> bool {
        let Some(permits) = &self.permits else {
            return limit == 0;
        };
        if limit == 0 {
            return false;
        }
        let new = units(limit);
        let old = self.limit.swap(new, Ordering::SeqCst);
        self.counters
            .intake_memory_limit_bytes
            .store((new * UNIT) as u64, Ordering::Relaxed);
        if new > old {
            permits.add_permits(new - old);
        } else if old > new {
            let shrink = old - new;
            let gone = permits.forget_permits(shrink);
            if gone < shrink {
                // The rest is held now: take it as it comes back.
                let permits = permits.clone();
                let rest = u32::try_from(shrink - gone).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many(rest).await {
                        p.forget();
                    }
                });
            }
        }
        true
    }

    /// Raises `grant` to `bytes` at once if the budget has the room; false otherwise.
    pub fn try_raise(&self, grant: &mut Grant, bytes: usize) -> bool {
        let Some(missing) = self.missing(grant, bytes) else {
            return true;
        };
        let Some(permits) = &self.permits else {
            return true;
        };
        match permits.try_acquire_many(missing) {
            Ok(p) => {
                p.forget();
                self.add(grant, missing as usize);
                true
            }
            Err(_) => false,
        }
    }

    /// Raises `grant` to `bytes`, waiting for room (first come, first served).
    pub async fn raise(&self, grant: &mut Grant, bytes: usize) {
        if self.try_raise(grant, bytes) {
            return;
        }
        let (Some(missing), Some(permits)) = (self.missing(grant, bytes), &self.permits) else {
            return;
        };
        self.counters
            .intake_memory_waits
            .fetch_add(1, Ordering::Relaxed);
        // The semaphore is never closed, so the acquisition only ends with the room;
        // configuration validation keeps every request's need within the budget.
        if let Ok(p) = permits.acquire_many(missing).await {
            p.forget();
            self.add(grant, missing as usize);
        }
    }

    /// The permits `grant` lacks for `bytes`; `None` when it has them, or with no
    /// budget.
    fn missing(&self, grant: &Grant, bytes: usize) -> Option<u32> {
        self.permits.as_ref()?;
        let have = grant.held.as_ref().map_or(0, |h| h.units);
        let want = units(bytes);
        // A need beyond u32::MAX KiB (4 TiB) is capped; validation forbids it anyway.
        (want > have).then(|| u32::try_from(want - have).unwrap_or(u32::MAX))
    }

    fn add(&self, grant: &mut Grant, units: usize) {
        let Some(permits) = &self.permits else {
            return;
        };
        self.counters
            .intake_memory_bytes
            .fetch_add((units * UNIT) as u64, Ordering::Relaxed);
        match &mut grant.held {
            Some(h) => h.units += units,
            None => {
                grant.held = Some(Held {
                    permits: permits.clone(),
                    counters: self.counters.clone(),
                    units,
                })
            }
        }
    }

    /// Decompresses `input` (at most `cap` bytes out) with room from the budget, and
    /// returns the output with its grant. Concurrent decompressions share the budget:
    /// one that needs more than it can get at once gives back what it holds, waits for
    /// twice the room and starts again, so that no two hold part of the budget while
    /// each waits for the other's. An output that passes the cap stops there.
    pub async fn decompress(
        &self,
        codec: Compression,
        input: &[u8],
        cap: usize,
    ) -> Result<(Vec<u8>, Grant), DecompressError> {
        // zstd's decoder keeps a window of its output beside ours, touched as output
        // is written: count it too.
        let need = |room: usize| match codec {
            Compression::Zstd => room + room.min(compression::ZSTD_WINDOW),
            _ => room,
        };
        let mut room = compression::first_room(input.len(), cap);
        loop {
            let mut grant = Grant::default();
            self.raise(&mut grant, need(room)).await;
            let outcome = compression::decompress_within(codec, input, cap, room, &mut |to| {
                self.try_raise(&mut grant, need(to))
            })?;
            match outcome {
                Within::Done(out) => {
                    // The decoder and its window are gone.
                    grant.shrink_to(out.capacity());
                    return Ok((out, grant));
                }
                Within::OutOfRoom(to) => {
                    self.counters
                        .decompress_restarts
                        .fetch_add(1, Ordering::Relaxed);
                    room = to;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::compression::tests::gzip;

    fn budget(bytes: usize) -> (IntakeMemory, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (IntakeMemory::new(bytes, counters.clone()), counters)
    }

    fn in_use(c: &Counters) -> u64 {
        c.intake_memory_bytes.load(Ordering::Relaxed)
    }

    #[test]
    fn grants_are_given_back_when_dropped_and_merged_ones_once() {
        let (m, c) = budget(64 * UNIT);
        let mut a = Grant::default();
        assert!(m.try_raise(&mut a, 10 * UNIT));
        let mut b = Grant::default();
        assert!(m.try_raise(&mut b, 20 * UNIT + 1));
        assert_eq!(b.bytes(), 21 * UNIT, "rounded up to whole KiB");
        a.merge(b);
        assert_eq!(a.bytes(), 31 * UNIT);
        assert_eq!(in_use(&c), 31 * UNIT as u64);
        assert!(!m.try_raise(&mut Grant::default(), 34 * UNIT));
        a.shrink_to(5 * UNIT);
        assert_eq!(in_use(&c), 5 * UNIT as u64);
        drop(a);
        assert_eq!(in_use(&c), 0);
        assert!(m.try_raise(&mut Grant::default(), 64 * UNIT));
    }

    #[tokio::test]
    async fn a_budget_resized_gives_room_or_takes_it_back_as_it_is_freed() {
        let (m, c) = budget(8 * UNIT);
        let mut held = Grant::default();
        assert!(m.try_raise(&mut held, 6 * UNIT));
        assert!(m.resize(16 * UNIT));
        assert!(m.try_raise(&mut Grant::default(), 10 * UNIT));
        assert!(m.resize(4 * UNIT));
        assert_eq!(
            c.intake_memory_limit_bytes.load(Ordering::Relaxed),
            4 * UNIT as u64
        );
        drop(held);
        // 6 units come back, 4 of them the budget no longer has.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(m.try_raise(&mut Grant::default(), 4 * UNIT));
        assert!(!m.try_raise(&mut Grant::default(), 5 * UNIT));
        assert!(!m.resize(0), "turning the budget off needs a restart");
    }

    #[test]
    fn no_budget_grants_everything_and_counts_nothing() {
        let (m, c) = budget(0);
        let mut g = Grant::default();
        assert!(m.try_raise(&mut g, usize::MAX / 2));
        assert_eq!(g.bytes(), 0);
        assert_eq!(in_use(&c), 0);
    }

    #[tokio::test]
    async fn a_wait_ends_when_room_is_given_back() {
        let (m, c) = budget(8 * UNIT);
        let m = Arc::new(m);
        let mut first = Grant::default();
        m.raise(&mut first, 8 * UNIT).await;
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move {
                let mut g = Grant::default();
                m.raise(&mut g, 4 * UNIT).await;
                g.bytes()
            })
        };
        while c.intake_memory_waits.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert_eq!(waiter.await.unwrap(), 4 * UNIT);
        assert_eq!(in_use(&c), 0);
    }

    #[tokio::test]
    async fn bombs_at_once_share_one_budget_and_stop_at_the_cap() {
        let budget_bytes = 3 << 20;
        let (m, c) = budget(budget_bytes);
        let m = Arc::new(m);
        let bomb = Arc::new(gzip(&vec![0u8; 8 << 20]));
        let cap = 2 << 20;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (m, bomb) = (m.clone(), bomb.clone());
            tasks.push(tokio::spawn(async move {
                m.decompress(Compression::Gzip, &bomb, cap)
                    .await
                    .map(|_| ())
            }));
        }
        for t in tasks {
            assert!(matches!(
                t.await.unwrap(),
                Err(DecompressError::TooLarge(c)) if c == cap
            ));
        }
        assert_eq!(in_use(&c), 0, "every bomb gave its room back");
    }

    #[tokio::test]
    async fn output_that_fits_comes_back_whole_with_its_grant() {
        let (m, c) = budget(4 << 20);
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        for (codec, input) in [
            (Compression::Gzip, gzip(&data)),
            (Compression::Zstd, zstd::encode_all(&data[..], 1).unwrap()),
        ] {
            let (out, grant) = m.decompress(codec, &input, 2 << 20).await.unwrap();
            assert_eq!(out, data);
            assert!(grant.bytes() >= out.len(), "{codec:?}");
            assert_eq!(in_use(&c), grant.bytes() as u64);
        }
        assert_eq!(in_use(&c), 0);
    }

    #[tokio::test]
    async fn a_decompression_short_of_room_starts_again_with_more() {
        // Room for the first try only, held by someone else for a moment.
        let (m, c) = budget(3 << 20);
        let m = Arc::new(m);
        let mut other = Grant::default();
        m.raise(&mut other, 2 << 20).await;
        let data = vec![7u8; 1536 << 10];
        let input = gzip(&data);
        let task = {
            let m = m.clone();
            tokio::spawn(async move { m.decompress(Compression::Gzip, &input, 4 << 20).await })
        };
        while c.decompress_restarts.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        drop(other);
        let (out, _grant) = task.await.unwrap().unwrap();
        assert_eq!(out, data);
    }
}
