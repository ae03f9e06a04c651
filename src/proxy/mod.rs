//! `fwdgate proxy`: libzmq's XSUB/XPUB proxy as a fan-in tier between many gateways
//! and their subscribers, behind one stable address.
//!
//! ```text
//!  gateway PUB ──connect──▶ XSUB │ proxy │ XPUB ◀──connect── SUB collectors
//!  gateway PUB ──connect──▶      │       │      ◀──connect── SUB
//!                publications ──▶        ──▶ publications
//!                subscriptions ◀──       ◀── subscriptions
//! ```
//!
//! `device` owns the sockets and runs libzmq's steerable proxy; `observe` counts
//! connections and subscriptions beside it; `metrics` decodes libzmq's counters and
//! renders everything for `http`. This file ties them together: start, report ready,
//! stop on the signal.

mod device;
mod http;
pub mod metrics;
mod observe;

use device::Device;
pub use device::{SteerError, LINGER};
use metrics::{Observed, Statistics};
use std::future::Future;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// One option's value and where it came from (`flag --xsub-bind`), for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub value: String,
    pub origin: String,
}

/// What `fwdgate proxy` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Endpoints the XSUB socket binds (publishers connect there).
    pub xsub_bind: Vec<Given>,
    /// Endpoints the XPUB socket binds (subscribers connect there).
    pub xpub_bind: Vec<Given>,
    /// The XPUB socket's high-water mark, in messages per subscriber.
    pub send_hwm: i32,
    /// `host:port` of the HTTP endpoint, if any.
    pub metrics_listen: Option<Given>,
}

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("no {0} endpoint to bind")]
    NoEndpoint(&'static str),
    #[error("{origin}: {value:?} is not a host:port address")]
    Address { origin: String, value: String },
    #[error("{origin}: cannot listen on {addr}: {source}")]
    Listen {
        origin: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("{origin}: cannot bind ZeroMQ endpoint {endpoint:?}: {source}")]
    Bind {
        origin: String,
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot set up the proxy's ZeroMQ sockets: {0}")]
    Socket(zmq::Error),
    #[error("cannot start the proxy's threads: {0}")]
    Thread(std::io::Error),
    #[error("the proxy's capture socket did not take the observer's subscriptions within {0:?}")]
    CaptureSync(Duration),
    #[error("the ZeroMQ proxy stopped: {0}")]
    Failed(zmq::Error),
    #[error("the ZeroMQ proxy stopped without being asked to")]
    Ended,
}

/// How long the stop may take in all: the proxy returns at once on TERMINATE, then
/// closing waits up to [`LINGER`] for queued messages; the rest is margin for a busy
/// machine.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// A proxy whose endpoints are bound and whose threads run.
pub struct Proxy {
    device: Device,
    metrics: Option<(std::net::TcpListener, String)>,
    observed: Arc<Observed>,
}

impl Proxy {
    /// Checks the settings, binds every endpoint and starts forwarding. Blocking, and
    /// quick: it waits only for libzmq's in-process hand-overs.
    pub fn start(settings: &Settings) -> Result<Proxy, ProxyError> {
        if settings.xsub_bind.is_empty() {
            return Err(ProxyError::NoEndpoint("XSUB"));
        }
        if settings.xpub_bind.is_empty() {
            return Err(ProxyError::NoEndpoint("XPUB"));
        }
        // The HTTP address is checked and bound first: a bad value is then reported
        // before any ZeroMQ endpoint has been bound, and bound in vain.
        let metrics = settings
            .metrics_listen
            .as_ref()
            .map(listen_metrics)
            .transpose()?;
        let observed = Arc::new(Observed::default());
        let device = Device::start(
            &settings.xsub_bind,
            &settings.xpub_bind,
            settings.send_hwm,
            observed.clone(),
        )?;
        Ok(Proxy {
            device,
            metrics,
            observed,
        })
    }

    /// The XSUB endpoints as bound (with the port libzmq chose for a `*` or `0`).
    pub fn xsub_endpoints(&self) -> &[String] {
        &self.device.xsub_bound
    }

    /// The XPUB endpoints as bound.
    pub fn xpub_endpoints(&self) -> &[String] {
        &self.device.xpub_bound
    }

    /// Serves `/metrics` and the health endpoints, logs `fwdgate proxy ready`, and
    /// forwards until `shutdown` completes; then stops the proxy and closes its sockets
    /// within a bounded time. An error if the proxy stopped by itself.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        let Proxy {
            device,
            metrics,
            observed,
        } = self;
        let Device {
            xsub_bound,
            xpub_bound,
            steering,
            running,
            mut ended,
            threads,
        } = device;
        let cancel = CancellationToken::new();
        let mut metrics_addr = String::new();
        let mut http_task = None;
        if let Some((listener, origin)) = metrics {
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| {
                ProxyError::Listen {
                    origin,
                    addr: addr.clone(),
                    source,
                }
            })?;
            let state = Arc::new(http::State {
                steering: steering.clone(),
                observed: observed.clone(),
                running: running.clone(),
            });
            http_task = Some(tokio::spawn(http::serve(listener, state, cancel.clone())));
            metrics_addr = addr;
        }
        tracing::info!(
            xsub = %xsub_bound.join(","),
            xpub = %xpub_bound.join(","),
            metrics = %metrics_addr,
            "fwdgate proxy ready"
        );

        let outcome = tokio::select! {
            _ = shutdown => None,
            r = &mut ended => Some(r),
        };
        cancel.cancel();
        // Everything from here on shares one deadline: a stop that hangs is worse than
        // one that leaves a thread behind at exit.
        let deadline = tokio::time::Instant::now() + STOP_BOUND;
        let (result, last) = match outcome {
            None => {
                tracing::info!("stopping the proxy");
                // The counters for the last log line, read before the proxy goes.
                let last = tokio::time::timeout_at(deadline, steering.statistics())
                    .await
                    .ok()
                    .and_then(Result::ok);
                steering.terminate();
                match tokio::time::timeout_at(deadline, &mut ended).await {
                    Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the proxy ended with an error"),
                    Ok(_) => {}
                    Err(_) => tracing::warn!("the proxy did not stop within {STOP_BOUND:?}"),
                }
                (Ok(()), last)
            }
            Some(Ok(Err(e))) => (Err(ProxyError::Failed(e)), None),
            Some(Ok(Ok(()))) | Some(Err(_)) => (Err(ProxyError::Ended), None),
        };
        // Ends the steering thread also when the proxy stopped by itself (an HTTP
        // connection still open may hold a handle, which would otherwise keep it).
        steering.terminate();
        if let Some(task) = http_task {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        // Joining waits for the sockets to close, LINGER at most.
        let joined = tokio::task::spawn_blocking(move || threads.join());
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            tracing::warn!("the proxy's sockets did not close within {STOP_BOUND:?}");
        }
        tracing::info!(counters = %summary(last.as_ref(), &observed), "fwdgate proxy stopped");
        result
    }
}

