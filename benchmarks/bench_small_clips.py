"""100 small clips (about 2 MB each, as Reddit's are) on one worker ``-c 100``: jobs per minute and the peak
memory of the worker's process tree, with yt-dlp forked from the helper vs a plain subprocess per job (the
anchor: the path every job took before the helper), alternating batches in one run.

Memory is the process tree's summed PSS (each shared page counted once, split between its sharers) and, for
comparison with figures taken before, its summed RSS (shared pages counted in every process).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import Result, ingest_and_wait, looped_video, s3_stack, scratch_dir
from tests.harness.media import MediaServer, generate_media
from tests.harness.processes import process_table

JOBS = int(os.environ.get("BENCH_SMALL_CLIPS_JOBS", "100"))
BATCHES = int(os.environ.get("BENCH_SMALL_CLIPS_BATCHES", "3"))
CLIP = 2 * 1024 * 1024


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for info in process_table():
        if info.state != "Z":
            children.setdefault(info.ppid, []).append(info.pid)
    found, queue = [root], [root]
    while queue:
        for child in children.get(queue.pop(), ()):
            found.append(child)
            queue.append(child)
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in bytes; (0, 0) once it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


class _PeakMemory:
    """Samples the tree's summed PSS and RSS twice a second in a thread; keeps the peaks."""

    def __init__(self, root: int) -> None:
        self.root, self.pss, self.rss = root, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            sizes = [_memory(pid) for pid in _tree(self.root)]
            self.pss = max(self.pss, sum(p for p, _ in sizes))
            self.rss = max(self.rss, sum(r for _, r in sizes))


def _batch(*, helper: str, server: MediaServer, workdir: Path, database_url: str, batch: int) -> tuple[float, int, int]:
    """One batch of JOBS clips on a fresh worker; (jobs per minute, peak PSS, peak RSS)."""
    with s3_stack(concurrency=JOBS, workdir=workdir / f"{helper}-{batch}", database_url=database_url,
                  env={"MEDIA_YTDLP_HELPER": helper}) as (_, _, worker):
        def url(i: int) -> str:
            return server.url(f"clip.mp4?batch={batch}&job={i}")

        ingest_and_wait([url(-1), url(-2)], timeout=120)  # warm-up: imports, connections, the helper
        with _PeakMemory(worker.process.pid) as memory:
            started = time.perf_counter()
            try:
                ingest_and_wait([url(i) for i in range(JOBS)], timeout=900)
            except RuntimeError:
                lines = worker.log().splitlines()
                first = next((i for i, line in enumerate(lines) if "ERROR" in line), len(lines))
                print("\n".join(lines[first:first + 60]), file=sys.stderr)  # the first error with its traceback
                raise
            elapsed = time.perf_counter() - started
    return JOBS / elapsed * 60, memory.pss, memory.rss


def run(*, database_url: str) -> list[Result]:
    with scratch_dir("small-clips") as tmp:
        workdir = Path(tmp)
        files = generate_media(workdir / "media")
        looped_video(files.video, files.root / "clip.mp4", at_least=CLIP)
        size = (files.root / "clip.mp4").stat().st_size
        figures: dict[str, list[tuple[float, int, int]]] = {"0": [], "1": []}
        with MediaServer(files) as server:
            for batch in range(BATCHES):
                for helper in ("0", "1"):  # alternating, so both meet the same machine
                    figures[helper].append(_batch(helper=helper, server=server, workdir=workdir,
                                                  database_url=database_url, batch=batch))
    rates = {h: [rate for rate, _, _ in runs] for h, runs in figures.items()}
    raw = {h: ", ".join(f"{rate:.1f}/min PSS {pss / 1e6:.0f} MB RSS {rss / 1e6:.0f} MB" for rate, pss, rss in runs)
           for h, runs in figures.items()}
    peak = {h: (max(pss for _, pss, _ in runs), max(rss for _, _, rss in runs)) for h, runs in figures.items()}
    return [
        Result(
            benchmark="small_clips",
            figure=f"{JOBS} clips of {size / 1e6:.1f} MB on -c {JOBS}, yt-dlp helper, median jobs/min",
            value=statistics.median(rates["1"]),
            anchor="plain yt-dlp subprocess per job, median jobs/min",
            anchor_value=statistics.median(rates["0"]),
            unit="jobs/min",
            note=f"higher is better; helper: {raw['1']}; plain: {raw['0']}",
        ),
        Result(
            benchmark="small_clips",
            figure="peak PSS of the worker's process tree, helper, MB",
            value=peak["1"][0] / 1e6,
            anchor="the same, plain subprocess, MB",
            anchor_value=peak["0"][0] / 1e6,
            unit="MB",
            note=f"lower is better; peak RSS summed: helper {peak['1'][1] / 1e6:.0f} MB, "
                 f"plain {peak['0'][1] / 1e6:.0f} MB",
        ),
    ]
