"""The machinery of the authorization matrix: the URL patterns the project routes, the
five roles, the objects the owner owns, and one real HTTP request per table cell."""

from __future__ import annotations

import importlib
import io
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from PIL import Image as PILImage

from jobs.models import Batch, Job, Status
from jobsite.auth import RefreshToken
from notes.models import Image, ImageStatus, Page, Task
from reports.models import Report
from webhooks.models import WebhookDelivery, WebhookEndpoint

# The URL configuration is read while the tests are collected, when settings.DEBUG is
# still what the environment says (the suite runs with DJANGO_DEBUG=1, tests/plugin.py):
# its debug-only routes are then in the table whatever else imports it first.
importlib.import_module(settings.ROOT_URLCONF)

ROLES = ("anonymous", "owner", "other", "staff", "superuser")
LOGIN = "login"  # a cell's value for "302 to a login page" (the site's or the admin's)
LOGIN_PAGES = (settings.LOGIN_URL, "/admin/login/")
PASSWORD = "correct-horse-battery-staple"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# URL includes covered by a sample of rows rather than pattern by pattern.
SAMPLED_INCLUDES = {"admin": "the Django admin", "django.contrib.auth.urls": "django.contrib.auth"}

Expected = int | str


@dataclass(frozen=True)
class Row:
    """One method of one URL pattern, and the status each role gets."""

    method: str
    path: str  # "{job}", "{page}"... are filled from the owner's objects (World)
    expected: dict[str, Expected]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def row(method: str, path: str, *statuses: Expected) -> Row:
    assert len(statuses) == len(ROLES), f"{method} {path}: one status per role {ROLES}"
    return Row(method, path, dict(zip(ROLES, statuses, strict=True)))


# --- the URL configuration -----------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    route: str  # readable: "api/jobs/<pk>/cancel/"
    name: str | None
    methods: tuple[str, ...] | None  # known for DRF views; None for plain Django views


def project_patterns() -> list[Pattern]:
    """Every pattern the URL configuration routes, except inside the sampled includes."""
    return list(_walk(get_resolver().url_patterns, ""))


def _walk(patterns, prefix: str) -> Iterator[Pattern]:
    for entry in patterns:
        route = _join_route(prefix, str(entry.pattern))
        if isinstance(entry, URLResolver):
            if _sampled(entry):
                continue
            yield from _walk(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            yield Pattern(readable(route), entry.name, _drf_methods(entry.callback))


def _sampled(include: URLResolver) -> bool:
    module_name = getattr(include.urlconf_name, "__name__", None)
    return include.app_name in SAMPLED_INCLUDES or module_name in SAMPLED_INCLUDES


def _join_route(first: str, second: str) -> str:
    # As Django joins the routes of nested patterns (ResolverMatch.route).
    return first + second.removeprefix("^") if first else second


def readable(route: str) -> str:
    """A route as people write it: DRF's regular expressions as <name> placeholders."""
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route)
    return route.removeprefix("^").removesuffix("$")


def _drf_methods(callback) -> tuple[str, ...] | None:
    if actions := getattr(callback, "actions", None):  # a viewset's route
        return tuple(sorted(m.upper() for m in actions if m not in ("options", "head")))
    view = getattr(callback, "cls", None)
    if view is None or not hasattr(view, "http_method_names"):
        return None
    if not hasattr(view, "throttle_classes"):  # a plain Django class-based view
        return None
    handlers = (m for m in view.http_method_names if m not in ("options", "head"))
    return tuple(sorted(m.upper() for m in handlers if hasattr(view, m)))


def pattern_of(path: str) -> str | None:
    """The readable route a concrete path resolves to, or None when nothing matches."""
    from django.urls import Resolver404

    try:
        return readable(resolve(path.split("?")[0]).route)
    except Resolver404:
        return None


# --- the people and their objects -------------------------------------------------------


@dataclass
class People:
    users: dict[str, Any]

    @classmethod
    def create(cls) -> People:
        User = get_user_model()
        return cls(
            {
                "owner": User.objects.create_user("owner", "owner@example.com", PASSWORD),
                "other": User.objects.create_user("other", "other@example.com", PASSWORD),
                # Staff flag only: no model permission, no group.
                "staff": User.objects.create_user(
                    "staff", "staff@example.com", PASSWORD, is_staff=True
                ),
                "superuser": User.objects.create_superuser("root", "root@example.com", PASSWORD),
            }
        )

    @property
    def owner(self):
        return self.users["owner"]


