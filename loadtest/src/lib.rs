//! `svc loadtest`: the load test and CI performance gate of svc.
//!
//! A run seeds records, then drives a **baseline** phase (few users) and a
//! **load** phase (many users) against `--host` with goose, timing every
//! request itself at microsecond resolution. It then checks that every write
//! answered 202 became readable, judges the gates (SLO on p95 and p99,
//! degradation from baseline to load, error rate, durability), prints a
//! table and a verdict, and writes `summary.json` and `report.html`.
//!
//! With `--confirm-runs`, a run that failed only latency gates is measured
//! again before its verdict is believed (`confirm`).
//!
//! [`run`] returns the [`Outcome`]; its exit code is 0 (every gate holds),
//! 1 (a gate failed) or 2 (the run could not be made).

mod args;
mod checks;
mod confirm;
mod disk;
mod gates;
mod measure;
mod mix;
mod report;
mod system;
mod workload;

use std::{path::Path, sync::Arc, time::Duration};

pub use args::LoadtestArgs;
pub use checks::Durability;
pub use gates::{Gate, GateKind, Limits};
pub use measure::{EndpointSummary, PhaseSummary};
pub use mix::{Endpoint, Mix};
pub use report::Summary;

use confirm::{Confirmation, Next};
use workload::{Ledger, LoadModel, PhasePlan, run_phase};

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every gate held.
    Passed(Box<Summary>),
    /// At least one gate failed.
    Failed(Box<Summary>),
    /// The run could not be made; the reason says why.
    NotRun(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Passed(_) => 0,
            Outcome::Failed(_) => 1,
            Outcome::NotRun(_) => 2,
        }
    }

    pub fn summary(&self) -> Option<&Summary> {
        match self {
            Outcome::Passed(summary) | Outcome::Failed(summary) => Some(summary),
            Outcome::NotRun(_) => None,
        }
    }
}

/// Runs the whole load test, printing progress to stderr and the table and
/// verdict to stdout; measures again as `--confirm-runs` allows.
pub async fn run(args: LoadtestArgs) -> Outcome {
    let policy = args.confirm_policy();
    let mut confirmation = Confirmation::default();
    loop {
        let summary = match measure_once(&args).await {
            Ok(summary) => summary,
            Err(err) => return Outcome::NotRun(format!("{err:#}")),
        };
        match confirmation.after(&summary, &policy) {
            Next::Stop(why) => {
                if let Some(why) = why {
                    println!("loadtest: {why}");
                }
                return if summary.verdict == "pass" {
                    Outcome::Passed(Box::new(summary))
                } else {
                    Outcome::Failed(Box::new(summary))
                };
            }
            Next::Again(why) => {
                let earlier = args.report_dir.join(format!("run-{}", confirmation.runs()));
                if let Err(err) = keep_reports(&args.report_dir, &earlier) {
                    return Outcome::NotRun(format!(
                        "cannot keep the report in {}: {err}",
                        earlier.display()
                    ));
                }
                println!(
                    "loadtest: {why} (that run's report is in {})",
                    earlier.display()
                );
            }
        }
    }
}

/// One run: seed, the two phases, the durability check, the gates, the
/// table and the report files.
async fn measure_once(args: &LoadtestArgs) -> anyhow::Result<Summary> {
    let target = Target::prepare(args).await?;
    let ledger = Arc::new(Ledger::default());
    seed(args, &target, &ledger).await;
    let (phases, model) = run_phases(args, &target, &ledger).await?;
    eprintln!(
        "loadtest: checking that every accepted write is readable (up to {} s)",
        args.drain_secs
    );
    let durability = checks::wait_until_readable(
        &target.client,
        &target.host,
        ledger.accepted(),
        Duration::from_secs(args.drain_secs),
    )
    .await;
    let summary = judge(args, target, model, phases, durability);
    report(args, &summary)?;
    Ok(summary)
}

/// The API under test, found reachable, and where the report goes.
struct Target {
    host: String,
    client: reqwest::Client,
    started_at: String,
}

