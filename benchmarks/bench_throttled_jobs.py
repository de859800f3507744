"""100 jobs from a throttled source on one worker -c 100 vs one job alone: does the worker overlap them?"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Result, ingest_and_wait, s3_stack, scratch_dir
from tests.harness.media import MediaServer, generate_media

JOBS = 100
RATE = 100 * 1024  # bytes/s per job: the 0.3 MB test video takes ~3 s


def run(*, database_url: str) -> list[Result]:
    with scratch_dir("throttled-jobs") as tmp:
        workdir = Path(tmp)
        files = generate_media(workdir / "media")
        with MediaServer(files) as server, s3_stack(concurrency=JOBS, workdir=workdir,
                                                    database_url=database_url) as _:
            def url(i: int) -> str:
                return server.url(f"throttled.mp4?rate={RATE}&file=video.mp4&job={i}")

            ingest_and_wait([url(-1)], timeout=120)  # warm-up
            started = time.perf_counter()
            ingest_and_wait([url(0)], timeout=120)
            alone = time.perf_counter() - started
            started = time.perf_counter()
            ingest_and_wait([url(i) for i in range(1, JOBS + 1)], timeout=900)
            together = time.perf_counter() - started
    return [Result(
        benchmark="throttled_jobs",
        figure=f"{JOBS} throttled jobs on -c {JOBS}, wall s",
        value=together,
        anchor="1 job alone, wall s",
        anchor_value=alone,
        unit="s",
        note=f"ideal 1.0, serial {JOBS}; 2 cores start {JOBS} yt-dlp + ffmpeg processes",
    )]
