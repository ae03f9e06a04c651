//! ZeroMQ egress: one thread owns the PUB socket (ZeroMQ sockets are not thread-safe),
//! takes requests' routed events from the buffer and sends each event (or, in the
//! `batch` format, each group of events) in the configured format.

mod endpoints;
pub mod format;
mod forward_body;
mod groups;
mod hold;
mod monitor;
pub mod rainbond;
pub mod ratelimit;
mod subscriptions;
mod worker;

use crate::buffer::Outlet;
use crate::config::{Format, OutputConfig, RouteConfig, SlowSubscriber};
use crate::metrics::{Counters, TenantCounts};
use crate::partial::{JoinLimits, Joiner};
use crate::route::Router;
use arc_swap::ArcSwap;
use format::Encoder;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use worker::Worker;

/// The per-tenant rate limit and where its drops are counted.
pub struct TenantLimits {
    pub events_per_second: u64,
    pub burst: u64,
    pub rate_limited: Arc<TenantCounts>,
    /// `input.source_address_key` / `input.source_hostname_key`.
    pub source_address_key: String,
    pub source_hostname_key: String,
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
    reloads: std::sync::mpsc::Sender<Reload>,
}

/// What a SIGHUP may change in the publisher: the routes' defaults (the tenant and
/// service of records without one), the per-tenant rate limit, and the endpoints.
pub struct Reload {
    pub route: RouteConfig,
    pub events_per_second: u64,
    pub burst: u64,
    pub zmq_bind: Vec<String>,
    pub zmq_connect: Vec<String>,
    pub resolve_interval: Duration,
}

impl Publisher {
    /// Creates the socket, binds and connects every endpoint, and starts the thread,
    /// which publishes what it takes from `outlet` and ends once the buffer's intake is
    /// closed and it has taken everything. `linger` bounds how long closing waits for
    /// unsent messages. With `join`, Docker's split lines are joined first.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        output: &OutputConfig,
        route: &RouteConfig,
        linger: Duration,
        counters: Arc<Counters>,
        tenants: Arc<TenantCounts>,
        limits: TenantLimits,
        outlet: Outlet,
        join: Option<(JoinLimits, Arc<ArcSwap<Router>>)>,
    ) -> Result<Publisher, PublishError> {
        let ctx = zmq::Context::new();
        // XPUB rather than PUB: the same publications, plus the subscription messages
        // that tell whether anybody is subscribed.
        let mut socket = ctx.socket(zmq::XPUB).map_err(PublishError::Socket)?;
        if output.slow_subscriber == SlowSubscriber::Block {
            set_xpub_nodrop(&mut socket)?;
        }
        socket
            .set_sndhwm(send_hwm(output))
            .map_err(PublishError::Socket)?;
        // Connect endpoints are re-dialled by libzmq in the background, backing off
        // from 100 ms to 5 s while the peer stays away.
        socket
            .set_reconnect_ivl(100)
            .map_err(PublishError::Socket)?;
        socket
            .set_reconnect_ivl_max(5000)
            .map_err(PublishError::Socket)?;
        socket
            .set_linger(i32::try_from(linger.as_millis()).unwrap_or(i32::MAX))
            .map_err(PublishError::Socket)?;
        // Watch connects and disconnects, so readiness and metrics know whether any
        // subscriber or collector is there.
        monitor::start(&ctx, &socket, counters.clone())?;
        let mut bound = Vec::new();
        let mut binds = Vec::new();
        for endpoint in &output.zmq_bind {
            socket.bind(endpoint).map_err(|source| PublishError::Bind {
                endpoint: endpoint.clone(),
                source,
            })?;
            let actual = bound_endpoint(&socket, endpoint);
            binds.push((endpoint.clone(), actual.clone()));
            bound.push(actual);
        }
        // Host names are resolved here, to every address, again and again; the rest
        // (and every endpoint with `resolve_interval_ms = 0`) is left to libzmq.
        let interval = Duration::from_millis(output.resolve_interval_ms);
        let mut named = Vec::new();
        let mut fixed = Vec::new();
        for endpoint in &output.zmq_connect {
            match endpoints::Target::parse(endpoint) {
                target @ endpoints::Target::Named { .. } if !interval.is_zero() => {
                    named.push(target)
                }
                _ => {
                    socket
                        .connect(endpoint)
                        .map_err(|source| PublishError::Connect {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    fixed.push(endpoint.clone());
                }
            }
        }
        let dialer = endpoints::Dialer::start(&fixed, named, interval, counters.clone());
        let (reloads, reload_rx) = std::sync::mpsc::channel();
        let worker = Worker {
            ctx,
            socket,
            binds,
            reloads: reload_rx,
            dialer,
            outlet,
            joiner: join.map(|(limits, router)| (Joiner::new(limits), router)),
            encoder: Encoder::new(output, route)
                .with_source_keys(&limits.source_address_key, &limits.source_hostname_key),
            counters,
            tenants,
            hold_without_subscribers: output.hold_without_subscribers,
            slow_subscriber: output.slow_subscriber,
            linger,
            holding: false,
            limiter: ratelimit::TenantLimiter::new(limits.events_per_second, limits.burst),
            rate_limited: limits.rate_limited,
            subs: subscriptions::Subscriptions::new(
                output.topic_suffix.as_bytes(),
                output.format != Format::Rainbond,
            ),
            tenant_hold: (output.tenant_hold_bytes > 0
                && output.hold_without_subscribers
                && output.format != Format::Null)
                .then(|| {
                    hold::TenantHold::new(
                        output.tenant_hold_bytes,
                        Duration::from_millis(output.tenant_hold_ms),
                    )
                }),
            hold_tried: std::time::Instant::now(),
            tenant_buf: Vec::new(),
            hold_full_warned: None,
            hold_shed_warned: None,
        };
        let thread = std::thread::Builder::new()
            .name("fwdgate-publisher".into())
            .spawn(move || worker.run())
            .map_err(PublishError::Thread)?;
        Ok(Publisher {
            thread,
            bound,
            connected: output.zmq_connect.clone(),
            reloads,
        })
    }

    /// Where reloaded settings go; the publisher thread applies them between
    /// publications.
    pub fn reloads(&self) -> std::sync::mpsc::Sender<Reload> {
        self.reloads.clone()
    }

    /// Waits (blocking) until the thread has sent everything and closed the socket.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("publisher thread panicked");
        }
    }
}

