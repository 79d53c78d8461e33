//! Admission control for `/data`: overload shedding, per-client rate
//! limiting and optional API keys for writes. Each answers at once, with a
//! problem+json body, instead of letting work pile up.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::ApiError;

/// Requests allowed in `/data` handlers at once; past it, 503 at once.
/// Checked by the handlers themselves (one atomic counter, no layer of its
/// own): it is on every request.
#[derive(Debug)]
pub struct InFlightLimit {
    admitted: AtomicUsize,
    max: usize,
}

impl InFlightLimit {
    pub fn new(max: usize) -> Self {
        Self {
            admitted: AtomicUsize::new(0),
            max,
        }
    }

    /// A place for one request, held until the returned guard is dropped;
    /// a 503 problem when every place is taken.
    pub fn admit(&self) -> Result<Admission<'_>, ApiError> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Self::full());
        }
        Ok(Admission(&self.admitted))
    }

    /// For a request answered at once, which holds no place while others
    /// wait: refused as `admit` would refuse it when every place is taken,
    /// without writing the counter both workers share.
    pub fn check_room(&self) -> Result<(), ApiError> {
        if self.admitted.load(Ordering::Acquire) >= self.max {
            return Err(Self::full());
        }
        Ok(())
    }

    fn full() -> ApiError {
        ::metrics::counter!(crate::metrics::HTTP_SHED).increment(1);
        ApiError::unavailable("the server is at capacity; retry shortly")
    }
}

/// One admitted request; leaving (or being dropped) frees its place.
#[must_use = "the place is freed when the admission is dropped"]
pub struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket per client address: `per_second` tokens refill, up to `burst`.
#[derive(Clone)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    shards: Arc<[Mutex<HashMap<IpAddr, Bucket>>; 16]>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets kept per shard before idle ones (full again) are dropped.
const SHARD_SOFT_LIMIT: usize = 4096;

impl RateLimit {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            shards: Arc::new(std::array::from_fn(|_| Mutex::new(HashMap::new()))),
        }
    }

    /// Takes one token for `client`, or says how long until one is available.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[shard_of(client)];
        let mut buckets = shard.lock().expect("never poisoned");
        // Only a new client pays for the sweep; known ones never do.
        if buckets.len() > SHARD_SOFT_LIMIT && !buckets.contains_key(&client) {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.saturating_duration_since(b.updated) < full_after);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

fn shard_of(client: IpAddr) -> usize {
    let last = match client {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    usize::from(last) % 16
}

/// API keys that writes must carry (`Authorization: Bearer <key>` or
/// `X-Api-Key: <key>`). Never printed.
#[derive(Clone)]
pub struct ApiKeys(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(Arc::new(
            keys.into_iter().map(|k| k.as_bytes().to_vec()).collect(),
        ))
    }

    /// Whether `presented` is one of the keys, comparing every key in full
    /// whatever matches, so timing says nothing about the keys.
    pub fn admits(&self, presented: &[u8]) -> bool {
        self.0
            .iter()
            .fold(false, |found, key| found | constant_time_eq(key, presented))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
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

/// The checks made before a `/data` handler runs, each only when configured:
/// the client's rate, then (for writes) its API key. A layer of its own,
/// applied to each handler, that answers a refusal at once.
#[derive(Clone, Default)]
pub struct Guard {
    pub rate_limit: Option<RateLimit>,
    pub api_keys: Option<ApiKeys>,
}

impl Guard {
    /// The refusal `request` gets, if any.
    fn refusal(&self, request: &Request) -> Option<ApiError> {
        if let Some(limit) = &self.rate_limit {
            let client = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip());
            if let Some(client) = client
                && let Err(wait) = limit.check(client, Instant::now())
            {
                ::metrics::counter!(crate::metrics::HTTP_RATE_LIMITED).increment(1);
                return Some(ApiError::rate_limited(wait.as_secs().max(1) as u32));
            }
        }
        if let Some(keys) = &self.api_keys
            && request.method() == Method::POST
            && !presented_key(request.headers()).is_some_and(|key| keys.admits(key))
        {
            return Some(ApiError::unauthorized());
        }
        None
    }
}

impl<S> Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S> Service<Request> for Guarded<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.guard.refusal(&request) {
            Some(refused) => Either::Left(ready(Ok(refused.into_response()))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn places_are_taken_and_given_back() {
        let limit = InFlightLimit::new(2);
        let first = limit.admit().unwrap();
        let _second = limit.admit().unwrap();
        let refused = limit.admit().err().unwrap().into_response();
        assert_eq!(
            refused.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        drop(first);
        assert!(limit.admit().is_ok());
    }

    #[test]
    fn an_instant_answer_is_refused_only_when_every_place_is_taken() {
        let limit = InFlightLimit::new(1);
        assert!(limit.check_room().is_ok());
        assert!(limit.check_room().is_ok(), "checking takes no place");
        let only = limit.admit().unwrap();
        assert!(limit.check_room().is_err());
        drop(only);
        assert!(limit.check_room().is_ok());
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let limit = RateLimit::new(10, 3);
        let start = Instant::now();
        assert!((0..3).all(|_| limit.check(CLIENT, start).is_ok()));
        let wait = limit.check(CLIENT, start).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(
            limit
                .check(CLIENT, start + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            limit
                .check(CLIENT, start + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn clients_have_their_own_buckets() {
        let limit = RateLimit::new(1, 1);
        let now = Instant::now();
        assert!(limit.check(CLIENT, now).is_ok());
        assert!(limit.check(CLIENT, now).is_err());
        assert!(limit.check("10.0.0.2".parse().unwrap(), now).is_ok());
    }

    #[test]
    fn keys_are_matched_exactly() {
        let keys = ApiKeys::new(["alpha", "beta-key"]);
        assert!(keys.admits(b"alpha"));
        assert!(keys.admits(b"beta-key"));
        assert!(!keys.admits(b"alph"));
        assert!(!keys.admits(b"alphaa"));
        assert!(!keys.admits(b""));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
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
