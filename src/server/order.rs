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
//!
//! Many connections of one client and tag (one daemon-wide tag for every container, a
//! forwarder's connection pool, a backlog of connections after a collector outage)
//! cost O(log n) per request, not O(n): the connections of a tag are indexed by how far
//! they have read and by their oldest pending request, so a request looks only at those
//! that began earlier or have not read as far as its first byte; and requests waiting
//! for their turn queue in key order, where only the first one looks (whatever holds it
//! back holds back those behind it too) and each is woken once, when it becomes first.

use super::readiness::Readiness;
use crate::metrics::Counters;
use crate::sync::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// No request pending.
const NONE: u64 = u64::MAX;

/// How long a connection that has read nothing counts as a newcomer.
const NEWCOMER_WINDOW: Duration = Duration::from_secs(2);

/// How often the first waiting request looks again without being woken (the connection
/// it waits for may not have run yet), and the longest a request waits in all: past
/// that it goes on and counts it.
const RECHECK: Duration = Duration::from_millis(2);
const MAX_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT_NS: u64 = MAX_WAIT.as_nanos() as u64;

/// How long bytes may take from the kernel's receive timestamp to the socket's queue
/// (the stamp is taken as the packet comes in; it is queued to the socket a little
/// later, in the same softirq). A socket found empty at time T has had everything
/// stamped before T minus this read, so its connection counts as read through then.
const QUEUEING_MARGIN_NS: u64 = 10_000_000;

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
    /// Requests first in their tag's queue: newcomers wake them when they progress.
    waiters: AtomicUsize,
    changed: Notify,
}

#[derive(Default)]
struct ClientState {
    connections: usize,
    domains: HashMap<Box<[u8]>, Arc<Domain>>,
    newcomers: Vec<Arc<View>>,
}

/// The connections that carried one tag of one client (locks: the client's state, then
/// a domain's index).
struct Domain {
    /// How many (read without the lock): a connection alone in its domain neither
    /// indexes itself nor looks at anyone.
    count: AtomicUsize,
    /// Members between the start of a read and the moment what it read is indexed.
    /// While none is, a request need look only at members with an earlier pending
    /// request or unread bytes, not at every one that has not read as far as its key.
    readers: AtomicUsize,
    index: Mutex<Index>,
}

/// A domain's connections, indexed by what decides whether one of them may still hand
/// over a request that began before a given key; and the requests waiting for their
/// turn. The indexed values lag the connections' own (each re-indexes itself after it
/// has updated them): a connection whose request is pending but not indexed yet has not
/// indexed how far it has read either, so it is found by that.
#[derive(Default)]
struct Index {
    members: HashMap<u64, Indexed>,
    /// (read through, connection).
    by_read_through: BTreeSet<(u64, u64)>,
    /// (key of the oldest pending request, connection), for those with one.
    by_pending: BTreeSet<(u64, u64)>,
    /// Requests waiting for their turn by (key, connection); each is woken through its
    /// own [`Notify`] once it is first.
    queue: BTreeMap<(u64, u64), Arc<Notify>>,
    /// Requests that had their turn and are being taken by the buffer (which may wait
    /// for room as long as nobody takes what it holds), by (key, connection): a later
    /// request waits for them however long that is, as it would wait for the room.
    in_line: BTreeSet<(u64, u64)>,
    /// The members' sockets, to learn which have unread bytes in one system call; made
    /// when a second member joins (`None` before, or when the kernel refused one).
    readiness: Option<Readiness>,
    /// How many members' sockets are in it.
    watched: usize,
}

/// Why a request waits.
#[derive(Debug, PartialEq, Eq)]
enum Blocker {
    /// An earlier request may still come: waited for up to [`MAX_WAIT`].
    Earlier,
    /// An earlier request waits for its turn, or is being taken by the buffer: waited
    /// for as long as that takes (what that one waits for is bounded, or is the
    /// buffer's room, which this one would wait for too).
    Behind,
}

