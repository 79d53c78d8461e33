#!/usr/bin/env bash
# Instructions per POST /data, svc against the bare confirmed publish
# (examples/bare_publish.rs), counted by callgrind: the same figure on every
# run of the same build, whatever else the machine is doing. wrk's
# requests/s on two shared cores swing by a fifth from one run to the next
# (docs/PERFORMANCE.md); this says whether a change to the write path made
# svc's own work smaller, and where that work goes. It counts user-space
# instructions only: the kernel's share (sockets, wake-ups) is not in it.
#
#   scripts/bench/instructions.sh            both servers, then svc's top functions
#   TOP=0 scripts/bench/instructions.sh      the two counts only
#
# Each server runs under valgrind (about 50 times slower), gets a 4 s warm-up
# with 64 connections, then 15 s counted. About four minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."

NAME=svc_instructions TOOLS="valgrind wrk curl"
source scripts/bench/prepare.sh
export SVC_LISTEN=127.0.0.1:18410 SVC_METRICS_LISTEN=127.0.0.1:19410
out=target/bench/callgrind
mkdir -p "$out"
lua=scripts/bench/wrk.lua

# count NAME PORT COMMAND...: prints "NAME REQUESTS INSTRUCTIONS"
count() {
    local name=$1 port=$2 file="$out/$1.out"
    shift 2
    rm -f "$file"
    # Counting starts after the warm-up (--instr-atstart=no, then -i on).
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" \
        "$@" >"$out/$name.log" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 60))
    until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
        ((SECONDS < deadline)) || { echo "instructions: $name did not start" >&2; kill "$pid"; exit 1; }
        sleep 1
    done
    wrk -t1 -c64 -d4s -s "$lua" "http://127.0.0.1:$port/data" -- post >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    local result
    result=$(wrk -t1 -c64 -d15s -s "$lua" "http://127.0.0.1:$port/data" -- post | grep '^{')
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" || true
    local requests instructions
    requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$result")
    instructions=$(callgrind_annotate "$file" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    echo "$name $requests $instructions"
}

bare_queue="$NAME.bare.$$"
bare=$(count bare_publish 18310 target/release/examples/bare_publish 127.0.0.1:18310 "$AMQP_URL" "$bare_queue" 4)
mine=$(count svc 18410 "$svc" serve)
# Nothing left behind: svc's database, markers, queues and exchanges.
forget_named

python3 - "$bare" "$mine" <<'EOF'
import sys
rows = [line.split() for line in sys.argv[1:]]
per = {name: int(instructions) / int(requests) for name, requests, instructions in rows}
for name, requests, instructions in rows:
    print(f"{name:<14} {int(requests):>7} requests  {per[name]:>9,.0f} instructions per request")
print(f"svc / bare publish: {per['svc'] / per['bare_publish']:.2f}")
EOF

if [[ ${TOP:-25} != 0 ]]; then
    echo
    echo "svc's functions by instructions, inclusive of callees, per request ($out/svc.out):"
    requests=$(awk '{print $2}' <<<"$mine")
    callgrind_annotate --inclusive=yes "$out/svc.out" 2>/dev/null |
        awk -v n="$requests" '/^ *[0-9,]+ .*:/ { v = $1; gsub(",", "", v); sub(/^ *[0-9,]+ *(\([ 0-9.%]+\))? */, ""); printf "%8.0f  %s\n", v / n, substr($0, 1, 150) }' |
        head -n "${TOP:-25}"
fi
