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
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{
    disk::DiskSyncs,
    mix::Endpoint,
    stats::Estimate,
    system::{CpuSample, PhaseCpu},
};

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

/// The phase's figures: three significant digits (0.1 %).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Each second's figures, of which there are hundreds: two significant
/// digits (1 %) and 32-bit counts keep one at about 12 KiB.
fn coarse_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("valid histogram bounds")
}

/// Which percentiles a run reports, and how its windows are cut.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// Sorted; always holds 50, 95 and 99 (the gates' own).
    pub percentiles: Vec<f64>,
    /// Length of the windows of the windowed SLO gate, in seconds (0: none).
    pub window_secs: u64,
    /// The percentile the windowed gates judge.
    pub window_percentile: f64,
}

impl Default for Resolution {
    fn default() -> Self {
        Self::new(&[], 10, 99.0)
    }
}

impl Resolution {
    pub fn new(extra: &[f64], window_secs: u64, window_percentile: f64) -> Self {
        let mut percentiles = vec![50.0, 95.0, 99.0];
        percentiles.extend_from_slice(extra);
        percentiles.sort_by(f64::total_cmp);
        percentiles.dedup();
        Self {
            percentiles,
            window_secs,
            window_percentile,
        }
    }
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

/// One second of the phase, ramp-up included.
#[derive(Debug)]
struct Second {
    all: Histogram<u32>,
    endpoints: [Histogram<u32>; 3],
    errors: [u64; 3],
    /// The most users active at any sample of this second.
    users: u64,
}

impl Second {
    fn new() -> Self {
        Self {
            all: coarse_histogram(),
            endpoints: std::array::from_fn(|_| coarse_histogram()),
            errors: [0; 3],
            users: 0,
        }
    }

    fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }
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
    users: AtomicU64,
}

/// What the progress line shows: the phase so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Live {
    pub elapsed: Duration,
    pub users: u64,
    /// Over the last complete seconds.
    pub requests_per_second: f64,
    pub p95_ms: f64,
    pub errors: u64,
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
            users: AtomicU64::new(0),
        }
    }

    pub fn user_started(&self) {
        self.users.fetch_add(1, Ordering::Relaxed);
    }

    pub fn user_stopped(&self) {
        let _ = self
            .users
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
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
                timeline.push(Second::new());
            }
            let slot = &mut timeline[second];
            slot.all.saturating_record(micros);
            slot.endpoints[endpoint.index()].saturating_record(micros);
            slot.errors[endpoint.index()] += u64::from(outcome.is_err());
            slot.users = slot.users.max(self.users.load(Ordering::Relaxed));
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

    /// The phase so far, for the progress line: throughput over the last
    /// (up to) five complete seconds, p95 of everything sent so far.
    pub fn live(&self) -> Live {
        let elapsed = self.started.elapsed();
        let timeline = self.timeline.lock().expect("never poisoned");
        let complete = (elapsed.as_secs() as usize).min(timeline.len());
        let recent = &timeline[complete.saturating_sub(5)..complete];
        let requests: u64 = recent.iter().map(|s| s.all.len()).sum();
        let mut all = coarse_histogram();
        for second in timeline.iter() {
            let _ = all.add(&second.all);
        }
        Live {
            elapsed,
            users: self.users.load(Ordering::Relaxed),
            requests_per_second: requests as f64 / recent.len().max(1) as f64,
            p95_ms: Estimate::of(&all, 95.0).ms,
            errors: timeline.iter().map(Second::errors).sum(),
        }
    }

    /// The figures of the phase, whose measured window lasted `measured`.
    pub fn summarise(
        &self,
        name: &str,
        users: u32,
        measured: Duration,
        cpu: PhaseCpu,
        resolution: &Resolution,
    ) -> PhaseSummary {
        let window = measured.as_secs_f64().max(0.001);
        let excluded_secs = self.measure_from.duration_since(self.started).as_secs_f64();
        let timeline = self.timeline.lock().expect("never poisoned");
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
                    percentiles: resolution
                        .percentiles
                        .iter()
                        .map(|&p| Estimate::of(&stats.latency, p))
                        .collect(),
                    max_ms: stats.latency.max() as f64 / 1000.0,
                    errors: ErrorCounts {
                        status: stats.status_errors,
                        timeout: stats.timeouts,
                        connection: stats.connection_errors,
                    },
                    distribution: distribution(&stats.latency),
                    timeline: timeline
                        .iter()
                        .enumerate()
                        .map(|(second, slot)| {
                            let latency = &slot.endpoints[endpoint.index()];
                            EndpointPoint {
                                second: second as u64,
                                requests: latency.len(),
                                errors: slot.errors[endpoint.index()],
                                p50_ms: Estimate::of(latency, 50.0).ms,
                                p95_ms: Estimate::of(latency, 95.0).ms,
                                p99_ms: Estimate::of(latency, 99.0).ms,
                            }
                        })
                        .collect(),
                })
            })
            .collect();
        let seconds = measured_seconds(excluded_secs, window);
        PhaseSummary {
            name: name.to_owned(),
            users,
            measured_secs: window,
            excluded_secs,
            generator_cpu: cpu.generator,
            machine_cpu: cpu.machine,
            machine_disk: None,
            endpoints,
            timeline: timeline
                .iter()
                .enumerate()
                .map(|(second, slot)| TimelinePoint {
                    second: second as u64,
                    requests: slot.all.len(),
                    errors: slot.errors(),
                    users: slot.users,
                    p50_ms: Estimate::of(&slot.all, 50.0).ms,
                    p95_ms: Estimate::of(&slot.all, 95.0).ms,
                    p99_ms: Estimate::of(&slot.all, 99.0).ms,
                    tail: Estimate::of(&slot.all, resolution.window_percentile),
                })
                .collect(),
            windows: windows(&timeline, seconds, resolution),
            cpu: cpu.timeline,
        }
    }
}