/// One connection of a domain as last indexed.
struct Indexed {
    view: Arc<View>,
    read_through: u64,
    pending: u64,
}

impl Index {
    /// Indexes `view` anew from its current values.
    fn put(&mut self, view: Arc<View>) {
        let id = view.id;
        self.unindex(id);
        let read_through = view.read_through.load(Ordering::SeqCst);
        let pending = view.pending.load(Ordering::SeqCst);
        self.by_read_through.insert((read_through, id));
        if pending != NONE {
            self.by_pending.insert((pending, id));
        }
        self.members.insert(
            id,
            Indexed {
                view,
                read_through,
                pending,
            },
        );
    }

    /// Indexes connection `id` anew, if it is a member.
    fn refresh(&mut self, id: u64) {
        if let Some(view) = self.members.get(&id).map(|m| m.view.clone()) {
            self.put(view);
        }
    }

    /// Adds a member.
    fn join(&mut self, view: Arc<View>) {
        if self.readiness.is_none() && !self.members.is_empty() {
            // A second member: from now on requests look at the others.
            self.readiness = Readiness::new().ok();
            let first: Vec<Arc<View>> = self.members.values().map(|m| m.view.clone()).collect();
            for v in first {
                self.watch(&v);
            }
        }
        self.watch(&view);
        self.put(view);
    }

