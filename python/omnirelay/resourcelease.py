"""ResourceLease from Python: a client of the ``resourcelease::*`` procedures and a worker loop.

The client speaks the JSON encoding of the procedures (the proto3 JSON mapping of
``proto/omnirelay/resourcelease/v1/resourcelease.proto``) over HTTP or gRPC; both
reach the same handlers on the node, with identical semantics::

    client = ResourceLeaseClient("127.0.0.1:8080", namespace="billing", principal="worker-1")
    client.enqueue("invoice", "inv-42", body=b"...", request_id="inv-42")
    lease = client.lease(wait=5.0)
    if lease:
        ...
        client.complete(lease)

``Worker`` runs the usual loop: lease with a long poll, heartbeat in the background
while the handler works, complete on return, fail (requeue) on an exception.

Errors are ``omnirelay.errors`` exceptions carrying the node's status and error code
(``ResourceExhausted`` with ``error_code == "resourcelease-backpressure"`` and
``retry_after`` seconds when the queue pushes back).
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

from omnirelay import errors

__all__ = ["Lease", "ResourceLeaseClient", "Worker", "service_name"]

_STATUS_BY_NAME = {cls.name: cls for cls in errors._BY_CODE.values()}  # noqa: SLF001


def service_name(namespace: str = "default") -> str:
    """``default`` -> ``resourcelease``, ``billing`` -> ``resourcelease.billing``."""
    return "resourcelease" if namespace in ("", "default") else f"resourcelease.{namespace}"


@dataclass
class Lease:
    """An item leased to this client: its ownership handle plus the payload."""

    item_id: int
    fencing_token: int
    owner: str
    attempt: int
    expires_at_ms: int
    resource_type: str = ""
    resource_id: str = ""
    partition_key: str = ""
    attributes: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    request_id: str = ""
    priority: int = 0

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Lease":
        item = data.get("item", {})
        return cls(
            item_id=int(data["itemId"]),
            fencing_token=int(data["fencingToken"]),
            owner=data.get("owner", ""),
            attempt=int(data.get("attempt", 0)),
            expires_at_ms=int(data.get("expiresAtMs", 0)),
            resource_type=item.get("resourceType", ""),
            resource_id=item.get("resourceId", ""),
            partition_key=item.get("partitionKey", ""),
            attributes=dict(item.get("attributes", {})),
            body=base64.b64decode(item.get("body", "")),
            request_id=item.get("requestId", ""),
            priority=int(item.get("priority", 0)),
        )

    def ref(self) -> Dict[str, str]:
        return {"itemId": str(self.item_id), "fencingToken": str(self.fencing_token)}


def _error(status_name: str, message: str, error_code: Optional[str], retry_after: Optional[float]):
    cls = _STATUS_BY_NAME.get(status_name, errors.Unknown)
    exc = cls(message, error_code)
    exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc


class ResourceLeaseClient:
    """Calls one node's ResourceLease procedures.

    ``address`` is the node's HTTP inbound (``transport="http"``) or gRPC inbound
    (``transport="grpc"``). ``principal`` travels as ``x-client-principal``, which the
    node's principal middleware binds as the lease owner. Thread-safe: each call
    opens its own HTTP connection (or shares the thread-safe gRPC channel).
    """

    def __init__(
        self,
        address: str,
        namespace: str = "default",
        *,
        transport: str = "http",
        principal: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        if transport not in ("http", "grpc"):
            raise ValueError("transport must be 'http' or 'grpc'")
        self.address = address.replace("http://", "").rstrip("/")
        self.namespace = namespace
        self.service = service_name(namespace)
        self.transport = transport
        self.principal = principal
        self.timeout = timeout
        self._channel = None
        if transport == "grpc":
            import grpc  # python3-grpcio

            self._channel = grpc.insecure_channel(self.address)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> "ResourceLeaseClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport --------------------------------------------------------------

    def call(self, procedure: str, request: Dict[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
        """Calls ``<service>::<procedure>`` with a JSON request; returns the JSON answer."""
        timeout = self.timeout if timeout is None else timeout
        body = json.dumps(request).encode()
        headers = {"rpc-encoding": "json", "rpc-ttl-ms": str(int(timeout * 1000))}
        if self.principal:
            headers["x-client-principal"] = self.principal
        if self.transport == "grpc":
            return self._call_grpc(procedure, body, headers, timeout)
        return self._call_http(procedure, body, headers, timeout)

    def _call_http(self, procedure: str, body: bytes, headers: Dict[str, str], timeout: float) -> Dict[str, Any]:
        host, _, port = self.address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout + 5)
        try:
            conn.request("POST", f"/{self.service}/{procedure}", body=body,
                         headers={**headers, "content-type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status == 200:
                return json.loads(data) if data else {}
            status = response.getheader("rpc-status") or ""
            try:
                detail = json.loads(data)
            except ValueError:
                detail = {"message": data.decode(errors="replace")}
            retry = response.getheader("retry-after-ms")
            raise _error(
                status or detail.get("status", "UNKNOWN"),
                detail.get("message", f"HTTP {response.status}"),
                detail.get("errorCode") or response.getheader("rpc-error-code"),
                int(retry) / 1000.0 if retry else None,
            )
        finally:
            conn.close()

    def _call_grpc(self, procedure: str, body: bytes, headers: Dict[str, str], timeout: float) -> Dict[str, Any]:
        import grpc

        method = self._channel.unary_unary(f"/{self.service}/{procedure}")
        metadata = [(k, v) for k, v in headers.items() if k != "rpc-ttl-ms"]
        try:
            data = method(body, timeout=timeout + 5, metadata=metadata)
        except grpc.RpcError as rpc_error:
            trailers = dict(rpc_error.trailing_metadata() or ())
            retry = trailers.get("retry-after-ms")
            raise _error(
                rpc_error.code().name,
                rpc_error.details() or "",
                trailers.get("rpc-error-code"),
                int(retry) / 1000.0 if retry else None,
            ) from None
        return json.loads(data) if data else {}

    # -- procedures -------------------------------------------------------------

    def enqueue(
        self,
        resource_type: str,
        resource_id: str,
        body: bytes = b"",
        *,
        request_id: str = "",
        partition_key: str = "",
        attributes: Optional[Dict[str, str]] = None,
        priority: int = 0,
    ) -> Dict[str, Any]:
        """Returns ``{"itemId", "duplicate", "requestId", "state"}``."""
        if isinstance(body, str):
            body = body.encode()
        item = {
            "resourceType": resource_type,
            "resourceId": resource_id,
            "partitionKey": partition_key,
            "attributes": dict(attributes or {}),
            "body": base64.b64encode(body).decode(),
            "requestId": request_id,
            "priority": priority,
        }
        return self.call("enqueue", {"item": item})

    def lease(self, wait: float = 0.0) -> Optional[Lease]:
        """The next item, waiting up to ``wait`` seconds (long poll); None if none came."""
        answer = self.call("lease", {"waitMs": int(wait * 1000)}, timeout=max(self.timeout, wait + 5))
        return Lease.from_json(answer) if answer.get("leased") else None

    def heartbeat(self, lease: Lease) -> int:
        """Extends the lease; returns the new expiry (Unix ms)."""
        answer = self.call("heartbeat", {"lease": lease.ref()})
        lease.expires_at_ms = int(answer.get("expiresAtMs", 0))
        return lease.expires_at_ms

    def complete(self, lease: Lease) -> None:
        self.call("complete", {"lease": lease.ref()})

    def fail(self, lease: Lease, error: str = "", *, requeue: bool = True) -> str:
        """Returns the item's new state: ``pending``, ``active`` or ``dead-letter``."""
        return self.call("fail", {"lease": lease.ref(), "error": error, "requeue": requeue})["state"]

    def drain(self) -> List[Dict[str, Any]]:
        """Stops the queue and returns its pending items (records for ``restore``)."""
        return list(self.call("drain", {}).get("items", []))

    def restore(self, items: Iterable[Dict[str, Any]]) -> Dict[str, int]:
        answer = self.call("restore", {"items": list(items)})
        return {"restored": int(answer.get("restored", 0)), "skipped": int(answer.get("skipped", 0))}

    def stats(self) -> Dict[str, Any]:
        return self.call("stats", {})

    def dead_letters(self) -> List[Dict[str, Any]]:
        return list(self.call("deadLetters", {}).get("items", []))

    def requeue(self, item_ids: Optional[Iterable[int]] = None) -> int:
        ids = [str(i) for i in (item_ids or [])]
        return int(self.call("requeue", {"itemIds": ids}).get("requeued", 0))


