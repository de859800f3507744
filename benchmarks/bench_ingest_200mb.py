"""A 200 MB file end to end (download, probe, thumbnail, upload, status) vs raw yt-dlp CLI + boto3 upload_file.

Both download the same file from the same loopback server and upload to the same S3 server, in one run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Result, ingest_and_wait, looped_video, s3_stack, scratch_dir
from tests.harness.media import MediaServer, generate_media
from tests.harness.services import s3_test_client

SIZE = 200 * 1024 * 1024


def _raw_baseline(url: str, workdir: Path, endpoint: str) -> float:
    ytdlp = str(Path(sys.executable).with_name("yt-dlp"))
    out = workdir / "raw"
    out.mkdir()
    started = time.perf_counter()
    subprocess.run([ytdlp, "--ignore-config", "--quiet", "-P", str(out), "-o", "media.%(ext)s", "--", url],
                   check=True, timeout=600)
    client = s3_test_client(endpoint)
    client.upload_file(str(out / "media.mp4"), "bench", "raw/media.mp4")
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def run(*, database_url: str) -> list[Result]:
    with scratch_dir("ingest-200mb") as tmp:
        workdir = Path(tmp)
        files = generate_media(workdir / "media")
        looped_video(files.large, files.root / "big.mp4", at_least=SIZE)
        size = (files.root / "big.mp4").stat().st_size
        with MediaServer(files) as server, s3_stack(concurrency=10, workdir=workdir, database_url=database_url,
                                                    env={"MEDIA_MAX_FILESIZE": "1G"}) as (endpoint, _, worker):
            url = server.url("big.mp4")
            raw = _raw_baseline(url, workdir, endpoint)
            started = time.perf_counter()
            ingest_and_wait([url], timeout=600)
            ours = time.perf_counter() - started
            steps = [line for line in worker.log().splitlines() if " stored " in line and "bytes at" in line]
            print(steps[-1] if steps else "no step timings in the worker log", file=sys.stderr)
    return [Result(
        benchmark="ingest_200mb",
        figure=f"mediastore end to end, {size / 1e6:.0f} MB, s",
        value=ours,
        anchor="yt-dlp CLI + boto3 upload_file, s",
        anchor_value=raw,
        unit="s",
        note="ours adds queueing, ffprobe, thumbnail and status writes",
    )]
