import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError

from jobs import registry, services
from jobs.errors import IdempotencyConflict


class Command(BaseCommand):
    help = "Create a system job (no owner) and print its id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("type", help="A registered job type, e.g. email.send")
        parser.add_argument("--payload", default="{}", help="Payload as a JSON object")
        parser.add_argument("--key", default=None, help="Idempotency key")
        parser.add_argument("--priority", default="normal", choices=["low", "normal", "high"])
        parser.add_argument("--run-at", default=None, help="ISO 8601 time to run at")
        parser.add_argument(
            "--expires-in", type=int, default=None, help="Seconds: not started by then, it expires"
        )
        parser.add_argument(
            "--max-attempts", type=int, default=None, help="At most the type's max_attempts"
        )
        parser.add_argument(
            "--time-limit", type=int, default=None, help="Seconds, at most the type's limit"
        )
        parser.add_argument(
            "--depends-on",
            action="append",
            default=[],
            metavar="JOB_ID",
            help="A system job to wait for (repeatable): it runs once they all succeeded",
        )
        parser.add_argument(
            "--on-dependency-failure",
            default="cancel",
            choices=["cancel", "run"],
            help="If a job it waits for does not succeed: cancel this one, or run it anyway",
        )

    def handle(
        self,
        *args,
        type: str,
        payload: str,
        key,
        priority,
        run_at,
        expires_in,
        max_attempts,
        time_limit,
        depends_on,
        on_dependency_failure,
        **options,
    ):
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}", returncode=2) from None
        when = None
        if run_at:
            when = parse_datetime(run_at)
            if when is None or when.tzinfo is None:
                raise CommandError(
                    "--run-at must be an ISO 8601 time with a time zone, "
                    "e.g. 2030-01-01T09:00:00+00:00",
                    returncode=2,
                )
        if expires_in is not None and expires_in <= 0:
            raise CommandError(
                "--expires-in must be a whole number of seconds above 0.", returncode=2
            )
        expires_at = timezone.now() + timedelta(seconds=expires_in) if expires_in else None
        try:
            outcome = services.enqueue(
                type,
                data,
                idempotency_key=key,
                priority=priority,
                run_at=when,
                expires_at=expires_at,
                max_attempts=max_attempts,
                time_limit=time_limit,
                depends_on=depends_on,
                on_dependency_failure=on_dependency_failure,
            )
        except registry.UnknownJobType as exc:
            known = ", ".join(registry.names())
            raise CommandError(f"{exc} Known types: {known}.", returncode=2) from None
        except ValidationError as exc:
            raise CommandError(f"Invalid input: {json.dumps(exc.detail)}", returncode=2) from None
        except IdempotencyConflict as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(str(outcome.job.id))
        if not outcome.created:
            self.stderr.write("An existing job with this key was returned.")
