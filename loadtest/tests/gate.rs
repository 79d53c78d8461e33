//! Proof that the gate can fail, and fails for the right reason: each test
//! starts a small server of its own on 127.0.0.1 that is wrong in one way,
//! runs a short load test against it, and checks the verdict and which gates
//! failed.

mod support;

use std::{collections::HashSet, time::Duration};

use support::{Behaviour, DECISIVE, args, args_with, run_with, start, tempdir};
use svc_loadtest::{GateKind, Outcome, RunVerdict, Verdict};

fn verdicts(outcome: &Outcome, verdict: Verdict) -> HashSet<GateKind> {
    outcome
        .summary()
        .expect("the run was made")
        .gates
        .iter()
        .filter(|g| g.verdict == verdict)
        .map(|g| g.kind)
        .collect()
}

fn failed_gates(outcome: &Outcome) -> HashSet<GateKind> {
    verdicts(outcome, Verdict::Fail)
}

async fn run_against(behaviour: Behaviour) -> (Outcome, tempdir::TempDir) {
    run_with(behaviour, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_correct_server_passes_every_gate_conclusively_and_leaves_its_reports() {
    let (outcome, dir) = run_with(Behaviour::Correct, DECISIVE).await;
    let summary = outcome.summary().unwrap();
    let undecided: Vec<String> = summary
        .gates
        .iter()
        .filter(|g| g.verdict != Verdict::Pass)
        .map(|g| g.line())
        .collect();
    assert!(undecided.is_empty(), "{undecided:#?}");
    assert_eq!(outcome.exit_code(), 0);
    // Every gate says what it rests on.
    assert!(
        summary.gates.iter().all(|g| g.samples > 0),
        "{:?}",
        summary.gates
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["verdict"], "pass");
    assert_eq!(summary["schema"], 2);
    assert_eq!(summary["phases"].as_array().unwrap().len(), 2);
    for phase in summary["phases"].as_array().unwrap() {
        // The disk was probed over the measured window, and its file removed.
        assert!(
            phase["machine_disk"]["syncs"].as_u64().unwrap() >= 1,
            "{phase}"
        );
        // p99.9 is reported by default, with its interval.
        let endpoint = &phase["endpoints"][0];
        let percentiles: Vec<f64> = endpoint["percentiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["percentile"].as_f64().unwrap())
            .collect();
        assert_eq!(percentiles, vec![50.0, 95.0, 99.0, 99.9]);
        assert!(!endpoint["distribution"].as_array().unwrap().is_empty());
        // Users counted themselves in: the timeline shows them.
        let users = phase["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["users"].as_u64().unwrap())
            .max()
            .unwrap();
        assert_eq!(users, phase["users"].as_u64().unwrap(), "{phase}");
        assert!(!phase["cpu"].as_array().unwrap().is_empty());
    }
    assert!(!dir.path().join("disk-probe").exists());
    assert!(summary["durability"]["accepted"].as_u64().unwrap() >= 20);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains(r#"<table id="gates">"#));
    assert!(html.contains("Response-time distribution of POST /data"));
    assert!(dir.path().join("goose-load.html").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_is_inconclusive_exits_3_and_says_what_would_decide_it() {
    let dir = tempdir::TempDir::new();
    let junit = dir.path().join("junit.xml");
    let (outcome, _report) =
        run_with(Behaviour::Correct, &["--junit", junit.to_str().unwrap()]).await;
    assert_eq!(failed_gates(&outcome), HashSet::new());
    assert!(verdicts(&outcome, Verdict::Inconclusive).contains(&GateKind::Slo));
    assert_eq!(outcome.exit_code(), 3);
    let summary = outcome.summary().unwrap();
    assert_eq!(summary.verdict, RunVerdict::Inconclusive);
    let undecided = summary
        .gates
        .iter()
        .find(|g| g.verdict == Verdict::Inconclusive && g.kind == GateKind::Slo)
        .unwrap();
    let advice = undecided.advice.as_deref().unwrap();
    assert!(advice.contains("-secs "), "{advice}");
    // Each gate is a test case; the undecided ones are skipped, none failed.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), summary.gates.len());
    assert!(xml.contains(r#"failures="0""#), "{xml}");
    assert!(
        xml.contains("<skipped message=\"inconclusive: too few samples"),
        "{xml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_build_fails_the_comparison_with_the_stored_run() {
    let (first, before) = run_with(Behaviour::Correct, DECISIVE).await;
    assert_eq!(
        first.exit_code(),
        0,
        "{:#?}",
        first.summary().map(|s| &s.gates)
    );
    let stored = before.path().join("summary.json");
    let mut extra = DECISIVE.to_vec();
    extra.extend(["--compare", stored.to_str().unwrap()]);
    // 40 ms more per answer: past the 15 ms floor and +10 %.
    let (second, after) = run_with(Behaviour::Slow(Duration::from_millis(40)), &extra).await;
    assert_eq!(second.exit_code(), 1);
    assert!(failed_gates(&second).contains(&GateKind::Regression));
    let comparison = second.summary().unwrap().comparison.as_ref().unwrap();
    let p95 = comparison
        .rows
        .iter()
        .find(|r| r.phase == "load" && r.figure == "p95")
        .unwrap();
    assert!(p95.current > p95.previous + 30.0, "{p95:?}");
    assert_eq!(p95.verdict, Verdict::Fail);
    let html = std::fs::read_to_string(after.path().join("report.html")).unwrap();
    assert!(html.contains(r#"<table id="comparison">"#));

    // A file that is no summary of this version cannot be compared with.
    let wrong = before.path().join("old.json");
    std::fs::write(&wrong, r#"{"schema": 1}"#).unwrap();
    let (outcome, _dir) =
        run_with(Behaviour::Correct, &["--compare", wrong.to_str().unwrap()]).await;
    assert_eq!(outcome.exit_code(), 2);
    match outcome {
        Outcome::NotRun(reason) => assert!(reason.contains("schema 1"), "{reason}"),
        other => panic!("expected NotRun, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_run_and_still_writes_the_report() {
    let address = start(Behaviour::Correct).await;
    let dir = tempdir::TempDir::new();
    let args = args_with(
        &format!("http://{address}"),
        dir.path(),
        &["--baseline-secs", "60", "--load-secs", "60"],
    );
    let started = std::time::Instant::now();
    let run = tokio::spawn(svc_loadtest::run(args));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SAFETY: raise only sends this process a signal, which the run catches.
    assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
    let outcome = run.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcome.exit_code(), 2);
    let summary = outcome.summary().expect("what ran is reported");
    assert_eq!(summary.verdict, RunVerdict::Interrupted);
    // The baseline ran, the load phase never started, nothing was drained.
    assert_eq!(summary.phases.len(), 1);
    assert!(
        summary.phases[0].measured_secs < 10.0,
        "{}",
        summary.phases[0].measured_secs
    );
    assert!(summary.durability.is_none());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"], "interrupted");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("Interrupted (Ctrl-C)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_search_finds_the_highest_rate_that_held() {
    // One request at a time, 1 ms each: 1,000 requests/s at most. Steps of
    // 300, 600 and 1,200 requests/s: the last falls behind by 200 a second.
    let (outcome, dir) = run_with(
        Behaviour::Capacity { per_second: 1000 },
        &[
            "--find-capacity",
            // One endpoint: every sample decides its step.
            "--mix",
            "get=1",
            "--rate",
            "300",
            "--capacity-step",
            "2",
            "--load-secs",
            "3",
            "--slo-ms",
            "100",
            "--window-secs",
            "0",
        ],
    )
    .await;
    let summary = outcome.summary().unwrap();
    let capacity = summary.capacity.as_ref().expect("a capacity result");
    let steps: Vec<(u32, Verdict)> = capacity.steps.iter().map(|s| (s.rate, s.verdict)).collect();
    assert_eq!(
        steps,
        vec![
            (300, Verdict::Pass),
            (600, Verdict::Pass),
            (1200, Verdict::Fail)
        ],
        "{:#?}",
        capacity.steps
    );
    assert_eq!(capacity.held_rate, Some(600));
    assert_eq!(capacity.knee_rate, Some(1200));
    assert!(capacity.limit.is_some(), "{}", capacity.reason);
    // The baseline and every step are in the report.
    assert_eq!(summary.phases.len(), 4);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains(r#"<table id="capacity">"#));
    assert!(html.contains("600 requests/s held"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_taking_600_ms_fails_the_slo() {
    let (outcome, _dir) = run_against(Behaviour::Slow(Duration::from_millis(600))).await;
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(
        failed_gates(&outcome),
        HashSet::from([GateKind::Slo, GateKind::WindowSlo])
    );
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
    assert_eq!(
        failed_gates(&outcome),
        HashSet::from([GateKind::Slo, GateKind::WindowSlo])
    );
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
    let durability = outcome.summary().unwrap().durability.as_ref().unwrap();
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
    assert!(get(0).p99().ms < 200.0, "baseline keeps up: {:?}", get(0));
    assert!(get(1).p50().ms > 200.0, "load falls behind: {:?}", get(1));
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
