//! Duplicate requests from retries. Docker and Fluent Bit resend a request with the same
//! chunk id when its ack was lost (the connection broke after the gateway accepted it).
//! A bounded window of recently accepted chunk ids per client identity lets the gateway
//! ack such a resend again without publishing it twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Recently accepted chunk ids, per client identity (the peer's IP address, or the unix
/// socket path), each bounded; the number of identities is bounded too (least recently
/// active forgotten first).
pub struct Dedup {
    per_client: usize,
    max_clients: usize,
    inner: Mutex<Clients>,
}

#[derive(Default)]
struct Clients {
    windows: HashMap<Box<str>, Window>,
    /// Identities from least to most recently active (may hold stale repeats, which
    /// eviction skips).
    activity: VecDeque<(Box<str>, u64)>,
    clock: u64,
}

#[derive(Default)]
struct Window {
    ids: HashSet<Box<[u8]>>,
    order: VecDeque<Box<[u8]>>,
    last_active: u64,
}

impl Dedup {
    /// `per_client` chunk ids per identity, at most `max_clients` identities. Returns
    /// `None` when `per_client` is 0 (the feature is off).
    pub fn new(per_client: usize, max_clients: usize) -> Option<Dedup> {
        (per_client > 0 && max_clients > 0).then(|| Dedup {
            per_client,
            max_clients,
            inner: Mutex::new(Clients::default()),
        })
    }

    /// True when `chunk` was accepted from `client` recently.
    pub fn seen(&self, client: &str, chunk: &[u8]) -> bool {
        let Ok(clients) = self.inner.lock() else {
            return false;
        };
        clients
            .windows
            .get(client)
            .is_some_and(|w| w.ids.contains(chunk))
    }

    /// Records that `chunk` from `client` was accepted.
    pub fn remember(&self, client: &str, chunk: &[u8]) {
        let Ok(mut clients) = self.inner.lock() else {
            return;
        };
        clients.clock += 1;
        let now = clients.clock;
        if !clients.windows.contains_key(client) {
            while clients.windows.len() >= self.max_clients {
                let Some((old, stamp)) = clients.activity.pop_front() else {
                    break;
                };
                if clients
                    .windows
                    .get(&old)
                    .is_some_and(|w| w.last_active == stamp)
                {
                    clients.windows.remove(&old);
                }
            }
        }
        let window = clients.windows.entry(client.into()).or_default();
        window.last_active = now;
        if window.ids.insert(chunk.into()) {
            window.order.push_back(chunk.into());
            if window.order.len() > self.per_client {
                if let Some(oldest) = window.order.pop_front() {
                    window.ids.remove(&oldest);
                }
            }
        }
        clients.activity.push_back((client.into(), now));
        // Keep the activity log from growing without bound on a busy client.
        if clients.activity.len() > 4 * self.max_clients {
            let windows = &clients.windows;
            let kept: VecDeque<_> = clients
                .activity
                .iter()
                .filter(|(c, t)| windows.get(c).is_some_and(|w| w.last_active == *t))
                .cloned()
                .collect();
            clients.activity = kept;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_client_within_bounds() {
        let d = Dedup::new(2, 2).unwrap();
        d.remember("a", b"1");
        assert!(d.seen("a", b"1"));
        assert!(!d.seen("b", b"1"), "windows are per client");
        d.remember("a", b"2");
        d.remember("a", b"3");
        assert!(!d.seen("a", b"1"), "the oldest id leaves a full window");
        assert!(d.seen("a", b"3"));
        d.remember("b", b"x");
        d.remember("c", b"y");
        assert!(
            !d.seen("a", b"3"),
            "the least recently active client is forgotten"
        );
        assert!(d.seen("b", b"x") && d.seen("c", b"y"));
    }

    #[test]
    fn activity_log_stays_bounded() {
        let d = Dedup::new(4, 2).unwrap();
        for i in 0..1000u32 {
            d.remember("a", &i.to_be_bytes());
        }
        assert!(d.inner.lock().unwrap().activity.len() <= 8);
    }

    #[test]
    fn off_when_zero() {
        assert!(Dedup::new(0, 10).is_none());
    }
}
