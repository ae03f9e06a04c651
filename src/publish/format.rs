//! Output formats: how a routed event becomes the frames of one ZeroMQ message.

use super::json::{write_base64, write_key, write_str, write_value};
use super::Batch;
use crate::config::{Format, OutputConfig, RouteConfig};
use crate::forward::msgpack::{Cursor, Kind, ReadError};
use crate::route::{Line, Routed};
use std::io::Write;

/// Where frames go: the ZeroMQ socket, or a list in tests.
pub trait Sink {
    type Error;
    /// Sends a frame; `more` when another frame of the same message follows.
    fn frame(&mut self, bytes: &[u8], more: bool) -> Result<(), Self::Error>;
    /// Sends the last frame of a message, `len` bytes written in place by `fill`. The
    /// ZeroMQ sink overrides this to write straight into the message, so the line is
    /// copied once; the default fills a temporary buffer.
    fn last_frame_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), Self::Error> {
        let mut buf = vec![0; len];
        fill(&mut buf);
        self.frame(&buf, false)
    }
}

/// Turns routed events into frames in the configured format.
pub struct Encoder {
    format: Format,
    topic_suffix: Vec<u8>,
    default_tenant: Vec<u8>,
    default_service: Vec<u8>,
    /// Reused buffers: the tenant frame with its suffix, and a rendered body.
    topic: Vec<u8>,
    body: Vec<u8>,
    /// Top-level values with invalid UTF-8: (key position, payload range).
    raw: Vec<(usize, std::ops::Range<usize>)>,
    /// `input.source_address_key` and `input.source_hostname_key`, when set.
    source_address_key: Option<String>,
    source_hostname_key: Option<String>,
}

impl Encoder {
    /// Sets the record keys that receive the client's address and host name.
    pub fn with_source_keys(mut self, address: &str, hostname: &str) -> Encoder {
        let key = |k: &str| (!k.is_empty()).then(|| k.to_owned());
        self.source_address_key = key(address);
        self.source_hostname_key = key(hostname);
        self
    }

