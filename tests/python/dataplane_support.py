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

from omnirelay._native import find_native_binary
from omnirelay.harness.launcher import ReadyProcess

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


# --- protobuf wire helpers for omnirelay.echo.v1 (no generated stubs needed)

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def echo_request(payload: bytes, count: int = 0) -> bytes:
    out = b"\x0a" + _varint(len(payload)) + payload
    if count:
        out += b"\x10" + _varint(count)
    return out


def parse_echo_response(data: bytes) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"payload": b"", "instance": "", "index": 0}
    i = 0
    while i < len(data):
        key = data[i]
        i += 1
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, shift = 0, 0
            while True:
                b = data[i]
                i += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if field == 3:
                fields["index"] = value
        elif wire == 2:
            length, shift = 0, 0
            while True:
                b = data[i]
                i += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            chunk = data[i:i + length]
            i += length
            if field == 1:
                fields["payload"] = chunk
            elif field == 2:
                fields["instance"] = chunk.decode()
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series' values whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series = head[len(name):]
        if series and not series.startswith("{"):
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total
