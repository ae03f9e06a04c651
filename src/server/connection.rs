//! One client connection: read, find complete requests, decode, route, hand each
//! request's events to the buffer in one batch, then ack.

use super::handoff::Handoff;
use super::handshake::{HandshakeError, Security};
use super::intake_memory::{Grant, IntakeMemory, READ_FLOOR};
use super::order::{tag_hash, Member, Order};
use super::socket::{ClientSocket, ReadHook};
use crate::buffer::spool::SpoolError;
use crate::buffer::{BufferError, Intake, Receipt, Submission};
use crate::dedup::{Check, Dedup};
use crate::expand::{expand_decompressed, ExpandLimits};
use crate::forward::ack::{encode_ack, encode_json_ack};
use crate::forward::compression::DecompressError;
use crate::forward::json::{json_to_msgpack, starts_json, JsonError, JsonScanner};
use crate::forward::msgpack::Cursor;
use crate::forward::to_json::write_value;
use crate::forward::{
    decode_request, Compression, Entries, Limits, RequestError, ScanError, Scanner,
};
use crate::metrics::Counters;
use bytes::{Buf, Bytes, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What every connection task shares.
pub struct Shared {
    /// Routing rules, keys and timeouts, which a SIGHUP may change.
    pub live: super::live::Live,
    /// Caps on a request as it is read.
    pub limits: Limits,
    /// Caps on a request as it is expanded into events.
    pub expand_limits: ExpandLimits,
    /// Where requests go on their way to the publisher.
    pub intake: Intake,
    /// What read buffers and decompressions may hold (`limits.intake_memory_bytes`).
    pub memory: IntakeMemory,
    pub counters: Arc<Counters>,
    /// Chunk ids accepted recently, to ack resends without publishing them twice.
    pub dedup: Option<Dedup>,
    /// Split lines are joined (by the publisher): tell it when a connection ends.
    pub join_partial: bool,
    /// Each client's requests in arrival order across its connections
    /// (`input.keep_client_order`).
    pub order: Option<Arc<Order>>,
    /// Connections numbered so far.
    pub connections: std::sync::atomic::AtomicU64,
    /// Source networks and connection limits.
    pub admission: Arc<super::admission::Admission>,
    /// Look up each client's host name (for `input.source_hostname_key`).
    pub resolve_hostname: bool,
}

/// The host name of the client at `ip` by reverse DNS, looked up once per connection
/// (off the async threads, bounded to 2 s); `None` when it has none.
async fn resolve_host(ip: &str) -> Option<Arc<str>> {
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let lookup = tokio::task::spawn_blocking(move || dns_lookup::lookup_addr(&ip).ok());
    match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
        Ok(Ok(Some(host))) => Some(host.into()),
        _ => None,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Why a connection was closed by the gateway.
#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("invalid msgpack: {0}")]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error("connection closed in the middle of a request ({0} bytes unread)")]
    Truncated(usize),
    #[error("publisher stopped; request not acknowledged")]
    PublisherClosed,
    #[error("request not acknowledged: {0}")]
    Spool(#[from] SpoolError),
    #[error("handshake failed: {0}")]
    Handshake(#[from] super::handshake::HandshakeError),
    #[error("idle for limits.idle_timeout_ms")]
    Idle,
    #[error("request not complete within limits.request_timeout_ms ({0} bytes received)")]
    SlowRequest(usize),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ConnectionError {
    /// True when the client sent something the gateway cannot trust, as opposed to a
    /// network error or a shutdown.
    /// Every variant is named, so that a new one must be placed on one side.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ConnectionError::Scan(_)
            | ConnectionError::Request(_)
            | ConnectionError::Json(_)
            | ConnectionError::Decompress(_)
            | ConnectionError::Truncated(_)
            | ConnectionError::Handshake(_)
            | ConnectionError::SlowRequest(_) => true,
            ConnectionError::PublisherClosed
            | ConnectionError::Spool(_)
            | ConnectionError::Idle
            | ConnectionError::Io(_) => false,
        }
    }
}

/// Buffer space made available before each read: small while idle, so that thousands
/// of idle Docker connections cost little; large inside a request, so that big frames
/// take few reads.
const IDLE_READ: usize = 4 * 1024;
const BUSY_READ: usize = 64 * 1024;

/// How often a connection waiting for room in the budget looks whether its client
/// has gone.
const HANG_UP_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Makes room in a connection's read buffer, under the intake budget.
struct Room<'a> {
    grant: &'a mut Grant,
    memory: &'a IntakeMemory,
    /// The connection's socket, to notice a client that leaves while it waits.
    fd: std::os::fd::RawFd,
}

impl Room<'_> {
    /// Makes room in `buf` for the next read of a request in progress that is known to
    /// lack `needed` more bytes (0: not known), and returns the room and how much the
    /// read may take. A client earns room by sending: at most as much again as it has
    /// sent of the request (and at least [`BUSY_READ`]), so one that declares a large
    /// request and trickles its bytes holds little. A buffer above [`READ_FLOOR`] waits
    /// for room in the budget first; a client that closes meanwhile ends the wait.
    async fn make(self, buf: &mut BytesMut, needed: usize) -> std::io::Result<(usize, usize)> {
        let (want, limit) = if needed >= BUSY_READ {
            // A large declared value (a PackedForward stream): room for it and a little
            // more, and a read that stops there. Bytes read past the request's end are
            // copied into the next request's buffer; reading to the edge of a large
            // buffer made that tail as large as the read, and the copy cost a byte for
            // every byte received.
            (needed + IDLE_READ, needed + IDLE_READ)
        } else {
            (BUSY_READ, usize::MAX)
        };
        let room = want.min(buf.len().max(BUSY_READ));
        if buf.capacity() - buf.len() < room {
            let size = buf.len() + room;
            if size > READ_FLOOR {
                let raise = self.memory.raise(self.grant, size - READ_FLOOR);
                tokio::pin!(raise);
                loop {
                    tokio::select! {
                        () = &mut raise => break,
                        () = tokio::time::sleep(HANG_UP_CHECK) => {
                            if super::socket::hung_up(self.fd) {
                                // Its request can never be completed: let its room go.
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "the client closed the connection while its request \
                                     waited for room in limits.intake_memory_bytes",
                                ));
                            }
                        }
                    }
                }
            }
            // Exactly this size (growing in place would double it, past what the
            // budget granted); the copy is what growing costs anyway.
            let mut bigger = BytesMut::with_capacity(size);
            bigger.extend_from_slice(buf);
            *buf = bigger;
        }
        Ok((room, limit.min(room)))
    }
}

