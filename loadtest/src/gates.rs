//! The gates of a run and its verdict. Pure code: figures in, judgements out.
//!
//! A gate on a percentile is judged on its confidence interval
//! ([`crate::stats`]): it passes when the whole interval is on the right
//! side of the limit, fails when the whole interval is on the wrong side,
//! and is otherwise **inconclusive**, with advice on how much longer a run
//! would decide it. Error rate and durability are counts over the run
//! itself, exact, and always conclusive.

use serde::{Deserialize, Serialize};

use crate::{
    checks::Durability,
    measure::{EndpointSummary, PhaseSummary},
    mix::Endpoint,
    stats::{Estimate, Verdict, growth_needed, increase_within, percentile_name},
};

/// The limits every run is judged against.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub slo_ms: f64,
    pub max_degradation: f64,
    pub noise_floor_ms: f64,
    pub max_error_rate: f64,
    pub drain_secs: u64,
    /// Windows of the windowed SLO gate (0: off).
    pub window_secs: u64,
    pub window_percentile: f64,
    /// Most seconds in a row with the window percentile over the SLO (`None`: off).
    pub max_slow_secs: Option<u64>,
    /// Largest accepted regression against `--compare`, as a fraction.
    pub max_regression: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    Slo,
    Degradation,
    ErrorRate,
    Durability,
    /// The SLO in every window of the load phase.
    WindowSlo,
    /// Seconds in a row over the SLO.
    SlowStreak,
    /// Against the run given to `--compare`.
    Regression,
}

impl GateKind {
    pub fn name(self) -> &'static str {
        match self {
            GateKind::Slo => "SLO",
            GateKind::Degradation => "degradation",
            GateKind::ErrorRate => "error rate",
            GateKind::Durability => "durability",
            GateKind::WindowSlo => "window SLO",
            GateKind::SlowStreak => "slow streak",
            GateKind::Regression => "regression",
        }
    }

    /// Latency gates can fail on a noisy host; the others count events.
    pub fn is_latency(self) -> bool {
        matches!(
            self,
            GateKind::Slo
                | GateKind::Degradation
                | GateKind::WindowSlo
                | GateKind::SlowStreak
                | GateKind::Regression
        )
    }
}

/// One judged figure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gate {
    pub kind: GateKind,
    pub phase: Option<String>,
    pub endpoint: Option<Endpoint>,
    pub verdict: Verdict,
    /// How many samples the verdict rests on (the fewest, where several figures meet).
    pub samples: u64,
    /// The measured figure, in words.
    pub measured: String,
    /// The limit, in words.
    pub limit: String,
    /// For an inconclusive gate: what run would decide it.
    pub advice: Option<String>,
}

impl Gate {
    /// "load POST /data", or "" for a gate of the whole run.
    pub fn subject(&self) -> String {
        [
            self.phase.clone().unwrap_or_default(),
            self.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<12} {:<12} {:<24} {}  (n = {}; limit: {})",
            self.verdict.label(),
            self.kind.name(),
            self.subject(),
            self.measured,
            self.samples,
            self.limit
        );
        if let Some(advice) = &self.advice {
            line.push_str("\n             ");
            line.push_str(advice);
        }
        line
    }
}

/// What would make an inconclusive gate on `phase` conclusive: `growth`
/// times the samples, as a longer phase or more users.
fn advice(phase: &PhaseSummary, growth: f64) -> String {
    let flag = if phase.name == "baseline" {
        "--baseline-secs"
    } else {
        "--load-secs"
    };
    format!(
        "too few samples to decide: about {growth:.1}× as many would, e.g. {flag} {} \
         (or {growth:.1}× the users or rate)",
        (phase.measured_secs * growth).ceil()
    )
}

/// Every gate of a run of `phases` (the baseline, then the load phase).
#[cfg(test)]
pub fn evaluate(
    baseline: &PhaseSummary,
    load: &PhaseSummary,
    durability: &Durability,
    limits: &Limits,
) -> Vec<Gate> {
    let mut gates = Vec::new();
    for phase in [baseline, load] {
        gates.extend(phase_gates(phase, limits));
    }
    gates.extend(degradation(baseline, load, limits));
    gates.extend(window_gates(load, limits));
    gates.push(self::durability(durability, limits));
    gates
}

