"""Shard maps from Python (docs/shards.md): the ``omnirelay mesh shards`` verb,
helpers that read a node's shard maps and resolve keys over its admin
endpoints, and a topology builder for a sharded mesh.

* ``omnirelay mesh shards --admin HOST:PORT [--namespace NS] [--key K] [--json]``
  prints the maps a node holds (``GET /omnirelay/control/shards``): version,
  writer, nodes with the shards they own, and per shard the owner, replicas,
  QPS served on that node and the budget; ``--key`` resolves one key instead.
* ``omnirelay mesh rebalance --admin HOST:PORT --namespace NS --shard S [--to NODE]``
  moves a shard's ownership to one of its replicas (the coolest one without
  ``--to``) through the namespace's leader and waits for the new map version
  (``POST /omnirelay/control/shards/rebalance``; needs the admin token).
* ``omnirelay mesh rebalance --grpc HOST:PORT ...`` does the same through
  ``omnirelay.mesh.v1.Control/Rebalance`` (admin token or mTLS client cert) and
  prints the leader's decision (candidates with their pending calls).
* ``omnirelay mesh budget --admin|--grpc ... --namespace NS --qps Q [--shard S]``
  sets a runtime per-shard QPS budget (``SetShardBudget``).
* :func:`key_for_shard` finds a key that lands on a given shard (the native hash).
* :func:`shards` / :func:`resolve` / :func:`rebalance` fetch the same documents for tests and
  scenarios; :func:`sharded_topology` builds N mesh nodes that share a
  coordination store, elect a global leader and route a sharded service.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

from omnirelay import _protowire as protowire
from omnirelay.mesh import MESH_SUBVERBS

#: The sharded service of :func:`sharded_topology` and its local (echo) service.
SHARDED_SERVICE = "users.v1.Users"
ECHO_SERVICE = "omnirelay.echo.v1.Echo"


def _get(admin: str, path: str, params: Optional[Dict[str, str]] = None, timeout: float = 3.0) -> Any:
    url = (admin if admin.startswith("http") else f"http://{admin}").rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def shards(admin: str, namespace: Optional[str] = None, timeout: float = 3.0) -> Dict[str, Any]:
    """``GET /omnirelay/control/shards`` of the node at ``admin``."""
    return _get(admin, "/omnirelay/control/shards", {"namespace": namespace} if namespace else None, timeout)


def resolve(admin: str, namespace: str, key: str, timeout: float = 3.0) -> Dict[str, Any]:
    """``GET /omnirelay/control/shards/resolve``: key -> shard, owner, replicas, version.
    Raises ``urllib.error.HTTPError`` with the status body for a refusal."""
    return _get(admin, "/omnirelay/control/shards/resolve", {"namespace": namespace, "key": key}, timeout)


def rebalance(admin: str, namespace: str, shard: int, to: Optional[str] = None, timeout: str = "10s",
              token: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
    """``POST /omnirelay/control/shards/rebalance``: (HTTP status, body). 200 carries
    ``from``, ``to``, ``version``, ``previousVersion`` and ``elapsedMs`` (request to
    the new version installed on the node asked); refusals carry ``status``/``code``."""
    params = {"namespace": namespace, "shard": str(shard), "timeout": timeout}
    if to:
        params["to"] = to
    return _admin_call(admin, "POST", "/omnirelay/control/shards/rebalance", params, timeout=60, token=token)


def set_budget(admin: str, namespace: str, qps: float, shard: Optional[int] = None,
               token: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
    """``POST /omnirelay/control/shards/budget``: (HTTP status, body)."""
    params = {"namespace": namespace, "qps": repr(float(qps))}
    if shard is not None:
        params["shard"] = str(shard)
    return _admin_call(admin, "POST", "/omnirelay/control/shards/budget", params, timeout=10, token=token)


def key_for_shard(shard: int, shard_count: int, prefix: str = "key-", limit: int = 1_000_000) -> str:
    """The first ``f"{prefix}{i}"`` whose shard is ``shard`` (the native
    ``ShardOfKey``, docs/shards.md "the hashing contract")."""
    from omnirelay import _core

    for i in range(limit):
        key = f"{prefix}{i}"
        if _core.mesh.shard_of_key(key, shard_count) == shard:
            return key
    raise ValueError(f"no key {prefix}N (N < {limit}) lands on shard {shard} of {shard_count}")


# -- omnirelay.mesh.v1.Control/Rebalance and SetShardBudget over gRPC --------------------------
# proto/omnirelay/mesh/v1/control.proto, encoded by hand like Promote (harness/leadership.py).

CONTROL_REBALANCE = "/omnirelay.mesh.v1.Control/Rebalance"
CONTROL_SET_SHARD_BUDGET = "/omnirelay.mesh.v1.Control/SetShardBudget"


def decode_rebalance_response(data: bytes) -> Dict[str, Any]:
    f = protowire.decode(data)
    candidates = []
    for raw in f.get(10, []):
        c = protowire.decode(raw)
        known = protowire.one(c, 2, False)
        candidates.append({"node": protowire.one(c, 1, ""), "loadKnown": known,
                           "pending": protowire.one(c, 3, 0) if known else None,
                           "qps": protowire.one(c, 4, 0.0) if known else None,
                           "shardsOwned": protowire.one(c, 5, 0), "chosen": protowire.one(c, 6, False)})
    one = protowire.one
    return {"namespace": one(f, 1, ""), "shard": one(f, 2, 0), "from": one(f, 3, ""), "to": one(f, 4, ""),
            "previousVersion": one(f, 5, 0), "version": one(f, 6, 0), "elapsedMs": one(f, 7, 0),
            "node": one(f, 8, ""), "chooser": one(f, 9, ""), "candidates": candidates}


def _grpc_call(address: str, method: str, request: bytes, token: Optional[str], timeout: float,
               credentials: Any) -> bytes:
    from omnirelay.harness.leadership import control_grpc_call

    return control_grpc_call(address, method, request, token, timeout, credentials)


def _admin_call(admin: str, method: str, path: str, params: Dict[str, str], timeout: float,
                token: Optional[str]) -> Tuple[int, Dict[str, Any]]:
    from omnirelay.harness.leadership import _admin_call as admin_call

    return admin_call(admin, method, path, params, timeout=timeout, token=token)


def rebalance_grpc(address: str, namespace: str, shard: int, to: Optional[str] = None, timeout_ms: int = 10000,
                   token: Optional[str] = None, credentials: Any = None) -> Dict[str, Any]:
    """``omnirelay.mesh.v1.Control/Rebalance`` on a node's gRPC listener. Raises
    ``grpc.RpcError`` with the node's status (and reason) on refusal."""
    request = protowire.encode([(1, namespace), (2, int(shard)), (3, to or ""), (4, int(timeout_ms))])
    return decode_rebalance_response(_grpc_call(address, CONTROL_REBALANCE, request, token,
                                                timeout_ms / 1000.0 + 5, credentials))


