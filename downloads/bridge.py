"""The one place where gevent and asyncio meet. Nothing else imports gevent or asyncio internals.

The Celery worker runs ``-P gevent``: every task is a greenlet in the main thread, and gevent has
monkey-patched the standard library. Our pipeline is ``async def`` (asyncio subprocesses, aiobotocore,
PyMongo's async client). Celery 5.7 does not run coroutines, and asyncio cannot run inside the patched
main thread (``asyncio.run`` per task failed 99 of 100 times with "cannot be called from a running event
loop"; loops driven by the gevent hub hung). So, per worker process:

- **One asyncio loop in a native thread**, started with the unpatched ``start_new_thread`` and an
  unpatched epoll selector. Task greenlets hand it coroutines and wait *cooperatively*: the loop wakes the
  waiting greenlet through ``run_callback_threadsafe`` on the main hub, so 100 waiting tasks cost nothing.
- **Django's async ORM runs back in the task's greenlet.** ``sync_to_async`` looks for an executor in
  asgiref's ``AsyncToSync.executors.current`` first; each run sets its own (``_TaskGreenletExecutor``),
  which the waiting greenlet serves. The ORM call then runs where sync code belongs, on the task's own
  database connection, and ``DJANGO_ALLOW_ASYNC_UNSAFE`` is never needed.
- **``os.close`` closes at once off the main thread.** gevent's defers the close to the calling thread's
  hub when it has one, and a hub in the loop thread or a native pool thread never runs: Popen waited forever
  on its error pipe, and every reaped child's pidfd and every removed job folder's directory fds stayed open
  until the worker ran out of fds (``native_off_the_hub``). asyncio waits for children with pidfds.
- **Exit codes stay ours.** gevent's SIGCHLD handler reaps *every* child (``waitpid(-1)``), and asyncio
  then reports 255. gevent arms it whenever its own Popen runs, and Celery's start-up banner does just
  that (``platform.processor()`` runs ``uname -p``). The bridge switches it off when the worker is ready,
  and again before each spawn if something armed it since, logging when it had to.
- **Name resolution and ``run_in_executor(None, …)`` on native threads**: gevent's resolver and its
  thread-backed pools would park work on a hub that never runs in the loop thread; ``socket.getaddrinfo``
  called on those threads is the native one too (``native_off_the_hub``).
- **Time limits and shutdown cancel the whole run.** The gevent pool implements no soft limit, so each
  run arms one on the loop; the hard limit is Celery's ``gevent.Timeout`` in the waiting greenlet; a warm
  shutdown cancels what is still running after its grace period (``cancel_all``). Each is a real
  ``Task.cancel()``, so task groups and every child task stop too, and ``cancel_reason()`` tells the
  coroutine's ``except CancelledError`` why (``SOFT_LIMIT``, ``HARD_LIMIT``, ``SHUTDOWN``), so it can
  record the outcome before it ends. A soft limit that ends the run reaches Celery as
  ``SoftTimeLimitExceeded``. On a hard limit or shutdown the process group of every subprocess the run
  started is SIGKILLed, and the run gets ``HARD_LIMIT_GRACE`` seconds to write its outcome.
- **Shared clients** (one S3 client, one MongoDB client) live on the loop for the worker's life and are
  closed by ``stop()`` at worker shutdown; ``shared()`` creates them on first use.

Outside a gevent worker (tests, management commands, eager calls) nothing of this is needed: ``run()``
falls back to ``asyncio.run``, and ``async def`` task bodies can simply be awaited.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import importlib.util
import logging
import signal
import sys
import threading
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar, cast

from asgiref.sync import AsyncToSync
from celery.exceptions import SoftTimeLimitExceeded

from downloads.subprocesses import kill_group

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a run may take to wind down after its hard limit, before the greenlet gives up waiting.
HARD_LIMIT_GRACE = 2.0
_NATIVE_POOL_SIZE = 8

SOFT_LIMIT = "soft_limit"
HARD_LIMIT = "hard_limit"
SHUTDOWN = "shutdown"
MOVED = "moved"  # the run itself found that its work is no longer its own
CANCELLED = "cancelled"  # a person cancelled the scene the run works on


class _RunState:
    """What one run owns: its task, the pids of the subprocesses it started (pruned as they are reaped) and,
    once it is cancelled, why."""

    def __init__(self) -> None:
        self.children: set[int] = set()
        self.reason: str | None = None
        self.task: asyncio.Task[Any] | None = None

    def cancel(self, reason: str) -> None:
        """On the loop thread: cancel the run's task (and so its task groups), remembering why."""
        if self.task is not None and not self.task.done():
            self.reason = reason  # the latest wins: a hard limit after a soft one is a hard limit
            self.task.cancel()


