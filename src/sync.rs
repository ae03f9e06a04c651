//! What a poisoned lock means here. A std mutex is poisoned when a thread panics while
//! holding it. The gateway's data path does not panic, and none of the structures its
//! mutexes guard (dedup windows, per-tenant counts, the spool's log and space, each
//! client's order, the log file) keeps an invariant across a point where a panic could
//! happen: each is consistent field by field between statements. So a poisoned lock is
//! taken as it is and the gateway goes on, rather than silently skipping the work (no
//! dedup, no counts, a spool whose size reads as 0) for the rest of its life.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking it as it is if a thread panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_taken_as_it_is() {
        let m = Arc::new(Mutex::new(5));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 6);
    }
}
