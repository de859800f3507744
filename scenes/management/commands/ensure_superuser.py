"""Create the first admin user, once: from DJANGO_SUPERUSER_* or with a generated password shown once."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Create a superuser when none exists. Uses DJANGO_SUPERUSER_USERNAME, DJANGO_SUPERUSER_PASSWORD and "
        "DJANGO_SUPERUSER_EMAIL when set; otherwise creates 'admin' with a generated password and prints it once."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()._default_manager
        if users.filter(is_superuser=True).exists():
            self.stdout.write("ensure_superuser: a superuser exists already; nothing to do")
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "").strip()
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "").strip()
        if bool(username) != bool(password):
            raise CommandError("DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD: set both or neither")
        generated = not username
        if generated:
            username, password = "admin", secrets.token_urlsafe(18)
        if users.filter(username=username).exists():
            raise CommandError(f"ensure_superuser: user {username!r} exists but is not a superuser; not touching it")
        users.create_superuser(username=username, email=email, password=password)
        if generated:
            self.stdout.write(self.style.WARNING(
                f"ensure_superuser: created superuser 'admin' with password {password}\n"
                "  It is shown only this once: sign in at /admin/ and change it.\n"
                "  Lost it? `.venv/bin/python manage.py changepassword admin` sets a new one."
            ))
        else:
            self.stdout.write(f"ensure_superuser: created superuser {username!r} from DJANGO_SUPERUSER_*")
