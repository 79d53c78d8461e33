//! svc's Prometheus metrics. Each application (one `svc serve`, one
//! `svc consume`) owns its own registry and renders it at its `/metrics`:
//! nothing is process-wide, so two applications in one process (as in the
//! tests) never see each other's figures.
//!
//! Every event has a method here, so call sites say what happened while the
//! names, labels and buckets live in one place.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use axum::http::{Method, StatusCode};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
const HTTP_SHED: &str = "svc_http_shed_total";
const HTTP_RATE_LIMITED: &str = "svc_http_rate_limited_total";
const CACHE_HITS: &str = "svc_cache_hits_total";
/// Hits served from the in-process layer, without a Redis round trip (a subset of CACHE_HITS).
const CACHE_HITS_MEMORY: &str = "svc_cache_memory_hits_total";
const CACHE_MISSES: &str = "svc_cache_misses_total";
const CACHE_ERRORS: &str = "svc_cache_errors_total";
/// Cache calls skipped because the circuit breaker is open.
const CACHE_SKIPPED: &str = "svc_cache_skipped_total";
const PUBLISH_DURATION: &str = "svc_publish_duration_seconds";
const PUBLISH_FAILURES: &str = "svc_publish_failures_total";
/// Publishes sent again, same id, after the connection was lost before the confirm.
const PUBLISH_RETRIES: &str = "svc_publish_retries_total";
const CONSUMER_BATCH_SIZE: &str = "svc_consumer_batch_size";
const CONSUMER_INSERT_DURATION: &str = "svc_consumer_insert_duration_seconds";
const CONSUMER_MESSAGES: &str = "svc_consumer_messages_total";
const CONSUMER_DB_RETRIES: &str = "svc_consumer_db_retries_total";
/// Messages waiting in a queue, by queue name, as the consumer last saw it.
const QUEUE_MESSAGES: &str = "svc_queue_messages";
/// Messages seen arriving in the dead-letter queue, whoever put them there.
const DEAD_LETTERED_SEEN: &str = "svc_dead_lettered_total";

/// Latency buckets in seconds: fine below the 500 ms SLO, coarse above it.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];

/// How often histogram samples are folded into their buckets, so that an
/// exporter nobody scrapes holds a bounded amount of memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// One application's metrics. Cloning shares the registry.
#[derive(Clone)]
pub struct Metrics(Arc<Registry>);

