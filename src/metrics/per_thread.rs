//! The metrics every request touches, kept per thread and added up when
//! `/metrics` is scraped.
//!
//! A shared atomic that both worker threads write on every request moves its
//! cache line from core to core each time, and the exporter's histogram
//! appends every sample to a shared list that it sorts into buckets later.
//! Here each thread writes only cells of its own; a scrape sums them. On a
//! warm read this took about 5 % of serve's CPU (docs/PERFORMANCE.md).

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::http::StatusCode;

use super::{HTTP_REQUEST_DURATION, LATENCY_BUCKETS};

/// The counts one thread keeps.
#[derive(Default)]
struct Counts {
    /// Requests this thread began minus those it finished: a request may end
    /// on another thread than it began on, so one thread's figure can be
    /// negative; the sum is the number in flight.
    in_flight: AtomicI64,
    cache_hits: AtomicU64,
    cache_hits_memory: AtomicU64,
}

/// The labels of one latency series: route, method, status.
type Labels = (Box<str>, &'static str, StatusCode);

/// One thread's latency histogram of one series.
struct Latencies {
    labels: Labels,
    /// A count per bucket of `LATENCY_BUCKETS`, not cumulative, then `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Every thread's cells, for the scrape to add up.
struct Registry {
    counts: Vec<Arc<Counts>>,
    latencies: Vec<Arc<Latencies>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    counts: Vec::new(),
    latencies: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // The registry only ever grows by whole entries: a panic elsewhere while
    // it was locked leaves nothing half-done.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    static COUNTS: Arc<Counts> = {
        let counts = Arc::new(Counts::default());
        registry().counts.push(counts.clone());
        counts
    };
    /// The series this thread has recorded, found by a short scan: a server
    /// has a handful of routes and statuses.
    static LATENCIES: RefCell<Vec<Arc<Latencies>>> = const { RefCell::new(Vec::new()) };
}

pub fn request_began() {
    COUNTS.with(|counts| counts.in_flight.fetch_add(1, Relaxed));
}

pub fn request_ended() {
    COUNTS.with(|counts| counts.in_flight.fetch_sub(1, Relaxed));
}

/// A read answered from the cache (either layer).
pub fn cache_hit() {
    COUNTS.with(|counts| counts.cache_hits.fetch_add(1, Relaxed));
}

/// A read answered from the in-process layer, without a Redis round trip.
pub fn memory_hit() {
    COUNTS.with(|counts| counts.cache_hits_memory.fetch_add(1, Relaxed));
}

/// Totals over every thread.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub in_flight: i64,
    pub cache_hits: u64,
    pub cache_hits_memory: u64,
}

pub fn totals() -> Totals {
    sum(&registry().counts)
}

fn sum(counts: &[Arc<Counts>]) -> Totals {
    counts.iter().fold(Totals::default(), |sum, counts| Totals {
        in_flight: sum.in_flight + counts.in_flight.load(Relaxed),
        cache_hits: sum.cache_hits + counts.cache_hits.load(Relaxed),
        cache_hits_memory: sum.cache_hits_memory + counts.cache_hits_memory.load(Relaxed),
    })
}

/// Records one request in the latency histogram of its route, method and status.
pub fn record_latency(route: &str, method: &'static str, status: StatusCode, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    // The first bucket whose bound is at least the value (`le` is inclusive);
    // past the last bound, `+Inf`.
    let bucket = LATENCY_BUCKETS.partition_point(|&bound| bound < seconds);
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    LATENCIES.with_borrow_mut(|seen| {
        let series = match seen
            .iter()
            .find(|s| s.labels.2 == status && s.labels.1 == method && *s.labels.0 == *route)
        {
            Some(series) => series,
            None => {
                let series = Arc::new(Latencies {
                    labels: (route.into(), method, status),
                    buckets: Default::default(),
                    sum_nanos: AtomicU64::new(0),
                });
                registry().latencies.push(series.clone());
                seen.push(series);
                seen.last().expect("just pushed")
            }
        };
        series.buckets[bucket].fetch_add(1, Relaxed);
        series.sum_nanos.fetch_add(nanos, Relaxed);
    });
}

