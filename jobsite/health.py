"""`/health/`: is this deployment able to run jobs? 200 when every check passes, else 503."""

from __future__ import annotations

import os
import resource
import time

from django.db import connection
from django.http import HttpRequest, JsonResponse

from .celery_app import app as celery_app

STARTED = time.monotonic()


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_broker() -> None:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


CHECKS = {"database": check_database, "broker": check_broker}


def health(request: HttpRequest) -> JsonResponse:
    checks = {}
    for name, check in CHECKS.items():
        try:
            check()
            checks[name] = {"ok": True}
        except Exception as exc:
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    healthy = all(c["ok"] for c in checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        "failing": [name for name, c in checks.items() if not c["ok"]],
        "uptime_seconds": round(time.monotonic() - STARTED, 1),
        "memory_max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "pid": os.getpid(),
        "checks": checks,
    }
    return JsonResponse(body, status=200 if healthy else 503)