def png_bytes(size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


MINIMAL_PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@dataclass
class World:
    """The owner's objects, each in the state its rows need: a queued job to cancel, a
    failed one to retry, a stored image, a report being made, a failed and a ready one."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, owner) -> World:
        job = Job.objects.create(type="system.noop", owner=owner)
        failed_job = Job.objects.create(
            type="system.noop", owner=owner, status=Status.FAILED, error="boom"
        )
        image = _stored_image(owner)
        batch = Batch.objects.create(owner=owner)
        Job.objects.create(type="system.noop", owner=owner, batch=batch)
        webhook = _webhook(owner)
        return cls(
            {
                "job": job.id,
                "batch": batch.id,
                "failed_job": failed_job.id,
                "page": Page.objects.create(owner=owner, title="Garden", content="Roses").id,
                "image": image.id,
                "task": Task.objects.create(owner=owner, title="Water the roses").id,
                "report": _report(owner, Status.QUEUED).id,
                "failed_report": _report(owner, Status.FAILED).id,
                "ready_report": _report(owner, Status.SUCCEEDED, pdf=MINIMAL_PDF).id,
                "refresh_token": str(_refresh_token(owner)),
                "webhook": webhook.id,
                "delivery": _delivery(webhook).id,
            }
        )

    def fill(self, path: str) -> str:
        try:
            return path.format(**self.values)
        except KeyError as exc:
            known = ", ".join("{" + name + "}" for name in self.values)
            raise KeyError(
                f"{path}: no object {{{exc.args[0]}}}; the known ones: {known}"
            ) from None


def _stored_image(owner) -> Image:
    data = png_bytes()
    image = Image.objects.create(
        owner=owner,
        original_name="roses.png",
        content_type="image/png",
        size=len(data),
        width=8,
        height=6,
        status=ImageStatus.STORED,
        backend="storage",
    )
    image.file.save(f"{image.id}.png", ContentFile(data), save=False)
    image.public_id, image.url = image.file.name, image.file.url
    image.save()
    return image


def _report(owner, status: str, pdf: bytes | None = None) -> Report:
    report = Report.objects.create(owner=owner, kind="job_activity", title=f"Activity {status}")
    report.job = Job.objects.create(
        type="reports.generate",
        owner=owner,
        status=status,
        payload={"report_id": str(report.id)},
        queue="reports",
    )
    if pdf:
        report.file.save("activity.pdf", ContentFile(pdf), save=False)
        report.size, report.page_count = len(pdf), 1
    report.save()
    return report


def _webhook(owner) -> WebhookEndpoint:
    # One per owner, kept until a request deletes it: each user may have only a few.
    return WebhookEndpoint.objects.filter(owner=owner).first() or WebhookEndpoint.objects.create(
        owner=owner, url="https://93.184.215.14/hooks", events=["job.succeeded"]
    )


def _delivery(webhook: WebhookEndpoint) -> WebhookDelivery:
    return WebhookDelivery.objects.create(
        endpoint=webhook,
        event="job.succeeded",
        subject_id=str(uuid.uuid4()),
        payload={"event": "job.succeeded", "data": {}},
    )


def _refresh_token(user):
    # Through the serializer the token endpoint uses, with whatever claims it adds.
    return RefreshToken.for_user(user)


def placeholder_world() -> World:
    """Values of the right shape for resolving rows' paths without a database."""
    values = dict.fromkeys(
        [
            "job",
            "failed_job",
            "batch",
            "report",
            "failed_report",
            "ready_report",
            "webhook",
            "delivery",
        ]
    )
    values = {name: "00000000-0000-4000-8000-000000000000" for name in values}
    values.update(page=1, image=1, task=1, refresh_token="-")
    return World(values)


# --- one request per cell -----------------------------------------------------------------


Body = Callable[[World], dict[str, Any]]


def json_body(data: dict[str, Any] | Callable[[World], dict[str, Any]]) -> Body:
    return lambda world: {"json": data(world) if callable(data) else data}


def form_body(data: dict[str, Any] | Callable[[World], dict[str, Any]]) -> Body:
    return lambda world: {"data": data(world) if callable(data) else data}


def upload_body(name: str, content: bytes) -> Body:
    return lambda world: {"files": {"file": (name, content)}}


def is_api(path: str) -> bool:
    return path.startswith("/api/")


class Caller:
    """Sends a request as a role: a JWT for the API, a session cookie for the pages,
    with a CSRF token on every page request so only authorization decides."""

    def __init__(self, base_url: str, people: People):
        self.base_url = base_url
        self.people = people
        self.tokens = {role: _access_token(base_url, user) for role, user in people.users.items()}

    def send(self, role: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers: dict[str, str] = {}
        cookies: dict[str, str] = {}
        if is_api(path):
            if role != "anonymous":
                headers["Authorization"] = f"Bearer {self.tokens[role]}"
        else:
            csrf = _get_new_csrf_string()
            cookies[settings.CSRF_COOKIE_NAME] = csrf
            headers["X-CSRFToken"] = csrf
            if role != "anonymous":
                # A session of its own for each request: a logout must not sign out the
                # requests that follow.
                cookies[settings.SESSION_COOKIE_NAME] = _session_for(self.people.users[role])
        with requests.Session() as session:
            return session.request(
                method,
                self.base_url + path,
                headers=headers,
                cookies=cookies,
                allow_redirects=False,
                timeout=30,
                **kwargs,
            )


def _access_token(base_url: str, user) -> str:
    response = requests.post(
        f"{base_url}/api/auth/token/",
        json={"username": user.get_username(), "password": PASSWORD},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["access"]


def _session_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def observed(response: requests.Response) -> Expected:
    """The response as a table cell: its status, or LOGIN for a redirect to a login page."""
    location = response.headers.get("Location", "")
    if response.status_code == 302 and location.startswith(LOGIN_PAGES):
        return LOGIN
    return response.status_code
