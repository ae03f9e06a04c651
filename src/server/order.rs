//! Order per client across connections. Requests of one client — its source address
//! (or unix socket path) and the request's tag — reach the buffer in the order in which
//! their first byte arrived, also when they come on different connections, as Fluentd's
//! `out_forward` sends them (a connection per chunk, the next chunk written before the
//! last one is acked). Connection tasks run in parallel, so the task of a later chunk
//! may read and hand over before the task of an earlier chunk has read it at all.
//!
//! Why the first byte and not the last: a client that writes one chunk, then connects
//! and writes the next, has handed the first chunk to its kernel before the second
//! connection exists, and its first bytes are sent at once; but the kernel may send
//! the tail of a large write later (TCP small queues), after the next connection's
//! bytes. Under load, ordering by the last byte reordered one chunk in a few thousand;
//! by the first byte, the client's order holds.
//!
//! Every read carries the time its newest bytes arrived: the kernel's receive time
//! (`SO_TIMESTAMPNS`; where the kernel gives none, unix sockets and TLS, the time the
//! read returned). A request's key is that time for the read that brought its first
//! byte. Before a connection hands a request over, it makes sure no other connection
//! of the same client can still come up with an earlier one of the same tag: one whose
//! unhandled request began earlier, or one that has not read (or is reading) bytes
//! that arrived earlier. It waits for those, and only for those: other clients, and
//! requests with other tags, never hold it back; a request that takes longer than
//! [`MAX_WAIT`] to arrive whole stops holding back the later ones.
//!
//! The common case — one connection per client and tag, as Docker's containers — costs
//! a few atomic operations per read, no lock. A connection whose tag is not known yet
//! (it has not handed over a request) is a newcomer: every connection of its client
//! looks at it until it has, or has sent nothing for [`NEWCOMER_WINDOW`].

use crate::metrics::Counters;
use crate::sync::lock;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// No request pending.
const NONE: u64 = u64::MAX;

/// How long a connection that has read nothing counts as a newcomer.
const NEWCOMER_WINDOW: Duration = Duration::from_secs(2);

/// How often a waiting connection looks again without being woken (the connection it
/// waits for may not have run yet), and the longest it waits in all: past that it goes
/// on and counts it.
const RECHECK: Duration = Duration::from_millis(2);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Every client's connections, by client.
#[derive(Default)]
pub struct Order {
    clients: Mutex<HashMap<Arc<str>, Arc<Client>>>,
    next_id: AtomicU64,
    /// Where hand-overs that waited for another connection, and waits that gave up,
    /// are counted.
    counters: Arc<Counters>,
}

/// One client: its connections, by the tags they carry.
struct Client {
    state: Mutex<ClientState>,
    /// Newcomers among its connections (read without the lock on the fast path).
    newcomers: AtomicUsize,
    /// Connections waiting for their turn: others wake them when they progress.
    waiters: AtomicUsize,
    changed: Notify,
}

#[derive(Default)]
struct ClientState {
    connections: usize,
    domains: HashMap<Box<[u8]>, Arc<Domain>>,
    newcomers: Vec<Arc<View>>,
}

/// The connections that carried one tag of one client.
struct Domain {
    members: Mutex<Vec<Arc<View>>>,
    /// How many (read without the lock on the fast path).
    count: AtomicUsize,
}

/// What other connections see of one connection.
struct View {
    id: u64,
    /// Its socket, to ask the kernel whether it has unread bytes; -1: none.
    fd: RawFd,
    accepted: Instant,
    /// True from just before a read until what it read is registered.
    reading: AtomicBool,
    /// Every byte that arrived up to this time (ns since the epoch) has been read.
    read_through: AtomicU64,
    /// The key (first byte's arrival) of its oldest request not handed over yet,
    /// complete or not; [`NONE`] when it has none.
    pending: AtomicU64,
    /// The tag of that request, hashed ([`tag_hash`]); 0 when not known yet.
    pending_tag: AtomicU64,
    /// Still counted among its client's newcomers.
    newcomer: AtomicBool,
}

