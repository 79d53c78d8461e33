#!/usr/bin/env python3
"""The benchmark behind docs/PERFORMANCE.md, run by scripts/bench.sh.

First the load-test gate at 5,000 users, on a fresh stack, as CI judges it
(scripts/perf-gate.sh). Then every ratio
is measured side by side in one run on this machine: svc against a bare axum
handler with no I/O (examples/bare_axum.rs) for reads, and against a bare
handler that does nothing but one confirmed publish to a quorum queue
(examples/bare_publish.rs) for writes. wrk drives every HTTP figure (2
threads, as in the table of the FastAPI design it is compared with): a
warm-up of each server thrown away, then ROUNDS runs of each taken in turns,
the median run reported. Then the whole system: the consumer's drain rate of
a queue svc filled, sustained writes with serve and consume together,
accepted-to-persisted latency at half that rate, memory, and CPU time per
1,000 requests.

Results go to target/bench/results.json and into docs/PERFORMANCE.md between
the `bench:start` and `bench:end` markers.
"""

import functools
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SVC = ROOT / "target" / "release" / "svc"
EXAMPLES = ROOT / "target" / "release" / "examples"
OUT = ROOT / "target" / "bench"
LUA = ROOT / "scripts" / "bench" / "wrk.lua"
DOC = ROOT / "docs" / "PERFORMANCE.md"

