# Sourced by perf-gate.sh and api-fuzz.sh: runs a release `svc serve` and
# `svc consume` against the local services, in a database, queues and keys
# named $NAME (fresh each time), until the calling script exits.
#   NAME, API (host:port), METRICS (host:port), REPORT_DIR must be set.

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
serve_pid=$!
SVC_METRICS_LISTEN=$METRICS $svc consume 2>"$REPORT_DIR/consume.log" &
consume_pid=$!
trap 'kill -TERM $serve_pid $consume_pid 2>/dev/null; wait $serve_pid $consume_pid 2>/dev/null || true' EXIT

for _ in $(seq 100); do
    curl -fsS "http://$API/health/ready" >/dev/null 2>&1 && curl -fsS "http://$METRICS/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://$API/health/ready" >/dev/null || { echo "svc did not become ready (logs in $REPORT_DIR)" >&2; exit 2; }
