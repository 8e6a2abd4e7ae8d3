"""`make run`: bring the whole stack up on one machine.

Migrates, makes sure an admin user exists, starts the embedded Redis when REDIS_URL is
not set and nothing answers on 127.0.0.1:6379, then runs the Procfile (web, a worker per
queue group, beat, flower) with honcho until Ctrl-C. The embedded Redis asks for a
password, generated once and kept in `password` in its data directory (mode 0600); the
processes get it in REDIS_URL, through their environment.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from jobsite.embedded_redis import EmbeddedRedis, answers, kept_password

BASE_DIR = Path(__file__).resolve().parent.parent


def main() -> int:
    os.chdir(BASE_DIR)
    (BASE_DIR / "var").mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DJANGO_DEBUG", "1")

    redis = None
    if not env.get("REDIS_URL"):
        redis = start_redis(env)

    try:
        manage(env, "migrate", "--noinput")
        manage(env, "ensure_admin")
        if not env.get("FLOWER_BASIC_AUTH"):
            flower_password = env.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            env["FLOWER_BASIC_AUTH"] = f"admin:{flower_password}"
            if not env.get("ADMIN_PASSWORD"):
                print(f"Flower login: admin / {flower_password}", flush=True)
        print_urls(env)
        return run_procfile(env)
    finally:
        if redis:
            redis.stop()


def start_redis(env: dict[str, str]) -> EmbeddedRedis | None:
    """Point REDIS_URL at a Redis on REDIS_PORT: one already answering there (the
    embedded one left running by an earlier run, or a system Redis without a password),
    else the embedded Redis, started now and returned for stopping at the end."""
    port = int(env.get("REDIS_PORT", "6379"))
    data_dir = Path(env.get("REDIS_DATA_DIR", BASE_DIR / "var" / "redis"))
    redis = EmbeddedRedis(
        data_dir=data_dir, port=port, persist=True, password=kept_password(data_dir / "password")
    )
    for running in (redis.url, f"redis://127.0.0.1:{port}/0"):
        if answers(running):
            env["REDIS_URL"] = running
            return None
    redis.start()
    env["REDIS_URL"] = redis.url
    print(f"Started the embedded Redis on {redis.shown_url} (data in {data_dir})", flush=True)
    return redis


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], env=env, check=True)


def print_urls(env: dict[str, str]) -> None:
    web = f"http://{env.get('WEB_BIND', '127.0.0.1')}:{env.get('WEB_PORT', '8000')}"
    flower = f"http://{env.get('FLOWER_BIND', '127.0.0.1')}:{env.get('FLOWER_PORT', '5555')}"
    print(
        "\nJobsite is starting:\n"
        f"  Reports    {web}/reports/\n"
        f"  API        {web}/api/  (docs: {web}/api/docs/)\n"
        f"  Admin      {web}/admin/\n"
        f"  Dashboard  {web}/dashboard/\n"
        f"  Health     {web}/health/\n"
        f"  Flower     {flower}/\n"
        f"  Broker     {shown_url(env['REDIS_URL'])}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


def shown_url(url: str) -> str:
    """A URL with its password, if any, masked."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.password, "***", 1)))


def run_procfile(env: dict[str, str]) -> int:
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile"],
        env=env,
    )

    def stop(signum, frame) -> None:
        honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    while True:
        try:
            return honcho.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached honcho too; it stops the processes. Wait for it.
            continue


if __name__ == "__main__":
    sys.exit(main())
