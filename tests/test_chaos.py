"""The chaos soak's short form: a few hundred jobs on a stack of its own (PostgreSQL made
with initdb, an embedded Redis, gunicorn, the Procfile's workers and Beat) while every
kind of fault in FAULTS happens at least once; then the soak's invariants."""

from __future__ import annotations

import pytest

from chaos.config import Config
from chaos.soak import run
from tests.servers import postgres_bin_dir

pytestmark = [
    pytest.mark.worker,
    pytest.mark.timeout(300),
    pytest.mark.skipif(postgres_bin_dir() is None, reason="no PostgreSQL server installed"),
]

FAULTS = ("kill", "pause", "redis-restart", "redis-flush", "pg-restart", "two-beats", "sigterm")
KILL_TARGETS = ("pool",)


def short_soak() -> Config:
    return Config(
        jobs=300,
        min_seconds=30,
        max_backlog=100,
        faults=FAULTS,
        kill_targets=KILL_TARGETS,
        kill_every=3,
        fault_every=3,
        pause_seconds=3,
        pg_down_seconds=2,
        two_beats_seconds=6,
        drain_timeout=120,
    )


def test_short_soak_keeps_every_invariant():
    config = short_soak()
    report = run(config)
    print(report.text())

    assert report.faults_by_kind.keys() >= set(FAULTS), report.faults_by_kind
    assert report.value("jobs created") == config.jobs
    assert report.value("jobs lost (confirmed, then missing)") == 0
    assert report.value("jobs terminal") == report.value(
        "jobs in the database (scheduled ones too)"
    )
    assert report.value("jobs that succeeded more than once") == 0
    assert report.value("effects delivered more than once") == 0
    assert report.value("e-mails delivered") > 0
    assert not report.failed, report.text()
