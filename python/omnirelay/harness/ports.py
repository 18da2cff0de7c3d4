"""Free TCP ports on 127.0.0.1 for nodes and proxies.

Ports come from 20000-32767: below the kernel's ephemeral range
(32768-60999 here), so an outgoing connection of some other process cannot
grab a port between our check and the node's bind. A port is handed out once
per harness process and checked by binding it (without SO_REUSEADDR, so a
port in TIME_WAIT or held by anyone is skipped).
"""

from __future__ import annotations

import errno
import random
import socket
import threading
from typing import Set

HOST = "127.0.0.1"
LOW, HIGH = 20000, 32767


class PortInUse(RuntimeError):
    pass


class PortAllocator:
    def __init__(self, low: int = LOW, high: int = HIGH) -> None:
        self._low, self._high = low, high
        self._given: Set[int] = set()
        self._lock = threading.Lock()
        self._random = random.Random()  # not the fault RNG: ports need not replay

    def allocate(self) -> int:
        with self._lock:
            for _ in range(500):
                port = self._random.randint(self._low, self._high)
                if port in self._given:
                    continue
                if is_free(port):
                    self._given.add(port)
                    return port
        raise PortInUse(f"no free TCP port on {HOST} in {self._low}-{self._high} after 500 tries")

    def release(self, port: int) -> None:
        with self._lock:
            self._given.discard(port)


def is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_free(port: int, what: str, host: str = HOST) -> None:
    if not is_free(port, host):
        raise PortInUse(f"{what}: port {host}:{port} is already in use")


ALLOCATOR = PortAllocator()
