//! Routing: which tenant, service, container and line each record belongs to. One pass
//! over the record's keys, no allocation: the result is byte spans of the request.

use crate::config::RouteConfig;
use crate::forward::msgpack::{Cursor, Kind};
use crate::forward::{Event, EventTime};
use regex::bytes::Regex;
use std::ops::Range;

/// A byte range of a batch's data, in 32 bits to keep routed events small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub fn of(r: Range<usize>) -> Span {
        Span {
            start: r.start as u32,
            end: r.end as u32,
        }
    }

    #[inline]
    pub fn get(self, data: &[u8]) -> &[u8] {
        &data[self.start as usize..self.end as usize]
    }

    #[inline]
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    #[inline]
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// What the published line is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The payload of a string or binary value, as is.
    Bytes(Span),
    /// A msgpack value to render as JSON (a non-string line value, or the whole record
    /// when no line key is present).
    Json(Span),
}

/// One event with everything the publisher needs, as spans of the batch data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub time: EventTime,
    /// `None`: the configured default tenant.
    pub tenant: Option<Span>,
    /// `None`: the configured default service.
    pub service: Option<Span>,
    pub container: Span,
    pub line: Line,
    /// The whole record (a msgpack map).
    pub record: Span,
}

/// What the tag of a request says, worked out once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagRoute {
    pub tag: Span,
    pub tenant: Option<Span>,
    pub service: Option<Span>,
}

/// The routing rules of a gateway.
#[derive(Debug, Clone)]
pub struct Router {
    tenant_keys: Vec<Box<[u8]>>,
    service_keys: Vec<Box<[u8]>>,
    line_keys: Vec<Box<[u8]>>,
    container_key: Box<[u8]>,
    tag_regex: Option<Regex>,
}

/// Length of the container id prefix in a seed line, as `docker ps` shows it.
pub const SHORT_ID_LEN: usize = 12;

fn keys(list: &[String]) -> Vec<Box<[u8]>> {
    list.iter().map(|k| k.as_bytes().into()).collect()
}

impl Router {
    /// Builds the router; the config must have passed validation (the regex compiles).
    pub fn new(config: &RouteConfig) -> Result<Router, regex::Error> {
        Ok(Router {
            tenant_keys: keys(&config.tenant_keys),
            service_keys: keys(&config.service_keys),
            line_keys: keys(&config.line_keys),
            container_key: config.container_id_key.as_bytes().into(),
            tag_regex: if config.tag_regex.is_empty() {
                None
            } else {
                Some(Regex::new(&config.tag_regex)?)
            },
        })
    }

    /// Works out what the tag (at `tag` in `data`) gives: tenant and service from the
    /// tag regex, when one is configured and matches.
    pub fn route_tag(&self, data: &[u8], tag: Range<usize>) -> TagRoute {
        let base = tag.start;
        let mut route = TagRoute {
            tag: Span::of(tag.clone()),
            tenant: None,
            service: None,
        };
        if let Some(re) = &self.tag_regex {
            if let Some(caps) = re.captures(&data[tag]) {
                let group = |name| {
                    caps.name(name)
                        .map(|m| Span::of(base + m.start()..base + m.end()))
                };
                route.tenant = group("tenant");
                route.service = group("service");
            }
        }
        route
    }