/// The whole seconds of the timeline inside the measured window: a second
/// cut by the window's start or end holds too few samples to judge.
fn measured_seconds(excluded_secs: f64, measured_secs: f64) -> std::ops::Range<usize> {
    let first = excluded_secs.ceil() as usize;
    let end = (excluded_secs + measured_secs + 1e-6).floor() as usize;
    first..end.max(first)
}

/// The measured seconds cut into windows of `window_secs`; a last, shorter
/// window is kept when it holds at least half a window.
fn windows(
    timeline: &[Second],
    seconds: std::ops::Range<usize>,
    resolution: &Resolution,
) -> Vec<Window> {
    let size = resolution.window_secs as usize;
    if size == 0 {
        return Vec::new();
    }
    let first = seconds.start;
    let measured = timeline
        .get(seconds.start..seconds.end.min(timeline.len()))
        .unwrap_or_default();
    measured
        .chunks(size)
        .enumerate()
        .filter(|(_, chunk)| chunk.len() * 2 >= size)
        .map(|(i, chunk)| {
            let mut all = coarse_histogram();
            for second in chunk {
                let _ = all.add(&second.all);
            }
            let from = first + i * size;
            Window {
                from_second: from as u64,
                to_second: (from + chunk.len()) as u64,
                requests: all.len(),
                tail: Estimate::of(&all, resolution.window_percentile),
            }
        })
        .collect()
}

