"""yt-dlp with the address policy installed under it: the worker runs ``python -c <bootstrap> ARGS``.

yt-dlp follows redirects, embeds, manifests, segments and keys wherever a source points, and has no switch
to stop that. So the policy is enforced inside its process, where every connection is made:

- ``socket.getaddrinfo`` refuses a host outside ``MEDIA_ALLOWED_HOSTS`` and a name with any address the
  policy refuses (as the submit check does);
- ``socket.connect`` checks the address it is really connecting to. A name that resolved to a public address
  a moment ago and to an internal one now (DNS rebinding) is refused at this point, because what is checked
  is the address the connection goes to, not an earlier answer;
- every child process yt-dlp starts must be ffmpeg or ffprobe (or a JavaScript runtime for YouTube), and
  ffmpeg/ffprobe get ``-protocol_whitelist file`` and a media-demuxer allow-list before every input: they
  never open a network URL (so ffmpeg can no longer act as a downloader that bypasses the checks above), a
  playlist of ``file:`` entries, or a local file that is not media.

A refusal prints one ``[mediastore-refused]`` line on stderr (what was refused, never what the other side
would have answered), and the download fails; ``downloads.ytdlp`` turns that into ``url_not_allowed``.
Standard library and yt-dlp only: this runs in yt-dlp's process, without Django.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import sys
from collections.abc import Callable
from typing import Any

from downloads.egress import FFMPEG_INPUT_OPTIONS, MEDIA_EXTENSIONS, Policy

REFUSED_MARK = "[mediastore-refused]"
NOT_MEDIA_MARK = "[mediastore-not-media]"
POLICY_ENV = "MEDIASTORE_EGRESS_POLICY"
TOOLS_ENV = "MEDIASTORE_MEDIA_TOOLS"  # the ffmpeg and ffprobe paths, os.pathsep-separated
MEMORY_ENV = "MEDIASTORE_CHILD_MEMORY"  # bytes of address space for yt-dlp and the ffmpeg it starts
MANIFEST_ENV = "MEDIASTORE_MAX_MANIFEST"  # bytes a page or manifest may have
MANIFEST_TOO_LARGE = "The page or manifest is larger than"
# yt-dlp runs one of these for YouTube's JavaScript challenges; they get the player's code on stdin.
JS_RUNTIMES = frozenset({"deno", "node", "bun", "qjs", "quickjs"})
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class Refused(PermissionError):
    def __init__(self, what: str) -> None:
        super().__init__(errno.EACCES, f"mediastore does not fetch from {what}")


def _report(mark: str, what: str) -> None:
    # Straight to the file descriptor: yt-dlp may have replaced sys.stderr.
    os.write(2, f"{mark} {what}\n".encode("utf-8", "replace"))


def _refuse(what: str) -> Refused:
    _report(REFUSED_MARK, what)
    return Refused(what)


def _check_media_input(path: str) -> None:
    """A file yt-dlp hands to ffmpeg/ffprobe must be named as media: a playlist saved as "media.f1.m3u8"
    (a DASH representation typed as HLS) would make ffmpeg read every file: entry in it."""
    name = path.removeprefix("file:")
    extension = os.path.splitext(name)[1].lstrip(".").lower()
    if extension not in MEDIA_EXTENSIONS:
        _report(NOT_MEDIA_MARK, f"ffmpeg input of type .{extension[:20]}")
        raise PermissionError(errno.EACCES, f"mediastore: not a media file: .{extension[:20]}")


def install_network_guard(policy: Policy) -> None:
    real_getaddrinfo: Callable[..., Any] = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    # With MEDIA_ALLOWED_HOSTS, a connection may only go to an address one of those names resolved to.
    approved: set[str] = set()
    # The policy's origins (one job's allowance, e.g. the web serving check_pipeline's sample): the address
    # *and port* their exact name resolved to in this process. Not the address alone: a redirect to another
    # port of that host, or another name that resolves there, still meets the ordinary rules.
    origin_sockaddrs: set[tuple[str, int]] = set()

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        results = real_getaddrinfo(host, port, *args, **kwargs)
        if host is None:
            return results
        name = host.decode("idna") if isinstance(host, bytes) else str(host)
        if policy.origin_allowed(name, port):
            origin_sockaddrs.update((str(sockaddr[0]), int(sockaddr[1])) for family, _, _, _, sockaddr in results
                                    if family in (socket.AF_INET, socket.AF_INET6))
            return results
        if not policy.host_allowed(name):
            raise _refuse(f"host {name!r} (not an allowed host)")
        for family, _, _, _, sockaddr in results:
            if family in (socket.AF_INET, socket.AF_INET6):
                if not policy.address_allowed(sockaddr[0]):
                    raise _refuse(f"host {name!r} (it points to {sockaddr[0]}, an address this server does "
                                  f"not fetch from)")
                approved.add(sockaddr[0])
        return results

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise _refuse(f"a socket of family {sock.family!r}")
        ip = str(address[0])
        if (ip, int(address[1])) in origin_sockaddrs:
            return
        if not policy.address_allowed(ip) or (policy.hosts and ip.split("%")[0] not in approved):
            raise _refuse(f"address {ip} (not an address this server fetches from)")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]


def guarded_argv(argv: list[str], *, tools: set[str]) -> list[str]:
    """The command yt-dlp wants to run, with the media-only input options; refuse any other program."""
    program = os.path.basename(str(argv[0])) if argv else ""
    if program in JS_RUNTIMES:
        return argv
    if str(argv[0]) not in tools and program not in {"ffmpeg", "ffprobe"}:
        raise _refuse(f"running {program!r} (only ffmpeg and ffprobe may run)")
    if program == "ffprobe":
        if len(argv) > 1 and not argv[-1].startswith("-"):
            _check_media_input(argv[-1])
        return [argv[0], *FFMPEG_INPUT_OPTIONS, *argv[1:]]
    guarded = [argv[0]]
    for previous, arg in itertools.pairwise(argv):
        if arg == "-i":
            guarded += FFMPEG_INPUT_OPTIONS
        elif previous == "-i" and _URL_SCHEME.match(arg) and not arg.startswith("file:"):
            # yt-dlp hands ffmpeg a URL when it would use it as a downloader (an HLS stream it cannot
            # fetch itself): ffmpeg would connect outside this guard.
            raise _refuse(f"ffmpeg reading {arg.split(':', 1)[0]}: input (ffmpeg only reads local files)")
        elif previous == "-i":
            _check_media_input(arg)
        guarded.append(arg)
    return guarded


def install_process_guard(tools: set[str]) -> None:
    from yt_dlp.utils import _utils

    real_init = _utils.Popen.__init__

    def init(self: Any, args: Any, *remaining: Any, **kwargs: Any) -> None:
        if isinstance(args, str) or kwargs.get("shell"):
            raise _refuse("a shell command")
        real_init(self, guarded_argv([str(a) for a in args], tools=tools), *remaining, **kwargs)

    _utils.Popen.__init__ = init


def install_manifest_limit(limit: int) -> None:
    """yt-dlp reads a page or manifest whole into memory: a million-segment playlist took it to 569 MB
    before any size check could run. Reading stops past ``limit`` bytes."""
    from yt_dlp.extractor.common import InfoExtractor
    from yt_dlp.utils import ExtractorError

    real_read_content = InfoExtractor._webpage_read_content

    def read_content(self: Any, urlh: Any, *args: Any, **kwargs: Any) -> Any:
        read = urlh.read

        def bounded(amt: int | None = None) -> bytes:
            if amt is not None:
                return bytes(read(amt))
            chunks, total = [], 0
            while chunk := read(min(1 << 20, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise ExtractorError(f"{MANIFEST_TOO_LARGE} {limit} bytes.", expected=True)
            return b"".join(chunks)

        urlh.read = bounded
        return real_read_content(self, urlh, *args, **kwargs)

    InfoExtractor._webpage_read_content = read_content


def main(argv: list[str]) -> int:
    policy = Policy.from_json(os.environ[POLICY_ENV])
    tools = {t for t in os.environ.get(TOOLS_ENV, "").split(os.pathsep) if t}
    if memory := int(os.environ.get(MEMORY_ENV) or 0):
        import resource

        # Inherited by the ffmpeg yt-dlp starts: a hostile file costs the job, not the worker's machine.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    install_network_guard(policy)
    install_process_guard(tools)
    install_manifest_limit(int(os.environ.get(MANIFEST_ENV) or 16 * 1024**2))
    import yt_dlp

    try:
        yt_dlp.main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def bootstrap(root: str) -> str:
    """The ``-c`` program that runs ``main`` with the repository importable, whatever the working folder."""
    return (f"import sys; sys.path.insert(0, {root!r}); from downloads.ytdlp_guard import main; "
            f"sys.exit(main(sys.argv[1:]))")


if __name__ == "__main__":  # pragma: no cover - the worker uses bootstrap()
    sys.exit(main(sys.argv[1:]))
