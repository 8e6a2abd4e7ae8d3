"""`/health/`: can this deployment run jobs? 200 when every check passes, else 503.

Anyone gets the status alone, enough for a load balancer or an uptime probe. Staff
sessions and the HEALTH_TOKEN bearer token also get the details: the failing checks
and their errors, the live workers and their queues, the process. Queues with no live
worker are reported, not failed: a deployment may run some queues elsewhere or on demand."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from .operators import has_token, is_staff_session

STARTED = time.monotonic()


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {}


class BrokerUnreachable(Exception):
    pass


def check_broker() -> dict[str, Any]:
    """Connect and ask the broker something (a Redis that is paused still accepts the
    connection), within JOBS_PUBLISH_TIMEOUT each."""
    from jobs.messages import bounded_connection

    try:
        with bounded_connection() as conn:
            conn.ensure_connection(max_retries=0, timeout=settings.JOBS_PUBLISH_TIMEOUT)
    except Exception as exc:
        raise BrokerUnreachable(f"broker unreachable ({type(exc).__name__}: {exc})") from exc
    return {}


def check_cache() -> dict[str, Any]:
    cache.set("health:probe", "ok", timeout=10)
    if cache.get("health:probe") != "ok":
        raise RuntimeError("the cache did not keep a value")
    return {}


def check_workers() -> dict[str, Any]:
    from jobs.worker_liveness import alive_workers

    workers = list(alive_workers())
    if not workers:
        raise RuntimeError(
            f"no worker heartbeat in the last {settings.WORKER_HEARTBEAT_TIMEOUT:g}s"
        )
    covered = {queue for worker in workers for queue in worker.queues}
    return {
        "alive": [
            {"hostname": w.hostname, "queues": w.queues, "seen_at": w.seen_at.isoformat()}
            for w in workers
        ],
        "queues_without_workers": [q for q in settings.JOBS_QUEUES if q not in covered],
    }


CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "cache": check_cache,
    "workers": check_workers,
}


# Checks that read the database: not run while it is unavailable, where each would wait
# out the connect timeout again.
NEEDS_DATABASE = {"workers"}


def run_checks() -> dict[str, dict[str, Any]]:
    results = {}
    for name, check in CHECKS.items():
        if name in NEEDS_DATABASE and not results["database"]["ok"]:
            results[name] = {"ok": False, "error": "not checked: the database is unavailable"}
            continue
        try:
            results[name] = {"ok": True, **check()}
        except Exception as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return results


def may_see_details(request: HttpRequest) -> bool:
    if has_token(request, settings.HEALTH_TOKEN):
        return True
    try:
        return is_staff_session(request)
    except (OperationalError, InterfaceError):
        # A staff session cannot be checked while the database is down: the status
        # alone, still JSON and still quick.
        return False


def paused_now() -> dict[str, list[str]]:
    """The paused queues and job types: they hold their jobs, which is not a failure."""
    from jobs.controls import paused

    found: dict[str, list[str]] = {"queues": [], "types": []}
    for scope, name in paused():
        found["queues" if scope == "queue" else "types"].append(name)
    return found


@require_safe
def health(request: HttpRequest) -> JsonResponse:
    checks = run_checks()
    healthy = all(c["ok"] for c in checks.values())
    body = {"status": "ok" if healthy else "unavailable"}
    if may_see_details(request):
        body |= {
            "failing": [name for name, c in checks.items() if not c["ok"]],
            "uptime_seconds": round(time.monotonic() - STARTED, 1),
            "memory_max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "pid": os.getpid(),
            "checks": checks,
            "paused": paused_now() if checks["database"]["ok"] else None,
        }
    return JsonResponse(body, status=200 if healthy else 503)
