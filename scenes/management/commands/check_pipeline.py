"""``check_pipeline [--e2e]``: every part of the pipeline, PASS/WARN/FAIL with a reason; exit 1 on any FAIL."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scenes.pipeline_check import run_checks


class Command(BaseCommand):
    help = ("Check the database, broker, object store and workers, that web and worker share configuration and "
            "versions, and with --e2e ingest a generated sample end to end and delete it again.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--e2e", action="store_true", help="also ingest a generated sample through the pipeline")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the sample (default 60)")

    def handle(self, *args: Any, **options: Any) -> None:
        counts = {"PASS": 0, "WARN": 0, "FAIL": 0}
        for check in run_checks(e2e=options["e2e"], timeout=options["timeout"]):
            counts[check.outcome] += 1
            style = {"PASS": self.style.SUCCESS, "WARN": self.style.WARNING, "FAIL": self.style.ERROR}[check.outcome]
            self.stdout.write(style(str(check)))
        summary = f"check_pipeline: {counts['PASS']} passed, {counts['WARN']} warned, {counts['FAIL']} failed"
        if counts["FAIL"]:
            raise CommandError(summary)
        self.stdout.write(summary)