    fn watch(&mut self, view: &View) {
        if let Some(r) = &self.readiness {
            if view.fd >= 0 && r.add(view.fd, view.id).is_ok() {
                self.watched += 1;
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let (Some(r), Some(m)) = (&self.readiness, self.members.get(&id)) {
            if m.view.fd >= 0 {
                r.remove(m.view.fd);
                self.watched = self.watched.saturating_sub(1);
            }
        }
        self.unindex(id);
    }

    /// Takes member `id` out of the index, if it is there.
    fn unindex(&mut self, id: u64) {
        if let Some(old) = self.members.remove(&id) {
            self.by_read_through.remove(&(old.read_through, id));
            self.by_pending.remove(&(old.pending, id));
        }
    }

    /// Wakes the first waiting request: something it may wait for has changed.
    fn wake_first(&self) {
        if let Some(first) = self.queue.values().next() {
            first.notify_one();
        }
    }

    /// True when a request of `tag` (hashed) that began at `key` on connection `me`
    /// waits behind an earlier waiting request.
    fn queued_behind(&self, key: u64, me: u64) -> bool {
        self.queue
            .keys()
            .next()
            .is_some_and(|&first| first < (key, me))
    }

    /// What holds back a request of `tag` (hashed) that began at `key` on connection
    /// `me`, if anything does among the domain's members.
    /// `readers`: the domain's [`Domain::readers`].
    fn blocker(
        &mut self,
        key: u64,
        tag: u64,
        me: u64,
        now: u64,
        readers: &AtomicUsize,
    ) -> Option<Blocker> {
        if self.in_line.range(..(key, me)).next().is_some() {
            return Some(Blocker::Behind);
        }
        self.any_precedes(key, tag, me, now, readers)
            .then_some(Blocker::Earlier)
    }

    /// True when a member other than `me` may still hand over a request of `tag`
    /// (hashed) that began before `key`. Looks only at members whose pending request
    /// began earlier or that have not read through `key`, and asks the kernel once
    /// which of them have unread bytes (then, to be sure, each of those). Those found
    /// read through now are indexed anew, so the next request does not look at them
    /// again unless it began later. `now` was taken before this call.
    fn any_precedes(
        &mut self,
        key: u64,
        tag: u64,
        me: u64,
        now: u64,
        readers: &AtomicUsize,
    ) -> bool {
        let mut quiet = Vec::new();
        let watched = self.watched;
        let ready = self.readiness.as_mut().and_then(|r| r.ready(watched));
        // Loaded after the poll: a member whose read emptied its socket before the poll
        // counted itself a reader before that read, and until what it read is indexed.
        // While nobody is reading, a member with no earlier request indexed and nothing
        // unread has nothing earlier to hand over: only those with unread bytes are
        // looked at besides, not every one that has not read through `key`.
        let nobody_reading = readers.load(Ordering::SeqCst) == 0;
        let found = {
            let Index {
                members,
                by_read_through,
                by_pending,
                ..
            } = &*self;
            let mut looks = |id: u64| -> bool {
                let Some(member) = members.get(&id).filter(|_| id != me) else {
                    return false;
                };
                // Not readable: no unread bytes. Readable: bytes, or the peer's end.
                let empty = ready.as_ref().is_some_and(|r| !r.contains(&id));
                match member.view.check(key, tag, me, now, empty) {
                    Verdict::Precedes => true,
                    Verdict::Clear => false,
                    Verdict::Quiet => {
                        quiet.push(id);
                        false
                    }
                }
            };
            let (with_unread, behind) = match &ready {
                Some(ready) if nobody_reading => (Some(ready.iter().copied()), None),
                _ => (
                    None,
                    Some(by_read_through.range(..(key, 0)).map(|&(_, id)| id)),
                ),
            };
            by_pending
                .range(..(key, me))
                .map(|&(_, id)| id)
                .chain(with_unread.into_iter().flatten())
                .chain(behind.into_iter().flatten())
                .any(&mut looks)
        };
        for id in quiet {
            if let Some(member) = self.members.get(&id) {
                let through = now.saturating_sub(QUEUEING_MARGIN_NS);
                member
                    .view
                    .read_through
                    .fetch_max(through, Ordering::SeqCst);
            }
            self.refresh(id);
        }
        found
    }
}

/// What other connections see of one connection.
struct View {
    id: u64,
    /// Its socket, to ask the kernel whether it has unread bytes; -1: none.
    fd: RawFd,
    accepted: Instant,
    /// True from just before a read until what it read is registered.
    reading: AtomicBool,
    /// When its last read began (ns since the epoch; 0: never, or not told).
    read_started: AtomicU64,
    /// Every byte that arrived up to this time (ns since the epoch) has been read.
    read_through: AtomicU64,
    /// The key (first byte's arrival) of its oldest request not handed over yet,
    /// complete or not; [`NONE`] when it has none.
    pending: AtomicU64,
    /// The tag of that request, hashed ([`tag_hash`]); 0 when not known yet.
    pending_tag: AtomicU64,
    /// That request has arrived whole: it is on its way to its turn, however long ago
    /// it began.
    pending_whole: AtomicBool,
    /// Still counted among its client's newcomers.
    newcomer: AtomicBool,
    /// Counted in its domains' [`Domain::readers`].
    counted_reader: AtomicBool,
}

/// What one connection is to a request of another.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It may still hand over an earlier request of the same tag.
    Precedes,
    /// It will not.
    Clear,
    /// It will not, and its socket was empty while it was not reading: it has read
    /// through the time of the look, less [`QUEUEING_MARGIN_NS`].
    Quiet,
}

impl View {
    /// Whether this connection may still hand over a request with tag `tag` (hashed)
    /// whose first byte arrived before `key` (ties go to the older connection). `now`:
    /// the time (ns since the epoch) taken before the look. The order of the loads
    /// matters: see the protocol in [`Member::reading`].
    ///
    /// A request of its that began [`MAX_WAIT`] or more before `key` and is still
    /// arriving holds nothing back any more: else a client trickling one request (a
    /// slowloris) would hold back each later request of its address for a second, one
    /// after the other, until `limits.request_timeout_ms` cut it off.
    ///
    /// `empty`: its socket is known to hold nothing unread (learnt after `now`); else
    /// the kernel is asked here.
    fn check(&self, key: u64, tag: u64, id: u64, now: u64, empty: bool) -> Verdict {
        // Everything that arrived up to `key` is read, and so registered: if its oldest
        // pending request (registered before that) is not earlier, nothing earlier is
        // left. No need to ask the kernel.
        if self.read_through.load(Ordering::SeqCst) >= key {
            let pending = self.pending.load(Ordering::SeqCst);
            let whole = self.pending_whole.load(Ordering::SeqCst);
            if !self.begun_before(pending, whole, key, id, now) {
                return Verdict::Clear;
            }
        }
        let unread = !empty && self.fd >= 0 && unread_bytes(self.fd) > 0;
        let reading = self.reading.load(Ordering::SeqCst);
        let read_through = self.read_through.load(Ordering::SeqCst);
        let pending = self.pending.load(Ordering::SeqCst);
        let pending_tag = self.pending_tag.load(Ordering::SeqCst);
        let whole = self.pending_whole.load(Ordering::SeqCst);
        if pending != NONE && !whole && pending.saturating_add(MAX_WAIT_NS) < now {
            // Still arriving, begun more than MAX_WAIT ago: it holds nothing back, nor
            // does what may follow it on its connection.
            return Verdict::Clear;
        }
        // A request whose tag is not known yet may be of this tag, but only while its
        // bytes are coming in: a client's first write carries the whole tag, so what
        // still lacks it between reads is a client that trickles (a slowloris), and
        // waiting for it would hold back every request of its address.
        if self.begun_before(pending, whole, key, id, now)
            && (pending_tag == tag || (pending_tag == 0 && (reading || unread)))
        {
            return Verdict::Precedes;
        }
        if read_through < key && (reading || unread) {
            return Verdict::Precedes;
        }
        if self.fd >= 0 && !reading && !unread {
            Verdict::Quiet
        } else {
            Verdict::Clear
        }
    }

