//! UDP heartbeats: Fluentd's out_forward (heartbeat_type udp) sends a datagram to the
//! server's port and expects a single 0x00 byte back.

use crate::metrics::Counters;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub async fn answer(socket: UdpSocket, counters: Arc<Counters>, cancel: CancellationToken) {
    let mut buf = [0u8; 64];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = cancel.cancelled() => return,
        };
        match received {
            Ok((_, from)) => {
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = socket.send_to(&[0x00], from).await {
                    tracing::debug!(peer = %from, error = %e, "heartbeat reply failed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat receive failed"),
        }
    }
}
