//! API keys and per-key rate limits.
//!
//! Keys are compared by SHA-256 digest, so the config may hold only digests. Each key has a
//! token bucket of `burst` tokens refilled at `requestsPerMinute / 60` per second; a request
//! takes one token or is refused with the time until the next token (the `Retry-After`).
//! Buckets live outside the configuration snapshot, keyed by key name, so a config reload keeps
//! their state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::config::{ApiKey, key_digest};
use crate::error::ApiError;

/// A token bucket. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(requests_per_minute: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            per_second: f64::from(requests_per_minute) / 60.0,
            tokens: capacity,
            last: now,
        }
    }

    /// Changes the parameters, keeping the tokens already earned (capped at the new burst).
    pub fn reconfigure(&mut self, requests_per_minute: u32, burst: u32, now: Instant) {
        self.refill(now);
        self.capacity = f64::from(burst.max(1));
        self.per_second = f64::from(requests_per_minute) / 60.0;
        self.tokens = self.tokens.min(self.capacity);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now.max(self.last);
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / self.per_second))
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let s = wait.as_secs_f64().ceil();
    if s.is_finite() { (s as u64).max(1) } else { 60 }
}

/// Rate-limit state of every key, across config reloads.
#[derive(Debug, Default)]
pub struct Limiters {
    buckets: Mutex<HashMap<String, (u32, u32, TokenBucket)>>,
}

impl Limiters {
    /// Admits one request for `key`, or returns the error to answer.
    pub fn admit(&self, key: &ApiKey, now: Instant) -> Result<(), ApiError> {
        let Some(rpm) = key.requests_per_minute else {
            return Ok(());
        };
        let burst = key.burst.unwrap_or(rpm);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = buckets
            .entry(key.name.clone())
            .or_insert_with(|| (rpm, burst, TokenBucket::new(rpm, burst, now)));
        if (entry.0, entry.1) != (rpm, burst) {
            entry.2.reconfigure(rpm, burst, now);
            entry.0 = rpm;
            entry.1 = burst;
        }
        entry.2.try_take(now).map_err(|wait| ApiError::RateLimited {
            key: key.name.clone(),
            retry_after_secs: retry_after_secs(wait),
        })
    }
}

/// The bearer token of a request, if any (`Authorization: Bearer KEY`; `api-key: KEY` too).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Finds the configured key a request presents.
pub fn authenticate<'a>(keys: &'a [ApiKey], headers: &HeaderMap) -> Result<&'a ApiKey, ApiError> {
    let token = presented_key(headers).ok_or(ApiError::MissingApiKey)?;
    let digest = key_digest(token);
    keys.iter()
        .find(|k| k.sha256 == digest)
        .ok_or(ApiError::InvalidApiKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, 3, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).expect_err("burst spent");
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
        // Half a second later, half a token: still refused, half a second to go.
        let wait = b
            .try_take(t0 + Duration::from_millis(500))
            .expect_err("half a token");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(b.try_take(t0 + Duration::from_secs(1)).is_ok());
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }

    #[test]
    fn keys_are_matched_by_digest() {
        let keys = vec![ApiKey {
            name: "a".into(),
            sha256: key_digest("sk-1"),
            requests_per_minute: None,
            burst: None,
        }];
        let mut h = HeaderMap::new();
        assert!(matches!(
            authenticate(&keys, &h),
            Err(ApiError::MissingApiKey)
        ));
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer sk-2".parse().expect("hv"),
        );
        assert!(matches!(
            authenticate(&keys, &h),
            Err(ApiError::InvalidApiKey)
        ));
        h.insert(
            http::header::AUTHORIZATION,
            "bearer sk-1".parse().expect("hv"),
        );
        assert_eq!(
            authenticate(&keys, &h).map(|k| k.name.as_str()).ok(),
            Some("a")
        );
    }

    #[test]
    fn limiter_survives_reconfiguration() {
        let l = Limiters::default();
        let t0 = Instant::now();
        let mut key = ApiKey {
            name: "a".into(),
            sha256: key_digest("x"),
            requests_per_minute: Some(1),
            burst: Some(2),
        };
        assert!(l.admit(&key, t0).is_ok());
        assert!(l.admit(&key, t0).is_ok());
        match l.admit(&key, t0) {
            Err(ApiError::RateLimited {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 60),
            other => panic!("{other:?}"),
        }
        // A larger burst does not hand out fresh tokens.
        key.burst = Some(10);
        assert!(l.admit(&key, t0).is_err());
        key.requests_per_minute = None;
        assert!(l.admit(&key, t0).is_ok());
    }
}
