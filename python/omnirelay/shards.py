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
from typing import Any, Dict, List, Optional, Tuple

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
    from omnirelay.harness.leadership import admin_token

    params = {"namespace": namespace, "shard": str(shard), "timeout": timeout}
    if to:
        params["to"] = to
    url = (admin if admin.startswith("http") else f"http://{admin}").rstrip("/")
    request = urllib.request.Request(url + "/omnirelay/control/shards/rebalance?" + urllib.parse.urlencode(params),
                                     method="POST", data=b"")
    bearer = admin_token(token)
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"{}")
        except ValueError:
            return error.code, {"error": body.decode(errors="replace")}


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


def _rebalance_verb(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay mesh rebalance",
                                     description="Move a shard's ownership to one of its replicas (through the "
                                                 "namespace's leader) and wait for the new map version.")
    parser.add_argument("--admin", required=True, help="admin endpoint HOST:PORT of any node of the mesh")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--shard", required=True, type=int, help="shard id")
    parser.add_argument("--to", help="the replica to move it to (default: the replica owning the fewest shards)")
    parser.add_argument("--timeout", default="10s", help="how long to wait for the new map version")
    parser.add_argument("--token", help="admin bearer token (default: $OMNIRELAY_ADMIN_TOKEN_FILE)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        status, body = rebalance(args.admin, args.namespace, args.shard, args.to, args.timeout, args.token)
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"omnirelay mesh rebalance: {args.admin}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"omnirelay mesh rebalance: HTTP {status}: {body.get('status', '')} {body.get('error', body)}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(f"shard {body['shard']} of {body['namespace']}: {body['from']} -> {body['to']} "
              f"(map version {body['previousVersion']} -> {body['version']}, {body['elapsedMs']} ms to reach "
              f"{body['node']})")
    return 0


MESH_SUBVERBS["rebalance"] = ("move a shard to a replica: omnirelay mesh rebalance --admin HOST:PORT "
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


__all__ = ["ECHO_SERVICE", "SHARDED_SERVICE", "format_table", "owners", "rebalance", "resolve", "sharded_topology",
           "shards",
           "versions"]
