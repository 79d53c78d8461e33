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

NAME=svc_perf
API=127.0.0.1:${PERF_API_PORT:-18000}
METRICS=127.0.0.1:${PERF_METRICS_PORT:-19000}
REPORT_DIR=${PERF_REPORT_DIR:-target/perf-gate}
source scripts/stack.sh

# 1,000 users unless the caller names another number.
users=(--users 1000)
for arg in "$@"; do [[ $arg == --users || $arg == --users=* ]] && users=(); done
status=0
$svc loadtest --host "http://$API" "${users[@]}" --report-dir "$REPORT_DIR" "$@" || status=$?
echo "perf-gate: report in $REPORT_DIR (summary.json, report.html); exit code $status"
exit $status