    pub fn new(output: &OutputConfig, route: &RouteConfig) -> Encoder {
        Encoder {
            format: output.format,
            topic_suffix: output.topic_suffix.as_bytes().to_vec(),
            default_tenant: route.default_tenant.as_bytes().to_vec(),
            default_service: route.default_service.as_bytes().to_vec(),
            topic: Vec::new(),
            body: Vec::with_capacity(1024),
            raw: Vec::new(),
            source_address_key: None,
            source_hostname_key: None,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The tenant of an event, as published (without the topic suffix).
    pub fn tenant_of<'a>(&'a self, batch: &'a Batch, ev: &Routed) -> &'a [u8] {
        ev.tenant
            .map_or(&self.default_tenant[..], |s| s.get(&batch.data))
    }

    /// Sends every event of the batch; returns how many were sent.
    pub fn encode_batch<S: Sink>(&mut self, batch: &Batch, sink: &mut S) -> Result<u64, S::Error> {
        if self.format == Format::Null {
            return Ok(batch.events.len() as u64);
        }
        for ev in &batch.events {
            self.encode(batch, ev, sink)?;
        }
        Ok(batch.events.len() as u64)
    }

    fn encode<S: Sink>(
        &mut self,
        batch: &Batch,
        ev: &Routed,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let data = &batch.data[..];
        let tenant = ev.tenant.map_or(&self.default_tenant[..], |s| s.get(data));
        let service = ev
            .service
            .map_or(&self.default_service[..], |s| s.get(data));
        send_route(sink, &mut self.topic, &self.topic_suffix, tenant, service)?;
        match self.format {
            Format::Seed => {
                let (id, line) = seed_line(data, ev, &mut self.body);
                let len = id.len() + 2 + line.len();
                sink.last_frame_with(len, &mut |buf: &mut [u8]| {
                    let (a, rest) = buf.split_at_mut(id.len());
                    a.copy_from_slice(id);
                    rest[..2].copy_from_slice(b": ");
                    rest[2..].copy_from_slice(line);
                })
            }
            Format::Json => {
                self.body.clear();
                self.render_json(batch, ev);
                sink.frame(&self.body, false)
            }
            // encode_batch returns before reaching here.
            Format::Null => Ok(()),
        }
    }

    /// The `json` format body:
    /// `{"tag","time","time_ns","peer","record"[,"bytes_base64"]}`.
    fn render_json(&mut self, batch: &Batch, ev: &Routed) {
        let data = &batch.data[..];
        let out = &mut self.body;
        out.extend_from_slice(b"{\"tag\":");
        write_str(out, batch.tag.get(data));
        out.extend_from_slice(b",\"time\":\"");
        ev.time.write_rfc3339(out);
        let _ = write!(out, "\",\"time_ns\":{},\"peer\":", ev.time.unix_nanos());
        write_str(out, batch.peer.as_bytes());
        out.extend_from_slice(b",\"record\":");
        self.raw.clear();
        let record = ev.record.get(data);
        let record_at = out.len();
        let extra = source_pairs(
            batch,
            self.source_address_key.as_deref(),
            self.source_hostname_key.as_deref(),
        );
        if write_record(out, record, &mut self.raw, &extra).is_err() {
            // The record was validated when it was scanned; keep the output valid JSON
            // even so.
            out.truncate(record_at);
            out.extend_from_slice(b"null");
            self.raw.clear();
        }
        if !self.raw.is_empty() {
            out.extend_from_slice(b",\"bytes_base64\":{");
            for (i, (key_at, value)) in self.raw.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = write_key(out, &mut Cursor::at(record, *key_at), record);
                out.extend_from_slice(b":\"");
                write_base64(out, &record[value.clone()]);
                out.push(b'"');
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// The two parts of an event's `seed` line, `<container id>: <line>`: the container id,
/// and the line, which is either bytes of `data` or JSON rendered into `scratch`.
pub fn seed_line<'a>(
    data: &'a [u8],
    ev: &Routed,
    scratch: &'a mut Vec<u8>,
) -> (&'a [u8], &'a [u8]) {
    let id = ev.container.get(data);
    let line = match ev.line {
        Line::Bytes(s) => s.get(data),
        Line::Json(s) => {
            scratch.clear();
            let bytes = s.get(data);
            if write_value(scratch, &mut Cursor::new(bytes), bytes).is_err() {
                scratch.clear();
            }
            &scratch[..]
        }
    };
    (id, line)
}

/// Sends the first two frames of a message: the tenant (with the topic suffix) and the
/// service.
fn send_route<S: Sink>(
    sink: &mut S,
    topic: &mut Vec<u8>,
    topic_suffix: &[u8],
    tenant: &[u8],
    service: &[u8],
) -> Result<(), S::Error> {
    if topic_suffix.is_empty() {
        sink.frame(tenant, true)?;
    } else {
        topic.clear();
        topic.extend_from_slice(tenant);
        topic.extend_from_slice(topic_suffix);
        sink.frame(topic, true)?;
    }
    sink.frame(service, true)
}

/// The pairs `input.source_address_key` and `input.source_hostname_key` add to each
/// record of a batch (empty, without allocating, when neither is set).
fn source_pairs<'a>(
    batch: &'a Batch,
    address_key: Option<&'a str>,
    hostname_key: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let address = source_address(&batch.peer);
    let mut pairs = Vec::new();
    if let Some(key) = address_key {
        pairs.push((key, address));
    }
    if let Some(key) = hostname_key {
        pairs.push((key, batch.peer_host.as_deref().unwrap_or(address)));
    }
    pairs
}

/// The client's address as a record value: the IP of `ip:port`, or the whole peer
/// name (a unix socket path).
fn source_address(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((ip, port)) if port.parse::<u16>().is_ok() && !peer.starts_with("unix:") => {
            ip.trim_start_matches('[').trim_end_matches(']')
        }
        _ => peer,
    }
}

/// Writes a record map as a JSON object, noting top-level string values that are not
/// valid UTF-8 so their exact bytes can be published beside the readable text.
fn write_record(
    out: &mut Vec<u8>,
    record: &[u8],
    raw: &mut Vec<(usize, std::ops::Range<usize>)>,
    extra: &[(&str, &str)],
) -> Result<(), ReadError> {
    let mut c = Cursor::new(record);
    let n = c.map_len()?;
    out.push(b'{');
    for (i, (key, value)) in extra.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key.as_bytes());
        out.push(b':');
        write_str(out, value.as_bytes());
    }
    for i in 0..n {
        if i > 0 || !extra.is_empty() {
            out.push(b',');
        }
        let key_at = c.pos();
        write_key(out, &mut c, record)?;
        out.push(b':');
        if matches!(c.peek_kind()?, Kind::Str | Kind::Bin) {
            let r = c.bytes()?;
            if !write_str(out, &record[r.clone()]) {
                raw.push((key_at, r));
            }
        } else {
            write_value(out, &mut c, record)?;
        }
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::EventTime;
    use crate::route::Span;
    use bytes::Bytes;
    use std::convert::Infallible;

    #[derive(Default)]
    struct Frames(Vec<Vec<Vec<u8>>>, Vec<Vec<u8>>);

    impl Sink for Frames {
        type Error = Infallible;
        fn frame(&mut self, bytes: &[u8], more: bool) -> Result<(), Infallible> {
            self.1.push(bytes.to_vec());
            if !more {
                self.0.push(std::mem::take(&mut self.1));
            }
            Ok(())
        }
    }

    fn batch() -> Batch {
        // tag "abc", then a record {"log": "hi\xff"}
        let mut data = b"abc".to_vec();
        data.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xa3, b'h', b'i', 0xff]);
        let record = Span {
            start: 3,
            end: data.len() as u32,
        };
        Batch {
            data: Bytes::from(data),
            tag: Span { start: 0, end: 3 },
            peer: "127.0.0.1:9".into(),
            peer_host: None,
            events: vec![Routed {
                time: EventTime {
                    secs: 1_700_000_000,
                    nanos: 7,
                },
                tenant: None,
                service: Some(Span { start: 1, end: 2 }),
                container: Span { start: 0, end: 3 },
                line: Line::Bytes(Span { start: 9, end: 12 }),
                record,
            }],
            permit: None,
            spooled: Vec::new(),
        }
    }

    #[test]
    fn source_address_of_peers() {
        assert_eq!(source_address("127.0.0.1:40312"), "127.0.0.1");
        assert_eq!(source_address("[::1]:40312"), "::1");
        assert_eq!(source_address("unix:/run/fwd.sock"), "unix:/run/fwd.sock");
    }

    #[test]
    fn seed_frames() {
        let out = OutputConfig {
            topic_suffix: "|".into(),
            ..OutputConfig::default()
        };
        let mut enc = Encoder::new(&out, &RouteConfig::default());
        let mut sink = Frames::default();
        enc.encode_batch(&batch(), &mut sink).unwrap();
        assert_eq!(
            sink.0,
            vec![vec![
                b"default|".to_vec(),
                b"b".to_vec(),
                b"abc: hi\xff".to_vec()
            ]]
        );
    }

    #[test]
    fn json_keeps_invalid_utf8_bytes() {
        let out = OutputConfig {
            format: Format::Json,
            ..OutputConfig::default()
        };
        let mut enc = Encoder::new(&out, &RouteConfig::default());
        let mut sink = Frames::default();
        enc.encode_batch(&batch(), &mut sink).unwrap();
        let body = String::from_utf8(sink.0[0][2].clone()).unwrap();
        assert_eq!(
            body,
            "{\"tag\":\"abc\",\"time\":\"2023-11-14T22:13:20.000000007Z\",\"time_ns\":1700000000000000007,\
             \"peer\":\"127.0.0.1:9\",\"record\":{\"log\":\"hi\u{fffd}\"},\"bytes_base64\":{\"log\":\"aGn/\"}}"
        );
    }
}
