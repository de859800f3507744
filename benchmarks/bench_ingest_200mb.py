"""A 200 MB file end to end (download, probe, thumbnail, upload, status) vs raw yt-dlp CLI + boto3 upload_file.

Both download the same file from the same loopback server and upload to the same S3 server, in one run:
three rounds, ours and the anchor interleaved (the order swapped each round), medians compared and every raw
number printed. Each round's objects are deleted, so no run pays for a fuller S3 server than the others.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Result, ingest_and_wait, looped_video, s3_stack, scratch_dir
from tests.harness.media import MediaServer, generate_media
from tests.harness.services import s3_test_client

SIZE = 200 * 1024 * 1024
ROUNDS = 3


def _raw_baseline(url: str, out: Path, endpoint: str) -> float:
    ytdlp = str(Path(sys.executable).with_name("yt-dlp"))
    out.mkdir()
    started = time.perf_counter()
    subprocess.run([ytdlp, "--ignore-config", "--quiet", "-P", str(out), "-o", "media.%(ext)s", "--", url],
                   check=True, timeout=600)
    client = s3_test_client(endpoint)
    client.upload_file(str(out / "media.mp4"), "bench", "raw/media.mp4")
    elapsed = time.perf_counter() - started
    client.close()
    (out / "media.mp4").unlink()
    return elapsed


def _ours(url: str) -> float:
    started = time.perf_counter()
    ingest_and_wait([url], timeout=600)
    return time.perf_counter() - started


def _empty_bucket(endpoint: str) -> None:
    client = s3_test_client(endpoint)
    keys = [item["Key"] for item in client.list_objects_v2(Bucket="bench").get("Contents", [])]
    if keys:
        client.delete_objects(Bucket="bench", Delete={"Objects": [{"Key": key} for key in keys]})
    client.close()


def run(*, database_url: str) -> list[Result]:
    with scratch_dir("ingest-200mb") as tmp:
        workdir = Path(tmp)
        files = generate_media(workdir / "media")
        looped_video(files.large, files.root / "big.mp4", at_least=SIZE)
        size = (files.root / "big.mp4").stat().st_size
        with MediaServer(files) as server, s3_stack(concurrency=10, workdir=workdir, database_url=database_url,
                                                    env={"MEDIA_MAX_FILESIZE": "1G"}) as (endpoint, _, worker):
            url = server.url("big.mp4")
            raws: list[float] = []
            ours: list[float] = []
            for round_ in range(ROUNDS):
                for which in ("anchor", "ours") if round_ % 2 == 0 else ("ours", "anchor"):
                    if which == "anchor":
                        raws.append(_raw_baseline(url, workdir / f"raw-{round_}", endpoint))
                    else:
                        ours.append(_ours(url))
                    _empty_bucket(endpoint)
                print(f"round {round_ + 1}: ours {ours[-1]:.3f} s, anchor {raws[-1]:.3f} s", file=sys.stderr)
            steps = [line for line in worker.log().splitlines() if " stored " in line and "bytes at" in line]
            print("\n".join(steps) if steps else "no step timings in the worker log", file=sys.stderr)
    raw_numbers = f"ours {', '.join(f'{t:.2f}' for t in ours)}; anchor {', '.join(f'{t:.2f}' for t in raws)}"
    return [Result(
        benchmark="ingest_200mb",
        figure=f"mediastore end to end, {size / 1e6:.0f} MB, median of {ROUNDS}, s",
        value=statistics.median(ours),
        anchor="yt-dlp CLI + boto3 upload_file, median, s",
        anchor_value=statistics.median(raws),
        unit="s",
        note=f"ours adds queueing, ffprobe, thumbnail and status writes; {raw_numbers}",
    )]
