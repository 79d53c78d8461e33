//! Proof that the gate can fail, and fails for the right reason: each test
//! starts a small server of its own on 127.0.0.1 that is wrong in one way,
//! runs a short load test against it, and checks the verdict and which gates
//! failed.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use clap::Parser;
use serde_json::json;
use svc_loadtest::{GateKind, LoadtestArgs, Outcome};
use uuid::Uuid;

/// How the fake server misbehaves.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Fast and correct.
    Correct,
    /// Correct, but every answer takes this long.
    Slow(Duration),
    /// Each answer takes longer the more requests are in flight.
    Crowded { per_request_in_flight: Duration },
    /// Accepts writes and never persists them.
    Forgetful,
    /// Answers every request with 500.
    Broken,
}

struct Fake {
    behaviour: Behaviour,
    records: Mutex<HashSet<Uuid>>,
    in_flight: AtomicUsize,
}

async fn start(behaviour: Behaviour) -> SocketAddr {
    let fake = Arc::new(Fake {
        behaviour,
        records: Mutex::new(HashSet::new()),
        in_flight: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/data", post(create).get(list))
        .route("/data/{id}", get(read))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

impl Fake {
    /// Applies the behaviour's delay; returns false when the answer must be 500.
    async fn behave(&self) -> bool {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        match self.behaviour {
            Behaviour::Slow(delay) => tokio::time::sleep(delay).await,
            Behaviour::Crowded {
                per_request_in_flight,
            } => tokio::time::sleep(per_request_in_flight * in_flight as u32).await,
            _ => {}
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        !matches!(self.behaviour, Behaviour::Broken)
    }
}

async fn create(State(fake): State<Arc<Fake>>) -> Response {
    if !fake.behave().await {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let id = Uuid::now_v7();
    if !matches!(fake.behaviour, Behaviour::Forgetful) {
        fake.records.lock().unwrap().insert(id);
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": "accepted"})),
    )
        .into_response()
}

async fn read(State(fake): State<Arc<Fake>>, Path(id): Path<Uuid>) -> Response {
    if !fake.behave().await {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if fake.records.lock().unwrap().contains(&id) {
        Json(json!({"id": id, "value": "v", "created_at": "2026-01-01T00:00:00Z"})).into_response()
    } else if matches!(fake.behaviour, Behaviour::Forgetful) {
        // It claims the write is on its way, forever.
        (
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": "pending"})),
        )
            .into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn list(State(fake): State<Arc<Fake>>) -> Response {
    if !fake.behave().await {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(json!({"items": [], "next_cursor": null})).into_response()
}

/// A short run: 4 users, then 20, two seconds each. The noise floor is
/// raised to 15 ms because these tests share two cores with the rest of the
/// suite; every misbehaviour below moves its figure far past that.
fn args(host: &str, report_dir: &std::path::Path) -> LoadtestArgs {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadtestArgs,
    }
    Wrapper::parse_from([
        "loadtest",
        "--host",
        host,
        "--baseline-users",
        "4",
        "--users",
        "20",
        "--hatch-rate",
        "1000",
        "--baseline-secs",
        "2",
        "--load-secs",
        "2",
        "--warmup-secs",
        "0",
        "--think-time-ms",
        "20..40",
        "--noise-floor-ms",
        "15",
        "--seed-records",
        "20",
        "--drain-secs",
        "2",
        "--report-dir",
        report_dir.to_str().unwrap(),
    ])
    .args
}

fn failed_gates(outcome: &Outcome) -> HashSet<GateKind> {
    outcome
        .summary()
        .expect("the run was made")
        .gates
        .iter()
        .filter(|g| !g.passed)
        .map(|g| g.kind)
        .collect()
}

async fn run_against(behaviour: Behaviour) -> (Outcome, tempdir::TempDir) {
    let address = start(behaviour).await;
    let dir = tempdir::TempDir::new();
    let outcome = svc_loadtest::run(args(&format!("http://{address}"), dir.path())).await;
    (outcome, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_correct_server_passes_and_leaves_its_reports() {
    let (outcome, dir) = run_against(Behaviour::Correct).await;
    assert_eq!(failed_gates(&outcome), HashSet::new());
    assert_eq!(outcome.exit_code(), 0);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["verdict"], "pass");
    assert_eq!(summary["phases"].as_array().unwrap().len(), 2);
    for phase in summary["phases"].as_array().unwrap() {
        // The disk was probed over the measured window, and its file removed.
        assert!(
            phase["machine_disk"]["syncs"].as_u64().unwrap() >= 1,
            "{phase}"
        );
    }
    assert!(!dir.path().join("disk-probe").exists());
    assert!(summary["durability"]["accepted"].as_u64().unwrap() >= 20);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    assert!(dir.path().join("goose-load.html").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_taking_600_ms_fails_the_slo() {
    let (outcome, _dir) = run_against(Behaviour::Slow(Duration::from_millis(600))).await;
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(failed_gates(&outcome), HashSet::from([GateKind::Slo]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_measured_again_and_fails_twice_when_confirmation_is_on() {
    let address = start(Behaviour::Slow(Duration::from_millis(600))).await;
    let dir = tempdir::TempDir::new();
    let mut args = args(&format!("http://{address}"), dir.path());
    args.confirm_runs = 3;
    // Whatever this machine's host does, every run counts.
    args.max_stolen_cores = f64::INFINITY;
    args.max_disk_sync_ms = f64::INFINITY;
    let outcome = svc_loadtest::run(args).await;
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(failed_gates(&outcome), HashSet::from([GateKind::Slo]));
    // The first run's report was kept aside; the second failed run ended it.
    assert!(dir.path().join("run-1").join("summary.json").exists());
    assert!(dir.path().join("run-1").join("report.html").exists());
    assert!(!dir.path().join("run-2").exists());
    assert!(dir.path().join("summary.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slowing_with_concurrency_fails_degradation() {
    let (outcome, _dir) = run_against(Behaviour::Crowded {
        per_request_in_flight: Duration::from_millis(4),
    })
    .await;
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(
        failed_gates(&outcome),
        HashSet::from([GateKind::Degradation])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_persists_fails_durability_and_lists_the_lost_ids() {
    let (outcome, _dir) = run_against(Behaviour::Forgetful).await;
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(
        failed_gates(&outcome),
        HashSet::from([GateKind::Durability])
    );
    let durability = &outcome.summary().unwrap().durability;
    assert!(durability.accepted >= 20);
    assert_eq!(durability.lost.len(), durability.accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_5xx_fails_the_error_rate() {
    let (outcome, _dir) = run_against(Behaviour::Broken).await;
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(failed_gates(&outcome), HashSet::from([GateKind::ErrorRate]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_model_charges_a_stalled_server_for_the_requests_it_delayed() {
    // 100 ms per answer and 5 users can serve 50 requests/s; the load phase
    // asks for 100/s. Timed from their scheduled start, the waiting requests
    // show the backlog the server caused, far beyond its 100 ms.
    let address = start(Behaviour::Slow(Duration::from_millis(100))).await;
    let dir = tempdir::TempDir::new();
    let mut args = args(&format!("http://{address}"), dir.path());
    args.rate = Some(100);
    args.baseline_rate = Some(5);
    args.users = 5;
    args.baseline_users = 5;
    let outcome = svc_loadtest::run(args).await;
    let summary = outcome.summary().unwrap();
    assert_eq!(summary.model, "open");
    let get = |phase: usize| {
        summary.phases[phase]
            .endpoint(svc_loadtest::Endpoint::GetById)
            .unwrap()
            .clone()
    };
    assert!(get(0).p99_ms < 200.0, "baseline keeps up: {:?}", get(0));
    assert!(get(1).p50_ms > 200.0, "load falls behind: {:?}", get(1));
    assert!(failed_gates(&outcome).contains(&GateKind::Slo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_exits_2_with_a_clear_reason() {
    // Bind, then close: nothing listens on this port any more.
    let address = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempdir::TempDir::new();
    let outcome = svc_loadtest::run(args(&format!("http://{address}"), dir.path())).await;
    assert_eq!(outcome.exit_code(), 2);
    match outcome {
        Outcome::NotRun(reason) => assert!(reason.contains("cannot be reached"), "{reason}"),
        other => panic!("expected NotRun, got {other:?}"),
    }
}

/// A private folder removed at the end of the test.
mod tempdir {
    pub struct TempDir(std::path::PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("svc-loadtest-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
