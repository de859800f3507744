"""100 small clips (about 2 MB each, as Reddit's are) on one worker ``-c 100``: jobs per minute and the peak
memory of the worker's process tree, in alternating batches of one run:

- ``helper``: this tree, yt-dlp forked from the helper (the default);
- ``plain``: this tree with ``MEDIA_YTDLP_HELPER=0``, a plain subprocess per job;
- ``main``: the worker of an earlier commit, ``BENCH_MAIN_REV`` (e.g. the main branch before this work), from
  a temporary git worktree; the anchor. Without ``BENCH_MAIN_REV`` the anchor is ``plain``.

Memory is the process tree's summed PSS (each shared page counted once, split between its sharers) and, for
comparison with figures taken before, its summed RSS (shared pages counted in every process).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import Result, cpu_seconds, ingest_and_wait, looped_video, s3_stack, scratch_dir
from tests.harness.media import MediaServer, generate_media
from tests.harness.processes import descendants_of, process_table, ytdlp_helpers
from tests.harness.services import REPO_ROOT

JOBS = int(os.environ.get("BENCH_SMALL_CLIPS_JOBS", "100"))
BATCHES = int(os.environ.get("BENCH_SMALL_CLIPS_BATCHES", "3"))
CLIP = 2 * 1024 * 1024
MAIN_REV = os.environ.get("BENCH_MAIN_REV", "")


@contextlib.contextmanager
def _worktree(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-main-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "--quiet", str(tree), rev],
                       check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)], check=False)


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


def _cpu_of(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of ``pid``; (0, 0) once it is gone."""
    try:
        used = cpu_seconds(pid)
    except OSError:
        return 0.0, 0.0
    return used.user + used.system, used.reaped


def _cpu_split(worker: int) -> dict[str, float]:
    """CPU seconds so far, by who spent them: the worker itself, the children it ran and reaped (on the plain
    path: yt-dlp, ffprobe, ffmpeg, prlimit), the yt-dlp helper and the children it reaped (yt-dlp and the media
    child of each job), and the rest of the benchmark's own tree (moto's S3 server, redis, this process with
    its media server)."""
    table = process_table()
    helpers = set(ytdlp_helpers(worker, table=table))
    split = dict.fromkeys(("worker", "worker's children", "helper", "helper's children", "others"), 0.0)
    own, reaped = _cpu_of(worker)
    split["worker"], split["worker's children"] = own, reaped
    for pid in helpers:
        own, reaped = _cpu_of(pid)
        split["helper"] += own
        split["helper's children"] += reaped
    workers_tree = {worker, *descendants_of(worker, table=table)}  # counted above, through the worker and its helper
    for pid in descendants_of(os.getpid(), table=table):
        if pid not in workers_tree:
            split["others"] += sum(_cpu_of(pid))
    times = os.times()
    split["others"] += times.user + times.system
    return split


class _PeakMemory:
    """Samples the tree's summed PSS and RSS twice a second in a thread; keeps the peaks, and at the peak of
    RSS who held it: the worker, its yt-dlp helper, the helper's children (one yt-dlp and one media child
    per job at most), and the worker's own children (the plain path's subprocesses)."""

    def __init__(self, root: int) -> None:
        self.root, self.pss, self.rss = root, 0, 0
        self.at_peak = ""
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
            table = process_table()  # one snapshot: the tree and who is below the helper agree
            tree = descendants_of(self.root, table=table)
            helpers = set(ytdlp_helpers(self.root, table=table))
            below_helpers = {pid for helper in helpers for pid in descendants_of(helper, table=table)}
            by_whom: dict[str, list[tuple[int, int]]] = {}
            for pid in [self.root, *tree]:
                whom = ("worker" if pid == self.root else "helper" if pid in helpers
                        else "helper's children" if pid in below_helpers else "worker's children")
                by_whom.setdefault(whom, []).append(_memory(pid))
            sizes = [size for held in by_whom.values() for size in held]
            self.pss = max(self.pss, sum(p for p, _ in sizes))
            rss = sum(r for _, r in sizes)
            if rss > self.rss:
                self.rss = rss
                self.at_peak = ", ".join(
                    f"{whom} ({len(held)}) RSS {sum(r for _, r in held) / 1e6:.0f} "
                    f"PSS {sum(p for p, _ in held) / 1e6:.0f}"
                    for whom, held in by_whom.items())


