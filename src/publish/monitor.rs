//! Watches the PUB socket's connections through a libzmq socket monitor, so that the
//! gateway knows (rather than guesses) how many subscribers or collectors are there.

use super::PublishError;
use crate::metrics::Counters;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const ADDRESS: &str = "inproc://fwdgate-publisher-monitor";

/// Starts the monitor thread. It ends when the PUB socket closes (libzmq then sends
/// MONITOR_STOPPED).
pub fn start(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    counters: Arc<Counters>,
) -> Result<(), PublishError> {
    let events = zmq::SocketEvent::CONNECTED as i32
        | zmq::SocketEvent::ACCEPTED as i32
        | zmq::SocketEvent::DISCONNECTED as i32
        | zmq::SocketEvent::MONITOR_STOPPED as i32;
    socket
        .monitor(ADDRESS, events)
        .map_err(PublishError::Socket)?;
    let pair = ctx.socket(zmq::PAIR).map_err(PublishError::Socket)?;
    pair.connect(ADDRESS).map_err(PublishError::Socket)?;
    std::thread::Builder::new()
        .name("fwdgate-monitor".into())
        .spawn(move || watch(pair, counters))
        .map_err(PublishError::Thread)?;
    Ok(())
}

fn watch(pair: zmq::Socket, counters: Arc<Counters>) {
    loop {
        // Each event is two frames: 6 bytes (u16 event id, u32 value), then the endpoint.
        let Ok(frames) = pair.recv_multipart(0) else {
            return;
        };
        let Some(head) = frames.first().filter(|f| f.len() >= 2) else {
            continue;
        };
        let event = u16::from_le_bytes([head[0], head[1]]);
        let endpoint = frames
            .get(1)
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .unwrap_or_default();
        match zmq::SocketEvent::from_raw(event) {
            zmq::SocketEvent::CONNECTED | zmq::SocketEvent::ACCEPTED => {
                counters.zmq_peers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(endpoint = %endpoint, "ZeroMQ peer connected");
            }
            zmq::SocketEvent::DISCONNECTED => {
                Counters::decrease(&counters.zmq_peers, 1);
                tracing::info!(endpoint = %endpoint, "ZeroMQ peer disconnected");
            }
            zmq::SocketEvent::MONITOR_STOPPED => return,
            _ => {}
        }
    }
}