# Database, queue prefix and key prefix, emptied by scripts/fresh.sh.
NAME = os.environ.get("SVC_QUEUE_PREFIX", "svc_bench")
API = "127.0.0.1:18400"
METRICS = "127.0.0.1:19400"
BARE_AXUM = "127.0.0.1:18200"
BARE_PUBLISH = "127.0.0.1:18300"
SECS = int(os.environ.get("BENCH_SECS", "15"))
WARMUP = int(os.environ.get("BENCH_WARMUP_SECS", "5"))
# Runs of svc and its baseline, taken in turns; the median run of each is reported.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SYSTEM_SECS = int(os.environ.get("BENCH_SYSTEM_SECS", "60"))
# How long svc's writes fill the queue that the consumer's drain is timed on.
FILL_SECS = int(os.environ.get("BENCH_FILL_SECS", "40"))
GATE_USERS = int(os.environ.get("BENCH_GATE_USERS", "5000"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The services' URLs come from scripts/fresh.sh, which bench.sh sources.
ENV = {
    **os.environ,
    "SVC_QUEUE_WATCH_MS": "250",
    # As the image sets them (Dockerfile): mimalloc commits memory on demand
    # and gives freed pages back after 10 ms.
    "MIMALLOC_ARENA_EAGER_COMMIT": "0",
    "MIMALLOC_PURGE_DELAY": "10",
    "SVC_LISTEN": API,
    "SVC_METRICS_LISTEN": METRICS,
}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


def sql(query: str) -> str:
    return sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", NAME, "-AtqX", "-c", query)


def rows() -> int:
    return int(sql("select count(*) from data"))


def purge(queue: str, node: str | None = None) -> None:
    sh("rabbitmqctl", "-q", *(["-n", node] if node else []), "purge_queue", queue)


@functools.cache
def quorum_log_dir() -> Path | None:
    """Where the broker keeps its quorum queues' write-ahead log, or None
    where it cannot be read from here (no broker tools, another machine)."""
    try:
        found = sh("rabbitmqctl", "-q", "eval",
                   "{ok, Dir} = application:get_env(ra, data_dir), filename:join(Dir, atom_to_list(node())).")
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(found.strip('"'))
    return path if path.is_dir() else None


def quorum_log_numbers() -> list[int]:
    """The numbers of the broker's write-ahead log files on disk: the current
    one, and any older one still being written out to the queues' segments."""
    directory = quorum_log_dir()
    return [int(path.stem) for path in directory.glob("*.wal") if path.stem.isdigit()] if directory else []


def quorum_log_file() -> int | None:
    """The number of the quorum queues' current write-ahead log file. At 512
    MiB the broker starts the next one and writes the full one out to each
    queue's segments, slowing its confirms for a few seconds: a write run
    during which this number moved met a rollover."""
    return max(quorum_log_numbers(), default=None)


def start_fresh_quorum_log(within: float = 60) -> None:
    """Rolls the broker's quorum-queue log over and waits until the old one
    is written out, so that a write run starts on an empty log and no
    rollover falls within it (15 s of writes fill about a quarter of one).
    Without this, the rollover that comes every 512 MiB lands on whichever
    server is running at the time, and the bare publish and svc share the
    log. What a rollover costs is measured on its own (docs/PERFORMANCE.md)."""
    before = quorum_log_file()
    if before is None:
        return
    try:
        sh("rabbitmqctl", "-q", "eval",
           "#{names := #{wal := Wal}} = ra_system:fetch(quorum_queues), ra_log_wal:force_roll_over(Wal).")
    except subprocess.CalledProcessError as error:
        log(f"could not roll the broker's log over ({error.stderr.strip()}); measuring on the current one")
        return
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        numbers = quorum_log_numbers()
        if numbers and min(numbers) > before:
            return
        time.sleep(0.1)
    log(f"the broker's old log was still being written out after {within:.0f} s; measuring anyway")


class Process:
    """A server of the benchmark, with its CPU time and memory read from /proc,
    and the queue it publishes to, if any."""

    def __init__(self, name: str, args: list[str], queue: str | None = None,
                 env: dict | None = None, node: str | None = None):
        # `node`: the broker node holding `queue`, when not the shared one.
        self.name, self.queue, self.node = name, queue, node
        self.log = open(OUT / f"{name}.log", "w")
        self.popen = subprocess.Popen(args, env={**ENV, **(env or {})}, stdout=self.log, stderr=self.log)

    def cpu_seconds(self) -> float:
        return process_seconds(self.popen.pid)

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def process_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def pids_of(name: str) -> list[int]:
    """Every process of that exact name (the broker's VM, Redis, Postgres's backends)."""
    done = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


def disk_counters() -> dict:
    """The machine's waits on the disk so far: the time some task stalled on
    I/O (the kernel's pressure stall information, in µs), and the disks'
    cache flushes (what each fsync waits for) with the ms they took, over
    every whole disk. Empty where the kernel does not report them."""
    counters: dict = {}
    try:
        some = Path("/proc/pressure/io").read_text().split("\n", 1)[0]
        counters["io_stall_us"] = int(some.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        pass
    try:
        disks = {entry.name for entry in Path("/sys/block").iterdir()
                 if not entry.name.startswith(("loop", "ram", "zram"))}
        # Flushes completed and the ms they took: fields 19 and 20 (Linux 5.5+).
        rows = [line.split() for line in Path("/proc/diskstats").read_text().splitlines()]
        rows = [fields for fields in rows if len(fields) >= 20 and fields[2] in disks]
        if rows:
            counters["flushes"] = sum(int(fields[18]) for fields in rows)
            counters["flush_ms"] = sum(int(fields[19]) for fields in rows)
    except OSError:
        pass
    return counters


class CpuShares:
    """Where the machine's CPU goes during one run: the server under test, the
    generator (wrk, the only child process reaped meanwhile), the broker,
    Redis and, when asked, more parts (the consumer, Postgres), and the whole
    machine's busy and stolen cores; and beside them its waits on the disk, so
    that each row says what bounds it."""

    OTHERS = {"broker": "beam.smp", "redis": "redis-server"}

    def __init__(self, server: Process, consumer: Process | None = None, postgres: bool = False):
        self.pids = {"server": [server.popen.pid]}
        self.pids |= {role: pids_of(name) for role, name in self.OTHERS.items()}
        if consumer:
            self.pids["consumer"] = [consumer.popen.pid]
        if postgres:
            self.pids["postgres"] = pids_of("postgres")
        self.started = self.read()

    def read(self) -> dict:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds: dict = {"generator": children.ru_utime + children.ru_stime, "wall": time.monotonic()}
        for role, pids in self.pids.items():
            seconds[role] = {}
            for pid in pids:
                try:
                    seconds[role][pid] = process_seconds(pid)
                except OSError:
                    pass  # gone (a database connection closed): counted until it went
        # The machine: user nice system idle iowait irq softirq steal.
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        seconds["busy"] = (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / CLOCK_TICKS
        seconds["stolen"] = ticks[7] / CLOCK_TICKS
        seconds["disk"] = disk_counters()
        return seconds

    def per_1000(self, requests: int) -> dict:
        """CPU ms per 1,000 requests of each part, and the machine's cores."""
        now, then = self.read(), self.started
        spent = {role: sum(now[role].get(pid, then[role][pid]) - then[role][pid] for pid in then[role])
                 for role in self.pids}
        spent |= {part: now[part] - then[part] for part in ("generator", "wall", "busy", "stolen")}
        shares = {part: round(spent[part] * 1e6 / max(requests, 1), 1)
                  for part in ("generator", *self.pids)}
        wall = max(spent["wall"], 1e-9)
        shares["machine_busy_cores"] = round(spent["busy"] / wall, 2)
        shares["stolen_cores"] = round(spent["stolen"] / wall, 2)
        disk = {part: now["disk"][part] - then["disk"][part] for part in now["disk"]}
        if "io_stall_us" in disk:
            # Share of the run in which at least one task waited for I/O.
            shares["io_stalled_pct"] = round(disk["io_stall_us"] / 1e4 / wall, 1)
        if "flushes" in disk:
            shares["disk_flushes_per_sec"] = round(disk["flushes"] / wall)
            shares["disk_flush_ms"] = round(disk["flush_ms"] / max(disk["flushes"], 1), 2)
        return shares


def wait_http(url: str, within: float = 30) -> None:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return  # it answers, if not with a success: it is up
        except OSError:
            pass  # not listening yet; a 5xx is not ready yet
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} did not answer within {within} s")


class PeakRss(threading.Thread):
    """Samples a process's resident memory every 200 ms while a run lasts."""

    def __init__(self, process: Process):
        super().__init__(daemon=True)
        self.process, self.peak, self.done = process, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.rss_mib())
            time.sleep(0.2)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return round(self.peak, 1)


def wrk(label: str, address: str, connections: int, mode: str, server: Process, secs: int = SECS,
        warmup: int = WARMUP, consumer: Process | None = None, fresh: bool = True) -> dict:
    """One wrk measurement after a warm-up run, with the server's CPU time and
    peak memory. Writes start from an empty queue: with the consumer stopped,
    millions of messages pile up over the runs, the broker slows down with its
    backlog, and that would land on whichever server happened to run later.
    They also start on a fresh broker log (start_fresh_quorum_log), unless
    `fresh` is False."""
    extra = [str(OUT / "ids.txt")] if mode == "get" else []
    if mode == "post" and server.queue and fresh:
        purge(server.queue, server.node)
        if server.node is None:
            start_fresh_quorum_log()
    command = ["wrk", "-t2", f"-c{connections}", "--timeout", "5s", "-s", str(LUA)]
    target = f"http://{address}/data" if mode == "post" else f"http://{address}"
    if warmup:
        subprocess.run([*command, f"-d{warmup}s", target, "--", mode, *extra],
                       check=True, capture_output=True, text=True)
    shares = CpuShares(server, consumer, postgres=consumer is not None)
    log_file = quorum_log_file() if mode == "post" and server.node is None else None
    sampler = PeakRss(server)
    sampler.start()
    output = subprocess.run([*command, f"-d{secs}s", target, "--", mode, *extra],
                            check=True, capture_output=True, text=True).stdout
    peak = sampler.stop()
    line = [line for line in output.splitlines() if line.startswith("{")][-1]
    result = json.loads(line)
    seconds = result["duration_us"] / 1e6
    errors = sum(result["errors"].values())
    good = result["requests"] - result["errors"]["status"]
    row = {
        "label": label, "connections": connections, "requests": result["requests"],
        "rps": round(good / seconds), "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000, "max_ms": result["max_us"] / 1000,
        "errors": errors, "errors_by_kind": result["errors"],
        "peak_rss_mib": peak,
    }
    if log_file is not None and (now := quorum_log_file()) is not None:
        row["log_rollovers"] = now - log_file
    row["cpu"] = shares.per_1000(result["requests"])
    row["cpu_ms_per_1000"] = row["cpu"]["server"]
    log(f"{label:<28} c={connections:<5} {row['rps']:>8} req/s  p99 {row['p99_ms']:8.2f} ms  "
        f"errors {errors}  RSS {peak} MiB  CPU ms/1000 req {row['cpu']}")
    return row


def side_by_side(connections: int, mode: str, baseline: tuple, svc: tuple) -> list[dict]:
    """svc and its baseline measured in turns: a warm-up of each, then ROUNDS
    runs of each, alternating, so that whatever else the machine does falls on
    both alike. Each server's row is its median run (by requests/s), with the
    requests/s of every run and the highest peak memory of all."""
    rows = []
    for label, address, server in (baseline, svc):
        wrk(f"{label} (warm-up)", address, connections, mode, server, secs=WARMUP, warmup=0)
    runs: dict[str, list[dict]] = {baseline[0]: [], svc[0]: []}
    for _ in range(ROUNDS):
        for label, address, server in (baseline, svc):
            runs[label].append(wrk(label, address, connections, mode, server, warmup=0))
    for label, measured in runs.items():
        median = sorted(measured, key=lambda row: row["rps"])[len(measured) // 2]
        # The p99 is the median of the runs' p99s, not the p99 of the run
        # with the median rate: a broker stall lands on one run now and
        # then, on either server, and would otherwise decide the row.
        p99s = [row["p99_ms"] for row in measured]
        rows.append({**median, "rounds_rps": [row["rps"] for row in measured],
                     "p99_ms": sorted(p99s)[len(p99s) // 2], "rounds_p99_ms": p99s,
                     "rounds_log_rollovers": [row.get("log_rollovers") for row in measured],
                     "peak_rss_mib": max(row["peak_rss_mib"] for row in measured)})
        log(f"{label:<28} c={connections:<5} median {median['rps']} req/s of {rows[-1]['rounds_rps']}")
    return rows


TLS_API, PLAIN_API = "127.0.0.1:18401", "127.0.0.1:18402"


class PrivateBroker:
    """A RabbitMQ node of the benchmark's own, with a plain and a TLS listener
    (certificates for `localhost` from a CA that openssl makes here), so that
    svc's writes over amqp:// and amqps:// are measured on the same broker."""

    def __init__(self) -> None:
        self.dir = OUT / "tls-broker"
        subprocess.run(["rm", "-rf", str(self.dir)], check=True)
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True)
        d = self.dir
        openssl = functools.partial(subprocess.run, check=True, capture_output=True, cwd=d)
        openssl(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=svc bench CA"])
        openssl(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                 "-out", "server.csr", "-subj", "/CN=localhost"])
        (d / "san.ext").write_text("subjectAltName=DNS:localhost\n")
        openssl(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "san.ext"])
        self.ca = d / "ca.pem"
        self.plain_port, self.tls_port, dist_port = 35682, 35681, 35683
        self.node = f"svc-bench-{os.getpid()}@localhost"
        (d / "rabbitmq.conf").write_text(
            f"loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{self.plain_port}\n"
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/server.crt\n"
            f"ssl_options.keyfile = {d}/server.key\nssl_options.verify = verify_none\n")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "env.conf").write_text("")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(d)], check=True)
        env = {"RABBITMQ_CONF_ENV_FILE": f"{d}/env.conf", "RABBITMQ_NODENAME": self.node,
               "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.plain_port),
               "RABBITMQ_DIST_PORT": str(dist_port), "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
               "RABBITMQ_LOG_BASE": f"{d}/log", "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
               "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins"}
        self.popen = subprocess.Popen(["rabbitmq-server"], env={**os.environ, **env}, cwd=d,
                                      stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.popen.poll() is not None:
                    raise RuntimeError(f"the private broker did not start; see {d / 'server.log'}")
                time.sleep(0.25)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "stop"], capture_output=True)
        self.popen.wait(timeout=30)


