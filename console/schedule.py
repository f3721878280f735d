"""The monitor's django-q2 schedule, kept in step with settings after every migrate."""

from django.conf import settings

SCHEDULE_NAME = "catalyst-monitor"


def monitor_schedule_ensure(**kwargs) -> None:
    """Create or update the one schedule by name (tasks.schedule() raises on a duplicate).

    Cron with a seconds field: django-q2 1.11's `minutes` type floors at one minute.
    """
    from django_q.models import Schedule

    seconds = settings.MONITOR_INTERVAL_SECONDS
    cron = f"* * * * * */{seconds}" if seconds < 60 else f"*/{max(1, seconds // 60)} * * * *"
    Schedule.objects.update_or_create(
        name=SCHEDULE_NAME,
        defaults={
            "func": "console.tasks.monitor_task",
            "schedule_type": Schedule.CRON,
            "cron": cron,
            "repeats": -1,
        },
    )
