//! One request in, one batch of routed events out: decompression, event iteration and
//! routing, with no I/O. The connection task calls it per request; the benches call it
//! directly.

use crate::forward::compression::{decompress, DecompressError};
use crate::forward::request::{ForwardEvents, PackedEvents};
use crate::forward::{Compression, Entries, Event, EventError, Limits, Request};
use crate::publish::Batch;
use crate::route::{Router, Span};
use bytes::Bytes;
use std::sync::Arc;

/// Caps that apply while a request is expanded.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Nesting cap for entries that arrive packed (never scanned as part of the frame).
    pub max_depth: usize,
    pub max_decompressed: usize,
}

/// Events of a request that were skipped: how many, and the first reason.
#[derive(Debug, Default)]
pub struct Invalid {
    pub count: u64,
    pub first: Option<EventError>,
}

impl Invalid {
    fn add(&mut self, e: EventError) {
        self.count += 1;
        self.first.get_or_insert(e);
    }
}

/// Routes every valid event of `request` (decoded from `frame`) into one batch.
/// The batch is `None` when no event was valid. Only a decompression failure fails the
/// whole request.
pub fn build_batch(
    frame: Bytes,
    request: &Request,
    router: &Router,
    limits: BatchLimits,
    peer: &Arc<str>,
) -> Result<(Option<Batch>, Invalid), DecompressError> {
    let compressed = request.options.compressed != Compression::None;
    let (data, tag_range) = match &request.entries {
        Entries::Packed(range) if compressed => {
            let mut plain = decompress(
                request.options.compressed,
                &frame[range.clone()],
                limits.max_decompressed,
            )?;
            // Keep the tag beside the entries so every span indexes one buffer.
            let tag_at = plain.len();
            plain.extend_from_slice(&frame[request.tag.clone()]);
            let tag_end = plain.len();
            (Bytes::from(plain), tag_at..tag_end)
        }
        _ => (frame, request.tag.clone()),
    };
    let tag = router.route_tag(&data, tag_range.clone());
    let mut events = Vec::new();
    let mut invalid = Invalid::default();
    let mut take = |ev: Result<Event, EventError>| match ev {
        Ok(ev) => events.push(router.route(&data, &tag, ev)),
        Err(e) => invalid.add(e),
    };
    match &request.entries {
        Entries::Message(ev) => take(ev.clone()),
        Entries::Forward { start, count } => {
            ForwardEvents::new(&data, *start, *count).for_each(&mut take)
        }
        Entries::Packed(range) => {
            let range = if compressed {
                0..tag_range.start
            } else {
                range.clone()
            };
            let packed = Limits {
                max_size: range.len(),
                max_depth: limits.max_depth,
            };
            PackedEvents::new(&data, range, packed).for_each(&mut take)
        }
    }
    if events.is_empty() {
        return Ok((None, invalid));
    }
    let batch = Batch {
        data,
        tag: Span::of(tag_range),
        peer: peer.clone(),
        peer_host: None,
        events,
        permit: None,
        spooled: Vec::new(),
    };
    Ok((Some(batch), invalid))
}
