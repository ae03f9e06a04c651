//! Binding the configured TCP and unix listeners (and the UDP heartbeat sockets beside
//! the TCP ones), and their accept loops.

use super::connection::{serve, Origin, Shared};
use super::{admission, heartbeat, ServerError};
use crate::config::Config;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every bound socket, ready to accept.
pub struct Listeners {
    tcp: Vec<TcpListener>,
    unix: Vec<(UnixListener, PathBuf)>,
    udp: Vec<UdpSocket>,
    tls: Vec<TcpListener>,
    acceptor: Option<TlsAcceptor>,
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for addr in &config.input.listen {
            let listener = bind_tcp(addr).await.map_err(|source| ServerError::Listen {
                addr: addr.clone(),
                source,
            })?;
            if config.input.udp_heartbeat {
                // Same address and port number as the TCP listener, as Fluentd does.
                let local = listener
                    .local_addr()
                    .map_err(|source| ServerError::Listen {
                        addr: addr.clone(),
                        source,
                    })?;
                let socket =
                    UdpSocket::bind(local)
                        .await
                        .map_err(|source| ServerError::Listen {
                            addr: format!("udp {local}"),
                            source,
                        })?;
                udp.push(socket);
            }
            tcp.push(listener);
        }
        let mode = config.unix_mode()?;
        let mut unix = Vec::new();
        for path in &config.input.unix {
            unix.push((bind_unix(path, mode)?, path.clone()));
        }
        let mut tls = Vec::new();
        let mut acceptor = None;
        if !config.input.tls.listen.is_empty() {
            acceptor = Some(super::tls::acceptor(&config.input.tls)?);
            for addr in &config.input.tls.listen {
                tls.push(bind_tcp(addr).await.map_err(|source| ServerError::Listen {
                    addr: addr.clone(),
                    source,
                })?);
            }
        }
        Ok(Listeners {
            tcp,
            unix,
            udp,
            tls,
            acceptor,
        })
    }

    pub fn tls_addrs(&self) -> Vec<String> {
        self.tls
            .iter()
            .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
            .collect()
    }

    pub fn tcp_addrs(&self) -> Vec<String> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
            .collect()
    }

    pub fn unix_paths(&self) -> Vec<String> {
        self.unix
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect()
    }

    pub fn udp_addrs(&self) -> Vec<String> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.to_string()))
            .collect()
    }

    /// Starts one task per listener; each stops when `cancel` fires. Connection tasks
    /// go into `tracker` so shutdown can wait for them.
    pub fn spawn(
        self,
        tracker: &TaskTracker,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for listener in self.tcp {
            tasks.push(tokio::spawn(accept_loop(
                Tcp(listener),
                tracker.clone(),
                shared.clone(),
                cancel.clone(),
                serve,
            )));
        }
        for listener in self.tls {
            let Some(acceptor) = self.acceptor.clone() else {
                break;
            };
            tasks.push(tokio::spawn(accept_loop(
                Tcp(listener),
                tracker.clone(),
                shared.clone(),
                cancel.clone(),
                move |stream, origin: Origin, shared: Arc<Shared>, cancel| {
                    // The TLS handshake runs in the connection's own task, so a slow
                    // client does not hold up the others.
                    let acceptor = acceptor.clone();
                    async move {
                        // Kept alive (with the socket) until the connection's place in
                        // its client's order is given up: see `Origin`.
                        let accept = acceptor.accept(stream).into_fallible();
                        tokio::pin!(accept);
                        let reason =
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, &mut accept).await {
                                Ok(Ok(tls)) => return serve(tls, origin, shared, cancel).await,
                                Ok(Err((e, _))) => format!("TLS handshake failed: {e}"),
                                Err(_) => "TLS handshake timed out".to_owned(),
                            };
                        shared
                            .counters
                            .connections_rejected
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(peer = %origin.peer, reason = %reason, "closing connection");
                        drop(origin);
                    }
                },
            )));
        }
        for (listener, path) in self.unix {
            let peer: Arc<str> = format!("unix:{}", path.display()).into();
            let accepting = accept_loop(
                Unix { listener, peer },
                tracker.clone(),
                shared.clone(),
                cancel.clone(),
                serve,
            );
            tasks.push(tokio::spawn(async move {
                accepting.await;
                let _ = std::fs::remove_file(&path);
            }));
        }
        for socket in self.udp {
            tasks.push(tokio::spawn(heartbeat::answer(
                socket,
                shared.counters.clone(),
                cancel.clone(),
            )));
        }
        tasks
    }
}

/// A new client connection.
struct Accepted<S> {
    stream: S,
    /// Its name in logs.
    peer: Arc<str>,
    /// The client across its connections (for duplicate detection).
    identity: Arc<str>,
    /// `None` for unix sockets.
    ip: Option<IpAddr>,
}

