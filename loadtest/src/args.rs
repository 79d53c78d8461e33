//! The flags of `svc loadtest`. Every one has a default; together the
//! defaults run for about four minutes and decide every gate.

use std::{ops::RangeInclusive, time::Duration};

use clap::Args;

use crate::mix::Mix;

#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// Base URL of the svc API under test.
    #[arg(
        long,
        env = "SVC_LOADTEST_HOST",
        default_value = "http://127.0.0.1:8000"
    )]
    pub host: String,

    /// Users (concurrent clients) in the baseline phase.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub baseline_users: u32,

    /// Users (concurrent clients) in the load phase.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,

    /// Users started per second while ramping up.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub hatch_rate: u32,

    /// Length of the baseline phase, in seconds, after its ramp-up (long
    /// enough by default for the p99 of an endpoint with a tenth of the mix).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub baseline_secs: u64,

    /// Length of the load phase, in seconds, after its ramp-up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub load_secs: u64,

    /// Seconds at the start of each phase (after ramp-up) left out of the figures.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,

    /// Pause of each closed-model user between two requests, `MIN..MAX` in ms
    /// (the default models a client app between two calls; about 1.25
    /// requests/s per user).
    #[arg(long, default_value = "400..1200", value_parser = parse_range)]
    pub think_time_ms: RangeInclusive<u64>,

    /// Weights of the request mix.
    #[arg(long, default_value = "get=80,list=10,post=10")]
    pub mix: Mix,

    /// Open model: requests per second in the load phase, sent at a fixed
    /// arrival rate whatever the latency (users then bound concurrency, and
    /// there is no think time). Without it, users are closed loops with think time.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,

    /// Open model: requests per second in the baseline phase (default: a tenth of `--rate`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub baseline_rate: Option<u32>,

    /// Records written (and awaited) before the baseline, for GETs to read.
    #[arg(long, default_value_t = 1000)]
    pub seed_records: u32,

    /// Latency objective: every endpoint's p95 and p99, in both phases, under this (ms).
    #[arg(long, default_value_t = 500.0)]
    pub slo_ms: f64,

    /// Largest accepted p95 increase from baseline to load, as a fraction.
    #[arg(long, default_value_t = 0.10)]
    pub max_degradation: f64,

    /// An absolute p95 increase under this (ms) never fails the degradation gate.
    #[arg(long, default_value_t = 2.0)]
    pub noise_floor_ms: f64,

    /// Largest accepted share of failed requests, per phase.
    #[arg(long, default_value_t = 0.001)]
    pub max_error_rate: f64,

    /// Seconds every accepted write gets to become readable after the load phase.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,

    /// Where summary.json and the HTML reports are written.
    #[arg(long, default_value = "loadtest-report")]
    pub report_dir: std::path::PathBuf,

    /// Timeout of one request, in seconds; a request past it counts as a timeout error.
    #[arg(long, default_value_t = 10)]
    pub request_timeout_secs: u64,

    /// Most runs in all when only latency gates (SLO, degradation) fail:
    /// two failed runs with the host quiet fail, a pass ends it (1: one run).
    /// Earlier runs' reports are kept in `run-1/`, `run-2/`, ...
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub confirm_runs: u32,

    /// A run during which the host took this many cores or more does not count towards a fail.
    #[arg(long, default_value_t = 0.1)]
    pub max_stolen_cores: f64,

    /// A run during which a disk sync took this long (ms) or more does not count towards a fail.
    #[arg(long, default_value_t = 250.0)]
    pub max_disk_sync_ms: f64,

    /// Percentiles reported beside p50, p95 and p99 (table, summary.json, report), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "99.9", value_parser = parse_percentile)]
    pub percentiles: Vec<f64>,

    /// Windowed SLO gate: the load phase's `--window-percentile` under
    /// `--slo-ms` in every window of this many seconds (0: off).
    #[arg(long, default_value_t = 10)]
    pub window_secs: u64,

    /// The percentile the windowed gates judge.
    #[arg(long, default_value_t = 99.0, value_parser = parse_percentile)]
    pub window_percentile: f64,

    /// Streak gate: at most this many seconds in a row of the load phase with
    /// `--window-percentile` over `--slo-ms` (needs enough requests per
    /// second to judge each second: 563 for p99). Off unless given.
    #[arg(long)]
    pub max_slow_secs: Option<u64>,

    /// A stored run's summary.json: fail when an endpoint's p95, p99 or
    /// throughput regressed beyond `--max-regression` against it.
    #[arg(long, value_name = "SUMMARY_JSON")]
    pub compare: Option<std::path::PathBuf>,

    /// Largest accepted regression against `--compare`, as a fraction.
    #[arg(long, default_value_t = 0.10)]
    pub max_regression: f64,

    /// Also write every gate as a JUnit test case to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,

    /// No progress line while the phases run.
    #[arg(long)]
    pub quiet: bool,

    /// Seconds between two progress lines.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_secs: u64,

    /// Capacity search: after the baseline, open-model steps from
    /// `--rate` (default 100/s) up by `--capacity-step` each, `--load-secs`
    /// long, until one fails its gates; reports the highest rate that held.
    #[arg(long)]
    pub find_capacity: bool,

    /// Factor from one capacity step's rate to the next.
    #[arg(long, default_value_t = 1.5, value_parser = parse_step)]
    pub capacity_step: f64,

    /// Most capacity steps.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity_max_steps: u32,
}