    /// True when a pending request that began at `pending` comes before a request
    /// that began at `key` on connection `id`, and still holds it back: it has arrived
    /// whole (`whole`), or it began less than [`MAX_WAIT`] ago. One still arriving
    /// after that holds nothing back (a wait for it would give up after MAX_WAIT: a
    /// slow sender, or one waiting for room in the intake budget), nor does what may
    /// follow it on its connection.
    fn begun_before(&self, pending: u64, whole: bool, key: u64, id: u64, now: u64) -> bool {
        if pending == NONE {
            return false;
        }
        if whole {
            return pending < key || (pending == key && self.id < id);
        }
        if pending.saturating_add(MAX_WAIT_NS) < now {
            return false;
        }
        (pending < key && key - pending < MAX_WAIT_NS) || (pending == key && self.id < id)
    }
}

/// Now, in ns since the epoch (the clock of the kernel's receive timestamps).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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
            read_started: AtomicU64::new(0),
            read_through: AtomicU64::new(0),
            pending: AtomicU64::new(NONE),
            pending_tag: AtomicU64::new(0),
            pending_whole: AtomicBool::new(false),
            newcomer: AtomicBool::new(true),
            counted_reader: AtomicBool::new(false),
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

/// A request's place in its tag's queue; leaving it (also when the wait is cancelled)
/// wakes the next one.
struct Queued<'a> {
    domain: &'a Domain,
    place: (u64, u64),
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut index = lock(&self.domain.index);
        index.queue.remove(&self.place);
        index.wake_first();
    }
}

/// A request that had its turn, until the buffer has taken it: later requests of its
/// client and tag wait for it (see [`Index::in_line`]).
#[must_use = "the request is in line until this is dropped"]
pub struct InLine {
    domain: Option<Arc<Domain>>,
    place: (u64, u64),
}

impl Drop for InLine {
    fn drop(&mut self) {
        if let Some(domain) = &self.domain {
            let mut index = lock(&domain.index);
            index.in_line.remove(&self.place);
            index.wake_first();
        }
    }
}

