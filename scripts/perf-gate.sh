#!/usr/bin/env bash
# The CI performance gate: builds svc in release mode, runs migrate, serve
# and consume against the local services in a database, queues and keys of
# their own, then `svc loadtest` (at least 1,000 users in the load phase).
# Exits with the load test's code: 0 pass, 1 a gate failed, 2 could not run.
#
# Only a latency gate (SLO, degradation) that fails is measured again
# before CI goes red: on a shared two-core machine, with the generator beside
# the server, the host alone sometimes lifts a p95 by milliseconds (the
# phase footnote shows the cores it stole), and a disk that stalls one sync
# for half a second holds every write awaiting its confirm as long (the
# footnote shows the slowest sync). Two failed runs with the host quiet fail
# the gate, and a regression fails both; a run during which the host took
# PERF_MAX_STOLEN (0.1) cores or more, or a disk sync took
# PERF_MAX_DISK_SYNC_MS (250) or more, does not count, up to PERF_MAX_RUNS
# (4) runs in all. A failed error-rate or durability gate, or
# a run that could not start, is never re-run. PERF_CONFIRM=0 turns this off.
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

# Only latency gates failed: worth measuring again.
only_latency() {
    local kind
    [[ -n $1 ]] || return 1
    for kind in $1; do [[ $kind == slo || $kind == degradation ]] || return 1; done
}

# The gate itself; extra arguments go to `svc loadtest`.
gate() { $svc loadtest --host "http://$API" "${users[@]}" --report-dir "$REPORT_DIR" "$@"; }

# Prints what the host did to a run: the most cores it took from this
# machine in any phase, and the slowest disk sync in any phase's measured
# window (a quorum queue's confirm waits for one); succeeds when the cores
# reach $2 or the sync $3 ms.
host_noise() {
    python3 -c 'import json, sys
phases = json.load(open(sys.argv[1]))["phases"]
stolen = max(p["machine_cpu"]["cores_stolen"] for p in phases)
sync = max((p.get("machine_disk") or {}).get("slowest_ms", 0) for p in phases)
print(f"took {stolen:.2f} cores, the slowest disk sync {sync:.0f} ms")
sys.exit(stolen < float(sys.argv[2]) and sync < float(sys.argv[3]))' "$1" "$2" "$3"
}

# Runs that failed only latency gates with the host quiet count towards a
# verdict: two of them fail the gate. One during which the host took at
# least PERF_MAX_STOLEN cores, or the disk stalled a sync for
# PERF_MAX_DISK_SYNC_MS or more, measured the host, and is measured again,
# up to PERF_MAX_RUNS runs in all. The first pass ends it.
max_stolen=${PERF_MAX_STOLEN:-0.1}
max_sync=${PERF_MAX_DISK_SYNC_MS:-250}
max_runs=${PERF_MAX_RUNS:-4}
runs=0 counted=0
while true; do
    status=0
    gate "$@" || status=$?
    runs=$((runs + 1))
    [[ $status == 1 && ${PERF_CONFIRM:-1} != 0 ]] || break
    kinds=$(failed_kinds "$REPORT_DIR/summary.json")
    if ! only_latency "$kinds"; then
        echo "perf-gate: failed gates ($kinds) are not measured again"
        break
    fi
    if noise=$(host_noise "$REPORT_DIR/summary.json" "$max_stolen" "$max_sync"); then
        why="the host $noise (limits $max_stolen cores, $max_sync ms): not counted"
    else
        counted=$((counted + 1))
        why="the host $noise: counted ($counted of 2)"
    fi
    if ((counted >= 2 || runs >= max_runs)); then
        echo "perf-gate: only latency gates failed ($kinds); $why; no more runs"
        break
    fi
    earlier=$REPORT_DIR/run-$runs
    mkdir -p "$earlier"
    mv "$REPORT_DIR"/summary.json "$REPORT_DIR"/*.html "$earlier/"
    echo "perf-gate: only latency gates failed ($kinds); $why; measuring again (that run's report is in $earlier)"
done
echo "perf-gate: report in $REPORT_DIR (summary.json, report.html); exit code $status"
exit $status
