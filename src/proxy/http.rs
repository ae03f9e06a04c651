//! The proxy's operations endpoint: `/metrics` (Prometheus text, libzmq's counters
//! asked for at each scrape), `/healthz` and `/readyz` (200 while libzmq's proxy runs:
//! it is ready as soon as its endpoints are bound, needing no peer).

use super::device::Steering;
use super::metrics::{render, Observed};
use crate::http_endpoint::{self, prometheus, text, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the endpoint reports on.
pub struct State {
    pub steering: Steering,
    pub observed: Arc<Observed>,
    pub running: Arc<AtomicBool>,
}

/// Serves the endpoint until `cancel` fires.
pub async fn serve(listener: TcpListener, state: Arc<State>, cancel: CancellationToken) {
    http_endpoint::serve(listener, cancel, "proxy metrics", move |req| {
        let state = state.clone();
        async move { respond(&req, &state).await }
    })
    .await;
}

async fn respond(req: &Request<Incoming>, state: &State) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let running = state.running.load(Ordering::Relaxed);
    match req.uri().path() {
        "/metrics" => match state.steering.statistics().await {
            Ok(stats) => prometheus(render(&stats, &state.observed)),
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("statistics unavailable: {e}\n"),
            ),
        },
        "/healthz" if running => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if running => text(StatusCode::OK, "ready\n".into()),
        "/healthz" | "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy has stopped\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