impl Member {
    /// Called just before each read.
    ///
    /// The protocol between a connection C and another connection B that checks it:
    /// C sets `reading`, reads, finds whether its head request is whole, then sets it
    /// (`pending_tag`, `pending_whole`, `pending`), then `read_through`, then clears
    /// `reading`. B asks the kernel for C's unread bytes first, then loads `reading`,
    /// `read_through`, `pending`, `pending_tag` and `pending_whole`, in that order. Whatever B sees, a request of C that began before B's is either
    /// pending, or being read, or unread: B waits. (B may load `read_through` and then
    /// `pending` first: if C had read through B's key, its requests that began before
    /// are registered, and if none is pending any more, none is left.)
    pub fn reading(&self) {
        if !self.view.counted_reader.swap(true, Ordering::SeqCst) {
            for (_, domain) in &self.domains {
                domain.readers.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.view.read_started.store(now_ns(), Ordering::Relaxed);
        self.view.reading.store(true, Ordering::SeqCst);
    }

    /// What was read is registered and indexed: no longer a reader. (Domains are joined
    /// only between reads, in [`Member::turn`].)
    fn done_reading(&self) {
        if self.view.counted_reader.swap(false, Ordering::SeqCst) {
            for (_, domain) in &self.domains {
                domain.readers.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Called after each read that returned bytes arrived up to `arrival`, once what it
    /// read has been looked through for complete requests. `head`: the key and tag hash
    /// of the oldest request not handed over (0: tag not known yet); `whole`: it is
    /// complete.
    pub fn read(&self, arrival: u64, head: Option<(u64, u64)>, whole: bool) {
        let v = &self.view;
        self.set_head(head, whole);
        v.read_through.fetch_max(arrival, Ordering::SeqCst);
        v.reading.store(false, Ordering::SeqCst);
        self.index();
        self.done_reading();
        self.wake();
    }

    /// Called when a read returned nothing (would block, or the end). A read that
    /// found the socket empty shows that everything that arrived before it began (less
    /// the queueing margin) has been read.
    pub fn read_nothing(&self) {
        let v = &self.view;
        // Not a newcomer's: a newcomer counts as silent while it has read nothing.
        let started = v.read_started.load(Ordering::Relaxed);
        if started > 0 && !v.newcomer.load(Ordering::SeqCst) {
            v.read_through
                .fetch_max(started.saturating_sub(QUEUEING_MARGIN_NS), Ordering::SeqCst);
        }
        v.reading.store(false, Ordering::SeqCst);
        self.index();
        self.done_reading();
        self.wake();
    }

    /// Called when requests were handed over: `head` is the oldest request left (a
    /// partial one), if any.
    pub fn handed_over(&self, head: Option<(u64, u64)>) {
        if self.set_head(head, false) {
            self.index();
            self.wake();
        }
    }

    /// Sets the head request; true when it changed.
    fn set_head(&self, head: Option<(u64, u64)>, whole: bool) -> bool {
        let v = &self.view;
        let (key, tag) = head.unwrap_or((NONE, 0));
        v.pending_tag.store(tag, Ordering::SeqCst);
        v.pending_whole.store(whole, Ordering::SeqCst);
        v.pending.swap(key, Ordering::SeqCst) != key
    }

    /// Indexes this connection anew in each of its domains that has others, and wakes
    /// the request first in their queues. (A domain it is alone in is indexed by the
    /// next connection that joins it: that one counts itself in first, so either this
    /// one sees it and indexes, or it sees this one's values.)
    fn index(&self) {
        for (_, domain) in &self.domains {
            if domain.count.load(Ordering::SeqCst) > 1 {
                let mut index = lock(&domain.index);
                index.refresh(self.view.id);
                index.wake_first();
            }
        }
    }

    /// Wakes the requests first in their queues that look at newcomers.
    fn wake(&self) {
        if self.client.waiters.load(Ordering::SeqCst) > 0 {
            self.client.changed.notify_waiters();
        }
    }

    /// Waits until requests with `tag` whose first byte arrived at `arrival` may be
    /// handed over; they are in line until the returned value is dropped, once the
    /// buffer has taken them.
    pub async fn turn(&mut self, tag: &[u8], arrival: u64) -> InLine {
        let domain = self.domain(tag);
        let me = self.view.id;
        let place = (arrival, me);
        // Alone in the domain, no newcomer about: nobody can come first.
        if self.client.newcomers.load(Ordering::SeqCst) == 0
            && domain.count.load(Ordering::SeqCst) <= 1
        {
            return InLine {
                domain: None,
                place,
            };
        }
        let tag = tag_hash(tag);
        // Since when only requests still to come hold it back (the time it waits for
        // those is bounded).
        let mut held_since = Instant::now();
        let woken = Arc::new(Notify::new());
        let mut queued: Option<Queued> = None;
        let mut waited = false;
        loop {
            // Listened to before looking, so that no wake is missed between the two; by
            // the first waiting request only (the others wait for their own wake).
            let mut changed = Box::pin(self.client.changed.notified());
            changed.as_mut().enable();
            let (blocker, first) = {
                let mut state = lock(&self.client.state);
                let mut index = lock(&domain.index);
                // Behind an earlier waiting request: what holds that one back holds
                // back this one too, and it goes first. Only the first looks; the
                // others are woken one by one as they become first.
                let first = !index.queued_behind(arrival, me);
                let blocker = if first {
                    index
                        .blocker(arrival, tag, me, now_ns(), &domain.readers)
                        .or_else(|| {
                            self.newcomer_precedes(&mut state, arrival, tag)
                                .then_some(Blocker::Earlier)
                        })
                } else {
                    Some(Blocker::Behind)
                };
                match &blocker {
                    None => {
                        index.in_line.insert(place);
                    }
                    Some(_) if queued.is_none() => {
                        index.queue.insert(place, woken.clone());
                    }
                    Some(_) => {}
                }
                (blocker, first)
            };
            let Some(blocker) = blocker else {
                break;
            };
            if queued.is_none() {
                queued = Some(Queued {
                    domain: &domain,
                    place,
                });
            }
            if blocker == Blocker::Behind {
                // No time limit for these.
                held_since = Instant::now();
            } else if held_since.elapsed() >= MAX_WAIT {
                lock(&domain.index).in_line.insert(place);
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
            let left = MAX_WAIT.saturating_sub(held_since.elapsed());
            // A request in line wakes the first one when the buffer has taken it.
            let recheck = match blocker {
                Blocker::Behind => left,
                Blocker::Earlier => RECHECK.min(left),
            };
            if first {
                self.client.waiters.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = woken.notified() => {}
                    _ = changed.as_mut() => {}
                    _ = tokio::time::sleep(recheck) => {}
                }
                self.client.waiters.fetch_sub(1, Ordering::SeqCst);
            } else {
                drop(changed);
                let _ = tokio::time::timeout(left, woken.notified()).await;
            }
        }
        drop(queued);
        InLine {
            domain: Some(domain),
            place,
        }
    }

    /// True while a newcomer of the client may still hand over a request of `tag`
    /// that began before `arrival`.
    fn newcomer_precedes(&self, state: &mut ClientState, arrival: u64, tag: u64) -> bool {
        self.expire_newcomers(state);
        let me = self.view.id;
        let now = now_ns();
        state
            .newcomers
            .iter()
            .any(|v| v.id != me && v.check(arrival, tag, me, now, false) == Verdict::Precedes)
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
                        count: AtomicUsize::new(0),
                        readers: AtomicUsize::new(0),
                        index: Mutex::new(Index::default()),
                    })
                })
                .clone();
            let before = domain.count.fetch_add(1, Ordering::SeqCst);
            {
                let mut index = lock(&domain.index);
                index.join(self.view.clone());
                if before == 1 {
                    // The one member there did not index itself while it was alone.
                    let others: Vec<u64> = index
                        .members
                        .keys()
                        .copied()
                        .filter(|&id| id != self.view.id)
                        .collect();
                    for id in others {
                        index.refresh(id);
                    }
                }
            }
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
        // A read cut off (the connection cancelled while reading) still counts.
        self.done_reading();
        {
            // The same order of locks as `Order::join`: the table, then the client.
            let mut clients = lock(&self.order.clients);
            let mut state = lock(&self.client.state);
            for (tag, domain) in self.domains.drain(..) {
                let mut index = lock(&domain.index);
                index.remove(id);
                index.wake_first();
                domain.count.fetch_sub(1, Ordering::SeqCst);
                if index.members.is_empty() {
                    drop(index);
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
        drop(a.turn(b"app", 0).await);
        drop(b.turn(b"app", 0).await);
        (a, b)
    }

    /// Member `m` waiting for its turn with a request of "app" that began at `key`, in a
    /// task of its own; the task gives it back once it has had it.
    fn spawn_turn(mut m: Member, key: u64) -> tokio::task::JoinHandle<Member> {
        tokio::spawn(async move {
            drop(m.turn(b"app", key).await);
            m
        })
    }

    /// Waits that gave up.
    fn timeouts(order: &Order) -> u64 {
        order.counters.order_wait_timeouts.load(Ordering::Relaxed)
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
        a.read(100, Some((100, tag_hash(b"web"))), false);
        drop(a.turn(b"web", 100).await);
        a.handed_over(None);
        b.reading();
        b.read(200, Some((200, tag_hash(b"db"))), false);
        drop(b.turn(b"db", 200).await);
        b.handed_over(None);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_later_request_waits_for_an_earlier_one_on_another_connection() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (mut early, late) = two_of_app(&order, &id).await;
        // The early request of "app" began at 100 and is not handed over yet; the
        // late one (began at 200) must wait for it.
        early.reading();
        early.read(t + 100, Some((t + 100, tag_hash(b"app"))), false);
        late.reading();
        late.read(t + 200, Some((t + 200, tag_hash(b"app"))), false);
        let waiting = spawn_turn(late, t + 200);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(early.turn(b"app", t + 100).await);
        early.handed_over(None);
        let late = waiting.await.unwrap();
        late.handed_over(None);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 1);
        assert_eq!(timeouts(&order), 0);
    }

    #[tokio::test]
    async fn a_request_begun_a_second_earlier_holds_nothing_back() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let mut slow = order.join(&id, -1);
        let mut quick = order.join(&id, -1);
        drop(slow.turn(b"app", 0).await);
        drop(quick.turn(b"app", 0).await);
        // A request (tag not known yet) began at 1 s and is still arriving, a byte now
        // and then; requests that began a second or more after it do not wait for it.
        let second = MAX_WAIT.as_nanos() as u64;
        slow.reading();
        slow.read(second + 5, Some((second, 0)), false);
        for k in 2..5 {
            quick.reading();
            quick.read(k * second, Some((k * second, tag_hash(b"app"))), false);
            drop(quick.turn(b"app", k * second).await);
            quick.handed_over(None);
        }
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_request_with_no_tag_yet_holds_back_only_while_its_bytes_come() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (early, late) = two_of_app(&order, &id).await;
        // The early request's first read lacked its tag, and more of it is being read:
        // it may be "app", so the late one waits.
        early.reading();
        early.read(t + 100, Some((t + 100, 0)), false);
        early.reading();
        late.reading();
        late.read(t + 200, Some((t + 200, tag_hash(b"app"))), false);
        let waiting = spawn_turn(late, t + 200);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The read brought no more of it (a client trickling a byte now and then): it
        // holds nothing back between its reads.
        early.read_nothing();
        let late = waiting.await.unwrap();
        late.handed_over(None);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 1);
        assert_eq!(timeouts(&order), 0);
        drop(early);
    }

    #[tokio::test]
    async fn a_begun_request_of_another_tag_does_not_hold_back() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (slow, mut quick) = two_of_app(&order, &id).await;
        // A request of tag "other" began at 100 and is still arriving.
        slow.read(t + 100, Some((t + 100, tag_hash(b"other"))), false);
        quick.read(t + 200, Some((t + 200, tag_hash(b"app"))), false);
        drop(quick.turn(b"app", t + 200).await);
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
        slow.read(long_ago, Some((long_ago, tag_hash(b"app"))), false);
        slow.reading();
        quick.read(t, Some((t, tag_hash(b"app"))), false);
        drop(quick.turn(b"app", t).await);
        assert_eq!(order.counters.order_waits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn clients_and_lists_are_cleaned_up() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let mut a = order.join(&id, -1);
        drop(a.turn(b"x", 1).await);
        let b = order.join(&id, -1);
        drop(a);
        drop(b);
        assert!(lock(&order.clients).is_empty());
    }

    #[tokio::test]
    async fn a_whole_request_holds_back_however_long_ago_it_began() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (mut early, late) = two_of_app(&order, &id).await;
        // Arrived whole two seconds ago (its connection's task is slow to get to it):
        // not a request still arriving, so a later one waits for it.
        let long_ago = t - 2_000_000_000;
        early.reading();
        early.read(long_ago, Some((long_ago, tag_hash(b"app"))), true);
        late.reading();
        late.read(t, Some((t, tag_hash(b"app"))), true);
        let waiting = spawn_turn(late, t);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(early.turn(b"app", long_ago).await);
        early.handed_over(None);
        let late = waiting.await.unwrap();
        late.handed_over(None);
        assert_eq!(timeouts(&order), 0);
    }

