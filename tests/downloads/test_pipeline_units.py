"""Unit tests with mocks, as the pipeline's design asks: subprocess, S3 client and database client mocked,
and every call checked to carry the scene's primary key."""

from __future__ import annotations

import asyncio
import itertools
import re
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pytest
from botocore.exceptions import ClientError

from downloads import egress, media, pipeline, storage, ytdlp
from downloads.exceptions import InternalError, MediastoreError, NotFoundError, StorageError, TooLargeError
from scenes import lifecycle
from scenes.models import Scene

SCENE_ID = "65f0c0ffee0000000000abcd"


@pytest.fixture(autouse=True)
def _public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real DNS here: every name is a public address, so the start-of-job policy check passes."""
    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["1.1.1.1"])


class FakeStream:
    def __init__(self, lines: list[str], *, hang: asyncio.Event | None = None) -> None:
        self._lines = [line.encode() + b"\n" for line in lines]
        self._hang = hang

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    async def readline(self) -> bytes:
        if self._lines:
            await asyncio.sleep(0)
            return self._lines.pop(0)
        if self._hang is not None:
            await self._hang.wait()
        return b""


class FakeProcess:
    def __init__(self, *, stdout: list[str], stderr: list[str], returncode: int, hang: bool = False) -> None:
        self.pid = 424242
        self._killed = asyncio.Event()
        self.stdout = FakeStream(stdout, hang=self._killed if hang else None)
        self.stderr = FakeStream(stderr)
        self._final = returncode
        self.returncode: int | None = None

    def kill(self) -> None:
        self._killed.set()

    async def wait(self) -> int:
        if self._final < 0:
            await self._killed.wait()
        self.returncode = self._final
        return self._final


def _result_line(path: Path) -> str:
    return f'{ytdlp.RESULT_MARK} {{"filepath": "{path}", "title": "A title", "ext": "mp4"}}'


@pytest.fixture
def no_kill():
    with mock.patch("downloads.ytdlp.kill_group") as kill:
        yield kill


async def test_ytdlp_success_returns_the_file(tmp_path: Path, no_kill):
    target = tmp_path / "media.mp4"
    target.write_bytes(b"x" * 10)
    process = FakeProcess(stdout=[f"{ytdlp.PROGRESS_MARK} downloading 5 10 NA", _result_line(target)], stderr=[],
                          returncode=0)
    seen: list[ytdlp.Progress] = []

    async def on_progress(progress: ytdlp.Progress) -> None:
        seen.append(progress)

    with mock.patch("asyncio.create_subprocess_exec", return_value=process) as spawn:
        result = await ytdlp.download("https://example.com/v", job_dir=tmp_path, on_progress=on_progress)

    assert result.path == target
    assert result.title == "A title"
    assert [p.percent for p in seen] == [50.0]
    argv = spawn.call_args.args
    assert argv[-2:] == ("--", "https://example.com/v")
    assert "--ignore-config" in argv
    assert "--exec" not in argv
    assert spawn.call_args.kwargs["start_new_session"] is True


async def test_ytdlp_url_that_looks_like_an_option_stays_after_the_separator(tmp_path: Path):
    argv = ytdlp.build_argv("--exec=touch /tmp/pwned", job_dir=tmp_path, max_filesize=10)

    assert argv.index("--exec=touch /tmp/pwned") == argv.index("--") + 1
    assert argv.count("--exec=touch /tmp/pwned") == 1


async def test_ytdlp_failure_is_classified_from_stderr(tmp_path: Path, no_kill):
    process = FakeProcess(stdout=[], stderr=["WARNING: falling back",
                                             "ERROR: [generic] x: Unable to download webpage: HTTP Error 404"],
                          returncode=1)

    with mock.patch("asyncio.create_subprocess_exec", return_value=process), pytest.raises(NotFoundError) as error:
        await ytdlp.download("https://example.com/x", job_dir=tmp_path)

    assert "HTTP Error 404" in error.value.detail


async def test_ytdlp_exit_zero_without_a_result_is_not_success(tmp_path: Path, no_kill):
    process = FakeProcess(stdout=["[generic] Extracting URL"], stderr=[], returncode=0)

    with (
        mock.patch("asyncio.create_subprocess_exec", return_value=process),
        pytest.raises(InternalError, match="0 files") as error,
    ):
        await ytdlp.download("https://example.com/x", job_dir=tmp_path)

    assert error.value.code == "internal_error"


async def test_hls_download_without_a_total_is_stopped_by_the_folder_size(tmp_path: Path, settings, no_kill):
    # HLS fragments carry no total size, and yt-dlp's --max-filesize does not apply to them: the job
    # folder's size is what stops it.
    settings.MEDIA_MAX_FILESIZE = 1000
    (tmp_path / "media.part-Frag1").write_bytes(b"x" * 2000)
    process = FakeProcess(stdout=[f"{ytdlp.PROGRESS_MARK} downloading 2000 NA NA"], stderr=[], returncode=-9,
                          hang=True)
    no_kill.side_effect = lambda pid: process.kill()

    with mock.patch("asyncio.create_subprocess_exec", return_value=process), pytest.raises(TooLargeError):
        await ytdlp.download("https://example.com/stream.m3u8", job_dir=tmp_path)

    no_kill.assert_called_with(process.pid)


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart")


def _s3_client() -> mock.AsyncMock:
    client = mock.AsyncMock()
    client.create_multipart_upload.return_value = {"UploadId": "up-1"}
    client.upload_part.side_effect = lambda **kw: {"ETag": f"etag-{kw['PartNumber']}"}
    return client


async def test_s3_upload_streams_parts_under_the_scene_key(tmp_path: Path):
    path = tmp_path / "media.mp4"
    path.write_bytes(b"a" * (storage.PART_SIZE + 10))
    client = _s3_client()
    key = storage.media_key(SCENE_ID, ".mp4")

    with mock.patch("downloads.storage.s3_client", return_value=client):
        await storage.S3Storage("bucket").upload(path, key=key, content_type="video/mp4")

    assert key == f"scenes/{SCENE_ID}/media.mp4"
    assert [c.kwargs["PartNumber"] for c in client.upload_part.await_args_list] == [1, 2]
    assert len(client.upload_part.await_args_list[0].kwargs["Body"]) == storage.PART_SIZE
    assert all(c.kwargs["Key"] == key for c in client.upload_part.await_args_list)
    client.complete_multipart_upload.assert_awaited_once()
    client.abort_multipart_upload.assert_not_awaited()


def test_crc32_checksum_is_base64_of_the_big_endian_crc():
    from botocore.httpchecksum import Crc32Checksum

    reference = Crc32Checksum()
    reference.update(b"a" * 1000)

    assert storage.crc32_checksum(b"123456789") == "y/Q5Jg=="  # the CRC-32 check value, 0xCBF43926
    assert storage.crc32_checksum(b"") == "AAAAAA=="
    assert storage.crc32_checksum(b"a" * 1000) == reference.b64digest()  # what botocore would have sent


async def test_s3_upload_declares_crc32_and_every_part_carries_its_own(tmp_path: Path, settings):
    settings.R2_CHECKSUM_ALGORITHM = "CRC32"
    path = tmp_path / "media.mp4"
    path.write_bytes(b"a" * storage.PART_SIZE + b"b" * 10)
    client = _s3_client()

    with mock.patch("downloads.storage.s3_client", return_value=client):
        await storage.S3Storage("bucket").upload(path, key="k", content_type="video/mp4")

    assert client.create_multipart_upload.await_args.kwargs["ChecksumAlgorithm"] == "CRC32"
    sent = {c.kwargs["PartNumber"]: c.kwargs for c in client.upload_part.await_args_list}
    assert sent[1]["ChecksumCRC32"] == storage.crc32_checksum(b"a" * storage.PART_SIZE)
    assert sent[2]["ChecksumCRC32"] == storage.crc32_checksum(b"b" * 10)
    completed = client.complete_multipart_upload.await_args.kwargs["MultipartUpload"]["Parts"]
    assert completed == [{"ETag": "etag-1", "PartNumber": 1, "ChecksumCRC32": sent[1]["ChecksumCRC32"]},
                         {"ETag": "etag-2", "PartNumber": 2, "ChecksumCRC32": sent[2]["ChecksumCRC32"]}]


async def test_s3_upload_without_an_algorithm_is_the_plain_multipart_upload(tmp_path: Path, settings):
    settings.R2_CHECKSUM_ALGORITHM = ""
    path = tmp_path / "media.mp4"
    path.write_bytes(b"a" * 10)
    client = _s3_client()

    with mock.patch("downloads.storage.s3_client", return_value=client):
        await storage.S3Storage("bucket").upload(path, key="k", content_type="video/mp4")

    assert "ChecksumAlgorithm" not in client.create_multipart_upload.await_args.kwargs
    assert "ChecksumCRC32" not in client.upload_part.await_args.kwargs
    assert client.complete_multipart_upload.await_args.kwargs["MultipartUpload"] == {
        "Parts": [{"ETag": "etag-1", "PartNumber": 1}]}


async def test_s3_upload_falls_back_to_no_checksum_when_the_store_refuses_it(tmp_path: Path, settings):
    settings.R2_CHECKSUM_ALGORITHM = "CRC32"
    path = tmp_path / "media.mp4"
    path.write_bytes(b"a" * 10)
    client = _s3_client()
    client.create_multipart_upload.side_effect = [_client_error(501, "NotImplemented"), {"UploadId": "up-2"}]

    with mock.patch("downloads.storage.s3_client", return_value=client):
        await storage.S3Storage("bucket").upload(path, key="k", content_type="video/mp4")

    assert "ChecksumAlgorithm" not in client.create_multipart_upload.await_args_list[1].kwargs
    assert "ChecksumCRC32" not in client.upload_part.await_args.kwargs
    assert client.complete_multipart_upload.await_args.kwargs["UploadId"] == "up-2"


async def test_s3_upload_refused_at_the_start_is_translated_and_not_tried_twice(tmp_path: Path, settings):
    settings.R2_CHECKSUM_ALGORITHM = "CRC32"
    path = tmp_path / "media.mp4"
    path.write_bytes(b"a" * 10)
    client = _s3_client()
    client.create_multipart_upload.side_effect = _client_error(403, "AccessDenied")

    with mock.patch("downloads.storage.s3_client", return_value=client), pytest.raises(StorageError) as error:
        await storage.S3Storage("bucket").upload(path, key="k", content_type="video/mp4")

    assert error.value.retryable is False
    assert "AccessDenied" in error.value.detail
    client.create_multipart_upload.assert_awaited_once()
    client.upload_part.assert_not_awaited()


@pytest.mark.parametrize(("status", "retryable"), [(403, False), (503, True)])
async def test_s3_upload_failure_aborts_and_translates(tmp_path: Path, status: int, retryable: bool):
    path = tmp_path / "media.mp4"
    path.write_bytes(b"a" * 10)
    client = _s3_client()
    client.upload_part.side_effect = _client_error(status, "Nope")

    with mock.patch("downloads.storage.s3_client", return_value=client), pytest.raises(StorageError) as error:
        await storage.S3Storage("bucket").upload(path, key=storage.media_key(SCENE_ID, "mp4"), content_type="x")

    assert error.value.retryable is retryable
    assert f"HTTP {status}" in error.value.detail
    client.abort_multipart_upload.assert_awaited_once_with(Bucket="bucket", Key=f"scenes/{SCENE_ID}/media.mp4",
                                                           UploadId="up-1")


async def test_s3_upload_cancelled_midway_aborts(tmp_path: Path):
    path = tmp_path / "media.mp4"
    path.write_bytes(b"a" * 10)
    client = _s3_client()
    part_started = asyncio.Event()

    async def slow_part(**_: object) -> dict[str, str]:
        part_started.set()
        await asyncio.sleep(60)
        return {"ETag": "never"}

    client.upload_part.side_effect = slow_part
    with mock.patch("downloads.storage.s3_client", return_value=client):
        upload = asyncio.create_task(storage.S3Storage("bucket").upload(path, key="k", content_type="x"))
        await part_started.wait()
        upload.cancel()  # what a soft or hard time limit does
        with pytest.raises(asyncio.CancelledError):
            await upload

    client.abort_multipart_upload.assert_awaited_once_with(Bucket="bucket", Key="k", UploadId="up-1")
    client.complete_multipart_upload.assert_not_awaited()


@pytest.fixture
def mongo_scenes(settings):
    """The worker's MongoDB path against a mocked PyMongo async client: one collection for every table, and
    a session whose transaction records what ran inside it."""
    settings.DATABASE_IS_MONGODB = True
    collection = mock.AsyncMock()
    collection.find = mock.MagicMock(return_value=_AsyncCursor([]))  # no webhook endpoints
    database = mock.MagicMock()
    database.__getitem__.return_value = collection
    session = mock.MagicMock()
    session.in_transaction = []
    transaction = mock.MagicMock()
    transaction.__aenter__ = mock.AsyncMock(side_effect=lambda: session.in_transaction.append("started"))
    transaction.__aexit__ = mock.AsyncMock(side_effect=lambda *exc: session.in_transaction.append("committed"))
    session.start_transaction = mock.AsyncMock(return_value=transaction)
    session.__aenter__ = mock.AsyncMock(return_value=session)
    session.__aexit__ = mock.AsyncMock(return_value=False)
    database.client.start_session = mock.MagicMock(return_value=session)
    database.client.admin.command = mock.AsyncMock(return_value={"setName": "rs0"})  # a replica set
    with mock.patch("scenes.rows.mongo_database", mock.AsyncMock(return_value=database)), \
            mock.patch.dict("scenes.rows._TRANSACTIONS", clear=True):
        yield collection, database


class _AsyncCursor:
    def __init__(self, documents: list[dict]) -> None:
        self._documents = list(documents)

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if not self._documents:
            raise StopAsyncIteration
        return self._documents.pop(0)


def _document(**fields) -> dict:
    base = {"_id": SCENE_ID, "status": "processing", "source_url": "https://e.com/v", "title": "", "attempts": 1,
            "owner_id": 7, "project_id": None, "stage": "downloading", "progress": 0}
    return {**base, **fields}


async def test_mongodb_claim_updates_by_primary_key_and_status(mongo_scenes):
    collection, database = mongo_scenes
    collection.find_one.return_value = {"_id": SCENE_ID, "status": "queued", "source_url": "https://e.com/v",
                                        "title": "", "attempts": 0, "updated_at": None, "cancel_requested_at": None}
    collection.find_one_and_update.return_value = _document()

    claim = await lifecycle.claim(scene_id=SCENE_ID, stale_after=300, max_attempts=3)

    assert claim.claimed
    assert claim.source_url == "https://e.com/v"
    database.__getitem__.assert_any_call(Scene._meta.db_table)
    assert collection.find_one.await_args.args[0] == {"_id": SCENE_ID}
    query, operation = collection.find_one_and_update.await_args.args
    assert query == {"_id": SCENE_ID, "status": {"$in": ["queued"]}, "updated_at": None}
    assert operation["$inc"] == {"attempts": 1}
    assert operation["$set"]["status"] == "processing"


async def test_mongodb_announced_change_looks_up_endpoints_and_records_deliveries_in_its_transaction(mongo_scenes):
    collection, database = mongo_scenes
    collection.find_one_and_update.return_value = _document(status="completed", stage="", progress=100)
    collection.find = mock.MagicMock(return_value=_AsyncCursor([
        {"_id": "e1", "events": ["scene.completed"]}, {"_id": "e2", "events": ["scene.failed"]},
        {"_id": "e3", "events": []}]))
    session = database.client.start_session.return_value

    with mock.patch("scenes.webhooks.send") as send:
        assert await lifecycle.complete(scene_id=SCENE_ID, attempt=1, fields={"storage_key": "k"})

    endpoint_query = collection.find.call_args.args[0]
    assert endpoint_query == {"owner_id": 7, "enabled": True, "project_id": {"$in": [None, None]}}
    assert collection.find.call_args.kwargs["session"] is session
    documents = collection.insert_many.await_args.args[0]
    assert [d["endpoint_id"] for d in documents] == ["e1", "e3"]
    assert {d["event"] for d in documents} == {"scene.completed"}
    assert documents[0]["payload"]["data"]["status"] == "completed"
    assert collection.insert_many.await_args.kwargs["session"] is session
    assert collection.find_one_and_update.await_args.kwargs["session"] is session
    assert session.in_transaction == ["started", "committed"]
    # The tasks go out after the commit, one per delivery.
    assert [c.args[0] for c in send.call_args_list] == [d["_id"] for d in documents]


async def test_mongodb_standalone_server_writes_the_change_and_deliveries_without_a_transaction(mongo_scenes):
    collection, database = mongo_scenes
    database.client.admin.command.return_value = {"isWritablePrimary": True}  # no setName: standalone
    collection.find_one_and_update.return_value = _document(status="failed", stage="", error_code="not_found")
    collection.find = mock.MagicMock(return_value=_AsyncCursor([{"_id": "e1", "events": []}]))
    session = database.client.start_session.return_value

    with mock.patch("scenes.webhooks.send"):
        assert await lifecycle.fail(scene_id=SCENE_ID, attempt=1, code="not_found", message="m")

    session.start_transaction.assert_not_awaited()
    assert [d["event"] for d in collection.insert_many.await_args.args[0]] == ["scene.failed"]


async def test_mongodb_update_that_matches_nothing_reports_failure(mongo_scenes):
    collection, _ = mongo_scenes
    collection.find_one_and_update.return_value = None

    assert await lifecycle.heartbeat(scene_id=SCENE_ID, attempt=2, progress=40) is False
    query, operation = collection.find_one_and_update.await_args.args
    assert query == {"_id": SCENE_ID, "status": {"$in": ["processing"]}, "attempts": 2, "cancel_requested_at": None}
    assert operation["$set"]["progress"] == 40
    collection.insert_many.assert_not_awaited()


async def test_mongodb_plain_heartbeat_is_one_update_without_a_transaction(mongo_scenes):
    collection, database = mongo_scenes
    collection.update_one.return_value = mock.Mock(matched_count=1)

    assert await lifecycle.heartbeat(scene_id=SCENE_ID, attempt=2) is True
    database.client.start_session.assert_not_called()


async def test_mongodb_error_from_the_driver_propagates(mongo_scenes):
    from pymongo.errors import ServerSelectionTimeoutError

    collection, _ = mongo_scenes
    collection.find_one_and_update.side_effect = ServerSelectionTimeoutError("no server")

    with pytest.raises(ServerSelectionTimeoutError):
        await lifecycle.fail(scene_id=SCENE_ID, attempt=1, code="timeout", message="m")


async def test_thumbnail_failure_leaves_no_thumbnail(tmp_path: Path, caplog):
    info = media.MediaInfo(duration=3.0, width=320, height=240, size_bytes=10, video_codec="h264",
                           audio_codec="aac", content_type="video/mp4")

    with mock.patch("downloads.media.run_captured", return_value=(1, b"", b"Invalid data found")):
        result = await media.thumbnail(tmp_path / "media.mp4", info, into=tmp_path)

    assert result is None
    assert "Invalid data found" in caplog.text


async def test_thumbnail_seeks_inside_a_short_clip(tmp_path: Path):
    info = media.MediaInfo(duration=0.5, width=1, height=1, size_bytes=1, video_codec="h264", audio_codec="",
                           content_type="video/mp4")

    with mock.patch("downloads.media.run_captured", return_value=(1, b"", b"")) as run:
        await media.thumbnail(tmp_path / "m.mp4", info, into=tmp_path)

    argv = run.await_args.args[0]
    assert float(argv[argv.index("-ss") + 1]) < 0.5


def test_probe_without_streams_is_invalid_media(tmp_path: Path):
    from downloads.exceptions import InvalidMediaError

    with pytest.raises(InvalidMediaError):
        media._parse_probe({"streams": [{"codec_type": "data"}], "format": {}}, tmp_path / "x.mp4", 1)


async def test_pipeline_calls_carry_the_scene_primary_key(tmp_path: Path):
    claim = lifecycle.Claim(claimed=True, reason="claimed", source_url="https://e.com/v", attempts=1)
    media_path = tmp_path / "media.mp4"
    media_path.write_bytes(b"v")
    info = media.MediaInfo(duration=3.0, width=320, height=240, size_bytes=1, video_codec="h264",
                           audio_codec="aac", content_type="video/mp4")
    store = mock.AsyncMock()
    with (
        mock.patch.object(lifecycle, "claim", mock.AsyncMock(return_value=claim)) as claim_call,
        mock.patch.object(lifecycle, "heartbeat", mock.AsyncMock(return_value=True)) as heartbeat,
        mock.patch.object(lifecycle, "complete", mock.AsyncMock(return_value=True)) as complete,
        mock.patch.object(ytdlp, "download", mock.AsyncMock(return_value=ytdlp.DownloadResult(media_path, "T"))),
        mock.patch.object(media, "probe", mock.AsyncMock(return_value=info)),
        mock.patch.object(media, "thumbnail", mock.AsyncMock(return_value=None)),
        mock.patch.object(storage, "get_storage", return_value=store),
    ):
        outcome = await pipeline.ingest(scene_id=SCENE_ID)

    assert outcome == "completed"
    assert claim_call.await_args.kwargs["scene_id"] == SCENE_ID
    assert {c.kwargs["scene_id"] for c in heartbeat.await_args_list} == {SCENE_ID}
    assert complete.await_args.kwargs["scene_id"] == SCENE_ID
    assert complete.await_args.kwargs["fields"]["thumbnail_key"] == ""
    assert complete.await_args.kwargs["fields"]["title"] == "T"
    store.upload.assert_awaited_once_with(media_path, key=f"scenes/{SCENE_ID}/media.mp4", content_type="video/mp4")


@pytest.mark.parametrize(("line", "code"), [
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", "unavailable"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable"),
    ("ERROR: [generic] x: Unable to download webpage: HTTP Error 403: Forbidden", "unavailable"),
    ("ERROR: [youtube] abc: This live event will begin in 3 hours", "live_stream"),
    ("ERROR: [generic] x: Unable to download webpage: <urlopen error [Errno 111] Connection refused>",
     "network_error"),
    ("ERROR: unable to download video data: HTTP Error 503: Service Unavailable", "network_error"),
    ("ERROR: [download] Got error: Read timed out.", "timeout"),
    ("ERROR: something nobody has seen before", "internal_error"),
    ("ERROR: [generic] missing: Unable to download webpage: HTTP Error 404: File not found (caused by "
     "<HTTPError 404: File not found>)", "not_found"),
    ("ERROR: [generic] Unable to download webpage: No media found", "no_media"),
    ("ERROR: [reddit] abc: No video formats found!", "no_media"),
])
def test_ytdlp_errors_are_classified(line: str, code: str):
    error = ytdlp.classify_error(["WARNING: noise", line])

    assert error.code == code
    assert "\x1b" not in error.message
    # The person reads our sentence; yt-dlp's own words are the engineers' detail.
    assert "[generic]" not in error.message
    assert "ERROR" not in error.message
    assert error.detail == line.removeprefix("ERROR: ")


def test_error_detail_is_cleaned_of_control_characters():
    error = ytdlp.classify_error(["ERROR: Unsupported URL: http://x/\x1b[31mred\x07"])

    assert error.code == "unsupported_url"
    assert "\x1b" not in error.detail
    assert "\x07" not in error.detail


def _every_error_class() -> list[type]:
    from downloads import exceptions

    found, todo = [], [exceptions.MediastoreError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("error_type", _every_error_class(), ids=lambda cls: cls.__name__)
def test_every_code_has_a_human_message(error_type):
    message = error_type().message

    assert message[0].isupper()
    assert message.endswith(".")
    assert not re.search(r"/tmp|/var|/home|\[\w+\]|ERROR|Traceback|errno|HTTP Error|yt-dlp|ffprobe", message, re.I)
    assert len(message) <= 160


@pytest.mark.parametrize(("info", "code"), [
    ({"is_live": True}, "live_stream"),
    ({"live_status": "is_upcoming"}, "live_stream"),
    ({"duration": 5 * 3600}, "too_long"),
])
async def test_info_line_refuses_live_and_too_long_media(tmp_path: Path, no_kill, info: dict, code: str):
    import json as _json

    process = FakeProcess(stdout=[f"{ytdlp.INFO_MARK} {_json.dumps(info)}"], stderr=[], returncode=-9, hang=True)
    no_kill.side_effect = lambda pid: process.kill()

    with mock.patch("asyncio.create_subprocess_exec", return_value=process), pytest.raises(MediastoreError) as error:
        await ytdlp.download("https://example.com/x", job_dir=tmp_path)

    assert error.value.code == code


def test_job_folders_of_dead_workers_are_removed_at_start(tmp_path: Path):
    import os
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid belongs to no process now
    dead = tmp_path / f"{pipeline.JOB_DIR_PREFIX}{gone.pid}-abc-x"
    mine_before_restart = tmp_path / f"{pipeline.JOB_DIR_PREFIX}{os.getpid()}-def-y"
    alive_parent = tmp_path / f"{pipeline.JOB_DIR_PREFIX}{os.getppid()}-ghi-z"
    for folder in (dead, mine_before_restart, alive_parent):
        folder.mkdir()
        (folder / "media.part").write_bytes(b"x")

    removed = pipeline.remove_dead_job_dirs(tmp_dir=tmp_path)

    assert sorted(removed) == sorted([dead.name, mine_before_restart.name])
    assert alive_parent.exists()


def test_the_worker_ignores_time_limits_carried_by_the_message():
    from downloads.asynctask import WorkerLimitsRequest

    request = WorkerLimitsRequest.__new__(WorkerLimitsRequest)
    request.time_limits = (5, 4)  # what Celery copies in from the sender's configuration

    assert request.time_limits == (None, None)


async def test_a_full_disk_while_making_the_job_folder_is_disk_full(tmp_path: Path):
    import errno

    from downloads.exceptions import DiskFullError

    with mock.patch("tempfile.mkdtemp", side_effect=OSError(errno.ENOSPC, "No space left on device")), \
            pytest.raises(DiskFullError):
        await pipeline._make_job_dir("a" * 24)


async def test_an_unwritable_temp_folder_is_its_own_error_and_its_path_stays_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import errno
    import tempfile

    from downloads.exceptions import TempDirError

    with mock.patch("tempfile.mkdtemp", side_effect=PermissionError(errno.EACCES, "Permission denied")), \
            pytest.raises(TempDirError) as raised:
        await pipeline._make_job_dir("a" * 24)

    assert tempfile.gettempdir() not in raised.value.message
    assert f"{tempfile.gettempdir()}: Permission denied" in caplog.text


def _slow_download_ingest(reason: str | None):
    """``pipeline.ingest`` with a download that never ends, cancelled for ``reason`` after 0.1 s (None: the
    soft limit of the run does it); the lifecycle is mocked and returned for inspection."""
    from downloads import bridge

    claim = lifecycle.Claim(claimed=True, reason="claimed", source_url="https://e.com/v", attempts=1)
    calls = {name: mock.AsyncMock(return_value=True) for name in ("heartbeat", "fail", "release", "retry_later")}

    async def never_ends(*args, **kwargs):
        await asyncio.sleep(60)

    async def body():
        if reason is not None:
            state = bridge._run_state.get()
            asyncio.get_running_loop().call_later(0.1, state.cancel, reason)
        return await pipeline.ingest(scene_id=SCENE_ID)

    patched = ExitStack()
    for patch in [mock.patch.object(lifecycle, "claim", mock.AsyncMock(return_value=claim)),
                  mock.patch.object(ytdlp, "download", never_ends),
                  *(mock.patch.object(lifecycle, name, call) for name, call in calls.items())]:
        patched.enter_context(patch)
    return body, patched, calls


def test_soft_limit_fails_the_scene_as_timeout_and_ends_the_task_normally():
    from downloads import bridge

    body, patched, calls = _slow_download_ingest(None)
    with patched:
        outcome = bridge.run(body(), soft_limit=0.1)

    assert outcome == "failed"
    assert calls["fail"].await_args.kwargs["code"] == "timeout"
    assert "time limit" in calls["fail"].await_args.kwargs["message"]
    calls["release"].assert_not_awaited()


def test_shutdown_hands_the_scene_back_and_asks_for_the_task_again():
    from downloads import bridge
    from downloads.exceptions import RetryLater

    body, patched, calls = _slow_download_ingest(bridge.SHUTDOWN)
    with patched, pytest.raises(RetryLater) as later:
        bridge.run(body())

    assert later.value.countdown == pipeline.HAND_BACK_DELAY
    assert later.value.error.code == "worker_shutdown"
    calls["release"].assert_awaited_once_with(scene_id=SCENE_ID, attempt=1)
    calls["fail"].assert_not_awaited()


def test_hard_limit_fails_the_scene_and_lets_the_cancellation_through():
    from downloads import bridge

    body, patched, calls = _slow_download_ingest(bridge.HARD_LIMIT)
    with patched, pytest.raises(bridge.RunCancelled):
        bridge.run(body())

    assert calls["fail"].await_args.kwargs["code"] == "timeout"
    assert "hard time limit" in calls["fail"].await_args.kwargs["message"]


async def test_a_failed_heartbeat_write_does_not_end_the_heartbeat(settings):
    settings.MEDIA_STALE_AFTER = 0.03  # a heartbeat every 10 ms
    answers = [RuntimeError("database is locked"), True, True]
    beats = mock.AsyncMock(side_effect=answers + [True] * 100)

    with mock.patch.object(lifecycle, "heartbeat", beats):
        beating = asyncio.create_task(pipeline._keep_heartbeat(SCENE_ID, 1))
        await asyncio.sleep(0.1)
        beating.cancel()
        await asyncio.wait([beating])

    assert beats.await_count >= 3
    assert beating.cancelled()


async def test_a_run_that_lost_its_scene_stops_and_reports_it_moved(tmp_path: Path):
    from downloads import bridge

    claim = lifecycle.Claim(claimed=True, reason="claimed", source_url="https://e.com/v", attempts=1)

    async def slow_download(url, *, job_dir, on_progress, policy):
        await on_progress(ytdlp.Progress(downloaded_bytes=1, total_bytes=10, percent=10.0, stage="downloading"))
        await asyncio.sleep(60)

    with (
        mock.patch.object(lifecycle, "claim", mock.AsyncMock(return_value=claim)),
        mock.patch.object(lifecycle, "heartbeat", mock.AsyncMock(return_value=False)),  # taken over
        mock.patch.object(lifecycle, "exists", mock.AsyncMock(return_value=True)),
        mock.patch.object(lifecycle, "cancel_waiting", mock.AsyncMock(return_value=False)),
        mock.patch.object(ytdlp, "download", slow_download),
    ):
        outcome = await asyncio.wait_for(bridge._supervised(pipeline.ingest(scene_id=SCENE_ID), soft_limit=None,
                                                            executor=None, state=bridge._RunState()), 5)

    assert outcome == "moved"


async def test_a_jobs_origins_pass_the_start_check_and_reach_ytdlps_guard(tmp_path: Path, monkeypatch):
    # Given a scene whose URL is on an internal address (the web, in compose)
    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["172.18.0.5"])
    claim = lifecycle.Claim(claimed=True, reason="claimed", source_url="http://web:8000/check/sample/t.mp4",
                            attempts=1)
    media_path = tmp_path / "media.mp4"
    media_path.write_bytes(b"v")
    info = media.MediaInfo(duration=2.0, width=320, height=240, size_bytes=1, video_codec="h264",
                           audio_codec="aac", content_type="video/mp4")
    download = mock.AsyncMock(return_value=ytdlp.DownloadResult(media_path, "T"))
    with (
        mock.patch.object(lifecycle, "claim", mock.AsyncMock(return_value=claim)),
        mock.patch.object(lifecycle, "heartbeat", mock.AsyncMock(return_value=True)),
        mock.patch.object(lifecycle, "complete", mock.AsyncMock(return_value=True)),
        mock.patch.object(ytdlp, "download", download),
        mock.patch.object(media, "probe", mock.AsyncMock(return_value=info)),
        mock.patch.object(media, "thumbnail", mock.AsyncMock(return_value=None)),
        mock.patch.object(storage, "get_storage", return_value=mock.AsyncMock()),
    ):
        # When the task gives the job that origin
        outcome = await pipeline.ingest(scene_id=SCENE_ID, origins=("http://web:8000",))

    # Then the start-of-job check lets it through and yt-dlp's guard gets it, for that host and port only
    assert outcome == "completed"
    assert download.await_args.kwargs["policy"].origins == (("web", 8000),)


def test_titles_lose_bidi_overrides_and_zero_width_characters():
    spoofed = "invoice\u202egnp.exe\u200b\u2066x\u2069\ufeff\u0085"

    assert ytdlp.clean(spoofed) == "invoice gnp.exe  x"


def test_scene_ids_are_random_not_a_counter():
    from scenes.models import new_object_id

    ids = [new_object_id() for _ in range(50)]

    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    # ObjectId() would share its first 8 hex (the second) and count up in the last 6.
    assert len({i[:8] for i in ids}) > 45
    assert len({int(b[-6:], 16) - int(a[-6:], 16) for a, b in itertools.pairwise(ids)}) > 45


def test_the_size_limit_ignores_an_estimated_total_but_not_real_bytes():
    estimated = ytdlp.parse_progress(f"{ytdlp.PROGRESS_MARK} downloading 1000 NA 99999999")
    exact = ytdlp.parse_progress(f"{ytdlp.PROGRESS_MARK} downloading 1000 99999999 NA")

    assert estimated is not None
    assert estimated.total_is_estimate
    assert exact is not None
    assert not exact.total_is_estimate


def test_throughput_is_judged_on_the_high_water_mark_over_the_window():
    meter = ytdlp._Throughput(minimum=100, window=10)

    assert meter.too_slow(0, 0) is None
    assert meter.too_slow(5, 400) is None  # not a whole window yet
    assert meter.too_slow(9.5, 900) is None
    assert meter.too_slow(10, 950) == 950  # a whole window, and under 100 bytes per second
    steady = ytdlp._Throughput(minimum=100, window=10)
    # Parts deleted after a merge make the folder shrink: progress is the high-water mark, not a drop.
    assert [steady.too_slow(t, 2000 * t if t < 20 else 10) for t in range(21)] == [None] * 21


def test_the_folder_size_survives_files_vanishing_while_it_looks(tmp_path: Path):
    (tmp_path / "kept").write_bytes(b"x" * 10)
    gone = tmp_path / "fragment"
    with mock.patch.object(Path, "rglob", return_value=iter([tmp_path / "kept", gone])):
        assert ytdlp._folder_size(tmp_path) == 10


def test_media_tools_run_under_the_memory_limit(settings):
    from downloads.subprocesses import memory_limited

    settings.MEDIA_CHILD_MEMORY = 123456789

    argv = memory_limited(["ffprobe", "x"])

    assert argv[1:] == ["--as=123456789", "--", "ffprobe", "x"]


def test_error_messages_do_not_show_the_workers_folders():
    import tempfile

    job = f"{tempfile.gettempdir()}/mediastore-job-1-abc-x1/media.f1.mp4"
    error = ytdlp.classify_error([f"ERROR: unable to open for writing: [Errno 13] Permission denied: '{job}'"])

    assert tempfile.gettempdir() not in error.message
    assert tempfile.gettempdir() not in error.detail
    assert "media.f1.mp4" in error.detail


@pytest.mark.parametrize(("title", "url", "expected"), [
    ("index", "https://cdn.example/shows/episode-12/hls/index.m3u8", "episode-12"),
    ("manifest", "https://cdn.example/clips/Sunset%20Run/manifest.mpd", "Sunset Run"),
    ("index", "https://cdn.example/hls/index.m3u8", "cdn.example"),
    ("A real title", "https://cdn.example/hls/index.m3u8", "A real title"),
    ("clip", "https://cdn.example/media/clip.mp4", "clip"),  # named after a file that means something
])
def test_an_untitled_manifest_is_named_after_its_last_meaningful_path_segment(title, url, expected):
    assert ytdlp.better_title(title, url) == expected


def test_the_whole_title_is_kept_when_ytdlp_shortens_it(tmp_path: Path):
    media = tmp_path / "media.mp4"
    media.write_bytes(b"x")
    run = ytdlp._Run(max_filesize=10, on_progress=None)
    run.results.append({"filepath": str(media), "title": "A long title that yt-dlp cut...",
                        "fulltitle": "A long title that yt-dlp cut short, whole here"})

    result = ytdlp._verdict(run, 0, "https://example.com/v", job_dir=tmp_path)

    assert result.title == "A long title that yt-dlp cut short, whole here"


async def test_an_unreadable_file_fails_in_words_with_ffprobes_reason_as_detail_without_the_path(tmp_path: Path):
    from downloads.exceptions import InvalidMediaError

    media_path = tmp_path / "mediastore-job-1-x" / "media.mp4"
    said = f"{media_path}: Invalid data found when processing input".encode()
    with mock.patch("downloads.media.run_captured", return_value=(1, b"", said)), \
            pytest.raises(InvalidMediaError) as error:
        await media.probe(media_path)

    assert error.value.message == InvalidMediaError.default_message
    assert error.value.detail == "ffprobe: media.mp4: Invalid data found when processing input"
    assert str(tmp_path) not in error.value.detail
