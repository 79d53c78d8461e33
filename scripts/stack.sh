# Sourced by perf-gate.sh and api-fuzz.sh: runs a release `svc serve` and
# `svc consume` against the local services, in a database, queues and keys
# named $NAME (fresh each time), until the calling script exits; then
# removes them (the report and logs stay in $REPORT_DIR).
#   NAME, API (host:port), METRICS (host:port), REPORT_DIR must be set.

scripts/services.sh
cargo build --release --locked
svc=target/release/svc

source scripts/fresh.sh

rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"
SVC_LISTEN=$API $svc serve 2>"$REPORT_DIR/serve.log" &
serve_pid=$!
SVC_METRICS_LISTEN=$METRICS $svc consume 2>"$REPORT_DIR/consume.log" &
consume_pid=$!
trap 'kill -TERM $serve_pid $consume_pid 2>/dev/null; wait $serve_pid $consume_pid 2>/dev/null || true; forget_named || true' EXIT

for _ in $(seq 100); do
    curl -fsS "http://$API/health/ready" >/dev/null 2>&1 && curl -fsS "http://$METRICS/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://$API/health/ready" >/dev/null || { echo "svc did not become ready (logs in $REPORT_DIR)" >&2; exit 2; }
