//! Output formats: how routed events become ZeroMQ messages of three frames, one
//! message per event (`seed`, `json`) or per tenant and service of a batch (`batch`).

use super::forward_body::{body_len, entry_len, write_body_start, write_entry, Extra, Out};
use super::groups::Groups;
use super::rainbond;
use crate::config::{Format, OutputConfig, RouteConfig};
use crate::event::RoutedEvents;
use crate::forward::msgpack::{Cursor, Kind, ReadError};
use crate::forward::to_json::{write_base64, write_key, write_str, write_value};
use crate::route::{seed_line, Routed};
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

/// Largest body of a `batch`-format message. A group whose events would take its body
/// past this is split into several messages (an event larger than this on its own
/// gets a message of its own), so that one message never grows unbounded.
pub const BATCH_MAX_BODY: usize = 1 << 20;

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
    /// The `batch` format's grouping of events by tenant and service.
    groups: Groups,
    /// Events the `rainbond` format could not publish (a service id its eventlog
    /// cannot cut out) since the last [`Encoder::take_unpublishable`], and when that
    /// was last warned of.
    unpublishable: u64,
    unpublishable_warned: Option<std::time::Instant>,
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
            groups: Groups::default(),
            unpublishable: 0,
            unpublishable_warned: None,
        }
    }

    /// How many events the last calls could not publish in this format (dropped,
    /// not sent, though the calls returned `Ok`), and resets the count.
    pub fn take_unpublishable(&mut self) -> u64 {
        std::mem::take(&mut self.unpublishable)
    }

    /// Takes a reloaded configuration's default tenant and service.
    pub fn set_route_defaults(&mut self, route: &RouteConfig) {
        self.default_tenant = route.default_tenant.as_bytes().to_vec();
        self.default_service = route.default_service.as_bytes().to_vec();
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The tenant of an event, as published (without the topic suffix).
    pub fn tenant_of<'a>(&'a self, batch: &'a RoutedEvents, ev: &Routed) -> &'a [u8] {
        ev.tenant
            .map_or(&self.default_tenant[..], |s| s.get(&batch.data))
    }

    /// Sends every event of the batch; returns how many were sent (all but those
    /// [`Encoder::take_unpublishable`] counts).
    pub fn encode_batch<S: Sink>(
        &mut self,
        batch: &RoutedEvents,
        sink: &mut S,
    ) -> Result<u64, S::Error> {
        let before = self.unpublishable;
        match self.format {
            Format::Null => {}
            Format::Batch => self.encode_groups(batch, sink)?,
            Format::Seed | Format::Json | Format::Rainbond => {
                for ev in &batch.events {
                    self.encode(batch, ev, sink)?;
                }
            }
        }
        Ok(batch.events.len() as u64 - (self.unpublishable - before))
    }

    /// The `batch` format: one message per (tenant, service) of the batch, or several
    /// when its events would take a body past [`BATCH_MAX_BODY`].
    fn encode_groups<S: Sink>(
        &mut self,
        batch: &RoutedEvents,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let data = &batch.data[..];
        let (default_tenant, default_service) =
            (&self.default_tenant[..], &self.default_service[..]);
        let route = |ev: &Routed| {
            (
                ev.tenant.map_or(default_tenant, |s| s.get(data)),
                ev.service.map_or(default_service, |s| s.get(data)),
            )
        };
        self.groups.build(batch.events.iter().map(route));
        let pairs = source_pairs(
            batch,
            self.source_address_key.as_deref(),
            self.source_hostname_key.as_deref(),
        );
        let extra = Extra::new(&pairs);
        let tag = batch.tag.get(data);
        for g in 0..self.groups.len() {
            let mut rest = self.groups.events(g);
            let Some(&first) = rest.first() else {
                continue;
            };
            let (tenant, service) = route(&batch.events[first as usize]);
            while !rest.is_empty() {
                let (count, entries) = fit(batch, rest, tag.len(), &extra);
                let (chunk, later) = rest.split_at(count);
                send_route(sink, &mut self.topic, &self.topic_suffix, tenant, service)?;
                let len = body_len(tag.len(), count, entries);
                sink.last_frame_with(len, &mut |buf: &mut [u8]| {
                    let mut out = Out::new(buf);
                    write_body_start(&mut out, tag, count);
                    for &i in chunk {
                        let ev = &batch.events[i as usize];
                        write_entry(&mut out, ev.time, ev.record.get(data), &extra);
                    }
                    debug_assert_eq!(out.written(), len, "batch body size");
                })?;
                rest = later;
            }
        }
        Ok(())
    }

    /// Sends one event as its message, in the `seed` or `json` format (the `batch`
    /// format goes through [`Encoder::encode_batch`]).
    pub fn encode_event<S: Sink>(
        &mut self,
        batch: &RoutedEvents,
        ev: &Routed,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        self.encode(batch, ev, sink)
    }

    fn encode<S: Sink>(
        &mut self,
        batch: &RoutedEvents,
        ev: &Routed,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let data = &batch.data[..];
        if self.format == Format::Rainbond {
            return self.encode_rainbond(data, ev, sink);
        }
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
            // encode_batch does not come here for these, nor this for rainbond.
            Format::Batch | Format::Null | Format::Rainbond => Ok(()),
        }
    }

    /// The `rainbond` format: one frame, `<container id>,<service id><line>`; an
    /// event whose service id the eventlog would cut wrong is counted, not sent.
    fn encode_rainbond<S: Sink>(
        &mut self,
        data: &[u8],
        ev: &Routed,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let service = ev
            .service
            .map_or(&self.default_service[..], |s| s.get(data));
        if !rainbond::publishable_service(service) {
            self.unpublishable += 1;
            let now = std::time::Instant::now();
            if self
                .unpublishable_warned
                .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(60))
            {
                self.unpublishable_warned = Some(now);
                tracing::warn!(
                    service = %String::from_utf8_lossy(service),
                    "format rainbond: a service id must be 32 characters (or rbd-api, \
                     rbd-worker, rbd-gateway, rbd-chaos) for Rainbond's eventlog to read it; \
                     events dropped (reason rainbond_service_id; warned once a minute)"
                );
            }
            return Ok(());
        }
        let (id, line) = seed_line(data, ev, &mut self.body);
        let len = rainbond::message_len(service, line);
        sink.last_frame_with(len, &mut |buf: &mut [u8]| {
            rainbond::write_message(buf, id, service, line)
        })
    }

    /// The `json` format body:
    /// `{"tag","time","time_ns","peer","record"[,"bytes_base64"]}`.
    fn render_json(&mut self, batch: &RoutedEvents, ev: &Routed) {
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

/// How many of `events` (at least one) go into the next `batch` message, and the size
/// of their entries: as many as keep the body within [`BATCH_MAX_BODY`].
fn fit(batch: &RoutedEvents, events: &[u32], tag_len: usize, extra: &Extra<'_>) -> (usize, usize) {
    let mut entries = 0;
    for (count, &i) in events.iter().enumerate() {
        let record = batch.events[i as usize].record.get(&batch.data);
        let len = entry_len(record, extra);
        if count > 0 && body_len(tag_len, count + 1, entries + len) > BATCH_MAX_BODY {
            return (count, entries);
        }
        entries += len;
    }
    (events.len(), entries)
}

/// The pairs `input.source_address_key` and `input.source_hostname_key` add to each
/// record of a batch (empty, without allocating, when neither is set).
fn source_pairs<'a>(
    batch: &'a RoutedEvents,
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
    use crate::route::{Line, Span};
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

    fn batch() -> RoutedEvents {
        // tag "abc", then a record {"log": "hi\xff"}
        let mut data = b"abc".to_vec();
        data.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xa3, b'h', b'i', 0xff]);
        let record = Span {
            start: 3,
            end: data.len() as u32,
        };
        RoutedEvents {
            data: Bytes::from(data),
            tag: Span { start: 0, end: 3 },
            peer: "127.0.0.1:9".into(),
            peer_host: None,
            connection: 0,
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

    // ------------------------------------------------------------------ batch format

    const T0: u32 = 1_700_000_000;

    /// A record map of string pairs, fixmap and fixstr/str8/str32 as their sizes need.
    fn record(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut v = vec![0x80 | pairs.len() as u8];
        for s in pairs.iter().flat_map(|(k, v)| [k, v]) {
            v.extend_from_slice(crate::publish::forward_body::str_head(s.len()).as_bytes());
            v.extend_from_slice(s.as_bytes());
        }
        v
    }

    /// A batch of `records` under `tag`, routed with the default rules; event `i` has
    /// the time `T0 + i` seconds and `i` nanoseconds.
    fn routed_batch(tag: &str, records: &[Vec<u8>]) -> RoutedEvents {
        let mut data = tag.as_bytes().to_vec();
        let mut ranges = Vec::new();
        for r in records {
            let start = data.len();
            data.extend_from_slice(r);
            ranges.push(start..data.len());
        }
        let router = crate::route::Router::new(&RouteConfig::default()).unwrap();
        let tag_route = router.route_tag(&data, 0..tag.len());
        let events = ranges
            .into_iter()
            .enumerate()
            .map(|(i, record)| {
                let time = EventTime {
                    secs: u64::from(T0) + i as u64,
                    nanos: i as u32,
                };
                router.route(&data, &tag_route, crate::forward::Event { time, record })
            })
            .collect();
        RoutedEvents {
            data: Bytes::from(data),
            tag: Span::of(0..tag.len()),
            peer: "127.0.0.1:9".into(),
            peer_host: None,
            connection: 0,
            events,
        }
    }

    /// The entry `[time, record]` of event `i` of a [`routed_batch`], by hand.
    fn entry(i: u32, record: &[u8]) -> Vec<u8> {
        let mut e = vec![0x92, 0xd7, 0x00];
        e.extend_from_slice(&(T0 + i).to_be_bytes());
        e.extend_from_slice(&i.to_be_bytes());
        e.extend_from_slice(record);
        e
    }

    fn batch_encoder(topic_suffix: &str) -> Encoder {
        let out = OutputConfig {
            format: Format::Batch,
            topic_suffix: topic_suffix.into(),
            ..OutputConfig::default()
        };
        Encoder::new(&out, &RouteConfig::default())
    }

    fn encode(enc: &mut Encoder, batch: &RoutedEvents) -> Vec<Vec<Vec<u8>>> {
        let mut sink = Frames::default();
        let sent = enc.encode_batch(batch, &mut sink).unwrap();
        assert_eq!(sent, batch.events.len() as u64, "counted per event");
        assert!(sink.1.is_empty(), "a message left unfinished");
        sink.0
    }

    #[test]
    fn batch_groups_interleaved_tenants_exactly() {
        let a1 = record(&[("TENANT_ID", "A"), ("SERVICE_ID", "s"), ("log", "a1")]);
        let b1 = record(&[("TENANT_ID", "B"), ("log", "b1")]);
        let a2 = record(&[("log", "a2"), ("SERVICE_ID", "s"), ("TENANT_ID", "A")]);
        let batch = routed_batch("app", &[a1.clone(), b1.clone(), a2.clone()]);
        let msgs = encode(&mut batch_encoder(""), &batch);
        // ["app", [entry 0, entry 2]]: fixarray 2, fixstr 3, fixarray 2.
        let body_a = [&b"\x92\xa3app\x92"[..], &entry(0, &a1), &entry(2, &a2)].concat();
        let body_b = [&b"\x92\xa3app\x91"[..], &entry(1, &b1)].concat();
        assert_eq!(
            msgs,
            vec![
                vec![b"A".to_vec(), b"s".to_vec(), body_a.clone()],
                vec![b"B".to_vec(), b"default".to_vec(), body_b],
            ]
        );
        // What any msgpack library reads: a Forward-mode message without options.
        use rmpv::Value;
        let v = rmpv::decode::read_value(&mut &body_a[..]).unwrap();
        let time = |i: u32| {
            let mut t = (T0 + i).to_be_bytes().to_vec();
            t.extend_from_slice(&i.to_be_bytes());
            Value::Ext(0, t)
        };
        let map = |bytes: &[u8]| rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::from("app"),
                Value::Array(vec![
                    Value::Array(vec![time(0), map(&a1)]),
                    Value::Array(vec![time(2), map(&a2)]),
                ]),
            ])
        );
    }

    #[test]
    fn batch_default_tenant_and_topic_suffix() {
        let r1 = record(&[("log", "one")]);
        let r2 = record(&[("message", "two"), ("SERVICE_ID", "s2")]);
        let r3 = record(&[("log", "three")]);
        let batch = routed_batch("t", &[r1.clone(), r2.clone(), r3.clone()]);
        let msgs = encode(&mut batch_encoder("|"), &batch);
        assert_eq!(
            msgs,
            vec![
                vec![
                    b"default|".to_vec(),
                    b"default".to_vec(),
                    [&b"\x92\xa1t\x92"[..], &entry(0, &r1), &entry(2, &r3)].concat()
                ],
                vec![
                    b"default|".to_vec(),
                    b"s2".to_vec(),
                    [&b"\x92\xa1t\x91"[..], &entry(1, &r2)].concat()
                ],
            ]
        );
    }

    #[test]
    fn batch_many_events_take_an_array16_header() {
        let records: Vec<Vec<u8>> = (0..20)
            .map(|i| record(&[("log", &i.to_string())]))
            .collect();
        let batch = routed_batch("t", &records);
        let msgs = encode(&mut batch_encoder(""), &batch);
        assert_eq!(msgs.len(), 1);
        let mut body = b"\x92\xa1t\xdc\x00\x14".to_vec();
        for (i, r) in records.iter().enumerate() {
            body.extend(entry(i as u32, r));
        }
        assert_eq!(msgs[0][2], body);
    }

    /// A record `{"log": <str32 of log_len bytes>}`: 10 bytes more than its line.
    fn big_record(log_len: usize, fill: u8) -> Vec<u8> {
        let mut r = vec![0x81, 0xa3, b'l', b'o', b'g', 0xdb];
        r.extend_from_slice(&(log_len as u32).to_be_bytes());
        r.resize(r.len() + log_len, fill);
        r
    }

    #[test]
    fn batch_splits_a_group_at_the_body_cap() {
        // Body of two entries under tag "app": 6 header bytes, then per entry 0x92, a
        // 10-byte time and a record of log_len + 10 bytes. This log_len makes it
        // exactly BATCH_MAX_BODY.
        let log_len = (BATCH_MAX_BODY - 6) / 2 - 21;
        assert_eq!(6 + 2 * (21 + log_len), BATCH_MAX_BODY);
        let (r1, r2) = (big_record(log_len, b'a'), big_record(log_len, b'b'));
        let small = record(&[("log", "small")]);
        let batch = routed_batch("app", &[r1.clone(), r2.clone(), small.clone()]);
        let msgs = encode(&mut batch_encoder(""), &batch);
        let lens: Vec<usize> = msgs.iter().map(|m| m[2].len()).collect();
        assert_eq!(lens, vec![BATCH_MAX_BODY, 6 + entry(2, &small).len()]);
        assert_eq!(
            msgs[0][2],
            [&b"\x92\xa3app\x92"[..], &entry(0, &r1), &entry(1, &r2)].concat()
        );
        assert_eq!(
            msgs[1],
            vec![
                b"default".to_vec(),
                b"default".to_vec(),
                [&b"\x92\xa3app\x91"[..], &entry(2, &small)].concat()
            ]
        );

        // One byte more and the second entry starts a message of its own.
        let r2 = big_record(log_len + 1, b'b');
        let batch = routed_batch("app", &[r1.clone(), r2.clone()]);
        let msgs = encode(&mut batch_encoder(""), &batch);
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            msgs[0][2],
            [&b"\x92\xa3app\x91"[..], &entry(0, &r1)].concat()
        );
        assert_eq!(
            msgs[1][2],
            [&b"\x92\xa3app\x91"[..], &entry(1, &r2)].concat()
        );
    }

    #[test]
    fn batch_event_over_the_cap_goes_alone() {
        let huge = big_record(BATCH_MAX_BODY, b'h');
        let small = record(&[("log", "s")]);
        let batch = routed_batch("t", &[small.clone(), huge.clone(), small.clone()]);
        let msgs = encode(&mut batch_encoder(""), &batch);
        let bodies: Vec<&Vec<u8>> = msgs.iter().map(|m| &m[2]).collect();
        assert_eq!(
            bodies,
            vec![
                &[&b"\x92\xa1t\x91"[..], &entry(0, &small)].concat(),
                &[&b"\x92\xa1t\x91"[..], &entry(1, &huge)].concat(),
                &[&b"\x92\xa1t\x91"[..], &entry(2, &small)].concat(),
            ]
        );
    }

    #[test]
    fn batch_adds_source_keys_to_each_record() {
        let r1 = record(&[("log", "x")]);
        let mut batch = routed_batch("t", &[r1]);
        batch.peer_host = Some("client.example".into());
        let mut enc = batch_encoder("").with_source_keys("src", "host");
        let msgs = encode(&mut enc, &batch);
        // The map header counts 1 + 2 pairs; the added pairs come first, as in `json`.
        let extended = record(&[
            ("src", "127.0.0.1"),
            ("host", "client.example"),
            ("log", "x"),
        ]);
        assert_eq!(
            msgs[0][2],
            [&b"\x92\xa1t\x91"[..], &entry(0, &extended)].concat()
        );

        // 15 pairs of its own and one more: the fixmap becomes a map16.
        let pairs: Vec<(String, String)> = (0..15)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let own = record(&refs);
        let batch = routed_batch("t", std::slice::from_ref(&own));
        let mut enc = batch_encoder("").with_source_keys("src", "");
        let msgs = encode(&mut enc, &batch);
        let mut grown = vec![0xde, 0x00, 0x10, 0xa3, b's', b'r', b'c', 0xa9];
        grown.extend_from_slice(b"127.0.0.1");
        grown.extend_from_slice(&own[1..]);
        assert_eq!(
            msgs[0][2],
            [&b"\x92\xa1t\x91"[..], &entry(0, &grown)].concat()
        );
    }

    #[test]
    fn batch_of_nothing_publishes_nothing() {
        let batch = routed_batch("t", &[]);
        assert!(encode(&mut batch_encoder(""), &batch).is_empty());
    }

    #[test]
    fn rainbond_is_one_frame_per_record_and_counts_what_it_cannot_publish() {
        let id = "0123456789abcdef0123456789abcdef";
        let c64 = "4f1c8a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
        let records = [
            record(&[
                ("container_id", c64),
                ("SERVICE_ID", id),
                ("log", "first line"),
            ]),
            record(&[("container_id", c64), ("log", "no service id")]),
            record(&[("SERVICE_ID", "rbd-api"), ("log", "from rbd-api\nand on")]),
            record(&[("container_id", c64), ("SERVICE_ID", "short"), ("log", "x")]),
        ];
        let batch = routed_batch("abcdef012345", &records);
        let out = OutputConfig {
            format: Format::Rainbond,
            ..OutputConfig::default()
        };
        let mut enc = Encoder::new(&out, &RouteConfig::default());
        let mut sink = Frames::default();
        assert_eq!(enc.encode_batch(&batch, &mut sink).unwrap(), 2);
        assert_eq!(enc.take_unpublishable(), 2);
        assert_eq!(enc.take_unpublishable(), 0, "taken once");
        assert_eq!(
            sink.0,
            vec![
                vec![format!("4f1c8a1e2b3c,{id}first line").into_bytes()],
                // No container id: the tag (Docker's default, the 12-character id).
                vec![b"abcdef012345,rbd-apifrom rbd-api\nand on".to_vec()],
            ]
        );
        // One at a time, as the per-tenant path sends them.
        let mut sink = Frames::default();
        for ev in &batch.events {
            enc.encode_event(&batch, ev, &mut sink).unwrap();
        }
        assert_eq!(sink.0.len(), 2);
        assert_eq!(enc.take_unpublishable(), 2);
    }
}
