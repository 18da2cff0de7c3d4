"""Process fixtures and wire helpers for the data-plane tests.

Nodes are real `omnirelay-native` processes started directly (never behind a
shell), announced through their ready file, and always stopped: SIGTERM, then
SIGKILL after a timeout. Every address is 127.0.0.1 with port 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

try:
    from omnirelay._native import find_native_binary
except Exception:  # pragma: no cover - the package may not be importable
    find_native_binary = None  # type: ignore

REPO = Path(__file__).resolve().parents[2]


def native_binary() -> Path:
    override = os.environ.get("OMNIRELAY_NATIVE_BIN")
    if override:
        return Path(override)
    if find_native_binary is not None:
        return Path(find_native_binary())
    candidates = sorted(REPO.glob("build/*/cpp/omnirelay/cli/omnirelay-native"),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        raise RuntimeError("omnirelay-native not built")
    return candidates[0]


class NodeProcess:
    """One running node; `ready` holds the ready file (grpc/http/admin)."""

    def __init__(self, args: List[str], tmp_path: Path, name: str, env: Optional[dict] = None):
        self.ready_file = tmp_path / f"{name}.ready.json"
        self.log_file = tmp_path / f"{name}.log"
        cmd = [str(native_binary())] + args + ["--ready-file", str(self.ready_file),
                                               "--log-file", str(self.log_file)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=full_env)
        self.ready: Dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.ready = json.loads(self.ready_file.read_text())
                return
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                raise RuntimeError(f"{name} exited {self.process.returncode}: {err}{out}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{name} did not become ready")

    @property
    def grpc(self) -> str:
        return self.ready["grpc"]

    @property
    def http(self) -> str:
        return self.ready["http"]

    @property
    def admin(self) -> str:
        return self.ready["admin"]

    def get_json(self, path: str) -> Any:
        status, body, _ = http_request("GET", f"http://{self.admin}{path}")
        assert status == 200, (path, status, body)
        return json.loads(body)

    def metrics(self) -> str:
        return http_request("GET", f"http://{self.admin}/metrics")[1].decode()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 15) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


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
