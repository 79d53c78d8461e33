//! `svc loadtest`: the load test and CI performance gate of svc.
//!
//! A run seeds records, then drives a **baseline** phase (few users) and a
//! **load** phase (many users) against `--host` with goose, timing every
//! request itself at microsecond resolution. It then checks that every write
//! answered 202 became readable, judges the gates (SLO on p95 and p99,
//! degradation from baseline to load, windowed SLO, error rate, durability,
//! and regression against `--compare`), each on how many samples its figure
//! rests on, prints a table and a verdict, and writes `summary.json` and
//! `report.html` (and `--junit`).
//!
//! With `--confirm-runs`, a run that failed only latency gates is measured
//! again before its verdict is believed (`confirm`). With `--find-capacity`
//! the load phase becomes a search for the highest rate that holds
//! (`capacity`).
//!
//! [`run`] returns the [`Outcome`]; its exit code is 0 (every gate holds),
//! 1 (a gate failed), 2 (the run could not be made, or was interrupted) or
//! 3 (inconclusive: too few samples to decide a gate).

mod args;
mod capacity;
mod checks;
mod compare;
mod confirm;
mod disk;
mod gates;
mod interrupt;
mod junit;
mod measure;
mod mix;
mod report;
mod stats;
mod system;
mod workload;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

pub use args::LoadtestArgs;
pub use capacity::{Capacity, Limit};
pub use checks::Durability;
pub use gates::{Gate, GateKind, Limits};
pub use measure::{EndpointSummary, PhaseSummary};
pub use mix::{Endpoint, Mix};
pub use report::{RunVerdict, Summary};
pub use stats::{Estimate, Verdict};

use confirm::{Confirmation, Next};
use workload::{Ledger, LoadModel, PhasePlan, run_phase};

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every gate held.
    Passed(Box<Summary>),
    /// At least one gate failed.
    Failed(Box<Summary>),
    /// No gate failed, but at least one had too few samples to decide.
    Inconclusive(Box<Summary>),
    /// Ctrl-C stopped it; the report holds what was measured.
    Interrupted(Box<Summary>),
    /// The run could not be made; the reason says why.
    NotRun(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Passed(_) => 0,
            Outcome::Failed(_) => 1,
            Outcome::NotRun(_) | Outcome::Interrupted(_) => 2,
            Outcome::Inconclusive(_) => 3,
        }
    }

    pub fn summary(&self) -> Option<&Summary> {
        match self {
            Outcome::Passed(summary)
            | Outcome::Failed(summary)
            | Outcome::Inconclusive(summary)
            | Outcome::Interrupted(summary) => Some(summary),
            Outcome::NotRun(_) => None,
        }
    }

    fn of(summary: Summary) -> Self {
        let summary = Box::new(summary);
        match summary.verdict {
            RunVerdict::Pass => Outcome::Passed(summary),
            RunVerdict::Fail => Outcome::Failed(summary),
            RunVerdict::Inconclusive => Outcome::Inconclusive(summary),
            RunVerdict::Interrupted => Outcome::Interrupted(summary),
        }
    }
}

