"""The yt-dlp helper on a plain asyncio loop: each job a forked child of its own, the helper's death."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from downloads import egress, ytdlp, ytdlp_guard, ytdlp_helper
from downloads.subprocesses import kill_group
from downloads.ytdlp_helper import ForkedProcess, Helper, HelperUnavailable
from tests.harness.processes import process_table, silent_port, ytdlp_helpers
from tests.harness.services import REPO_ROOT


@pytest.fixture
async def helper() -> AsyncIterator[Helper]:
    async with Helper.running() as running:
        yield running


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An HTTP server that never answers: a job fetching from it waits."""
    with silent_port() as port:
        yield f"http://127.0.0.1:{port}/video.mp4"


LOOPBACK = egress.Policy.build(networks=["127.0.0.1/32"], hosts=[])


async def _spawn(helper: Helper, *args: str, policy: egress.Policy | None = None) -> ForkedProcess:
    return await helper.spawn(list(args), env=ytdlp.guard_env(policy))


async def _waiting(helper: Helper, url: str) -> ForkedProcess:
    return await _spawn(helper, "--ignore-config", "--socket-timeout", "60", "--", url, policy=LOOPBACK)


async def _finish(process: ForkedProcess) -> tuple[bytes, bytes, int]:
    out, err = await asyncio.gather(process.stdout.read(), process.stderr.read())
    return out, err, await process.wait()


async def _ended(pid: int) -> bool:
    """Whether ``pid`` is gone (or a zombie) within 5 s: a SIGKILL is sent at once but takes effect a moment later."""
    for _ in range(50):
        if not any(p.pid == pid and p.state != "Z" for p in process_table()):
            return True
        await asyncio.sleep(0.1)
    return False


def _helper_pid() -> int:
    (pid,) = ytdlp_helpers(os.getpid())
    return pid


async def test_a_job_runs_yt_dlp_and_reports_its_output_and_exit_code(helper: Helper):
    out, err, code = await _finish(await _spawn(helper, "--version"))

    assert (code, err) == (0, b"")
    assert out.decode().strip()[:4].isdigit()  # yt-dlp's version, a date


async def test_a_failing_job_gives_yt_dlp_s_exit_code_and_error(helper: Helper):
    _, err, code = await _finish(await _spawn(helper, "--no-such-option"))

    assert code == 2
    assert b"no such option" in err


async def test_each_job_is_a_child_of_the_helper_leading_its_own_process_group(helper: Helper, silent_url: str):
    process = await _waiting(helper, silent_url)
    for _ in range(100):  # the child starts its session first thing after the fork
        info = next(p for p in process_table() if p.pid == process.pid)
        if info.pgrp == process.pid:
            break
        await asyncio.sleep(0.05)
    kill_group(process.pid)
    await _finish(process)

    assert info.ppid == _helper_pid()
    assert info.pgrp == process.pid


async def test_the_job_gets_the_guard_and_the_policy_it_was_given(helper: Helper):
    process = await _spawn(helper, "--ignore-config", "--", "http://10.0.0.1/video.mp4")

    _, err, code = await _finish(process)

    assert code != 0
    assert b"[mediastore-refused]" in err  # the settings' policy refuses a private address


async def test_a_killed_job_reports_the_signal(helper: Helper, silent_url: str):
    process = await _waiting(helper, silent_url)
    kill_group(process.pid)  # as the worker kills: the group once the child leads one, the child before

    *_, code = await _finish(process)

    assert code == -signal.SIGKILL


async def test_a_dead_helper_kills_its_running_jobs_and_the_next_job_starts_a_new_one(helper: Helper,
                                                                                       silent_url: str):
    waiting = await _waiting(helper, silent_url)
    first = _helper_pid()
    os.kill(first, signal.SIGKILL)

    *_, code = await _finish(waiting)
    out, _, again = await _finish(await _spawn(helper, "--version"))

    assert code == -signal.SIGKILL
    assert await _ended(waiting.pid)
    assert (again, helper.starts) == (0, 2)
    assert out.strip()
    assert _helper_pid() != first


async def test_a_helper_that_does_not_take_a_job_is_killed_and_the_next_job_starts_a_new_one(
        helper: Helper, monkeypatch: pytest.MonkeyPatch):
    await _finish(await _spawn(helper, "--version"))  # ready: past its imports
    stuck = _helper_pid()
    os.kill(stuck, signal.SIGSTOP)  # alive, but it reads nothing

    with monkeypatch.context() as patched:
        patched.setattr(ytdlp_helper, "FORK_TIMEOUT", 1.0)
        with pytest.raises(HelperUnavailable, match="did not take a job within 1 s"):
            await _spawn(helper, "--version")
    out, _, code = await _finish(await _spawn(helper, "--version"))

    assert await _ended(stuck)
    assert (code, helper.starts) == (0, 2)
    assert out.strip()