/// No accepted write may be lost.
pub fn durability(durability: &Durability, limits: &Limits) -> Gate {
    let lost = durability.lost.len();
    Gate {
        kind: GateKind::Durability,
        phase: None,
        endpoint: None,
        verdict: if lost == 0 {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        samples: durability.accepted as u64,
        measured: format!(
            "{} accepted, {} readable, {lost} lost (after {:.1} s)",
            durability.accepted, durability.persisted, durability.drained_after_secs
        ),
        limit: format!("none lost within {} s", limits.drain_secs),
        advice: None,
    }
}

/// The SLO of every endpoint and the error rate of one phase.
pub fn phase_gates(phase: &PhaseSummary, limits: &Limits) -> Vec<Gate> {
    if phase.requests() == 0 {
        return vec![Gate {
            kind: GateKind::ErrorRate,
            phase: Some(phase.name.clone()),
            endpoint: None,
            verdict: Verdict::Fail,
            samples: 0,
            measured: "no request was measured".into(),
            limit: "at least one request".into(),
            advice: None,
        }];
    }
    let mut gates: Vec<Gate> = phase
        .endpoints
        .iter()
        .map(|endpoint| slo(phase, endpoint, limits))
        .collect();
    let errors = phase.errors();
    let rate = errors as f64 / phase.requests() as f64;
    gates.push(Gate {
        kind: GateKind::ErrorRate,
        phase: Some(phase.name.clone()),
        endpoint: None,
        verdict: if rate <= limits.max_error_rate {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        samples: phase.requests(),
        measured: format!("{:.3}% ({errors} of {})", rate * 100.0, phase.requests()),
        limit: format!("at most {:.3}%", limits.max_error_rate * 100.0),
        advice: None,
    });
    gates
}

fn slo(phase: &PhaseSummary, endpoint: &EndpointSummary, limits: &Limits) -> Gate {
    let estimates = [endpoint.p95(), endpoint.p99()];
    let verdict = Verdict::all(estimates.iter().map(|e| e.under(limits.slo_ms)));
    Gate {
        kind: GateKind::Slo,
        phase: Some(phase.name.clone()),
        endpoint: Some(endpoint.endpoint),
        verdict,
        samples: endpoint.requests,
        measured: format!("{}, {}", estimates[0].describe(), estimates[1].describe()),
        limit: format!("both under {} ms", limits.slo_ms),
        advice: (verdict == Verdict::Inconclusive)
            .then(|| advice(phase, most_growth(&estimates, limits.slo_ms))),
    }
}

/// The growth that decides every one of `estimates` against `limit`.
fn most_growth(estimates: &[Estimate], limit: f64) -> f64 {
    estimates
        .iter()
        .filter(|e| e.under(limit) == Verdict::Inconclusive)
        .map(|e| growth_needed(e, limit))
        .fold(1.0, f64::max)
}

pub fn degradation(baseline: &PhaseSummary, load: &PhaseSummary, limits: &Limits) -> Vec<Gate> {
    load.endpoints
        .iter()
        .filter_map(|endpoint| {
            let base = baseline.endpoint(endpoint.endpoint)?;
            let (before, after) = (base.p95(), endpoint.p95());
            let verdict = increase_within(
                &before,
                &after,
                limits.max_degradation,
                limits.noise_floor_ms,
            );
            let increase_ms = after.ms - before.ms;
            let ratio = if before.ms > 0.0 {
                increase_ms / before.ms
            } else {
                0.0
            };
            let allowed = (limits.max_degradation * before.ms).max(limits.noise_floor_ms);
            let advice = (verdict == Verdict::Inconclusive).then(|| {
                // The thinner side decides: grow it until both intervals
                // clear the allowed increase.
                let (thin, limit) = if base.requests <= endpoint.requests {
                    (before, after.ms - allowed)
                } else {
                    (after, before.ms + allowed)
                };
                let phase = if base.requests <= endpoint.requests {
                    baseline
                } else {
                    load
                };
                self::advice(phase, growth_needed(&thin, limit))
            });
            Some(Gate {
                kind: GateKind::Degradation,
                phase: None,
                endpoint: Some(endpoint.endpoint),
                verdict,
                samples: base.requests.min(endpoint.requests),
                measured: format!(
                    "{} → {}: {:+.1}% ({increase_ms:+.2} ms; n = {} → {})",
                    before.describe(),
                    after.describe(),
                    ratio * 100.0,
                    base.requests,
                    endpoint.requests
                ),
                limit: format!(
                    "at most +{:.0}% or +{} ms (noise floor): +{allowed:.2} ms here",
                    limits.max_degradation * 100.0,
                    limits.noise_floor_ms
                ),
                advice,
            })
        })
        .collect()
}

/// The windowed gates of `phase`: its window percentile under the SLO in
/// every window, and (when set) at most `max_slow_secs` seconds in a row
/// over it.
pub fn window_gates(phase: &PhaseSummary, limits: &Limits) -> Vec<Gate> {
    let mut gates = Vec::new();
    let percentile = percentile_name(limits.window_percentile);
    if limits.window_secs > 0 {
        let verdicts: Vec<Verdict> = phase
            .windows
            .iter()
            .map(|w| w.tail.under(limits.slo_ms))
            .collect();
        let verdict = if verdicts.is_empty() {
            Verdict::Inconclusive
        } else {
            Verdict::all(verdicts.iter().copied())
        };
        let worst = phase
            .windows
            .iter()
            .max_by(|a, b| a.tail.ms.total_cmp(&b.tail.ms));
        let measured = match worst {
            Some(w) => format!(
                "{} windows; the worst, seconds {}–{}: {}",
                phase.windows.len(),
                w.from_second,
                w.to_second,
                w.tail.describe()
            ),
            None => "no window was measured".to_owned(),
        };
        let thinnest = phase.windows.iter().min_by_key(|w| w.requests);
        gates.push(Gate {
            kind: GateKind::WindowSlo,
            phase: Some(phase.name.clone()),
            endpoint: None,
            verdict,
            samples: thinnest.map_or(0, |w| w.requests),
            measured,
            limit: format!(
                "{percentile} under {} ms in every {} s window",
                limits.slo_ms, limits.window_secs
            ),
            advice: (verdict == Verdict::Inconclusive).then(|| {
                let growth = phase
                    .windows
                    .iter()
                    .map(|w| w.tail)
                    .filter(|t| t.under(limits.slo_ms) == Verdict::Inconclusive)
                    .map(|t| growth_needed(&t, limits.slo_ms))
                    .fold(1.0, f64::max);
                format!(
                    "too few samples per window to decide: about {growth:.1}× the rate would \
                     (more users, or --window-secs {})",
                    (limits.window_secs as f64 * growth).ceil()
                )
            }),
        });
    }
    if let Some(max_slow) = limits.max_slow_secs {
        let seconds: Vec<Verdict> = phase
            .measured_timeline()
            .iter()
            .map(|s| s.tail.under(limits.slo_ms))
            .collect();
        // Counting the undecided seconds as slow, then as fast, bounds the
        // true streak from above and below.
        let most = longest_run(&seconds, |v| v != Verdict::Pass);
        let least = longest_run(&seconds, |v| v == Verdict::Fail);
        let verdict = if least > max_slow {
            Verdict::Fail
        } else if most <= max_slow {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        };
        gates.push(Gate {
            kind: GateKind::SlowStreak,
            phase: Some(phase.name.clone()),
            endpoint: None,
            verdict,
            samples: phase
                .measured_timeline()
                .iter()
                .map(|s| s.requests)
                .min()
                .unwrap_or(0),
            measured: if most == least {
                format!("longest streak {least} s")
            } else {
                format!("longest streak between {least} and {most} s")
            },
            limit: format!(
                "at most {max_slow} s in a row with {percentile} over {} ms",
                limits.slo_ms
            ),
            advice: (verdict == Verdict::Inconclusive).then(|| {
                format!(
                    "some seconds had too few samples for their {percentile} \
                     ({} needed): more users or a higher rate would decide it",
                    crate::stats::samples_needed(limits.window_percentile)
                )
            }),
        });
    }
    gates
}

/// The longest run of consecutive items for which `slow` holds.
fn longest_run(seconds: &[Verdict], slow: impl Fn(Verdict) -> bool) -> u64 {
    let (mut longest, mut current) = (0, 0);
    for &second in seconds {
        current = if slow(second) { current + 1 } else { 0 };
        longest = longest.max(current);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{CpuUse, EndpointSummary, ErrorCounts, TimelinePoint, Window};

    /// An estimate from 10,000 samples: an interval of ±1 %.
    fn tight(percentile: f64, ms: f64) -> Estimate {
        Estimate {
            percentile,
            ms,
            low_ms: ms * 0.99,
            high_ms: Some(ms * 1.01),
            samples: 10_000,
        }
    }

    fn phase(name: &str, p95: f64, p99: f64, errors: u64) -> PhaseSummary {
        PhaseSummary {
            name: name.into(),
            users: 1,
            measured_secs: 10.0,
            excluded_secs: 0.0,
            generator_cpu: CpuUse::default(),
            machine_cpu: None,
            machine_disk: None,
            endpoints: vec![EndpointSummary {
                endpoint: Endpoint::GetById,
                requests: 10_000,
                rps: 1000.0,
                percentiles: vec![tight(50.0, p95 / 2.0), tight(95.0, p95), tight(99.0, p99)],
                max_ms: p99,
                errors: ErrorCounts {
                    status: errors,
                    ..Default::default()
                },
                distribution: Vec::new(),
                timeline: Vec::new(),
            }],
            timeline: Vec::new(),
            windows: Vec::new(),
            cpu: Vec::new(),
        }
    }

    fn durable() -> Durability {
        Durability {
            accepted: 10,
            persisted: 10,
            lost: Vec::new(),
            drained_after_secs: 0.1,
        }
    }

    const LIMITS: Limits = Limits {
        slo_ms: 500.0,
        max_degradation: 0.10,
        noise_floor_ms: 2.0,
        max_error_rate: 0.001,
        drain_secs: 60,
        window_secs: 0,
        window_percentile: 99.0,
        max_slow_secs: None,
        max_regression: 0.10,
    };

    fn failed(gates: &[Gate]) -> Vec<GateKind> {
        gates
            .iter()
            .filter(|g| g.verdict == Verdict::Fail)
            .map(|g| g.kind)
            .collect()
    }

    #[test]
    fn a_fast_steady_run_passes_every_gate() {
        let gates = evaluate(
            &phase("baseline", 1.0, 2.0, 0),
            &phase("load", 1.05, 2.0, 0),
            &durable(),
            &LIMITS,
        );
        assert_eq!(failed(&gates), vec![]);
    }

    #[test]
    fn p99_over_the_slo_fails_it_even_with_p95_under() {
        let gates = evaluate(
            &phase("baseline", 100.0, 100.0, 0),
            &phase("load", 105.0, 600.0, 0),
            &durable(),
            &LIMITS,
        );
        assert_eq!(failed(&gates), vec![GateKind::Slo]);
    }

    #[test]
    fn degradation_counts_unless_under_the_noise_floor() {
        // +50% but only +0.5 ms: noise.
        let gates = evaluate(
            &phase("baseline", 1.0, 1.0, 0),
            &phase("load", 1.5, 1.5, 0),
            &durable(),
            &LIMITS,
        );
        assert_eq!(failed(&gates), vec![]);
        // +50% and +10 ms: a real degradation.
        let gates = evaluate(
            &phase("baseline", 20.0, 20.0, 0),
            &phase("load", 30.0, 30.0, 0),
            &durable(),
            &LIMITS,
        );
        assert_eq!(failed(&gates), vec![GateKind::Degradation]);
        // +10% exactly is allowed.
        let gates = evaluate(
            &phase("baseline", 100.0, 100.0, 0),
            &phase("load", 110.0, 110.0, 0),
            &durable(),
            &LIMITS,
        );
        assert_eq!(failed(&gates), vec![]);
    }

    #[test]
    fn errors_over_the_rate_fail() {
        let gates = evaluate(
            &phase("baseline", 1.0, 1.0, 20),
            &phase("load", 1.0, 1.0, 30),
            &durable(),
            &LIMITS,
        );
        assert_eq!(
            failed(&gates),
            vec![GateKind::ErrorRate, GateKind::ErrorRate]
        );
    }

    #[test]
    fn one_lost_write_fails_durability() {
        let lossy = Durability {
            lost: vec![uuid::Uuid::nil()],
            persisted: 9,
            ..durable()
        };
        let gates = evaluate(
            &phase("baseline", 1.0, 1.0, 0),
            &phase("load", 1.0, 1.0, 0),
            &lossy,
            &LIMITS,
        );
        assert_eq!(failed(&gates), vec![GateKind::Durability]);
    }

    #[test]
    fn a_p99_resting_on_one_request_is_inconclusive_and_says_what_would_decide_it() {
        let mut baseline = phase("baseline", 1.0, 2.0, 0);
        let few = &mut baseline.endpoints[0];
        few.requests = 100;
        few.percentiles[2] = Estimate {
            high_ms: None,
            samples: 100,
            ..few.percentiles[2]
        };
        let gates = evaluate(&baseline, &phase("load", 1.0, 2.0, 0), &durable(), &LIMITS);
        assert_eq!(failed(&gates), vec![]);
        let slo = gates
            .iter()
            .find(|g| g.kind == GateKind::Slo && g.phase.as_deref() == Some("baseline"))
            .unwrap();
        assert_eq!(slo.verdict, Verdict::Inconclusive);
        assert_eq!(slo.samples, 100);
        // 563 samples bound a p99: with margin, ~8× the 10 s phase.
        let advice = slo.advice.as_deref().unwrap();
        assert!(advice.contains("--baseline-secs 85"), "{advice}");
    }

    fn window(from: u64, p99: f64, samples: u64, bounded: bool) -> Window {
        Window {
            from_second: from,
            to_second: from + 10,
            requests: samples,
            tail: Estimate {
                high_ms: bounded.then_some(p99 * 1.01),
                samples,
                ..tight(99.0, p99)
            },
        }
    }

    #[test]
    fn one_slow_window_fails_the_window_gate() {
        let limits = Limits {
            window_secs: 10,
            ..LIMITS
        };
        let mut load = phase("load", 10.0, 20.0, 0);
        load.windows = vec![window(0, 20.0, 5000, true), window(10, 20.0, 5000, true)];
        let verdict = |load: &PhaseSummary| window_gates(load, &limits)[0].verdict;
        assert_eq!(verdict(&load), Verdict::Pass);
        load.windows.push(window(20, 900.0, 5000, true));
        assert_eq!(verdict(&load), Verdict::Fail);
        load.windows.pop();
        load.windows.push(window(20, 20.0, 80, false));
        assert_eq!(verdict(&load), Verdict::Inconclusive);
        load.windows.clear();
        assert_eq!(verdict(&load), Verdict::Inconclusive);
    }

    fn second(second: u64, p99: f64, bounded: bool) -> TimelinePoint {
        TimelinePoint {
            second,
            requests: 1000,
            errors: 0,
            users: 10,
            p50_ms: p99 / 4.0,
            p95_ms: p99 / 2.0,
            p99_ms: p99,
            tail: Estimate {
                high_ms: bounded.then_some(p99 * 1.01),
                ..tight(99.0, p99)
            },
        }
    }

    #[test]
    fn seconds_in_a_row_over_the_slo_are_bounded() {
        let limits = Limits {
            max_slow_secs: Some(2),
            ..LIMITS
        };
        let mut load = phase("load", 10.0, 20.0, 0);
        let streak = |load: &PhaseSummary| window_gates(load, &limits)[0].verdict;
        // Two slow seconds, a fast one, two slow: a streak of 2 holds.
        load.timeline = [10.0, 900.0, 900.0, 10.0, 900.0, 900.0]
            .iter()
            .enumerate()
            .map(|(i, &p99)| second(i as u64, p99, true))
            .collect();
        assert_eq!(streak(&load), Verdict::Pass);
        // Three in a row fail.
        load.timeline[3] = second(3, 900.0, true);
        assert_eq!(streak(&load), Verdict::Fail);
        // An undecided second between two slow ones: could be 5, could be 2.
        load.timeline[3] = second(3, 10.0, false);
        assert_eq!(streak(&load), Verdict::Inconclusive);
        // Seconds of the warm-up do not count.
        load.excluded_secs = 3.0;
        load.timeline[3] = second(3, 10.0, true);
        assert_eq!(streak(&load), Verdict::Pass);
    }
}
