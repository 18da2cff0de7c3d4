"""A user-space TCP fault proxy (toxiproxy's model, asyncio inside).

One :class:`FaultProxy` sits on one link: it listens on 127.0.0.1 and pipes
every accepted connection to the upstream address. Named faults are added and
removed at run time from any thread; every fault has a bounded window and is
removed by a timer when it ends (``duration_s`` is required and capped by
``MAX_WINDOW_S``), so a test that forgets to heal cannot leave a link broken.

Faults (``direction`` is ``up`` = client->server, ``down``, or ``both``):

=============  ==============================================================
``latency``    delays every chunk by ``latency_ms`` +- ``jitter_ms`` (uniform,
               from the proxy's seeded RNG); order is kept, throughput is not
               reduced (a pure delay line)
``bandwidth``  caps throughput to ``rate_bps`` bytes/s per connection and direction
``blackhole``  drops every byte; new connections are accepted but never reach
               upstream. When it heals, connections that lost bytes are
               reset (their streams are no longer intact) and new ones flow
``reset``      resets (RST) every open connection when added, and every new
               one while active
=============  ==============================================================

All proxies of a process share one event-loop thread (:func:`proxy_loop`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

KINDS = ("latency", "bandwidth", "blackhole", "reset")
DIRECTIONS = ("up", "down", "both")
MAX_WINDOW_S = 600.0


class FaultError(ValueError):
    pass


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="omnirelay-chaos-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` (sync or returning a coroutine) on the loop, wait for it."""

        async def wrapper() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)


_LOOP: Optional[_LoopThread] = None
_LOOP_LOCK = threading.Lock()


def proxy_loop() -> _LoopThread:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or not _LOOP.thread.is_alive():
            _LOOP = _LoopThread()
        return _LOOP


@dataclass
class Fault:
    name: str
    kind: str
    direction: str
    duration_s: float
    params: Dict[str, float]
    added_at: float = field(default_factory=time.time)
    removed_at: Optional[float] = None

    def applies(self, direction: str) -> bool:
        return self.direction in ("both", direction)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "direction": self.direction,
                "duration_s": self.duration_s, "params": dict(self.params),
                "added_at": self.added_at, "removed_at": self.removed_at}


@dataclass
class ProxyStats:
    accepted: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0
    resets: int = 0
    upstream_errors: int = 0


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: Optional[asyncio.StreamWriter] = None
        self.tainted = False
        self.tasks: List[asyncio.Task] = []
        self.closed = False

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                _set_linger0(writer)
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