def tls_writes() -> list[dict]:
    """svc's writes over amqps:// against the same over amqp://, on one
    private broker, side by side: what TLS to the broker costs."""
    broker = PrivateBroker()
    queue = f"{NAME}.data.ingest"
    plain = Process("serve_amqp", [str(SVC), "serve"], queue=queue, node=broker.node, env={
        "SVC_LISTEN": PLAIN_API, "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{broker.plain_port}/%2f"})
    tls = Process("serve_amqps", [str(SVC), "serve"], queue=queue, node=broker.node, env={
        "SVC_LISTEN": TLS_API, "AMQP_URL": f"amqps://guest:guest@localhost:{broker.tls_port}/%2f",
        "SVC_TLS_CA_FILE": str(broker.ca)})
    try:
        wait_http(f"http://{PLAIN_API}/health/ready")
        wait_http(f"http://{TLS_API}/health/ready")
        rows = []
        for connections in (64, 1000):
            rows += side_by_side(connections, "post", ("svc POST, amqp (private broker)", PLAIN_API, plain),
                                 ("svc POST, amqps", TLS_API, tls))
        return rows
    finally:
        for process in (plain, tls):
            process.stop()
        broker.stop()


def quorum_log_limit() -> int:
    """The size at which the broker rolls its quorum-queue log over."""
    return int(sh("rabbitmqctl", "-q", "eval",
                  "maps:get(wal_max_size_bytes, ra_system:fetch(quorum_queues))."))


