//! `GET /data`: keyset pagination, newest first.

use std::collections::HashSet;

use futures_util::{StreamExt, stream};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem};

#[tokio::test]
async fn paging_through_250_records_visits_each_once_newest_first() {
    let app = TestApp::spawn().await;
    let consumer = app.start_consumer(&[]);
    let ids: Vec<Uuid> = stream::iter(0..250)
        .map(|i| {
            let app = &app;
            async move { app.accept(&format!("record {i}")).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    app.sandbox.wait_for_rows(250).await;
    consumer.stop().await;
    assert_eq!(app.sandbox.row_count().await, 250);

    for limit in [7, 100] {
        let mut seen: Vec<Uuid> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/data?limit={limit}&cursor={c}"),
                None => format!("/data?limit={limit}"),
            };
            let (status, page) = app.get(&path).await;
            assert_eq!(status, 200, "{page}");
            pages += 1;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= limit);
            seen.extend(
                items
                    .iter()
                    .map(|item| item["id"].as_str().unwrap().parse::<Uuid>().unwrap()),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 250_usize.div_ceil(limit));
        assert_eq!(seen.len(), 250, "no gap, no duplicate");
        let unique: HashSet<Uuid> = seen.iter().copied().collect();
        assert_eq!(unique, ids.iter().copied().collect::<HashSet<_>>());
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    }
}

#[tokio::test]
async fn the_default_page_holds_20_and_an_empty_table_lists_nothing() {
    let app = TestApp::spawn().await;
    let (status, page) = app.get("/data").await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        serde_json::json!({ "items": [], "next_cursor": null })
    );

    let consumer = app.start_consumer(&[]);
    let mut last = Uuid::nil();
    for i in 0..25 {
        last = app.accept(&format!("v{i}")).await;
    }
    app.wait_for_record(last).await;
    consumer.stop().await;
    let (_, page) = app.get("/data").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert_eq!(page["items"][0]["id"], last.to_string());
    assert!(page["next_cursor"].is_string());
}

#[tokio::test]
async fn bad_limits_and_cursors_are_400() {
    let app = TestApp::spawn().await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=ten",
        "limit=",
        "cursor=garbage",
        "cursor=",
        "cursor=01890a5d-ac96-774b-bcce-b302099a8057",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/data?{query}")))
            .send()
            .await
            .unwrap();
        assert_problem(response, 400).await;
    }
}
