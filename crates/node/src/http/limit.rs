//! The HTTP API's rate per credential (`limits.api_requests_per_second`): a token
//! bucket per credential, counted on this node only (a cluster-wide count would cost a
//! shared counter on every call). `api::check_rate` answers 429 from it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Credentials with a bucket of their own; past it, new ones share one bucket.
const MAX_CREDENTIALS: usize = 10_000;

/// The soonest a full map is swept again: a flood of new credentials costs one sweep
/// per interval, not one per call.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every credential's bucket under one lock: held for a hash lookup and a little
/// arithmetic (a sweep of the map at most once a second).
pub(crate) struct ApiLimits {
    /// `None`: no limit.
    rate: Option<f64>,
    burst: f64,
    /// Keys the hash: no credential is kept, and nobody can aim at a bucket's key.
    hasher: RandomState,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_credential: HashMap<u64, Bucket>,
    /// Shared by the credentials that found the map full.
    overflow: Bucket,
    swept: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn tokens_at(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }

    fn take(&mut self, cost: f64, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.tokens = self.tokens_at(rate, burst, now);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        Err(Duration::from_secs_f64((cost - self.tokens) / rate))
    }
}

impl ApiLimits {
    pub(crate) fn new(per_second: u32, burst: u32) -> ApiLimits {
        let now = Instant::now();
        let burst = f64::from(burst.max(1));
        ApiLimits {
            rate: (per_second > 0).then(|| f64::from(per_second)),
            burst,
            hasher: RandomState::new(),
            buckets: Mutex::new(Buckets {
                by_credential: HashMap::new(),
                overflow: Bucket::full(burst, now),
                swept: now,
            }),
        }
    }

    /// Takes `cost` calls from `credential`'s bucket at `now`; when it holds fewer,
    /// takes nothing and says how long until it holds enough.
    pub(crate) fn take(&self, credential: &str, cost: u32, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let (burst, cost) = (self.burst, f64::from(cost));
        let key = self.hasher.hash_one(credential);
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let known = b.by_credential.contains_key(&key);
        if !known
            && b.by_credential.len() >= MAX_CREDENTIALS
            && now.saturating_duration_since(b.swept) >= SWEEP_EVERY
        {
            // A full bucket is what a new credential gets: forgetting it loses nothing.
            b.by_credential
                .retain(|_, bucket| bucket.tokens_at(rate, burst, now) < burst);
            b.swept = now;
        }
        let bucket = if known || b.by_credential.len() < MAX_CREDENTIALS {
            b.by_credential
                .entry(key)
                .or_insert_with(|| Bucket::full(burst, now))
        } else {
            &mut b.overflow
        };
        bucket.take(cost, rate, burst, now)
    }

    #[cfg(test)]
    fn credentials(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_credential
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_served_then_calls_come_at_the_rate() {
        let l = ApiLimits::new(10, 100);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(l.take("key-a", 1, t0).is_ok());
        }
        let wait = l.take("key-a", 1, t0).expect_err("past the burst");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // 0.25 s later: two calls' worth came back.
        let t1 = t0 + Duration::from_millis(250);
        assert!(l.take("key-a", 2, t1).is_ok());
        assert!(l.take("key-a", 1, t1).is_err());
        // The refill stops at the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(l.take("key-a", 100, t2).is_ok());
        assert!(l.take("key-a", 1, t2).is_err());
    }

    #[test]
    fn credentials_have_buckets_of_their_own() {
        let l = ApiLimits::new(1, 100);
        let t0 = Instant::now();
        assert!(l.take("key-a", 100, t0).is_ok());
        assert!(l.take("key-a", 1, t0).is_err());
        assert!(l.take("key-b", 100, t0).is_ok());
    }

    #[test]
    fn a_refused_take_takes_nothing() {
        let l = ApiLimits::new(1, 100);
        let t0 = Instant::now();
        assert!(l.take("key-a", 60, t0).is_ok());
        let wait = l.take("key-a", 50, t0).expect_err("10 short");
        assert!((wait.as_secs_f64() - 10.0).abs() < 1e-6, "{wait:?}");
        assert!(l.take("key-a", 40, t0).is_ok());
    }

    #[test]
    fn zero_is_no_limit() {
        let l = ApiLimits::new(0, 100);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(l.take("key-a", 100, t0).is_ok());
        }
        assert_eq!(l.credentials(), 0);
    }

    #[test]
    fn distinct_credentials_never_grow_the_map_past_its_bound() {
        let l = ApiLimits::new(1, 100);
        let t0 = Instant::now();
        for i in 0..MAX_CREDENTIALS {
            assert!(l.take(&format!("key-{i}"), 50, t0).is_ok());
        }
        // Full and every bucket in use: newcomers share the overflow bucket.
        let t1 = t0 + SWEEP_EVERY;
        for i in 0..100 {
            assert!(l.take(&format!("new-{i}"), 1, t1).is_ok());
        }
        assert!(l.take("new-x", 1, t1).is_err());
        assert_eq!(l.credentials(), MAX_CREDENTIALS);
        // Known credentials keep their own.
        assert!(l.take("key-0", 1, t1).is_ok());
        // Once their buckets refilled, the idle ones are forgotten and newcomers get
        // their own again.
        let t2 = t1 + Duration::from_secs(50);
        assert!(l.take("new-y", 100, t2).is_ok());
        assert_eq!(l.credentials(), 1);
    }
}
