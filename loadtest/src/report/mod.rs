//! What a run leaves behind: the table and verdict on stdout, and in the
//! report folder `summary.json` (the figures, for `--compare` and other
//! tools) and `report.html` (one self-contained page: tables, gates and
//! charts, offline).

mod chart;
mod html;

use std::{fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    capacity::Capacity,
    checks::Durability,
    compare::Comparison,
    gates::{Gate, Limits},
    measure::PhaseSummary,
    stats::percentile_name,
};

/// Version of `summary.json`'s layout; `--compare` reads only its own.
pub const SCHEMA: u32 = 2;

/// How the run as a whole ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunVerdict {
    Pass,
    Fail,
    Inconclusive,
    Interrupted,
}

impl RunVerdict {
    pub fn label(self) -> &'static str {
        match self {
            RunVerdict::Pass => "pass",
            RunVerdict::Fail => "fail",
            RunVerdict::Inconclusive => "inconclusive",
            RunVerdict::Interrupted => "interrupted",
        }
    }
}

/// Everything `summary.json` holds; its schema is documented in docs/LOADTEST.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub schema: u32,
    pub host: String,
    pub started_at: String,
    /// `closed` (users with think time) or `open` (fixed arrival rate).
    pub model: String,
    pub mix: String,
    pub limits: Limits,
    /// The percentiles of every endpoint's figures.
    pub percentiles: Vec<f64>,
    pub phases: Vec<PhaseSummary>,
    /// `None` when the run was interrupted before the check.
    pub durability: Option<Durability>,
    pub gates: Vec<Gate>,
    pub comparison: Option<Comparison>,
    pub capacity: Option<Capacity>,
    pub verdict: RunVerdict,
}

/// Everything printed on stdout at the end of a run.
pub fn terminal(summary: &Summary) -> String {
    let mut out = table(summary);
    if let Some(capacity) = &summary.capacity {
        out.push_str(&capacity_table(capacity));
    }
    if let Some(comparison) = &summary.comparison {
        out.push_str(&comparison_table(comparison));
    }
    for gate in &summary.gates {
        let _ = writeln!(out, "{}", gate.line());
    }
    if let Some(durability) = summary.durability.as_ref().filter(|d| !d.lost.is_empty()) {
        out.push_str("lost writes (accepted with 202, never readable):\n");
        for id in &durability.lost {
            let _ = writeln!(out, "  {id}");
        }
    }
    let _ = writeln!(
        out,
        "verdict: {}{}",
        summary.verdict.label().to_uppercase(),
        match summary.verdict {
            crate::RunVerdict::Inconclusive =>
                " (too few samples to decide every gate: see the advice above)",
            crate::RunVerdict::Interrupted => " (stopped by Ctrl-C; the figures cover what ran)",
            _ => "",
        }
    );
    out
}

/// Phase × endpoint: requests, requests/s, the percentiles, max, errors.
pub fn table(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<14} {:<15} {:>9} {:>10}",
        "phase", "endpoint", "requests", "req/s"
    );
    for &p in &summary.percentiles {
        let _ = write!(out, " {:>9}", format!("{} ms", percentile_name(p)));
    }
    let _ = writeln!(
        out,
        " {:>9} {:>7} {:>7} {:>7}",
        "max ms", "status", "timeout", "conn"
    );
    for phase in &summary.phases {
        for e in &phase.endpoints {
            let _ = write!(
                out,
                "{:<14} {:<15} {:>9} {:>10.1}",
                phase.name,
                e.endpoint.label(),
                e.requests,
                e.rps
            );
            for &p in &summary.percentiles {
                let estimate = e.percentile(p);
                // An unbounded interval: the figure rests on too few samples.
                let mark = if estimate.high_ms.is_none() { "?" } else { "" };
                let _ = write!(out, " {:>9}", format!("{:.2}{mark}", estimate.ms));
            }
            let _ = writeln!(
                out,
                " {:>9.2} {:>7} {:>7} {:>7}",
                e.max_ms, e.errors.status, e.errors.timeout, e.errors.connection
            );
        }
        let _ = writeln!(out, "{:<14} {}", "", phase_note(phase));
    }
    if summary
        .phases
        .iter()
        .flat_map(|p| &p.endpoints)
        .any(|e| e.percentiles.iter().any(|p| p.high_ms.is_none()))
    {
        out.push_str("? = too few samples to bound that percentile from above\n");
    }
    out
}

/// The phase's load and what the machine did meanwhile, in one line.
pub fn phase_note(phase: &PhaseSummary) -> String {
    let mut note = format!(
        "{} users, {:.0} s measured after {:.0} s ramp-up and warm-up; generator CPU {:.2} of {} cores",
        phase.users,
        phase.measured_secs,
        phase.excluded_secs,
        phase.generator_cpu.cores_busy,
        phase.generator_cpu.cores
    );
    if let Some(machine) = phase.machine_cpu {
        let _ = write!(
            note,
            "; whole machine {:.2} busy, {:.2} stolen by the host",
            machine.cores_busy, machine.cores_stolen
        );
    }
    if let Some(disk) = phase.machine_disk {
        let _ = write!(
            note,
            "; slowest disk sync {:.1} ms ({} of {} over 100 ms)",
            disk.slowest_ms, disk.stalls, disk.syncs
        );
    }
    note
}

fn capacity_table(capacity: &Capacity) -> String {
    let mut out = format!(
        "capacity search:\n  {:>8} {:>10} {:>9} {:>9} {:>7} {:>9}  verdict\n",
        "rate/s", "measured", "p95 ms", "p99 ms", "errors", "gen CPU"
    );
    for step in &capacity.steps {
        let _ = writeln!(
            out,
            "  {:>8} {:>10.1} {:>9.2} {:>9.2} {:>7} {:>9.2}  {}",
            step.rate,
            step.achieved_rps,
            step.p95_ms,
            step.p99_ms,
            step.errors,
            step.generator_cores,
            step.verdict.label()
        );
    }
    let _ = writeln!(
        out,
        "capacity: {}; {}",
        capacity.held_rate.map_or_else(
            || "no rate held".to_owned(),
            |rate| format!("{rate} requests/s held")
        ),
        capacity.reason
    );
    out
}

fn comparison_table(comparison: &Comparison) -> String {
    let mut out = format!(
        "against the run of {} ({}):\n",
        comparison.previous_started_at, comparison.previous_host
    );
    for note in &comparison.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    let _ = writeln!(
        out,
        "  {:<14} {:<15} {:<6} {:>10} {:>10} {:>8}  verdict",
        "phase", "endpoint", "figure", "previous", "now", "change"
    );
    for row in &comparison.rows {
        let _ = writeln!(
            out,
            "  {:<14} {:<15} {:<6} {:>10.2} {:>10.2} {:>+7.1}%  {}",
            row.phase,
            row.endpoint.label(),
            row.figure,
            row.previous,
            row.current,
            row.change * 100.0,
            row.verdict.label()
        );
    }
    out
}

pub fn write_files(dir: &Path, summary: &Summary) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(summary).expect("the summary serialises");
    std::fs::write(dir.join("summary.json"), json)?;
    std::fs::write(dir.join("report.html"), html::page(summary))?;
    Ok(())
}
