//! `--compare PREVIOUS/summary.json`: this run against a stored one, so a
//! gate on main can hold the budget between builds, not only between the
//! phases of one run. Each phase and endpoint that both runs measured is
//! judged on its p95, p99 and throughput, with the same interval rules as
//! every other gate.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    gates::{Gate, GateKind, Limits},
    measure::{EndpointSummary, PhaseSummary},
    mix::Endpoint,
    report::{SCHEMA, Summary},
    stats::{Estimate, Verdict, increase_within, rate_within},
};

/// Reads a stored run's `summary.json`.
pub fn load(path: &Path) -> anyhow::Result<Summary> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let schema = serde_json::from_slice::<serde_json::Value>(&text)
        .with_context(|| format!("{} is not JSON", path.display()))?
        .get("schema")
        .and_then(serde_json::Value::as_u64);
    if schema != Some(u64::from(SCHEMA)) {
        anyhow::bail!(
            "{} has summary schema {}, this svc loadtest writes {SCHEMA}: compare runs of one version",
            path.display(),
            schema.map_or_else(|| "none".to_owned(), |s| s.to_string())
        );
    }
    serde_json::from_slice(&text).with_context(|| format!("{} is not a summary", path.display()))
}

/// One figure of both runs side by side.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub phase: String,
    pub endpoint: Endpoint,
    /// `p95`, `p99` or `req/s`.
    pub figure: String,
    pub previous: f64,
    pub current: f64,
    /// (current − previous) / previous.
    pub change: f64,
    pub verdict: Verdict,
}

/// Both runs side by side.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub previous_started_at: String,
    pub previous_host: String,
    /// Differences between the two runs' profiles that make the figures
    /// less comparable (users, mix, model).
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
}

/// The rows and the regression gates of `phases` against `previous`.
pub fn compare(
    previous: &Summary,
    model: &str,
    mix: &str,
    phases: &[PhaseSummary],
    limits: &Limits,
) -> (Comparison, Vec<Gate>) {
    let mut notes = Vec::new();
    if previous.model != model || previous.mix != mix {
        notes.push(format!(
            "profiles differ: {} model, mix {} then; {model} model, mix {mix} now",
            previous.model, previous.mix
        ));
    }
    let mut rows = Vec::new();
    let mut gates = Vec::new();
    for phase in phases {
        let Some(before_phase) = previous.phases.iter().find(|p| p.name == phase.name) else {
            continue;
        };
        if before_phase.users != phase.users {
            notes.push(format!(
                "{}: {} users then, {} now",
                phase.name, before_phase.users, phase.users
            ));
        }
        for now in &phase.endpoints {
            let Some(then) = before_phase.endpoint(now.endpoint) else {
                continue;
            };
            let endpoint_rows = figures(&phase.name, then, now, before_phase, phase, limits);
            let verdict = Verdict::all(endpoint_rows.iter().map(|r| r.verdict));
            gates.push(Gate {
                kind: GateKind::Regression,
                phase: Some(phase.name.clone()),
                endpoint: Some(now.endpoint),
                verdict,
                samples: then.requests.min(now.requests),
                measured: endpoint_rows
                    .iter()
                    .map(|r| format!("{} {:+.1}%", r.figure, r.change * 100.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                limit: format!(
                    "p95 and p99 at most +{:.0}% (or +{} ms), req/s at least −{:.0}%",
                    limits.max_regression * 100.0,
                    limits.noise_floor_ms,
                    limits.max_regression * 100.0
                ),
                advice: (verdict == Verdict::Inconclusive).then(|| {
                    "the intervals of the two runs overlap the budget: longer runs would decide it"
                        .to_owned()
                }),
            });
            rows.extend(endpoint_rows);
        }
    }
    (
        Comparison {
            previous_started_at: previous.started_at.clone(),
            previous_host: previous.host.clone(),
            notes,
            rows,
        },
        gates,
    )
}

fn figures(
    phase: &str,
    then: &EndpointSummary,
    now: &EndpointSummary,
    then_phase: &PhaseSummary,
    now_phase: &PhaseSummary,
    limits: &Limits,
) -> Vec<Row> {
    let latency = |figure: &str, before: Estimate, after: Estimate| Row {
        phase: phase.to_owned(),
        endpoint: now.endpoint,
        figure: figure.to_owned(),
        previous: before.ms,
        current: after.ms,
        change: change(before.ms, after.ms),
        verdict: increase_within(
            &before,
            &after,
            limits.max_regression,
            limits.noise_floor_ms,
        ),
    };
    vec![
        latency("p95", then.p95(), now.p95()),
        latency("p99", then.p99(), now.p99()),
        Row {
            phase: phase.to_owned(),
            endpoint: now.endpoint,
            figure: "req/s".to_owned(),
            previous: then.rps,
            current: now.rps,
            change: change(then.rps, now.rps),
            verdict: rate_within(
                (then.requests, then_phase.measured_secs),
                (now.requests, now_phase.measured_secs),
                limits.max_regression,
            ),
        },
    ]
}

fn change(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        (after - before) / before
    } else {
        0.0
    }
}
