//! `--find-capacity`: after the baseline, open-model steps of rising rate
//! (`--rate`, then × `--capacity-step`), each `--load-secs` long with
//! `--users` bounding concurrency, until a step fails its SLO, error-rate
//! or window gates. The highest rate that held is the number to size
//! instances with; the knee step says whether the server or the load
//! generator gave out first.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    LoadtestArgs, Target,
    gates::{self, Gate},
    interrupt,
    measure::PhaseSummary,
    run_measured,
    stats::Verdict,
    workload::{Ledger, LoadModel},
};

/// The first step's rate when `--rate` is not given.
const DEFAULT_START_RATE: u32 = 100;

/// The generator set the pace when the machine was this busy (share of its
/// cores) and the generator took at least `GENERATOR_SHARE` of that.
const MACHINE_SATURATED: f64 = 0.9;
const GENERATOR_SHARE: f64 = 0.5;

/// Which side gave out at the knee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The server's latency or errors broke a gate while the generator had CPU to spare.
    Server,
    /// The generator could not send faster: the machine's CPU was spent, mostly by it.
    Generator,
}

/// One step of the search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// The phase's name in `phases`.
    pub phase: String,
    /// Requests per second asked for.
    pub rate: u32,
    /// Requests per second measured.
    pub achieved_rps: f64,
    /// The worst endpoint's p95 and p99.
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub generator_cores: f64,
    pub machine_busy_cores: Option<f64>,
    pub cores: usize,
    pub verdict: Verdict,
    pub gates: Vec<Gate>,
}

/// The result of the search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    /// The highest rate whose step passed every gate.
    pub held_rate: Option<u32>,
    /// The first rate that did not.
    pub knee_rate: Option<u32>,
    /// Who gave out at the knee, and the figures that say so.
    pub limit: Option<Limit>,
    pub reason: String,
    pub steps: Vec<Step>,
}

impl Capacity {
    /// Pass when a rate held and the knee was decided; fail when not even the
    /// first step held; inconclusive when the knee step could not be decided.
    pub fn verdict(&self) -> Verdict {
        match (self.held_rate, self.steps.last().map(|s| s.verdict)) {
            (None, Some(Verdict::Fail)) => Verdict::Fail,
            (_, Some(Verdict::Inconclusive)) | (None, _) => Verdict::Inconclusive,
            _ => Verdict::Pass,
        }
    }
}

/// The baseline, then the steps; the phases (for the report) and the result.
pub(crate) async fn search(
    args: &LoadtestArgs,
    target: &Target,
    ledger: &Arc<Ledger>,
) -> anyhow::Result<(Vec<PhaseSummary>, Capacity)> {
    let limits = args.limits();
    let mut phases = vec![run_measured(args, &crate::baseline_plan(args, target), ledger).await?];
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = args.rate.unwrap_or(DEFAULT_START_RATE);
    for _ in 0..args.capacity_max_steps {
        if interrupt::requested() {
            break;
        }
        let plan = crate::plan(
            args,
            target,
            format!("rate {rate}/s"),
            args.users,
            args.load_secs,
            LoadModel::Open { per_second: rate },
        );
        let phase = run_measured(args, &plan, ledger).await?;
        let mut step_gates = gates::phase_gates(&phase, &limits);
        step_gates.extend(gates::window_gates(&phase, &limits));
        let step = step(&phase, rate, step_gates);
        eprintln!(
            "loadtest: {}: {:.0} req/s measured, p99 {:.2} ms: {}",
            phase.name,
            step.achieved_rps,
            step.p99_ms,
            step.verdict.label()
        );
        let held = step.verdict == Verdict::Pass;
        steps.push(step);
        phases.push(phase);
        if !held {
            break;
        }
        rate = ((f64::from(rate) * args.capacity_step).ceil() as u32).max(rate + 1);
    }
    Ok((phases, conclude(steps)))
}

fn step(phase: &PhaseSummary, rate: u32, gates: Vec<Gate>) -> Step {
    let worst = |figure: fn(&crate::EndpointSummary) -> f64| {
        phase.endpoints.iter().map(figure).fold(0.0, f64::max)
    };
    Step {
        phase: phase.name.clone(),
        rate,
        achieved_rps: phase.requests() as f64 / phase.measured_secs,
        p95_ms: worst(|e| e.p95().ms),
        p99_ms: worst(|e| e.p99().ms),
        errors: phase.errors(),
        generator_cores: phase.generator_cpu.cores_busy,
        machine_busy_cores: phase.machine_cpu.map(|m| m.cores_busy),
        cores: phase.generator_cpu.cores,
        verdict: Verdict::all(gates.iter().map(|g| g.verdict)),
        gates,
    }
}

