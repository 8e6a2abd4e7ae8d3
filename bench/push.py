"""Benchmark 11: live updates held by one web process. gunicorn runs as the Procfile
says, with one worker process (WEB_CONCURRENCY=1, --threads WEB_THREADS); N clients hold
GET /api/events/ open; this process changes one of the user's jobs through the store,
ROUNDS times, and each client notes when the change reached it. Meanwhile an ordinary
request (GET /api/me/) is timed. Then PUSH_MAX_WAITING + 2 clients try to wait: those
over the cap must be told to poll (503 push_busy) while /api/me/ still answers.

Figures per N: the slowest delivery of a change over all clients and rounds (target: a
second), and the /api/me/ latency with N clients waiting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from bench import harness
from bench.api import PROXY_HEADERS, Server, _answers, free_port, procfile_command, worker_pids

THREADS = int(os.environ.get("BENCH_PUSH_THREADS", "32"))
CAP = int(os.environ.get("BENCH_PUSH_MAX_WAITING", str(THREADS - 8)))
CLIENTS = [int(n) for n in os.environ.get("BENCH_PUSH_CLIENTS", f"1,8,16,{CAP}").split(",")]
ROUNDS = int(os.environ.get("BENCH_PUSH_ROUNDS", "10"))
# The server notices a client that left at its next keep-alive: between runs the bench
# waits for the last run's clients to be let go.
KEEPALIVE = 1.0


@contextmanager
def one_web_process() -> Iterator[Server]:
    port = free_port()
    command = procfile_command(
        "web",
        WEB_BIND="127.0.0.1",
        WEB_PORT=str(port),
        WEB_CONCURRENCY="1",
        WEB_THREADS=str(THREADS),
    )
    command[0] = str(Path(sys.executable).with_name(command[0]))
    log_dir = Path(tempfile.mkdtemp(prefix="jobsite-bench-push-"))
    log_path = log_dir / "gunicorn.log"
    env = {
        **os.environ,
        "WEB_THREADS": str(THREADS),
        "PUSH_MAX_WAITING": str(CAP),
        "PUSH_KEEPALIVE_SECONDS": str(KEEPALIVE),
    }
    with log_path.open("wb") as log:
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


class Client:
    """One open event stream; `arrived[job id]` is when that job's first event came,
    `arrived[job id + "+"]` when its next one did."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        self.arrived: dict[str, float] = {}
        self.connected = threading.Event()
        self.response = requests.get(
            f"{base_url}/api/events/", headers=headers, stream=True, timeout=(10, 60)
        )
        self.status_code = self.response.status_code
        if self.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        # Chunk by chunk as gunicorn sends them (one per write), not byte by byte: with
        # hundreds of clients the reading would otherwise cost more than the serving.
        buffer = ""
        try:
            for chunk in self.response.raw.read_chunked(decode_content=False):
                buffer += chunk.decode()
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    self._line(line)
        except Exception:  # the bench closed it
            pass

    def _line(self, line: str) -> None:
        if line == ": connected":
            self.connected.set()
        elif line.startswith("data: "):
            job_id = json.loads(line[6:])["id"]
            key = job_id if job_id not in self.arrived else f"{job_id}+"
            self.arrived.setdefault(key, time.monotonic())

    def close(self) -> None:
        # Closing the response waits for the reading thread's lock on its buffer; shutting
        # the socket down ends that read at once.
        connection = getattr(self.response.raw, "_connection", None)
        if connection is not None and connection.sock is not None:
            connection.sock.shutdown(socket.SHUT_RDWR)
        self.response.close()


def timed_request(base_url: str, headers: dict[str, str]) -> tuple[float, int]:
    started = time.monotonic()
    response = requests.get(f"{base_url}/api/me/", headers=headers, timeout=30)
    return time.monotonic() - started, response.status_code


def measure(server: Server, headers: dict[str, str], n: int) -> dict:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from jobs import services
    from jobs.store import job_store

    user = get_user_model().objects.get(username="bench")
    clients = [Client(server.base_url, headers) for _ in range(n)]
    try:
        refused = sum(c.status_code != 200 for c in clients)
        if refused:
            answers = [c.response.text[:200] for c in clients if c.status_code != 200]
            print(f"push    refused: {answers}")
        for client in clients:
            client.connected.wait(10)
        delays, me = [], []
        for _ in range(ROUNDS):
            job = services.enqueue("system.noop", owner=user).job
            harness.wait_until(
                lambda j=job: all(str(j.id) in c.arrived for c in clients if c.status_code == 200),
                timeout=10,
                interval=0.01,
                what="the new job to reach every client",
            )
            changed_at = time.monotonic()
            job_store().cancel(job, timezone.now())
            job_id = str(job.id)
            harness.wait_until(
                lambda j=job_id: all(f"{j}+" in c.arrived for c in clients if c.status_code == 200),
                timeout=10,
                interval=0.005,
                what="the change to reach every client",
            )
            delays.append(
                max(c.arrived[f"{job_id}+"] - changed_at for c in clients if c.status_code == 200)
            )
            me.append(timed_request(server.base_url, headers))
        return {
            "clients": n,
            "refused": refused,
            "slowest_delivery_s": max(delays),
            "median_delivery_s": harness.median(delays),
            "me_s": harness.median([seconds for seconds, _ in me]),
            "me_statuses": sorted({code for _, code in me}),
        }
    finally:
        for client in clients:
            client.close()
        time.sleep(3 * KEEPALIVE)


def main() -> harness.Results:
    results = harness.Results(
        "push", f"live updates held by one web process ({THREADS} threads, cap {CAP})"
    )
    harness.setup_django()
    harness.bench_user()
    runs = []
    with one_web_process() as server:
        token = requests.post(
            f"{server.base_url}/api/auth/token/",
            json={"username": "bench", "password": harness.PASSWORD},
            headers=PROXY_HEADERS,
            timeout=10,
        ).json()["access"]
        headers = {**PROXY_HEADERS, "Authorization": f"Bearer {token}"}
        for n in CLIENTS:
            run = measure(server, headers, n)
            runs.append(run)
            results.figure(
                f"slowest delivery to {n} waiting clients",
                run["slowest_delivery_s"] * 1000,
                "ms",
                target="<= 1000",
                met=run["slowest_delivery_s"] <= 1.0 and run["refused"] == 0,
                note=f"median {run['median_delivery_s'] * 1000:.1f} ms; "
                f"GET /api/me/ {run['me_s'] * 1000:.1f} ms ({run['me_statuses']})",
            )
        over = measure_over_cap(server, headers)
        results.figure(
            f"clients over the cap ({CAP + 2} trying) told to poll",
            over["refused"],
            "",
            target="== 2",
            met=over["refused"] == 2 and over["me_status"] == 200,
            note=f"GET /api/me/ meanwhile: {over['me_status']} in {over['me_s'] * 1000:.1f} ms",
        )
    harness.empty_job_tables()
    results.detail("runs", runs)
    results.detail("over_cap", over)
    results.write()
    return results


def measure_over_cap(server: Server, headers: dict[str, str]) -> dict:
    clients = [Client(server.base_url, headers) for _ in range(CAP + 2)]
    try:
        busy = [c for c in clients if c.status_code == 503]
        codes = {c.response.json().get("code") for c in busy}
        seconds, status = timed_request(server.base_url, headers)
        return {"refused": len(busy), "codes": sorted(codes), "me_s": seconds, "me_status": status}
    finally:
        for client in clients:
            client.close()


if __name__ == "__main__":
    main()
