//! Latency and errors of one phase, per endpoint, at microsecond resolution
//! (HdrHistogram), plus a per-second timeline for the report.
//!
//! Every sample is timed from the request's *intended* start: in the open
//! model that is its slot in the fixed arrival schedule, so when the server
//! stalls the requests that should have gone out meanwhile count as slow,
//! not as missing. In the closed model a request that outlasts the users'
//! usual cadence is back-filled with the samples the stalled user would have
//! produced (HdrHistogram's `record_correct`), the same idea.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{disk::DiskSyncs, mix::Endpoint};

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An answer with a status the contract does not allow for this request.
    Status,
    /// No complete answer within the request timeout.
    Timeout,
    /// Refused, reset or otherwise broken connection.
    Connection,
}

const HIGHEST_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

#[derive(Debug)]
struct EndpointStats {
    latency: Histogram<u64>,
    requests: u64,
    status_errors: u64,
    timeouts: u64,
    connection_errors: u64,
}

impl EndpointStats {
    fn new() -> Self {
        Self {
            latency: histogram(),
            requests: 0,
            status_errors: 0,
            timeouts: 0,
            connection_errors: 0,
        }
    }
}

#[derive(Debug)]
struct Second {
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
}

/// Collects one phase's samples from every user at once.
#[derive(Debug)]
pub struct PhaseRecorder {
    started: Instant,
    measure_from: Instant,
    /// Closed model: the usual time between two requests of one user.
    expected_interval_us: Option<u64>,
    endpoints: [Mutex<EndpointStats>; 3],
    timeline: Mutex<Vec<Second>>,
}

impl PhaseRecorder {
    /// `exclude` is the ramp-up plus warm-up: samples that start earlier feed
    /// the timeline only.
    pub fn new(exclude: Duration, expected_interval: Option<Duration>) -> Self {
        let started = Instant::now();
        Self {
            started,
            measure_from: started + exclude,
            expected_interval_us: expected_interval.map(|d| (d.as_micros() as u64).max(1)),
            endpoints: std::array::from_fn(|_| Mutex::new(EndpointStats::new())),
            timeline: Mutex::new(Vec::new()),
        }
    }

    pub fn record(
        &self,
        endpoint: Endpoint,
        intended_start: Instant,
        outcome: Result<(), Failure>,
    ) {
        let elapsed = intended_start.elapsed();
        let micros = (elapsed.as_micros() as u64).clamp(1, HIGHEST_US);
        {
            let second = intended_start
                .saturating_duration_since(self.started)
                .as_secs() as usize;
            let mut timeline = self.timeline.lock().expect("never poisoned");
            while timeline.len() <= second {
                timeline.push(Second {
                    latency: histogram(),
                    requests: 0,
                    errors: 0,
                });
            }
            let slot = &mut timeline[second];
            slot.latency.saturating_record(micros);
            slot.requests += 1;
            slot.errors += u64::from(outcome.is_err());
        }
        if intended_start < self.measure_from {
            return;
        }
        let mut stats = self.endpoints[endpoint.index()]
            .lock()
            .expect("never poisoned");
        match self.expected_interval_us {
            Some(interval) => {
                let _ = stats.latency.record_correct(micros, interval);
            }
            None => stats.latency.saturating_record(micros),
        }
        stats.requests += 1;
        match outcome {
            Ok(()) => {}
            Err(Failure::Status) => stats.status_errors += 1,
            Err(Failure::Timeout) => stats.timeouts += 1,
            Err(Failure::Connection) => stats.connection_errors += 1,
        }
    }

    /// The figures of the phase, whose measured window lasted `measured`.
    pub fn summarise(
        &self,
        name: &str,
        users: u32,
        measured: Duration,
        cpu: PhaseCpu,
    ) -> PhaseSummary {
        let window = measured.as_secs_f64().max(0.001);
        let endpoints = Endpoint::ALL
            .iter()
            .filter_map(|&endpoint| {
                let stats = self.endpoints[endpoint.index()]
                    .lock()
                    .expect("never poisoned");
                (stats.requests > 0).then(|| EndpointSummary {
                    endpoint,
                    requests: stats.requests,
                    rps: stats.requests as f64 / window,
                    p50_ms: percentile_ms(&stats.latency, 50.0),
                    p95_ms: percentile_ms(&stats.latency, 95.0),
                    p99_ms: percentile_ms(&stats.latency, 99.0),
                    max_ms: stats.latency.max() as f64 / 1000.0,
                    errors: ErrorCounts {
                        status: stats.status_errors,
                        timeout: stats.timeouts,
                        connection: stats.connection_errors,
                    },
                })
            })
            .collect();
        let timeline = self
            .timeline
            .lock()
            .expect("never poisoned")
            .iter()
            .enumerate()
            .map(|(second, slot)| TimelinePoint {
                second: second as u64,
                requests: slot.requests,
                errors: slot.errors,
                p50_ms: percentile_ms(&slot.latency, 50.0),
                p95_ms: percentile_ms(&slot.latency, 95.0),
                p99_ms: percentile_ms(&slot.latency, 99.0),
            })
            .collect();
        PhaseSummary {
            name: name.to_owned(),
            users,
            measured_secs: window,
            excluded_secs: self.measure_from.duration_since(self.started).as_secs_f64(),
            generator_cpu: cpu.generator,
            machine_cpu: cpu.machine,
            machine_disk: None,
            endpoints,
            timeline,
        }
    }
}