/// Runs the whole load test, printing progress to stderr and the table and
/// verdict to stdout; measures again as `--confirm-runs` allows.
pub async fn run(args: LoadtestArgs) -> Outcome {
    interrupt::listen();
    let started = Instant::now();
    let previous = match &args.compare {
        Some(path) => match compare::load(path) {
            Ok(previous) => Some(previous),
            Err(err) => return Outcome::NotRun(format!("--compare: {err:#}")),
        },
        None => None,
    };
    let policy = args.confirm_policy();
    let mut confirmation = Confirmation::default();
    let summary = loop {
        let summary = match measure_once(&args, previous.as_ref()).await {
            Ok(summary) => summary,
            Err(err) => return Outcome::NotRun(format!("{err:#}")),
        };
        if summary.verdict == RunVerdict::Interrupted {
            break summary;
        }
        match confirmation.after(&summary, &policy) {
            Next::Stop(why) => {
                if let Some(why) = why {
                    println!("loadtest: {why}");
                }
                break summary;
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
    };
    if let Some(path) = &args.junit
        && let Err(err) = junit::write(path, &summary, started.elapsed().as_secs_f64())
    {
        return Outcome::NotRun(format!("cannot write {}: {err}", path.display()));
    }
    Outcome::of(summary)
}

/// One run: seed, the phases, the durability check, the gates, the table
/// and the report files.
async fn measure_once(args: &LoadtestArgs, previous: Option<&Summary>) -> anyhow::Result<Summary> {
    let target = Target::prepare(args).await?;
    let ledger = Arc::new(Ledger::default());
    if !interrupt::requested() {
        seed(args, &target, &ledger).await;
    }
    let (phases, capacity) = if args.find_capacity {
        let (phases, capacity) = capacity::search(args, &target, &ledger).await?;
        (phases, Some(capacity))
    } else {
        (run_phases(args, &target, &ledger).await?, None)
    };
    let durability = if interrupt::requested() {
        None
    } else {
        eprintln!(
            "loadtest: checking that every accepted write is readable (up to {} s)",
            args.drain_secs
        );
        Some(
            checks::wait_until_readable(
                &target.client,
                &target.host,
                ledger.accepted(),
                Duration::from_secs(args.drain_secs),
            )
            .await,
        )
    };
    let summary = judge(args, target, phases, durability, capacity, previous);
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

/// The plan of a phase of `users` users for `secs` seconds under `load`.
fn plan(
    args: &LoadtestArgs,
    target: &Target,
    name: String,
    users: u32,
    secs: u64,
    load: LoadModel,
) -> PhasePlan {
    PhasePlan {
        goose_report: args
            .report_dir
            .join(format!("goose-{}.html", name.replace(['/', ' '], "-"))),
        name,
        host: target.host.clone(),
        users,
        hatch_rate: args.hatch_rate,
        warmup: Duration::from_secs(args.warmup_secs),
        measured: Duration::from_secs(secs),
        mix: args.mix,
        load,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        progress: (!args.quiet).then(|| Duration::from_secs(args.progress_secs)),
    }
}

/// The baseline phase's plan: few users, closed, or open at the baseline rate.
fn baseline_plan(args: &LoadtestArgs, target: &Target) -> PhasePlan {
    let load = match args.rate {
        Some(rate) => LoadModel::Open {
            per_second: args.baseline_rate.unwrap_or((rate / 10).max(1)),
        },
        None => closed(args),
    };
    plan(
        args,
        target,
        "baseline".into(),
        args.baseline_users,
        args.baseline_secs,
        load,
    )
}

fn closed(args: &LoadtestArgs) -> LoadModel {
    let (think_min, think_max) = args.think_time();
    LoadModel::Closed {
        think_min,
        think_max,
    }
}

/// The baseline phase, then the load phase; fewer when interrupted.
async fn run_phases(
    args: &LoadtestArgs,
    target: &Target,
    ledger: &Arc<Ledger>,
) -> anyhow::Result<Vec<PhaseSummary>> {
    let load = match args.rate {
        Some(rate) => LoadModel::Open { per_second: rate },
        None => closed(args),
    };
    let mut phases = Vec::new();
    for plan in [
        baseline_plan(args, target),
        plan(
            args,
            target,
            "load".into(),
            args.users,
            args.load_secs,
            load,
        ),
    ] {
        if interrupt::requested() {
            break;
        }
        phases.push(run_measured(args, &plan, ledger).await?);
    }
    Ok(phases)
}

/// Runs one phase with the CPU and disk probes, and summarises it.
async fn run_measured(
    args: &LoadtestArgs,
    plan: &PhasePlan,
    ledger: &Arc<Ledger>,
) -> anyhow::Result<PhaseSummary> {
    eprintln!(
        "loadtest: {} phase: {} users{}, {:.1} s ramp-up, {} s warm-up, {} s measured",
        plan.name,
        plan.users,
        match plan.load {
            LoadModel::Open { per_second } => format!(" at {per_second} requests/s"),
            LoadModel::Closed { .. } => String::new(),
        },
        plan.ramp_up().as_secs_f64(),
        plan.warmup.as_secs(),
        plan.measured.as_secs()
    );
    let started = Instant::now();
    let cpu = system::CpuMeter::start();
    let disk = disk::DiskProbe::start(&args.report_dir, plan.unmeasured());
    let recorder = run_phase(plan, ledger.clone()).await?;
    // Interrupted, the measured window is what ran of it.
    let measured = plan
        .measured
        .min(started.elapsed().saturating_sub(plan.unmeasured()));
    let mut phase = recorder.summarise(
        &plan.name,
        plan.users,
        measured,
        cpu.stop(),
        &args.resolution(),
    );
    // Stopping joins the probe's thread, which may be inside a sync that
    // a stalled disk holds for a second: off the runtime's workers.
    phase.machine_disk = match disk {
        Some(probe) => tokio::task::spawn_blocking(move || probe.stop())
            .await
            .ok()
            .flatten(),
        None => None,
    };
    Ok(phase)
}

/// Every gate, judged on the phases, the durability check and the
/// previous run; and the run's verdict.
fn judge(
    args: &LoadtestArgs,
    target: Target,
    phases: Vec<PhaseSummary>,
    durability: Option<Durability>,
    capacity: Option<Capacity>,
    previous: Option<&Summary>,
) -> Summary {
    let limits = args.limits();
    let model = if args.rate.is_some() || args.find_capacity {
        "open"
    } else {
        "closed"
    };
    let mix = args.mix.to_string();
    // In a capacity search the steps are judged by the search; the gates
    // are the baseline's.
    let judged = if capacity.is_some() {
        &phases[..phases.len().min(1)]
    } else {
        &phases[..]
    };
    let mut gates: Vec<Gate> = judged
        .iter()
        .flat_map(|phase| gates::phase_gates(phase, &limits))
        .collect();
    if let [baseline, load] = judged {
        gates.extend(gates::degradation(baseline, load, &limits));
        gates.extend(gates::window_gates(load, &limits));
    }
    if let Some(durability) = &durability {
        gates.push(gates::durability(durability, &limits));
    }
    let comparison = previous.map(|previous| {
        let (comparison, regressions) = compare::compare(previous, model, &mix, judged, &limits);
        gates.extend(regressions);
        comparison
    });
    let verdict = if interrupt::requested() {
        RunVerdict::Interrupted
    } else {
        let mut verdicts: Vec<Verdict> = gates.iter().map(|g| g.verdict).collect();
        verdicts.extend(capacity.as_ref().map(Capacity::verdict));
        match Verdict::all(verdicts) {
            Verdict::Pass => RunVerdict::Pass,
            Verdict::Fail => RunVerdict::Fail,
            Verdict::Inconclusive => RunVerdict::Inconclusive,
        }
    };
    Summary {
        schema: report::SCHEMA,
        host: target.host,
        started_at: target.started_at,
        model: model.to_owned(),
        mix,
        limits,
        percentiles: args.resolution().percentiles,
        phases,
        durability,
        gates,
        comparison,
        capacity,
        verdict,
    }
}

/// The table and verdict on stdout; `summary.json` and `report.html`.
fn report(args: &LoadtestArgs, summary: &Summary) -> anyhow::Result<()> {
    print!("{}", report::terminal(summary));
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
