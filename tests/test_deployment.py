"""Deployment files agree with each other and with the code: compose runs what the
Procfile runs, every queue has a worker, Beat runs once, the image runs as non-root with
debug off, refuses to start without a secret key and installs no development tools, and
the production settings pass Django's deployment checks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from jobs import registry
from tests.support import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def compose_command(service: dict) -> str:
    """The service's command as its shell sees it: `sh -c "…"` unwrapped, `$$` → `$`."""
    command = service["command"]
    if command[:2] == ["sh", "-c"]:
        command = command[2]
    elif isinstance(command, list):
        command = " ".join(command)
    return command.replace("$$", "$")


def queues_of(command: str) -> set[str]:
    match = re.search(r"--queues (\S+)", command)
    return set(match.group(1).split(",")) if match else set()


def test_every_procfile_process_is_a_compose_service_running_the_same_command():
    for name, command in procfile().items():
        assert name in SERVICES, f"compose.yaml has no service {name!r}"
        assert compose_command(SERVICES[name]) == command, name


def test_every_queue_is_served_by_a_worker():
    served = set().union(*(queues_of(c) for c in procfile().values()))
    declared = {q.name for q in settings.CELERY_TASK_QUEUES}
    used_by_job_types = {t.queue for t in registry.all_types()}

    assert used_by_job_types <= declared
    assert served == declared


@pytest.mark.parametrize("process, concurrency", [("worker-pages", "5"), ("worker-images", "3")])
def test_notes_queues_run_with_their_concurrency(process, concurrency):
    command = procfile()[process]
    variable = re.search(r"--concurrency \$\{(\w+):-(\d+)\}", command)
    assert variable and variable.group(2) == concurrency
    assert SERVICES[process]["environment"][variable.group(1)] == concurrency


def test_the_maintenance_queue_runs_one_job_at_a_time():
    command = procfile()["worker-maintenance"]
    assert "--concurrency 1 " in command + " " and "--prefetch-multiplier 1" in command


def test_long_report_jobs_are_not_prefetched():
    assert "--prefetch-multiplier 1" in procfile()["worker-reports"]


def test_each_worker_has_its_own_node_name():
    workers = [c for c in procfile().values() if "celery -A jobsite worker" in c]
    names = [re.search(r"--hostname (\S+)", c).group(1) for c in workers]
    assert len(names) == len(set(names)) == 5


def test_beat_runs_exactly_once():
    assert SERVICES["beat"]["deploy"]["replicas"] == 1
    assert sum("celery -A jobsite beat" in c for c in procfile().values()) == 1


def test_services_wait_for_healthy_dependencies_and_a_finished_migration():
    for name in ("web", "worker", "beat", "flower"):
        depends = SERVICES[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "web", "worker", "worker-pages"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_redis_persists_and_data_lives_in_volumes():
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert "redisdata:/data" in SERVICES["redis"]["volumes"]
    assert any(v.startswith("pgdata:") for v in SERVICES["postgres"]["volumes"])
    assert "media:/app/media" in SERVICES["web"]["volumes"]
    assert set(COMPOSE["volumes"]) >= {"pgdata", "redisdata", "media"}


def test_flower_gets_its_login_from_the_environment_never_the_command_line():
    assert "--basic-auth" not in procfile()["flower"]
    assert "--conf=flowerconfig.py" in procfile()["flower"]
    assert "FLOWER_BASIC_AUTH" in SERVICES["flower"]["environment"]
    others = [name for name in SERVICES if name != "flower"]
    assert not [n for n in others if "FLOWER_BASIC_AUTH" in SERVICES[n].get("environment", {})]


def test_compose_publishes_flower_on_the_hosts_loopback_alone():
    assert [p.split(":")[0] for p in SERVICES["flower"]["ports"]] == ["127.0.0.1"]


def test_the_image_installs_from_the_lock_file_and_runs_as_a_normal_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -r requirements.lock" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def production_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="x9!" + "k" * 20 + "Qv7#pL2$mN8^rT4&wZ6*yB1@cD3%fG5",
        DJANGO_ALLOWED_HOSTS="jobs.example.com",
        DATABASE_URL=f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        STATIC_ROOT=str(tmp_path / "static"),
    )
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.live
def test_production_settings_pass_the_deployment_checks(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.live
def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = production_env(tmp_path)
    del env["DJANGO_SECRET_KEY"]

    result = manage(env, "check")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


@pytest.mark.live
def test_with_debug_off_whitenoise_serves_the_collected_static_files(tmp_path):
    env = production_env(tmp_path)
    env["DJANGO_SECURE_SSL_REDIRECT"] = "0"
    collected = manage(env, "collectstatic", "--noinput")
    assert collected.returncode == 0, collected.stderr
    manifest = (tmp_path / "static" / "staticfiles.json").read_text()
    hashed = re.search(r'"css/site\.css": "([^"]+)"', manifest).group(1)

    serve = (
        "import django, sys; django.setup();"
        "from django.test import Client;"
        f"r = Client(HTTP_HOST='jobs.example.com').get('/static/{hashed}');"
        "sys.stdout.write(str(r.status_code) + ' ' + r.headers.get('Cache-Control', ''))"
    )
    result = subprocess.run(
        [sys.executable, "-c", serve],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "jobsite.settings"},
        capture_output=True,
        text=True,
    )

    assert result.stdout.startswith("200 "), result.stdout + result.stderr
    assert "immutable" in result.stdout  # hashed names are cached forever


def dockerfile_env() -> dict[str, str]:
    """The variables the image's ENV instructions set."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in re.findall(r"^ENV (.+)$", text, flags=re.MULTILINE):
        env.update(pair.split("=", 1) for pair in line.split())
    return env


def image_env(tmp_path: Path) -> dict[str, str]:
    """What a container of the image starts with when the operator sets nothing."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **dockerfile_env()}


def test_the_image_turns_debug_off():
    assert dockerfile_env()["DJANGO_DEBUG"] == "0"


@pytest.mark.live
def test_the_image_refuses_to_start_without_a_secret_key(tmp_path):
    settings_import = subprocess.run(
        [sys.executable, "-c", "import jobsite.settings"],
        cwd=ROOT,
        env=image_env(tmp_path),
        capture_output=True,
        text=True,
    )
    gunicorn = subprocess.run(
        [sys.executable, "-m", "gunicorn", "jobsite.wsgi", "--bind", "127.0.0.1:0"],
        cwd=ROOT,
        env=image_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert settings_import.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in settings_import.stderr
    assert gunicorn.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in gunicorn.stderr


def test_the_image_installs_no_development_tools():
    dockerfile = (ROOT / "Dockerfile").read_text()
    pinned = {
        line.split("==")[0].lower()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }

    assert "requirements-dev.lock" not in dockerfile and "[dev]" not in dockerfile
    assert not pinned & {"pytest", "pytest-django", "playwright", "py-spy", "ruff", "schemathesis"}
