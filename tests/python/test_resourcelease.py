"""ResourceLease over real node processes: the RPC surface over HTTP and gRPC (JSON
and protobuf), long polls, lease expiry, backpressure that throttles the node by
itself with its control endpoints (GET + SSE), metrics, and the health probe."""

from __future__ import annotations

import base64
import importlib
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from dataplane_support import NodeProcess, http_request, metric_total
from omnirelay import errors
from omnirelay.resourcelease import ResourceLeaseClient, Worker


@pytest.fixture
def nodes(tmp_path):
    started = []

    def start(args, name, env=None):
        node = NodeProcess(args, tmp_path, name, env)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def rl_config(tmp_path, name="rl", namespaces=None, **extra):
    section = {
        "service": name,
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}, "http": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "echo": {"instance": name},
        # The test clients name their principal in x-client-principal, as a
        # trusted local proxy would (docs/security.md: trusted proxies only).
        "principal": {"trustedProxies": ["127.0.0.1"]},
        "resourceLease": {
            "maxLeaseWait": "10s",
            "namespaces": namespaces or {
                "default": {"leaseDuration": "1s", "maxAttempts": 2, "maxBodyBytes": 64},
                "billing": {"leaseDuration": "30s"},
            },
        },
    }
    section.update(extra)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"omniRelay": section}))
    return path


def start_node(nodes, tmp_path, name="rl", **kwargs):
    return nodes(["serve", "--config", str(rl_config(tmp_path, name, **kwargs))], name)


def address(node, transport):
    return node.http if transport == "http" else node.grpc


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_rpc_surface_semantics(nodes, tmp_path, transport):
    node = start_node(nodes, tmp_path)
    addr = address(node, transport)
    alice = ResourceLeaseClient(addr, transport=transport, principal="alice")
    bob = ResourceLeaseClient(addr, transport=transport, principal="bob")

    first = alice.enqueue("table", "orders", b"payload-1", request_id="req-1", partition_key="p1",
                          attributes={"tenant": "acme"}, priority=3)
    assert first["duplicate"] is False and first["state"] == "pending"
    again = alice.enqueue("table", "orders", b"payload-1", request_id="req-1")
    assert again["duplicate"] is True and again["itemId"] == first["itemId"]

    lease = alice.lease()
    assert lease is not None
    assert (lease.resource_type, lease.resource_id, lease.body) == ("table", "orders", b"payload-1")
    assert lease.attributes == {"tenant": "acme"} and lease.partition_key == "p1" and lease.priority == 3
    assert lease.owner == "alice" and lease.attempt == 1
    before = lease.expires_at_ms
    time.sleep(0.05)
    assert alice.heartbeat(lease) > before

    # Completing an item one does not own: PERMISSION_DENIED, nothing changes.
    with pytest.raises(errors.PermissionDenied) as denied:
        bob.complete(lease)
    assert denied.value.error_code == "not-lease-owner"
    # A stale fencing token: FAILED_PRECONDITION.
    stale = type(lease)(**{**lease.__dict__, "fencing_token": lease.fencing_token - 1 or 999})
    with pytest.raises(errors.FailedPrecondition) as rejected:
        alice.complete(stale)
    assert rejected.value.error_code == "stale-fencing-token"
    alice.complete(lease)
    with pytest.raises(errors.NotFound):
        alice.complete(lease)
    assert alice.enqueue("table", "orders", request_id="req-1")["state"] == "completed"

    # Fail requeues, and after maxAttempts (2) the item is dead-lettered, kept and requeue-able.
    alice.enqueue("table", "poison", b"x", request_id="req-2")
    l1 = alice.lease()
    assert alice.fail(l1, "boom") == "pending"
    l2 = alice.lease()
    assert l2.attempt == 2 and l2.fencing_token > l1.fencing_token
    assert alice.fail(l2, "boom again") == "dead-letter"
    dead = alice.dead_letters()
    assert [d["item"]["requestId"] for d in dead] == ["req-2"] and dead[0]["lastError"] == "boom again"
    assert alice.requeue() == 1
    l3 = alice.lease()
    assert l3.request_id == "req-2" and l3.attempt == 1
    alice.complete(l3)

    # Bad input: precise status, nothing changes.
    with pytest.raises(errors.InvalidArgument) as too_big:
        alice.enqueue("table", "big", b"x" * 65)
    assert too_big.value.error_code == "body-too-large"
    with pytest.raises(errors.InvalidArgument):
        alice.enqueue("table", "bad", priority=12)
    with pytest.raises(errors.InvalidArgument):
        alice.call("enqueue", {"item": {"resourceType": "t"}, "bogusField": 1})
    with pytest.raises(errors.Unimplemented):
        ResourceLeaseClient(addr, "nosuch", transport=transport).enqueue("t", "i")
    assert alice.stats()["pending"] == "0" or alice.stats()["pending"] in (0, "0")

    # Namespaces are separate queues.
    billing = ResourceLeaseClient(addr, "billing", transport=transport, principal="alice")
    billing.enqueue("invoice", "inv-1", request_id="inv-1")
    assert alice.lease() is None
    got = billing.lease()
    assert got.resource_id == "inv-1"
    billing.complete(got)
    alice.close(), bob.close(), billing.close()


