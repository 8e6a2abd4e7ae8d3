"""The soak's mixed load, created through the API as a client would: single and bulk
requests, each job with an idempotency key (`chaos-N`), a request that fails or times
out sent again with the same keys until the API confirms it."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import requests

from chaos import db

# Kind of job: share of the load.
MIX = {"noop": 0.55, "sleep": 0.15, "email": 0.2, "retry": 0.1}
BULK_SIZE = 10
REQUEST_TIMEOUT = 10.0
# A job left waiting by a fault does not hold the load back: the backlog counts only jobs
# that moved (were created, sent, started or updated) this recently.
STUCK_AFTER = 30.0


def email_subject(key: str) -> str:
    return f"chaos {key}"


def job_spec(kind: str, key: str, rng: random.Random) -> dict:
    if kind == "noop":
        return {"type": "system.noop", "idempotency_key": key}
    if kind == "sleep":
        # Checkpoints: a progress update ten times a second.
        seconds = round(rng.uniform(0.1, 1.0), 2)
        return {"type": "system.sleep", "payload": {"seconds": seconds}, "idempotency_key": key}
    if kind == "email":
        payload = {
            "to": [f"{key}@example.com"],
            "subject": email_subject(key),
            "body": f"Sent once by job {key}.",
        }
        return {"type": "email.send", "payload": payload, "idempotency_key": key}
    # Fails its first one or two attempts, then succeeds (system.sleep retries after 1 s,
    # then 2 s, within its three attempts).
    payload = {"seconds": 0.05, "fail_times": rng.choice((1, 2))}
    return {"type": "system.sleep", "payload": payload, "idempotency_key": key}


def plan(jobs: int, seed: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=jobs)
    return [(kind, job_spec(kind, f"chaos-{i}", rng)) for i, kind in enumerate(kinds)]


@dataclass
class Request:
    started: float
    seconds: float
    status: int | None  # None: no answer (refused, reset or timed out)
    jobs: int


@dataclass
class LoadResult:
    kinds: dict[str, str] = field(default_factory=dict)  # key -> kind
    accepted: dict[str, str] = field(default_factory=dict)  # key -> job id
    requests: list[Request] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


class LoadGenerator:
    def __init__(self, base_url: str, token: str, database_url: str, config, senders: int = 2):
        self.base_url = base_url
        self.token = token
        self.database_url = database_url
        self.config = config
        self.senders = senders
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._batches: list[list[tuple[str, dict]]] = []
        self._sent = 0
        self.stop_requested = threading.Event()

    def batches(self, specs: list[tuple[str, dict]], rng: random.Random) -> list[list]:
        batches, i = [], 0
        while i < len(specs):
            size = BULK_SIZE if rng.random() < 0.7 else 1
            batches.append(specs[i : i + size])
            i += size
        return batches

    def run(self, until: threading.Event | None = None) -> LoadResult:
        """Create every planned job; return once all are confirmed (and `until` is set,
        if given: the fault schedule has had its round)."""
        rng = random.Random(self.config.seed + 1)
        specs = plan(self.config.jobs, self.config.seed)
        self.result.kinds = {spec["idempotency_key"]: kind for kind, spec in specs}
        self._batches = self.batches(specs, rng)
        self._batches.reverse()  # popped from the end
        self.result.started = time.time()
        threads = [
            threading.Thread(target=self._send_loop, daemon=True) for _ in range(self.senders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        while until is not None and not until.is_set() and not self.stop_requested.is_set():
            time.sleep(0.2)
        self.result.finished = time.time()
        return self.result

    @property
    def sent(self) -> int:
        return self._sent

    def _next_batch(self) -> list | None:
        with self._lock:
            return self._batches.pop() if self._batches else None

    def _send_loop(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        rate = self.config.jobs / max(self.config.min_seconds, 1)
        while not self.stop_requested.is_set():
            batch = self._next_batch()
            if batch is None:
                return
            self._hold_back(rate)
            self._send_until_confirmed(session, [spec for _, spec in batch])

    def _hold_back(self, rate: float) -> None:
        """Keep to the planned rate, and to at most max_backlog jobs in flight (not stuck)."""
        while not self.stop_requested.is_set():
            elapsed = time.time() - self.result.started
            if self._sent <= rate * elapsed:
                active = db.active_count(self.database_url, moved_within=STUCK_AFTER)
                if active is None or active < self.config.max_backlog:
                    return
            time.sleep(0.05)

    def _send_until_confirmed(self, session: requests.Session, specs: list[dict]) -> None:
        while not self.stop_requested.is_set():
            ids = self._send(session, specs)
            if ids is not None:
                with self._lock:
                    for spec, job_id in zip(specs, ids, strict=True):
                        self.result.accepted[spec["idempotency_key"]] = job_id
                    self._sent += len(specs)
                return
            time.sleep(0.5)

    def _send(self, session: requests.Session, specs: list[dict]) -> list[str] | None:
        started = time.time()
        status = None
        try:
            if len(specs) == 1:
                response = session.post(
                    self.base_url + "/api/jobs/", json=specs[0], timeout=REQUEST_TIMEOUT
                )
            else:
                response = session.post(
                    self.base_url + "/api/jobs/bulk/", json={"jobs": specs}, timeout=REQUEST_TIMEOUT
                )
            status = response.status_code
        except requests.RequestException:
            response = None
        with self._lock:
            self.result.requests.append(Request(started, time.time() - started, status, len(specs)))
        if response is None or status not in (200, 202):
            return None
        body = response.json()
        if len(specs) == 1:
            return [body["id"]]
        return [job["id"] for job in body["jobs"]]
