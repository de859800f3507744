"""``make bench``: run every ``benchmarks/bench_*.py`` and print one table.

Each module has ``run(*, database_url) -> list[Result]``. The machines are noisy, so every figure comes
with an anchor measured in the same run, and the ratio between them is the number to compare.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.common import Result


def main(selected: list[str]) -> int:
    # The run's database and files go with it: each run left a folder of its own in the temp dir.
    with tempfile.TemporaryDirectory(prefix="bench-data-", ignore_cleanup_errors=True) as data_dir:
        return _run(selected, data_dir=data_dir)


def _run(selected: list[str], *, data_dir: str) -> int:
    os.environ["DATA_DIR"] = data_dir
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mediastore.settings")
    os.environ.setdefault("MEDIA_MAX_ACTIVE_PER_OWNER", "100000")  # a benchmark's batch is one person's
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    database_url = "sqlite:///" + str(Path(data_dir) / "db.sqlite3")

    import benchmarks

    names = [m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")]
    if selected:
        names = [n for n in names if any(s in n for s in selected)]
    rows: list[Result] = []
    failed = 0
    for name in sorted(names):
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows += importlib.import_module(f"benchmarks.{name}").run(database_url=database_url)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed += 1
            print(f"{name} FAILED: {exc!r}", file=sys.stderr, flush=True)
            traceback.print_exc()
        print(f"{name} took {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    _print_table(rows)
    return 1 if failed else 0


def _print_table(rows: list[Result]) -> None:
    header = ("benchmark", "figure", "value", "anchor", "anchor value", "ratio", "note")
    lines = [header] + [
        (r.benchmark, r.figure, f"{r.value:.3f}", r.anchor, f"{r.anchor_value:.3f}", f"{r.ratio:.2f}", r.note)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("-+-".join("-" * width for width in widths))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
