//! I/O: listeners, the UDP heartbeat, connection tasks, and the gateway's life cycle
//! from start to graceful shutdown.

mod admission;
pub mod connection;
mod handoff;
mod handshake;
mod heartbeat;
mod http;
mod intake_memory;
mod listener;
mod live;
mod order;
mod readiness;
mod reload;
mod replay;
mod socket;
mod tls;

use crate::buffer::{self, BufferError};
use crate::config::Config;
use crate::dedup::Dedup;
use crate::expand::ExpandLimits;
use crate::forward::Limits;
use crate::metrics::{Counters, TenantCounts};
use crate::partial::JoinLimits;
use crate::publish::{PublishError, Publisher, TenantLimits};
use crate::route::Router;
use connection::Shared;
use listener::Listeners;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot set the mode of unix socket {path}: {source}")]
    UnixMode {
        path: String,
        source: std::io::Error,
    },
    #[error("unix socket {0} is in use by another process")]
    UnixInUse(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("invalid routing: {0}")]
    Route(#[from] crate::route::RouterError),
}

/// Runs a gateway until `shutdown` completes, then drains: [`bind`], then
/// [`Bound::serve`].
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::UnboundedReceiver<Config>,
) -> Result<Arc<Counters>, ServerError> {
    bind(config).await?.serve(shutdown, reloads).await
}

/// A gateway whose sockets are bound, whose buffer and publisher run, and which has
/// logged `fwdgate ready`: what [`Bound::serve`] serves. Tests bind to port 0 and learn
/// the addresses from it.
pub struct Bound {
    config: Config,
    counters: Arc<Counters>,
    listeners: Listeners,
    publisher: Publisher,
    status: Arc<http::Status>,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    replay: buffer::Health,
}

impl Bound {
    /// The TCP listeners' addresses (`host:port`, the port as bound).
    pub fn tcp_addrs(&self) -> Vec<String> {
        self.listeners.tcp_addrs()
    }

    /// The ZeroMQ endpoints bound, as libzmq reports them.
    pub fn zmq_bound(&self) -> &[String] {
        &self.publisher.bound
    }

    /// The metrics endpoint's address, if any.
    pub fn metrics_addr(&self) -> Option<String> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
    }

    /// The gateway's counters (the same that `/metrics` renders).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

/// Binds every listener and endpoint of `config`, opens the spool, starts the
/// publisher, and logs `fwdgate ready`.
pub async fn bind(config: Config) -> Result<Bound, ServerError> {
    let counters = Arc::new(Counters::default());
    let timeout = Duration::from_millis(config.shutdown.timeout_ms);
    let live = live::Live::new(&config, Router::new(&config.route)?);
    let expand_limits = ExpandLimits {
        max_depth: config.input.max_depth,
        max_decompressed: config.input.max_decompressed_size,
    };
    let listeners = Listeners::bind(&config).await?;
    let spool = (!config.spool.dir.is_empty()).then(|| {
        // A record holds at most a hand-off's requests: what one read may hold.
        let max_payload = config.input.max_frame_size.saturating_mul(2).max(1 << 21) + 65536;
        let settings = buffer::spool_settings(&config.spool, max_payload);
        (config.spool.clone(), settings)
    });
    let (intake, outlet) = buffer::start(
        buffer::Settings {
            queue_requests: config.output.queue_requests,
            queue_bytes: config.output.queue_bytes,
            when_full: config.output.when_full,
            spool,
        },
        counters.clone(),
        Arc::new(replay::Expander {
            router: live.router.clone(),
            limits: expand_limits,
        }),
        tokio::runtime::Handle::current(),
    )?;
    let tenants = Arc::new(TenantCounts::new(config.metrics.max_tenants));
    let rate_limited = Arc::new(TenantCounts::new(config.metrics.max_tenants));
    let join = config.input.join_partial.then(|| {
        let limits = JoinLimits {
            max_bytes: config.input.partial_max_bytes,
            timeout: Duration::from_millis(config.input.partial_timeout_ms),
        };
        (limits, live.router.clone())
    });
    let health = intake.health();
    let replay = health.clone();
    let publisher = Publisher::start(
        &config.output,
        &config.route,
        timeout,
        counters.clone(),
        tenants.clone(),
        TenantLimits {
            events_per_second: config.limits.tenant_events_per_second,
            burst: config.limits.tenant_burst,
            rate_limited: rate_limited.clone(),
            source_address_key: config.input.source_address_key.clone(),
            source_hostname_key: config.input.source_hostname_key.clone(),
        },
        outlet,
        join,
    )?;
    let status = Arc::new(http::Status {
        counters: counters.clone(),
        tenants,
        rate_limited,
        listening: AtomicBool::new(false),
        // With a spool, a collector that is away is what the spool is for: the gateway
        // stays ready while the spool has room.
        needs_peer: config.output.zmq_bind.is_empty() && config.spool.dir.is_empty(),
        buffer: health,
    });
    let metrics_listener = match config.metrics.listen.as_str() {
        "" => None,
        addr => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: addr.to_owned(),
                    source,
                })?,
        ),
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        live,
        limits: Limits {
            max_size: config.input.max_frame_size,
            max_depth: config.input.max_depth,
        },
        expand_limits,
        intake,
        memory: intake_memory::IntakeMemory::new(
            usize::try_from(config.limits.intake_memory_bytes).unwrap_or(usize::MAX),
            counters.clone(),
        ),
        counters: counters.clone(),
        dedup: Dedup::new(config.input.dedup_window, config.input.dedup_clients),
        join_partial: config.input.join_partial,
        order: config
            .input
            .keep_client_order
            .then(|| Arc::new(order::Order::new(counters.clone()))),
        connections: Default::default(),
        admission: Arc::new(admission::Admission::new(&config, counters.clone())),
        resolve_hostname: !config.input.source_hostname_key.is_empty(),
    });

    tracing::info!(
        tcp = %listeners.tcp_addrs().join(","),
        unix = %listeners.unix_paths().join(","),
        udp = %listeners.udp_addrs().join(","),
        tls = %listeners.tls_addrs().join(","),
        zmq_bind = %publisher.bound.join(","),
        zmq_connect = %publisher.connected.join(","),
        metrics = %metrics_addr,
        format = config.output.format.name(),
        "fwdgate ready"
    );

    Ok(Bound {
        config,
        counters,
        listeners,
        publisher,
        status,
        metrics_listener,
        shared,
        replay,
    })
}

