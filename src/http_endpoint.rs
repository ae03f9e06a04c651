//! What the gateway's operations endpoint and the proxy's have in common: the accept
//! loop that serves each HTTP/1 connection on its own task until cancelled, and the
//! plain-text responses they answer with.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A response to one request.
pub type Reply = Response<Full<Bytes>>;

/// Serves every connection of `listener` with `respond` until `cancel` fires. `what`
/// names the endpoint in the log line of a connection that fails.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    cancel: CancellationToken,
    what: &'static str,
    respond: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = respond(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "{what} connection failed");
            }
        });
    }
}

/// A plain-text response.
pub fn text(code: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Metrics in the Prometheus text exposition format (version 0.0.4).
pub fn prometheus(body: String) -> Reply {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
