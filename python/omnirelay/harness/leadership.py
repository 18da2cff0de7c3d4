"""Leadership in topologies and scenarios (issue 11, docs/leadership.md).

* :func:`add_etcd` puts a real etcd server (Debian's ``/usr/bin/etcd``) into a
  topology as a node of its own, on harness-allocated ports, so the etcd
  coordination store is started, killed and paused like any node.
* :func:`apply_leadership` gives every serve node an ``omniRelay.leadership``
  block: the store (``sqlite``: one file in the cluster directory shared by the
  nodes of this host; ``etcd``: the etcd node) and the scopes it may lead.
* :func:`leaders`, :func:`promote`, :func:`fenced_write` call a node's admin
  endpoints (``/omnirelay/control/leaders``, ``.../promote``, ``.../fenced-write``).
* ``omnirelay mesh leaders|promote`` are the CLI verbs on top of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omnirelay import _protowire as protowire
from omnirelay.mesh import MESH_SUBVERBS  # the `omnirelay mesh` verb's table
from omnirelay.topology import Topology, TopologyBuilder

ETCD_BINARY = "/usr/bin/etcd"
PROMETHEUS_BINARY = "/usr/bin/prometheus"


def add_etcd(builder: TopologyBuilder, name: str = "etcd") -> TopologyBuilder:
    """Adds an etcd node (ports ``client`` and ``peer``; ready when ``client`` accepts TCP)."""
    binary = shutil.which("etcd") or ETCD_BINARY
    spec = builder.node(name, role="etcd", ports=["client", "peer"])
    spec.with_command(binary, [
        "--name", name,
        "--data-dir", "${self.dir}/data",
        "--listen-client-urls", "http://${self.client}",
        "--advertise-client-urls", "http://${self.client}",
        "--listen-peer-urls", "http://${self.peer}",
        "--initial-advertise-peer-urls", "http://${self.peer}",
        "--initial-cluster", name + "=http://${self.peer}",
        # Short Raft timings so 1-2 s leases are allowed.
        "--heartbeat-interval", "50",
        "--election-timeout", "500",
    ])
    spec.with_ready(ready_file=False, http=None, ports=["client"], timeout_s=30.0)
    return builder


def add_prometheus(builder: TopologyBuilder, scrape: Sequence[str] = ("*",), name: str = "prometheus",
                   interval: str = "1s") -> TopologyBuilder:
    """Adds a Prometheus server (Debian's ``prometheus``) scraping ``/metrics`` on
    the admin port of every node whose role is in ``scrape`` (``*`` = every
    serve node). Its HTTP API is on the node's ``web`` port; query it with
    :func:`prometheus_query`."""
    binary = shutil.which("prometheus") or PROMETHEUS_BINARY
    targets = [f"${{all.{role}.admin}}" for role in scrape]
    spec = builder.node(name, role="prometheus", ports=["web"])
    spec.with_config({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "omnirelay", "metrics_path": "/metrics",
                            "static_configs": [{"targets": targets}]}],
    })
    spec.with_command(binary, [
        "--config.file=${self.config_file}",
        "--storage.tsdb.path=${self.dir}/tsdb",
        "--web.listen-address=${self.web}",
    ])
    spec.with_ready(ready_file=False, http=None, ports=["web"], timeout_s=30.0)
    return builder


def prometheus_query(web: str, query: str, at: Optional[float] = None) -> List[Dict[str, Any]]:
    """Instant query against Prometheus's HTTP API (``/api/v1/query``); the result vector."""
    params = {"query": query}
    if at is not None:
        params["time"] = f"{at:.3f}"
    with urllib.request.urlopen(f"http://{web}/api/v1/query?" + urllib.parse.urlencode(params), timeout=5) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus query {query!r}: {body}")
    return body["data"]["result"]


def prometheus_range(web: str, query: str, start: float, end: float, step: str = "1s") -> List[Dict[str, Any]]:
    """Range query (``/api/v1/query_range``); one entry per series with ``values``."""
    params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
    with urllib.request.urlopen(f"http://{web}/api/v1/query_range?" + urllib.parse.urlencode(params),
                                timeout=5) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus query_range {query!r}: {body}")
    return body["data"]["result"]


def apply_leadership(topology: Topology, scopes: Dict[str, Sequence[Tuple[str, int]]],
                     store: str = "sqlite", profile: str = "fast", etcd: str = "etcd",
                     observe: Sequence[str] = ("global",), **extra: Any) -> Topology:
    """Sets ``omniRelay.leadership`` on every node named in ``scopes``
    (node -> [(scope, priority), ...]; an empty list = observer only)."""
    for node in topology.nodes:
        if node.name not in scopes:
            continue
        block: Dict[str, Any] = {
            "store": store,
            "profile": profile,
            "scopes": [{"scope": s, "priority": p} for s, p in scopes[node.name]],
            "observe": list(observe),
        }
        if store == "sqlite":
            block["path"] = "${self.dir}/../../coord.db"  # one file for the whole cluster
        elif store == "etcd":
            block["endpoints"] = ["${direct." + etcd + ".client}"]
        block.update(extra)
        config = node.config or {}
        config.setdefault("omniRelay", {})["leadership"] = block
        node.config = config
    return topology


def admin_token(token: Optional[str] = None) -> Optional[str]:
    """The admin bearer token for control POSTs (docs/security.md): ``token`` if
    given, else the file named by ``$OMNIRELAY_ADMIN_TOKEN_FILE`` (the node's
    ``omniRelay.admin.tokenFile``; a harness cluster writes ``admin-token`` in
    its artifacts), else none."""
    if token:
        return token
    path = os.environ.get("OMNIRELAY_ADMIN_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return None


def _admin_call(admin: str, method: str, path: str, params: Optional[Dict[str, str]] = None,
                timeout: float = 5.0, token: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
    """One admin request (``admin`` is host:port or a URL) with the admin bearer
    token: (HTTP status, JSON body); a non-JSON error body comes back as ``error``."""
    url = (admin if admin.startswith("http") else f"http://{admin}").rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    bearer = admin_token(token)
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"{}")
        except ValueError:
            return error.code, {"error": body.decode(errors="replace")}


def leaders(admin: str) -> Dict[str, Any]:
    """``GET /omnirelay/control/leaders`` of the node at ``admin`` (host:port)."""
    status, body = _admin_call(admin, "GET", "/omnirelay/control/leaders")
    if status != 200:
        raise RuntimeError(f"GET leaders on {admin}: {status} {body}")
    return body


def leader_of(admin: str, scope: str) -> Optional[str]:
    for entry in leaders(admin)["scopes"]:
        if entry["scope"] == scope:
            return entry["leader"]
    return None


def promote(admin: str, scope: str, node: str, token: Optional[str] = None) -> Dict[str, Any]:
    status, body = _admin_call(admin, "POST", "/omnirelay/control/promote", {"scope": scope, "node": node},
                               token=token)
    if status != 200:
        raise RuntimeError(f"promote {scope} -> {node} via {admin}: {status} {body}")
    return body


# -- Promote over gRPC: omnirelay.mesh.v1.Control/Promote --------------------------------
# proto/omnirelay/mesh/v1/control.proto. The two messages are tiny (strings
# and one int64), so they are encoded here by hand rather than shipping
# generated Python code with the package.

CONTROL_PROMOTE = "/omnirelay.mesh.v1.Control/Promote"


def encode_promote_request(scope: str, node: str) -> bytes:
    return protowire.encode([(1, scope), (2, node)])


def decode_promote_response(data: bytes) -> Dict[str, Any]:
    f = protowire.decode(data)
    return {"scope": protowire.one(f, 1, ""), "node": protowire.one(f, 2, ""),
            "currentLeader": protowire.one(f, 3, ""), "currentFencingToken": protowire.one(f, 4, 0)}


def control_grpc_call(address: str, method: str, request: bytes, token: Optional[str] = None,
                      timeout: float = 5.0, credentials: Any = None) -> bytes:
    """One ``omnirelay.mesh.v1.Control`` call on a node's gRPC listener
    (``host:port``) with the admin bearer token (``token``, else
    ``$OMNIRELAY_ADMIN_TOKEN_FILE``) in ``authorization`` metadata;
    ``credentials`` (grpc.ssl_channel_credentials) for a TLS/mTLS listener.
    Raises ``grpc.RpcError`` with the node's status on refusal."""
    import grpc

    bearer = admin_token(token)
    metadata = [("authorization", f"Bearer {bearer}")] if bearer else []
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return call(request, timeout=timeout, metadata=metadata)


def promote_grpc(address: str, scope: str, node: str, token: Optional[str] = None,
                 timeout: float = 5.0, credentials: Any = None) -> Dict[str, Any]:
    """``omnirelay.mesh.v1.Control/Promote`` (see :func:`control_grpc_call`)."""
    return decode_promote_response(control_grpc_call(address, CONTROL_PROMOTE, encode_promote_request(scope, node),
                                                     token, timeout, credentials))


def fenced_write(admin: str, scope: str, key: str, value: str, timeout: float = 5.0,
                 token: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
    """A control write as leader of ``scope``: (HTTP status, body). 200 carries
    ``revision`` and ``fencingToken``; 400/412 is a refusal (not leader / fenced)."""
    return _admin_call(admin, "POST", "/omnirelay/control/fenced-write",
                       {"scope": scope, "key": key, "value": value}, timeout=timeout, token=token)


# -- CLI: omnirelay mesh leaders | promote ---------------------------------------------



def _leaders_verb(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay mesh leaders",
                                     description="Every scope's leader as a node sees it.")
    parser.add_argument("--admin", required=True, help="admin host:port of any node")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    args = parser.parse_args(argv)
    try:
        body = leaders(args.admin)
    except (OSError, RuntimeError) as error:
        print(f"omnirelay mesh leaders: {error}")
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"node {body['node']} (store {body['store']}, ready for leader work: {body['readyForLeaderWork']})")
    print(f"{'SCOPE':<24}{'LEADER':<20}{'TOKEN':>8}  {'HELD':<5}{'CANDIDATE':<10}LEASE EXPIRES")
    for s in body["scopes"]:
        candidate = f"p{s['priority']}" if s["candidate"] else "-"
        print(f"{s['scope']:<24}{(s['leader'] or '-'):<20}{s['fencingToken']:>8}  "
              f"{('yes' if s['held'] else 'no'):<5}{candidate:<10}{s['leaseExpiresAt'] or '-'}")
    return 0


def _promote_verb(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay mesh promote",
                                     description="Hand a scope over to a node (the old leader resigns and is fenced).")
    parser.add_argument("--scope", required=True, help="global | region/<name> | shard/<namespace>/<id>")
    parser.add_argument("--node", required=True, help="node id that takes the scope over")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--admin", help="admin host:port of any node (POST /omnirelay/control/promote)")
    target.add_argument("--grpc", help="gRPC host:port of any node (omnirelay.mesh.v1.Control/Promote)")
    parser.add_argument("--token-file", help="admin bearer token file (omniRelay.admin.tokenFile); "
                                             "default $OMNIRELAY_ADMIN_TOKEN_FILE")
    parser.add_argument("--ca-file", help="--grpc over TLS: the CA that signed the node's certificate")
    parser.add_argument("--cert-file", help="--grpc over mTLS: this client's certificate")
    parser.add_argument("--key-file", help="--grpc over mTLS: this client's key")
    args = parser.parse_args(argv)
    try:
        token = None
        if args.token_file:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        if args.grpc:
            import grpc

            credentials = None
            if args.ca_file:
                def read(path):
                    with open(path, "rb") as f:
                        return f.read()
                credentials = grpc.ssl_channel_credentials(
                    read(args.ca_file), read(args.key_file) if args.key_file else None,
                    read(args.cert_file) if args.cert_file else None)
            try:
                answer = promote_grpc(args.grpc, args.scope, args.node, token=token, credentials=credentials)
            except grpc.RpcError as error:
                print(f"omnirelay mesh promote: {error.code().name}: {error.details()}")
                return 1
            print(f"promotion of {args.scope} to {args.node} requested "
                  f"(leader was {answer['currentLeader'] or '-'}, token {answer['currentFencingToken']})")
            return 0
        promote(args.admin, args.scope, args.node, token=token)
    except (OSError, RuntimeError) as error:
        print(f"omnirelay mesh promote: {error}")
        return 1
    print(f"promotion of {args.scope} to {args.node} requested")
    return 0


MESH_SUBVERBS["leaders"] = ("every scope's leader, fencing token and lease", _leaders_verb)
MESH_SUBVERBS["promote"] = ("hand a scope over to a node", _promote_verb)




# -- the seed's GlobalLeaderWithRegions shape, with leadership -----------------------------

#: Who leads what on bootstrap in :func:`leadership_topology`.
ROLE_MAP = {"global": "global-leader", "region/west": "west-leader", "region/east": "east-leader"}


def leadership_topology(store: str = "sqlite", prometheus: bool = False, profile: str = "fast") -> Topology:
    """A global leader and two regional leaders (one serve process each) sharing
    a coordination store (``sqlite``: one file; ``etcd``: an etcd node the
    harness starts first), optionally with a Prometheus node scraping them.
    West's regional leader is promoted first when the global leader is lost."""
    b = TopologyBuilder(f"leadership-{store}", "global leader + two regional leaders sharing a store")
    if store == "etcd":
        add_etcd(b)
    b.node("global-leader", role="leader", region="east", zone="east-a")
    b.node("west-leader", role="leader", region="west", zone="west-a")
    b.node("east-leader", role="leader", region="east", zone="east-b")
    if prometheus:
        add_prometheus(b, scrape=("leader",))
    t = b.build()
    apply_leadership(t, {
        "global-leader": [("global", 0)],
        "west-leader": [("region/west", 0)],
        "east-leader": [("region/east", 0)],
    }, store=store, profile=profile, observe=["global", "region/west", "region/east"])
    t.node("east-leader").config["omniRelay"]["leadership"]["promotionPriority"] = 2
    return t


def role_map(admin: str) -> Dict[str, Optional[str]]:
    """scope -> leader as the node at ``admin`` sees it."""
    return {s["scope"]: s["leader"] for s in leaders(admin)["scopes"]}
