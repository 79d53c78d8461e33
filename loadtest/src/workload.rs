//! One phase of load, run by goose: users that each send a weighted mix of
//! GET by id, list and POST, either as closed loops with think time or at a
//! fixed arrival rate (open model). Every request is timed here, into the
//! phase's [`PhaseRecorder`], from its intended start to its last body byte.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use goose::{client::GooseClientBuilder, config::GooseConfiguration, prelude::*};
use rand::Rng;
use uuid::Uuid;

use crate::{
    measure::{Failure, PhaseRecorder},
    mix::{Endpoint, Mix},
};

/// What the phases share: ids to read, and every id accepted (for the
/// durability check at the end).
#[derive(Debug, Default)]
pub struct Ledger {
    readable: RwLock<Vec<Uuid>>,
    accepted: Mutex<Vec<Uuid>>,
}

impl Ledger {
    pub fn accept(&self, id: Uuid) {
        self.accepted.lock().expect("never poisoned").push(id);
        self.readable.write().expect("never poisoned").push(id);
    }

    pub fn accepted(&self) -> Vec<Uuid> {
        self.accepted.lock().expect("never poisoned").clone()
    }

    /// A known id, or a fresh one (a 404) when nothing was ever accepted.
    fn random_id(&self) -> Uuid {
        let ids = self.readable.read().expect("never poisoned");
        if ids.is_empty() {
            return Uuid::now_v7();
        }
        ids[rand::rng().random_range(0..ids.len())]
    }
}

/// The shape of one phase.
#[derive(Debug, Clone)]
pub struct PhasePlan {
    pub name: String,
    pub host: String,
    pub users: u32,
    pub hatch_rate: u32,
    pub warmup: Duration,
    pub measured: Duration,
    pub mix: Mix,
    pub load: LoadModel,
    pub request_timeout: Duration,
    /// Where goose writes its own HTML report of the phase.
    pub goose_report: std::path::PathBuf,
    /// Time between two progress lines on stderr; `None`: quiet.
    pub progress: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub enum LoadModel {
    /// Each user waits a random think time between requests.
    Closed {
        think_min: Duration,
        think_max: Duration,
    },
    /// Requests start at a fixed rate; users bound how many are in flight.
    Open { per_second: u32 },
}

impl PhasePlan {
    pub fn ramp_up(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.users) / f64::from(self.hatch_rate))
    }

    /// The start of the phase left out of its figures: ramp-up, then warm-up.
    pub fn unmeasured(&self) -> Duration {
        self.ramp_up() + self.warmup
    }

    pub fn length(&self) -> Duration {
        self.unmeasured() + self.measured
    }
}

/// The fixed arrival schedule of the open model: slot `n` starts at
/// `start + n × interval`, whoever takes it and however late.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    interval: Duration,
    next: AtomicU64,
}

/// How late a timer may wake without the delay being charged to the server:
/// tokio's timers have a resolution of one millisecond, so a request woken
/// up to that late was sent on time as far as the server can tell.
const TIMER_SLACK: Duration = Duration::from_millis(2);

impl Schedule {
    /// Waits for the next free slot and returns the instant the request is
    /// deemed to start: its slot when the schedule has fallen behind (the
    /// wait counts against the server), else the moment it is sent.
    async fn next_slot(&self) -> Instant {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let at = self.start + self.interval.mul_f64(n as f64);
        tokio::time::sleep_until(at.into()).await;
        let now = Instant::now();
        if now.saturating_duration_since(at) <= TIMER_SLACK {
            now
        } else {
            at
        }
    }
}

struct Workload {
    recorder: Arc<PhaseRecorder>,
    ledger: Arc<Ledger>,
    mix: Mix,
    schedule: Option<Schedule>,
}

impl Workload {
    async fn one_request(&self, user: &mut GooseUser) {
        let endpoint = self.mix.pick(&mut rand::rng());
        let intended = match &self.schedule {
            Some(schedule) => schedule.next_slot().await,
            None => Instant::now(),
        };
        let outcome = match endpoint {
            Endpoint::GetById => {
                let path = format!("/data/{}", self.ledger.random_id());
                let request = GooseRequest::builder()
                    .path(path.as_str())
                    .name(endpoint.label())
                    .build();
                // 202 is a correct answer for a write not yet persisted.
                exchange(user, request, &[200, 202]).await.map(|_| ())
            }
            Endpoint::List => {
                let request = GooseRequest::builder()
                    .path("/data?limit=20")
                    .name(endpoint.label())
                    .build();
                exchange(user, request, &[200]).await.map(|_| ())
            }
            Endpoint::Post => {
                let body = format!(r#"{{"value":"loadtest {}"}}"#, rand::rng().random::<u64>());
                match user.get_request_builder(&GooseMethod::Post, "/data") {
                    Ok(builder) => {
                        let builder = builder
                            .header("content-type", "application/json")
                            .body(body);
                        let request = GooseRequest::builder()
                            .method(GooseMethod::Post)
                            .path("/data")
                            .name(endpoint.label())
                            .set_request_builder(builder)
                            .build();
                        exchange(user, request, &[202]).await.and_then(|body| {
                            let id = accepted_id(&body).ok_or(Failure::Status)?;
                            self.ledger.accept(id);
                            Ok(())
                        })
                    }
                    Err(_) => Err(Failure::Connection),
                }
            }
        };
        self.recorder.record(endpoint, intended, outcome);
    }
}

/// Sends one request and reads the whole answer.
async fn exchange(
    user: &mut GooseUser,
    request: GooseRequest<'_>,
    expected: &[u16],
) -> Result<Bytes, Failure> {
    let response = match user.request(request).await {
        Ok(goose) => goose.response,
        Err(_) => return Err(Failure::Connection),
    };
    let response = response.map_err(classify)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(classify)?;
    if expected.contains(&status) {
        Ok(body)
    } else {
        Err(Failure::Status)
    }
}

fn classify(err: reqwest::Error) -> Failure {
    if err.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connection
    }
}