def test_malformed_json_over_raw_http_is_invalid_argument(nodes, tmp_path):
    node = start_node(nodes, tmp_path)
    status, body, headers = http_request("POST", f"http://{node.http}/resourcelease/enqueue",
                                         b"{not json", {"rpc-encoding": "json"})
    assert status == 400 and headers["rpc-status"] == "INVALID_ARGUMENT", body
    assert b"not a valid JSON EnqueueRequest" in body


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_long_poll_waits_without_busy_loop_and_times_out(nodes, tmp_path, transport):
    node = start_node(nodes, tmp_path)
    addr = address(node, transport)
    worker = ResourceLeaseClient(addr, transport=transport, principal="w")
    started = time.monotonic()
    assert worker.lease(wait=0.5) is None
    assert 0.4 <= time.monotonic() - started < 5

    result = {}

    def poll():
        result["lease"] = worker.lease(wait=8)
        result["at"] = time.monotonic()

    thread = threading.Thread(target=poll)
    thread.start()
    deadline = time.monotonic() + 5
    while node.get_json("/omnirelay/control/resourcelease")["namespaces"]["default"]["waiters"] != 1:
        assert time.monotonic() < deadline, "the long poll never parked"
        time.sleep(0.02)
    sent = time.monotonic()
    ResourceLeaseClient(addr, transport=transport).enqueue("job", "j1", request_id="j1")
    thread.join(10)
    assert result["lease"] is not None and result["lease"].request_id == "j1"
    assert result["at"] - sent < 2, "the parked poll was answered by the enqueue"
    worker.complete(result["lease"])


def test_protobuf_encoding_over_grpc(nodes, tmp_path):
    protoc = shutil.which("protoc")
    assert protoc, "protoc is installed by scripts/install-deps.sh"
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = tmp_path / "gen"
    out.mkdir()
    subprocess.run([protoc, f"--proto_path={repo / 'proto'}", f"--python_out={out}",
                    "omnirelay/resourcelease/v1/resourcelease.proto"], check=True)
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("omnirelay.resourcelease.v1.resourcelease_pb2")
    except ModuleNotFoundError:
        # `omnirelay` is already the installed package: load the file directly.
        spec = importlib.util.spec_from_file_location(
            "rl_pb2", out / "omnirelay/resourcelease/v1/resourcelease_pb2.py")
        pb = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pb)
    finally:
        sys.path.remove(str(out))
    node = start_node(nodes, tmp_path)
    meta = [("x-client-principal", "proto-worker")]
    with grpc.insecure_channel(node.grpc) as channel:
        def call(name, request, response_type):
            method = channel.unary_unary(f"/resourcelease/{name}",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=response_type.FromString)
            return method(request, timeout=10, metadata=meta)

        enq = call("enqueue", pb.EnqueueRequest(item=pb.ItemPayload(
            resource_type="blob", resource_id="b1", body=b"\x00\x01\xff", request_id="pb-1")),
            pb.EnqueueResponse)
        assert enq.item_id > 0 and not enq.duplicate
        lease = call("lease", pb.LeaseRequest(wait_ms=0), pb.LeaseResponse)
        assert lease.leased and lease.item.body == b"\x00\x01\xff" and lease.owner == "proto-worker"
        ref = pb.LeaseRef(item_id=lease.item_id, fencing_token=lease.fencing_token)
        hb = call("heartbeat", pb.HeartbeatRequest(lease=ref), pb.HeartbeatResponse)
        assert hb.expires_at_ms >= lease.expires_at_ms
        call("complete", pb.CompleteRequest(lease=ref), pb.CompleteResponse)
        with pytest.raises(grpc.RpcError) as stale:
            call("complete", pb.CompleteRequest(lease=ref), pb.CompleteResponse)
        assert stale.value.code() == grpc.StatusCode.NOT_FOUND
        # The same queue answers JSON callers: one queue, two encodings.
        call("enqueue", pb.EnqueueRequest(item=pb.ItemPayload(resource_type="blob", resource_id="b2",
                                                              request_id="pb-2")), pb.EnqueueResponse)
        drained = call("drain", pb.DrainRequest(), pb.DrainResponse)
        assert [r.item.request_id for r in drained.items] == ["pb-2"]
        restored = call("restore", pb.RestoreRequest(items=drained.items), pb.RestoreResponse)
        assert restored.restored == 1
    json_lease = ResourceLeaseClient(node.http, principal="j").lease()
    assert json_lease.request_id == "pb-2"


