//! What a listener serves: its router, and for the API a front door that
//! answers a warm read before routing.
//!
//! A warm `GET /data/{id}` (the record's encoded body in the in-process
//! cache) is svc's hottest request, and it needs nothing axum's router
//! provides: matching the route, the extensions map and the path
//! parameters it fills, the extractors and the boxed handler future cost
//! more than the answer itself (docs/PERFORMANCE.md). Answered here, it
//! skips them and keeps everything a routed read has: the observe layer's
//! request id, span, in-flight gauge and latency histogram (under the same
//! route label), the in-flight bound, the cache-hit counters, the same
//! status, headers and body. Anything else, a cache miss included, is
//! routed as before.
//!
//! Only when neither rate limiting nor CORS is configured: both apply to
//! every read, through the router.

use std::convert::Infallible;

use axum::{
    Router,
    http::{Method, Request, StatusCode},
    response::{IntoResponse, Response},
};
use futures_util::future::{Either, ready};
use tower::ServiceExt;
use uuid::Uuid;

use super::{AppState, HttpSettings, data, observe::ObserveLayer};
use crate::metrics;

/// A listener's service: the router, behind the warm-read front for the API.
#[derive(Clone)]
pub struct Front {
    router: Router,
    warm: Option<WarmReads>,
}

impl From<Router> for Front {
    /// Everything routed: the listeners other than the API's.
    fn from(router: Router) -> Self {
        Self { router, warm: None }
    }
}

impl Front {
    /// The API's `router`, with warm reads of `state` answered before it
    /// unless `settings` configure rate limiting or CORS.
    pub fn api(router: Router, state: AppState, settings: &HttpSettings) -> Self {
        let per_client = settings.rate_limit.is_some() || !settings.cors_origins.is_empty();
        Self {
            router,
            warm: (!per_client).then(|| WarmReads {
                state,
                observe: ObserveLayer::new(settings.request_timeout),
            }),
        }
    }

    /// The answer to `request`: at once for a warm read, else the router's.
    pub fn call<B>(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response, Infallible>> + Send + use<B>
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        match self.warm.as_ref().and_then(|warm| warm.answer(&request)) {
            Some(response) => Either::Left(ready(Ok(response))),
            None => Either::Right(self.router.clone().oneshot(request)),
        }
    }
}

#[derive(Clone)]
struct WarmReads {
    state: AppState,
    observe: ObserveLayer,
}

impl WarmReads {
    /// The answer to a `GET /data/{id}` whose record is in the in-process
    /// cache (or to any read, when the server is at capacity); `None` for
    /// everything the router must answer.
    fn answer<B>(&self, request: &Request<B>) -> Option<Response> {
        if request.method() != Method::GET {
            return None;
        }
        // A UUID has no character that percent-decoding would change, so
        // this is the id the routed handler would parse; anything else
        // (a malformed id, another path) goes to the router.
        let id = request.uri().path().strip_prefix(data::RECORD_PREFIX)?;
        let id = Uuid::try_parse(id).ok()?;
        if let Err(full) = self.state.in_flight.check_room() {
            return Some(
                self.observe
                    .answer_at_once(request, data::RECORD_ROUTE, || full.into_response()),
            );
        }
        let body = self.state.cache.lookup_local(id)?;
        Some(
            self.observe
                .answer_at_once(request, data::RECORD_ROUTE, || {
                    metrics::cache_hit();
                    data::json_body(StatusCode::OK, body)
                }),
        )
    }
}
