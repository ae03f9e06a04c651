//! Per-tenant rate limits: a token bucket per tenant, so that one noisy tenant cannot
//! take the whole gateway. Events over the limit are dropped and counted per tenant.

use std::collections::HashMap;
use std::time::Instant;

/// The buckets of every tenant seen recently.
pub struct TenantLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<Box<[u8]>, Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets kept before the full ones (tenants quiet for a while) are forgotten.
const MAX_BUCKETS: usize = 10_000;

impl TenantLimiter {
    /// `rate` events per second per tenant, bursts up to `burst` (at least `rate`);
    /// `None` when `rate` is 0 (no limit).
    pub fn new(rate: u64, burst: u64) -> Option<TenantLimiter> {
        (rate > 0).then(|| TenantLimiter {
            rate: rate as f64,
            burst: burst.max(rate) as f64,
            buckets: HashMap::new(),
        })
    }

    /// How many of `n` events of `tenant` may pass at `now`.
    pub fn take(&mut self, tenant: &[u8], n: u64, now: Instant) -> u64 {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(tenant) {
            let (rate, burst) = (self.rate, self.burst);
            // A bucket that has refilled is the same as a new one: forget those.
            self.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let burst = self.burst;
        let bucket = self.buckets.entry(tenant.into()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        let allowed = (bucket.tokens.floor() as u64).min(n);
        bucket.tokens -= allowed as f64;
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_tenant() {
        let mut l = TenantLimiter::new(10, 20).unwrap();
        let t0 = Instant::now();
        assert_eq!(l.take(b"a", 25, t0), 20, "the burst");
        assert_eq!(l.take(b"a", 5, t0), 0);
        assert_eq!(l.take(b"b", 5, t0), 5, "tenants have their own buckets");
        assert_eq!(
            l.take(b"a", 100, t0 + Duration::from_millis(500)),
            5,
            "10/s refill"
        );
        assert_eq!(
            l.take(b"a", 100, t0 + Duration::from_secs(60)),
            20,
            "capped at the burst"
        );
        assert!(TenantLimiter::new(0, 5).is_none());
    }
}