# The current run's state (a contextvar, so each run sees its own).
_run_state: contextvars.ContextVar[_RunState] = contextvars.ContextVar("mediastore_run_state")
_active_runs: set[_RunState] = set()


def cancel_current(reason: str) -> None:
    """From inside a run (its task or a child task): cancel the whole run, for ``reason``."""
    state = _run_state.get(None)
    if state is not None:
        state.cancel(reason)


class RunHandle:
    """Lets other code on the loop (the cancel listener) cancel one run, for a reason."""

    def __init__(self, state: _RunState) -> None:
        self._state = state

    def cancel(self, reason: str) -> None:
        """On the loop thread: cancel the run and kill its subprocess groups at once."""
        self._state.cancel(reason)
        kill_process_groups(self._state.children)


def current_run() -> RunHandle | None:
    """The run this code belongs to, as a handle others can cancel it by."""
    state = _run_state.get(None)
    return RunHandle(state) if state is not None else None


def cancel_reason() -> str | None:
    """Why the current run was cancelled (``SOFT_LIMIT``, ``HARD_LIMIT``, ``SHUTDOWN``), or None."""
    state = _run_state.get(None)
    return state.reason if state is not None else None


def gevent_is_active() -> bool:
    """True inside a ``-P gevent`` worker (the standard library is monkey-patched)."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


def _original(module: str, name: str) -> Any:
    from gevent import monkey

    return monkey.get_original(module, name)


def native_logging_locks() -> None:
    """Give ``logging`` native locks: its handlers are shared by task greenlets and the loop's native threads.

    After monkey-patching, a handler's lock (``Handler.createLock``: ``threading.RLock()``) and the module
    lock are backed by gevent semaphores. When a native thread (the loop thread, whose hub never runs, or a
    ``_NativeThreadPool`` thread) releases one while a greenlet waits for it, the wake-up can be lost
    (gevent/gevent#2013, #1744): the greenlet stays parked although the lock is free. The consumer greenlet
    parked that way inside Celery's "Task ... received" log line, and the worker took nothing more while
    its slots were free and the queue filled. A native lock is held only for one emit, never across a
    greenlet switch, so blocking the hub for it is harmless.
    """
    import logging

    native_rlock = _original("_thread", "RLock")
    if getattr(logging.Handler, "_mediastore_native_lock", False):
        return

    def create_lock(self: logging.Handler) -> None:
        self.lock = native_rlock()
        logging._register_at_fork_reinit_lock(self)  # type: ignore[attr-defined]

    logging.Handler.createLock = create_lock  # type: ignore[method-assign]
    logging.Handler._mediastore_native_lock = True  # type: ignore[attr-defined]
    logging._lock = native_rlock()  # type: ignore[attr-defined]
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]
        handler = ref()
        if handler is not None:
            handler.lock = native_rlock()


def native_metric_locks() -> None:
    """Give ``prometheus_client`` native locks, for the reason ``logging`` has them: the pipeline counts and
    times on the loop thread while the metrics server's greenlets read the same values.

    prometheus_client binds ``threading.Lock`` when it is imported, after the monkey-patching, so its locks
    are gevent's. Here the modules' ``Lock`` becomes the native one (for metrics and values made from now on)
    and the locks of what exists already (the registry, metrics made at import) are replaced. Each is held
    for one addition or one copy, never across a greenlet switch.
    """
    from prometheus_client import REGISTRY, metrics, registry, values

    native_lock = _original("_thread", "allocate_lock")
    for module in (values, metrics, registry):
        module.Lock = native_lock  # type: ignore[attr-defined]

    def relock(holder: object) -> None:
        if hasattr(holder, "_lock"):
            holder._lock = native_lock()
        for value in list(vars(holder).values()):
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, values.MutexValue):
                    item._lock = native_lock()

    relock(REGISTRY)
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, metrics.MetricWrapperBase):
            relock(collector)
            for child in list(getattr(collector, "_metrics", {}).values()):
                relock(child)


# What the worker's other threads (the loop's, the native pool's) call from gevent-patched modules that must
# behave natively there: gevent's versions lean on the calling thread's hub, and those hubs never run.
_NATIVE_OFF_THE_HUB = (("os", "close"), ("socket", "getaddrinfo"))


def native_off_the_hub() -> None:
    """``os.close`` and ``socket.getaddrinfo`` are the native ones on every thread but the gevent hub's
    (``_main_thread_ident``, where task greenlets keep gevent's).

    - gevent (25.8.1 on) defers a close of anything but a regular file to the calling thread's hub, when that
      thread has one, so that a watcher on the fd is stopped first. The loop thread and the pool's threads get
      a hub as soon as a patched primitive there needs one, and it never runs: their closes never happened.
      A pipe's write end closed there stayed open, so its reader never saw the end (the yt-dlp helper's job
      pipes). Every subprocess asyncio reaped left its pidfd open (``PidfdChildWatcher``), and every job
      folder removed on a pool thread its directory fds (``shutil.rmtree``): 1 to 4 fds per job, until the
      worker ran out. A close cannot hurt a watcher of a hub that never runs.
    - gevent's ``getaddrinfo`` gave each pool thread that checked a source URL (``egress.check_url``) a hub
      and a thread pool of its own: the name resolution this module keeps native (``_BridgeLoop``).
    """
    get_ident = _original("_thread", "get_ident")
    for module_name, name in _NATIVE_OFF_THE_HUB:
        module = sys.modules[module_name]
        cooperative = getattr(module, name)
        if getattr(cooperative, "_mediastore_native_off_the_hub", False):
            continue
        native = _original(module_name, name)

        def call(*args: Any, _cooperative: Any = cooperative, _native: Any = native, **kwargs: Any) -> Any:
            return (_cooperative if get_ident() == _main_thread_ident else _native)(*args, **kwargs)

        call._mediastore_native_off_the_hub = True  # type: ignore[attr-defined]
        setattr(module, name, call)


# --- Native pieces for the loop thread --------------------------------------------------------------------


class _NativeThreadPool(concurrent.futures.Executor):
    """A small pool of real OS threads (gevent's patched threads would be greenlets of a hub that never
    runs in the loop thread). Used for ``run_in_executor(None, …)`` and name resolution."""

    def __init__(self, size: int) -> None:
        import _queue

        self._size = size
        self._queue: Any = _queue.SimpleQueue()  # the C queue blocks on native locks
        self._started = 0
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        if self._shutdown:
            raise RuntimeError("the native thread pool is shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        # A Future's condition is threading's, so gevent's after the monkey-patching, and two native threads
        # meet on it here (this pool's, setting the result, and the loop's, adding asyncio's callback). A
        # wake-up lost on it (see native_logging_locks) left a to_thread() pending for good, its thread idle:
        # 1 job of 400 hung after its upload. A native lock, held for a callback list, never across a switch.
        future._condition = threading.Condition(_original("_thread", "RLock")())
        self._queue.put((future, fn, args, kwargs))
        if self._started < self._size:
            self._started += 1
            _original("_thread", "start_new_thread")(self._work, ())
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        for _ in range(self._started):
            self._queue.put(None)


def _native_subprocess_module() -> types.ModuleType:
    """A private copy of ``subprocess`` for asyncio, whose children are recorded per run."""
    spec = importlib.util.find_spec("subprocess")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base_popen = module.Popen

    class TrackedPopen(base_popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            keep_children_ours()
            self._run: _RunState | None = _run_state.get(None)
            super().__init__(*args, **kwargs)
            if self._run is not None:
                self._run.children.add(self.pid)

        # asyncio sets returncode when it has reaped the child: from then on its pid may be reused, and the
        # hard-limit kill must not reach whatever process gets it next.
        @property
        def returncode(self) -> int | None:
            return cast("int | None", self.__dict__.get("_returncode"))

        @returncode.setter
        def returncode(self, value: int | None) -> None:
            self.__dict__["_returncode"] = value
            run = self.__dict__.get("_run")
            if value is not None and run is not None:
                run.children.discard(self.pid)

    module.Popen = TrackedPopen  # type: ignore[attr-defined]
    return module


_SIGCHLD_BIT = 1 << (signal.SIGCHLD - 1)
_main_hub_loop: Any = None
_main_thread_ident: int | None = None


def _sigchld_caught() -> bool:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & _SIGCHLD_BIT)
    return False


def _reset_sigchld() -> None:
    # gevent's documented way back to the default disposition: its signal.signal sets SIG_DFL and resets
    # the loop's child-watching state. Python allows it only in the main thread.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    logger.info("bridge: switched off gevent's SIGCHLD reaper (armed by a gevent subprocess) so that asyncio "
                "gets its children's exit codes")


def keep_children_ours() -> None:
    """Switch gevent's reap-everything SIGCHLD handler off if something armed it (see the module docstring).

    From the main thread it acts at once; from the loop thread it asks the main hub and waits for it, so
    the child about to be spawned cannot be reaped by gevent.
    """
    if _main_hub_loop is None or not _sigchld_caught():
        return
    if _original("_thread", "get_ident")() == _main_thread_ident:
        _reset_sigchld()
        return
    done = _original("_thread", "allocate_lock")()
    done.acquire()

    def reset_and_release() -> None:
        try:
            _reset_sigchld()
        finally:
            done.release()

    _main_hub_loop.run_callback_threadsafe(reset_and_release)
    if not done.acquire(timeout=5):
        logger.warning("bridge: the main thread did not switch gevent's SIGCHLD reaper off within 5 s")


class _BridgeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selector=_original("selectors", "EpollSelector")())
        self._native_pool = _NativeThreadPool(_NATIVE_POOL_SIZE)
        self._getaddrinfo = _original("socket", "getaddrinfo")
        self._getnameinfo = _original("socket", "getnameinfo")

    def run_in_executor(  # type: ignore[override]  # same contract; typeshed's TypeVarTuple form
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        return super().run_in_executor(executor or self._native_pool, func, *args)

    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0,  # noqa: A002
                          proto: int = 0, flags: int = 0) -> Any:
        return await self.run_in_executor(None, self._getaddrinfo, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> Any:
        return await self.run_in_executor(None, self._getnameinfo, sockaddr, flags)

    def close(self) -> None:
        super().close()
        self._native_pool.shutdown()


# --- The per-run executor served by the waiting greenlet -----------------------------------------------------


class _TaskGreenletExecutor(concurrent.futures.Executor):
    """Runs submitted sync calls in the greenlet that waits for the run: Django's async ORM, via asgiref."""

    def __init__(self) -> None:
        import gevent
        import gevent.event

        self._hub_loop = gevent.get_hub().loop
        self._work: collections.deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = (
            collections.deque()
        )
        self._wakeup = gevent.event.Event()
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(RuntimeError("the task's greenlet is gone; this call cannot run"))
            return future
        self._work.append((future, lambda: fn(*args, **kwargs)))
        if self._closed:  # closed between the check and the append (another thread): fail it too
            self.close()
        self.wake()
        return future

    def close(self) -> None:
        """The greenlet stops serving (its grace ran out): fail what waits and what comes, so the run's
        coroutine ends instead of waiting forever for calls nobody will make."""
        self._closed = True
        while self._work:
            future, _ = self._work.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the task's greenlet is gone; this call cannot run"))

    def wake(self) -> None:
        """Thread-safe: wakes the waiting greenlet from the loop thread."""
        self._hub_loop.run_callback_threadsafe(self._wakeup.set)

    def serve_until(self, done: concurrent.futures.Future[Any], timeout: float | None = None) -> bool:
        """Run submitted calls until ``done`` completes (True) or ``timeout`` passes (False)."""
        import gevent

        deadline = None if timeout is None else self._hub_loop.now() + timeout
        while True:
            while self._work:
                future, call = self._work.popleft()
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(call())
                    except BaseException as exc:
                        future.set_exception(exc)
            if done.done():
                return True
            remaining = None if deadline is None else deadline - self._hub_loop.now()
            if remaining is not None and remaining <= 0:
                return False
            self._wakeup.clear()
            if not self._work and not done.done():
                with gevent.Timeout(remaining, False):
                    self._wakeup.wait()


# --- Running one coroutine under its limits ------------------------------------------------------------------


def first_real_error(error: BaseException) -> BaseException:
    """An ``ExceptionGroup`` (from a TaskGroup) → its first leaf that is not a cancellation."""
    if isinstance(error, BaseExceptionGroup):
        leaves = [first_real_error(inner) for inner in error.exceptions]
        real = [leaf for leaf in leaves if not isinstance(leaf, asyncio.CancelledError)]
        return (real or leaves)[0]
    return error


async def _supervised(coro: Coroutine[Any, Any, T], *, soft_limit: float | None,
                      executor: concurrent.futures.Executor | None, state: _RunState) -> T:
    _run_state.set(state)
    if executor is not None:
        AsyncToSync.executors.current = executor  # contextvar-scoped to this run's task
    loop = asyncio.get_running_loop()
    state.task = asyncio.current_task()
    _active_runs.add(state)
    timer = loop.call_later(soft_limit, state.cancel, SOFT_LIMIT) if soft_limit else None
    try:
        return await coro
    except asyncio.CancelledError:
        if state.reason == SOFT_LIMIT:
            raise SoftTimeLimitExceeded(f"soft time limit ({soft_limit:g}s) exceeded") from None
        raise
    except BaseExceptionGroup as group:
        raise first_real_error(group) from group
    finally:
        _active_runs.discard(state)
        if timer is not None:
            timer.cancel()


def own_child(pid: int) -> Callable[[object], None]:
    """Record ``pid``, a subprocess started otherwise than by Popen (a child of the yt-dlp helper), as the
    current run's, so the hard limit, cancel and shutdown kill its group; call the returned function once it
    has been reaped, as its pid may then be reused."""
    state = _run_state.get(None)
    if state is not None:
        state.children.add(pid)

    def forget(_: object = None) -> None:
        if state is not None:
            state.children.discard(pid)

    return forget


def native_socketpair(family: int, kind: int) -> tuple[Any, Any]:
    """``socket.socketpair`` as the standard library has it: gevent's sockets wait on a hub, which never runs in
    the loop thread (the yt-dlp helper's control socket hung there). The unpatched ``socketpair`` is not
    enough: it makes its sockets with the module's ``socket`` class, which is gevent's once patched (and each
    gives the thread that makes it a hub)."""
    import socket

    if not gevent_is_active():
        return socket.socketpair(family, kind)
    import _socket

    native = _original("socket", "socket")
    ends = _socket.socketpair(family, kind)
    return cast("tuple[Any, Any]", tuple(native(family, kind, fileno=end.detach()) for end in ends))


def on_worker_loop() -> bool:
    """Whether this runs on the worker's long-lived loop (not an ``asyncio.run`` of a test or a command)."""
    try:
        return asyncio.get_running_loop() is bridge.loop
    except RuntimeError:
        return False


def kill_process_groups(pids: set[int]) -> None:
    """SIGKILL every subprocess a run started, with its whole process group when it leads one."""
    for pid in list(pids):
        kill_group(pid)


# --- The bridge -------------------------------------------------------------------------------------------------


class Bridge:
    """The worker process's asyncio loop, its thread, and the clients shared on it."""

    def __init__(self) -> None:
        self._loop: _BridgeLoop | None = None
        self._stopped: concurrent.futures.Future[None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def start(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        import gevent

        global _main_hub_loop, _main_thread_ident
        native_logging_locks()  # before the loop thread can log
        native_metric_locks()  # and before it can count
        _main_hub_loop = gevent.get_hub().loop
        _main_thread_ident = _original("_thread", "get_ident")()
        native_off_the_hub()  # before the loop thread can close or resolve anything
        import asyncio.unix_events as unix_events

        unix_events.subprocess = _native_subprocess_module()  # type: ignore[attr-defined]
        loop = _BridgeLoop()
        if sys.version_info < (3, 12):
            # 3.11's default child watcher waits in a (patched, so greenlet) thread per child; pidfds need
            # none. The policy attaches a watcher to a loop only from the main thread, so attach it here.
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(loop)
            asyncio.set_child_watcher(watcher)
        self._stopped = concurrent.futures.Future()
        _original("_thread", "start_new_thread")(self._thread_main, (loop, self._stopped))
        self._loop = loop
        logger.info("bridge: asyncio loop started in a native thread")
        return loop

    @staticmethod
    def _thread_main(loop: _BridgeLoop, stopped: concurrent.futures.Future[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(_close_shared(loop))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            stopped.set_result(None)

    def stop(self, timeout: float = 30) -> None:
        """Close the shared clients and stop the loop (worker shutdown)."""
        loop, stopped = self._loop, self._stopped
        if loop is None or stopped is None:
            return
        self._loop = None
        loop.call_soon_threadsafe(loop.stop)
        _wait_native(stopped, timeout)
        logger.info("bridge: asyncio loop stopped, shared clients closed")

    def run(self, coro: Coroutine[Any, Any, T], *, soft_limit: float | None = None) -> T:
        """Run ``coro`` to completion from synchronous code and return its result (or raise its error)."""
        if not gevent_is_active():
            try:
                return asyncio.run(_closing_shared(_supervised(coro, soft_limit=soft_limit, executor=None,
                                                               state=_RunState())))
            except asyncio.CancelledError as cancelled:
                raise RunCancelled("the run was cancelled") from cancelled
        loop = self.start()
        executor = _TaskGreenletExecutor()
        state = _RunState()
        # Set when the task has really finished, cleanup included (a cancelled run_coroutine_threadsafe
        # future would be "done" at once, before the coroutine's finally blocks ran).
        finished: concurrent.futures.Future[T] = concurrent.futures.Future()
        finished.add_done_callback(lambda _: executor.wake())

        def start_task() -> None:
            task = loop.create_task(_supervised(coro, soft_limit=soft_limit, executor=executor, state=state))
            task.add_done_callback(lambda done: _settle(finished, done, state))

        loop.call_soon_threadsafe(start_task)
        try:
            executor.serve_until(finished)
        except BaseException as exc:
            # Hard time limit (gevent.Timeout), worker shutdown or a killed greenlet: stop everything the
            # run started, give its cleanup a moment (it may still need the ORM), then let the error through.
            reason = HARD_LIMIT if _is_time_limit(exc) else SHUTDOWN
            loop.call_soon_threadsafe(state.cancel, reason)  # after start_task: FIFO
            kill_process_groups(state.children)
            if not executor.serve_until(finished, timeout=HARD_LIMIT_GRACE):
                logger.warning("bridge: a cancelled run did not finish within %.0fs", HARD_LIMIT_GRACE)
                executor.close()
            raise
        return finished.result()

    def cancel_all(self, reason: str) -> int:
        """Cancel every run in progress (worker shutdown after its grace period); returns how many. Their
        subprocess groups are killed at once: the runs' own handlers then record the outcome."""
        loop = self._loop
        runs = list(_active_runs)
        if loop is None or not runs:
            return 0
        for state in runs:
            loop.call_soon_threadsafe(state.cancel, reason)
            kill_process_groups(state.children)
        return len(runs)


def _is_time_limit(error: BaseException) -> bool:
    from billiard.exceptions import TimeLimitExceeded

    return isinstance(error, TimeLimitExceeded) or type(error).__name__ == "Timeout"


async def _closing_shared(coro: Coroutine[Any, Any, T]) -> T:
    # asyncio.run's loop dies with the call: its shared clients must be closed with it, not leaked.
    async with shared_clients_closed():
        return await coro


class RunCancelled(Exception):
    """A run ended by cancellation. An ``Exception``, unlike ``CancelledError``: Celery's pools treat any
    other ``BaseException`` from a task as a lost worker, and its fast trace path then crashed without
    acknowledging the message or freeing its prefetch slot, so the worker took less and less work."""


def _settle(target: concurrent.futures.Future[T], task: asyncio.Task[T], state: _RunState) -> None:
    if task.cancelled():
        target.set_exception(RunCancelled(f"the run was cancelled ({state.reason or 'no reason given'})"))
    elif (error := task.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(task.result())


def _wait_native(future: concurrent.futures.Future[None], timeout: float) -> None:
    if gevent_is_active():
        import gevent

        with gevent.Timeout(timeout, False):
            while not future.done():
                gevent.sleep(0.05)
    else:
        future.result(timeout=timeout)


# --- Clients shared for the life of a loop ---------------------------------------------------------------------


class _SharedState:
    def __init__(self) -> None:
        self.stack = AsyncExitStack()
        self.items: dict[str, Any] = {}
        self.lock = asyncio.Lock()


_shared_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedState] = weakref.WeakKeyDictionary()


async def shared(key: str, factory: Callable[[], AbstractAsyncContextManager[T]]) -> T:
    """The one ``key`` object of the running loop, entered on first use and exited when the loop's shared
    clients are closed (worker shutdown, or ``close_shared()``)."""
    loop = asyncio.get_running_loop()
    state = _shared_states.setdefault(loop, _SharedState())
    if key in state.items:
        return cast(T, state.items[key])
    async with state.lock:
        if key not in state.items:
            state.items[key] = await state.stack.enter_async_context(factory())
    return cast(T, state.items[key])


async def _close_shared(loop: asyncio.AbstractEventLoop) -> None:
    state = _shared_states.pop(loop, None)
    if state is not None:
        await state.stack.aclose()


async def close_shared() -> None:
    """Close the running loop's shared clients (tests and one-off scripts; the worker does it at stop)."""
    await _close_shared(asyncio.get_running_loop())


@asynccontextmanager
async def shared_clients_closed() -> AsyncIterator[None]:
    try:
        yield
    finally:
        await close_shared()


bridge = Bridge()


def run(coro: Coroutine[Any, Any, T] | Awaitable[T], *, soft_limit: float | None = None) -> T:
    return bridge.run(cast(Coroutine[Any, Any, T], coro), soft_limit=soft_limit)


# --- Background greenlets of the worker process ---------------------------------------------------------


def every(interval: float, job: Callable[[], object], *, name: str) -> Callable[[], None]:
    """Run ``job`` now and then every ``interval`` seconds in a greenlet of its own (the worker's sweeper
    and liveness report); an error is logged and the next round comes anyway. Returns a stop function."""
    import gevent

    def loop() -> None:
        while True:
            try:
                job()
            except Exception:
                logger.exception("%s failed; next round in %.0fs", name, interval)
            gevent.sleep(interval)

    greenlet = gevent.spawn(loop)
    return lambda: greenlet.kill(block=False)


def background(factory: Callable[[], Coroutine[Any, Any, object]], *, name: str) -> Callable[[], None]:
    """Run ``factory()`` on the bridge's loop for the worker's life (the cancel listener); an error is logged.
    Returns a stop function, which cancels it."""
    loop = bridge.start()
    ended: concurrent.futures.Future[None] = concurrent.futures.Future()

    async def guarded() -> object:
        try:
            return await factory()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s stopped with an error", name)
            return None
        finally:
            ended.set_result(None)

    task_box: list[asyncio.Task[object]] = []

    def start() -> None:
        task_box.append(loop.create_task(guarded(), name=name))

    loop.call_soon_threadsafe(start)

    def stop() -> None:
        # Wait (briefly, cooperatively) for it to end, so the loop does not stop under a task still pending.
        if task_box and not loop.is_closed() and not ended.done():
            loop.call_soon_threadsafe(task_box[0].cancel)
            _wait_native(ended, 2.0)

    return stop


def later(delay: float, job: Callable[[], object]) -> None:
    """Run ``job`` once, ``delay`` seconds from now, in a greenlet of its own."""
    import gevent

    gevent.spawn_later(delay, job)