impl Target {
    async fn prepare(args: &LoadtestArgs) -> anyhow::Result<Self> {
        let open_files = system::raise_open_file_limit();
        if open_files < u64::from(args.users) + 256 {
            tracing::warn!(
                open_files,
                users = args.users,
                "the open-file limit may be too low for this many users"
            );
        }
        std::fs::create_dir_all(&args.report_dir)
            .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", args.report_dir.display()))?;
        let host = args.host.trim_end_matches('/').to_owned();
        let client = checks::client(Duration::from_secs(args.request_timeout_secs));
        checks::reachable(&client, &host).await?;
        Ok(Self {
            host,
            client,
            started_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }
}

/// Writes `--seed-records` records for the GETs to read, and waits (a
/// while) until they are readable.
async fn seed(args: &LoadtestArgs, target: &Target, ledger: &Arc<Ledger>) {
    let seeded = checks::seed(&target.client, &target.host, args.seed_records, ledger).await;
    eprintln!("loadtest: seeded {seeded} of {} records", args.seed_records);
    let settle = Duration::from_secs(args.drain_secs.min(30));
    let seeds =
        checks::wait_until_readable(&target.client, &target.host, ledger.accepted(), settle).await;
    if !seeds.lost.is_empty() {
        eprintln!(
            "loadtest: {} seeded records not readable after {:.0} s; going on (the durability gate will judge)",
            seeds.lost.len(),
            seeds.drained_after_secs
        );
    }
}

/// The baseline phase, then the load phase; and the load model's name.
async fn run_phases(
    args: &LoadtestArgs,
    target: &Target,
    ledger: &Arc<Ledger>,
) -> anyhow::Result<(Vec<PhaseSummary>, &'static str)> {
    let (baseline_model, load_model, model) = match args.rate {
        Some(rate) => (
            LoadModel::Open {
                per_second: args.baseline_rate.unwrap_or((rate / 10).max(1)),
            },
            LoadModel::Open { per_second: rate },
            "open",
        ),
        None => {
            let (think_min, think_max) = args.think_time();
            let closed = LoadModel::Closed {
                think_min,
                think_max,
            };
            (closed, closed, "closed")
        }
    };
    let plan = |name: &'static str, users: u32, secs: u64, load: LoadModel| PhasePlan {
        name,
        host: target.host.clone(),
        users,
        hatch_rate: args.hatch_rate,
        warmup: Duration::from_secs(args.warmup_secs),
        measured: Duration::from_secs(secs),
        mix: args.mix,
        load,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        goose_report: args.report_dir.join(format!("goose-{name}.html")),
    };
    let mut phases = Vec::new();
    for plan in [
        plan(
            "baseline",
            args.baseline_users,
            args.baseline_secs,
            baseline_model,
        ),
        plan("load", args.users, args.load_secs, load_model),
    ] {
        eprintln!(
            "loadtest: {} phase: {} users, {:.1} s ramp-up, {} s warm-up, {} s measured",
            plan.name,
            plan.users,
            plan.ramp_up().as_secs_f64(),
            plan.warmup.as_secs(),
            plan.measured.as_secs()
        );
        let cpu = system::CpuMeter::start();
        let disk = disk::DiskProbe::start(&args.report_dir, plan.unmeasured());
        let recorder = run_phase(&plan, ledger.clone()).await?;
        let mut phase = recorder.summarise(plan.name, plan.users, plan.measured, cpu.stop());
        // Stopping joins the probe's thread, which may be inside a sync that
        // a stalled disk holds for a second: off the runtime's workers.
        phase.machine_disk = match disk {
            Some(probe) => tokio::task::spawn_blocking(move || probe.stop())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        phases.push(phase);
    }
    Ok((phases, model))
}

/// Every gate, judged on the phases and the durability check.
fn judge(
    args: &LoadtestArgs,
    target: Target,
    model: &'static str,
    phases: Vec<PhaseSummary>,
    durability: Durability,
) -> Summary {
    let limits = Limits {
        slo_ms: args.slo_ms,
        max_degradation: args.max_degradation,
        noise_floor_ms: args.noise_floor_ms,
        max_error_rate: args.max_error_rate,
        drain_secs: args.drain_secs,
    };
    let gates = gates::evaluate(&phases[0], &phases[1], &durability, &limits);
    let passed = gates.iter().all(|g| g.passed);
    Summary {
        schema: 1,
        host: target.host,
        started_at: target.started_at,
        model,
        mix: args.mix.to_string(),
        limits,
        phases,
        durability,
        gates,
        verdict: if passed { "pass" } else { "fail" },
    }
}

/// The table and verdict on stdout; `summary.json` and `report.html`.
fn report(args: &LoadtestArgs, summary: &Summary) -> anyhow::Result<()> {
    println!("{}", report::table(&summary.phases));
    print!("{}", report::verdict_lines(&summary.gates));
    if !summary.durability.lost.is_empty() {
        println!("lost writes (accepted with 202, never readable):");
        for id in &summary.durability.lost {
            println!("  {id}");
        }
    }
    println!("verdict: {}", summary.verdict.to_uppercase());
    report::write_files(&args.report_dir, summary).map_err(|err| {
        anyhow::anyhow!(
            "cannot write the report to {}: {err}",
            args.report_dir.display()
        )
    })?;
    println!("report: {}", args.report_dir.join("report.html").display());
    Ok(())
}

/// Moves a run's `summary.json` and HTML reports from `dir` into `earlier`.
fn keep_reports(dir: &Path, earlier: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(earlier)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "summary.json" || name.ends_with(".html") {
            std::fs::rename(&path, earlier.join(name))?;
        }
    }
    Ok(())
}