class Worker:
    """Leases items and runs ``handler(lease)`` on each, heartbeating meanwhile.

    The handler's return completes the item; an exception fails it (requeued, so it
    is retried up to the queue's ``maxAttempts`` and then dead-lettered). A lease
    that the node rejects while the handler runs (stale token: the lease expired and
    another worker owns the item now) is counted in ``lost`` and not completed.
    """

    def __init__(
        self,
        client: ResourceLeaseClient,
        handler: Callable[[Lease], Any],
        *,
        heartbeat_interval: float = 1.0,
        lease_wait: float = 1.0,
    ) -> None:
        self.client = client
        self.handler = handler
        self.heartbeat_interval = heartbeat_interval
        self.lease_wait = lease_wait
        self.completed = 0
        self.failed = 0
        self.lost = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def run_once(self) -> bool:
        """Leases one item (waiting up to ``lease_wait``) and processes it; False if none came."""
        lease = self.client.lease(wait=self.lease_wait)
        if lease is None:
            return False
        done = threading.Event()
        lost = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat_interval):
                try:
                    self.client.heartbeat(lease)
                except (errors.FailedPrecondition, errors.NotFound, errors.PermissionDenied):
                    lost.set()
                    return
                except errors.OmniRelayError:
                    continue  # transient: try again next beat

        beater = threading.Thread(target=beat, name="resourcelease-heartbeat", daemon=True)
        beater.start()
        try:
            self.handler(lease)
        except Exception as error:  # noqa: BLE001  (any handler failure fails the attempt)
            done.set()
            beater.join()
            try:
                self.client.fail(lease, f"{type(error).__name__}: {error}")
                self.failed += 1
            except (errors.FailedPrecondition, errors.NotFound, errors.PermissionDenied):
                self.lost += 1
            return True
        done.set()
        beater.join()
        try:
            self.client.complete(lease)
            self.completed += 1
        except (errors.FailedPrecondition, errors.NotFound, errors.PermissionDenied):
            self.lost += 1
        return True

    def run(self, max_items: Optional[int] = None, idle_exit: Optional[float] = None) -> None:
        """Processes items until ``stop()``, ``max_items`` processed, or idle for ``idle_exit`` s."""
        processed = 0
        idle_since = time.monotonic()
        while not self._stop.is_set():
            if max_items is not None and processed >= max_items:
                return
            try:
                got = self.run_once()
            except (errors.Unavailable, OSError):
                got = False  # drained, restarting or unreachable: wait and try again
                self._stop.wait(0.2)
            if got:
                processed += 1
                idle_since = time.monotonic()
            elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                return

    def start(self, **kwargs: Any) -> "Worker":
        self._thread = threading.Thread(target=self.run, kwargs=kwargs, name="resourcelease-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
