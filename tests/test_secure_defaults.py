"""Secure defaults: debug only when asked for, no secret key in the source, API tokens
signed with a key other than SECRET_KEY, and proxy headers believed only when a setting
says a proxy is in front. Each settings test loads the settings in a fresh process with
an environment of its own."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import RequestFactory

from jobsite import keys
from jobsite.throttles import client_address
from tests.support import ROOT

SECRET = "x9!" + "k" * 20 + "Qv7#pL2$mN8^rT4&wZ6*yB1@cD3%fG5"
OLD_DEVELOPMENT_KEY = "insecure-development-key-do-not-use-in-production"


def clean_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """This process's environment without the settings under test, plus `variables`."""
    ours = ("DJANGO_", "JWT_", "NUM_PROXIES")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", **variables)
    return env


def load_settings(env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    script = (
        "import json, sys; from jobsite import settings as s;"
        f"values = {{n: getattr(s, n, None) for n in {list(names)!r}}};"
        "sys.stdout.write(json.dumps(values, default=str))"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )


def settings_with(env: dict[str, str], *names: str) -> dict:
    result = load_settings(env, *names)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.live
def test_debug_is_off_unless_asked_for(tmp_path):
    loaded = settings_with(clean_env(tmp_path, DJANGO_SECRET_KEY=SECRET), "DEBUG")

    assert loaded["DEBUG"] is False


@pytest.mark.live
def test_without_debug_the_settings_refuse_to_load_without_a_secret_key(tmp_path):
    result = load_settings(clean_env(tmp_path), "DEBUG")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


@pytest.mark.live
def test_in_debug_without_a_key_a_random_key_is_made_once_and_kept_under_var(tmp_path):
    env = clean_env(tmp_path, DJANGO_DEBUG="1")

    first = settings_with(env, "SECRET_KEY")["SECRET_KEY"]
    second = settings_with(env, "SECRET_KEY")["SECRET_KEY"]

    key_file = ROOT / "var" / "secret_key"
    assert first == second == key_file.read_text().strip()
    assert len(first) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert OLD_DEVELOPMENT_KEY not in (ROOT / "jobsite" / "settings.py").read_text()


@pytest.mark.live
def test_a_configured_secret_key_is_used_as_it_is(tmp_path):
    env = clean_env(tmp_path, DJANGO_DEBUG="1", DJANGO_SECRET_KEY=SECRET)

    assert settings_with(env, "SECRET_KEY")["SECRET_KEY"] == SECRET


@pytest.mark.live
def test_the_development_key_is_private_and_processes_starting_together_agree(tmp_path):
    path = tmp_path / "var" / "secret_key"
    script = (
        "from pathlib import Path; from jobsite.keys import development_secret_key;"
        f"print(development_secret_key(Path({str(path)!r})))"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]

    printed = {process.communicate(timeout=60)[0].strip() for process in processes}

    assert printed == {path.read_text().strip()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary left


@pytest.mark.live
def test_an_empty_key_file_is_an_error_not_an_empty_key(tmp_path):
    path = tmp_path / "secret_key"
    path.write_text("")

    with pytest.raises(Exception, match="is empty"):
        keys.development_secret_key(path)


@pytest.mark.live
def test_tokens_are_signed_with_a_key_derived_from_the_secret_key_unless_one_is_set(tmp_path):
    derived = settings_with(clean_env(tmp_path, DJANGO_SECRET_KEY=SECRET), "SIMPLE_JWT")
    configured = settings_with(
        clean_env(tmp_path, DJANGO_SECRET_KEY=SECRET, JWT_SIGNING_KEY="a-jwt-key-of-its-own"),
        "SIMPLE_JWT",
    )

    assert derived["SIMPLE_JWT"]["SIGNING_KEY"] == keys.derive_key(
        SECRET, "jobsite.jwt-signing-key"
    )
    assert derived["SIMPLE_JWT"]["SIGNING_KEY"] != SECRET
    assert configured["SIMPLE_JWT"]["SIGNING_KEY"] == "a-jwt-key-of-its-own"


# --- proxies -------------------------------------------------------------------------


def production(tmp_path: Path, **variables: str) -> dict[str, str]:
    return clean_env(
        tmp_path,
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=SECRET,
        DJANGO_ALLOWED_HOSTS="jobs.example.com",
        **variables,
    )


@pytest.mark.live
def test_without_a_proxy_setting_no_forwarded_header_is_believed(tmp_path):
    loaded = settings_with(production(tmp_path), "SECURE_PROXY_SSL_HEADER", "REST_FRAMEWORK")

    assert loaded["SECURE_PROXY_SSL_HEADER"] is None
    assert loaded["REST_FRAMEWORK"]["NUM_PROXIES"] == 0


@pytest.mark.live
def test_behind_a_proxy_its_headers_are_believed(tmp_path):
    behind = settings_with(
        production(tmp_path, DJANGO_BEHIND_PROXY="1"), "SECURE_PROXY_SSL_HEADER", "REST_FRAMEWORK"
    )
    two = settings_with(
        production(tmp_path, DJANGO_BEHIND_PROXY="1", NUM_PROXIES="2"), "REST_FRAMEWORK"
    )

    assert behind["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert behind["REST_FRAMEWORK"]["NUM_PROXIES"] == 1
    assert two["REST_FRAMEWORK"]["NUM_PROXIES"] == 2


@pytest.mark.live
def test_num_proxies_without_the_proxy_setting_refuses_to_load(tmp_path):
    result = load_settings(production(tmp_path, NUM_PROXIES="1"), "DEBUG")

    assert result.returncode != 0
    assert "DJANGO_BEHIND_PROXY" in result.stderr


def status_of_a_plain_http_request_claiming_https(env: dict[str, str]) -> str:
    script = (
        "import django, sys; django.setup();"
        "from django.test import Client;"
        "r = Client(HTTP_HOST='jobs.example.com').get("
        "'/api/me/', HTTP_X_FORWARDED_PROTO='https');"
        "sys.stdout.write(str(r.status_code))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "jobsite.settings"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.live
def test_x_forwarded_proto_counts_only_behind_a_proxy(tmp_path):
    # Exposed directly, a client's own header cannot make plain HTTP pass for HTTPS.
    assert status_of_a_plain_http_request_claiming_https(production(tmp_path)) == "301"
    behind = production(tmp_path, DJANGO_BEHIND_PROXY="1")
    assert status_of_a_plain_http_request_claiming_https(behind) == "401"


@pytest.mark.parametrize(
    "num_proxies, forwarded_for, expected",
    [
        (0, "203.0.113.9", "10.0.0.1"),  # not behind a proxy: the header is the client's own
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the client's own entry is skipped
        (2, "198.51.100.1, 203.0.113.9", "198.51.100.1"),
        (1, "not-an-address", "10.0.0.1"),
    ],
)
def test_the_client_address_of_rate_limits_and_lockouts(
    settings, num_proxies, forwarded_for, expected
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": num_proxies}
    request = RequestFactory().get("/", HTTP_X_FORWARDED_FOR=forwarded_for, REMOTE_ADDR="10.0.0.1")

    assert client_address(request) == expected
