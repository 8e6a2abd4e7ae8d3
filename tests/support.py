"""Helpers the suites share: API clients (in this process, or over HTTP against a live
server), a real worker process, an SMTP sink, and `wait_for`, which polls a condition
until a deadline."""

from __future__ import annotations

import json as jsonlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.http import HttpResponseBase
from django.test import TestCase
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from rest_framework.test import APIClient

from jobsite.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
ALL_QUEUES = ["default", "emails", "reports", "pages", "images", "maintenance"]

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def test_database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    original = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(
        original._replace(
            path="/" + settings["NAME"], query=f"application_name={WORKER_APPLICATION_NAME}"
        )
    )


WORKER_APPLICATION_NAME = "jobsite-test-worker"


def wait_for_worker_sessions_to_close(timeout: float = 10) -> None:
    """PostgreSQL ends a killed client's session a moment after the client dies; the
    test database can only be dropped once every one has gone."""
    if connection.vendor != "postgresql":
        return

    def worker_sessions() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                [WORKER_APPLICATION_NAME],
            )
            return cursor.fetchone()[0]

    wait_for(lambda: worker_sessions() == 0, timeout=timeout, what="worker sessions to close")


test_database_url.__test__ = False  # not a test, despite its name


def access_token(base_url: str, username: str, password: str) -> str:
    """An API access token for `username`, from the token endpoint."""
    response = requests.post(
        f"{base_url}/api/auth/token/",
        json={"username": username, "password": password},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["access"]


class JobPolling:
    """What both API clients offer besides plain requests: a job, and waiting for one."""

    def job(self, job_id: str) -> dict:
        response = self.get(f"/api/jobs/{job_id}/")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_status(self, job_id: str, *statuses: str, timeout: float = 30) -> dict:
        return wait_for(
            lambda: (job := self.job(job_id))["status"] in statuses and job,
            timeout=timeout,
            what=f"job {job_id} to become {' or '.join(statuses)}",
        )


class Api(JobPolling):
    """requests against the live server, with a bearer token and JSON by default."""

    def __init__(self, base_url: str, token: str | None):
        self.base_url = base_url
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Closing the keep-alive connection lets the server thread close its database
        # connection too, so the test database can be dropped at the end of the run.
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


class InProcessResponse:
    """A response of the in-process client, read as a `requests.Response` is."""

    def __init__(self, response: HttpResponseBase):
        self.status_code = response.status_code
        self.headers = response.headers
        self.content = response.getvalue()  # a streamed body (a download) in full
        self.encoding = response.charset

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding or "utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def raise_for_status(self) -> None:
        assert self.ok, f"{self.status_code}: {self.text[:2000]}"


REDIRECTS = (301, 302, 303, 307, 308)


class InProcessApi(JobPolling):
    """The API called in this process through DRF's test client, signed in as `user` with
    `force_authenticate` (no token, no HTTP server), with the calls `Api` offers.

    Each request reads the user afresh, as a token's check does: a permission granted
    (or an account deleted) after the client was made shows in the next answer. Each
    request runs the on-commit callbacks it registered once it returns, as the
    server's commit would: in a test inside a transaction (the `db` fixture) they would
    otherwise never run, and the new jobs' messages never reach the broker.
    """

    base_url = "http://testserver"

    def __init__(self, user: Any = None):
        self.client = APIClient()
        self.user = user

    def __enter__(self) -> InProcessApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.logout()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        files: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        allow_redirects: bool = True,
        timeout: float | None = None,
    ) -> InProcessResponse:
        headers = dict(headers or {})
        content_type = headers.pop("Content-Type", None)
        if files is not None:
            fields = {**(data or {}), **{name: _upload(f) for name, f in files.items()}}
            body, content_type = encode_multipart(BOUNDARY, fields), MULTIPART_CONTENT
        elif json is not None:
            body, content_type = jsonlib.dumps(json), content_type or "application/json"
        elif isinstance(data, dict):
            body = urlencode(data, doseq=True)
            content_type = content_type or "application/x-www-form-urlencoded"
        else:
            body, content_type = data or b"", content_type or "application/octet-stream"
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        response = self._send(method, path, body, content_type, headers)
        while allow_redirects and response.status_code in REDIRECTS:
            # As requests does: 307 and 308 repeat the request, the others become a GET.
            if response.status_code not in (307, 308):
                method, body, content_type = "GET", b"", "application/octet-stream"
            path = self._local(urljoin(path, response.headers["Location"]))
            response = self._send(method, path, body, content_type, headers)
        return InProcessResponse(response)

    def _send(
        self, method: str, path: str, body: Any, content_type: str, headers: dict[str, str]
    ) -> HttpResponseBase:
        signed_in = None
        if self.user is not None:
            signed_in = type(self.user)._default_manager.filter(pk=self.user.pk).first()
        self.client.force_authenticate(signed_in)
        with TestCase.captureOnCommitCallbacks(execute=True):
            return self.client.generic(
                method, path, data=body, content_type=content_type, headers=headers
            )

    def _local(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.netloc not in ("", "testserver"):
            raise AssertionError(
                f"A redirect to {url} leaves this process: ask with allow_redirects=False"
            )
        return urlunsplit(("", "", parts.path, parts.query, ""))

    def get(self, path: str, **kwargs: Any) -> InProcessResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> InProcessResponse:
        return self.request("POST", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> InProcessResponse:
        return self.request("DELETE", path, **kwargs)


def _upload(value: Any) -> Any:
    """A file in the forms requests takes (`(name, bytes[, content type])`) as Django's."""
    if isinstance(value, tuple):
        name, content, *content_type = value
        return SimpleUploadedFile(name, content, content_type[0] if content_type else None)
    return value


class SmtpSink:
    """A real SMTP server on a free local port that keeps every message it receives.

    It refuses (550) the recipients in `refused`, as a server does for a mailbox that
    does not exist.
    """

    def __init__(self):
        self.port = free_port()
        self.messages: list[Message] = []
        self.refused: set[str] = set()
        self._controller = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address.lower() in {a.lower() for a in sink.refused}:
                    return "550 5.1.1 Mailbox unavailable"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                sink.messages.append(message_from_bytes(envelope.original_content))
                return "250 Message accepted"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller:
            self._controller.stop()

    def env(self) -> dict[str, str]:
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(self.port),
            "EMAIL_USE_TLS": "0",
        }


class WorkerProcess:
    """A real `celery worker` process (prefork) on the test database.

    With `beat=True` it embeds Beat, which runs the sweepers every `sweep_interval`
    seconds, as the production Beat does every few seconds.
    """

    def __init__(
        self,
        *,
        database_url: str,
        log_dir: Path,
        name: str,
        queues: list[str] | None = None,
        concurrency: int = 2,
        beat: bool = True,
        sweep_interval: float = 1.0,
        lock_duration: float = 60.0,
        broker_url: str | None = None,
        smtp: SmtpSink | None = None,
        env: dict[str, str] | None = None,
        scheduler: str = "jobs.beat:PersistentScheduler",
        app: str = "jobsite",
        pool: str = "prefork",
        loglevel: str = "INFO",
    ):
        self.name = name
        self.app = app
        self.pool = pool
        self.loglevel = loglevel
        self.scheduler = scheduler
        self.queues = queues or ALL_QUEUES
        self.concurrency = concurrency
        self.beat = beat
        self.log_path = log_dir / f"worker-{name}.log"
        self.schedule_path = log_dir / f"beat-{name}.db"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "JOBS_SWEEP_INTERVAL": str(sweep_interval),
            "JOBS_LOCK_DURATION": str(lock_duration),
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "test-worker-secret",
            "PYTHONUNBUFFERED": "1",
            # Tests that want start-up jobs or timed schedules ask for them; the
            # sweeper always runs.
            "JOBS_STARTUP_JOBS": "0",
            **{
                f"DISABLE_{name}_CRON": "1"
                for name in ("PURGE", "RESULT_CLEANUP", "DIGEST", "IMAGE_CLEANUP", "REMINDER")
            },
            **(smtp.env() if smtp else {}),
            **({"CELERY_BROKER_URL": broker_url} if broker_url else {}),
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        args = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--loglevel", self.loglevel,
            "--hostname", f"{self.name}-{os.getpid()}@%h",
            "--queues", ",".join(self.queues),
            "--concurrency", str(self.concurrency),
            "--pool", self.pool,
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if self.beat:
            args += [
                "--beat",
                "--scheduler", self.scheduler,
                "--schedule", str(self.schedule_path),
            ]  # fmt: skip
        return args

    def start(self, timeout: float = 60) -> None:
        """Start the worker (again, after it stopped: same name, so the same hostname)."""
        ready_before = self.log().count(" ready.")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        wait_for(
            lambda: self.log().count(" ready.") > ready_before or self.process.poll() is not None,
            timeout=timeout,
            what=f"worker {self.name} to be ready",
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log()[-5000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """SIGTERM to the worker's main process only, as a supervisor stopping it does."""
        self.process.send_signal(signal.SIGTERM)

    def exited(self) -> bool:
        return self.process.poll() is not None

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crashed host would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def discard(self) -> None:
        """SIGKILL the worker and wait until none of its processes is left: what a test
        that is done with it needs, without the seconds of a warm shutdown."""
        if not self.process:
            return
        self.kill()
        wait_for(lambda: not _group_alive(self.process.pid), timeout=10, what="pool to exit")

    def stop(self, timeout: float = 20) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # Pool children die with the process group; wait until none is left holding
        # a database connection.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_for(lambda: not _group_alive(self.process.pid), timeout=10, what="pool to exit")


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. A killed pool process whose parent is
    gone stays a zombie until init reaps it; it holds nothing, so it does not count."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_in_threads(count: int, target: Callable[[int], T]) -> list[T]:
    """Run `target(i)` for i in range(count) in threads released at the same moment."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = target(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
