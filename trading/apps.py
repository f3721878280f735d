import logging

from django.apps import AppConfig


class TradingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "trading"

    def ready(self):
        from .broker import describe

        logging.getLogger("trading").info("broker: %s", describe())
