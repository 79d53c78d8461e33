#!/usr/bin/env bash
# The benchmark: the load-test gate at 5,000 users on the fresh stack, then
# svc side by side with a bare axum handler (no I/O) and a bare
# confirmed-publish handler, with wrk, then the whole system (consumer drain
# rate, sustained writes, accepted-to-persisted latency, memory, CPU per
# request). Writes the table into docs/PERFORMANCE.md and
# target/bench/results.json. About 15 minutes.
#
# Knobs: BENCH_SECS (10), BENCH_ROUNDS (3), BENCH_WARMUP_SECS (5), BENCH_SYSTEM_SECS (60),
# BENCH_GATE_USERS (5000; 0 skips the gate).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    echo "bench: installing wrk" >&2
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi
scripts/services.sh
cargo build --release --locked --bin svc --examples
svc=target/release/svc
NAME=svc_bench
source scripts/fresh.sh
# 1,000 connections for wrk and as many for each server: as many files as allowed.
ulimit -n "$(ulimit -Hn)"
exec python3 scripts/bench.py