/// Who a new connection is, and the places it holds.
pub struct Origin {
    /// Its place in its client's order (`input.keep_client_order`), taken at accept.
    /// Dropped before the socket is closed, so no other connection asks the kernel
    /// about a closed (or reused) descriptor.
    pub member: Option<Member>,
    /// Names the connection in logs.
    pub peer: Arc<str>,
    /// Names the client across its connections (its IP address, or the unix socket
    /// path), for duplicate detection and ordering.
    pub identity: Arc<str>,
    /// Its place under the connection limits, given back at the end.
    pub place: super::admission::Place,
}

/// Serves one connection until the client closes it, it sends bad input, or `cancel`
/// fires (then requests already read are finished first). Logs the outcome.
pub async fn serve<S>(stream: S, origin: Origin, shared: Arc<Shared>, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + ClientSocket + Unpin,
{
    shared
        .counters
        .connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .connections_active
        .fetch_add(1, Ordering::Relaxed);
    let Origin {
        member,
        peer,
        identity,
        place,
    } = origin;
    tracing::debug!(peer = %peer, "connection accepted");
    let mut conn = Connection {
        number: shared.connections.fetch_add(1, Ordering::Relaxed) + 1,
        member,
        last_arrival: 0,
        unregistered: false,
        head_key: None,
        region_key: 0,
        peer_host: None,
        stream,
        peer: peer.clone(),
        identity,
        shared,
        buf: BytesMut::new(),
        grant: Grant::default(),
        region_alloc: 0,
        framing: Framing::Unknown,
    };
    let result = conn.run(&cancel).await;
    if conn.shared.join_partial {
        // Split lines of this connection that wait for a piece get no more.
        conn.shared.intake.connection_ended(conn.number);
    }
    match result {
        Ok(()) => tracing::debug!(peer = %peer, "connection closed"),
        Err(ConnectionError::Idle) => {
            conn.shared
                .counters
                .connections_idle_closed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %peer, "closing idle connection (limits.idle_timeout_ms)");
        }
        Err(e) if e.is_bad_input() => {
            conn.shared
                .counters
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer, reason = %e, "closing connection");
        }
        Err(e) => tracing::info!(peer = %peer, reason = %e, "connection ended"),
    }
    Counters::decrease(&conn.shared.counters.connections_active, 1);
    drop(place);
}

