#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from the live
# /openapi.json (valid and invalid) and checks every answer against the
# document: no 5xx, documented statuses, content types, headers and bodies,
# and that a written record is then readable. Installs schemathesis from PyPI
# if needed. Extra arguments go to `schemathesis run`.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
if ! schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

NAME=svc_fuzz
API=127.0.0.1:${FUZZ_API_PORT:-18100}
METRICS=127.0.0.1:${FUZZ_METRICS_PORT:-19100}
REPORT_DIR=${FUZZ_REPORT_DIR:-target/api-fuzz}
source scripts/stack.sh

schemathesis run "http://$API/openapi.json" --checks all --max-examples 100 "$@"