def across_rollover(label: str, address: str, server: Process, lead: float = 5) -> dict | None:
    """One write run at 64 connections during which the broker's log rolls
    over by itself, about `lead` seconds in: writes fill a fresh log (unmeasured)
    until it is that far from its limit, then the measured run starts on it.
    None where the log cannot be read from here."""
    directory = quorum_log_dir()
    if directory is None:
        return None
    try:
        limit = quorum_log_limit()
    except (subprocess.CalledProcessError, ValueError) as error:
        log(f"{label}: cannot read the broker's log limit ({error}); no run across a rollover")
        return None
    purge(server.queue)
    start_fresh_quorum_log()

    def written() -> int:
        return sum(path.stat().st_size for path in directory.glob("*.wal"))

    filler = subprocess.Popen(["wrk", "-t2", "-c64", "-d600s", "-s", str(LUA), f"http://{address}/data", "--", "post"],
                              stdout=subprocess.DEVNULL)
    try:
        started, deadline = time.monotonic(), time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.1)
            elapsed, size = time.monotonic() - started, written()
            if elapsed > lead and size >= limit - size / elapsed * lead:
                break
        else:
            log(f"{label}: the log did not near its limit within 300 s")
    finally:
        filler.terminate()
        filler.wait()
    return wrk(f"{label} (across a rollover)", address, 64, "post", server, warmup=0, fresh=False)