/// The response-time distribution: counts in buckets whose bounds grow by a
/// quarter, from 0.1 ms to the slowest sample.
fn distribution(latency: &Histogram<u64>) -> Vec<Bucket> {
    if latency.is_empty() {
        return Vec::new();
    }
    latency
        .iter_log(100, 1.25)
        .map(|step| Bucket {
            le_ms: step.value_iterated_to() as f64 / 1000.0,
            count: step.count_since_last_iteration(),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointSummary {
    pub endpoint: Endpoint,
    pub requests: u64,
    pub rps: f64,
    /// The run's percentiles (50, 95, 99 and `--percentiles`), each with its interval.
    pub percentiles: Vec<Estimate>,
    pub max_ms: f64,
    pub errors: ErrorCounts,
    /// Response times of the measured window, in buckets.
    pub distribution: Vec<Bucket>,
    /// Per second of the phase, ramp-up and warm-up included.
    pub timeline: Vec<EndpointPoint>,
}

impl EndpointSummary {
    /// The estimate of `percentile`; 50, 95 and 99 are always there.
    pub fn percentile(&self, percentile: f64) -> Estimate {
        self.percentiles
            .iter()
            .copied()
            .find(|e| e.percentile == percentile)
            .unwrap_or(Estimate {
                percentile,
                ms: 0.0,
                low_ms: 0.0,
                high_ms: None,
                samples: 0,
            })
    }

    pub fn p50(&self) -> Estimate {
        self.percentile(50.0)
    }

    pub fn p95(&self) -> Estimate {
        self.percentile(95.0)
    }

    pub fn p99(&self) -> Estimate {
        self.percentile(99.0)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    /// Upper bound of the bucket.
    pub le_ms: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EndpointPoint {
    /// Seconds since the phase started (ramp-up included).
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the phase started (ramp-up included).
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    /// Users active.
    pub users: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The windowed gates' percentile of this second, with its interval.
    pub tail: Estimate,
}

/// A window of the measured part of a phase, for the windowed SLO gate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub from_second: u64,
    pub to_second: u64,
    pub requests: u64,
    pub tail: Estimate,
}

/// CPU the load generator itself used during a phase: a figure near the
/// machine's capacity means the generator, not the server, set the pace.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuUse {
    /// CPU seconds per wall-clock second (1.0 = one core busy).
    pub cores_busy: f64,
    /// Cores on this machine.
    pub cores: usize,
}

/// The whole machine's CPU during a phase: server, broker, database, cache
/// and generator together, and the time the hypervisor gave to other guests
/// instead ("steal"). A tail that rose while cores were stolen measured the
/// host, not the service.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineCpu {
    /// Busy CPU seconds per wall-clock second, every process together.
    pub cores_busy: f64,
    /// Stolen CPU seconds per wall-clock second.
    pub cores_stolen: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Every endpoint together, per second.
    pub timeline: Vec<TimelinePoint>,
    /// The measured part, in windows.
    pub windows: Vec<Window>,
    /// CPU per second: the generator's and the machine's.
    pub cpu: Vec<CpuSample>,
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

    /// The timeline's whole seconds that fall in the measured window.
    pub fn measured_timeline(&self) -> &[TimelinePoint] {
        let seconds = measured_seconds(self.excluded_secs, self.measured_secs);
        let end = seconds.end.min(self.timeline.len());
        &self.timeline[seconds.start.min(end)..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_before_the_window_feed_only_the_timeline() {
        let recorder = PhaseRecorder::new(Duration::from_secs(3600), None);
        recorder.record(Endpoint::Post, Instant::now(), Ok(()));
        let summary = recorder.summarise(
            "x",
            1,
            Duration::from_secs(1),
            PhaseCpu::default(),
            &Resolution::default(),
        );
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
        let summary = recorder.summarise(
            "x",
            1,
            Duration::from_secs(1),
            PhaseCpu::default(),
            &Resolution::default(),
        );
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
        let summary = recorder.summarise(
            "x",
            1,
            Duration::from_secs(1),
            PhaseCpu::default(),
            &Resolution::default(),
        );
        let get = summary.endpoint(Endpoint::GetById).unwrap();
        assert!(get.p50().ms > 80.0, "{get:?}");
        assert_eq!(get.requests, 1);
    }

    #[test]
    fn users_are_counted_in_and_out_and_the_live_figures_follow() {
        let recorder = PhaseRecorder::new(Duration::ZERO, None);
        recorder.user_started();
        recorder.user_started();
        recorder.user_stopped();
        let now = Instant::now();
        for _ in 0..10 {
            recorder.record(Endpoint::Post, now, Ok(()));
        }
        recorder.record(Endpoint::Post, now, Err(Failure::Status));
        let live = recorder.live();
        assert_eq!(live.users, 1);
        assert_eq!(live.errors, 1);
        let summary = recorder.summarise(
            "x",
            2,
            Duration::from_secs(1),
            PhaseCpu::default(),
            &Resolution::default(),
        );
        assert_eq!(summary.timeline[0].users, 1);
        assert_eq!(summary.timeline[0].requests, 11);
        // Never below zero, whatever goose calls.
        recorder.user_stopped();
        recorder.user_stopped();
        assert_eq!(recorder.live().users, 0);
    }

    #[test]
    fn windows_cover_only_whole_measured_seconds() {
        // Ramp-up and warm-up 0.5 s, measured 2.5 s: seconds 1 and 2 are
        // whole and measured; 0 and 3 are cut.
        assert_eq!(measured_seconds(0.5, 2.5), 1..3);
        assert_eq!(measured_seconds(0.0, 3.0), 0..3);
        assert_eq!(measured_seconds(2.0, 0.0), 2..2);
    }
}
