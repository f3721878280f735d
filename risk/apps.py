from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RiskConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "risk"
    verbose_name = "Risk monitor"

    def ready(self):
        from . import checks  # noqa: F401  registers the system checks
        from .schedule import monitor_schedule_ensure

        post_migrate.connect(monitor_schedule_ensure, sender=self, dispatch_uid="risk-monitor-schedule")
