"""Prometheus metrics at /metrics, read from the database and the broker at scrape time,
so every web process reports the same numbers whatever process did the work."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from jobsite.operators import bearer_token, is_operator

from . import controls, history
from .messages import bounded_connection
from .models import EventKind, Job, JobEvent

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class JobsCollector:
    def collect(self) -> Iterator:
        yield jobs_by_type_and_status()
        yield failed_attempts_by_type()
        yield from broker_families()
        yield job_durations()
        yield from history_families()
        yield paused_queues_and_types()
        yield held_jobs()


def jobs_by_type_and_status() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "jobsite_jobs", "Jobs in the database by type and status", labels=["type", "status"]
    )
    for row in Job.objects.order_by().values("type", "status").annotate(n=Count("id")):
        family.add_metric([row["type"], row["status"]], row["n"])
    return family


def failed_attempts_by_type() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "jobsite_job_failed_attempts",
        "Failed attempts (retried or final) of the jobs still in the database, by type",
        labels=["type"],
    )
    failures = JobEvent.objects.filter(kind__in=[EventKind.FAILED, EventKind.RETRY_SCHEDULED])
    for row in failures.order_by().values("job__type").annotate(n=Count("id")):
        family.add_metric([row["job__type"]], row["n"])
    return family


def broker_families() -> Iterator[GaugeMetricFamily]:
    """Whether the broker answered the scrape, and if it did, its queue depths: an
    unreachable broker is a figure to alert on, not a failed scrape."""
    up = GaugeMetricFamily("jobsite_broker_up", "1 if the broker answered this scrape, else 0")
    try:
        depths = broker_queue_depths()
    except Exception as exc:
        log.warning("Queue depths not scraped, the broker did not answer: %s", exc)
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    family = GaugeMetricFamily(
        "jobsite_queue_depth", "Messages waiting in the broker, by queue", labels=["queue"]
    )
    for queue, depth in depths.items():
        family.add_metric([queue], depth)
    yield family


def broker_queue_depths() -> dict[str, int]:
    depths = {}
    with bounded_connection() as conn:  # a paused broker must not hold the scrape
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        for queue in settings.JOBS_QUEUES:
            if conn.transport.driver_type == "redis":
                client = channel.client
                depths[queue] = sum(
                    client.llen(channel._q_for_pri(queue, pri)) for pri in channel.priority_steps
                )
            else:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
    return depths


def job_durations() -> HistogramMetricFamily:
    window = timedelta(seconds=settings.METRICS_DURATION_WINDOW)
    family = HistogramMetricFamily(
        "jobsite_job_duration_seconds",
        f"Run time of jobs finished in the last {window}, by type",
        labels=["type"],
    )
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    buckets = {
        f"le_{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=bound)))
        for i, bound in enumerate(DURATION_BUCKETS)
    }
    rows = (
        Job.objects.filter(finished_at__gte=timezone.now() - window, started_at__isnull=False)
        .order_by()
        .annotate(duration=duration)
        .values("type")
        .annotate(count=Count("id"), total=Sum("duration"), **buckets)
    )
    for row in rows:
        cumulative = [
            (floatToGoString(bound), row[f"le_{i}"]) for i, bound in enumerate(DURATION_BUCKETS)
        ] + [("+Inf", row["count"])]
        total = row["total"].total_seconds() if row["total"] else 0.0
        family.add_metric([row["type"]], cumulative, total)
    return family


def history_families() -> Iterator[GaugeMetricFamily]:
    """The dashboard's history figures (jobs/history.py), per window."""
    finished = GaugeMetricFamily(
        "jobsite_jobs_finished_recent",
        "Jobs finished in the window (hour, day) by status",
        labels=["status", "window"],
    )
    wait = GaugeMetricFamily(
        "jobsite_job_wait_seconds",
        "Wait from creation to start of jobs that ran once and ended in the window, by type",
        labels=["type", "quantile", "window"],
    )
    run = GaugeMetricFamily(
        "jobsite_job_run_seconds",
        "Run time of jobs that succeeded or failed in the window, by type",
        labels=["type", "quantile", "window"],
    )
    now = timezone.now()
    for win in history.WINDOWS.values():
        for status, n in history.finished_counts(win, now).items():
            finished.add_metric([status, win.name], n)
        for row in history.durations(win, now):
            for q in history.QUANTILES:
                label = f"p{round(q * 100)}"
                if row[f"wait_{label}"] is not None:
                    wait.add_metric([row["type"], str(q), win.name], row[f"wait_{label}"])
                if row[f"run_{label}"] is not None:
                    run.add_metric([row["type"], str(q), win.name], row[f"run_{label}"])
    yield from (finished, wait, run)
    jobs = GaugeMetricFamily(
        "jobsite_queue_jobs",
        "Jobs in the database per queue: waiting, held (a pause, a limit, dependencies) or running",
        labels=["queue", "state"],
    )
    for row in history.queue_depths():
        for state in ("waiting", "held", "running"):
            jobs.add_metric([row["queue"], state], row[state])
    yield jobs


def paused_queues_and_types() -> GaugeMetricFamily:
    """1 for each paused queue and job type, 0 for the others: an alert can fire on a
    pause left on."""
    family = GaugeMetricFamily(
        "jobsite_paused", "1 if the queue or job type is paused, else 0", labels=["scope", "name"]
    )
    seen = controls.overview()
    for scope, entries in (("queue", seen.queues), ("type", seen.types)):
        for entry in entries:
            family.add_metric([scope, entry.name], 1 if entry.paused else 0)
    return family


def held_jobs() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "jobsite_jobs_held",
        "Queued jobs held back by a pause, a limit or dependencies, by type and reason",
        labels=["type", "reason"],
    )
    by_type: dict[tuple[str, str], int] = {}
    for row in controls.held_counts():
        key = (row["type"], row["held"])
        by_type[key] = by_type.get(key, 0) + row["n"]
    for (type_name, reason), count in sorted(by_type.items()):
        family.add_metric([type_name, reason], count)
    return family


def refusal(request: HttpRequest) -> JsonResponse | None:
    """None when the request may read the metrics; else 401 without credentials, 403
    with the wrong ones. Settings are read per request, so a change takes effect at once."""
    if is_operator(request, settings.METRICS_TOKEN):
        return None
    if bearer_token(request) or request.user.is_authenticated:
        return JsonResponse(
            {"detail": "These credentials may not read the metrics.", "code": "forbidden"},
            status=403,
        )
    response = JsonResponse(
        {
            "detail": "Metrics need the METRICS_TOKEN bearer token or a staff session.",
            "code": "not_authenticated",
        },
        status=401,
    )
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    if refused := refusal(request):
        return refused
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
