//! The proxy's operations endpoint: `/metrics` (Prometheus text, libzmq's counters
//! asked for at each scrape), `/healthz` and `/readyz` (200 while libzmq's proxy runs:
//! it is ready as soon as its endpoints are bound, needing no peer).

use super::device::Steering;
use super::metrics::{render, Observed};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
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
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&req, &state).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "proxy metrics connection failed");
            }
        });
    }
}

async fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let running = state.running.load(Ordering::Relaxed);
    match req.uri().path() {
        "/metrics" => match state.steering.statistics().await {
            Ok(stats) => {
                let mut r = text(StatusCode::OK, render(&stats, &state.observed));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
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

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
