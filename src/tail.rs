//! `fwdgate tail`: a subscriber that prints one tenant's lines as they arrive, the way
//! `docker logs -f` does for one container.

use std::io::Write;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TailError {
    #[error("ZeroMQ error on {endpoint}: {source}")]
    Zmq {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Output(#[from] std::io::Error),
}

/// What to print.
pub struct Filter<'a> {
    pub tenant: &'a str,
    pub service: Option<&'a str>,
    /// The gateway's `topic_suffix`, part of the tenant frame.
    pub topic_suffix: &'a str,
}

impl Filter<'_> {
    fn topic(&self) -> Vec<u8> {
        [self.tenant.as_bytes(), self.topic_suffix.as_bytes()].concat()
    }

    /// ZeroMQ filters by prefix; compare the frames exactly here, so tenant `t1` never
    /// shows `t10`'s lines.
    fn matches(&self, frames: &[Vec<u8>]) -> bool {
        frames.len() >= 3
            && frames[0] == self.topic()
            && self.service.is_none_or(|s| frames[1] == s.as_bytes())
    }
}

/// Subscribes at every endpoint and writes the last frame of each matching message,
/// followed by a newline, until an error.
pub fn tail(
    endpoints: &[String],
    filter: &Filter<'_>,
    out: &mut impl Write,
) -> Result<(), TailError> {
    let ctx = zmq::Context::new();
    let zmq_err = |endpoint: &str| {
        let endpoint = endpoint.to_owned();
        move |source| TailError::Zmq { endpoint, source }
    };
    let socket = ctx.socket(zmq::SUB).map_err(zmq_err("socket"))?;
    socket.set_rcvhwm(0).map_err(zmq_err("socket"))?;
    socket
        .set_subscribe(&filter.topic())
        .map_err(zmq_err("socket"))?;
    for endpoint in endpoints {
        socket.connect(endpoint).map_err(zmq_err(endpoint))?;
    }
    loop {
        let frames = socket.recv_multipart(0).map_err(zmq_err("socket"))?;
        if filter.matches(&frames) {
            let body = &frames[frames.len() - 1];
            out.write_all(body)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    }
}