def set_budget_grpc(address: str, namespace: str, qps: float, shard: Optional[int] = None,
                    token: Optional[str] = None, credentials: Any = None, timeout: float = 10.0) -> Dict[str, Any]:
    """``omnirelay.mesh.v1.Control/SetShardBudget``: one shard, or the namespace (``shard=None``)."""
    request = protowire.encode([(1, namespace), (2, int(shard or 0)), (3, shard is None), (4, float(qps))])
    f = protowire.decode(_grpc_call(address, CONTROL_SET_SHARD_BUDGET, request, token, timeout, credentials))
    shard_qps = {}
    for entry in f.get(3, []):
        e = protowire.decode(entry)
        shard_qps[protowire.one(e, 1, 0)] = protowire.one(e, 2, 0.0)
    return {"namespace": protowire.one(f, 1, ""), "namespaceQps": protowire.one(f, 2, 0.0), "shardQps": shard_qps}


def _grpc_credentials(args: argparse.Namespace) -> Any:
    if not (args.ca_file or args.cert_file):
        return None
    import grpc

    def read(path):
        return open(path, "rb").read() if path else None

    return grpc.ssl_channel_credentials(root_certificates=read(args.ca_file), private_key=read(args.key_file),
                                        certificate_chain=read(args.cert_file))


