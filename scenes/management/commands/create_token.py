"""``create_token <username> [--name NAME]``: make an API token for a person and print it (once)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from scenes import tokens


class Command(BaseCommand):
    help = ("Make an API token for a user and print it; it is stored hashed, so this is the only time it is "
            "shown. People make their own at /tokens/.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="made with create_token", help="what the token is for")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model()._default_manager.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"create_token: no user {options['username']!r}")
        _, token = tokens.api_token_create(owner=user, name=options["name"])
        self.stdout.write(token)