impl View {
    /// True when this connection may still hand over a request with tag `tag` (hashed)
    /// whose first byte arrived before `key` (ties go to the older connection). The
    /// order of the loads matters: see the protocol in [`Member::reading`].
    ///
    /// A request of its that began [`MAX_WAIT`] or more before `key` and is still
    /// arriving holds nothing back any more: else a client trickling one request (a
    /// slowloris) would hold back each later request of its address for a second, one
    /// after the other, until `limits.request_timeout_ms` cut it off.
    fn may_precede(&self, key: u64, tag: u64, id: u64) -> bool {
        let unread = self.fd >= 0 && unread_bytes(self.fd) > 0;
        let reading = self.reading.load(Ordering::SeqCst);
        let read_through = self.read_through.load(Ordering::SeqCst);
        let pending = self.pending.load(Ordering::SeqCst);
        let pending_tag = self.pending_tag.load(Ordering::SeqCst);
        if pending != NONE && stalled(pending) {
            // Its request began more than MAX_WAIT ago and is still not whole (a slow
            // sender, or one waiting for room in the intake budget): as a wait for it
            // would give up after MAX_WAIT, it holds nothing back, nor does what may
            // follow it on its connection.
            return false;
        }
        let earlier = (pending < key && key - pending < MAX_WAIT.as_nanos() as u64)
            || (pending == key && pending != NONE && self.id < id);
        // A request whose tag is not known yet may be of this tag, but only while its
        // bytes are coming in: a client's first write carries the whole tag, so what
        // still lacks it between reads is a client that trickles (a slowloris), and
        // waiting for it would hold back every request of its address.
        if earlier && (pending_tag == tag || (pending_tag == 0 && (reading || unread))) {
            return true;
        }
        if read_through >= key {
            return false;
        }
        reading || unread
    }
}

/// True when a request whose first byte arrived at `key` (ns since the epoch) began
/// more than [`MAX_WAIT`] ago.
fn stalled(key: u64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    u128::from(key) + MAX_WAIT.as_nanos() < now
}

