#!/usr/bin/env bash
# Gets the whole service running on this machine: the backing services, a
# release build, the migrations and topology, then `svc serve` (port 8000)
# and `svc consume` (metrics on 9000) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
[[ -f .env ]] || { cp .env.example .env; echo "run: wrote .env from .env.example" >&2; }
cargo build --release --locked
svc=target/release/svc

$svc migrate
trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT INT TERM
$svc consume &
$svc serve &
echo "run: svc is up: API on http://127.0.0.1:8000 (Swagger UI at /docs), consumer metrics on :9000; Ctrl-C stops both" >&2
wait -n
