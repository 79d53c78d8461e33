#!/usr/bin/env bash
# Two builds of svc side by side, for a change's closing note: warm reads
# and writes (consumer stopped) at 64 and 1,000 connections, with wrk, each
# row a warm-up of each build and then runs taken in turns; the medians and
# the median of the turns' ratios are printed as a table and written to
# target/bench/before-after.json.
#
#   scripts/bench/before-after.sh BEFORE_SVC [AFTER_SVC]
#
# AFTER_SVC defaults to this checkout's release build (built first). Knobs:
# BENCH_SECS (10), BENCH_ROUNDS (3), BENCH_WARMUP_SECS (5). About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 1 ]] || { echo "usage: $0 BEFORE_SVC [AFTER_SVC]" >&2; exit 2; }
source scripts/lib.sh
command -v wrk >/dev/null || install_packages wrk
scripts/services.sh
if [[ $# -lt 2 ]]; then cargo build --release --locked --bin svc; fi
export BEFORE_SVC=$1 AFTER_SVC=${2:-target/release/svc}

NAME=svc_before_after svc=$AFTER_SVC
source scripts/fresh.sh
ulimit -n "$(ulimit -Hn)"
trap 'forget_named || true' EXIT
python3 scripts/bench/before_after.py