def test_a_worker_that_dies_mid_lease_loses_nothing(nodes, tmp_path):
    node = start_node(nodes, tmp_path)
    client = ResourceLeaseClient(node.http, principal="crashy")
    client.enqueue("job", "j", b"work", request_id="job-1")
    lost = client.lease()
    assert lost is not None  # ... and the worker "dies": no heartbeat, no complete
    survivor = ResourceLeaseClient(node.http, principal="survivor")
    got = survivor.lease(wait=5)  # leaseDuration is 1s: the item comes back
    assert got is not None and got.request_id == "job-1"
    assert got.attempt == 2 and got.fencing_token > lost.fencing_token
    with pytest.raises(errors.FailedPrecondition):
        client.complete(lost)
    survivor.complete(got)
    text = node.metrics()
    assert metric_total(text, "omnirelay_resourcelease_expirations_total", resourcelease_namespace="default") == 1


def test_worker_helper_heartbeats_and_completes(nodes, tmp_path):
    node = start_node(nodes, tmp_path, namespaces={"default": {"leaseDuration": "1500ms"}})
    client = ResourceLeaseClient(node.http, principal="helper")
    for i in range(5):
        client.enqueue("job", f"j{i}", request_id=f"h-{i}")
    seen = []

    def handler(lease):
        seen.append(lease.request_id)
        if lease.request_id == "h-2" and lease.attempt == 1:
            raise RuntimeError("transient")
        if lease.request_id == "h-0":
            time.sleep(2.5)  # longer than the lease: only heartbeats keep it alive

    worker = Worker(client, handler, heartbeat_interval=0.2, lease_wait=0.3)
    worker.run(max_items=6, idle_exit=5)
    assert worker.completed == 5 and worker.failed == 1 and worker.lost == 0
    assert sorted(set(seen)) == [f"h-{i}" for i in range(5)]
    stats = node.get_json("/omnirelay/control/resourcelease")["namespaces"]["default"]
    assert stats["completed"] == 5 and stats["expired"] == 0 and stats["pending"] == 0


