//! ZeroMQ egress: one thread owns the PUB socket (ZeroMQ sockets are not thread-safe),
//! takes batches from a bounded queue and sends each event in the configured format.

pub mod format;
pub mod json;
mod monitor;

use crate::config::{Format, OutputConfig, RouteConfig};
use crate::metrics::{Counters, TenantCounts};
use crate::route::{Routed, Span};
use bytes::Bytes;
use format::{Encoder, Sink};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// The events of one request, handed to the publisher in one piece.
#[derive(Debug)]
pub struct Batch {
    /// The bytes every span indexes: the request frame, or decompressed entries with
    /// the tag appended.
    pub data: Bytes,
    pub tag: Span,
    /// The client, as shown in logs and in the `json` format.
    pub peer: Arc<str>,
    pub events: Vec<Routed>,
    /// The queue's byte budget held by this batch, returned when it is published.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The publisher's bounded queue, bounded both in requests and in bytes: a full queue
/// makes `send` wait, so connections stop reading and TCP flow control holds the
/// clients back instead of memory growing.
#[derive(Clone)]
pub struct Queue {
    sender: mpsc::Sender<Batch>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    counters: Arc<Counters>,
}

/// The publisher has stopped; the batch was not accepted.
#[derive(Debug, Error)]
#[error("publisher stopped")]
pub struct QueueClosed;

impl Queue {
    /// Waits for room, then hands the batch over. Once this returns `Ok`, the
    /// publisher owns the batch: this is the moment a request may be acked.
    pub async fn send(&self, mut batch: Batch) -> Result<(), QueueClosed> {
        // A batch larger than the whole budget takes all of it rather than never fitting.
        let cost = batch.data.len().clamp(1, self.max_bytes);
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX))
            .await
            .map_err(|_| QueueClosed)?;
        batch.permit = Some(permit);
        // Counted before the send: the publisher may take the batch (and count it out)
        // before `send` returns here.
        let c = &self.counters;
        c.queue_requests.fetch_add(1, Ordering::Relaxed);
        c.queue_bytes.fetch_add(cost as u64, Ordering::Relaxed);
        self.sender.send(batch).await.map_err(|_| {
            Counters::decrease(&c.queue_requests, 1);
            Counters::decrease(&c.queue_bytes, cost as u64);
            QueueClosed
        })
    }
}

#[derive(Debug, Error)]
pub enum PublishError {
    #[error("cannot create the ZeroMQ PUB socket: {0}")]
    Socket(zmq::Error),
    #[error("cannot bind ZeroMQ endpoint {endpoint}: {source}")]
    Bind {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot connect ZeroMQ endpoint {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot start the publisher thread: {0}")]
    Thread(std::io::Error),
}

/// The running publisher thread and the endpoints it serves.
pub struct Publisher {
    thread: std::thread::JoinHandle<()>,
    /// Bound endpoints as ZeroMQ reports them (with the port actually bound).
    pub bound: Vec<String>,
    pub connected: Vec<String>,
}

impl Publisher {
    /// Creates the socket, binds and connects every endpoint, and starts the thread.
    /// Returns the queue's sending side; the thread ends once every sender is dropped
    /// and the queue is empty. `linger` bounds how long closing waits for unsent
    /// messages.
    pub fn start(
        output: &OutputConfig,
        route: &RouteConfig,
        linger: Duration,
        counters: Arc<Counters>,
        tenants: Arc<TenantCounts>,
    ) -> Result<(Queue, Publisher), PublishError> {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PUB).map_err(PublishError::Socket)?;
        socket
            .set_sndhwm(output.send_hwm)
            .map_err(PublishError::Socket)?;
        socket
            .set_linger(i32::try_from(linger.as_millis()).unwrap_or(i32::MAX))
            .map_err(PublishError::Socket)?;
        // Watch connects and disconnects, so readiness and metrics know whether any
        // subscriber or collector is there.
        monitor::start(&ctx, &socket, counters.clone())?;
        let mut bound = Vec::new();
        for endpoint in &output.zmq_bind {
            socket.bind(endpoint).map_err(|source| PublishError::Bind {
                endpoint: endpoint.clone(),
                source,
            })?;
            let actual = socket
                .get_last_endpoint()
                .ok()
                .and_then(Result::ok)
                .unwrap_or_else(|| endpoint.clone());
            bound.push(actual);
        }
        for endpoint in &output.zmq_connect {
            socket
                .connect(endpoint)
                .map_err(|source| PublishError::Connect {
                    endpoint: endpoint.clone(),
                    source,
                })?;
        }
        let (sender, rx) = mpsc::channel(output.queue_requests);
        let max_bytes = output.queue_bytes.min(u32::MAX as usize);
        let queue = Queue {
            sender,
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
            counters: counters.clone(),
        };
        let encoder = Encoder::new(output, route);
        let thread = std::thread::Builder::new()
            .name("fwdgate-publisher".into())
            .spawn(move || run(ctx, socket, rx, encoder, counters, tenants))
            .map_err(PublishError::Thread)?;
        Ok((
            queue,
            Publisher {
                thread,
                bound,
                connected: output.zmq_connect.clone(),
            },
        ))
    }

    /// Waits (blocking) until the thread has sent everything and closed the socket.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("publisher thread panicked");
        }
    }
}

