//! What the load tests share: a small svc-like server of their own on
//! 127.0.0.1 that is wrong in one chosen way, the flags of a short run, and
//! a private folder for its report.
#![allow(dead_code)] // Each test binary uses its own part of it.

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
use svc_loadtest::{LoadtestArgs, Outcome};
use uuid::Uuid;

/// How the fake server misbehaves.
#[derive(Clone, Copy)]
pub enum Behaviour {
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
    /// One request at a time, each taking 1/`per_second` s: a queue that
    /// keeps up below that rate and falls further behind every second above it.
    Capacity { per_second: u32 },
}

struct Fake {
    behaviour: Behaviour,
    records: Mutex<HashSet<Uuid>>,
    in_flight: AtomicUsize,
    /// `Capacity`: when the single server is next free.
    next_free: Mutex<tokio::time::Instant>,
}

pub async fn start(behaviour: Behaviour) -> SocketAddr {
    let fake = Arc::new(Fake {
        behaviour,
        records: Mutex::new(HashSet::new()),
        in_flight: AtomicUsize::new(0),
        next_free: Mutex::new(tokio::time::Instant::now()),
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
            Behaviour::Capacity { per_second } => {
                let done = {
                    let mut next_free = self.next_free.lock().unwrap();
                    let start = (*next_free).max(tokio::time::Instant::now());
                    *next_free = start + Duration::from_secs(1) / per_second;
                    *next_free
                };
                tokio::time::sleep_until(done).await;
            }
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
/// suite; every misbehaviour below moves its figure far past that. Too
/// short to decide every gate (POST's p99 rests on a few dozen samples);
/// what a test judges, it makes decisive.
pub fn args(host: &str, report_dir: &std::path::Path) -> LoadtestArgs {
    args_with(host, report_dir, &[])
}

pub fn args_with(host: &str, report_dir: &std::path::Path, extra: &[&str]) -> LoadtestArgs {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadtestArgs,
    }
    let mut argv = vec![
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
        "--window-secs",
        "1",
        "--quiet",
        "--report-dir",
        report_dir.to_str().unwrap(),
    ];
    // A flag in `extra` replaces the default above (flags with a value only).
    for pair in extra.windows(2) {
        if pair[0].starts_with("--")
            && !pair[1].starts_with("--")
            && let Some(at) = argv.iter().position(|arg| *arg == pair[0])
        {
            argv.drain(at..at + 2);
        }
    }
    argv.extend_from_slice(extra);
    Wrapper::parse_from(argv).args
}

/// Enough samples for every gate, with room for an instrumented build on a
/// busy machine: an even mix, users that barely pause, 6 s of baseline
/// (about twice the 563 samples a p99 needs per endpoint) and 4 s of load.
pub const DECISIVE: &[&str] = &[
    "--mix",
    "get=34,list=33,post=33",
    "--think-time-ms",
    "1..3",
    "--baseline-secs",
    "6",
    "--load-secs",
    "4",
    "--window-secs",
    "3",
];

/// Runs a load test against a fresh server that behaves so, reporting into a private folder.
pub async fn run_with(behaviour: Behaviour, extra: &[&str]) -> (Outcome, tempdir::TempDir) {
    let address = start(behaviour).await;
    let dir = tempdir::TempDir::new();
    let outcome =
        svc_loadtest::run(args_with(&format!("http://{address}"), dir.path(), extra)).await;
    (outcome, dir)
}

/// A private folder removed at the end of the test.
pub mod tempdir {
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
