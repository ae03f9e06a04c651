//! The operations endpoint: `/metrics` (Prometheus text), `/healthz` (the process is up)
//! and `/readyz` (listening, and in connect mode a downstream peer is connected).

use crate::http_endpoint::{self, prometheus, text, Reply};
use crate::metrics::{render, Counters, TenantCounts};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the endpoint reports on.
pub struct Status {
    pub counters: Arc<Counters>,
    pub tenants: Arc<TenantCounts>,
    pub rate_limited: Arc<TenantCounts>,
    /// True while the listeners accept connections.
    pub listening: AtomicBool,
    /// Readiness needs a connected ZeroMQ peer (the gateway only connects, never binds,
    /// and has no spool to hold what waits for one).
    pub needs_peer: bool,
    /// The buffer: not ready while the spool is full or cannot be written.
    pub buffer: crate::buffer::Health,
}

impl Status {
    fn ready(&self) -> Result<(), &'static str> {
        if !self.listening.load(Ordering::Relaxed) {
            return Err("not listening");
        }
        if self.needs_peer && self.counters.zmq_peers.load(Ordering::Relaxed) == 0 {
            return Err("no ZeroMQ peer connected");
        }
        if let Some(problem) = self.buffer.problem() {
            return Err(problem);
        }
        Ok(())
    }
}

/// Serves the endpoint until `cancel` fires.
pub async fn serve(listener: TcpListener, status: Arc<Status>, cancel: CancellationToken) {
    http_endpoint::serve(listener, cancel, "metrics", move |req| {
        let status = status.clone();
        async move { respond(&req, &status) }
    })
    .await;
}

fn respond(req: &Request<Incoming>, status: &Status) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => prometheus(render(
            &status.counters,
            &status.tenants,
            &status.rate_limited,
        )),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match status.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
