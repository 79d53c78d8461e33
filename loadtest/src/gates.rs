//! The gates of a run and its verdict. Pure code: figures in, judgements out.

use serde::Serialize;

use crate::{checks::Durability, measure::PhaseSummary, mix::Endpoint};

/// The limits every run is judged against.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    pub slo_ms: f64,
    pub max_degradation: f64,
    pub noise_floor_ms: f64,
    pub max_error_rate: f64,
    pub drain_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    Slo,
    Degradation,
    ErrorRate,
    Durability,
}

/// One judged figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gate {
    pub kind: GateKind,
    pub phase: Option<String>,
    pub endpoint: Option<Endpoint>,
    pub passed: bool,
    /// The measured figure, in words.
    pub measured: String,
    /// The limit, in words.
    pub limit: String,
}

impl Gate {
    pub fn line(&self) -> String {
        let subject = [
            self.phase.clone().unwrap_or_default(),
            self.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        let kind = match self.kind {
            GateKind::Slo => "SLO",
            GateKind::Degradation => "degradation",
            GateKind::ErrorRate => "error rate",
            GateKind::Durability => "durability",
        };
        format!(
            "{} {:<12} {:<28} {}  (limit: {})",
            if self.passed { "PASS" } else { "FAIL" },
            kind,
            subject,
            self.measured,
            self.limit
        )
    }
}

pub fn evaluate(
    baseline: &PhaseSummary,
    load: &PhaseSummary,
    durability: &Durability,
    limits: &Limits,
) -> Vec<Gate> {
    let mut gates = Vec::new();
    for phase in [baseline, load] {
        if phase.requests() == 0 {
            gates.push(Gate {
                kind: GateKind::ErrorRate,
                phase: Some(phase.name.clone()),
                endpoint: None,
                passed: false,
                measured: "no request was measured".into(),
                limit: "at least one request".into(),
            });
            continue;
        }
        for endpoint in &phase.endpoints {
            gates.push(Gate {
                kind: GateKind::Slo,
                phase: Some(phase.name.clone()),
                endpoint: Some(endpoint.endpoint),
                passed: endpoint.p95_ms < limits.slo_ms && endpoint.p99_ms < limits.slo_ms,
                measured: format!(
                    "p95 {:.2} ms, p99 {:.2} ms",
                    endpoint.p95_ms, endpoint.p99_ms
                ),
                limit: format!("both under {} ms", limits.slo_ms),
            });
        }
        let errors = phase.errors();
        let rate = errors as f64 / phase.requests() as f64;
        gates.push(Gate {
            kind: GateKind::ErrorRate,
            phase: Some(phase.name.clone()),
            endpoint: None,
            passed: rate <= limits.max_error_rate,
            measured: format!("{:.3}% ({errors} of {})", rate * 100.0, phase.requests()),
            limit: format!("at most {:.3}%", limits.max_error_rate * 100.0),
        });
    }
    for endpoint in &load.endpoints {
        let Some(base) = baseline.endpoint(endpoint.endpoint) else {
            continue;
        };
        let increase_ms = endpoint.p95_ms - base.p95_ms;
        let degradation = if base.p95_ms > 0.0 {
            increase_ms / base.p95_ms
        } else {
            0.0
        };
        let within_noise = increase_ms < limits.noise_floor_ms;
        gates.push(Gate {
            kind: GateKind::Degradation,
            phase: None,
            endpoint: Some(endpoint.endpoint),
            passed: degradation <= limits.max_degradation || within_noise,
            measured: format!(
                "p95 {:.2} ms → {:.2} ms: {:+.1}% ({:+.2} ms{})",
                base.p95_ms,
                endpoint.p95_ms,
                degradation * 100.0,
                increase_ms,
                if within_noise && degradation > limits.max_degradation {
                    ", under the noise floor"
                } else {
                    ""
                }
            ),
            limit: format!(
                "at most {:.0}%, or an increase under {} ms",
                limits.max_degradation * 100.0,
                limits.noise_floor_ms
            ),
        });
    }
    let lost = durability.lost.len();
    gates.push(Gate {
        kind: GateKind::Durability,
        phase: None,
        endpoint: None,
        passed: lost == 0,
        measured: format!(
            "{} accepted, {} readable, {lost} lost (after {:.1} s)",
            durability.accepted, durability.persisted, durability.drained_after_secs
        ),
        limit: format!("none lost within {} s", limits.drain_secs),
    });
    gates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{CpuUse, EndpointSummary, ErrorCounts};

    fn phase(name: &str, p95: f64, p99: f64, errors: u64) -> PhaseSummary {
        PhaseSummary {
            name: name.into(),
            users: 1,
            measured_secs: 1.0,
            excluded_secs: 0.0,
            generator_cpu: CpuUse::default(),
            machine_cpu: None,
            machine_disk: None,
            endpoints: vec![EndpointSummary {
                endpoint: Endpoint::GetById,
                requests: 1000,
                rps: 1000.0,
                p50_ms: p95 / 2.0,
                p95_ms: p95,
                p99_ms: p99,
                max_ms: p99,
                errors: ErrorCounts {
                    status: errors,
                    ..Default::default()
                },
            }],
            timeline: Vec::new(),
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
    };

    fn failed(gates: &[Gate]) -> Vec<GateKind> {
        gates.iter().filter(|g| !g.passed).map(|g| g.kind).collect()
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
            &phase("baseline", 1.0, 1.0, 2),
            &phase("load", 1.0, 1.0, 3),
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
}
