//! The data that travels from intake to the publisher: the routed events of one request
//! (or of several requests read together), as byte spans of the bytes they came in.
//! Plain data: what holds it (the buffer's budgets, its place in the spool) travels
//! beside it, in the buffer's envelope.

use crate::route::{Routed, Span};
use bytes::Bytes;
use std::sync::Arc;

/// The events of one request, decoded and routed.
#[derive(Debug, Clone)]
pub struct RoutedEvents {
    /// The bytes every span indexes: the request frame, several requests read together,
    /// or decompressed entries with the tag appended.
    pub data: Bytes,
    pub tag: Span,
    /// The client, as shown in logs and in the `json` format.
    pub peer: Arc<str>,
    /// The client's host name, resolved when `input.source_hostname_key` is set.
    pub peer_host: Option<Arc<str>>,
    /// The connection the events came on (numbered from 1 in each run; 0 when they were
    /// read back from the spool).
    pub connection: u64,
    pub events: Vec<Routed>,
}

/// What a value of this type costs besides its data and event list (the struct, the
/// reference counts, the allocator's headers), for budgets.
const FIXED_COST: usize = 128;

impl RoutedEvents {
    /// Bytes of memory this keeps alive: its data, its event list and a fixed part.
    /// `data` counts as its length: intake copies a small request out of a large read
    /// buffer rather than let it pin the whole buffer (see [`RoutedEvents::unpin`]).
    pub fn memory_cost(&self) -> usize {
        self.data.len() + self.events.capacity() * std::mem::size_of::<Routed>() + FIXED_COST
    }

    /// Copies `data` into an allocation of its own when it is a small part of a larger
    /// allocation (`allocation`: the bytes that allocation holds), so that holding these
    /// events does not keep a whole read buffer alive. Copying is cheap exactly when it
    /// matters: the data is small.
    pub fn unpin(&mut self, allocation: usize) {
        unpin(&mut self.data, allocation);
    }

    /// Other events of the same request(s): the same data, tag and client.
    pub fn with_events(&self, events: Vec<Routed>) -> RoutedEvents {
        RoutedEvents {
            data: self.data.clone(),
            tag: self.tag,
            peer: self.peer.clone(),
            peer_host: self.peer_host.clone(),
            connection: self.connection,
            events,
        }
    }
}

/// Copies `data` into an allocation of its own when it is a small part of a larger one
/// (`allocation`: the bytes that one holds); see [`RoutedEvents::unpin`].
pub fn unpin(data: &mut Bytes, allocation: usize) {
    if data.len() <= UNPIN_MAX && data.len() * 2 < allocation {
        *data = Bytes::copy_from_slice(data);
    }
}

/// The largest data [`RoutedEvents::unpin`] copies: larger data is most of its buffer.
const UNPIN_MAX: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn events(data: Bytes) -> RoutedEvents {
        RoutedEvents {
            data,
            tag: Span::default(),
            peer: "p".into(),
            peer_host: None,
            connection: 0,
            events: Vec::new(),
        }
    }

    #[test]
    fn a_small_slice_of_a_large_buffer_gets_its_own_allocation() {
        let buffer = Bytes::from(vec![7u8; 4096]);
        let mut e = events(buffer.slice(10..240));
        e.unpin(4096);
        assert_eq!(&e.data[..], &[7u8; 230][..]);
        // The copy no longer points into the buffer.
        let range = buffer.as_ptr_range();
        assert!(!range.contains(&e.data.as_ptr()));
        let mut whole = events(buffer.slice(0..3000));
        whole.unpin(4096);
        assert!(
            range.contains(&whole.data.as_ptr()),
            "most of the buffer: kept"
        );
    }
}
