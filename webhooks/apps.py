from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from jobs.engine import batch_finished, register_follow_up

        from . import services

        register_follow_up(
            "webhooks", after_end=services.jobs_ended, catch_up=services.catch_up_now_and_then
        )
        batch_finished.connect(services.batch_settled, dispatch_uid="webhooks.batch_settled")