struct Connection<S> {
    /// Its number in this run (see [`crate::event::RoutedEvents::connection`]).
    number: u64,
    /// Its place in its client's order. Declared before `stream`, so it is dropped
    /// (and leaves its client's lists) before the socket is closed.
    member: Option<Member>,
    /// When the newest bytes of the last read arrived (ns since the epoch).
    last_arrival: u64,
    /// A read is not told to the member yet: it is, once its complete requests are
    /// found, so that none of them is taken for one still arriving.
    unregistered: bool,
    /// When the first byte of the oldest request in the buffer arrived (its key in its
    /// client's order); `None` with an empty buffer.
    head_key: Option<u64>,
    /// The key of the requests being handled: their first one's.
    region_key: u64,
    /// The client's host name, when `input.source_hostname_key` asks for it.
    peer_host: Option<Arc<str>>,
    stream: S,
    peer: Arc<str>,
    identity: Arc<str>,
    shared: Arc<Shared>,
    buf: BytesMut,
    /// The intake budget `buf` holds above [`READ_FLOOR`].
    grant: Grant,
    /// The bytes of the allocation the region being handled was read into (its part of
    /// the read buffer): a small request is copied out of a large one before it is held.
    region_alloc: usize,
    framing: Framing,
}

/// How requests are delimited on a connection, decided by its first byte.
enum Framing {
    Unknown,
    Msgpack(Scanner),
    Json(JsonScanner),
}

impl<S: AsyncRead + AsyncWrite + ClientSocket + Unpin> Connection<S> {
    /// Reads and handles requests until the client closes, bad input, or `cancel`.
    async fn run(&mut self, cancel: &CancellationToken) -> Result<(), ConnectionError> {
        if self.shared.resolve_hostname {
            self.peer_host = resolve_host(&self.identity).await;
        }
        // The keys of the moment the connection came: a reload applies to the next.
        let security = self.shared.live.security();
        if let Some(security) = &security {
            let timeout = security.timeout;
            tokio::time::timeout(timeout, self.handshake(security))
                .await
                .map_err(|_| HandshakeError::Timeout)??;
        }
        let one_request = security.is_some_and(|s| s.deny_keepalive);
        self.read_loop(cancel, one_request).await
    }