fn accepted_id(body: &[u8]) -> Option<Uuid> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str()?.parse().ok()
}

/// goose's `Display` leaves out the option and the reason; its `Debug` has them.
fn goose_error(err: GooseError) -> anyhow::Error {
    anyhow::anyhow!("goose: {err:?}")
}

/// Runs one phase to its end and returns its recorder.
pub async fn run_phase(
    plan: &PhasePlan,
    ledger: Arc<Ledger>,
) -> anyhow::Result<Arc<PhaseRecorder>> {
    let ramp_up = plan.ramp_up();
    let (expected_interval, schedule) = match plan.load {
        LoadModel::Closed {
            think_min,
            think_max,
        } => (Some((think_min + think_max) / 2), None),
        LoadModel::Open { per_second } => (
            None,
            Some(Schedule {
                start: Instant::now() + ramp_up,
                interval: Duration::from_secs_f64(1.0 / f64::from(per_second)),
                next: AtomicU64::new(0),
            }),
        ),
    };
    let recorder = Arc::new(PhaseRecorder::new(plan.unmeasured(), expected_interval));
    let workload = Arc::new(Workload {
        recorder: recorder.clone(),
        ledger,
        mix: plan.mix,
        schedule,
    });
    let transaction: TransactionFunction = Arc::new(move |user| {
        let workload = workload.clone();
        Box::pin(async move {
            workload.one_request(user).await;
            Ok(())
        })
    });
    // Each user counts itself in and out, for the active users over time.
    let counting_in = recorder.clone();
    let user_started: TransactionFunction = Arc::new(move |_| {
        counting_in.user_started();
        Box::pin(async { Ok(()) })
    });
    let counting_out = recorder.clone();
    let user_stopped: TransactionFunction = Arc::new(move |_| {
        counting_out.user_stopped();
        Box::pin(async { Ok(()) })
    });

    let mut scenario = scenario!("svc")
        .register_transaction(Transaction::new(user_started).set_on_start())
        .register_transaction(Transaction::new(transaction).set_name("mix"))
        .register_transaction(Transaction::new(user_stopped).set_on_stop());
    if let LoadModel::Closed {
        think_min,
        think_max,
    } = plan.load
    {
        scenario = scenario
            .set_wait_time(think_min, think_max)
            .map_err(goose_error)?;
    }

    let mut configuration = GooseConfiguration::default();
    configuration.host = Some(plan.host.clone());
    configuration.users = Some(plan.users as usize);
    configuration.increase_rate = Some(plan.hatch_rate.to_string());
    configuration.run_time = Some((plan.warmup + plan.measured).as_secs().to_string());
    configuration.timeout = Some(plan.request_timeout.as_secs().max(1).to_string());
    configuration.no_telnet = true;
    configuration.no_print_metrics = true;
    configuration.no_error_summary = true;
    configuration.quiet = 1;
    configuration.report_file = vec![plan.goose_report.to_string_lossy().into_owned()];

    let watcher = tokio::spawn(watch(plan.clone(), recorder.clone()));
    let attack = GooseAttack::initialize_with_config(configuration)
        .map_err(goose_error)?
        // One shared client: one connection pool for all users.
        .set_client_builder_without_cookies(
            GooseClientBuilder::new()
                .without_cookies()
                .timeout(plan.request_timeout),
        )
        .map_err(goose_error)?
        .register_scenario(scenario)
        .execute()
        .await
        .map_err(goose_error);
    watcher.abort();
    attack?;
    Ok(recorder)
}

/// While a phase runs: a progress line every `plan.progress`, and a Ctrl-C
/// that came while goose was starting (which clears its killswitch) passed
/// on to goose again.
async fn watch(plan: PhasePlan, recorder: Arc<PhaseRecorder>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    let mut last_line = Instant::now();
    loop {
        ticks.tick().await;
        if crate::interrupt::requested() && !goose::is_killswitch_triggered() {
            goose::trigger_killswitch("interrupted (Ctrl-C)");
        }
        let Some(every) = plan.progress else {
            continue;
        };
        if last_line.elapsed() >= every {
            last_line = Instant::now();
            eprintln!("{}", progress_line(&plan, &recorder.live()));
        }
    }
}

fn progress_line(plan: &PhasePlan, live: &crate::measure::Live) -> String {
    format!(
        "loadtest: {} {:>4.0}/{:.0} s · {} users · {:.0} req/s · p95 {:.2} ms · {} errors",
        plan.name,
        live.elapsed.as_secs_f64(),
        plan.length().as_secs_f64(),
        live.users,
        live.requests_per_second,
        live.p95_ms,
        live.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_names_the_phase_and_its_figures() {
        let plan = PhasePlan {
            name: "load".into(),
            host: String::new(),
            users: 1000,
            hatch_rate: 500,
            warmup: Duration::from_secs(5),
            measured: Duration::from_secs(60),
            mix: "get=1".parse().unwrap(),
            load: LoadModel::Open { per_second: 10 },
            request_timeout: Duration::from_secs(1),
            goose_report: std::path::PathBuf::new(),
            progress: Some(Duration::from_secs(5)),
        };
        let line = progress_line(
            &plan,
            &crate::measure::Live {
                elapsed: Duration::from_secs(25),
                users: 1000,
                requests_per_second: 2480.4,
                p95_ms: 4.123,
                errors: 3,
            },
        );
        assert_eq!(
            line,
            "loadtest: load   25/67 s · 1000 users · 2480 req/s · p95 4.12 ms · 3 errors"
        );
    }
}