    /// Routes one event whose record lies in `data`.
    #[inline]
    pub fn route(&self, data: &[u8], tag: &TagRoute, event: Event) -> Routed {
        // Rank of the key that gave each value: a key earlier in its list wins.
        let mut tenant: Option<(usize, Span)> = None;
        let mut service: Option<(usize, Span)> = None;
        let mut line: Option<(usize, Line)> = None;
        let mut container: Option<Span> = None;

        let mut c = Cursor::at(data, event.record.start);
        let pairs = c.map_len().unwrap_or(0);
        for _ in 0..pairs {
            let key = match c.peek_kind() {
                Ok(Kind::Str) => c.str().ok(),
                _ => None,
            };
            let value_start = c.pos();
            let Ok(value) = c.skip() else { break };
            let Some(key) = key else { continue };
            let key = &data[key];
            let payload = || {
                let mut v = Cursor::at(data, value_start);
                match v.peek_kind() {
                    Ok(Kind::Str | Kind::Bin) => v.bytes().ok().map(Span::of),
                    _ => None,
                }
            };
            let string = || match Cursor::at(data, value_start).peek_kind() {
                Ok(Kind::Str) => payload(),
                _ => None,
            };
            if let Some(rank) = rank_of(&self.tenant_keys, key, tenant.map(|t| t.0)) {
                if let Some(s) = string() {
                    tenant = Some((rank, s));
                }
            }
            if let Some(rank) = rank_of(&self.service_keys, key, service.map(|t| t.0)) {
                if let Some(s) = string() {
                    service = Some((rank, s));
                }
            }
            if let Some(rank) = rank_of(&self.line_keys, key, line.map(|t| t.0)) {
                let l = match payload() {
                    Some(s) => Line::Bytes(s),
                    None => Line::Json(Span::of(value.clone())),
                };
                line = Some((rank, l));
            }
            if container.is_none() && key == &*self.container_key {
                if let Some(mut s) = string() {
                    s.end = s.end.min(s.start + SHORT_ID_LEN as u32);
                    container = Some(s);
                }
            }
        }
        let record = Span::of(event.record);
        Routed {
            time: event.time,
            tenant: tenant.map(|t| t.1).or(tag.tenant),
            service: service.map(|t| t.1).or(tag.service),
            container: container.unwrap_or(tag.tag),
            line: line.map(|l| l.1).unwrap_or(Line::Json(record)),
            record,
        }
    }
}

/// The position of `key` in `list` when it beats the rank already found.
#[inline]
fn rank_of(list: &[Box<[u8]>], key: &[u8], found: Option<usize>) -> Option<usize> {
    let limit = found.unwrap_or(list.len());
    list[..limit].iter().position(|k| **k == *key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut v = vec![0x80 | pairs.len() as u8];
        for (k, val) in pairs {
            for s in [k, val] {
                v.push(0xa0 | s.len() as u8);
                v.extend_from_slice(s.as_bytes());
            }
        }
        v
    }

    fn route(config: &RouteConfig, data: &[u8], tag_len: usize) -> (Routed, TagRoute) {
        let r = Router::new(config).unwrap();
        let tag = r.route_tag(data, 0..tag_len);
        let ev = Event {
            time: EventTime::default(),
            record: tag_len..data.len(),
        };
        (r.route(data, &tag, ev), tag)
    }

    #[test]
    fn docker_record() {
        let mut data = b"abcdef012345".to_vec();
        data.extend(record(&[
            ("container_id", "0123456789abcdef0123"),
            ("log", "hello"),
            ("TENANT_ID", "t1"),
            ("SERVICE_ID", "s1"),
        ]));
        let (r, _) = route(&RouteConfig::default(), &data, 12);
        assert_eq!(r.tenant.unwrap().get(&data), b"t1");
        assert_eq!(r.service.unwrap().get(&data), b"s1");
        assert_eq!(r.container.get(&data), b"0123456789ab");
        let Line::Bytes(line) = r.line else {
            panic!("line is {:?}", r.line)
        };
        assert_eq!(line.get(&data), b"hello");
    }

    #[test]
    fn key_order_and_fallbacks() {
        let config = RouteConfig {
            tenant_keys: vec!["first".into(), "second".into()],
            tag_regex: r"^(?P<tenant>[^.]+)\.(?P<service>[^.]+)".into(),
            ..RouteConfig::default()
        };
        let mut data = b"acme.web".to_vec();
        data.extend(record(&[("second", "b"), ("first", "a"), ("message", "m")]));
        let (r, _) = route(&config, &data, 8);
        assert_eq!(r.tenant.unwrap().get(&data), b"a");
        assert_eq!(r.service.unwrap().get(&data), b"web");
        assert_eq!(r.container.get(&data), b"acme.web");
        let Line::Bytes(l) = r.line else { panic!() };
        assert_eq!(l.get(&data), b"m");

        let mut data = b"notag".to_vec();
        data.extend(record(&[("x", "y")]));
        let (r, _) = route(&config, &data, 5);
        assert_eq!((r.tenant, r.service), (None, None));
        assert_eq!(r.line, Line::Json(r.record));
    }
}