    async fn read_loop(
        &mut self,
        cancel: &CancellationToken,
        one_request: bool,
    ) -> Result<(), ConnectionError> {
        let mut last_read = Instant::now();
        let mut request_started: Option<Instant> = None;
        // One wait for shutdown for the whole connection: made and registered anew for
        // every read, it cost a lock on the token's waiter list twice per request.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let handled = self.handle_buffered(one_request).await?;
            if handled && one_request {
                // The HELO said keepalive: false; one request per connection.
                return Ok(());
            }
            // An idle connection may wait `idle_timeout`; a request that has begun must
            // be complete within `request_timeout` of its first byte.
            let idle = self.buf.is_empty();
            let limit = if idle {
                request_started = None;
                // Thousands of idle Docker connections are common: hold no read buffer
                // while waiting for the next request.
                self.buf = BytesMut::new();
                self.grant = Grant::default();
                self.shared
                    .live
                    .idle_timeout()
                    .map(|t| (last_read + t, true))
            } else {
                let started = *request_started.get_or_insert(last_read);
                self.shared
                    .live
                    .request_timeout()
                    .map(|t| (started + t, false))
            };
            // On shutdown, a request already begun is read to its end first (the server
            // bounds how long it waits for that).
            // A large request whose size is declared up front gets its room at once
            // instead of growing (and being copied) read after read.
            let needed = match &self.framing {
                Framing::Msgpack(scanner) => scanner.awaiting().saturating_sub(self.buf.len()),
                _ => 0,
            };
            let member = self.member.as_ref();
            let room = Room {
                grant: &mut self.grant,
                memory: &self.shared.memory,
                fd: self.stream.socket_fd(),
            };
            let read = read_when_ready(&mut self.stream, &mut self.buf, room, needed, member);
            let (n, stamp) = tokio::select! {
                r = read => r.inspect_err(|_| {
                    if let Some(m) = &self.member {
                        m.read_nothing();
                    }
                })?,
                _ = &mut cancelled, if idle => return Ok(()),
                _ = sleep_until_opt(limit.map(|l| l.0)) => {
                    return Err(match limit {
                        Some((_, true)) => ConnectionError::Idle,
                        _ => ConnectionError::SlowRequest(self.buf.len()),
                    });
                }
            };
            last_read = Instant::now();
            if n > 0 {
                self.last_arrival = stamp.unwrap_or_else(now_ns);
                if self.buf.len() == n {
                    // The first bytes of a new request.
                    self.head_key = Some(self.last_arrival);
                }
            }
            match (&self.member, n) {
                (Some(m), 0) => m.read_nothing(),
                // Told once the requests it completed are found (`handle_buffered`).
                (Some(_), _) => self.unregistered = true,
                (None, _) => {}
            }
            if n == 0 {
                return match self.buf.len() {
                    0 => Ok(()),
                    pending => Err(ConnectionError::Truncated(pending)),
                };
            }
            self.shared
                .counters
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// HELO, then the client's PING, then PONG; an error closes the connection.
    async fn handshake(&mut self, security: &Security) -> Result<(), ConnectionError> {
        let challenge = security.challenge()?;
        self.stream.write_all(&security.helo(&challenge)).await?;
        let ping = loop {
            if let Some(frame) = self.next_frame()? {
                break frame;
            }
            let needed = match &self.framing {
                Framing::Msgpack(scanner) => scanner.awaiting().saturating_sub(self.buf.len()),
                _ => 0,
            };
            let room = Room {
                grant: &mut self.grant,
                memory: &self.shared.memory,
                fd: self.stream.socket_fd(),
            };
            let (room, limit) = room.make(&mut self.buf, needed).await?;
            let mut limited = (&mut self.stream).take(limit as u64);
            if room == 0 || limited.read_buf(&mut self.buf).await? == 0 {
                return Err(HandshakeError::ClosedBeforePing.into());
            }
        };
        let ip = self.identity.parse().ok();
        if security.needs_hostname() && self.peer_host.is_none() {
            self.peer_host = resolve_host(&self.identity).await;
        }
        let (pong, outcome) = security.answer(&challenge, ip, self.peer_host.as_deref(), &ping);
        self.stream.write_all(&pong).await?;
        Ok(outcome?)
    }

    /// Decides how requests are delimited from the connection's first byte, once it
    /// has arrived.
    fn decide_framing(&mut self) {
        if let (Framing::Unknown, Some(&first)) = (&self.framing, self.buf.first()) {
            let limits = self.shared.limits;
            self.framing = if starts_json(first) {
                Framing::Json(JsonScanner::new(limits.max_size))
            } else {
                Framing::Msgpack(Scanner::new(limits))
            };
        }
    }

    /// Splits the next complete request off the buffer, if there is one. JSON requests
    /// come back re-encoded as msgpack.
    fn next_frame(&mut self) -> Result<Option<Bytes>, ConnectionError> {
        self.decide_framing();
        match &mut self.framing {
            Framing::Unknown => Ok(None),
            Framing::Msgpack(scanner) => Ok(scanner
                .scan(&self.buf)?
                .map(|n| self.buf.split_to(n).freeze())),
            Framing::Json(scanner) => match scanner.scan(&self.buf)? {
                Some(value) => {
                    let frame = json_to_msgpack(&self.buf[value.clone()])?;
                    self.buf.advance(value.end);
                    Ok(Some(Bytes::from(frame)))
                }
                None => Ok(None),
            },
        }
    }

    /// Handles every complete request in the buffer (only the first when `one_request`);
    /// true when there was one. Requests read together are handed off together.
    async fn handle_buffered(&mut self, one_request: bool) -> Result<bool, ConnectionError> {
        self.decide_framing();
        let Framing::Msgpack(scanner) = &mut self.framing else {
            // JSON requests are re-encoded one by one; they are rare and never small.
            // (Undecided framing means an empty buffer: `next_frame` finds nothing.)
            let mut any = false;
            self.region_key = self.head_key.unwrap_or(self.last_arrival);
            let mut next = self.next_frame();
            self.register_read(matches!(next, Ok(Some(_))));
            while let Some(frame) = next? {
                let len = frame.len();
                self.region_alloc = len;
                self.handle_region(frame, &[len], true, false, Grant::default())
                    .await?;
                any = true;
                if one_request {
                    break;
                }
                next = self.next_frame();
            }
            if any {
                // Every complete request is handed over: what is left is still arriving.
                self.next_head();
                self.handed_over();
            }
            return Ok(any);
        };
        let mut ends = Vec::new();
        let mut scanned = Ok(());
        let mut at = 0;
        while ends.is_empty() || !one_request {
            match scanner.scan(&self.buf[at..]) {
                Ok(Some(n)) => {
                    at += n;
                    ends.push(at);
                }
                Ok(None) => break,
                Err(e) => {
                    scanned = Err(e);
                    break;
                }
            }
        }
        self.register_read(at > 0);
        if at > 0 {
            self.region_alloc = self.buf.capacity();
            let region = self.buf.split_to(at).freeze();
            // The budget the buffer held goes with the requests read into it, until the
            // buffer layer has them.
            let grant = std::mem::take(&mut self.grant);
            if self.buf.is_empty() {
                // Nothing of the next request yet: give the rest of the buffer back now,
                // not after these requests are handed over (which may wait).
                self.buf = BytesMut::new();
            } else if grant.bytes() > 0 {
                // The start of the next request would keep the whole large allocation
                // alive once the requests are gone, outside the budget: copy it out.
                self.buf = BytesMut::from(&self.buf[..]);
            }
            self.region_key = self.head_key.unwrap_or(self.last_arrival);
            self.next_head();
            self.handle_region(region, &ends, false, true, grant)
                .await?;
        }
        // Requests before a malformed one are handled (and acked) before it closes the
        // connection.
        scanned?;
        Ok(at > 0)
    }

    /// Handles the requests of `region`, each ending at one of `ends`, then hands their
    /// events to the buffer and writes their acks. A request that cannot be decoded
    /// ends the connection after the ones before it are handed off. `last`: no other
    /// complete request was read (so others of this client may go once these are
    /// handed over). `grant`: the budget the region's buffer holds.
    async fn handle_region(
        &mut self,
        region: Bytes,
        ends: &[usize],
        json: bool,
        last: bool,
        grant: Grant,
    ) -> Result<(), ConnectionError> {
        let mut handoff = Handoff::new(self.shared.intake.keeps_frames());
        handoff.memory.merge(grant);
        let mut at = 0;
        for &end in ends {
            if let Err(e) = self.handle(&region, at..end, json, &mut handoff).await {
                drop(region);
                self.hand_off(&mut handoff, true).await?;
                return Err(e);
            }
            at = end;
            if handoff.is_full() {
                self.hand_off(&mut handoff, false).await?;
            }
        }
        // What the batches need of the region they keep; the rest can go while they wait.
        drop(region);
        self.hand_off(&mut handoff, last).await
    }

    /// The requests in the buffer are being handled: what is left began in the last
    /// read (a request completed in it, and the next one follows).
    fn next_head(&mut self) {
        self.head_key = (!self.buf.is_empty()).then_some(self.last_arrival);
    }

    /// The oldest request not handed over: its key, and its tag's hash when enough of
    /// it has arrived to read the tag (0 before).
    fn head(&self) -> Option<(u64, u64)> {
        let key = self.head_key?;
        let mut c = Cursor::new(&self.buf);
        let tag = match (&self.framing, c.array_len(), c.str()) {
            (Framing::Json(_), _, _) => 0,
            (_, Ok(_), Ok(tag)) => tag_hash(&self.buf[tag]),
            _ => 0,
        };
        Some((key, tag))
    }

    /// Tells the member of the last read, if it has not been told: `whole`, the head
    /// request is complete.
    fn register_read(&mut self, whole: bool) {
        if std::mem::take(&mut self.unregistered) {
            if let Some(m) = &self.member {
                m.read(self.last_arrival, self.head(), whole);
            }
        }
    }

    /// Everything read before the head request is handed over: other connections of
    /// this client need not wait for it.
    fn handed_over(&self) {
        if let Some(m) = &self.member {
            m.handed_over(self.head());
        }
    }

    /// Decodes and routes the request at `range` of `region` into `handoff`.
    async fn handle(
        &mut self,
        region: &Bytes,
        range: std::ops::Range<usize>,
        json: bool,
        handoff: &mut Handoff,
    ) -> Result<(), ConnectionError> {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let at = range.start;
        let frame = region.slice(range);
        if frame[..] == [0xc0] {
            counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let request = decode_request(&frame)?;
        let chunk = request.options.chunk.clone().map(|c| frame.slice(c));
        let ack = chunk.as_ref().map(|c| {
            if json {
                let mut text = Vec::new();
                let _ = write_value(&mut text, &mut Cursor::new(c), c);
                encode_json_ack(&text)
            } else {
                encode_ack(c)
            }
        });
        let mut flight = None;
        if let Some((dedup, chunk)) = shared.dedup.as_ref().zip(chunk.as_ref()) {
            let mut duplicate = handoff.holds_chunk(chunk);
            while !duplicate && flight.is_none() {
                match dedup.check(&self.identity, chunk) {
                    Check::New(f) => flight = Some(f),
                    Check::Seen => duplicate = true,
                    Check::InFlight(outcome) => {
                        // The original is still being handled on another connection.
                        // Hand off what this one holds first: a connection that waits
                        // holds no chunk in flight, so no two can wait on each other.
                        if !handoff.is_empty() {
                            self.hand_off(handoff, false).await?;
                        }
                        // Nor does it hold back the client's other connections: the
                        // original may be one of them, waiting for its place in the
                        // order behind this resend (its bytes read later).
                        if let Some(m) = &self.member {
                            m.handed_over(None);
                        }
                        counters.resend_waits.fetch_add(1, Ordering::Relaxed);
                        outcome.wait().await;
                    }
                }
            }
            if duplicate {
                // A resend after a lost ack: accepted before, so ack it again only.
                counters.requests_duplicate.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer, "duplicate chunk acked again, not republished");
                if let Some(ack) = ack {
                    handoff.ack(ack, None);
                }
                return Ok(());
            }
        }
        if request.options.signal != 0 {
            // Metrics and traces carry cmetrics/ctraces payloads, not log records.
            counters.signal_requests.fetch_add(1, Ordering::Relaxed);
        } else {
            let plain = match &request.entries {
                Entries::Packed(range) if request.options.compressed != Compression::None => {
                    let (plain, grant) = shared
                        .memory
                        .decompress(
                            request.options.compressed,
                            &frame[range.clone()],
                            shared.expand_limits.max_decompressed,
                        )
                        .await?;
                    handoff.memory.merge(grant);
                    Some(plain)
                }
                _ => None,
            };
            let (batch, invalid) = expand_decompressed(
                frame.clone(),
                plain,
                &request,
                &shared.live.router.load(),
                shared.expand_limits,
                &self.peer,
            );
            if let Some(first) = invalid.first {
                counters
                    .events_invalid
                    .fetch_add(invalid.count, Ordering::Relaxed);
                tracing::warn!(peer = %self.peer, skipped = invalid.count, reason = %first, "skipped invalid events");
            }
            if let Some(mut batch) = batch {
                batch.peer_host = self.peer_host.clone();
                batch.connection = self.number;
                handoff.add(batch, &request, region, at, frame);
            }
        }
        if let Some(ack) = ack {
            handoff.ack(ack, flight);
        }
        Ok(())
    }

    /// Hands the batches of `handoff` to the buffer, then writes the acks of their
    /// requests and remembers their chunk ids: a request is acked only once the buffer
    /// holds its events (on disk, when there is a spool).
    /// With `last`, nothing else read waits to be handed over after these.
    async fn hand_off(&mut self, handoff: &mut Handoff, last: bool) -> Result<(), ConnectionError> {
        let mut receipts: Vec<Receipt> = Vec::new();
        let mut batches = handoff.take_batches();
        // A request that waits (for room in the buffer, or to be written) must not keep
        // its connection's whole read buffer alive: small ones are copied out of it
        // first, all of them, before the first wait.
        for ready in &mut batches {
            ready.unpin(self.region_alloc);
        }
        for ready in batches {
            // Later requests of this client and tag wait until the buffer has taken
            // this one (it may wait for room there).
            let in_line = match &mut self.member {
                Some(member) => {
                    let events = &ready.events;
                    let tag = events.tag.get(&events.data);
                    Some(member.turn(tag, self.region_key).await)
                }
                None => None,
            };
            let submission = Submission {
                events: ready.events,
                frames: ready.frames,
                received_ns: self.region_key,
            };
            let receipt = self.shared.intake.submit(submission).await;
            drop(in_line);
            receipts.push(receipt.map_err(buffer_error)?);
        }
        // The buffer layer holds them now, under its own budget.
        handoff.memory = Grant::default();
        // Their place is taken: what is written meanwhile (the spool's sync) need not
        // hold the client's other connections back.
        if last {
            self.handed_over();
        }
        for receipt in receipts {
            receipt.accepted().await.map_err(buffer_error)?;
        }
        for flight in handoff.chunks.drain(..) {
            flight.accepted();
        }
        if handoff.ack_count > 0 {
            self.stream.write_all(&handoff.acks).await?;
            self.shared
                .counters
                .acks_sent
                .fetch_add(handoff.ack_count, Ordering::Relaxed);
            handoff.acks.clear();
            handoff.ack_count = 0;
        }
        Ok(())
    }
}

fn buffer_error(e: BufferError) -> ConnectionError {
    match e {
        BufferError::Spool(e) => ConnectionError::Spool(e),
        BufferError::Closed | BufferError::Thread(..) => ConnectionError::PublisherClosed,
    }
}

/// Now, in nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Reads into `buf` once the stream is readable; the count, and when the bytes arrived
/// where the kernel says. An empty `buf` gets its space only then, so a connection
/// waiting for its next request holds no buffer. `needed`: bytes the request in
/// progress is known to lack.
async fn read_when_ready<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    room: Room<'_>,
    needed: usize,
    member: Option<&Member>,
) -> std::io::Result<(usize, Option<u64>)>
where
    S: AsyncRead + ClientSocket + Unpin,
{
    let hook: &dyn ReadHook = match member {
        Some(m) => m,
        None => &(),
    };
    if buf.is_empty() {
        stream.ready_to_read().await?;
        return stream.read_stamped(buf, IDLE_READ, usize::MAX, hook).await;
    }
    let (room, limit) = room.make(buf, needed).await?;
    stream.read_stamped(buf, room, limit, hook).await
}