impl Bound {
    /// Serves until `shutdown` completes, then drains: stops accepting, lets
    /// connections finish the requests they have read (within `shutdown.timeout_ms`),
    /// and waits for the publisher to send what it holds (within twice that: it may
    /// wait that long for a subscriber, then as long again for the socket to flush).
    /// Each configuration from `reloads` is applied as SIGHUP's (see `reload`).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()>,
        reloads: tokio::sync::mpsc::UnboundedReceiver<Config>,
    ) -> Result<Arc<Counters>, ServerError> {
        let Bound {
            config,
            counters,
            listeners,
            publisher,
            status,
            metrics_listener,
            shared,
            replay,
        } = self;
        let timeout = Duration::from_millis(config.shutdown.timeout_ms);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let accepting = listeners.spawn(&tracker, shared.clone(), cancel.clone());
        status.listening.store(true, Ordering::Relaxed);
        let http_task =
            metrics_listener.map(|l| tokio::spawn(http::serve(l, status.clone(), cancel.clone())));
        let reload_task = tokio::spawn(reload::serve(
            reloads,
            config,
            Arc::downgrade(&shared),
            publisher.reloads(),
        ));
        shutdown.await;
        reload_task.abort();
        status.listening.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: no new connections, finishing requests already read");
        cancel.cancel();
        tracker.close();
        for task in accepting {
            let _ = task.await;
        }
        // Every connection task holds the buffer's intake through `shared`; once they are
        // gone the publisher sees intake close, sends what is left, and stops.
        drop(shared);
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            tracing::warn!("connections still busy at the shutdown deadline; closing them");
        }
        // The publisher may use the timeout twice: publishing what it holds (or waiting for a
        // subscriber to take it), then lingering while the socket flushes to the
        // subscribers. What it is still reading back from the spool after the first stays
        // there for the next start.
        let joined = tokio::task::spawn_blocking(move || publisher.join());
        tokio::pin!(joined);
        let finished = tokio::select! {
            _ = &mut joined => true,
            _ = tokio::time::sleep(timeout) => {
                replay.stop_reading();
                tokio::time::timeout(timeout, &mut joined).await.is_ok()
            }
        };
        if !finished {
            tracing::warn!("publisher still sending at the shutdown deadline");
        }
        if let Some(task) = http_task {
            let _ = task.await;
        }
        tracing::info!(counters = %counters.summary(), "fwdgate stopped");
        Ok(counters)
    }
}
