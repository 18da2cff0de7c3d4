"""The one launcher of single native processes for tests.

``ReadyProcess`` starts ``omnirelay-native <verb> ...`` directly (never behind
a shell) with ``--ready-file`` and ``--log-file`` in a work folder, waits
(bounded) for the ready file, and always stops the process: a signal
(SIGTERM by default), then SIGKILL after a timeout. Test suites share it
instead of each carrying its own ``Process`` class; multi-node topologies use
:class:`omnirelay.harness.Cluster`.

    with ReadyProcess(["echo", "--grpc-address", "127.0.0.1:0"], tmp_path, "e1") as echo:
        channel = grpc.insecure_channel(echo.ready["grpc"])
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from omnirelay._native import find_native_binary


class ProcessStartError(RuntimeError):
    """The process exited or did not write its ready file in time."""


class ReadyProcess:
    """One native process announced by its ready file.

    ``ready`` holds the ready file's JSON (addresses such as ``grpc``, ``http``,
    ``admin``, ``address``, ``gateway``). ``stderr`` is captured (stdout is
    discarded): what the process logs goes to ``log_file``.
    """

    def __init__(self, args: Sequence[str], workdir: Union[str, Path], name: str, *,
                 binary: Optional[Union[str, Path]] = None,
                 env: Optional[Mapping[str, str]] = None,
                 start_timeout: float = 20.0, stop_timeout: float = 10.0) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_file = workdir / f"{name}.log"
        if self.ready_file.exists():
            self.ready_file.unlink()
        self.binary = Path(binary) if binary is not None else Path(find_native_binary())
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            [str(self.binary), *args, "--ready-file", str(self.ready_file),
             "--log-file", str(self.log_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env)
        self.ready: Dict[str, Any] = {}
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                try:
                    self.ready = json.loads(self.ready_file.read_text())
                    return
                except json.JSONDecodeError:
                    pass  # written but not complete yet
            if self.popen.poll() is not None:
                _, err = self.popen.communicate()
                raise ProcessStartError(f"{name} exited {self.popen.returncode}: {err}")
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise ProcessStartError(f"{name} did not become ready in {start_timeout:g}s")

    # -- addresses ----------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def process(self) -> subprocess.Popen:  # the name older suites used
        return self.popen

    @property
    def grpc(self) -> str:
        return self.ready["grpc"]

    @property
    def http(self) -> str:
        return self.ready["http"]

    @property
    def admin(self) -> str:
        return self.ready["admin"]

    @property
    def address(self) -> str:
        return self.ready["address"] if "address" in self.ready else self.ready["gateway"]

    # -- lifecycle ----------------------------------------------------------------
    def running(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        """Sends SIGTERM without waiting (the node drains)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 15.0) -> int:
        """Waits for exit; on timeout kills it and raises TimeoutExpired."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise

    def wait_exit(self, timeout: float) -> Optional[int]:
        """The exit code, or None if still running after ``timeout``."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM) -> Optional[int]:
        """Signals (if running), waits ``stop_timeout``, then SIGKILL; idempotent.
        Returns the exit code (negative for a signal)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=self.stop_timeout)
        try:
            self.popen.communicate(timeout=self.stop_timeout)
        except ValueError:
            pass  # streams already closed by an earlier stop()
        return self.popen.returncode

    def __enter__(self) -> "ReadyProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    """Polls ``predicate`` until true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


__all__ = ["ProcessStartError", "ReadyProcess", "wait_until"]