def _batch(*, mode: str, tree: Path, server: MediaServer, workdir: Path, database_url: str,
           batch: int) -> tuple[float, int, int]:
    """One batch of JOBS clips on a fresh worker; (jobs per minute, peak PSS, peak RSS)."""
    with s3_stack(concurrency=JOBS, workdir=workdir / f"{mode}-{batch}", database_url=database_url, tree=tree,
                  env={"MEDIA_YTDLP_HELPER": "0" if mode == "plain" else "1"}) as (_, _, worker):
        def url(i: int) -> str:
            return server.url(f"clip.mp4?batch={batch}&job={i}")

        ingest_and_wait([url(-1), url(-2)], timeout=120)  # warm-up: imports, connections, the helper
        with _PeakMemory(worker.process.pid) as memory:
            cpu_before = _cpu_split(worker.process.pid)
            started = time.perf_counter()
            try:
                ingest_and_wait([url(i) for i in range(JOBS)], timeout=900)
            except RuntimeError:
                lines = worker.log().splitlines()
                first = next((i for i, line in enumerate(lines) if "ERROR" in line), len(lines))
                print("\n".join(lines[first:first + 60]), file=sys.stderr)  # the first error with its traceback
                raise
            elapsed = time.perf_counter() - started
            cpu_after = _cpu_split(worker.process.pid)
    per_job = {who: (cpu_after[who] - cpu_before[who]) / JOBS * 1000 for who in cpu_before}
    print(f"bench_small_clips {mode} batch {batch}: {JOBS / elapsed * 60:.1f} jobs/min; CPU ms per job: "
          + ", ".join(f"{who} {ms:.0f}" for who, ms in per_job.items())
          + f"; total {sum(per_job.values()):.0f}; at the peak of RSS (MB): {memory.at_peak}", file=sys.stderr)
    return JOBS / elapsed * 60, memory.pss, memory.rss


def run(*, database_url: str) -> list[Result]:
    with scratch_dir("small-clips") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        files = generate_media(workdir / "media")
        looped_video(files.video, files.root / "clip.mp4", at_least=CLIP)
        size = (files.root / "clip.mp4").stat().st_size
        trees = {"helper": REPO_ROOT, "plain": REPO_ROOT}
        if MAIN_REV:
            trees["main"] = stack.enter_context(_worktree(MAIN_REV))
        anchor = "main" if MAIN_REV else "plain"
        figures: dict[str, list[tuple[float, int, int]]] = {mode: [] for mode in trees}
        with MediaServer(files) as server:
            for batch in range(BATCHES):
                for mode, tree in trees.items():  # alternating, so every mode meets the same machine
                    figures[mode].append(_batch(mode=mode, tree=tree, server=server, workdir=workdir,
                                                database_url=database_url, batch=batch))
    raw = {mode: ", ".join(f"{rate:.1f}/min PSS {pss / 1e6:.0f} MB RSS {rss / 1e6:.0f} MB"
                           for rate, pss, rss in runs) for mode, runs in figures.items()}
    rate = {mode: statistics.median(r for r, _, _ in runs) for mode, runs in figures.items()}
    peak = {mode: (max(p for _, p, _ in runs), max(r for _, _, r in runs)) for mode, runs in figures.items()}
    named = f"main ({MAIN_REV})" if MAIN_REV else "plain subprocess per job"
    every = "; ".join(f"{mode}: {raw[mode]}" for mode in figures)
    results = [
        Result(benchmark="small_clips",
               figure=f"{JOBS} clips of {size / 1e6:.1f} MB on -c {JOBS}, yt-dlp helper, median jobs/min",
               value=rate["helper"], anchor=f"{named}, median jobs/min", anchor_value=rate[anchor],
               unit="jobs/min", note=f"higher is better; {every}"),
        Result(benchmark="small_clips", figure="peak PSS of the worker's process tree, helper, MB",
               value=peak["helper"][0] / 1e6, anchor=f"the same, {named}, MB", anchor_value=peak[anchor][0] / 1e6,
               unit="MB", note="lower is better; peak summed RSS: "
                               + ", ".join(f"{mode} {peak[mode][1] / 1e6:.0f} MB" for mode in figures)),
    ]
    if MAIN_REV:
        results.append(Result(benchmark="small_clips", figure="plain subprocess per job (this tree), jobs/min",
                              value=rate["plain"], anchor=f"{named}, median jobs/min", anchor_value=rate[anchor],
                              unit="jobs/min", note="what the rest of this tree's changes give without the helper"))
    return results
