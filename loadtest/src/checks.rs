//! The parts of a run outside goose: the reachability check, seeding, and
//! the durability check that every accepted write became readable.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::workload::Ledger;

/// Requests in flight during seeding and the durability check.
const CONCURRENCY: usize = 64;

pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("a plain HTTP client builds")
}

/// Fails when nothing answers HTTP at `host` (given without a trailing slash).
pub async fn reachable(client: &reqwest::Client, host: &str) -> anyhow::Result<()> {
    client
        .get(format!("{host}/health/live"))
        .send()
        .await
        .with_context(|| format!("{host} cannot be reached"))?;
    Ok(())
}

/// Writes `count` records; each id answered 202 goes into the ledger.
/// Returns how many were accepted.
pub async fn seed(client: &reqwest::Client, host: &str, count: u32, ledger: &Ledger) -> usize {
    let url = format!("{host}/data");
    let ids: Vec<Option<Uuid>> = stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"value":"seed {i}"}}"#))
                    .send()
                    .await
                    .ok()?;
                if response.status().as_u16() != 202 {
                    return None;
                }
                let body: serde_json::Value = response.json().await.ok()?;
                body.get("id")?.as_str()?.parse().ok()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let accepted: Vec<Uuid> = ids.into_iter().flatten().collect();
    for id in &accepted {
        ledger.accept(*id);
    }
    accepted.len()
}

/// The result of the durability check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Durability {
    /// Writes answered 202 during the run (seeding included).
    pub accepted: usize,
    /// Of those, readable with 200 by the end of the check.
    pub persisted: usize,
    /// Accepted writes that never became readable.
    pub lost: Vec<Uuid>,
    /// Seconds from the end of the load until the last write was readable
    /// (or until the check gave up).
    pub drained_after_secs: f64,
}

/// Reads every id until it answers 200 or `within` has passed, in rounds:
/// each round retries only the ids still missing.
pub async fn wait_until_readable(
    client: &reqwest::Client,
    host: &str,
    ids: Vec<Uuid>,
    within: Duration,
) -> Durability {
    let started = Instant::now();
    let accepted = ids.len();
    let base = Arc::new(format!("{host}/data/"));
    let mut missing = ids;
    loop {
        missing = stream::iter(missing)
            .map(|id| {
                let client = client.clone();
                let base = base.clone();
                async move {
                    let readable = matches!(
                        client.get(format!("{base}{id}")).send().await,
                        Ok(response) if response.status().as_u16() == 200
                    );
                    (!readable).then_some(id)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|id| async move { id })
            .collect()
            .await;
        if missing.is_empty() || started.elapsed() >= within {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    missing.sort();
    Durability {
        accepted,
        persisted: accepted - missing.len(),
        lost: missing,
        drained_after_secs: started.elapsed().as_secs_f64(),
    }
}
