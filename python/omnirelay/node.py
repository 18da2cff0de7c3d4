"""In-process OmniRelay nodes driven from Python.

    from omnirelay.node import Node

    node = Node({"service": "py", "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
                 "admin": {"address": "127.0.0.1:0"}})

    @node.procedure("Greet", service="demo.Greeter")
    def greet(body: bytes, meta: dict) -> bytes:
        return b"hello " + body

    with node:                       # start() ... stop()
        print(node.grpc_address)     # "127.0.0.1:40123"

The C++ core serves the transports, middleware and outbounds; Python only
supplies procedure bodies. Handlers run on C++ worker threads that take the
GIL just for the call, so the gRPC/HTTP threads never wait on Python. Raise an
``omnirelay.errors`` exception (e.g. ``ResourceExhausted("busy")``) to answer
with that status; any other exception becomes ``Internal``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

from omnirelay import _core

Handler = Callable[[bytes, Dict[str, Any]], Optional[bytes]]
ConfigLike = Union[Mapping[str, Any], str, Path]


def _config_source(config: ConfigLike) -> Tuple[str, str]:
    """(config_json, config_path): a path is loaded by the C++ loader itself,
    exactly as ``omnirelay serve --config`` loads it (YAML semantics included);
    a mapping or JSON text becomes JSON (a bare section gets its ``omniRelay`` key)."""
    if isinstance(config, Path) or (isinstance(config, str) and not config.lstrip().startswith("{")):
        return "", str(config)
    data = json.loads(config) if isinstance(config, str) else dict(config)
    if not any(k.lower() == "omnirelay" for k in data):
        data = {"omniRelay": data}
    return json.dumps(data), ""


class Node:
    """One node: construct from config, register procedures, ``start()``, ``stop()``.

    Configuration errors raise ``omnirelay.errors.InvalidArgument`` naming the
    key path (``omniRelay.outbounds.x.peerChooser: unknown chooser ...``).
    """

    def __init__(self, config: ConfigLike, *, sets: Iterable[str] = (),
                 python_threads: int = 4, use_environment: bool = True) -> None:
        # Same order as `serve`: file or mapping, OMNIRELAY__* environment, sets.
        config_json, config_path = _config_source(config)
        self._native = _core.Node(config_json, list(sets), python_threads,
                                  config_path=config_path, use_environment=use_environment)
        self._ready: Dict[str, Any] = {}
        self._started = False

    # -- procedures -------------------------------------------------------
    def register_unary(self, name: str, handler: Handler, *, service: str = "") -> None:
        """Registers ``handler(body, meta) -> bytes`` as a unary procedure."""
        self._native.register_unary(service, name, handler)

    def procedure(self, name: str, *, service: str = "") -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register_unary`."""

        def decorate(handler: Handler) -> Handler:
            self.register_unary(name, handler, service=service)
            return handler

        return decorate

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "Node":
        self._native.start()
        self._ready = json.loads(self._native.ready_info())
        self._started = True
        return self

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Drains (new calls get Unavailable) and stops; idempotent."""
        if self._started:
            self._native.stop(drain_seconds)
            self._started = False

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- calls ------------------------------------------------------------
    def call(self, outbound: str, procedure: str, body: bytes = b"", *, service: str = "",
             headers: Optional[Mapping[str, str]] = None,
             timeout: Optional[float] = None) -> bytes:
        """Calls ``service/procedure`` through the named outbound; returns the body."""
        return self.call_with_headers(outbound, procedure, body, service=service,
                                      headers=headers, timeout=timeout)[0]

    def call_with_headers(self, outbound: str, procedure: str, body: bytes = b"", *,
                          service: str = "", headers: Optional[Mapping[str, str]] = None,
                          timeout: Optional[float] = None) -> Tuple[bytes, Dict[str, str]]:
        return self._native.call(outbound, service, procedure, body, dict(headers or {}), timeout)

    # -- addresses / diagnostics -----------------------------------------
    @property
    def grpc_address(self) -> Optional[str]:
        return self._ready.get("grpc")

    @property
    def http_address(self) -> Optional[str]:
        return self._ready.get("http")

    @property
    def admin_address(self) -> Optional[str]:
        return self._ready.get("admin")

    def introspect(self) -> Dict[str, Any]:
        return json.loads(self._native.introspect())


__all__ = ["Node", "Handler"]