/// The endpoint `socket` bound last, as libzmq reports it (the port it chose for `*`
/// or `0`); `asked`, the endpoint as given, if libzmq cannot say.
pub fn bound_endpoint(socket: &zmq::Socket, asked: &str) -> String {
    socket
        .get_last_endpoint()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| asked.to_owned())
}

/// Sets ZMQ_XPUB_NODROP, which the `zmq` crate does not wrap: a subscriber at its
/// high-water mark then makes sends fail with EAGAIN instead of missing messages.
fn set_xpub_nodrop(socket: &mut zmq::Socket) -> Result<(), PublishError> {
    let on: std::os::raw::c_int = 1;
    // SAFETY: the socket pointer is valid for the lifetime of `socket`, and the option
    // value is a C int read by libzmq during the call only.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_NODROP as std::os::raw::c_int,
            (&on as *const std::os::raw::c_int).cast(),
            std::mem::size_of_val(&on),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno reads libzmq's thread-local error number, set by the failed
        // call just above on this thread; it takes no pointers.
        let errno = unsafe { zmq_sys::zmq_errno() };
        Err(PublishError::Socket(zmq::Error::from_raw(errno)))
    }
}

/// The socket's high-water mark: `send_hwm` messages, fewer in the batch format, whose
/// messages hold up to [`format::BATCH_MAX_BODY`] bytes each, so that what waits for one
/// subscriber stays within `batch_hwm_bytes`.
fn send_hwm(output: &OutputConfig) -> i32 {
    if output.format != Format::Batch {
        return output.send_hwm;
    }
    let by_bytes = (output.batch_hwm_bytes / format::BATCH_MAX_BODY).max(1);
    let by_bytes = i32::try_from(by_bytes).unwrap_or(i32::MAX);
    match output.send_hwm {
        0 => by_bytes,
        messages => messages.min(by_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_messages_are_capped_by_bytes() {
        let mut output = OutputConfig::default();
        assert_eq!(send_hwm(&output), 100_000, "seed: send_hwm as set");
        output.format = Format::Batch;
        assert_eq!(send_hwm(&output), 64, "64 MiB of 1 MiB messages");
        output.send_hwm = 10;
        assert_eq!(send_hwm(&output), 10, "send_hwm below the byte bound wins");
        output.send_hwm = 0;
        assert_eq!(
            send_hwm(&output),
            64,
            "no message limit: the byte bound still holds"
        );
        output.batch_hwm_bytes = 1000;
        assert_eq!(send_hwm(&output), 1, "at least one message");
    }
}
