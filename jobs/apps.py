from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from . import batches, dependencies, signals, tasks, tasks_backend  # noqa: F401 (signals connects the worker's handlers)

        tasks_backend.register()
        # Each app registers its job types in its own `jobs.py`; each type then gets its task.
        autodiscover_modules("jobs")
        tasks.bind_job_types()
        batches.register_follow_up()
        dependencies.register()
        post_migrate.connect(sync_schedules_after_migrate, sender=self)


def sync_schedules_after_migrate(using: str = "default", **kwargs) -> None:
    from . import scheduling

    if "django_celery_beat_periodictask" in connections[using].introspection.table_names():
        scheduling.sync()
