#!/usr/bin/env bash
# Runs the full test suite: unit tests and the integration tests against the
# real PostgreSQL, Redis and RabbitMQ (started first if needed).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