struct Registry {
    recorder: PrometheusRecorder,
    /// Handles of the series without per-event labels, registered once.
    in_flight: Gauge,
    shed: Counter,
    rate_limited: Counter,
    cache_hits: Counter,
    cache_memory_hits: Counter,
    cache_misses: Counter,
    cache_errors: Counter,
    cache_skipped: Counter,
    publish_duration: Histogram,
    publish_retries: Counter,
    batch_size: Histogram,
    insert_duration: Histogram,
    db_retries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(CONSUMER_BATCH_SIZE.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let counter = |name| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        let histogram = |name| recorder.register_histogram(&Key::from_static_name(name), &METADATA);
        let registry = Registry {
            in_flight: recorder
                .register_gauge(&Key::from_static_name(HTTP_REQUESTS_IN_FLIGHT), &METADATA),
            shed: counter(HTTP_SHED),
            rate_limited: counter(HTTP_RATE_LIMITED),
            cache_hits: counter(CACHE_HITS),
            cache_memory_hits: counter(CACHE_HITS_MEMORY),
            cache_misses: counter(CACHE_MISSES),
            cache_errors: counter(CACHE_ERRORS),
            cache_skipped: counter(CACHE_SKIPPED),
            publish_duration: histogram(PUBLISH_DURATION),
            publish_retries: counter(PUBLISH_RETRIES),
            batch_size: histogram(CONSUMER_BATCH_SIZE),
            insert_duration: histogram(CONSUMER_INSERT_DURATION),
            db_retries: counter(CONSUMER_DB_RETRIES),
            recorder,
        };
        let registry = Arc::new(registry);
        spawn_upkeep(Arc::downgrade(&registry));
        Self(registry)
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.0.recorder.handle().render()
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.0
            .recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.0
            .recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// Counts a request in the in-flight gauge until the guard is dropped
    /// (also when the client goes away and the request's future with it).
    pub fn request_began(&self) -> InFlight {
        self.0.in_flight.increment(1);
        InFlight(self.0.in_flight.clone())
    }

    /// One answered request, under its route pattern, method and status.
    pub fn request_finished(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        took: Duration,
    ) {
        let labels = vec![
            Label::new("route", route.to_owned()),
            Label::from_static_parts("method", method_label(method)),
            Label::new("status", status.as_str().to_owned()),
        ];
        self.0
            .recorder
            .register_histogram(&Key::from_parts(HTTP_REQUEST_DURATION, labels), &METADATA)
            .record(took);
    }

    /// A request refused at once because the server was at capacity.
    pub fn request_shed(&self) {
        self.0.shed.increment(1);
    }

    pub fn request_rate_limited(&self) {
        self.0.rate_limited.increment(1);
    }

    pub fn cache_hit(&self) {
        self.0.cache_hits.increment(1);
    }

    /// A hit in the in-process layer; also counted by `cache_hit`.
    pub fn cache_memory_hit(&self) {
        self.0.cache_memory_hits.increment(1);
    }

    pub fn cache_miss(&self) {
        self.0.cache_misses.increment(1);
    }

    pub fn cache_error(&self) {
        self.0.cache_errors.increment(1);
    }

    pub fn cache_skipped(&self) {
        self.0.cache_skipped.increment(1);
    }

    pub fn publish_confirmed(&self, took: Duration) {
        self.0.publish_duration.record(took);
    }

    /// A write not confirmed by the broker, by why (`PublishError::reason`).
    pub fn publish_failed(&self, reason: &'static str) {
        self.counter(
            PUBLISH_FAILURES,
            vec![Label::from_static_parts("reason", reason)],
        )
        .increment(1);
    }

    pub fn publish_retried(&self) {
        self.0.publish_retries.increment(1);
    }

    pub fn batch_taken(&self, messages: usize) {
        self.0.batch_size.record(messages as f64);
    }

    pub fn insert_took(&self, took: Duration) {
        self.0.insert_duration.record(took);
    }

    pub fn database_retried(&self) {
        self.0.db_retries.increment(1);
    }

    /// Messages the consumer settled, by outcome (`persisted`, `returned`).
    pub fn messages_settled(&self, outcome: &'static str, count: usize) {
        self.counter(
            CONSUMER_MESSAGES,
            vec![Label::from_static_parts("outcome", outcome)],
        )
        .increment(count as u64);
    }

    /// Messages the consumer dead-lettered, by reason (`malformed`, `refused_by_store`).
    pub fn messages_dead_lettered(&self, reason: &'static str, count: usize) {
        self.counter(
            CONSUMER_MESSAGES,
            vec![
                Label::from_static_parts("outcome", "dead_lettered"),
                Label::from_static_parts("reason", reason),
            ],
        )
        .increment(count as u64);
    }

    pub fn queue_depth(&self, queue: &str, messages: u32) {
        self.gauge(QUEUE_MESSAGES, vec![Label::new("queue", queue.to_owned())])
            .set(f64::from(messages));
    }

    pub fn dead_letters_seen(&self, queue: &str, messages: u64) {
        self.counter(
            DEAD_LETTERED_SEEN,
            vec![Label::new("queue", queue.to_owned())],
        )
        .increment(messages);
    }
}

/// A request in the in-flight gauge; dropping it takes the request out.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1);
    }
}

/// Folds histogram samples into buckets every few seconds for as long as
/// the registry lives.
fn spawn_upkeep(registry: Weak<Registry>) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            while let Some(registry) = registry.upgrade() {
                let handle = registry.recorder.handle();
                drop(registry);
                handle.run_upkeep();
                drop(handle);
                std::thread::sleep(UPKEEP_EVERY);
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the metrics upkeep thread; histograms are folded at each scrape only");
    }
}

/// Methods with their own label; anything else is counted as `OTHER`, so a
/// client cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_registries_do_not_share_figures() {
        let one = Metrics::new();
        let other = Metrics::new();
        one.cache_hit();
        one.publish_failed("lost");
        assert!(one.render().contains("svc_cache_hits_total 1"));
        assert!(
            one.render()
                .contains(r#"svc_publish_failures_total{reason="lost"} 1"#)
        );
        assert!(other.render().contains("svc_cache_hits_total 0"));
        assert!(!other.render().contains("svc_publish_failures_total{"));
    }

    #[test]
    fn requests_are_histograms_by_route_method_and_status() {
        let metrics = Metrics::new();
        let in_flight = metrics.request_began();
        assert!(metrics.render().contains("http_requests_in_flight 1"));
        metrics.request_finished(
            "/data/{id}",
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(3),
        );
        drop(in_flight);
        let text = metrics.render();
        assert!(text.contains("http_requests_in_flight 0"), "{text}");
        assert!(
            text.contains(r#"http_request_duration_seconds_bucket{route="/data/{id}",method="GET",status="200",le="0.005"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