/// A tag's hash for [`View::pending_tag`] (FNV-1a; never 0). A collision only makes a
/// connection wait for one it need not wait for.
pub fn tag_hash(tag: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in tag {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// One connection's place in its client's order.
pub struct Member {
    order: Arc<Order>,
    identity: Arc<str>,
    client: Arc<Client>,
    view: Arc<View>,
    /// The tags it has handed requests over with, the last one used first.
    domains: Vec<(Box<[u8]>, Arc<Domain>)>,
}

impl Order {
    pub fn new(counters: Arc<Counters>) -> Order {
        Order {
            counters,
            ..Order::default()
        }
    }

    /// Registers a new connection of the client `identity`, as a newcomer. `fd`: its
    /// socket (-1 when there is none to ask).
    pub fn join(self: &Arc<Self>, identity: &Arc<str>, fd: RawFd) -> Member {
        let view = Arc::new(View {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            fd,
            accepted: Instant::now(),
            reading: AtomicBool::new(false),
            read_through: AtomicU64::new(0),
            pending: AtomicU64::new(NONE),
            pending_tag: AtomicU64::new(0),
            newcomer: AtomicBool::new(true),
        });
        // Under the table's lock, so that a client whose last connection is closing
        // is not taken over half-removed (locks: the table, then the client).
        let client = {
            let mut clients = lock(&self.clients);
            let client = clients
                .entry(identity.clone())
                .or_insert_with(|| {
                    Arc::new(Client {
                        state: Mutex::new(ClientState::default()),
                        newcomers: AtomicUsize::new(0),
                        waiters: AtomicUsize::new(0),
                        changed: Notify::new(),
                    })
                })
                .clone();
            let mut state = lock(&client.state);
            state.connections += 1;
            state.newcomers.push(view.clone());
            client.newcomers.fetch_add(1, Ordering::SeqCst);
            drop(state);
            client
        };
        Member {
            order: self.clone(),
            identity: identity.clone(),
            client,
            view,
            domains: Vec::new(),
        }
    }
}

impl super::socket::ReadHook for Member {
    fn before(&self) {
        self.reading();
    }

    fn nothing(&self) {
        self.read_nothing();
    }
}

impl Member {
    /// Called just before each read.
    ///
    /// The protocol between a connection C and another connection B that checks it:
    /// C sets `reading`, reads, then sets its head request (`pending_tag`, `pending`),
    /// then `read_through`, then clears `reading`. B asks the kernel for C's unread
    /// bytes first, then loads `reading`, `read_through`, `pending` and `pending_tag`,
    /// in that order. Whatever B sees, a request of C that began before B's is either
    /// pending, or being read, or unread: B waits.
    pub fn reading(&self) {
        self.view.reading.store(true, Ordering::SeqCst);
    }

    /// Called after each read that returned bytes arrived up to `arrival`. `head`: the
    /// key and tag hash of the oldest request not handed over (0: tag not known yet).
    pub fn read(&self, arrival: u64, head: Option<(u64, u64)>) {
        let v = &self.view;
        self.set_head(head);
        v.read_through.fetch_max(arrival, Ordering::SeqCst);
        v.reading.store(false, Ordering::SeqCst);
        self.wake();
    }

    /// Called when a read returned nothing (would block, or the end).
    pub fn read_nothing(&self) {
        self.view.reading.store(false, Ordering::SeqCst);
        self.wake();
    }

    /// Called when requests were handed over: `head` is the oldest request left (a
    /// partial one), if any.
    pub fn handed_over(&self, head: Option<(u64, u64)>) {
        if self.set_head(head) {
            self.wake();
        }
    }

    /// Sets the head request; true when it changed.
    fn set_head(&self, head: Option<(u64, u64)>) -> bool {
        let v = &self.view;
        let (key, tag) = head.unwrap_or((NONE, 0));
        v.pending_tag.store(tag, Ordering::SeqCst);
        v.pending.swap(key, Ordering::SeqCst) != key
    }

    fn wake(&self) {
        if self.client.waiters.load(Ordering::SeqCst) > 0 {
            self.client.changed.notify_waiters();
        }
    }

    /// Waits until requests with `tag` whose first byte arrived at `arrival` may be
    /// handed over.
    pub async fn turn(&mut self, tag: &[u8], arrival: u64) {
        let domain = self.domain(tag);
        // Alone in the domain, no newcomer about: nobody can come first.
        if self.client.newcomers.load(Ordering::SeqCst) == 0
            && domain.count.load(Ordering::SeqCst) <= 1
        {
            return;
        }
        let started = Instant::now();
        let mut waited = false;
        loop {
            let changed = self.client.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.must_wait(&domain, arrival, tag_hash(tag)) {
                break;
            }
            if started.elapsed() >= MAX_WAIT {
                self.order
                    .counters
                    .order_wait_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %self.identity, "gave up waiting for an earlier request of this client on another connection");
                break;
            }
            if !waited {
                waited = true;
                self.order
                    .counters
                    .order_waits
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.client.waiters.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::time::timeout(RECHECK, changed).await;
            self.client.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// True while another connection of the domain, or a newcomer, may still hand
    /// over a request of the same tag that began earlier.
    fn must_wait(&self, domain: &Domain, arrival: u64, tag: u64) -> bool {
        let me = self.view.id;
        let others = |views: &[Arc<View>]| {
            views
                .iter()
                .any(|v| v.id != me && v.may_precede(arrival, tag, me))
        };
        if others(&lock(&domain.members)) {
            return true;
        }
        let mut state = lock(&self.client.state);
        self.expire_newcomers(&mut state);
        others(&state.newcomers)
    }

    /// Newcomers that have read nothing within the window stop counting: a client
    /// that connects and stays silent must not slow its others down for good.
    fn expire_newcomers(&self, state: &mut ClientState) {
        let client = &self.client;
        state.newcomers.retain(|v| {
            let stale = v.accepted.elapsed() >= NEWCOMER_WINDOW
                && v.read_through.load(Ordering::SeqCst) == 0
                && !v.reading.load(Ordering::SeqCst)
                && (v.fd < 0 || unread_bytes(v.fd) == 0);
            if stale && v.newcomer.swap(false, Ordering::SeqCst) {
                client.newcomers.fetch_sub(1, Ordering::SeqCst);
            }
            !stale
        });
    }

    /// The domain of `tag`, joining it (and leaving the newcomers) the first time.
    fn domain(&mut self, tag: &[u8]) -> Arc<Domain> {
        if let Some(i) = self.domains.iter().position(|(t, _)| **t == *tag) {
            if i > 0 {
                self.domains.swap(0, i);
            }
            return self.domains[0].1.clone();
        }
        let domain = {
            let mut state = lock(&self.client.state);
            let domain = state
                .domains
                .entry(tag.into())
                .or_insert_with(|| {
                    Arc::new(Domain {
                        members: Mutex::new(Vec::new()),
                        count: AtomicUsize::new(0),
                    })
                })
                .clone();
            lock(&domain.members).push(self.view.clone());
            domain.count.fetch_add(1, Ordering::SeqCst);
            if self.view.newcomer.swap(false, Ordering::SeqCst) {
                state.newcomers.retain(|v| v.id != self.view.id);
                self.client.newcomers.fetch_sub(1, Ordering::SeqCst);
            }
            domain
        };
        self.domains.insert(0, (tag.into(), domain.clone()));
        domain
    }
}

impl Drop for Member {
    /// Leaves every list before the connection's socket is closed (the member is
    /// dropped first), so nobody asks the kernel about a closed descriptor.
    fn drop(&mut self) {
        let id = self.view.id;
        {
            // The same order of locks as `Order::join`: the table, then the client.
            let mut clients = lock(&self.order.clients);
            let mut state = lock(&self.client.state);
            for (tag, domain) in self.domains.drain(..) {
                let mut members = lock(&domain.members);
                members.retain(|v| v.id != id);
                domain.count.fetch_sub(1, Ordering::SeqCst);
                if members.is_empty() {
                    drop(members);
                    state.domains.remove(&tag);
                }
            }
            if self.view.newcomer.swap(false, Ordering::SeqCst) {
                state.newcomers.retain(|v| v.id != id);
                self.client.newcomers.fetch_sub(1, Ordering::SeqCst);
            }
            state.connections -= 1;
            if state.connections == 0 {
                clients.remove(&self.identity);
            }
        }
        self.client.changed.notify_waiters();
    }
}

/// Bytes the kernel holds for the socket that have not been read.
fn unread_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid for the call;
    // `fd` is open: a connection leaves every list before its socket is closed.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two connections of client `id` that both carried tag "app" before.
    async fn two_of_app(order: &Arc<Order>, id: &Arc<str>) -> (Member, Member) {
        let mut a = order.join(id, -1);
        let mut b = order.join(id, -1);
        a.turn(b"app", 0).await;
        b.turn(b"app", 0).await;
        (a, b)
    }

    /// Now, in ns since the epoch: the keys of requests that are arriving now.
    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[tokio::test]
    async fn alone_in_its_domain_nobody_waits() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let mut a = order.join(&id, -1);
        let mut b = order.join(&id, -1);
        a.reading();
        a.read(100, Some((100, tag_hash(b"web"))));
        a.turn(b"web", 100).await;
        a.handed_over(None);
        b.reading();
        b.read(200, Some((200, tag_hash(b"db"))));
        b.turn(b"db", 200).await;
        b.handed_over(None);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_later_request_waits_for_an_earlier_one_on_another_connection() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (mut early, mut late) = two_of_app(&order, &id).await;
        // The early request of "app" began at 100 and is not handed over yet; the
        // late one (began at 200) must wait for it.
        early.reading();
        early.read(t + 100, Some((t + 100, tag_hash(b"app"))));
        late.reading();
        late.read(t + 200, Some((t + 200, tag_hash(b"app"))));
        let waiting = tokio::spawn(async move {
            late.turn(b"app", t + 200).await;
            late
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        early.turn(b"app", t + 100).await;
        early.handed_over(None);
        let late = waiting.await.unwrap();
        late.handed_over(None);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 1);
        assert_eq!(
            order.counters.order_wait_timeouts.load(Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn a_request_begun_a_second_earlier_holds_nothing_back() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let mut slow = order.join(&id, -1);
        let mut quick = order.join(&id, -1);
        slow.turn(b"app", 0).await;
        quick.turn(b"app", 0).await;
        // A request (tag not known yet) began at 1 s and is still arriving, a byte now
        // and then; requests that began a second or more after it do not wait for it.
        let second = MAX_WAIT.as_nanos() as u64;
        slow.reading();
        slow.read(second + 5, Some((second, 0)));
        for k in 2..5 {
            quick.reading();
            quick.read(k * second, Some((k * second, tag_hash(b"app"))));
            quick.turn(b"app", k * second).await;
            quick.handed_over(None);
        }
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_request_with_no_tag_yet_holds_back_only_while_its_bytes_come() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (early, mut late) = two_of_app(&order, &id).await;
        // The early request's first read lacked its tag, and more of it is being read:
        // it may be "app", so the late one waits.
        early.reading();
        early.read(t + 100, Some((t + 100, 0)));
        early.reading();
        late.reading();
        late.read(t + 200, Some((t + 200, tag_hash(b"app"))));
        let waiting = tokio::spawn(async move {
            late.turn(b"app", t + 200).await;
            late
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The read brought no more of it (a client trickling a byte now and then): it
        // holds nothing back between its reads.
        early.read_nothing();
        let late = waiting.await.unwrap();
        late.handed_over(None);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 1);
        assert_eq!(
            order.counters.order_wait_timeouts.load(Ordering::Relaxed),
            0
        );
        drop(early);
    }

    #[tokio::test]
    async fn a_begun_request_of_another_tag_does_not_hold_back() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (slow, mut quick) = two_of_app(&order, &id).await;
        // A request of tag "other" began at 100 and is still arriving.
        slow.read(t + 100, Some((t + 100, tag_hash(b"other"))));
        quick.read(t + 200, Some((t + 200, tag_hash(b"app"))));
        quick.turn(b"app", t + 200).await;
        quick.handed_over(None);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_request_begun_long_ago_and_still_arriving_holds_nothing_back() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (slow, mut quick) = two_of_app(&order, &id).await;
        // Its first byte came two seconds ago, and it is still being read.
        let long_ago = t - 2_000_000_000;
        slow.reading();
        slow.read(long_ago, Some((long_ago, tag_hash(b"app"))));
        slow.reading();
        quick.read(t, Some((t, tag_hash(b"app"))));
        quick.turn(b"app", t).await;
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn clients_and_lists_are_cleaned_up() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let mut a = order.join(&id, -1);
        a.turn(b"x", 1).await;
        let b = order.join(&id, -1);
        drop(a);
        drop(b);
        assert!(lock(&order.clients).is_empty());
    }
}
