//! Duplicate requests from retries. Docker and Fluent Bit resend a request with the same
//! chunk id when its ack was lost (the connection broke after the gateway accepted it).
//! A bounded window of recently accepted chunk ids per client identity lets the gateway
//! ack such a resend again without publishing it twice.
//!
//! A chunk is also *in flight* from the moment its request is parsed until its outcome
//! is known (accepted by the buffer, or given up). A resend that arrives meanwhile (the
//! client timed out, or its connection broke right after sending, and it sent again at
//! once on a new connection) waits for that outcome: acked again when the original was
//! accepted, handled as new when it was not.

use crate::sync::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Recently accepted chunk ids, per client identity (the peer's IP address, or the unix
/// socket path), each bounded; the number of identities is bounded too (least recently
/// active forgotten first). And the chunks in flight.
pub struct Dedup {
    per_client: usize,
    max_clients: usize,
    inner: Arc<Mutex<Clients>>,
}

#[derive(Default)]
struct Clients {
    /// Keyed by the connection's own identity: a known client costs no allocation.
    windows: HashMap<Arc<str>, Window>,
    /// Counts `remember` calls: a window's `last_active` orders the clients.
    clock: u64,
    /// Chunks being handled, by client and id: what a resend waits on. Bounded by the
    /// requests in the gateway's hands (each holds its entry until its outcome).
    in_flight: HashMap<FlightKey, watch::Receiver<bool>>,
}

/// A chunk in flight: the client's identity and the chunk id.
type FlightKey = (Arc<str>, Arc<[u8]>);

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

/// What to do with a request that carries a chunk id.
pub enum Check {
    /// Neither accepted recently nor in flight: handle it. The chunk is in flight until
    /// the [`Flight`] is accepted or dropped.
    New(Flight),
    /// Accepted recently: ack it again, publish nothing.
    Seen,
    /// The same client's same chunk is being handled (on another connection): wait for
    /// its outcome, then check again.
    InFlight(Outcome),
}

/// A chunk in flight. [`Flight::accepted`] remembers it as accepted and wakes whoever
/// waits; dropped without that (the request was given up), the waiters handle it
/// themselves.
pub struct Flight {
    clients: Arc<Mutex<Clients>>,
    client: Arc<str>,
    chunk: Arc<[u8]>,
    per_client: usize,
    max_clients: usize,
    done: Option<watch::Sender<bool>>,
}

/// The outcome of a chunk in flight, to wait for.
pub struct Outcome(watch::Receiver<bool>);

impl Outcome {
    /// Returns once the chunk in flight was accepted or given up.
    pub async fn wait(mut self) {
        // An error means the sender went without accepting: given up.
        let _ = self.0.wait_for(|accepted| *accepted).await;
    }
}

impl Flight {
    /// The chunk id.
    pub fn chunk(&self) -> &[u8] {
        &self.chunk
    }

    /// The request was accepted: from now on a resend is `Seen`.
    pub fn accepted(mut self) {
        let mut clients = lock(&self.clients);
        clients
            .in_flight
            .remove(&(self.client.clone(), self.chunk.clone()));
        remember(
            &mut clients,
            &self.client,
            &self.chunk,
            self.per_client,
            self.max_clients,
        );
        drop(clients);
        if let Some(done) = self.done.take() {
            done.send_replace(true);
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.done.is_some() {
            // Given up: no longer in flight; the sender dropped below wakes the waiters.
            lock(&self.clients)
                .in_flight
                .remove(&(self.client.clone(), self.chunk.clone()));
        }
    }
}

/// Records that `chunk` from `client` was accepted.
fn remember(
    clients: &mut Clients,
    client: &Arc<str>,
    chunk: &[u8],
    per_client: usize,
    max_clients: usize,
) {
    clients.clock += 1;
    let now = clients.clock;
    if let Some(window) = clients.windows.get_mut(&**client) {
        window.last_active = now;
        window.insert(chunk, per_client);
        return;
    }
    if clients.windows.len() >= max_clients {
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
    window.insert(chunk, per_client);
    clients.windows.insert(client.clone(), window);
}

impl Dedup {
    /// `per_client` chunk ids per identity, at most `max_clients` identities. Returns
    /// `None` when `per_client` is 0 (the feature is off).
    pub fn new(per_client: usize, max_clients: usize) -> Option<Dedup> {
        (per_client > 0 && max_clients > 0).then(|| Dedup {
            per_client,
            max_clients,
            inner: Arc::new(Mutex::new(Clients::default())),
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

    /// Whether `chunk` from `client` is new, accepted recently, or in flight; a new one
    /// is in flight from now on.
    pub fn check(&self, client: &Arc<str>, chunk: &[u8]) -> Check {
        let mut clients = lock(&self.inner);
        if clients
            .windows
            .get(&**client)
            .is_some_and(|w| w.ids.contains(chunk))
        {
            return Check::Seen;
        }
        let key: FlightKey = (client.clone(), chunk.into());
        if let Some(outcome) = clients.in_flight.get(&key) {
            return Check::InFlight(Outcome(outcome.clone()));
        }
        let (done, outcome) = watch::channel(false);
        clients.in_flight.insert(key.clone(), outcome);
        Check::New(Flight {
            clients: self.inner.clone(),
            client: key.0,
            chunk: key.1,
            per_client: self.per_client,
            max_clients: self.max_clients,
            done: Some(done),
        })
    }

    /// Records that `chunk` from `client` was accepted.
    pub fn remember(&self, client: &Arc<str>, chunk: &[u8]) {
        let mut clients = lock(&self.inner);
        remember(
            &mut clients,
            client,
            chunk,
            self.per_client,
            self.max_clients,
        );
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

    fn new_flight(d: &Dedup, client: &Arc<str>, chunk: &[u8]) -> Flight {
        match d.check(client, chunk) {
            Check::New(f) => f,
            Check::Seen => panic!("seen"),
            Check::InFlight(_) => panic!("in flight"),
        }
    }

    #[tokio::test]
    async fn a_resend_in_flight_waits_and_is_then_seen() {
        let d = Dedup::new(4, 4).unwrap();
        let a: Arc<str> = "a".into();
        let flight = new_flight(&d, &a, b"c1");
        assert_eq!(flight.chunk(), b"c1");
        let Check::InFlight(outcome) = d.check(&a, b"c1") else {
            panic!("not in flight")
        };
        // Another client's chunk of the same id is its own.
        assert!(matches!(d.check(&"b".into(), b"c1"), Check::New(_)));
        let waiter = tokio::spawn(outcome.wait());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits for the outcome");
        flight.accepted();
        waiter.await.unwrap();
        assert!(matches!(d.check(&a, b"c1"), Check::Seen));
        assert!(lock(&d.inner).in_flight.is_empty());
    }

    #[tokio::test]
    async fn a_resend_of_a_chunk_given_up_is_handled_as_new() {
        let d = Dedup::new(4, 4).unwrap();
        let a: Arc<str> = "a".into();
        let flight = new_flight(&d, &a, b"c1");
        let Check::InFlight(outcome) = d.check(&a, b"c1") else {
            panic!("not in flight")
        };
        let waiter = tokio::spawn(outcome.wait());
        drop(flight);
        waiter.await.unwrap();
        assert!(!d.seen("a", b"c1"));
        let again = new_flight(&d, &a, b"c1");
        again.accepted();
        assert!(d.seen("a", b"c1"));
    }
}
