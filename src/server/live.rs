//! What a SIGHUP may change while connections stay open: the routing rules, the
//! handshake's keys and users, and the connection timeouts. Connections read them where
//! they use them (the router once per request, the keys once per connection, the
//! timeouts once per read), so a reload applies to the next request, and to the
//! handshake of the next connection.

use super::handshake::Security;
use crate::config::Config;
use crate::route::Router;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Live {
    /// Shared with the publisher (split lines joined there are routed again) and the
    /// spool's reader (what it reads back is routed as it is read).
    pub router: Arc<ArcSwap<Router>>,
    security: ArcSwapOption<Security>,
    /// `limits.idle_timeout_ms` and `limits.request_timeout_ms`; 0: off.
    idle_timeout_ms: AtomicU64,
    request_timeout_ms: AtomicU64,
}

fn duration(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl Live {
    pub fn new(config: &Config, router: Router) -> Live {
        Live {
            router: Arc::new(ArcSwap::from_pointee(router)),
            security: ArcSwapOption::from(Security::from_config(config).map(Arc::new)),
            idle_timeout_ms: AtomicU64::new(config.limits.idle_timeout_ms),
            request_timeout_ms: AtomicU64::new(config.limits.request_timeout_ms),
        }
    }

    /// Takes the new configuration's routing rules (already built: building can fail),
    /// keys and timeouts.
    pub fn update(&self, config: &Config, router: Router) {
        self.router.store(Arc::new(router));
        self.security
            .store(Security::from_config(config).map(Arc::new));
        self.idle_timeout_ms
            .store(config.limits.idle_timeout_ms, Ordering::Relaxed);
        self.request_timeout_ms
            .store(config.limits.request_timeout_ms, Ordering::Relaxed);
    }

    /// The handshake a new connection must pass, if any.
    pub fn security(&self) -> Option<Arc<Security>> {
        self.security.load_full()
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        duration(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    pub fn request_timeout(&self) -> Option<Duration> {
        duration(self.request_timeout_ms.load(Ordering::Relaxed))
    }
}
