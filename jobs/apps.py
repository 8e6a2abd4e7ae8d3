from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        # Each app registers its job types in its own `jobs.py`.
        autodiscover_modules("jobs")
        post_migrate.connect(sync_schedules_after_migrate, sender=self)


def sync_schedules_after_migrate(using: str = "default", **kwargs) -> None:
    from . import schedules

    if "django_celery_beat_periodictask" in connections[using].introspection.table_names():
        schedules.sync()
