//! Admission control for `/data`, each part answering a refusal at once
//! with a problem+json body instead of letting work pile up:
//! - per-client rate limits (governor's keyed GCRA limiter), keyed on the
//!   client address (`client_address`);
//! - API keys for writes, compared in constant time (subtle);
//! - overload shedding: past `SVC_MAX_IN_FLIGHT` requests in the handlers,
//!   503 at once (a place is a permit of a Tokio semaphore, taken without
//!   waiting).
//!
//! An extractor ([`Admitted`]) that every `/data` handler takes first,
//! rather than route layers: a layer boxes the route once more and clones
//! it on every request, which cost a warm read a tenth of its rate
//! (`scripts/bench/before-after.sh`).

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::{HeaderMap, Method, header, request::Parts},
};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use ipnet::IpNet;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client_address::client_address;
use crate::{metrics::Metrics, problem::ApiError};

/// How `/data` admits requests; see the `SVC_*` settings of `svc serve`.
#[derive(Debug, Clone, Default)]
pub struct GuardSettings {
    /// Requests per second and burst per client address, when limited.
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
    /// Peers whose `Forwarded`/`X-Forwarded-For` headers name the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Keys that writes need; empty: writes are open.
    pub api_keys: Vec<crate::config::ApiKey>,
    /// Requests in the handlers at once.
    pub max_in_flight: usize,
}

/// The checks a `/data` request passes before its handler runs.
pub struct Guard {
    rate_limit: Option<RateLimit>,
    trusted_proxies: Vec<IpNet>,
    api_keys: Vec<Box<[u8]>>,
    places: Arc<Semaphore>,
    metrics: Metrics,
}

impl Guard {
    pub fn new(settings: &GuardSettings, metrics: Metrics) -> Self {
        Self {
            rate_limit: settings.rate_limit.map(|(per_second, burst)| {
                RateLimit::new(Quota::per_second(per_second).allow_burst(burst))
            }),
            trusted_proxies: settings.trusted_proxies.clone(),
            api_keys: settings
                .api_keys
                .iter()
                .map(|k| k.expose().as_bytes().into())
                .collect(),
            places: Arc::new(Semaphore::new(settings.max_in_flight)),
            metrics,
        }
    }

    /// The client's rate, then (for writes) its API key, then a place among
    /// those in flight: neither floods nor strangers take capacity.
    fn admit(&self, parts: &Parts) -> Result<Admitted, ApiError> {
        if let Some(limit) = &self.rate_limit
            && let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>()
        {
            let client = client_address(peer.ip(), &parts.headers, &self.trusted_proxies);
            if let Err(wait_secs) = limit.check(client) {
                self.metrics.request_rate_limited();
                return Err(ApiError::rate_limited(wait_secs));
            }
        }
        if !self.api_keys.is_empty()
            && parts.method == Method::POST
            && !presented_key(&parts.headers).is_some_and(|key| self.admits(key))
        {
            return Err(ApiError::unauthorized());
        }
        match self.places.clone().try_acquire_owned() {
            Ok(place) => Ok(Admitted { _place: place }),
            Err(_) => {
                self.metrics.request_shed();
                Err(ApiError::unavailable(
                    "the server is at capacity; retry shortly",
                ))
            }
        }
    }

    /// Whether `presented` is one of the keys. Every key is compared in full
    /// whatever matches, so timing says nothing about the keys.
    fn admits(&self, presented: &[u8]) -> bool {
        self.api_keys
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.as_ref().ct_eq(presented)
            })
            .into()
    }
}

/// A request let through the guard; its place among those in flight is
/// held until the handler ends (or the client goes away).
pub struct Admitted {
    _place: OwnedSemaphorePermit,
}

impl<S> FromRequestParts<S> for Admitted
where
    Arc<Guard>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Arc::<Guard>::from_ref(state).admit(parts)
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get("x-api-key") {
        return Some(value.as_bytes());
    }
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
}

/// A GCRA limiter per client address.
struct RateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU32,
}

/// Checks between two sweeps of the clients whose bucket is full again:
/// those need no state, so memory follows the clients seen lately.
const SWEEP_EVERY: u32 = 4096;

impl RateLimit {
    fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU32::new(0),
        }
    }

    /// Lets one request of `client` through, or says in how many whole
    /// seconds (at least one) the next would be.
    fn check(&self, client: IpAddr) -> Result<(), u32> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            u32::try_from(wait.as_secs_f64().ceil() as u64)
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota::per_second(NonZeroU32::new(per_second).unwrap())
            .allow_burst(NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn a_burst_is_allowed_then_the_client_waits() {
        let limit = RateLimit::new(quota(1, 3));
        assert!((0..3).all(|_| limit.check(CLIENT).is_ok()));
        assert_eq!(limit.check(CLIENT), Err(1));
    }

    #[test]
    fn clients_have_their_own_buckets() {
        let limit = RateLimit::new(quota(1, 1));
        assert!(limit.check(CLIENT).is_ok());
        assert!(limit.check(CLIENT).is_err());
        assert!(limit.check("10.0.0.2".parse().unwrap()).is_ok());
    }

    fn guard_with_keys(keys: &[&str]) -> Guard {
        Guard {
            rate_limit: None,
            trusted_proxies: Vec::new(),
            api_keys: keys.iter().map(|k| k.as_bytes().into()).collect(),
            places: Arc::new(Semaphore::new(1)),
            metrics: Metrics::new(),
        }
    }

    #[test]
    fn keys_are_matched_exactly() {
        let guard = guard_with_keys(&["alpha", "beta-key"]);
        assert!(guard.admits(b"alpha"));
        assert!(guard.admits(b"beta-key"));
        assert!(!guard.admits(b"alph"));
        assert!(!guard.admits(b"alphaa"));
        assert!(!guard.admits(b""));
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(presented_key(&headers), Some(&b"s3cret"[..]));
        headers.insert("x-api-key", "other".parse().unwrap());
        assert_eq!(presented_key(&headers), Some(&b"other"[..]));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