/// Appends the latency histograms, summed over threads, in the Prometheus
/// text format (as the exporter writes its own histograms).
pub fn render_latencies(out: &mut String) {
    type Summed = ([u64; LATENCY_BUCKETS.len() + 1], u64);
    let mut summed: BTreeMap<Labels, Summed> = BTreeMap::new();
    for series in &registry().latencies {
        let (buckets, sum_nanos) = summed.entry(series.labels.clone()).or_default();
        for (total, cell) in buckets.iter_mut().zip(&series.buckets) {
            *total += cell.load(Relaxed);
        }
        *sum_nanos += series.sum_nanos.load(Relaxed);
    }
    if summed.is_empty() {
        return;
    }
    let name = HTTP_REQUEST_DURATION;
    let _ = writeln!(out, "# TYPE {name} histogram");
    for ((route, method, status), (buckets, sum_nanos)) in &summed {
        let labels = format!(
            r#"route="{}",method="{method}",status="{}""#,
            escape(route),
            status.as_str()
        );
        let mut cumulative = 0;
        for (index, count) in buckets.iter().enumerate() {
            cumulative += count;
            match LATENCY_BUCKETS.get(index) {
                Some(bound) => {
                    let _ = writeln!(
                        out,
                        r#"{name}_bucket{{{labels},le="{bound}"}} {cumulative}"#
                    );
                }
                None => {
                    let _ = writeln!(out, r#"{name}_bucket{{{labels},le="+Inf"}} {cumulative}"#);
                }
            }
        }
        let seconds = *sum_nanos as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {seconds}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
    out.push('\n');
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `text` about one made-up route, so that tests running at
    /// the same time (same process, same registry) do not disturb each other.
    fn lines_of(text: &str, route: &str) -> Vec<String> {
        let needle = format!(r#"route="{route}""#);
        text.lines()
            .filter(|line| line.contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn latencies_from_several_threads_add_up_in_cumulative_buckets() {
        let route = "/test/latencies";
        let record = move |micros| {
            record_latency(route, "GET", StatusCode::OK, Duration::from_micros(micros))
        };
        record(100); // 0.0001 s: first bucket (le 0.0005)
        record(500); // exactly on the first bound: still the first bucket
        std::thread::spawn(move || record(30_000)).join().unwrap(); // le 0.05
        std::thread::spawn(move || record(9_000_000))
            .join()
            .unwrap(); // past 5 s: +Inf

        let mut text = String::new();
        render_latencies(&mut text);
        let lines = lines_of(&text, route);
        let labels = r#"route="/test/latencies",method="GET",status="200""#;
        for expected in [
            format!(r#"http_request_duration_seconds_bucket{{{labels},le="0.0005"}} 2"#),
            format!(r#"http_request_duration_seconds_bucket{{{labels},le="0.025"}} 2"#),
            format!(r#"http_request_duration_seconds_bucket{{{labels},le="0.05"}} 3"#),
            format!(r#"http_request_duration_seconds_bucket{{{labels},le="5"}} 3"#),
            format!(r#"http_request_duration_seconds_bucket{{{labels},le="+Inf"}} 4"#),
            format!(r#"http_request_duration_seconds_sum{{{labels}}} 9.0306"#),
            format!(r#"http_request_duration_seconds_count{{{labels}}} 4"#),
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected} in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), LATENCY_BUCKETS.len() + 3, "{lines:#?}");
        assert!(text.starts_with("# TYPE http_request_duration_seconds histogram\n"));
    }

    #[test]
    fn threads_add_up_even_when_a_request_ends_on_another_thread() {
        let began_here = Arc::new(Counts::default());
        began_here.in_flight.store(3, Relaxed);
        began_here.cache_hits.store(5, Relaxed);
        let ended_there = Arc::new(Counts::default());
        ended_there.in_flight.store(-2, Relaxed);
        ended_there.cache_hits_memory.store(4, Relaxed);
        assert_eq!(
            sum(&[began_here, ended_there]),
            Totals {
                in_flight: 1,
                cache_hits: 5,
                cache_hits_memory: 4,
            }
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
