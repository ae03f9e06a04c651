//! `fwdgate tail`: a subscriber that prints one tenant's lines as they arrive, the way
//! `docker logs -f` does for one container.
//!
//! It prints the last frame of each `seed` or `json` message as it is. A `batch`-format
//! message, whose last frame is a Forward-mode message, is told apart by decoding it
//! (no seed line or JSON object is valid msgpack of that shape), whatever the gateway's
//! configured format: tail then prints one line per record, as the `seed` format would
//! have published it, `<container id>: <line>`, found with the route keys it is given.

use crate::config::RouteConfig;
use crate::forward::request::ForwardEvents;
use crate::forward::{decode_request, Entries, Event, Limits, Scanner};
use crate::route::seed_line;
use crate::route::Router;
use std::io::Write;
use std::ops::Range;
use std::os::fd::AsRawFd;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TailError {
    #[error("ZeroMQ error on {endpoint}")]
    Zmq {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot write to stdout")]
    Output(#[from] std::io::Error),
    #[error("invalid route configuration: {0}")]
    Route(#[from] crate::route::RouterError),
}

/// Why [`tail`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The stop descriptor became readable (a signal arrived).
    OnRequest,
    /// Whoever reads the output went away (`fwdgate tail | head`): the Unix way is to
    /// end quietly, as a process killed by SIGPIPE would.
    OutputClosed,
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

/// Turns the last frame of a message into printed lines.
pub struct Printer {
    router: Router,
    /// Reused for lines rendered as JSON.
    scratch: Vec<u8>,
}

impl Printer {
    /// A printer that finds the container id and line of `batch` records with `route`.
    pub fn new(route: &RouteConfig) -> Result<Printer, TailError> {
        Ok(Printer {
            router: Router::new(route)?,
            scratch: Vec::new(),
        })
    }

    /// Writes one line per record of a `batch` body, or else the body itself, each
    /// followed by a newline.
    pub fn write_body(&mut self, body: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        let Some((tag, events)) = forward_events(body) else {
            out.write_all(body)?;
            return out.write_all(b"\n");
        };
        let tag = self.router.route_tag(body, tag);
        for event in events {
            let routed = self.router.route(body, &tag, event);
            let (id, line) = seed_line(body, &routed, &mut self.scratch);
            out.write_all(id)?;
            out.write_all(b": ")?;
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Nesting accepted in a `batch` body, as the gateway's default `input.max_depth`.
const MAX_DEPTH: usize = 128;

/// The tag and events of a `batch` body: a whole Forward-mode message whose entries
/// are all valid. `None` for anything else (a `seed` line, a `json` object).
fn forward_events(body: &[u8]) -> Option<(Range<usize>, Vec<Event>)> {
    let mut scanner = Scanner::new(Limits {
        max_size: body.len(),
        max_depth: MAX_DEPTH,
    });
    if !matches!(scanner.scan(body), Ok(Some(n)) if n == body.len()) {
        return None;
    }
    let request = decode_request(body).ok()?;
    let Entries::Forward { start, count } = request.entries else {
        return None;
    };
    let events = ForwardEvents::new(body, start, count).collect::<Result<Vec<_>, _>>();
    Some((request.tag, events.ok()?))
}

/// Subscribes at every endpoint and prints each matching message (see [`Printer`]),
/// until `stop` becomes readable (the binary writes to it from its SIGTERM and SIGINT
/// handlers), the output is closed, or an error.
pub fn tail(
    endpoints: &[String],
    filter: &Filter<'_>,
    route: &RouteConfig,
    stop: &impl AsRawFd,
    out: &mut impl Write,
) -> Result<Stopped, TailError> {
    let mut printer = Printer::new(route)?;
    let ctx = zmq::Context::new();
    let zmq_err = |endpoint: &str| {
        let endpoint = endpoint.to_owned();
        move |source| TailError::Zmq { endpoint, source }
    };
    let socket = ctx.socket(zmq::SUB).map_err(zmq_err("socket"))?;
    socket.set_rcvhwm(0).map_err(zmq_err("socket"))?;
    // Nothing waits for unsent subscriptions when tail ends.
    socket.set_linger(0).map_err(zmq_err("socket"))?;
    socket
        .set_subscribe(&filter.topic())
        .map_err(zmq_err("socket"))?;
    for endpoint in endpoints {
        socket.connect(endpoint).map_err(zmq_err(endpoint))?;
    }
    loop {
        // One wait for both, so a signal ends tail at once rather than at the next line.
        let mut items = [
            socket.as_poll_item(zmq::POLLIN),
            zmq::PollItem::from_fd(stop.as_raw_fd(), zmq::POLLIN),
        ];
        match zmq::poll(&mut items, -1) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(zmq_err("socket")(e)),
        }
        if items[1].is_readable() {
            return Ok(Stopped::OnRequest);
        }
        if !items[0].is_readable() {
            continue;
        }
        let frames = match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => frames,
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => continue,
            Err(e) => return Err(zmq_err("socket")(e)),
        };
        if filter.matches(&frames) {
            let written = printer
                .write_body(&frames[frames.len() - 1], out)
                .and_then(|()| out.flush());
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(Stopped::OutputClosed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn printed(body: &[u8]) -> Vec<u8> {
        let mut printer = Printer::new(&RouteConfig::default()).unwrap();
        let mut out = Vec::new();
        printer.write_body(body, &mut out).unwrap();
        out
    }

    /// What tail prints for a body it does not decode: the body and a newline.
    fn as_is(body: &[u8]) -> Vec<u8> {
        [body, b"\n"].concat()
    }

    fn forward_message(tag: &str, records: Vec<Value>) -> Vec<u8> {
        let time = Value::Ext(0, vec![0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 7]);
        let entries = records
            .into_iter()
            .map(|r| Value::Array(vec![time.clone(), r]))
            .collect();
        let mut out = Vec::new();
        let message = Value::Array(vec![tag.into(), Value::Array(entries)]);
        rmpv::encode::write_value(&mut out, &message).unwrap();
        out
    }

    #[test]
    fn batch_bodies_print_one_seed_line_per_record() {
        let body = forward_message(
            "app",
            vec![
                Value::Map(vec![
                    ("container_id".into(), "3f2a9c81b0d4eeee".into()),
                    ("log".into(), "hello".into()),
                ]),
                Value::Map(vec![("message".into(), "second".into())]),
                Value::Map(vec![("n".into(), 1.into())]),
            ],
        );
        assert_eq!(
            printed(&body),
            b"3f2a9c81b0d4: hello\napp: second\napp: {\"n\":1}\n"
        );
    }

    #[test]
    fn other_bodies_print_as_they_are() {
        assert_eq!(printed(b"3f2a9c81b0d4: hello"), b"3f2a9c81b0d4: hello\n");
        assert_eq!(printed(b"{\"tag\":\"t\"}"), b"{\"tag\":\"t\"}\n");
        // Message mode, trailing bytes, a cut-off body: not batch bodies.
        let mut message = Vec::new();
        let value = Value::Array(vec!["t".into(), 1.into(), Value::Map(vec![])]);
        rmpv::encode::write_value(&mut message, &value).unwrap();
        assert_eq!(printed(&message), as_is(&message));
        let mut body = forward_message("t", vec![Value::Map(vec![])]);
        body.push(0xc0);
        assert_eq!(printed(&body), as_is(&body));
        body.truncate(body.len() - 3);
        assert_eq!(printed(&body), as_is(&body));
    }
}
