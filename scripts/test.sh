#!/usr/bin/env bash
# Runs the full test suite: unit tests and the integration tests against the
# real PostgreSQL, Redis and RabbitMQ (started first if needed; Chromium is
# installed for the load-test report's browser test if missing), plus the read
# path through PgBouncer to a streaming replica (scripts/replica.sh). A read
# path this script started is stopped when it ends: left running, the
# replica's WAL replay and fsyncs would share the cores and the disk with
# whatever runs next (in CI, the performance gate). One already running is
# left as it was found.
#
# Line coverage is measured with cargo-llvm-cov and must stay at or above
# SVC_COVERAGE_MIN (80 %); the report goes to target/coverage/. The tools are
# installed on first use (LLVM from the distribution, matching rustc's LLVM).
# SVC_COVERAGE=0 runs the tests without coverage; under CI, coverage is required.
set -euo pipefail
cd "$(dirname "$0")/.."

COVERAGE=${SVC_COVERAGE:-1}
COVERAGE_MIN=${SVC_COVERAGE_MIN:-80}

SCRIPT=test
source scripts/lib.sh

# Finds the LLVM tools matching rustc (rustup's llvm-tools, or the
# distribution's llvm-N exported as LLVM_COV/LLVM_PROFDATA) and makes sure
# cargo-llvm-cov is installed. Fails if either cannot be had.
coverage_tools() {
    if ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
        local major
        major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
        if ! command -v "llvm-cov-$major" >/dev/null; then
            install_packages "llvm-$major" || return 1
        fi
        LLVM_COV=$(command -v "llvm-cov-$major")
        LLVM_PROFDATA=$(command -v "llvm-profdata-$major")
        export LLVM_COV LLVM_PROFDATA
    fi # else rustup's own llvm-tools, which cargo-llvm-cov finds by itself
    if ! cargo llvm-cov --version >/dev/null 2>&1; then
        log "installing cargo-llvm-cov (cargo install, into ~/.cargo/bin)"
        cargo install --locked --quiet cargo-llvm-cov@0.9.1 || return 1
    fi
}

scripts/services.sh
# The report of `svc loadtest` is tested in a headless browser.
if ! command -v chromium >/dev/null && ! command -v google-chrome >/dev/null; then
    install_packages chromium
fi
if ! scripts/replica.sh status; then
    trap 'scripts/replica.sh stop || log "could not stop the read path"' EXIT
fi
scripts/replica.sh >/dev/null

if ! cargo nextest --version >/dev/null 2>&1; then
    log "cargo-nextest not found: plain cargo test, without coverage"
    cargo test --workspace --locked --no-fail-fast "$@"
    exit
fi
if [[ $COVERAGE != 0 ]]; then
    if coverage_tools; then
        cargo llvm-cov nextest --workspace --locked --no-fail-fast \
            --fail-under-lines "$COVERAGE_MIN" --summary-only "$@"
        cargo llvm-cov report --html --output-dir target/coverage >/dev/null
        log "line coverage at or above $COVERAGE_MIN %; report: target/coverage/html/index.html"
        exit 0
    fi
    [[ ${CI:-} == true ]] && { log "coverage is required under CI, and its tools cannot be installed"; exit 1; }
    log "coverage tools unavailable: running the tests without coverage"
fi
cargo nextest run --workspace --locked --no-fail-fast "$@"
