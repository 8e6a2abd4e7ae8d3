"""Benchmark 3: the HTTP API under load.

gunicorn runs the project with the production settings and the Procfile's web options;
`wrk` (a second process, a fixed number of keep-alive connections) loads four endpoints,
all as one JWT-authenticated user:

- `GET /api/me/`, the trivial authenticated baseline;
- `POST /api/jobs/` creating `system.noop` jobs (no worker runs them: they stay queued);
- `GET /api/jobs/{id}/status/`, polling queued jobs (200 with a body);
- the same with a matching `If-None-Match` (304).

The machine is shared with other work whose load comes and goes within seconds, so the
endpoints take turns in short phases, cycle after cycle, and each endpoint's figures add
up all its phases: every endpoint sees the same mix of quiet and busy moments. The
cycles' orders form balanced Latin squares, so each endpoint follows each other one
equally often (a create phase leaves the database busier for a moment). The ratios are
those of the added-up throughputs; their spread cycle by cycle is recorded beside them,
and so is the CPU the gunicorn workers and their database backends spent per request.
`BENCH_API_PROFILE=1` adds a profiled phase per endpoint (py-spy sampling the workers'
Python code while it holds the GIL) and records where their CPU went.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench import harness

PHASE_SECONDS = int(os.environ.get("BENCH_API_PHASE_SECONDS", "2"))
CYCLES = int(os.environ.get("BENCH_API_CYCLES", "12"))
WARMUP_SECONDS = int(os.environ.get("BENCH_API_WARMUP_SECONDS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_API_CONNECTIONS", "8"))
STATUS_JOBS = 50
PROFILE = os.environ.get("BENCH_API_PROFILE", "") == "1"
PROFILE_SECONDS = 8
# The site runs behind a TLS-terminating proxy in production; this is what it forwards.
PROXY_HEADERS = {"X-Forwarded-Proto": "https"}
# Latencies leave wrk as this many quantiles per phase (enough for a p99 of many phases).
QUANTILES = 1000


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: str | None = None


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    calls: list[Call]
    expected_status: int


# --- the server ----------------------------------------------------------------------


def procfile_command(process: str, **environment: str) -> list[str]:
    """The Procfile's command for `process`, with ${NAME:-default} expanded from
    `environment`, then the environment, then the default."""
    for line in (harness.ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            expanded = re.sub(
                r"\$\{(\w+):-([^}]*)\}",
                lambda m: environment.get(m[1]) or os.environ.get(m[1]) or m[2],
                command,
            )
            return shlex.split(expanded)
    raise LookupError(f"No {process!r} process in the Procfile")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    base_url: str
    master: subprocess.Popen
    workers: list[int]


@contextmanager
def gunicorn() -> Iterator[Server]:
    """The Procfile's web process on a free port, answering; stopped on exit."""
    port = free_port()
    command = procfile_command("web", WEB_BIND="127.0.0.1", WEB_PORT=str(port))
    command[0] = str(Path(sys.executable).with_name(command[0]))
    # Each gthread worker takes keep-alive connections while it has room, and one worker
    # often takes all of wrk's connections at once, leaving the other idle for the whole
    # phase (half the throughput, at random). Room for as many connections as threads
    # splits them evenly; everything else is as in production.
    command += ["--worker-connections", command[command.index("--threads") + 1]]
    log_dir = Path(tempfile.mkdtemp(prefix="jobsite-bench-api-"))
    log_path = log_dir / "gunicorn.log"
    with log_path.open("wb") as log:
        # No worker runs the created jobs: they pile up queued, past any per-user cap.
        env = {**os.environ, "JOBS_USER_MAX_ACTIVE": "0"}
        process = subprocess.Popen(
            command, cwd=harness.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        harness.wait_until(
            lambda: _answers(base_url, process, log_path), timeout=60, interval=0.1, what="gunicorn"
        )
        yield Server(base_url, process, worker_pids(process))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(log_dir, ignore_errors=True)


def _answers(base_url: str, process: subprocess.Popen, log_path: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()[-5000:]}")
    try:
        response = requests.get(f"{base_url}/api/me/", headers=PROXY_HEADERS, timeout=10)
    except (requests.ConnectionError, requests.Timeout):
        return False
    return response.status_code == 401


def worker_pids(master: subprocess.Popen) -> list[int]:
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_backends() -> list[int]:
    """The PostgreSQL backends serving the bench database, but this process's own (the
    server's connections: it runs on this machine)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]


class CpuMeter:
    """CPU time the gunicorn workers and their database backends spend from here on."""

    def __init__(self, server: Server):
        self.workers = server.workers
        self.workers_start = sum(cpu_seconds(pid) for pid in self.workers)
        self.backends_start = {pid: cpu_seconds(pid) for pid in database_backends()}

    def read(self) -> tuple[float, float]:
        """Seconds of CPU so far: the workers', and their backends' (backends opened
        since the start count whole)."""
        workers = sum(cpu_seconds(pid) for pid in self.workers) - self.workers_start
        backends = sum(
            cpu_seconds(pid) - self.backends_start.get(pid, 0.0) for pid in database_backends()
        )
        return workers, max(0.0, backends)


# --- the endpoints -------------------------------------------------------------------


def access_token(base_url: str) -> str:
    response = requests.post(
        f"{base_url}/api/auth/token/",
        json={"username": "bench", "password": harness.PASSWORD},
        headers=PROXY_HEADERS,
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["access"]


def endpoints(base_url: str, token: str) -> list[Endpoint]:
    headers = {**PROXY_HEADERS, "Authorization": f"Bearer {token}"}
    create_headers = {**headers, "Content-Type": "application/json"}
    polled = _polled_jobs(base_url, headers, STATUS_JOBS)
    return [
        Endpoint("trivial", "GET /api/me/", [Call("GET", "/api/me/", headers)], 200),
        Endpoint(
            "create",
            "POST /api/jobs/",
            [Call("POST", "/api/jobs/", create_headers, json.dumps({"type": "system.noop"}))],
            202,
        ),
        Endpoint(
            "status",
            "GET /api/jobs/{id}/status/",
            [Call("GET", f"/api/jobs/{job_id}/status/", headers) for job_id in polled],
            200,
        ),
        Endpoint(
            "status_304",
            "GET /api/jobs/{id}/status/ with If-None-Match",
            [
                Call("GET", f"/api/jobs/{job_id}/status/", {**headers, "If-None-Match": etag})
                for job_id, etag in polled.items()
            ],
            304,
        ),
    ]


def _polled_jobs(base_url: str, headers: dict[str, str], n: int) -> dict[str, str]:
    """Create n jobs through the API; their ids and current ETags."""
    etags = {}
    with requests.Session() as session:
        session.headers.update(headers)
        for _ in range(n):
            created = session.post(f"{base_url}/api/jobs/", json={"type": "system.noop"})
            created.raise_for_status()
            job_id = created.json()["id"]
            polled = session.get(f"{base_url}/api/jobs/{job_id}/status/")
            polled.raise_for_status()
            etags[job_id] = polled.headers["ETag"]
    return etags


# --- the load generator --------------------------------------------------------------

WRK_SCRIPT = """
local calls = %(calls)s
local prepared = {}
local next_call = 0
local threads = {}
statuses = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for i, call in ipairs(calls) do
    prepared[i] = wrk.format(call.method, call.path, call.headers, call.body)
  end
end

function request()
  next_call = next_call %% #prepared + 1
  return prepared[next_call]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      table.insert(counts, string.format('"%%d": %%d', status, n))
    end
  end
  -- The latencies as evenly spaced quantiles, each standing for an equal share of
  -- the requests, so that phases can be added up.
  local quantiles = {}
  local n = %(quantiles)d
  for i = 1, n do
    table.insert(quantiles, string.format("%%d", latency:percentile((i - 0.5) * 100 / n)))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "statuses": {%%s}, '
    .. '"socket_errors": %%d, "latency_quantiles_us": [%%s]}\\n',
    summary.requests, summary.duration, table.concat(counts, ", "),
    e.connect + e.read + e.write + e.timeout, table.concat(quantiles, ", ")))
