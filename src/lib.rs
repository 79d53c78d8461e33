//! svc: accept writes asynchronously, serve reads from cache.
//!
//! `serve` validates a write, publishes it to RabbitMQ with a publisher
//! confirm and answers 202; `consume` persists writes to Postgres in batches
//! and writes them through to Redis; reads come from Redis, then Postgres.
//! The binary in `main.rs` only parses the command line and calls the entry
//! point of each subcommand here, so tests can call them too.

pub mod backoff;
pub mod cache;
pub mod cli;
pub mod config;
pub mod consume;
pub mod domain;
pub mod health;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod problem;
pub mod queue;
pub mod serve;
pub mod server;
pub mod settings_doc;
pub mod shutdown;
pub mod singleflight;
pub mod storage;
pub mod telemetry;
pub mod tls;
