#!/usr/bin/env bash
# The CI performance gate: builds svc in release mode, runs migrate, serve
# and consume against the local services in a database, queues and keys of
# their own, then `svc loadtest` (at least 1,000 users in the load phase).
# Exits with the load test's code: 0 pass, 1 a gate failed, 2 could not run.
#
# Only a latency gate (SLO, degradation) that fails is measured once more
# before CI goes red: on a shared two-core machine, with the generator beside
# the server, the host alone sometimes lifts a p95 by milliseconds (the
# phase footnote shows the cores it stole). The second run gives the verdict;
# a regression fails it again. A failed error-rate or durability gate, or a
# run that could not start, is never re-run. PERF_CONFIRM=0 turns this off.
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

# The kinds of the gates that failed in a summary.json, space-separated.
failed_kinds() {
    python3 -c 'import json, sys
gates = json.load(open(sys.argv[1]))["gates"]
print(" ".join(sorted({g["kind"] for g in gates if not g["passed"]})))' "$1"
}

# Only latency gates failed: worth measuring once more.
only_latency() {
    local kind
    [[ -n $1 ]] || return 1
    for kind in $1; do [[ $kind == slo || $kind == degradation ]] || return 1; done
}

# The gate itself; extra arguments go to `svc loadtest`.
gate() { $svc loadtest --host "http://$API" "${users[@]}" --report-dir "$REPORT_DIR" "$@"; }

status=0
gate "$@" || status=$?
if [[ $status == 1 && ${PERF_CONFIRM:-1} != 0 ]]; then
    kinds=$(failed_kinds "$REPORT_DIR/summary.json")
    if only_latency "$kinds"; then
        first=$REPORT_DIR/first-run
        mkdir -p "$first"
        mv "$REPORT_DIR"/summary.json "$REPORT_DIR"/*.html "$first/"
        echo "perf-gate: only latency gates failed ($kinds); measuring once more, the first run's report is in $first"
        status=0
        gate "$@" || status=$?
    else
        echo "perf-gate: failed gates ($kinds) are not measured again"
    fi
fi
echo "perf-gate: report in $REPORT_DIR (summary.json, report.html); exit code $status"
exit $status
