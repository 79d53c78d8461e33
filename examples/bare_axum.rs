//! The ceiling for `GET /data/{id}`: a bare axum handler that answers a
//! constant record body with no I/O at all, on the same runtime settings as
//! svc. `scripts/bench.sh` measures svc against it in the same run.
//!
//!     cargo run --release --example bare_axum -- 127.0.0.1:18200

use axum::{
    Router,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};

/// The size and shape of a record svc returns.
const BODY: &str = r#"{"id":"01a21000-0000-7000-8000-000000000000","value":"a value of a typical length for the benchmark","created_at":"2026-11-25T00:00:00.000000Z"}"#;

async fn record() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        BODY,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18200".into());
    let app = Router::new().route("/data/{id}", get(record));
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("bare_axum listening on {address}");
    axum::serve(listener, app).await?;
    Ok(())
}
