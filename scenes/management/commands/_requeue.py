"""What the re-queue commands share: a duration argument and applying one service to many scenes."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Iterable

from mediastore.env import parse_duration
from scenes.lifecycle import SceneStateConflict
from scenes.models import Scene


def duration(text: str) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration such as 90s, 30m, 24h: {text!r}") from None


def apply_each(scenes: Iterable[Scene], action: Callable[[Scene], object]) -> tuple[int, int]:
    """Run ``action`` on every scene; return how many succeeded and how many had moved meanwhile."""
    done = moved = 0
    for scene in scenes:
        try:
            action(scene)
            done += 1
        except SceneStateConflict:
            moved += 1
    return done, moved