fn run(
    ctx: zmq::Context,
    socket: zmq::Socket,
    mut rx: mpsc::Receiver<Batch>,
    mut encoder: Encoder,
    counters: Arc<Counters>,
    tenants: Arc<TenantCounts>,
) {
    let mut sink = ZmqSink(&socket);
    let sent = if encoder.format() == Format::Null {
        &counters.events_discarded
    } else {
        &counters.events_published
    };
    while let Some(batch) = rx.blocking_recv() {
        Counters::decrease(&counters.queue_requests, 1);
        let cost = batch.permit.as_ref().map_or(0, |p| p.num_permits() as u64);
        Counters::decrease(&counters.queue_bytes, cost);
        match encoder.encode_batch(&batch, &mut sink) {
            Ok(n) => {
                sent.fetch_add(n, Ordering::Relaxed);
                count_tenants(&encoder, &batch, &tenants);
            }
            Err(e) => {
                counters
                    .events_dropped
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, events = batch.events.len(), "ZeroMQ send failed; batch dropped");
            }
        }
    }
    // Closing waits up to the linger time for queued messages to reach subscribers.
    drop(socket);
    drop(ctx);
}

/// Counts a published batch per tenant. Consecutive events of one tenant (the usual
/// case: one container per connection) make one run, so the shared map is locked once
/// per batch and touched once per run.
fn count_tenants(encoder: &Encoder, batch: &Batch, tenants: &TenantCounts) {
    let mut runs: Vec<(&[u8], u64)> = Vec::new();
    for ev in &batch.events {
        let tenant = encoder.tenant_of(batch, ev);
        match runs.last_mut() {
            Some((t, n)) if *t == tenant => *n += 1,
            _ => runs.push((tenant, 1)),
        }
    }
    tenants.add_runs(runs);
}

/// Frames straight onto the PUB socket. A PUB socket never blocks: at the high-water
/// mark it drops, which is why `send_hwm` is raised well above libzmq's default.
struct ZmqSink<'a>(&'a zmq::Socket);

impl Sink for ZmqSink<'_> {
    type Error = zmq::Error;

    fn frame(&mut self, bytes: &[u8], more: bool) -> Result<(), zmq::Error> {
        self.0.send(bytes, if more { zmq::SNDMORE } else { 0 })
    }

    fn last_frame_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), zmq::Error> {
        let mut msg = zmq::Message::with_size(len);
        fill(&mut msg);
        self.0.send(msg, 0)
    }
}
