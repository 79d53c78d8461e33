#!/usr/bin/env bash
# Runs the full test suite: unit tests and the integration tests against the
# real PostgreSQL, Redis and RabbitMQ (started first if needed), plus the read
# path through PgBouncer to a streaming replica (scripts/replica.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/replica.sh >/dev/null
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