end
"""


def _lua(value) -> str:
    """A Lua literal for strings, dicts and lists of them (JSON string escapes suit Lua
    for ASCII text)."""
    if value is None:
        return "nil"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    raise TypeError(value)


@dataclass
class Load:
    """What one or more wrk runs against an endpoint measured, added up. The latencies
    are kept as (microseconds, requests) pairs: each run's quantiles, weighted by its
    requests."""

    requests: int = 0
    seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    database_cpu_seconds: float = 0.0
    latencies: list[tuple[int, float]] = field(default_factory=list)

    def add(self, other: Load) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        self.server_cpu_seconds += other.server_cpu_seconds
        self.database_cpu_seconds += other.database_cpu_seconds
        self.latencies += other.latencies

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def server_cpu_ms_per_request(self) -> float:
        return 1000 * self.server_cpu_seconds / self.requests

    @property
    def database_cpu_ms_per_request(self) -> float:
        return 1000 * self.database_cpu_seconds / self.requests

    def latency_ms(self, pct: float) -> float:
        """The `pct` percentile of the latencies."""
        wanted = pct / 100 * sum(weight for _, weight in self.latencies)
        seen = 0.0
        for us, weight in sorted(self.latencies):
            seen += weight
            if seen >= wanted:
                return us / 1000
        return float("nan")


def load(server: Server, endpoint: Endpoint, seconds: int) -> Load:
    """`seconds` of wrk against one endpoint; any answer but the expected one fails."""
    calls = [
        {"method": c.method, "path": c.path, "headers": c.headers, "body": c.body}
        for c in endpoint.calls
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"calls": _lua(calls), "quantiles": QUANTILES})
    meter = CpuMeter(server)
    try:
        output = subprocess.run(
            [
                "wrk",
                "--threads",
                "1",
                "--connections",
                str(CONNECTIONS),
                "--duration",
                f"{seconds}s",
                "--timeout",
                "10s",
                "--script",
                script.name,
                server.base_url,
            ],
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(script.name)
    if output.returncode != 0:
        raise RuntimeError(f"wrk failed on {endpoint.label}:\n{output.stderr}{output.stdout}")
    server_cpu, database_cpu = meter.read()
    line = next(line for line in output.stdout.splitlines() if line.startswith("WRK_RESULT "))
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    unexpected = {k: v for k, v in raw["statuses"].items() if int(k) != endpoint.expected_status}
    if unexpected or raw["socket_errors"]:
        raise AssertionError(
            f"{endpoint.label}: unexpected answers {unexpected}, "
            f"{raw['socket_errors']} socket errors"
        )
    return Load(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        server_cpu_seconds=server_cpu,
        database_cpu_seconds=database_cpu,
        latencies=[(us, raw["requests"] / QUANTILES) for us in raw["latency_quantiles_us"]],
    )


# --- profiling (BENCH_API_PROFILE=1) -------------------------------------------------


def profile(server: Server, endpoint: Endpoint, seconds: int) -> dict:
    """Load one endpoint while py-spy samples the gunicorn workers' threads that hold the
    GIL (Python running, not waiting); the functions with the most samples, inclusive
    and own, as shares of the samples of request handling."""
    out = Path(tempfile.mkdtemp(prefix="jobsite-pyspy-")) / "profile.txt"
    pyspy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(server.master.pid),
            "--subprocesses",
            "--gil",
            "--format",
            "raw",
            "--rate",
            "200",
            "--duration",
            str(seconds - 1),  # within the load that starts with it
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    load(server, endpoint, seconds)
    pyspy.wait(timeout=seconds + 30)
    summary = summarize_stacks(out.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return summary


def summarize_stacks(raw: str, top: int = 40) -> dict:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if "handle_request" not in stack:
            continue  # the workers' main loops, not a request
        frames = [_short(f) for f in stack.split(";") if "(" in f]
        samples += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
        own[frames[-1]] += int(count)

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {frame: round(100 * n / samples, 1) for frame, n in counter.most_common(top)}

    return {"samples": samples, "inclusive_pct": shares(inclusive), "own_pct": shares(own)}


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    for marker in ("site-packages/", str(harness.ROOT) + "/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


# --- the benchmark -------------------------------------------------------------------


def balanced_orders(n: int) -> list[list[int]]:
    """n orders of 0..n-1 (n even) in which each item comes first once and follows each
    other item once: a balanced Latin square."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    return [[(item + row) % n for item in first] for row in range(n)]


