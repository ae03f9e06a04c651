//! What the collectors are subscribed to, as the XPUB socket reports it, and whether a
//! tenant's topic is covered by any of it.
//!
//! XPUB (not verbose) reports a topic when its first subscriber arrives and its removal
//! when the last one leaves or disconnects. ZeroMQ matches a subscription as a prefix of
//! a message's first frame: the empty subscription covers every tenant.

use std::collections::{HashMap, HashSet};

/// How many tenants' answers are remembered between changes of the subscriptions; past
/// it the memory is cleared (tenant ids are chosen by clients).
const MAX_REMEMBERED: usize = 65_536;

#[derive(Default)]
pub struct Subscriptions {
    topics: HashSet<Vec<u8>>,
    /// `output.topic_suffix`: what follows the tenant in a message's first frame.
    suffix: Vec<u8>,
    /// False when the first frame does not begin with the tenant (the `rainbond`
    /// format): then any subscription may want any tenant's lines, and covers them all.
    tenant_first: bool,
    /// Whether a tenant is covered, as computed since the last change.
    covered: HashMap<Box<[u8]>, bool>,
}

impl Subscriptions {
    /// No subscriptions yet, for topics made of a tenant and `suffix` when
    /// `tenant_first`, else for messages that do not begin with their tenant.
    pub fn new(suffix: &[u8], tenant_first: bool) -> Subscriptions {
        Subscriptions {
            suffix: suffix.to_vec(),
            tenant_first,
            ..Subscriptions::default()
        }
    }

    /// Reads every pending subscription message without blocking; true when any came.
    pub fn update(&mut self, socket: &zmq::Socket) -> bool {
        let mut changed = false;
        while let Ok(msg) = socket.recv_bytes(zmq::DONTWAIT) {
            changed |= self.apply(&msg);
        }
        changed
    }

    /// Applies one subscription message (`1` + topic subscribes, `0` + topic
    /// unsubscribes); true when the set changed.
    pub fn apply(&mut self, msg: &[u8]) -> bool {
        let changed = match msg.split_first() {
            Some((1, topic)) => self.topics.insert(topic.to_vec()),
            Some((0, topic)) => self.topics.remove(topic),
            _ => false,
        };
        if changed {
            self.covered.clear();
        }
        changed
    }

    /// Topics subscribed to.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// True when anybody is subscribed to anything.
    pub fn any(&self) -> bool {
        !self.topics.is_empty()
    }

    /// True when a subscription is a prefix of the tenant's topic (`tenant` followed
    /// by the suffix, as the first frame is sent).
    pub fn covers(&mut self, tenant: &[u8]) -> bool {
        if self.topics.is_empty() || !self.tenant_first {
            return !self.topics.is_empty();
        }
        if let Some(&c) = self.covered.get(tenant) {
            return c;
        }
        let c = self
            .topics
            .iter()
            .any(|topic| is_prefix_of(topic, tenant, &self.suffix));
        if self.covered.len() >= MAX_REMEMBERED {
            self.covered.clear();
        }
        self.covered.insert(tenant.into(), c);
        c
    }
}

/// True when `prefix` is a prefix of `head` followed by `tail`.
fn is_prefix_of(prefix: &[u8], head: &[u8], tail: &[u8]) -> bool {
    if prefix.len() <= head.len() {
        return head.starts_with(prefix);
    }
    let (a, b) = prefix.split_at(head.len());
    a == head && tail.starts_with(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_topics() {
        let mut s = Subscriptions::new(b".logs", true);
        assert!(!s.covers(b"acme"), "nothing subscribed");
        assert!(s.apply(b"\x01ac"));
        assert!(!s.apply(b"\x01ac"), "a second subscriber changes nothing");
        assert!(s.covers(b"acme"));
        assert!(!s.covers(b"beta"));
        assert!(s.apply(b"\x01beta.logs"));
        assert!(s.covers(b"beta"), "the suffix is part of the topic");
        assert!(!s.covers(b"bet"));
        assert!(s.apply(b"\x00beta.logs"));
        assert!(s.apply(b"\x01beta.metrics"));
        assert!(!s.covers(b"beta"), "another suffix");
        assert!(s.apply(b"\x00ac"));
        assert!(!s.covers(b"acme"), "unsubscribed");
        assert!(s.apply(b"\x01"));
        assert!(s.covers(b"anyone"), "the empty subscription covers all");
        assert!(!s.apply(b""), "an empty message is ignored");
    }

    #[test]
    fn without_the_tenant_first_any_subscription_covers_every_tenant() {
        let mut s = Subscriptions::new(b"", false);
        assert!(!s.covers(b"acme"), "nothing subscribed");
        assert!(s.apply(b"\x014f1c8a1e2b3c"));
        assert!(s.covers(b"acme"));
        assert!(s.covers(b"beta"));
        assert!(s.apply(b"\x004f1c8a1e2b3c"));
        assert!(!s.covers(b"acme"));
    }

    #[test]
    fn prefix_across_tenant_and_suffix() {
        assert!(is_prefix_of(b"ab", b"abc", b""));
        assert!(is_prefix_of(b"abc.x", b"abc", b".xy"));
        assert!(!is_prefix_of(b"abd", b"abc", b""));
        assert!(!is_prefix_of(b"abc.y", b"abc", b".xy"));
        assert!(is_prefix_of(b"", b"", b""));
    }
}
