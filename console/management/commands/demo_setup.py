"""`manage.py demo_setup`: the demo admin login for `make run`, printed only when created."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo superuser 'admin' with a random password, printed once."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"Demo login: user '{username}' exists (its password was printed when it was created; "
                              f"reset it with: python manage.py changepassword {username})")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        bar = "=" * 60
        self.stdout.write(f"{bar}\nDemo admin login for http://127.0.0.1:8000/admin/\n"
                          f"  username: {username}\n  password: {password}\n(shown once; keep it)\n{bar}")
