//! The flags of `svc loadtest`. Every one has a default; together the
//! defaults run for about two minutes.

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

    /// Length of the baseline phase, in seconds, after its ramp-up.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub baseline_secs: u64,

    /// Length of the load phase, in seconds, after its ramp-up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub load_secs: u64,

    /// Seconds at the start of each phase (after ramp-up) left out of the figures.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,

    /// Pause of each closed-model user between two requests, `MIN..MAX` in ms
    /// (the default models a person between two actions).
    #[arg(long, default_value = "1000..2000", value_parser = parse_range)]
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
}

impl LoadtestArgs {
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
}
