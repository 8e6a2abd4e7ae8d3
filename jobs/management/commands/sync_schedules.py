"""Write the schedules declared in settings.JOBS_SCHEDULES into django-celery-beat's tables."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from jobs import scheduling


class Command(BaseCommand):
    help = "Sync the declared schedules into the database Beat reads (also done by migrate)."

    def handle(self, *args, **options) -> None:
        try:
            result = scheduling.sync()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        for label, names in [
            ("created", result.created),
            ("updated", result.updated),
            ("disabled", result.disabled),
            ("unchanged", result.unchanged),
        ]:
            if names:
                self.stdout.write(f"{label}: {', '.join(names)}")
