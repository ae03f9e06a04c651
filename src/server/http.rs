//! The operations endpoint: `/metrics` (Prometheus text), `/healthz` (the process is up)
//! and `/readyz` (listening, and in connect mode a downstream peer is connected).

use crate::metrics::{render, Counters, TenantCounts};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
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
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(respond(&req, &status)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "metrics connection failed");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, status: &Status) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(
                StatusCode::OK,
                render(&status.counters, &status.tenants, &status.rate_limited),
            );
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
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

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
