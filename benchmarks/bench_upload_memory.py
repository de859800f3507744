"""Worker peak RSS while ingesting a 1 GB file vs a 10 MB file: uploads stream in fixed-size parts."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Result, ingest_and_wait, looped_video, s3_stack, scratch_dir
from tests.harness.media import MediaServer, generate_media


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _peak_for(url: str, workdir: Path, database_url: str) -> int:
    with s3_stack(concurrency=10, workdir=workdir, database_url=database_url,
                  env={"MEDIA_MAX_FILESIZE": "2G"}) as (_, _, worker):
        ingest_and_wait([url], timeout=900)
        return _peak_rss_kib(worker.process.pid)


def run(*, database_url: str) -> list[Result]:
    with scratch_dir("upload-memory") as tmp:
        workdir = Path(tmp)
        files = generate_media(workdir / "media")
        small = looped_video(files.large, files.root / "small.mp4", at_least=10 * 1024 * 1024)
        big = looped_video(files.large, files.root / "big.mp4", at_least=1024 * 1024 * 1024)
        small_size, big_size = small.stat().st_size, big.stat().st_size
        with MediaServer(files) as server:
            small_peak = _peak_for(server.url("small.mp4"), workdir / "small", database_url)
            big_peak = _peak_for(server.url("big.mp4"), workdir / "big", database_url)
    return [Result(
        benchmark="upload_memory",
        figure=f"worker peak RSS, {big_size / 1e9:.2f} GB file, MiB",
        value=big_peak / 1024,
        anchor=f"worker peak RSS, {small_size / 1e6:.0f} MB file, MiB",
        anchor_value=small_peak / 1024,
        unit="MiB",
        note="ideal 1.0: memory does not grow with file size",
    )]
