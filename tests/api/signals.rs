//! The real `svc` binary under signals: SIGKILL mid-burst loses nothing,
//! SIGTERM drains and exits 0.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use svc::domain::DataMessage;
use tokio::process::{Child, Command};

use crate::helpers::Sandbox;

fn spawn_svc(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_svc"))
        .args(&args[1..])
        .env("SVC_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the svc binary starts")
}

fn terminate(child: &Child) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

async fn rows(sandbox: &Sandbox) -> i64 {
    sandbox.row_count().await
}

#[tokio::test]
async fn a_consumer_killed_twice_mid_burst_loses_and_duplicates_nothing() {
    let sandbox = Sandbox::new().await;
    let messages: Vec<DataMessage> = (0..3000)
        .map(|i| DataMessage::accept(format!("burst {i}")))
        .collect();
    let consume = sandbox.flags(
        "consume",
        "--metrics-listen",
        &["--batch-size", "100", "--batch-wait-ms", "5"],
    );

    // The burst goes out while the consumer is killed and restarted.
    let publishing = sandbox.publish_many(&messages);
    tokio::pin!(publishing);
    let mut kills = Vec::new();
    let mut published = false;
    for _ in 0..2 {
        let mut consumer = spawn_svc(&consume);
        // Kill it once it has committed some, with more in hand.
        let before = rows(&sandbox).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while rows(&sandbox).await < before + 200 && Instant::now() < deadline {
            tokio::select! {
                () = &mut publishing, if !published => published = true,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        consumer.start_kill().unwrap();
        consumer.wait().await.unwrap();
        kills.push(rows(&sandbox).await);
    }
    if !published {
        publishing.await;
    }

    let mut consumer = spawn_svc(&consume);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&sandbox).await < 3000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(&consumer);
    let status = tokio::time::timeout(Duration::from_secs(30), consumer.wait())
        .await
        .expect("consume exits within its grace")
        .unwrap();
    assert!(status.success(), "consume exits 0 on SIGTERM: {status}");

    eprintln!("consumer killed with SIGKILL at {kills:?} committed rows of 3000");
    assert!(
        kills[0] < 3000 && kills[1] < 3000,
        "killed mid-burst: {kills:?}"
    );
    let (total, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM data")
            .fetch_one(&sandbox.pool)
            .await
            .unwrap();
    assert_eq!((total, distinct), (3000, 3000));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM data WHERE id = ANY($1)")
        .bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
        .fetch_one(&sandbox.pool)
        .await
        .unwrap();
    assert_eq!(stored, 3000, "every accepted id is stored");
    assert_eq!(
        sandbox
            .ready_messages(&sandbox.topology.dead_letter_queue)
            .await,
        0
    );
}

#[tokio::test]
async fn serve_on_sigterm_finishes_in_flight_requests_and_exits_0() {
    let sandbox = Sandbox::new().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let serve = sandbox.flags("serve", "--listen", &["--listen", &address.to_string()]);
    let mut server = spawn_svc(&serve);
    let client = reqwest::Client::new();
    let base = format!("http://{address}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(client.get(format!("{base}/health/ready")).send().await, Ok(r) if r.status() == 200)
    {
        assert!(Instant::now() < deadline, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 32 clients writing in a loop; each notes when it sent and what came back.
    let stop = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for c in 0..32 {
        let client = client.clone();
        let base = base.clone();
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while Instant::now() < stop {
                let sent = Instant::now();
                let result = client
                    .post(format!("{base}/data"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"value":"client {c} write {i}"}}"#))
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                results.push((sent, result.is_ok(), result.unwrap_or(0)));
                i += 1;
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let signalled = Instant::now();
    terminate(&server);
    let status = tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("serve exits within its grace")
        .unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");

    let mut answered_before = 0;
    for client in clients {
        for (sent, ok, status) in client.await.unwrap() {
            // Requests well before the signal were in flight or done: each must
            // have had its full answer. Later ones may be refused.
            if sent + Duration::from_millis(100) < signalled {
                assert!(
                    ok && status == 202,
                    "a request sent before SIGTERM was cut: {status}"
                );
                answered_before += 1;
            }
        }
    }
    eprintln!("{answered_before} writes sent before SIGTERM, all answered 202");
    assert!(answered_before > 100, "there was load: {answered_before}");
}