def _add_grpc_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-file", help="--grpc over TLS: the CA that signed the node's certificate")
    parser.add_argument("--cert-file", help="--grpc over mTLS: this client's certificate")
    parser.add_argument("--key-file", help="--grpc over mTLS: this client's key")


def format_decision(decision: Optional[Dict[str, Any]]) -> str:
    """One line per candidate of a rebalance decision (``lastRebalance``)."""
    if not decision:
        return "  last rebalance: none"
    lines = [f"  last rebalance: shard {decision['shard']} {decision['from']} -> {decision['to']} "
             f"({decision.get('reason', '')}, chooser {decision.get('chooser', '')}, map version "
             f"{decision.get('version', '?')}, at {decision.get('at', '')})"]
    for c in decision.get("candidates", []):
        pending = "?" if c.get("pending") is None else c["pending"]
        qps = "?" if c.get("qps") is None else f"{c['qps']:.1f}"
        lines.append(f"    candidate {c['node']}: pending {pending}, qps {qps}, owns {c.get('shardsOwned', 0)}"
                     + ("  <- chosen" if c.get("chosen") else ""))
    return "\n".join(lines)


def versions(admin: str) -> Dict[str, int]:
    """``{namespace: version}`` a node holds (0 = no map yet)."""
    return {n["namespace"]: n["version"] for n in shards(admin)["namespaces"]}


def owners(document: Dict[str, Any], namespace: str) -> List[str]:
    """The owner of every shard of ``namespace`` in a shards document (index = shard id)."""
    for n in document["namespaces"]:
        if n["namespace"] == namespace:
            return [s["owner"] for s in n.get("shards") or []]
    raise KeyError(namespace)


def format_table(document: Dict[str, Any], max_shards: int = 64) -> str:
    lines: List[str] = []
    for n in document.get("namespaces", []):
        budget = n.get("budgetQps") or 0
        lines.append(f"namespace {n['namespace']}: version {n['version']}, strategy {n['strategy']}, "
                     f"{n['shardCount']} shards, {n['replicas']} replica(s), budget "
                     f"{budget if budget else 'none'} QPS/shard, leader scope {n['leaderScope']}"
                     + (f", written by {n.get('writtenBy')} (token {n.get('fencingToken')})" if n.get("writtenBy") else ""))
        if not n.get("shards"):
            lines.append("  (no map yet)")
            continue
        node_rows = [("NODE", "REGION", "ZONE", "OWNS", "ROUTABLE", "ADDRESS")]
        for node in n["nodes"]:
            node_rows.append((node["id"], node["region"], node["zone"], str(node["shardsOwned"]),
                              "yes" if node["routable"] else "no", node["address"]))
        lines.extend(_rows(node_rows))
        shard_rows = [("SHARD", "OWNER", "REPLICAS", "QPS", "SERVED", "BUDGET")]
        shown = [s for s in n["shards"] if s["served"] or s["overBudget"]] or n["shards"]
        for s in shown[:max_shards]:
            shard_rows.append((str(s["id"]), s["owner"], ",".join(s["replicas"]), f"{s['qps']:.1f}",
                               str(s["served"]), "OVER" if s["overBudget"] else ""))
        lines.extend(_rows(shard_rows))
        if len(shown) > max_shards:
            lines.append(f"  ... {len(shown) - max_shards} more shard(s) (--json for all)")
        if n.get("loads"):
            load_rows = [("LOAD", "PENDING", "QPS", "AGE")]
            for load in n["loads"]:
                load_rows.append((load["node"], str(load["pending"]), f"{load['qps']:.1f}",
                                  f"{load.get('ageMs', -1)} ms" + ("" if load.get("fresh", True) else " (stale)")))
            lines.extend(_rows(load_rows))
        if "lastRebalance" in n:
            lines.append(format_decision(n.get("lastRebalance")))
    lines.append(f"node {document.get('node')}")
    return "\n".join(lines)


