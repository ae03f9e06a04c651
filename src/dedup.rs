//! Duplicate requests from retries. Docker and Fluent Bit resend a request with the same
//! chunk id when its ack was lost (the connection broke after the gateway accepted it).
//! A bounded window of recently accepted chunk ids per client identity lets the gateway
//! ack such a resend again without publishing it twice.

use crate::sync::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

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
    /// Keyed by the connection's own identity: a known client costs no allocation.
    windows: HashMap<Arc<str>, Window>,
    /// Counts `remember` calls: a window's `last_active` orders the clients.
    clock: u64,
}

#[derive(Default)]
struct Window {
    /// The set and the arrival order share each id's one allocation.
    ids: HashSet<Arc<[u8]>>,
    order: VecDeque<Arc<[u8]>>,
    last_active: u64,
}

impl Window {
    fn insert(&mut self, chunk: &[u8], per_client: usize) {
        if self.ids.contains(chunk) {
            return;
        }
        let id: Arc<[u8]> = chunk.into();
        self.ids.insert(id.clone());
        self.order.push_back(id);
        if self.order.len() > per_client {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }
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
        let clients = lock(&self.inner);
        clients
            .windows
            .get(client)
            .is_some_and(|w| w.ids.contains(chunk))
    }

    /// Records that `chunk` from `client` was accepted.
    pub fn remember(&self, client: &Arc<str>, chunk: &[u8]) {
        let mut clients = lock(&self.inner);
        clients.clock += 1;
        let now = clients.clock;
        if let Some(window) = clients.windows.get_mut(&**client) {
            window.last_active = now;
            window.insert(chunk, self.per_client);
            return;
        }
        if clients.windows.len() >= self.max_clients {
            // A new client when the table is full: forget the least recently active.
            // The scan is bounded by `max_clients` and happens only on a new identity.
            let oldest = clients
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last_active)
                .map(|(c, _)| c.clone());
            if let Some(oldest) = oldest {
                clients.windows.remove(&oldest);
            }
        }
        let mut window = Window {
            last_active: now,
            ..Window::default()
        };
        window.insert(chunk, self.per_client);
        clients.windows.insert(client.clone(), window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_client_within_bounds() {
        let d = Dedup::new(2, 2).unwrap();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        d.remember(&a, b"1");
        assert!(d.seen("a", b"1"));
        assert!(!d.seen("b", b"1"), "windows are per client");
        d.remember(&a, b"2");
        d.remember(&a, b"3");
        assert!(!d.seen("a", b"1"), "the oldest id leaves a full window");
        assert!(d.seen("a", b"3"));
        d.remember(&b, b"x");
        d.remember(&c, b"y");
        assert!(
            !d.seen("a", b"3"),
            "the least recently active client is forgotten"
        );
        assert!(d.seen("b", b"x") && d.seen("c", b"y"));
    }

    #[test]
    fn a_busy_client_keeps_its_window_bounded() {
        let d = Dedup::new(4, 2).unwrap();
        let a: Arc<str> = "a".into();
        for i in 0..1000u32 {
            d.remember(&a, &i.to_be_bytes());
        }
        d.remember(&a, &999u32.to_be_bytes());
        {
            let inner = d.inner.lock().unwrap();
            let w = &inner.windows["a"];
            assert_eq!(
                (w.ids.len(), w.order.len()),
                (4, 4),
                "a repeat is not stored twice"
            );
        }
        assert!((996..1000u32).all(|i| d.seen("a", &i.to_be_bytes())));
        assert!(!d.seen("a", &995u32.to_be_bytes()));
    }

    #[test]
    fn the_least_recently_active_client_goes_first() {
        let d = Dedup::new(4, 2).unwrap();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        d.remember(&a, b"1");
        d.remember(&b, b"1");
        d.remember(&a, b"2");
        d.remember(&c, b"1");
        assert!(d.seen("a", b"1") && d.seen("c", b"1"));
        assert!(!d.seen("b", b"1"));
    }

    #[test]
    fn off_when_zero() {
        assert!(Dedup::new(0, 10).is_none());
    }
}
