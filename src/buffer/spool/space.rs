//! The spool's size bound (`spool.max_bytes`): bytes of segment files on disk plus
//! records reserved for writing. A request reserves its record's size before it is
//! written; deleting a published segment gives its bytes back.

use crate::sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Space {
    /// 0: no bound but the disk's.
    max: u64,
    state: Mutex<State>,
    freed: Notify,
    /// True while a reservation waits or was refused for want of room, until one fits
    /// again: what `/readyz` reports as a full spool.
    full: AtomicBool,
}

#[derive(Default)]
struct State {
    used: u64,
    /// Reservations waiting for room, and the most bytes one of them needs.
    waiting: usize,
    needed: u64,
    /// The size of the last reservation refused: the spool is full until it fits.
    refused: u64,
}

impl Space {
    pub fn new(max: u64, used: u64) -> Space {
        Space {
            max,
            state: Mutex::new(State {
                used,
                ..State::default()
            }),
            freed: Notify::new(),
            full: AtomicBool::new(false),
        }
    }

    /// Reserves `n` bytes if they fit. A record larger than the whole bound fits an
    /// empty spool, so that no request can never be accepted.
    pub fn try_reserve(&self, n: u64) -> bool {
        let mut s = lock(&self.state);
        let fits = self.max == 0 || s.used + n <= self.max || s.used == 0;
        if fits {
            s.used += n;
            s.refused = 0;
        } else {
            s.refused = n;
        }
        self.full.store(!fits, Ordering::Relaxed);
        fits
    }

    /// Reserves `n` bytes, waiting for published segments to be deleted meanwhile.
    pub async fn reserve(&self, n: u64) {
        let mut registered = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_reserve(n) {
                break;
            }
            if !registered {
                registered = true;
                let mut s = lock(&self.state);
                s.waiting += 1;
                s.needed = s.needed.max(n);
            }
            freed.await;
        }
        if registered {
            let mut s = lock(&self.state);
            s.waiting -= 1;
            if s.waiting == 0 {
                s.needed = 0;
            }
        }
    }

    /// Gives back `n` bytes: a deleted segment, or a reservation whose write failed.
    pub fn release(&self, n: u64) {
        {
            let mut s = lock(&self.state);
            s.used = s.used.saturating_sub(n);
            if s.used + s.refused <= self.max || s.used == 0 {
                self.full.store(false, Ordering::Relaxed);
            }
        }
        self.freed.notify_waiters();
    }

    /// Counts bytes on disk that no reservation covered (a damaged tail left behind).
    pub fn add_used(&self, n: u64) {
        lock(&self.state).used += n;
    }

    pub fn used(&self) -> u64 {
        lock(&self.state).used
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Under `when_full = "drop_oldest"`: true while a reservation waits for more room
    /// than is free, so the oldest held requests should go.
    pub fn wants_room(&self) -> bool {
        let s = lock(&self.state);
        s.waiting > 0 && (self.max == 0 || s.used + s.needed > self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_reservation_waits_for_room() {
        let space = Arc::new(Space::new(100, 0));
        assert!(space.try_reserve(60));
        assert!(!space.try_reserve(60));
        assert!(space.is_full());
        // Room for what was refused makes it not full, without another try.
        space.release(10);
        assert!(space.is_full());
        space.release(10);
        assert!(!space.is_full());
        assert!(space.try_reserve(20));
        assert!(!space.try_reserve(60));
        let waiting = tokio::spawn({
            let space = space.clone();
            async move { space.reserve(60).await }
        });
        while !space.wants_room() {
            tokio::task::yield_now().await;
        }
        space.release(60);
        waiting.await.unwrap();
        assert_eq!(space.used(), 60);
        assert!(!space.wants_room());
        assert!(!space.is_full());
    }

    #[test]
    fn an_oversized_record_fits_an_empty_spool() {
        let space = Space::new(100, 0);
        assert!(space.try_reserve(500));
        assert!(!space.try_reserve(1));
        let unbounded = Space::new(0, 1 << 40);
        assert!(unbounded.try_reserve(1 << 40));
    }
}
