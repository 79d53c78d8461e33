//! Integration tests against the real Postgres, Redis and RabbitMQ. One
//! binary; each test runs in its own sandbox (database, queues, key prefix).

mod admission;
mod broker_faults;
mod consumer;
mod docs_and_metrics;
mod errors;
mod faults;
mod health;
mod helpers;
mod limits;
mod list;
mod migrate;
mod private_servers;
mod proxy;
mod read_path;
mod signals;
mod tls;
mod warm_reads;
mod write_then_read;
