"""Beat's scheduler: django-celery-beat's database scheduler, reading the schedules that
`jobs.schedules.sync` wrote and the admin edits."""

from __future__ import annotations

from django_celery_beat.schedulers import DatabaseScheduler as BaseDatabaseScheduler


class DatabaseScheduler(BaseDatabaseScheduler):
    def setup_schedule(self) -> None:
        # The stock scheduler writes `beat_schedule` and Celery's result clean-up into the
        # database at every start, undoing admin edits. Here the declarations are written
        # by `sync` (after migrate), which leaves the fields an admin owns alone.
        pass