def run_cycles(server: Server, targets: list[Endpoint]) -> dict[str, list[Load]]:
    """Warm every endpoint up, then CYCLES cycles of one phase per endpoint."""
    for endpoint in targets:
        load(server, endpoint, WARMUP_SECONDS)
    phases: dict[str, list[Load]] = {e.key: [] for e in targets}
    orders = balanced_orders(len(targets))
    for cycle in range(CYCLES):
        for index in orders[cycle % len(orders)]:
            endpoint = targets[index]
            phases[endpoint.key].append(load(server, endpoint, PHASE_SECONDS))
        print(
            f"api    cycle {cycle + 1}/{CYCLES}: "
            + ", ".join(f"{key} {p[-1].requests_per_second:,.0f}" for key, p in phases.items())
            + " req/s",
            flush=True,
        )
    return phases


def main() -> harness.Results:
    results = harness.Results("api", "API throughput and latency against a trivial endpoint")
    harness.setup_django()
    harness.bench_user()
    harness.close_connections()
    harness.flush_broker()
    try:
        with gunicorn() as server:
            targets = endpoints(server.base_url, access_token(server.base_url))
            phases = run_cycles(server, targets)
            if PROFILE:
                profiles = {e.key: profile(server, e, PROFILE_SECONDS) for e in targets}
                results.detail("profiles", profiles)
    finally:
        harness.flush_broker()
    report(results, targets, phases)
    results.write()
    return results


