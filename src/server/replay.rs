//! Turning a spool record back into routed events, as intake first did: the requests
//! of one hand-off, decoded, routed and merged again. The buffer's reader calls it for
//! what it reads back (after a restart, or while the memory queue was full).

use super::handoff::Handoff;
use crate::buffer::spool::record::Record;
use crate::buffer::Expand;
use crate::event::RoutedEvents;
use crate::expand::{expand_request, ExpandLimits};
use crate::forward::decode_request;
use crate::route::Router;
use arc_swap::ArcSwap;
use std::sync::Arc;

pub struct Expander {
    /// The gateway's routing rules of the moment (a SIGHUP may change them).
    pub router: Arc<ArcSwap<Router>>,
    pub limits: ExpandLimits,
}

impl Expand for Expander {
    fn expand(&self, record: &Record) -> Vec<RoutedEvents> {
        let mut handoff = Handoff::new(false);
        let mut at = 0;
        for &end in &record.ends {
            let Some(frame) = record
                .region
                .get(at..end)
                .map(|_| record.region.slice(at..end))
            else {
                break;
            };
            let start = at;
            at = end;
            if frame[..] == [0xc0] {
                continue;
            }
            // Intake checked these requests before they were spooled: a failure here
            // is damage the checksum did not catch, or a request from another version.
            let request = match decode_request(&frame) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(peer = %record.peer, reason = %e, "a spooled request cannot be decoded; skipped");
                    continue;
                }
            };
            if request.options.signal != 0 {
                continue;
            }
            match expand_request(
                frame.clone(),
                &request,
                &self.router.load(),
                self.limits,
                &record.peer,
            ) {
                Ok((Some(mut batch), _)) => {
                    batch.peer_host = record.host.clone();
                    handoff.add(batch, &request, &record.region, start, frame);
                }
                Ok((None, _)) => {}
                Err(e) => {
                    tracing::warn!(peer = %record.peer, reason = %e, "a spooled request cannot be expanded; skipped");
                }
            }
        }
        handoff
            .take_batches()
            .into_iter()
            .map(|ready| ready.events)
            .collect()
    }
}
