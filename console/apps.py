from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


class ConsoleConfig(AppConfig):
    """The faces: the admin console, the REST API, the management commands, the django-q2 task."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "console"
    verbose_name = "Operations console"

    def ready(self):
        from .schedule import monitor_schedule_ensure

        # After django-q2's own migrations (this app has no models, so it gets no signal).
        post_migrate.connect(monitor_schedule_ensure, sender=apps.get_app_config("django_q"),
                             dispatch_uid="console-monitor-schedule")
