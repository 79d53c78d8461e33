//! Measuring again before a failed latency gate is believed.
//!
//! On a shared machine, with the generator beside the server, the host now
//! and then lifts a p95 by milliseconds (the cores it steals show in the
//! phase footnote), and a disk that stalls one sync for half a second holds
//! every write awaiting its broker confirm as long. A regression fails every
//! run; the host fails one. So with `--confirm-runs N` (N > 1), a run whose
//! only failed gates are latency gates (SLO, degradation) is measured again:
//! two such runs with the host quiet fail, a pass ends it, and a run during
//! which the host took `--max-stolen-cores` or a sync took
//! `--max-disk-sync-ms` measured the host and does not count, up to N runs in
//! all. A failed error-rate or durability gate is never measured again.

use std::collections::BTreeSet;

use crate::{Summary, Verdict};

/// Runs whose failed latency gates count before the verdict is a fail.
const COUNTED_FAILURES: u32 = 2;

#[derive(Debug, Clone, Copy)]
pub struct ConfirmPolicy {
    /// Most runs in all; 1 turns confirmation off.
    pub max_runs: u32,
    /// Cores the host may take from this machine in a run that counts.
    pub max_stolen_cores: f64,
    /// The slowest disk sync a run that counts may see, in ms.
    pub max_disk_sync_ms: f64,
}

/// What to do after a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// This run's verdict stands; the reason is printed when a re-run was possible.
    Stop(Option<String>),
    /// Measure again; the reason is printed.
    Again(String),
}

/// The runs so far.
#[derive(Debug, Default)]
pub struct Confirmation {
    runs: u32,
    counted: u32,
}

impl Confirmation {
    /// Takes the verdict of one more run into account.
    pub fn after(&mut self, summary: &Summary, policy: &ConfirmPolicy) -> Next {
        self.runs += 1;
        let failed: BTreeSet<&'static str> = summary
            .gates
            .iter()
            .filter(|gate| gate.verdict == Verdict::Fail)
            .map(|gate| gate.kind.name())
            .collect();
        if failed.is_empty() || policy.max_runs <= 1 {
            return Next::Stop(None);
        }
        let kinds = failed.iter().copied().collect::<Vec<_>>().join(", ");
        if summary
            .gates
            .iter()
            .any(|gate| gate.verdict == Verdict::Fail && !gate.kind.is_latency())
        {
            return Next::Stop(Some(format!(
                "failed gates ({kinds}) are not measured again"
            )));
        }
        let (stolen, sync) = host_noise(summary);
        let host = format!("the host took {stolen:.2} cores, the slowest disk sync {sync:.0} ms");
        let why = if stolen >= policy.max_stolen_cores || sync >= policy.max_disk_sync_ms {
            format!(
                "{host} (limits {} cores, {} ms): not counted",
                policy.max_stolen_cores, policy.max_disk_sync_ms
            )
        } else {
            self.counted += 1;
            format!("{host}: counted ({} of {COUNTED_FAILURES})", self.counted)
        };
        if self.counted >= COUNTED_FAILURES || self.runs >= policy.max_runs {
            Next::Stop(Some(format!(
                "only latency gates failed ({kinds}); {why}; no more runs"
            )))
        } else {
            Next::Again(format!(
                "only latency gates failed ({kinds}); {why}; measuring again"
            ))
        }
    }

    pub fn runs(&self) -> u32 {
        self.runs
    }
}