RATIOS = [
    ("create", "create / trivial", 0.5),
    ("status", "status / trivial", 0.8),
    ("status_304", "status 304 / trivial", 0.8),
]


def report(
    results: harness.Results, targets: list[Endpoint], phases: dict[str, list[Load]]
) -> None:
    results.detail(
        "method",
        f"wrk, 1 thread, {CONNECTIONS} keep-alive connections; after a {WARMUP_SECONDS} s "
        f"warm-up per endpoint, {CYCLES} cycles of one {PHASE_SECONDS} s phase per "
        "endpoint (orders from balanced Latin squares); an endpoint's throughput is all its "
        "requests over all its phases' time (the mean over the cycles), its latencies "
        "the percentiles of all its requests; gunicorn with the Procfile's web options "
        "(plus --worker-connections = threads, so wrk's connections split evenly over "
        "the workers) and DJANGO_DEBUG=0, requests forwarded as HTTPS; status polls cycle over "
        f"{STATUS_JOBS} queued jobs; CPU per request is the user and system time of the "
        "gunicorn workers and of the PostgreSQL backends serving them",
    )
    totals = {}
    for endpoint in targets:
        total = totals[endpoint.key] = Load()
        for phase in phases[endpoint.key]:
            total.add(phase)
        results.figure(f"{endpoint.label} throughput", total.requests_per_second, "req/s")
        results.figure(f"{endpoint.label} p50", total.latency_ms(50), "ms")
        results.figure(f"{endpoint.label} p99", total.latency_ms(99), "ms")
    results.detail(
        "cpu_ms_per_request",
        {
            key: {
                "gunicorn": round(total.server_cpu_ms_per_request, 3),
                "postgresql": round(total.database_cpu_ms_per_request, 3),
            }
            for key, total in totals.items()
        },
    )
    results.detail(
        "requests_per_second_by_cycle",
        {key: [round(p.requests_per_second, 1) for p in loads] for key, loads in phases.items()},
    )
    trivial = totals["trivial"].requests_per_second
    spreads = {}
    for key, name, target in RATIOS:
        ratio = totals[key].requests_per_second / trivial
        results.figure(name, ratio, "", target=f">= {target}", met=ratio >= target)
        by_cycle = [
            p.requests_per_second / t.requests_per_second
            for p, t in zip(phases[key], phases["trivial"], strict=True)
        ]
        spreads[name] = {
            "median": round(statistics.median(by_cycle), 3),
            "min": round(min(by_cycle), 3),
            "max": round(max(by_cycle), 3),
        }
    results.detail("ratios_by_cycle", spreads)


if __name__ == "__main__":
    harness.recreate_database()
    main()