def _rows(rows: List[tuple]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(len(r))).rstrip() for r in rows]


def _shards_verb(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay mesh shards",
                                     description="The shard maps a node holds (its /omnirelay/control/shards).")
    parser.add_argument("--admin", required=True, help="admin endpoint HOST:PORT of the node to ask")
    parser.add_argument("--namespace", help="only this namespace")
    parser.add_argument("--key", help="resolve this shard key (needs --namespace)")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of a table")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.key is not None and not args.namespace:
        parser.error("--key needs --namespace")
    try:
        if args.key is not None:
            document = resolve(args.admin, args.namespace, args.key, args.timeout)
        else:
            document = shards(args.admin, args.namespace, args.timeout)
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        print(f"omnirelay mesh shards: {args.admin}: HTTP {error.code}: {body}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"omnirelay mesh shards: {args.admin}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
    elif args.key is not None:
        print(f"key {document['key']!r} of {document['namespace']}: shard {document['shard']} -> owner "
              f"{document['owner']} ({document['address']}), replicas {','.join(document['replicas']) or '-'}, "
              f"map version {document['version']} (as node {document['node']} sees it)")
    else:
        print(format_table(document))
    return 0


def _control_request(verb: str, args: argparse.Namespace, over_grpc: Callable[[], Dict[str, Any]],
                     over_admin: Callable[[], Tuple[int, Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """A control verb's one request, over ``--grpc`` or ``--admin``: the answer's
    body, or None after printing why it failed (status and reason)."""
    if args.grpc:
        import grpc

        try:
            return over_grpc()
        except grpc.RpcError as error:
            print(f"{verb}: {error.code().name}: {error.details()}", file=sys.stderr)
        except (OSError, ValueError) as error:
            print(f"{verb}: {args.grpc}: {error}", file=sys.stderr)
        return None
    try:
        status, body = over_admin()
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"{verb}: {args.admin}: {error}", file=sys.stderr)
        return None
    if status != 200:
        print(f"{verb}: HTTP {status}: {body.get('status', '')} {body.get('error', body)}", file=sys.stderr)
        return None
    return body


def _rebalance_verb(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay mesh rebalance",
                                     description="Move a shard's ownership to one of its replicas (through the "
                                                 "namespace's leader) and wait for the new map version.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--admin", help="admin endpoint HOST:PORT of any node of the mesh")
    target.add_argument("--grpc", help="gRPC HOST:PORT of any node (omnirelay.mesh.v1.Control/Rebalance)")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--shard", required=True, type=int, help="shard id")
    parser.add_argument("--to", help="the replica to move it to (default: the replica with the fewest pending calls)")
    parser.add_argument("--timeout", default="10s", help="how long to wait for the new map version")
    parser.add_argument("--token", help="admin bearer token (default: $OMNIRELAY_ADMIN_TOKEN_FILE)")
    parser.add_argument("--json", action="store_true")
    _add_grpc_flags(parser)
    args = parser.parse_args(argv)

    def over_grpc():
        from omnirelay import parse_duration

        timeout_ms = int(parse_duration(args.timeout).total_seconds() * 1000)
        return rebalance_grpc(args.grpc, args.namespace, args.shard, args.to, timeout_ms, args.token,
                              _grpc_credentials(args))

    body = _control_request("omnirelay mesh rebalance", args, over_grpc,
                            lambda: rebalance(args.admin, args.namespace, args.shard, args.to, args.timeout,
                                              args.token))
    if body is None:
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"shard {body['shard']} of {body['namespace']}: {body['from']} -> {body['to']} "
          f"(map version {body['previousVersion']} -> {body['version']}, {body['elapsedMs']} ms to reach "
          f"{body['node']})")
    decision = body.get("decision")
    if decision is None and body.get("candidates"):
        decision = dict(body, reason="manual")
    if decision and decision.get("shard") == body["shard"]:
        print(format_decision(decision))
    return 0


def _budget_verb(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay mesh budget",
                                     description="Set a runtime per-shard QPS budget: an owner serving a shard "
                                                 "above it asks the leader to move the shard.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--admin", help="admin endpoint HOST:PORT of any node (POST /omnirelay/control/shards/budget)")
    target.add_argument("--grpc", help="gRPC HOST:PORT of any node (omnirelay.mesh.v1.Control/SetShardBudget)")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--qps", required=True, type=float, help="QPS per shard, >= 0 (0 = no budget)")
    parser.add_argument("--shard", type=int, help="only this shard (default: every shard of the namespace)")
    parser.add_argument("--token", help="admin bearer token (default: $OMNIRELAY_ADMIN_TOKEN_FILE)")
    parser.add_argument("--json", action="store_true")
    _add_grpc_flags(parser)
    args = parser.parse_args(argv)
    body = _control_request(
        "omnirelay mesh budget", args,
        lambda: set_budget_grpc(args.grpc, args.namespace, args.qps, args.shard, args.token, _grpc_credentials(args)),
        lambda: set_budget(args.admin, args.namespace, args.qps, args.shard, args.token))
    if body is None:
        return 1
    if args.json:
        print(json.dumps(body, indent=2, default=str))
    else:
        what = f"shard {args.shard}" if args.shard is not None else "every shard"
        print(f"budget of {what} of {body['namespace']}: {args.qps:g} QPS (namespace budget "
              f"{body['namespaceQps']:g}, per-shard budgets {json.dumps(body['shardQps'], default=str)})")
    return 0


MESH_SUBVERBS["budget"] = ("set a runtime per-shard QPS budget: omnirelay mesh budget --admin|--grpc HOST:PORT "
                           "--namespace NS --qps Q [--shard S]", _budget_verb)
MESH_SUBVERBS["rebalance"] = ("move a shard to a replica: omnirelay mesh rebalance --admin|--grpc HOST:PORT "
                              "--namespace NS --shard S [--to NODE]", _rebalance_verb)
MESH_SUBVERBS["shards"] = ("shard maps a node holds: omnirelay mesh shards --admin HOST:PORT "
                           "[--namespace NS] [--key K] [--json]", _shards_verb)


def sharded_topology(nodes: int = 3, shard_count: int = 64, strategy: str = "rendezvous",
                     replicas: int = 1, budget: float = 0, store: str = "sqlite", name: str = "sharded"):
    """``nodes`` serve processes in one mesh sharing a coordination store;
    node-1 is the declared global leader (it writes the maps), every node is a
    candidate by priority. Namespace ``users``: calls to ``users.v1.Users/*``
    carrying ``rpc-shard-key`` are routed to the shard's owner and served there
    by the echo procedures (the echo instance is the node's name)."""
    from omnirelay.harness.leadership import apply_leadership
    from omnirelay.topology import TopologyBuilder

    b = TopologyBuilder(name, f"{nodes} mesh nodes routing the sharded service {SHARDED_SERVICE}")
    for i in range(1, nodes + 1):
        b.node(f"node-{i}", role="owner", region="east" if i % 2 else "west", zone=f"z{i % 3}")
    b.with_mesh_identity(profile="test")
    t = b.build()
    apply_leadership(t, {f"node-{i}": [("global", i - 1)] for i in range(1, nodes + 1)}, store=store)
    for node in t.nodes:
        config = node.config.setdefault("omniRelay", {})
        config["echo"] = {"instance": "${self.name}"}
        config["shards"] = {
            "reconcileInterval": "250ms",
            "namespaces": {"users": {
                "shards": shard_count, "strategy": strategy, "replicas": replicas, "budget": budget,
                "service": SHARDED_SERVICE, "localService": ECHO_SERVICE,
            }},
        }
    return t


__all__ = ["ECHO_SERVICE", "SHARDED_SERVICE", "format_decision", "format_table", "key_for_shard", "owners",
           "rebalance", "rebalance_grpc", "resolve", "set_budget", "set_budget_grpc", "sharded_topology", "shards",
           "versions"]