/// A listener of client connections, as the accept loop needs it.
trait Accept: Send + 'static {
    type Stream: AsRawFd + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Accepted<Self::Stream>>> + Send;
}

struct Tcp(TcpListener);

impl Accept for Tcp {
    type Stream = TcpStream;

    async fn accept(&self) -> std::io::Result<Accepted<TcpStream>> {
        let (stream, addr) = self.0.accept().await?;
        // Acks are small and clients wait for them (Docker's lock-step mode): send them
        // without Nagle's delay. (Receive timestamps come from the listener.)
        let _ = stream.set_nodelay(true);
        Ok(Accepted {
            stream,
            peer: addr.to_string().into(),
            identity: addr.ip().to_string().into(),
            ip: Some(addr.ip()),
        })
    }
}

struct Unix {
    listener: UnixListener,
    /// Unix clients have no address: the socket path names them all.
    peer: Arc<str>,
}

impl Accept for Unix {
    type Stream = UnixStream;

    async fn accept(&self) -> std::io::Result<Accepted<UnixStream>> {
        let (stream, _) = self.listener.accept().await?;
        Ok(Accepted {
            stream,
            peer: self.peer.clone(),
            identity: self.peer.clone(),
            ip: None,
        })
    }
}

/// Accepts until `cancel` fires. Each connection that is admitted under the connection
/// limits runs as `start(stream, origin, shared, cancel)` in `tracker`, holding its
/// place until it ends. Its place in its client's order is taken here, as it is
/// accepted, not when its task first runs: a connection accepted earlier may carry an
/// earlier request, though its task runs later.
async fn accept_loop<L, F, Fut>(
    listener: L,
    tracker: TaskTracker,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    start: F,
) where
    L: Accept,
    F: Fn(L::Stream, Origin, Arc<Shared>, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        match accepted {
            Ok(a) => {
                let Some(place) = admit(&shared, a.ip, &a.peer) else {
                    continue;
                };
                let member = shared
                    .order
                    .as_ref()
                    .map(|order| order.join(&a.identity, a.stream.as_raw_fd()));
                let origin = Origin {
                    member,
                    peer: a.peer,
                    identity: a.identity,
                    place,
                };
                // The connection's future holds its place: wrapping it in another
                // future instead would store it twice (the task's largest cost).
                tracker.spawn(start(a.stream, origin, shared.clone(), cancel.clone()));
            }
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// A place under the connection limits for a new connection, or `None` (the refusal is
/// counted and logged: the first and then every thousandth, so a flood of refused
/// connections does not flood the log).
fn admit(shared: &Shared, ip: Option<IpAddr>, peer: &str) -> Option<admission::Place> {
    match shared.admission.admit(ip) {
        Ok(place) => Some(place),
        Err(reason) => {
            let refused = shared
                .counters
                .connections_refused
                .load(std::sync::atomic::Ordering::Relaxed);
            if refused % 1000 == 1 {
                tracing::warn!(peer = %peer, reason = %reason, refused, "refusing connection");
            } else {
                tracing::debug!(peer = %peer, reason = %reason, "refusing connection");
            }
            None
        }
    }
}

/// The listen backlog: Docker hosts start many containers at once, each opening a
/// connection; the usual 128 overflows and makes clients wait for SYN retransmits.
const BACKLOG: u32 = 4096;

/// Binds a TCP listener with a deep accept backlog (the kernel caps it at somaxconn).
async fn bind_tcp(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        // Connections accepted here inherit receive timestamps (the order of a client's
        // requests across its connections). Set on the listener, they also keep the
        // kernel stamping for as long as it listens: the kernel turns stamping on a
        // little after the first socket asks, and off once none does, and packets in
        // between come unstamped.
        if let Err(e) = super::socket::enable_timestamps(socket.as_raw_fd()) {
            tracing::warn!(address = %sa, error = %e, "no receive timestamps: a client's requests on several connections are ordered by when they are read");
        }
        match socket.bind(sa).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        )
    }))
}

/// Accept errors are mostly "too many open files": wait a little instead of spinning.
async fn accept_failed(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Binds a unix socket at `path`, replacing a stale socket file left by a previous run
/// but never a live one or a file that is not a socket.
fn bind_unix(path: &PathBuf, mode: u32) -> Result<UnixListener, ServerError> {
    let shown = path.display().to_string();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::Listen {
                addr: shown,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ),
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::UnixInUse(shown));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Listen {
        addr: shown.clone(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ServerError::UnixMode {
            path: shown,
            source,
        }
    })?;
    Ok(listener)
}
