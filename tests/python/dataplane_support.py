"""Process fixtures and wire helpers for the data-plane tests.

Nodes are real `omnirelay-native` processes started by the shared launcher
(omnirelay.harness.launcher.ReadyProcess): directly, announced through their
ready file, always stopped (SIGTERM, then SIGKILL after a timeout). Every
address is 127.0.0.1 with port 0.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

from omnirelay import _protowire as protowire
from omnirelay._native import find_native_binary
from omnirelay.harness.launcher import ReadyProcess
from omnirelay.harness.metrics import MetricsSnapshot

REPO = Path(__file__).resolve().parents[2]


def native_binary() -> Path:
    return Path(find_native_binary())


class NodeProcess(ReadyProcess):
    """One running node (the shared launcher, omnirelay.harness.ReadyProcess)."""

    def __init__(self, args: List[str], tmp_path: Path, name: str, env: Optional[dict] = None):
        super().__init__(args, tmp_path, name, env=env)

    def get_json(self, path: str) -> Any:
        status, body, _ = http_request("GET", f"http://{self.admin}{path}")
        assert status == 200, (path, status, body)
        return json.loads(body)

    def metrics(self) -> str:
        return http_request("GET", f"http://{self.admin}/metrics")[1].decode()


def http_request(method: str, url: str, body: bytes = b"", headers: Optional[dict] = None,
                 timeout: float = 10):
    request = urllib.request.Request(url, data=body if method != "GET" else None,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, error.read(), {k.lower(): v for k, v in error.headers.items()}


# --- omnirelay.echo.v1 messages, through the package's wire helpers (no generated stubs)

def echo_request(payload: bytes, count: int = 0) -> bytes:
    # The payload is sent even when empty: the echo contract's field 1 is bytes.
    return b"\x0a" + protowire.varint(len(payload)) + payload + protowire.encode([(2, int(count))])


def parse_echo_response(data: bytes) -> Dict[str, Any]:
    f = protowire.decode(data)
    return {"payload": protowire.one(f, 1, b""), "instance": protowire.one(f, 2, ""),
            "index": protowire.one(f, 3, 0)}


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series' values whose labels include ``labels`` (0 if
    none), through the harness's one exposition parser."""
    return MetricsSnapshot.parse(text).value(name, 0.0, **labels)