    #[tokio::test]
    async fn a_request_in_line_holds_back_later_ones_until_the_buffer_took_it() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let (mut early, late) = two_of_app(&order, &id).await;
        early.read(t, Some((t, tag_hash(b"app"))), true);
        late.read(t + 1, Some((t + 1, tag_hash(b"app"))), true);
        // Its turn is taken; the buffer has no room for it yet (nobody subscribed).
        let in_line = early.turn(b"app", t).await;
        let waiting = spawn_turn(late, t + 1);
        // Longer than any wait for a request still to come: it still waits.
        tokio::time::sleep(MAX_WAIT + Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        drop(in_line);
        early.handed_over(None);
        let late = waiting.await.unwrap();
        drop(late);
        assert_eq!(timeouts(&order), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_waiting_requests_go_in_the_order_they_arrived() {
        let order = Arc::new(Order::default());
        let id: Arc<str> = "10.0.0.1".into();
        let t = now();
        let n = 300u64;
        let mut members = Vec::new();
        for k in 0..n {
            let mut m = order.join(&id, -1);
            drop(m.turn(b"app", 0).await);
            m.read(t + k, Some((t + k, tag_hash(b"app"))), true);
            members.push(m);
        }
        // The first takes its turn and waits for the buffer's room; the others come to
        // theirs latest first.
        let mut first = members.remove(0);
        let in_line = first.turn(b"app", t).await;
        let (passed, mut passes) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (k, mut m) in members.into_iter().enumerate().rev() {
            let passed = passed.clone();
            let key = t + k as u64 + 1;
            tasks.push(tokio::spawn(async move {
                let in_line = m.turn(b"app", key).await;
                passed.send(key).unwrap();
                drop(in_line);
                m.handed_over(None);
                m
            }));
        }
        drop(passed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            passes.try_recv().is_err(),
            "one went before the first was taken"
        );
        drop(in_line);
        first.handed_over(None);
        let mut keys = Vec::new();
        while let Some(key) = passes.recv().await {
            keys.push(key);
        }
        let sorted: Vec<u64> = (1..n).map(|k| t + k).collect();
        assert_eq!(keys, sorted);
        for task in tasks {
            drop(task.await.unwrap());
        }
        assert_eq!(timeouts(&order), 0);
        assert!(lock(&order.clients).len() == 1);
    }
}
