"""``omnirelay resourcelease ...`` — script and operate ResourceLease queues.

The verb family lives in Python because it is a client of the node's procedures
(the same :class:`omnirelay.resourcelease.ResourceLeaseClient` the worker helper
uses) and of its admin endpoints; nothing in it needs the native core::

    omnirelay resourcelease enqueue  --address H:P --resource-type T --resource-id I [--body TEXT]
    omnirelay resourcelease lease    --address H:P [--wait 5s]            # prints the lease as JSON
    omnirelay resourcelease complete --address H:P --item-id N --token T
    omnirelay resourcelease fail     --address H:P --item-id N --token T [--error E] [--no-requeue]
    omnirelay resourcelease heartbeat --address H:P --item-id N --token T
    omnirelay resourcelease drain    --address H:P --namespace billing --out drained.json
    omnirelay resourcelease restore  --address H:P --file drained.json   # namespace from the file
    omnirelay resourcelease stats    --admin H:P [--watch] [--interval 2s]
    omnirelay resourcelease dead-letter list|requeue --address H:P [--item-id N ...]

``--address`` is the node's HTTP inbound (or gRPC with ``--transport grpc``);
``--namespace`` accepts ``billing`` or ``resourcelease.billing``; ``--principal``
sets the owner identity (``x-client-principal``) for lease/complete/fail.
Exit codes: 0 ok, 1 the node answered an error (printed as ``STATUS: message``),
2 usage, 3 ``lease`` found no item within ``--wait``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from typing import Any, Dict, List, Optional

from omnirelay import errors
from omnirelay.cli import register_verb
from omnirelay.resourcelease import Lease, ResourceLeaseClient


def _namespace(value: str) -> str:
    if value.startswith("resourcelease."):
        return value[len("resourcelease."):]
    return "default" if value in ("", "resourcelease") else value


def _seconds(text: str) -> float:
    text = text.strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    return float(text)


def _client(args: argparse.Namespace, namespace: Optional[str] = None) -> ResourceLeaseClient:
    return ResourceLeaseClient(args.address, _namespace(namespace or args.namespace),
                               transport=args.transport, principal=args.principal, timeout=args.timeout)


def _lease_ref(args: argparse.Namespace) -> Lease:
    return Lease(item_id=args.item_id, fencing_token=args.token, owner=args.principal or "", attempt=0,
                 expires_at_ms=0)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _admin_stats(admin: str) -> Dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/omnirelay/control/resourcelease", timeout=10) as response:
        return json.loads(response.read())["namespaces"]


def _stats_table(namespaces: Dict[str, Any]) -> str:
    rows = [("NAMESPACE", "PENDING", "ACTIVE", "DEAD", "STATE", "ENQUEUED", "COMPLETED", "EXPIRED")]
    for name, s in sorted(namespaces.items()):
        state = "drained" if s["drained"] else ("backpressure" if s["backpressure"] else "normal")
        rows.append((name, str(s["pending"]), str(s["active"]), str(s["deadLetter"]), state,
                     str(s["enqueued"]), str(s["completed"]), str(s["expired"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(len(r))).rstrip() for r in rows)


def _parser() -> argparse.ArgumentParser:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--address", required=True, help="node inbound host:port (HTTP, or gRPC with --transport grpc)")
    conn.add_argument("--transport", choices=("http", "grpc"), default="http")
    conn.add_argument("--namespace", default="default", help="queue namespace (default: default)")
    conn.add_argument("--principal", default=None, help="owner identity sent as x-client-principal")
    conn.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    ref = argparse.ArgumentParser(add_help=False)
    ref.add_argument("--item-id", type=int, required=True)
    ref.add_argument("--token", type=int, required=True, help="the lease's fencing token")

    parser = argparse.ArgumentParser(prog="omnirelay resourcelease",
                                     description="Script and operate ResourceLease queues.")
    sub = parser.add_subparsers(dest="command", required=True)
    enqueue = sub.add_parser("enqueue", parents=[conn], help="enqueue one item")
    enqueue.add_argument("--resource-type", required=True)
    enqueue.add_argument("--resource-id", required=True)
    enqueue.add_argument("--body", default="", help="body text")
    enqueue.add_argument("--body-file", default=None, help="read the body bytes from a file")
    enqueue.add_argument("--request-id", default="", help="idempotency key")
    enqueue.add_argument("--partition-key", default="")
    enqueue.add_argument("--attribute", action="append", default=[], metavar="K=V")
    enqueue.add_argument("--priority", type=int, default=0)
    lease = sub.add_parser("lease", parents=[conn], help="lease one item and print it as JSON")
    lease.add_argument("--wait", default="0", help="long-poll up to this long (e.g. 5s)")
    sub.add_parser("complete", parents=[conn, ref], help="complete a lease")
    sub.add_parser("heartbeat", parents=[conn, ref], help="extend a lease")
    fail = sub.add_parser("fail", parents=[conn, ref], help="fail a lease (requeue or dead-letter)")
    fail.add_argument("--error", default="failed")
    fail.add_argument("--no-requeue", action="store_true", help="dead-letter at once")
    drain = sub.add_parser("drain", parents=[conn], help="stop the queue and save its pending items")
    drain.add_argument("--out", required=True, help="file to write (JSON)")
    drain.add_argument("--service", default=None, help="informational: the service the queue belongs to")
    restore = sub.add_parser("restore", parents=[conn], help="put drained items back (from --file)")
    restore.add_argument("--file", required=True)
    stats = sub.add_parser("stats", help="pending/active/backpressure per namespace (admin endpoint)")
    stats.add_argument("--admin", required=True, help="node admin host:port")
    stats.add_argument("--watch", action="store_true", help="print a new table every --interval")
    stats.add_argument("--interval", default="2s")
    stats.add_argument("--count", type=int, default=0, help="with --watch: stop after N tables (0 = forever)")
    stats.add_argument("--json", action="store_true")
    dead = sub.add_parser("dead-letter", help="inspect or requeue dead-lettered items")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_sub.add_parser("list", parents=[conn], help="print dead-lettered items as JSON")
    requeue = dead_sub.add_parser("requeue", parents=[conn], help="move dead-lettered items back to pending")
    requeue.add_argument("--item-id", type=int, action="append", default=[], help="repeatable; none = all")
    return parser


def _run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "stats":
        interval = _seconds(args.interval)
        shown = 0
        while True:
            namespaces = _admin_stats(args.admin)
            if args.json:
                print(json.dumps(namespaces, sort_keys=True), flush=True)
            else:
                if args.watch and shown:
                    print()
                print(_stats_table(namespaces), flush=True)
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return 0
            time.sleep(interval)
    if command == "dead-letter":
        with _client(args) as client:
            if args.dead_command == "list":
                _print(client.dead_letters())
            else:
                _print({"requeued": client.requeue(args.item_id)})
        return 0
    with _client(args) as client:
        if command == "enqueue":
            body = open(args.body_file, "rb").read() if args.body_file else args.body.encode()
            attributes = {}
            for pair in args.attribute:
                key, sep, value = pair.partition("=")
                if not sep:
                    print(f"--attribute {pair!r}: expected K=V", file=sys.stderr)
                    return 2
                attributes[key] = value
            _print(client.enqueue(args.resource_type, args.resource_id, body, request_id=args.request_id,
                                  partition_key=args.partition_key, attributes=attributes,
                                  priority=args.priority))
        elif command == "lease":
            got = client.lease(wait=_seconds(args.wait))
            if got is None:
                print("no item", file=sys.stderr)
                return 3
            out = dict(got.__dict__)
            out["body"] = got.body.decode(errors="replace")
            _print(out)
        elif command == "complete":
            client.complete(_lease_ref(args))
            _print({"completed": args.item_id})
        elif command == "heartbeat":
            _print({"expiresAtMs": client.heartbeat(_lease_ref(args))})
        elif command == "fail":
            _print({"state": client.fail(_lease_ref(args), args.error, requeue=not args.no_requeue)})
        elif command == "drain":
            items = client.drain()
            document = {"namespace": client.namespace, "service": args.service or client.service,
                        "drainedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "items": items}
            with open(args.out, "w") as out:
                json.dump(document, out, indent=2)
            print(f"drained {len(items)} item(s) from {client.service} to {args.out}")
        elif command == "restore":
            with open(args.file) as handle:
                document = json.load(handle)
            items: List[Dict[str, Any]] = document["items"] if isinstance(document, dict) else document
            namespace = args.namespace
            if namespace == "default" and isinstance(document, dict) and document.get("namespace"):
                namespace = document["namespace"]
            with _client(args, namespace) as target:
                result = target.restore(items)
            print(f"restored {result['restored']} item(s) into {target.service}"
                  f" ({result['skipped']} already known)")
    return 0


@register_verb("resourcelease", "ResourceLease queues: enqueue|lease|complete|fail|drain|restore|stats|dead-letter")
def resourcelease(argv: List[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return _run(args)
    except errors.OmniRelayError as error:
        print(str(error), file=sys.stderr)  # "STATUS: message [error-code]"
        return 1
    except (OSError, ValueError) as error:
        print(f"omnirelay resourcelease: {error}", file=sys.stderr)
        return 1