async def test_a_helper_that_does_not_get_ready_is_killed(helper: Helper, monkeypatch: pytest.MonkeyPatch):
    await helper.start()
    stuck = _helper_pid()
    os.kill(stuck, signal.SIGSTOP)  # still importing: a second at least
    monkeypatch.setattr(ytdlp_helper, "START_TIMEOUT", 1.0)

    with pytest.raises(HelperUnavailable, match="was not ready within 1 s"):
        await _spawn(helper, "--version")

    assert await _ended(stuck)


async def test_a_job_waiting_long_for_the_helper_to_be_ready_says_so(helper: Helper, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture):
    await helper.start()
    stuck = _helper_pid()
    os.kill(stuck, signal.SIGSTOP)  # still importing: a second at least
    monkeypatch.setattr(ytdlp_helper, "START_NOTICE", 0.3)
    monkeypatch.setattr(ytdlp_helper, "START_TIMEOUT", 1.5)

    with pytest.raises(HelperUnavailable, match=r"was not ready within 1\.5 s"):
        await _spawn(helper, "--version")

    said = [r.getMessage() for r in caplog.records if "is not ready after" in r.getMessage()]
    assert said == [f"yt-dlp helper {stuck} is not ready after 0.3 s; a job waits for it up to 1.5 s, then runs "
                    "yt-dlp as a subprocess of its own"]


async def test_jobs_waiting_at_once_for_room_on_the_socket_are_all_sent():
    # asyncio keeps one writer callback per socket: without the turn each takes, only the last was woken.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    filler = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(b"x" * 1000)
            filler += 1
    helper = Helper()
    senders = [asyncio.create_task(helper._send(ours, f"job {n}".encode(), [])) for n in (1, 2)]
    await asyncio.sleep(0.1)  # both waiting for room

    for _ in range(filler):
        theirs.recv(2000)
    await asyncio.wait_for(asyncio.gather(*senders), 5)

    assert [theirs.recv(2000), theirs.recv(2000)] == [b"job 1", b"job 2"]
    ours.close()
    theirs.close()


async def test_closing_the_helper_ends_it_and_its_jobs(silent_url: str):
    async with Helper.running() as helper:
        waiting = await _waiting(helper, silent_url)
        pid = _helper_pid()

    alive = {p.pid for p in process_table() if p.state != "Z"}
    assert pid not in alive
    assert waiting.pid not in alive


async def test_a_job_whose_exit_is_read_before_its_starter_runs_again_still_gets_its_exit_code():
    # Under load the reader takes the "forked" and the "exited" answer in one turn, before spawn() resumes.
    helper = Helper()
    forked = asyncio.get_running_loop().create_future()
    helper._forks[1] = forked

    helper._dispatch({"job": 1, "pid": 4242})
    helper._dispatch({"pid": 4242, "code": 3})

    pid, exited = forked.result()
    assert (pid, exited.result()) == (4242, 3)


def test_the_helper_s_warm_up_imports_the_extractors_a_job_uses(media_server, tmp_path):
    # An extractor's module imported in the child costs every job (the generic one pulls in YouTube's: 50 ms).
    argv = ytdlp.build_argv(media_server.url("video.mp4"), job_dir=tmp_path, max_filesize=10**9)
    argv = argv[argv.index(ytdlp_guard.bootstrap(str(REPO_ROOT))) + 1:]
    program = ("import json, os, sys; from downloads import ytdlp_forkserver, ytdlp_guard; "
               "args = json.loads(sys.argv[1]); ytdlp_forkserver._warm(); ytdlp_forkserver._warm_extractors(args); "
               "before = set(sys.modules); code = ytdlp_guard.main(args); "
               "print(json.dumps({'code': code, 'extractors': sorted(m for m in set(sys.modules) - before "
               "if m.startswith('yt_dlp.extractor'))}))")
    done = subprocess.run([sys.executable, "-c", program, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT, env=ytdlp.guard_env(LOOPBACK), check=False)

    assert json.loads(done.stdout.splitlines()[-1]) == {"code": 0, "extractors": []}, done.stderr[-2000:]


async def test_a_child_forked_for_a_job_already_given_up_is_killed(helper: Helper, silent_url: str,
                                                                   caplog: pytest.LogCaptureFixture):
    await _finish(await _spawn(helper, "--version"))  # ready: past its imports
    paused = _helper_pid()
    os.kill(paused, signal.SIGSTOP)  # the request is sent, and the answer waits
    # A child that writes nothing while it works (the media child, until it is done) is not ended by the pipes
    # its job closed: quiet, this yt-dlp would wait out its 60 s socket timeout.
    job = asyncio.ensure_future(_spawn(helper, "--ignore-config", "--quiet", "--no-warnings", "--socket-timeout",
                                       "60", "--", silent_url, policy=LOOPBACK))
    await asyncio.sleep(0.5)
    job.cancel()  # as a cancel or a time limit ends the job's wait
    with pytest.raises(asyncio.CancelledError):
        await job

    os.kill(paused, signal.SIGCONT)  # it forks the child and answers now
    for _ in range(100):
        given_up = [r for r in caplog.records if "was given up before the fork was answered" in r.getMessage()]
        if given_up:
            break
        await asyncio.sleep(0.1)
    assert given_up, "the child forked for the given-up job was not reported"
    assert await _ended(given_up[0].args[0])
