"""``omnirelay stack ...`` — control a stack that ``omnirelay up`` runs in
another shell, like ``docker compose`` (registered when ``cli.main`` imports
this module; see :mod:`omnirelay.harness.stack` for the endpoint)::

    omnirelay stack ps                         # nodes, roles, pods, state, pid, restarts
    omnirelay stack stop role:worker           # graceful; stays down
    omnirelay stack start role:worker          # waits until ready
    omnirelay stack restart gateway auth
    omnirelay stack kill worker-2              # kill -9 by pod_name; restart policy decides
    omnirelay stack kill worker-2 --no-restart # ... and keep it down until `start`
    omnirelay stack reset                      # all nodes fresh, state wiped, user store re-seeded

Targets: node names, ``role:ROLE``, ``pod:POD``, ``all``; none = every node.
With several stacks running, pick one with ``--topology NAME``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

from omnirelay.cli import register_verb


def _print_ps(reply: Dict[str, Any]) -> None:
    rows = [("NAME", "ROLE", "POD", "STATE", "PID", "RESTARTS", "ENDPOINTS")]
    for node in reply.get("ps") or reply.get("nodes") or []:
        endpoints = " ".join(f"{k}={v}" for k, v in (node.get("endpoints") or {}).items() if k != "admin")
        rows.append((node["name"], node["role"], node["pod"], node["state"], str(node.get("pid") or "-"),
                     str(node.get("restarts", 0)), endpoints))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("  ".join(row[i].ljust(widths[i]) for i in range(6)) + "  " + row[6])


@register_verb("stack", "Control a running `omnirelay up` stack: ps|stop|start|restart|kill|reset")
def stack(argv: List[str]) -> int:
    # The options are accepted before or after the sub-command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--topology", default=argparse.SUPPRESS, help="which running stack (default: the only one)")
    common.add_argument("--control", default=argparse.SUPPRESS,
                        help="path of a control.json (default: found in $XDG_STATE_HOME/omnirelay)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the reply as JSON")
    parser = argparse.ArgumentParser(prog="omnirelay stack", parents=[common],
                                     description="Control a stack that `omnirelay up` runs (docker-compose style).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ps", parents=[common], help="list nodes with role, pod, state, pid, restarts, endpoints")
    for name, text in (("stop", "graceful stop (SIGTERM); no restart follows"),
                       ("start", "start stopped nodes and wait until ready"),
                       ("restart", "stop then start")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("targets", nargs="*", help="NAME, role:ROLE, pod:POD or all (default: all)")
    kill = sub.add_parser("kill", parents=[common],
                          help="kill -9 worker(s) by pod_name (a crash: the restart policy decides)")
    kill.add_argument("pods", nargs="+")
    kill.add_argument("--no-restart", action="store_true", help="keep it down until `omnirelay stack start`")
    sub.add_parser("reset", parents=[common], help="back to the initial state: every node restarted fresh, state wiped")
    args = parser.parse_args(argv)
    for name, default in (("topology", None), ("control", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)

    from omnirelay.harness.stack import StackError, find_control, request

    try:
        record = find_control(args.topology, args.control)
        if args.command == "ps":
            reply = request(record, "GET", "/ps")
            reply["ps"] = reply.get("nodes")
        elif args.command == "kill":
            reply = request(record, "POST", "/kill", {"pods": args.pods, "restart": not args.no_restart})
        elif args.command == "reset":
            reply = request(record, "POST", "/reset", {})
        else:
            reply = request(record, "POST", f"/{args.command}", {"targets": args.targets})
    except StackError as error:
        print(f"omnirelay stack: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    if args.command != "ps":
        done = ", ".join(reply.get("nodes") or []) or "nothing to do"
        extra = f" in {reply['duration_s']:.1f}s" if "duration_s" in reply else ""
        print(f"{args.command}: {done}{extra}")
    _print_ps(reply)
    return 0
