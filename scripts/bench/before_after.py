"""Two svc builds side by side (scripts/bench/before-after.sh): warm reads and
writes with the consumer stopped, at 64 and 1,000 connections, runs taken in
turns. The environment (database, queues, keys) comes from scripts/fresh.sh."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "scripts" / "bench" / "wrk.lua"
OUT = ROOT / "target" / "bench"
SECS = int(os.environ.get("BENCH_SECS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARMUP = int(os.environ.get("BENCH_WARMUP_SECS", "5"))
NAME = os.environ["SVC_QUEUE_PREFIX"]
BUILDS = {"before": (os.environ["BEFORE_SVC"], "127.0.0.1:18501"),
          "after": (os.environ["AFTER_SVC"], "127.0.0.1:18502")}
SEED = 2000


def log(message: str) -> None:
    print(f"before-after: {message}", file=sys.stderr, flush=True)


def env(listen: str) -> dict:
    return {**os.environ, "SVC_LISTEN": listen, "SVC_METRICS_LISTEN": "127.0.0.1:19501",
            "MIMALLOC_ARENA_EAGER_COMMIT": "0", "MIMALLOC_PURGE_DELAY": "10"}


def wait_ready(address: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"svc on {address} did not become ready")


def seed(address: str) -> list[str]:
    """Writes SEED records through `address` with a consumer running, and
    waits until every one reads 200."""
    consumer = subprocess.Popen([BUILDS["after"][0], "consume"], env=env(BUILDS["after"][1]),
                                stderr=subprocess.DEVNULL)
    ids = []
    try:
        for index in range(SEED):
            request = urllib.request.Request(f"http://{address}/data", method="POST",
                                             data=json.dumps({"value": f"seed {index}"}).encode(),
                                             headers={"content-type": "application/json"})
            with urllib.request.urlopen(request) as answer:
                ids.append(json.load(answer)["id"])
        deadline = time.monotonic() + 60
        for id in ids:
            while True:
                with urllib.request.urlopen(f"http://{address}/data/{id}") as answer:
                    if answer.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("the seeded records were not persisted in time")
                time.sleep(0.05)
    finally:
        consumer.terminate()
        consumer.wait()
    return ids


def wrk(address: str, connections: int, secs: int, mode: list[str]) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{secs}s", "-s", str(LUA),
                          f"http://{address}/data", "--", *mode],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def purge() -> None:
    subprocess.run(["rabbitmqctl", "-q", "purge_queue", f"{NAME}.data.ingest"],
                   check=False, capture_output=True)


def main() -> None:
    servers = {name: subprocess.Popen([binary, "serve"], env=env(listen), stderr=subprocess.DEVNULL)
               for name, (binary, listen) in BUILDS.items()}
    try:
        for _, listen in BUILDS.values():
            wait_ready(listen)
        ids = seed(BUILDS["after"][1])
        ids_file = tempfile.NamedTemporaryFile("w", delete=False, suffix=".ids")
        ids_file.write("\n".join(ids) + "\n")
        ids_file.close()
        rows = []
        for label, mode, connections in [("GET /data/{id}, warm", ["get", ids_file.name], 64),
                                         ("GET /data/{id}, warm", ["get", ids_file.name], 1000),
                                         ("POST /data, consumer stopped", ["post"], 64),
                                         ("POST /data, consumer stopped", ["post"], 1000)]:
            log(f"{label} at {connections} connections")
            for name, (_, listen) in BUILDS.items():
                purge()
                wrk(listen, connections, WARMUP, mode)
            runs = {"before": [], "after": []}
            for _ in range(ROUNDS):
                for name, (_, listen) in BUILDS.items():
                    purge()
                    runs[name].append(wrk(listen, connections, SECS, mode))
            ratios = [a["rps"] / b["rps"] for a, b in zip(runs["after"], runs["before"])]
            rows.append({
                "path": label, "connections": connections,
                "before_rps": statistics.median(r["rps"] for r in runs["before"]),
                "after_rps": statistics.median(r["rps"] for r in runs["after"]),
                "before_p99_ms": statistics.median(r["p99_us"] for r in runs["before"]) / 1000,
                "after_p99_ms": statistics.median(r["p99_us"] for r in runs["after"]) / 1000,
                "ratio": statistics.median(ratios), "ratios": ratios,
                "errors": sum(sum(r["errors"].values()) for rs in runs.values() for r in rs),
            })
    finally:
        for server in servers.values():
            server.terminate()
            server.wait()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "before-after.json").write_text(json.dumps(rows, indent=2))
    print(f"| path | connections | before req/s | after req/s | after / before (turns) | before p99 | after p99 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        turns = ", ".join(f"{r * 100:.1f}" for r in row["ratios"])
        print(f"| {row['path']} | {row['connections']} | {row['before_rps']:,.0f} | {row['after_rps']:,.0f} | "
              f"{row['ratio'] * 100:.1f} % ({turns}) | {row['before_p99_ms']:.1f} ms | {row['after_p99_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
