"""`make run`: bring the whole stack up on one machine.

Migrates, makes sure an admin user exists, starts the embedded Redis when REDIS_URL is
not set and nothing answers on 127.0.0.1:6379, then runs the Procfile (web, a worker per
queue group, beat, flower) with honcho until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from jobsite.embedded_redis import EmbeddedRedis, answers

BASE_DIR = Path(__file__).resolve().parent.parent


def main() -> int:
    os.chdir(BASE_DIR)
    (BASE_DIR / "var").mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DJANGO_DEBUG", "1")

    redis = None
    if not env.get("REDIS_URL"):
        port = int(env.get("REDIS_PORT", "6379"))
        local = f"redis://127.0.0.1:{port}/0"
        if answers(local):
            env["REDIS_URL"] = local
        else:
            data_dir = Path(env.get("REDIS_DATA_DIR", BASE_DIR / "var" / "redis"))
            redis = EmbeddedRedis(data_dir=data_dir, port=port, persist=True)
            redis.start()
            env["REDIS_URL"] = redis.url
            print(f"Started the embedded Redis on {redis.url} (data in {data_dir})", flush=True)

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
        f"  Broker     {env['REDIS_URL']}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


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