/// Checks and binds the HTTP address (a std listener: the runtime takes it in `run`).
fn listen_metrics(given: &Given) -> Result<(std::net::TcpListener, String), ProxyError> {
    let addrs: Vec<_> = given
        .value
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    if addrs.is_empty() {
        return Err(ProxyError::Address {
            origin: given.origin.clone(),
            value: given.value.clone(),
        });
    }
    let listen_error = |source| ProxyError::Listen {
        origin: given.origin.clone(),
        addr: given.value.clone(),
        source,
    };
    let listener = std::net::TcpListener::bind(&addrs[..]).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    Ok((listener, given.origin.clone()))
}

/// One line's worth of fields for the last log line.
fn summary(stats: Option<&Statistics>, observed: &Observed) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = match stats {
        Some(s) => format!(
            "messages_in={} bytes_in={} messages_out={} bytes_out={}",
            s.frontend.messages_in,
            s.frontend.bytes_in,
            s.backend.messages_out,
            s.backend.bytes_out
        ),
        None => "messages_in=? bytes_in=? messages_out=? bytes_out=?".to_owned(),
    };
    format!(
        "{counters} subscribes={} unsubscribes={}",
        observed.subscribes.load(Relaxed),
        observed.unsubscribes.load(Relaxed)
    )
}