def metric(text: str, name: str, labels: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def queue_depth() -> float | None:
    try:
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return metric(text, "svc_queue_messages", f'queue="{NAME}.data.ingest"')


def drain(messages: int, within: float = 300) -> tuple[Process, dict]:
    """Starts the consumer on a queue holding `messages` and times it, start-up
    included, until they are all rows in Postgres; with its CPU and memory.
    The rows already there are counted before it starts, so that none it
    writes is taken for one of them."""
    before = rows()
    expected = before + messages
    started = time.time()
    consumer = Process("consume", [str(SVC), "consume"])
    sampler = PeakRss(consumer)
    sampler.start()
    while rows() < expected:
        if time.time() - started > within:
            consumer.stop()
            raise SystemExit(f"bench: only {rows() - before} of {messages} rows after {within} s")
        time.sleep(0.25)
    elapsed = time.time() - started
    return consumer, {
        "rows": messages, "seconds": round(elapsed, 2),
        "rows_per_sec": round(messages / elapsed),
        "peak_rss_mib": sampler.stop(),
        "cpu_ms_per_1000_rows": round(consumer.cpu_seconds() * 1e6 / max(messages, 1), 1),
    }


def settle(within: float = 120) -> None:
    """After a bulk load: vacuum and checkpoint now, and let any streaming
    replica catch up, so that what is measured next is the API, not
    autovacuum or WAL replay running at the same moment."""
    log("vacuuming, checkpointing and waiting for replicas")
    sql("vacuum analyze data")
    sql("checkpoint")
    deadline = time.time() + within
    while time.time() < deadline:
        lag = sql("select coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) from pg_stat_replication")
        if float(lag) <= 0:
            return
        time.sleep(1)
    log(f"a replica is still replaying after {within:.0f} s; measuring anyway")


def whole_system(serve: Process, consumer: Process, connections: int) -> dict:
    """wrk POSTs at full speed for SYSTEM_SECS with the consumer running; the queue's
    depth is sampled throughout, then the time to drain what is left."""
    before = rows()
    depths: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            depth = queue_depth()
            if depth is not None:
                depths.append(depth)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    row = wrk("whole system, POST", API, connections, "post", serve, secs=SYSTEM_SECS, warmup=0, consumer=consumer)
    ended = time.time()
    accepted = row["requests"] - row["errors_by_kind"]["status"]
    while rows() < before + accepted and time.time() - ended < 120:
        time.sleep(0.1)
    drained_after = time.time() - ended
    stop.set()
    sampler.join()
    return {
        **row, "accepted": accepted, "writes_per_sec": row["rps"],
        "max_queue_depth": max(depths, default=0), "drained_after_secs": round(drained_after, 2),
        "rows_persisted": rows() - before,
    }


def end_to_end(rate: int) -> dict:
    """Accepted → persisted latency at a fixed arrival rate (svc loadtest's open model):
    the gap between the API's accepted_at and the row's created_at. Where the tail is
    slow, the seconds it came from and what Postgres did meanwhile (checkpoints,
    autovacuum of the table) say whether one stall or the whole run made it."""
    background = ("select (select checkpoints_timed + checkpoints_req from pg_stat_bgwriter) || '|' || "
                  "(select autovacuum_count + autoanalyze_count from pg_stat_user_tables where relname = 'data')")
    checkpoints_before, autovacuums_before = map(int, sql(background).split("|"))
    started = sql("select now()")
    report = OUT / "e2e"
    subprocess.run(
        [str(SVC), "loadtest", "--host", f"http://{API}", "--mix", "post=1", "--rate", str(rate),
         "--baseline-rate", str(max(rate // 10, 1)), "--users", "2000", "--baseline-users", "200",
         "--baseline-secs", "5", "--load-secs", "30", "--warmup-secs", "3", "--seed-records", "10",
         "--report-dir", str(report)],
        env=ENV, capture_output=True, text=True)
    stats = sql(
        "select count(*), "
        "round(1000 * extract(epoch from percentile_cont(0.5) within group (order by created_at - accepted_at))::numeric, 1), "
        "round(1000 * extract(epoch from percentile_cont(0.99) within group (order by created_at - accepted_at))::numeric, 1), "
        "round(1000 * extract(epoch from max(created_at - accepted_at))::numeric, 1) "
        f"from data where accepted_at >= '{started}'")
    count, p50, p99, worst = stats.split("|")
    # Seconds (from the start) in which some write took over 100 ms to persist.
    slow = sql(
        "select second || ':' || slow || ':' || worst from ("
        f"select extract(epoch from date_trunc('second', accepted_at) - date_trunc('second', '{started}'::timestamptz))::int as second, "
        "count(*) filter (where created_at - accepted_at > interval '100 ms') as slow, "
        "round(1000 * extract(epoch from max(created_at - accepted_at))::numeric) as worst "
        f"from data where accepted_at >= '{started}' group by 1) as seconds where slow > 0 order by second")
    checkpoints_after, autovacuums_after = map(int, sql(background).split("|"))
    summary = json.loads((report / "summary.json").read_text())
    result = {"rate": rate, "rows": int(count), "p50_ms": float(p50), "p99_ms": float(p99),
              "max_ms": float(worst), "loadtest_verdict": summary.get("verdict"),
              # "second:writes over 100 ms:slowest ms" for each such second
              "slow_seconds": slow.split() if slow else [],
              "checkpoints": checkpoints_after - checkpoints_before,
              "autovacuums_of_data": autovacuums_after - autovacuums_before}
    log(f"end to end at {rate}/s: {result}")
    return result


def gate(users: int) -> dict:
    """The load-test gate at `users`, judged as CI judges it: by
    scripts/perf-gate.sh, on a fresh stack of its own, so that a run that
    failed only latency gates while the host took cores is measured again."""
    report = OUT / f"gate-{users}"
    completed = subprocess.run(
        [str(ROOT / "scripts" / "perf-gate.sh"), "--users", str(users), "--hatch-rate", "1000",
         "--baseline-secs", "20", "--load-secs", "30"],
        env={**os.environ, "PERF_REPORT_DIR": str(report)}, capture_output=True, text=True)
    # perf-gate.sh keeps the report of each run it measured again in run-N/.
    earlier = sorted(report.glob("run-*/summary.json"), key=lambda path: int(path.parent.name[4:]))
    runs = [gate_run(json.loads(path.read_text())) for path in [*earlier, report / "summary.json"]]
    result = {"users": users, "exit_code": completed.returncode, **runs[-1],
              "summary": str(report / "summary.json"), "earlier_runs": runs[:-1]}
    log(f"gate at {users} users: exit {completed.returncode}, runs {runs}")
    return result


def gate_run(summary: dict) -> dict:
    """One run of the gate: its verdict, its gates, the most cores the host
    took in any phase and the slowest disk sync in any."""
    phases = summary["phases"]
    return {"verdict": summary.get("verdict"), "gates": summary.get("gates"),
            "stolen_cores": round(max(phase["machine_cpu"]["cores_stolen"] for phase in phases), 2),
            "slowest_sync_ms": round(max((phase.get("machine_disk") or {}).get("slowest_ms", 0) for phase in phases))}


def versions() -> dict:
    def first_line(*args: str) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=30)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {
        "machine": f"{os.cpu_count()} cores ({cpu.group(1) if cpu else platform.machine()}), "
                   f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
                   "generator on the same box",
        "rustc": first_line("rustc", "-V"),
        "wrk": first_line("wrk", "-v"),
        "postgres": sql("show server_version"),
        "redis": first_line("redis-server", "--version"),
        "rabbitmq": first_line("rabbitmqctl", "version"),
        "date": time.strftime("%Y-%m-%d"),
    }


def ratio(numerator: float, denominator: float) -> str:
    return f"{100 * numerator / denominator:.1f} %" if denominator else "n/a"


def paired_ratio(svc: dict, baseline: dict) -> str:
    """svc against its baseline turn by turn (each svc run over the baseline run
    just before it): the median of those ratios, each listed, then the ratio of
    the two medians. Pairing cancels a machine whose speed drifts during the
    row, which moves both runs of a turn alike."""
    pairs = list(zip(svc.get("rounds_rps", []), baseline.get("rounds_rps", [])))
    if len(pairs) < 2:
        return ratio(svc["rps"], baseline["rps"])
    ratios = sorted(100 * s / b for s, b in pairs if b)
    turns = ", ".join(f"{100 * s / b:.1f}" for s, b in pairs if b)
    return (f"{ratios[len(ratios) // 2]:.1f} % (turns: {turns} %; "
            f"of the medians: {ratio(svc['rps'], baseline['rps'])})")


def runs(row: dict) -> str:
    """Every run's requests/s, when there were several."""
    rounds = row.get("rounds_rps", [])
    return f" (runs: {', '.join(f'{rps:,}' for rps in rounds)})" if len(rounds) > 1 else ""


def p99(row: dict) -> str:
    """The median of the runs' p99s, with every run's, when there were
    several, each marked when the broker's log rolled over during it."""
    rounds = row.get("rounds_p99_ms", [])
    rollovers = row.get("rounds_log_rollovers") or [None] * len(rounds)
    marked = [f"{ms:.1f}{' (log rolled over)' if rolled else ''}" for ms, rolled in zip(rounds, rollovers)]
    every = f" (runs: {', '.join(marked)})" if len(rounds) > 1 else ""
    return f"{row['p99_ms']:.1f} ms{every}"


def markdown(results: dict) -> str:
    http = {(r["label"], r["connections"]): r for r in results["http"]}
    wrk_version = re.search(r"\d+\.\d+\.\d+", results["versions"]["wrk"]).group(0)
    lines = [
        f"Measured {results['versions']['date']} on {results['versions']['machine']}; "
        f"{results['versions']['rustc']}, wrk {wrk_version}, PostgreSQL "
        f"{results['versions']['postgres']}, {results['versions']['redis'].split(' sha')[0]}, "
        f"RabbitMQ {results['versions']['rabbitmq']}. Command: `scripts/bench.sh` "
        f"(wrk -t2; for each row a {WARMUP} s warm-up thrown away, then {ROUNDS} runs of {SECS} s "
        "taken in turns with the baseline, each write run from an empty queue and on a fresh broker log, "
        "so that no rollover of the quorum-queue log falls within it (what one costs is measured below); "
        "the median run's requests/s, "
        "CPU and memory are shown with every run's requests/s, and the median of the runs' p99s with every run's, "
        "marked where the broker's quorum-queue log rolled over to a new file during the run; "
        "svc / baseline is the median of the turns' ratios, each listed).",
        "",
        "| path | connections | svc req/s | svc p99 | baseline req/s | baseline p99 | svc / baseline | svc CPU per 1,000 req | svc peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path, svc_label, base_label, base_name in (
        ("GET /data/{id}, warm", "svc GET", "bare axum GET", "bare axum, no I/O"),
        ("POST /data, consumer stopped", "svc POST", "bare publish POST", "bare confirmed publish, quorum queue"),
        ("POST /data over amqps (TLS), consumer stopped", "svc POST, amqps", "svc POST, amqp (private broker)",
         "svc over amqp:// to the same private broker"),
    ):
        for connections in (64, 1000):
            if (svc_label, connections) not in http:
                continue  # results from before this row was measured
            s, b = http[(svc_label, connections)], http[(base_label, connections)]
            lines.append(
                f"| {path} | {connections} | {s['rps']:,}{runs(s)} | {p99(s)} | {b['rps']:,}{runs(b)} "
                f"({base_name}) | {p99(b)} | {paired_ratio(s, b)} | {s['cpu_ms_per_1000']} ms | "
                f"{s['peak_rss_mib']} MiB |")
    lines += cpu_table(http)
    d, e = results["drain"], results["e2e"]
    lines += [
        "",
        "| whole system | figure |",
        "| --- | --- |",
        *rollover_row(results.get("rollover") or []),
        f"| `svc consume` draining a pre-filled queue of {d['rows']:,} messages | **{d['rows_per_sec']:,} rows/s** "
        f"({d['seconds']} s), peak RSS {d['peak_rss_mib']} MiB, {d['cpu_ms_per_1000_rows']} ms CPU per 1,000 rows |",
        *(system_row(w) for w in whole_system_runs(results)),
        f"| accepted → persisted at {e['rate']:,} writes/s (half the highest sustained rate, open model) | "
        f"p50 {e['p50_ms']} ms, **p99 {e['p99_ms']} ms**, max {e['max_ms']} ms over {e['rows']:,} writes; "
        f"{slow_seconds(e)}; meanwhile {e['checkpoints']} checkpoints and {e['autovacuums_of_data']} "
        "autovacuums or autoanalyzes of `data` |",
        f"| `svc serve` holding 1,000 connections | peak RSS **{http[('svc GET', 1000)]['peak_rss_mib']} MiB** reading, "
        f"**{http[('svc POST', 1000)]['peak_rss_mib']} MiB** writing |",
        f"| `svc consume` | peak RSS **{d['peak_rss_mib']} MiB** while draining |",
    ]
    if results.get("gate"):
        g = results["gate"]
        lines.append(f"| `svc loadtest --users {g['users']}` (SLO, degradation, errors, durability; "
                     f"`scripts/perf-gate.sh`) | verdict **{g['verdict']}**, exit code {g['exit_code']}"
                     f"{failed_gates(g)}{gate_runs(g)} |")
    return "\n".join(lines)


def rollover_row(rows: list[dict]) -> list[str]:
    """The write runs during which the broker's log rolled over by itself."""
    if not rows:
        return []
    def figure(row: dict) -> str:
        rolled = row.get("log_rollovers")
        note = "" if rolled else " (the log did not roll over in this run)"
        return (f"{row['label'].removesuffix(' (across a rollover)')}: p99 **{row['p99_ms']:.1f} ms**, "
                f"max {row['max_ms']:.1f} ms, {row['rps']:,} req/s{note}")
    return [f"| POST /data at 64 connections, consumer stopped, one {SECS} s run during which the broker's "
            f"quorum-queue log rolls over by itself, about 5 s in | {'; '.join(figure(row) for row in rows)} |"]


def cpu_table(http: dict) -> list[str]:
    """Where the CPU of each row's median runs went, per 1,000 requests: what
    bounds a path on two shared cores is the sum of every part's share."""
    if "cpu" not in next(iter(http.values())):
        return []  # results from before the breakdown was measured
    lines = [
        "",
        "Where the CPU went in those median runs, in ms per 1,000 requests (svc / its baseline), "
        "the machine's busy cores out of 2, and its waits on the disk: the share of the run in which "
        "some task waited for I/O, and the disk's cache flushes (what an fsync waits for), per second "
        "and their mean time:",
        "",
        "| path | connections | server | generator (wrk) | RabbitMQ | Redis | machine busy | stolen by the host "
        "| waiting on I/O | disk flushes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path, svc_label, base_label in (("GET /data/{id}, warm", "svc GET", "bare axum GET"),
                                        ("POST /data, consumer stopped", "svc POST", "bare publish POST")):
        for connections in (64, 1000):
            s, b = http[(svc_label, connections)]["cpu"], http[(base_label, connections)]["cpu"]
            pair = " | ".join(f"{s[part]} / {b[part]}"
                              for part in ("server", "generator", "broker", "redis", "machine_busy_cores",
                                           "stolen_cores"))
            stalled = " / ".join(f"{run['io_stalled_pct']} %" if "io_stalled_pct" in run else "n/a"
                                 for run in (s, b))
            flushes = " / ".join(f"{run['disk_flushes_per_sec']}/s, {run['disk_flush_ms']} ms"
                                 if "disk_flush_ms" in run else "n/a" for run in (s, b))
            lines.append(f"| {path} | {connections} | {pair} | {stalled} | {flushes} |")
    return lines


def whole_system_runs(results: dict) -> list[dict]:
    """The whole system's runs, at 64 connections and then 1,000 (results
    from before the second was measured have only the first)."""
    return [results["system"], *([results["system_1000"]] if "system_1000" in results else [])]


def system_row(w: dict) -> str:
    return (f"| serve + consume + broker + Postgres + Redis, wrk POST for {SYSTEM_SECS} s at "
            f"{w['connections']:,} connections | "
            f"**{w['writes_per_sec']:,} writes/s accepted**, p99 {w['p99_ms']:.1f} ms, {w['errors']} errors; queue depth "
            f"at most {w['max_queue_depth']:,.0f}; drained {w['drained_after_secs']} s after the load stopped; "
            f"{w['rows_persisted']:,} rows for the {w['accepted']:,} 202s wrk counted (it stops counting with up to "
            f"{w['connections']:,} requests in flight, which are accepted and persisted too){system_cpu(w)} |")


def system_cpu(system: dict) -> str:
    """Each part's CPU per 1,000 writes in the whole system's run."""
    cpu = system.get("cpu", {})
    if "consumer" not in cpu:
        return ""
    parts = ", ".join(f"{name} {cpu[part]}" for name, part in (
        ("serve", "server"), ("consume", "consumer"), ("RabbitMQ", "broker"),
        ("Postgres", "postgres"), ("Redis", "redis"), ("wrk", "generator")))
    disk = (f"; some task waited for I/O in {cpu['io_stalled_pct']} % of the run, and the disk took "
            f"{cpu['disk_flushes_per_sec']} flushes/s of {cpu['disk_flush_ms']} ms on average"
            if "io_stalled_pct" in cpu and "disk_flush_ms" in cpu else "")
    return (f"; CPU per 1,000 writes: {parts} ms, with {cpu['machine_busy_cores']} of the 2 cores busy "
            f"({cpu['stolen_cores']} stolen){disk}")


def slow_seconds(e2e: dict) -> str:
    slow = e2e["slow_seconds"]
    if not slow:
        return "no write took over 100 ms"
    listed = ", ".join(f"s {second}: {count} (slowest {worst} ms)"
                       for second, count, worst in (entry.split(":") for entry in slow))
    return f"writes over 100 ms in {len(slow)} of its seconds ({listed})"


def failed_gates(gate: dict) -> str:
    """What failed, as the load test printed it, so a red row says why."""
    failed = [f"{g['kind']} {g.get('endpoint') or g.get('phase') or ''}: {g['measured']} (limit: {g['limit']})"
              for g in gate.get("gates") or [] if not g.get("passed")]
    return "; failed: " + "; ".join(failed) if failed else ""


def gate_runs(gate: dict) -> str:
    """The cores the host took during the judged run, and the runs
    perf-gate.sh measured again before it."""
    if "stolen_cores" not in gate:
        return ""  # results from before the gate ran through perf-gate.sh
    def host(run: dict) -> str:
        sync = f", the slowest disk sync {run['slowest_sync_ms']} ms" if "slowest_sync_ms" in run else ""
        return f"the host took up to {run['stolen_cores']} cores{sync}"
    earlier = "".join(f"; before it, run {number}: {run['verdict']}{failed_gates(run)}, {host(run)}"
                      for number, run in enumerate(gate["earlier_runs"], 1))
    return f"; {host(gate)}{earlier}"


def write_doc(table: str) -> None:
    text = DOC.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    block = f"{start}\n{table}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## Benchmark: `scripts/bench.sh`\n\n{block}\n"
    DOC.write_text(text)


def main() -> None:
    if sys.argv[1:] == ["--render"]:
        # Re-writes the table from the last run's results, without measuring.
        results = json.loads((OUT / "results.json").read_text())
        write_doc(markdown(results))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict = {"versions": versions(), "http": []}
    if GATE_USERS:
        # First, on a fresh stack, as CI runs it: after the bulk phases
        # below, the broker and the database go on digesting millions of
        # messages and rows for minutes, and the gate would measure that.
        # Before this run's own servers start, so none of them idles beside it.
        results["gate"] = gate(GATE_USERS)
    serve = Process("serve", [str(SVC), "serve"], queue=f"{NAME}.data.ingest")
    bare_axum = Process("bare_axum", [str(EXAMPLES / "bare_axum"), BARE_AXUM])
    bare_queue = f"{NAME}.bare.{os.getpid()}"
    bare_publish = Process("bare_publish", [
        str(EXAMPLES / "bare_publish"), BARE_PUBLISH, ENV["AMQP_URL"], bare_queue, "4"], queue=bare_queue)
    consumer = None
    try:
        wait_http(f"http://{API}/health/ready")
        wait_http(f"http://{BARE_AXUM}/data/x")
        time.sleep(1)  # bare_publish declares its queue

        log("writes, consumer stopped: svc against a bare confirmed publish")
        for connections in (64, 1000):
            results["http"] += side_by_side(connections, "post", ("bare publish POST", BARE_PUBLISH, bare_publish),
                                            ("svc POST", API, serve))
        log("writes across a rollover of the broker's log, consumer stopped")
        rollover = [across_rollover("bare publish POST", BARE_PUBLISH, bare_publish),
                    across_rollover("svc POST", API, serve)]
        results["rollover"] = [row for row in rollover if row]
        bare_publish.stop()

        log(f"svc's writes fill the queue for {FILL_SECS} s; the consumer drains them")
        fill = wrk("svc POST (filling)", API, 64, "post", serve, secs=FILL_SECS, warmup=0)
        # Every 202 is a confirmed message in the queue, which was empty when
        # the fill began. (The broker's own count, from rabbitmqctl, lags by
        # up to its 5 s statistics interval.)
        depth = fill["requests"] - fill["errors_by_kind"]["status"]
        consumer, results["drain"] = drain(depth)
        log(f"drain: {results['drain']}")

        settle()
        log("reads, warm cache: svc against bare axum")
        (OUT / "ids.txt").write_text(sql("select id from data order by random() limit 1000") + "\n")
        for connections in (64, 1000):
            results["http"] += side_by_side(connections, "get", ("bare axum GET", BARE_AXUM, bare_axum),
                                            ("svc GET", API, serve))
        bare_axum.stop()

        # At 64 connections the rate is what the confirms' latency allows; at
        # 1,000 it is what the two cores allow: the system's capacity.
        for key, connections in (("system", 64), ("system_1000", 1000)):
            log(f"the whole system: writes for {SYSTEM_SECS} s at {connections} connections, consumer running")
            settle()
            results[key] = whole_system(serve, consumer, connections)
            log(f"whole system at {connections} connections: {results[key]}")
        highest = max(run["writes_per_sec"] for run in whole_system_runs(results))
        results["e2e"] = end_to_end(max(highest // 2, 100))
        consumer.stop()
        log("writes over amqps against amqp, on a private broker of the benchmark's own")
        results["http"] += tls_writes()
    finally:
        for process in (serve, bare_axum, bare_publish, consumer):
            if process:
                process.stop()
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    write_doc(table)
    print(table)
    log(f"results in {OUT / 'results.json'}; table written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
