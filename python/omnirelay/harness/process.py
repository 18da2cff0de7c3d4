"""Child processes that cannot outlive the harness.

Three layers, because each covers a case the others miss:

1. ``PR_SET_PDEATHSIG(SIGKILL)`` set in the child before ``exec`` (by
   ``setpriv --pdeathsig``, so the child is started with vfork and no fork
   handler of a library such as gRPC runs; by a ``preexec_fn`` where setpriv
   is missing): the kernel kills the node when the harness dies for any
   reason, ``kill -9`` included.
   The signal fires when the *thread* that forked exits, not the process, so
   every spawn goes through one long-lived daemon thread (:func:`spawn`),
   never through a short-lived worker thread (a restart from a chaos timer).
2. An ``atexit`` hook and SIGTERM/SIGHUP handlers that stop every live child
   (SIGCONT first, since a paused node ignores SIGTERM until continued; then
   SIGTERM, escalated to SIGKILL after a grace period).
3. Context managers / fixtures that stop their cluster on the way out
   (test failures and Ctrl-C unwind through them).

Children are started directly (``Popen([binary, ...])``), never behind a
shell, in their own process group so a terminal's Ctrl-C reaches the harness
only and teardown happens in order.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional

PR_SET_PDEATHSIG = 1
_libc = None
# util-linux's setpriv (Essential in Debian): sets PR_SET_PDEATHSIG and execs.
_SETPRIV = shutil.which("setpriv")


def _prctl_pdeathsig(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        # The parent may have died between fork and prctl: then nobody would kill us.
        if os.getppid() != parent_pid:
            os._exit(125)
        os.setpgid(0, 0)

    return preexec


class _Spawner:
    """One daemon thread that performs every fork (see module docstring)."""

    def __init__(self) -> None:
        self._queue: "queue.Queue[tuple[Callable[[], Any], Future]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        while True:
            fn, future = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as error:  # handed back to the caller
                    future.set_exception(error)

    def submit(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="omnirelay-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._queue.put((fn, future))
        return future.result(timeout=60)


_SPAWNER = _Spawner()
_LIVE: Dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()
_HOOKS_INSTALLED = False
#: Run by reap_all after every child is stopped (e.g. removing network
#: namespaces, which must outlive the nodes inside them).
_AFTER_REAP: List[Callable[[], None]] = []


def after_reap(fn: Callable[[], None]) -> None:
    """Registers ``fn`` to run once the reaper has stopped every child (atexit,
    SIGTERM/SIGHUP). Exceptions are swallowed: teardown goes on."""
    if fn not in _AFTER_REAP:
        _AFTER_REAP.append(fn)


def spawn(argv: List[str], *, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
          stdout: Any = None, stderr: Any = None) -> subprocess.Popen:
    """Start ``argv`` directly with the death signal set; registered with the reaper."""
    _install_hooks()
    parent = os.getpid()

    def start() -> subprocess.Popen:
        if _SETPRIV:
            # No preexec_fn, so CPython starts the child with vfork(), which
            # runs no pthread_atfork handlers: gRPC Python 1.51's fork
            # handlers wait for its thread pool to go idle while this thread
            # holds the GIL, and a pool thread waiting for the GIL then hangs
            # the spawn for good (grpc/grpc#31885; seen as a test stuck
            # starting a node after other tests used gRPC channels). setpriv
            # sets the death signal and execs the node in place (same pid).
            return subprocess.Popen(
                [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], env=env, cwd=cwd,
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, process_group=0,
                close_fds=True,
            )
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            preexec_fn=_prctl_pdeathsig(parent), close_fds=True,
        )

    process = _SPAWNER.submit(start)
    with _LIVE_LOCK:
        _LIVE[process.pid] = process
    return process


def forget(process: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(process.pid, None)


def live_pids() -> List[int]:
    with _LIVE_LOCK:
        return [pid for pid, p in _LIVE.items() if p.poll() is None]


def terminate(process: subprocess.Popen, grace_s: float = 5.0) -> Optional[int]:
    """SIGCONT + SIGTERM, then SIGKILL after ``grace_s``; returns the exit code."""
    if process.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                break
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                process.kill()
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    forget(process)
    return process.returncode


def reap_all(grace_s: float = 3.0) -> None:
    with _LIVE_LOCK:
        processes = list(_LIVE.values())
    for p in processes:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                p.kill()
                p.wait(timeout=2)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        forget(p)
    for fn in list(_AFTER_REAP):
        try:
            fn()
        except Exception:
            pass


def _install_hooks() -> None:
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(reap_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous not in (signal.SIG_DFL, None):
            continue  # somebody else owns it (e.g. `omnirelay up`); atexit still runs

        def handler(signum: int, frame: Any, _sig: int = sig) -> None:
            reap_all()
            signal.signal(_sig, signal.SIG_DFL)
            os.kill(os.getpid(), _sig)

        signal.signal(sig, handler)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def process_state(pid: int) -> str:
    """Kernel state letter: R, S, T (stopped), Z, ... or '' when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return ""


def all_threads_stopped(pid: int) -> bool:
    """True once every thread of ``pid`` is in the stopped state (or it is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t", "Z", "X"):
                    return False
        except (FileNotFoundError, IndexError):
            continue
    return True
