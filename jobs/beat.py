"""Beat's schedulers: django-celery-beat's database scheduler, reading the schedules that
`jobs.schedules.sync` wrote and the admin edits, and a file-based one for
`celery beat -S jobs.beat:PersistentScheduler`.

Both stamp each message they fire with the time they fired it: that stamp is what makes a
message a scheduled firing, keyed by its schedule's window. A message without it (the
admin's "Run selected tasks", a call from code) is a run of its own.
"""

from __future__ import annotations

import time

from celery import beat
from django_celery_beat.schedulers import DatabaseScheduler as BaseDatabaseScheduler

from .schedules import FIRED_AT_HEADER


class StampsFirings:
    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        entry = self.reserve(entry) if advance else entry
        # The window is computed from when Beat fired, not from when a worker got to the
        # message: a backed-up queue must not move a firing into the next window.
        fired = with_header(entry, FIRED_AT_HEADER, time.time())
        return super().apply_async(fired, producer, advance=False, **kwargs)


def with_header(entry: beat.ScheduleEntry, name: str, value: object) -> beat.ScheduleEntry:
    """A copy of `entry` whose message carries one more header; `entry`, which the
    scheduler stores, is left as it was. (Entries pickle by their constructor's arguments,
    which `copy.copy` cannot call for a database entry.)"""
    fired = object.__new__(type(entry))
    headers = {**(entry.options.get("headers") or {}), name: value}
    vars(fired).update(vars(entry), options={**entry.options, "headers": headers})
    return fired


class DatabaseScheduler(StampsFirings, BaseDatabaseScheduler):
    def setup_schedule(self) -> None:
        # The stock scheduler writes `beat_schedule` and Celery's result clean-up into the
        # database at every start, undoing admin edits. Here the declarations are written
        # by `sync` (after migrate), which leaves the fields an admin owns alone.
        pass


class PersistentScheduler(StampsFirings, beat.PersistentScheduler):
    pass