fn percentile_ms(histogram: &Histogram<u64>, percentile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_percentile(percentile) as f64 / 1000.0
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ErrorCounts {
    pub status: u64,
    pub timeout: u64,
    pub connection: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.status + self.timeout + self.connection
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointSummary {
    pub endpoint: Endpoint,
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: ErrorCounts,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the phase started (ramp-up included).
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// CPU the load generator itself used during a phase: a figure near the
/// machine's capacity means the generator, not the server, set the pace.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct CpuUse {
    /// CPU seconds per wall-clock second (1.0 = one core busy).
    pub cores_busy: f64,
    /// Cores on this machine.
    pub cores: usize,
}

/// What a phase cost in CPU: the generator's own, and the whole machine's
/// where the OS tells (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseCpu {
    pub generator: CpuUse,
    pub machine: Option<MachineCpu>,
}

/// The whole machine's CPU during a phase: server, broker, database, cache
/// and generator together, and the time the hypervisor gave to other guests
/// instead ("steal"). A tail that rose while cores were stolen measured the
/// host, not the service.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct MachineCpu {
    /// Busy CPU seconds per wall-clock second, every process together.
    pub cores_busy: f64,
    /// Stolen CPU seconds per wall-clock second.
    pub cores_stolen: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseSummary {
    pub name: String,
    pub users: u32,
    /// Length of the window the figures come from.
    pub measured_secs: f64,
    /// Ramp-up and warm-up left out at the start.
    pub excluded_secs: f64,
    pub generator_cpu: CpuUse,
    /// The whole machine over the phase, where the OS tells (Linux).
    pub machine_cpu: Option<MachineCpu>,
    /// This machine's disk syncs over the measured window, where they could be probed.
    pub machine_disk: Option<DiskSyncs>,
    pub endpoints: Vec<EndpointSummary>,
    pub timeline: Vec<TimelinePoint>,
}

impl PhaseSummary {
    pub fn endpoint(&self, endpoint: Endpoint) -> Option<&EndpointSummary> {
        self.endpoints.iter().find(|e| e.endpoint == endpoint)
    }

    pub fn requests(&self) -> u64 {
        self.endpoints.iter().map(|e| e.requests).sum()
    }

    pub fn errors(&self) -> u64 {
        self.endpoints.iter().map(|e| e.errors.total()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_before_the_window_feed_only_the_timeline() {
        let recorder = PhaseRecorder::new(Duration::from_secs(3600), None);
        recorder.record(Endpoint::Post, Instant::now(), Ok(()));
        let summary = recorder.summarise("x", 1, Duration::from_secs(1), PhaseCpu::default());
        assert!(summary.endpoints.is_empty());
        assert_eq!(summary.timeline[0].requests, 1);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let recorder = PhaseRecorder::new(Duration::ZERO, None);
        let now = Instant::now();
        recorder.record(Endpoint::List, now, Ok(()));
        recorder.record(Endpoint::List, now, Err(Failure::Status));
        recorder.record(Endpoint::List, now, Err(Failure::Timeout));
        recorder.record(Endpoint::List, now, Err(Failure::Connection));
        let summary = recorder.summarise("x", 1, Duration::from_secs(1), PhaseCpu::default());
        let list = summary.endpoint(Endpoint::List).unwrap();
        assert_eq!(list.requests, 4);
        assert_eq!(
            list.errors,
            ErrorCounts {
                status: 1,
                timeout: 1,
                connection: 1
            }
        );
    }

    #[test]
    fn a_stall_in_the_closed_model_is_back_filled() {
        // One 200 ms request where users usually send every 2 ms: the ~99
        // requests that user would have sent meanwhile count as slow too.
        let recorder = PhaseRecorder::new(Duration::ZERO, Some(Duration::from_millis(2)));
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        recorder.record(Endpoint::GetById, started, Ok(()));
        let summary = recorder.summarise("x", 1, Duration::from_secs(1), PhaseCpu::default());
        let get = summary.endpoint(Endpoint::GetById).unwrap();
        assert!(get.p50_ms > 80.0, "{get:?}");
        assert_eq!(get.requests, 1);
    }
}
