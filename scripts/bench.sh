#!/usr/bin/env bash
# The benchmark: the load-test gate at 5,000 users on a fresh stack
# (scripts/perf-gate.sh, as CI judges it), then
# svc side by side with a bare axum handler (no I/O) and a bare
# confirmed-publish handler, with wrk, then the whole system (consumer drain
# rate, sustained writes, accepted-to-persisted latency, memory, CPU per
# request), then svc's writes over amqps:// against amqp:// on a private
# RabbitMQ node of its own (certificates from openssl). Writes the table
# into docs/PERFORMANCE.md and
# target/bench/results.json. About 30 minutes.
#
# Knobs: BENCH_SECS (15), BENCH_ROUNDS (3), BENCH_WARMUP_SECS (5), BENCH_SYSTEM_SECS (60),
# BENCH_GATE_USERS (5000; 0 skips the gate).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=svc_bench TOOLS="wrk openssl"
source scripts/bench/prepare.sh
# 1,000 connections for wrk and as many for each server: as many files as allowed.
ulimit -n "$(ulimit -Hn)"
# Nothing left behind afterwards: svc's database, keys, queues and exchanges.
trap 'forget_named || true' EXIT
python3 scripts/bench.py