impl LoadtestArgs {
    pub fn limits(&self) -> crate::Limits {
        crate::Limits {
            slo_ms: self.slo_ms,
            max_degradation: self.max_degradation,
            noise_floor_ms: self.noise_floor_ms,
            max_error_rate: self.max_error_rate,
            drain_secs: self.drain_secs,
            window_secs: self.window_secs,
            window_percentile: self.window_percentile,
            max_slow_secs: self.max_slow_secs,
            max_regression: self.max_regression,
        }
    }

    pub fn resolution(&self) -> crate::measure::Resolution {
        crate::measure::Resolution::new(&self.percentiles, self.window_secs, self.window_percentile)
    }

    pub fn confirm_policy(&self) -> crate::confirm::ConfirmPolicy {
        crate::confirm::ConfirmPolicy {
            max_runs: self.confirm_runs,
            max_stolen_cores: self.max_stolen_cores,
            max_disk_sync_ms: self.max_disk_sync_ms,
        }
    }

    pub fn think_time(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(*self.think_time_ms.start()),
            Duration::from_millis(*self.think_time_ms.end()),
        )
    }
}

fn parse_percentile(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if value > 0.0 && value < 100.0 {
        Ok(value)
    } else {
        Err("a percentile is above 0 and below 100".into())
    }
}

fn parse_step(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(step) if step > 1.0 && step.is_finite() => Ok(step),
        _ => Err("the step is a factor above 1, for example 1.5".into()),
    }
}

fn parse_range(text: &str) -> Result<RangeInclusive<u64>, String> {
    let (min, max) = text
        .split_once("..")
        .ok_or_else(|| "expected MIN..MAX, for example 100..500".to_owned())?;
    let min: u64 = min
        .trim()
        .parse()
        .map_err(|_| "MIN is not a whole number".to_owned())?;
    let max: u64 = max
        .trim()
        .parse()
        .map_err(|_| "MAX is not a whole number".to_owned())?;
    if min > max {
        return Err("MIN is above MAX".into());
    }
    Ok(min..=max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("100..500"), Ok(100..=500));
        assert_eq!(parse_range("0..0"), Ok(0..=0));
        assert!(parse_range("5..1").is_err());
        assert!(parse_range("100").is_err());
        assert!(parse_range("a..b").is_err());
    }

    #[test]
    fn percentiles_and_steps_parse() {
        assert_eq!(parse_percentile("99.9"), Ok(99.9));
        assert!(parse_percentile("100").is_err());
        assert!(parse_percentile("0").is_err());
        assert!(parse_percentile("p99").is_err());
        assert_eq!(parse_step("1.5"), Ok(1.5));
        assert!(parse_step("1").is_err());
    }
}