/// The most cores the host took in any phase, and the slowest disk sync.
fn host_noise(summary: &Summary) -> (f64, f64) {
    let stolen = summary
        .phases
        .iter()
        .filter_map(|phase| phase.machine_cpu.as_ref())
        .map(|cpu| cpu.cores_stolen)
        .fold(0.0, f64::max);
    let sync = summary
        .phases
        .iter()
        .filter_map(|phase| phase.machine_disk.as_ref())
        .map(|disk| disk.slowest_ms)
        .fold(0.0, f64::max);
    (stolen, sync)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Durability, Gate, GateKind, Limits, PhaseSummary, RunVerdict,
        disk::DiskSyncs,
        measure::{CpuUse, MachineCpu},
    };

    const POLICY: ConfirmPolicy = ConfirmPolicy {
        max_runs: 4,
        max_stolen_cores: 0.1,
        max_disk_sync_ms: 250.0,
    };

    fn summary(failed: &[GateKind], stolen: f64, slowest_sync_ms: f64) -> Summary {
        let phase = PhaseSummary {
            name: "load".into(),
            users: 10,
            measured_secs: 1.0,
            excluded_secs: 0.0,
            generator_cpu: CpuUse {
                cores_busy: 0.1,
                cores: 2,
            },
            machine_cpu: Some(MachineCpu {
                cores_busy: 1.0,
                cores_stolen: stolen,
            }),
            machine_disk: Some(DiskSyncs {
                syncs: 10,
                slowest_ms: slowest_sync_ms,
                stalls: 0,
            }),
            endpoints: Vec::new(),
            timeline: Vec::new(),
            windows: Vec::new(),
            cpu: Vec::new(),
        };
        let gate = |kind, passed| Gate {
            kind,
            phase: None,
            endpoint: None,
            verdict: if passed { Verdict::Pass } else { Verdict::Fail },
            samples: 1000,
            measured: String::new(),
            limit: String::new(),
            advice: None,
        };
        let mut gates: Vec<Gate> = failed.iter().map(|&kind| gate(kind, false)).collect();
        gates.push(gate(GateKind::ErrorRate, true));
        Summary {
            schema: crate::report::SCHEMA,
            host: "http://127.0.0.1:1".into(),
            started_at: String::new(),
            model: "closed".into(),
            mix: String::new(),
            limits: Limits {
                slo_ms: 500.0,
                max_degradation: 0.1,
                noise_floor_ms: 2.0,
                max_error_rate: 0.001,
                drain_secs: 60,
                window_secs: 10,
                window_percentile: 99.0,
                max_slow_secs: None,
                max_regression: 0.1,
            },
            percentiles: vec![50.0, 95.0, 99.0],
            phases: vec![phase],
            durability: Some(Durability {
                accepted: 0,
                persisted: 0,
                lost: Vec::new(),
                drained_after_secs: 0.0,
            }),
            gates,
            comparison: None,
            capacity: None,
            verdict: if failed.is_empty() {
                RunVerdict::Pass
            } else {
                RunVerdict::Fail
            },
        }
    }

    fn again(next: &Next) -> bool {
        matches!(next, Next::Again(_))
    }

    #[test]
    fn a_pass_ends_it_at_once() {
        let mut runs = Confirmation::default();
        assert_eq!(
            runs.after(&summary(&[], 0.0, 1.0), &POLICY),
            Next::Stop(None)
        );
    }

    #[test]
    fn two_quiet_latency_failures_fail_and_a_pass_between_them_ends_it() {
        let mut runs = Confirmation::default();
        let slow = summary(&[GateKind::Slo], 0.0, 1.0);
        assert!(again(&runs.after(&slow, &POLICY)));
        assert!(!again(&runs.after(&slow, &POLICY)));
        assert_eq!(runs.runs(), 2);

        let mut runs = Confirmation::default();
        assert!(again(
            &runs.after(&summary(&[GateKind::Degradation], 0.0, 1.0), &POLICY)
        ));
        assert_eq!(
            runs.after(&summary(&[], 0.0, 1.0), &POLICY),
            Next::Stop(None)
        );
    }

    #[test]
    fn runs_the_host_disturbed_do_not_count_up_to_the_most_runs() {
        let mut runs = Confirmation::default();
        let stolen = summary(&[GateKind::Slo], 0.3, 1.0);
        let stalled = summary(&[GateKind::Slo], 0.0, 600.0);
        assert!(again(&runs.after(&stolen, &POLICY)));
        assert!(again(&runs.after(&stalled, &POLICY)));
        assert!(again(&runs.after(&stolen, &POLICY)));
        match runs.after(&stolen, &POLICY) {
            Next::Stop(Some(why)) => assert!(why.contains("not counted"), "{why}"),
            other => panic!("the fourth run is the last: {other:?}"),
        }
    }

    #[test]
    fn errors_and_lost_writes_are_never_measured_again() {
        for kind in [GateKind::ErrorRate, GateKind::Durability] {
            let mut runs = Confirmation::default();
            match runs.after(&summary(&[GateKind::Slo, kind], 0.0, 1.0), &POLICY) {
                Next::Stop(Some(why)) => assert!(why.contains("not measured again"), "{why}"),
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn one_run_means_no_confirmation() {
        let policy = ConfirmPolicy {
            max_runs: 1,
            ..POLICY
        };
        let mut runs = Confirmation::default();
        assert_eq!(
            runs.after(&summary(&[GateKind::Slo], 0.0, 1.0), &policy),
            Next::Stop(None)
        );
    }
}