def _set_linger0(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


class FaultProxy:
    """A proxy ``listen -> upstream`` whose faults change at run time (thread-safe)."""

    def __init__(self, name: str, upstream: Tuple[str, int], listen: Tuple[str, int] = ("127.0.0.1", 0),
                 seed: int = 0, on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.name = name
        self.upstream = upstream
        self._listen = listen
        # A stream of its own derived from the run's seed: jitter draws of one
        # proxy do not shift another's when connections interleave differently.
        self.random = random.Random(f"{seed}:{name}")
        self._on_event = on_event
        self._faults: Dict[str, Fault] = {}
        self._timers: Dict[str, asyncio.TimerHandle] = {}
        self._conns: Set[_Conn] = set()
        self._server: Optional[asyncio.base_events.Server] = None
        self._bound: Optional[Tuple[str, int]] = None
        self._counter = itertools.count(1)
        self.stats = ProxyStats()
        self.history: List[Fault] = []
        self._loop = proxy_loop()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._loop.call(self._start)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._listen[0], self._listen[1],
                                                  reuse_address=False)
        self._bound = tuple(self._server.sockets[0].getsockname()[:2])

    @property
    def address(self) -> str:
        host, port = self.listen_address
        return f"{host}:{port}"

    @property
    def listen_address(self) -> Tuple[str, int]:
        if self._bound is None:
            raise RuntimeError(f"proxy {self.name} is not started")
        return self._bound

    def stop(self) -> None:
        if self._server is None:
            return
        self._loop.call(self._stop)

    async def _stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for name in list(self._faults):
            self._remove(name, reason="proxy stopped")
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns):
                conn.abort()
            await self._server.wait_closed()
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------
    def add(self, kind: str, duration_s: float, name: Optional[str] = None, direction: str = "both",
            **params: float) -> Fault:
        """Add a fault for ``duration_s`` seconds (then it heals by itself)."""
        if kind not in KINDS:
            raise FaultError(f"unknown fault kind {kind!r}; one of {KINDS}")
        if direction not in DIRECTIONS:
            raise FaultError(f"unknown direction {direction!r}; one of {DIRECTIONS}")
        if not (0 < float(duration_s) <= MAX_WINDOW_S):
            raise FaultError(f"fault window must be within (0, {MAX_WINDOW_S}] s, got {duration_s}")
        required = {"latency": ("latency_ms",), "bandwidth": ("rate_bps",)}.get(kind, ())
        for key in required:
            if key not in params:
                raise FaultError(f"{kind} fault needs {key}=")
        if kind == "latency":
            params.setdefault("jitter_ms", 0.0)
            if params["latency_ms"] < 0 or params["jitter_ms"] < 0:
                raise FaultError("latency_ms and jitter_ms must be >= 0")
        if kind == "bandwidth" and params["rate_bps"] <= 0:
            raise FaultError("rate_bps must be > 0")
        fault = Fault(name or f"{kind}-{next(self._counter)}", kind, direction, float(duration_s),
                      {k: float(v) for k, v in params.items()})
        self._loop.call(self._add, fault)
        return fault

    def _add(self, fault: Fault) -> None:
        if fault.name in self._faults:
            self._remove(fault.name, reason="replaced")
        self._faults[fault.name] = fault
        self.history.append(fault)
        self._timers[fault.name] = asyncio.get_running_loop().call_later(
            fault.duration_s, self._remove, fault.name, "window ended")
        self._emit("fault.added", fault)
        if fault.kind == "reset":
            for conn in list(self._conns):
                self.stats.resets += 1
                conn.abort()

    def remove(self, name: str) -> bool:
        return bool(self._loop.call(self._remove, name, "removed"))

    def clear(self) -> None:
        for name in list(self._faults):
            self.remove(name)

    def _remove(self, name: str, reason: str) -> bool:
        fault = self._faults.pop(name, None)
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        if fault is None:
            return False
        fault.removed_at = time.time()
        self._emit("fault.removed", fault, reason=reason)
        if fault.kind == "blackhole":
            for conn in list(self._conns):
                if conn.tainted or conn.upstream is None:
                    self.stats.resets += 1
                    conn.abort()
        return True

    def faults(self) -> List[Fault]:
        return list(self._loop.call(lambda: list(self._faults.values())))

    def _emit(self, event: str, fault: Fault, **extra: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event({"ts": time.time(), "event": event, "proxy": self.name, **fault.to_json(),
                                **extra})
            except Exception:  # a logging failure must not break the proxy
                pass

    # -- data path (loop thread only) -----------------------------------------------
    def _active(self, kind: str, direction: str) -> List[Fault]:
        return [f for f in self._faults.values() if f.kind == kind and f.applies(direction)]

    def _delay_s(self, direction: str) -> float:
        total = 0.0
        for f in self._active("latency", direction):
            jitter = f.params.get("jitter_ms", 0.0)
            total += max(0.0, f.params["latency_ms"] + (self.random.uniform(-jitter, jitter) if jitter else 0.0))
        return total / 1000.0

    def _rate(self, direction: str) -> Optional[float]:
        rates = [f.params["rate_bps"] for f in self._active("bandwidth", direction)]
        return min(rates) if rates else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        self.stats.accepted += 1
        self.stats.active += 1
        try:
            if self._active("reset", "up") or self._active("reset", "down"):
                self.stats.resets += 1
                conn.abort()
                return
            if self._active("blackhole", "up"):
                # Hold the connection without an upstream; drop what arrives.
                conn.tainted = True
                while not conn.closed:
                    data = await reader.read(65536)
                    if not data:
                        break
                    self.stats.dropped_up += len(data)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream), timeout=10)
            except (OSError, asyncio.TimeoutError):
                self.stats.upstream_errors += 1
                conn.abort()
                return
            conn.upstream = up_writer
            conn.tasks = [
                asyncio.ensure_future(self._pipe(conn, reader, up_writer, "up")),
                asyncio.ensure_future(self._pipe(conn, up_reader, writer, "down")),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.stats.active -= 1
            self._conns.discard(conn)
            if not conn.closed:
                conn.closed = True
                for w in (conn.client, conn.upstream):
                    if w is not None:
                        w.close()

    async def _pipe(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        queue: "asyncio.Queue[Tuple[float, bytes]]" = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                if not data:
                    try:
                        if writer.can_write_eof():
                            writer.write_eof()
                    except OSError:
                        pass
                    return
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._active("blackhole", direction):
                    conn.tainted = True
                    self._count_drop(direction, len(data))
                    continue
                rate = self._rate(direction)
                if rate is None:
                    writer.write(data)
                    await writer.drain()
                else:
                    chunk = max(1, int(rate / 20))  # ~50 ms worth per write
                    for i in range(0, len(data), chunk):
                        part = data[i:i + chunk]
                        writer.write(part)
                        await writer.drain()
                        await asyncio.sleep(len(part) / rate)
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)

        deliverer = asyncio.ensure_future(deliver())
        last_at = 0.0
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    await queue.put((loop.time(), b""))
                    break
                if self._active("blackhole", direction):
                    conn.tainted = True
                    self._count_drop(direction, len(data))
                    continue
                at = max(loop.time() + self._delay_s(direction), last_at)
                last_at = at
                await queue.put((at, data))
            await deliverer
        except (ConnectionError, OSError):
            conn.abort()
        finally:
            deliverer.cancel()

    def _count_drop(self, direction: str, n: int) -> None:
        if direction == "up":
            self.stats.dropped_up += n
        else:
            self.stats.dropped_down += n
