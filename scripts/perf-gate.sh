#!/usr/bin/env bash
# The CI performance gate: builds svc in release mode, runs migrate, serve
# and consume against the local services in a database, queues and keys of
# their own, then `svc loadtest` (at least 1,000 users in the load phase).
# Exits with the load test's code: 0 pass, 1 a gate failed, 2 could not run.
#
# Extra arguments go to `svc loadtest`, e.g. `scripts/perf-gate.sh --users 5000`.
# To judge another deployment, run `svc loadtest --host URL` directly.
set -euo pipefail
cd "$(dirname "$0")/.."

REPORT_DIR=${PERF_REPORT_DIR:-target/perf-gate}
API=127.0.0.1:${PERF_API_PORT:-18000}
METRICS=127.0.0.1:${PERF_METRICS_PORT:-19000}
NAME=svc_perf

scripts/services.sh
cargo build --release --locked
svc=target/release/svc

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$NAME
export REDIS_URL=redis://127.0.0.1:6379
export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
export SVC_QUEUE_PREFIX=$NAME SVC_CACHE_PREFIX=$NAME: SVC_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}

# A fresh start: no rows, no queued messages, no cached keys from a previous run.
# (The broker tools are absent where RabbitMQ runs in a container; a leftover
# queue there is drained by the consumer before the load starts.)
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)"
if command -v redis-cli >/dev/null; then
    redis-cli --scan --pattern "$NAME:*" | xargs -r redis-cli del >/dev/null
fi
$svc migrate
if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl purge_queue "$NAME.data.ingest" >/dev/null 2>&1 || true
fi

rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"
SVC_LISTEN=$API $svc serve 2>"$REPORT_DIR/serve.log" &
serve=$!
SVC_METRICS_LISTEN=$METRICS $svc consume 2>"$REPORT_DIR/consume.log" &
consume=$!
trap 'kill -TERM $serve $consume 2>/dev/null; wait $serve $consume 2>/dev/null || true' EXIT

for _ in $(seq 100); do
    curl -fsS "http://$API/health/ready" >/dev/null 2>&1 && curl -fsS "http://$METRICS/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://$API/health/ready" || { echo "perf-gate: svc did not become ready" >&2; exit 2; }
echo

status=0
$svc loadtest --host "http://$API" --users 1000 --report-dir "$REPORT_DIR" "$@" || status=$?
echo "perf-gate: report in $REPORT_DIR (summary.json, report.html); exit code $status"
exit $status