/// The highest rate that held, the knee, and who gave out there.
fn conclude(steps: Vec<Step>) -> Capacity {
    let held_rate = steps
        .iter()
        .take_while(|s| s.verdict == Verdict::Pass)
        .map(|s| s.rate)
        .last();
    let knee = steps.iter().find(|s| s.verdict != Verdict::Pass);
    let (limit, reason) = match knee {
        None => (
            None,
            "every step held: raise --capacity-max-steps or --rate to find the knee".to_owned(),
        ),
        Some(knee) if knee.verdict == Verdict::Inconclusive => (
            None,
            format!(
                "the step at {}/s could not be decided (too few samples): raise --load-secs",
                knee.rate
            ),
        ),
        Some(knee) => {
            let limit = limit_at(knee);
            let machine = knee
                .machine_busy_cores
                .map_or_else(String::new, |busy| format!(", the machine {busy:.2} busy"));
            let figures = format!(
                "at {}/s the generator used {:.2} of {} cores{machine}",
                knee.rate, knee.generator_cores, knee.cores
            );
            let why = match limit {
                Limit::Generator => format!(
                    "{figures}: the generator set the pace; run it from another machine to find the server's knee"
                ),
                Limit::Server => format!("{figures}: the server gave out first"),
            };
            (Some(limit), why)
        }
    };
    Capacity {
        held_rate,
        knee_rate: knee.map(|s| s.rate),
        limit,
        reason,
        steps,
    }
}

fn limit_at(knee: &Step) -> Limit {
    let cores = knee.cores.max(1) as f64;
    let generator_bound = match knee.machine_busy_cores {
        Some(busy) => {
            busy >= MACHINE_SATURATED * cores && knee.generator_cores >= GENERATOR_SHARE * busy
        }
        None => knee.generator_cores >= MACHINE_SATURATED * cores,
    };
    if generator_bound {
        Limit::Generator
    } else {
        Limit::Server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rate: u32, verdict: Verdict, generator: f64, machine: f64) -> Step {
        Step {
            phase: format!("rate {rate}/s"),
            rate,
            achieved_rps: f64::from(rate),
            p95_ms: 1.0,
            p99_ms: 2.0,
            errors: 0,
            generator_cores: generator,
            machine_busy_cores: Some(machine),
            cores: 2,
            verdict,
            gates: Vec::new(),
        }
    }

    #[test]
    fn the_highest_passing_rate_held_and_the_server_gave_out() {
        let capacity = conclude(vec![
            at(100, Verdict::Pass, 0.1, 0.5),
            at(150, Verdict::Pass, 0.2, 0.8),
            at(225, Verdict::Fail, 0.3, 1.9),
        ]);
        assert_eq!(capacity.held_rate, Some(150));
        assert_eq!(capacity.knee_rate, Some(225));
        assert_eq!(capacity.limit, Some(Limit::Server));
        assert_eq!(capacity.verdict(), Verdict::Pass);
    }

    #[test]
    fn a_generator_spending_the_machine_is_the_limit() {
        let capacity = conclude(vec![
            at(100, Verdict::Pass, 0.5, 1.0),
            at(150, Verdict::Fail, 1.2, 1.95),
        ]);
        assert_eq!(capacity.limit, Some(Limit::Generator));
        assert!(
            capacity.reason.contains("1.20 of 2 cores"),
            "{}",
            capacity.reason
        );
    }

    #[test]
    fn no_step_held_fails_and_an_undecided_knee_is_inconclusive() {
        assert_eq!(
            conclude(vec![at(100, Verdict::Fail, 0.1, 0.5)]).verdict(),
            Verdict::Fail
        );
        let undecided = conclude(vec![
            at(100, Verdict::Pass, 0.1, 0.5),
            at(150, Verdict::Inconclusive, 0.1, 0.5),
        ]);
        assert_eq!(undecided.held_rate, Some(100));
        assert_eq!(undecided.verdict(), Verdict::Inconclusive);
    }
}
