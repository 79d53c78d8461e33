//! The process-wide Prometheus recorder and the names of svc's metrics.
//!
//! The recorder is global (the `metrics` facade has one per process), so it
//! is installed once, on first use, and every server in the process renders
//! the same registry.

mod per_thread;

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
pub use per_thread::{cache_hit, memory_hit, record_latency, request_began, request_ended};

pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
pub const HTTP_SHED: &str = "svc_http_shed_total";
pub const HTTP_RATE_LIMITED: &str = "svc_http_rate_limited_total";
pub const CACHE_HITS: &str = "svc_cache_hits_total";
/// Hits served from the in-process layer, without a Redis round trip (a subset of CACHE_HITS).
pub const CACHE_HITS_MEMORY: &str = "svc_cache_memory_hits_total";
pub const CACHE_MISSES: &str = "svc_cache_misses_total";
pub const CACHE_ERRORS: &str = "svc_cache_errors_total";
/// Cache calls skipped because the circuit breaker is open.
pub const CACHE_SKIPPED: &str = "svc_cache_skipped_total";
pub const PUBLISH_DURATION: &str = "svc_publish_duration_seconds";
pub const PUBLISH_FAILURES: &str = "svc_publish_failures_total";
/// Publishes sent again, same id, after the connection was lost before the confirm.
pub const PUBLISH_RETRIES: &str = "svc_publish_retries_total";
pub const CONSUMER_BATCH_SIZE: &str = "svc_consumer_batch_size";
pub const CONSUMER_INSERT_DURATION: &str = "svc_consumer_insert_duration_seconds";
pub const CONSUMER_MESSAGES: &str = "svc_consumer_messages_total";
pub const CONSUMER_DB_RETRIES: &str = "svc_consumer_db_retries_total";
/// Messages waiting in a queue, by queue name, as the consumer last saw it.
pub const QUEUE_MESSAGES: &str = "svc_queue_messages";
/// Messages seen arriving in the dead-letter queue, whoever put them there.
pub const DEAD_LETTERED_SEEN: &str = "svc_dead_lettered_total";

/// Latency buckets in seconds: fine below the 500 ms SLO, coarse above it.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The handle that renders the Prometheus text, installing the recorder the
/// first time it is asked for.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(CONSUMER_BATCH_SIZE.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("the metrics recorder is installed once per process");
        let upkeep = handle.clone();
        // Upkeep drains histogram samples into buckets; without it an idle
        // exporter would hold samples until the next scrape.
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("can spawn the metrics upkeep thread");
        handle
    })
}

/// Handles of metrics touched on hot paths, registered once: looking a
/// metric up by name on each request costs more than recording it. The
/// in-flight gauge and the hit counters are counted per thread
/// (`per_thread`) and copied here when scraped.
pub struct HotPath {
    in_flight: Gauge,
    cache_hits: Counter,
    cache_hits_memory: Counter,
    pub cache_misses: Counter,
    pub publish_duration: Histogram,
}

/// The hot-path handles, registered (after the recorder) on first use.
pub fn hot_path() -> &'static HotPath {
    static HOT_PATH: OnceLock<HotPath> = OnceLock::new();
    HOT_PATH.get_or_init(|| {
        handle();
        HotPath {
            in_flight: ::metrics::gauge!(HTTP_REQUESTS_IN_FLIGHT),
            cache_hits: ::metrics::counter!(CACHE_HITS),
            cache_hits_memory: ::metrics::counter!(CACHE_HITS_MEMORY),
            cache_misses: ::metrics::counter!(CACHE_MISSES),
            publish_duration: ::metrics::histogram!(PUBLISH_DURATION),
        }
    })
}

/// The Prometheus text of every metric: the exporter's registry, with the
/// per-thread counts summed into it, then the request latency histograms.
pub fn render() -> String {
    let totals = per_thread::totals();
    let hot = hot_path();
    hot.in_flight.set(totals.in_flight as f64);
    hot.cache_hits.absolute(totals.cache_hits);
    hot.cache_hits_memory.absolute(totals.cache_hits_memory);
    let mut text = handle().render();
    per_thread::render_latencies(&mut text);
    text
}
