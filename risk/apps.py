from django.apps import AppConfig


class RiskConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "risk"
    verbose_name = "Risk monitor"

    def ready(self):
        from . import checks  # noqa: F401  registers the system checks