class SseReader(threading.Thread):
    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.events = []
        self.response = None

    def run(self):
        self.response = urllib.request.urlopen(self.url, timeout=30)
        event = None
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event, json.loads(line[6:])))
        except (OSError, ValueError, AttributeError):
            return  # the test closed the stream


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_backpressure_throttles_the_node_and_is_observable(nodes, tmp_path):
    node = start_node(
        nodes, tmp_path,
        namespaces={"default": {"highWatermark": 3, "lowWatermark": 1, "retryAfter": "2s"}},
        middleware={"rateLimit": {"maxConcurrency": 64, "backpressure": {"maxConcurrency": 1}}})
    state = node.get_json("/omnirelay/control/backpressure")
    assert state["namespaces"]["default"]["active"] is False and state["rateLimit"]["mode"] == "normal"
    sse = SseReader(f"http://{node.admin}/omnirelay/control/backpressure/stream")
    sse.start()
    wait_for(lambda: any(e == "snapshot" for e, _ in sse.events), what="the SSE snapshot")

    client = ResourceLeaseClient(node.http, principal="p")
    for i in range(3):
        client.enqueue("job", f"j{i}", request_id=f"bp-{i}")
    with pytest.raises(errors.ResourceExhausted) as pushed_back:
        client.enqueue("job", "j3", request_id="bp-3")
    assert pushed_back.value.error_code == "resourcelease-backpressure"
    assert pushed_back.value.retry_after == 2.0
    status, _, headers = http_request(
        "POST", f"http://{node.http}/resourcelease/enqueue",
        json.dumps({"item": {"resourceType": "job", "resourceId": "x"}}).encode(), {"rpc-encoding": "json"})
    assert status == 429 and headers["retry-after"] == "2"
    with grpc.insecure_channel(node.grpc) as channel:
        with pytest.raises(grpc.RpcError) as grpc_error:
            channel.unary_unary("/resourcelease/enqueue")(
                json.dumps({"item": {"resourceType": "job"}}).encode(), timeout=5,
                metadata=[("rpc-encoding", "json")])
        assert grpc_error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(grpc_error.value.trailing_metadata())["retry-after-ms"] == "2000"

    state = node.get_json("/omnirelay/control/backpressure")
    assert state["namespaces"]["default"]["active"] is True
    assert state["rateLimit"]["mode"] == "backpressure", "the node's rate limiter flipped by itself"
    health = http_request("GET", f"http://{node.admin}/omnirelay/control/resourcelease/health")
    assert health[0] == 200 and json.loads(health[1])["status"] == "degraded"

    for _ in range(2):  # 3 -> 1 pending: at the low watermark, resume
        client.complete(client.lease())
    state = node.get_json("/omnirelay/control/backpressure")
    assert state["namespaces"]["default"]["active"] is False and state["rateLimit"]["mode"] == "normal"
    client.enqueue("job", "j3", request_id="bp-3")

    wait_for(lambda: [d["active"] for e, d in sse.events if e == "transition"] == [True, False],
             what="two SSE transitions")
    text = node.metrics()
    assert metric_total(text, "omnirelay_resourcelease_backpressure_transitions_total",
                        resourcelease_namespace="default") == 2
    assert metric_total(text, "omnirelay_resourcelease_pending", resourcelease_namespace="default") == 2
    assert metric_total(text, "omnirelay_resourcelease_leases_total", resourcelease_namespace="default") == 2
    assert "omnirelay_resourcelease_queue_wait_seconds_bucket" in text
    assert "omnirelay_resourcelease_lease_hold_seconds_bucket" in text
    if sse.response is not None:
        sse.response.close()


def test_drained_queue_reports_unhealthy_and_spans_carry_the_operation(nodes, tmp_path):
    node = start_node(nodes, tmp_path)
    client = ResourceLeaseClient(node.http)
    client.enqueue("job", "a", request_id="d-1")
    assert [r["item"]["requestId"] for r in client.drain()] == ["d-1"]
    with pytest.raises(errors.Unavailable):
        client.enqueue("job", "b", request_id="d-2")
    status, body, _ = http_request("GET", f"http://{node.admin}/omnirelay/control/resourcelease/health")
    assert status == 503 and "drained" in json.loads(body)["reasons"][0]
    spans = node.get_json("/omnirelay/traces")["spans"]
    operations = {s.get("attributes", {}).get("resourcelease.operation") for s in spans}
    assert {"enqueue", "drain"} <= operations


def test_config_errors_name_the_key_path(tmp_path):
    from dataplane_support import native_binary

    path = rl_config(tmp_path, namespaces={"Bad Name": {}, "ok": {"highWatermark": 5, "lowWatermark": 9}})
    result = subprocess.run([str(native_binary()), "config", "validate", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "omniRelay.resourceLease.namespaces.Bad Name" in text
    assert "omniRelay.resourceLease.namespaces.ok.lowWatermark" in text
