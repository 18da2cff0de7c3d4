"""Python verbs of the ``omnirelay`` command (registered when ``cli.main``
imports this module; heavy imports happen inside the handlers):

* ``omnirelay up TOPOLOGY`` — runs a topology in the foreground until Ctrl-C
  (or SIGTERM), printing every node's endpoints, like ``docker compose up``.
* ``omnirelay scenario run NAME`` — runs ``scenarios/NAME.py``'s
  ``scenario(s)`` function without pytest, prints the step log and a verdict.
* ``omnirelay scenario list`` — the scenarios found.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import List

from omnirelay.cli import register_verb


def _default_artifacts(kind: str, name: str) -> Path:
    stem = Path(name).stem
    return Path("artifacts") / f"{kind}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@register_verb("up", "Run a topology in the foreground until Ctrl-C, printing endpoints")
def up(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay up", description=up.__doc__ or
                                     "Run a topology (name in topologies/ or a YAML path) until Ctrl-C.")
    parser.add_argument("topology", help="topology name (topologies/NAME.yaml), YAML path, or builder name")
    parser.add_argument("--artifacts", type=Path, default=None, help="artifacts folder (default artifacts/up-*)")
    parser.add_argument("--seed", type=int, default=0, help="seed of fault decisions (proxy jitter)")
    parser.add_argument("--ready-timeout", type=float, default=None, help="per-node readiness timeout (s)")
    parser.add_argument("--port", action="append", default=[], metavar="NODE.PORT=N",
                        help="pin a node port (fails fast if taken), e.g. --port gateway.grpc=25000")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop by itself after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--json", action="store_true", help="print the endpoints as one JSON document")
    args = parser.parse_args(argv)

    from omnirelay._native import NativeBinaryNotFound
    from omnirelay.harness.cluster import Cluster, HarnessError
    from omnirelay.harness.ports import PortInUse
    from omnirelay.topology import Topology, TopologyError

    overrides = {}
    for item in args.port:
        key, _, value = item.partition("=")
        if not value.isdigit():
            print(f"omnirelay up: --port expects NODE.PORT=N, got {item!r}", file=sys.stderr)
            return 2
        overrides[key] = int(value)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        topology = Topology.load(args.topology)
        from omnirelay.harness.stack import ControlServer, pinned_ports
        overrides = {**pinned_ports(topology), **overrides}  # the topology's x-ports, then --port
        cluster = Cluster(topology, args.artifacts or _default_artifacts("up", topology.name), seed=args.seed,
                          ready_timeout_s=args.ready_timeout, port_overrides=overrides)
        # Progress goes to stderr so that `--json` leaves stdout machine-readable.
        print(f"omnirelay up: starting {topology.name} ({len(topology.nodes)} nodes)", file=sys.stderr,
              flush=True)
        cluster.start()
    except (TopologyError, NativeBinaryNotFound, PortInUse, HarnessError, FileNotFoundError) as error:
        print(f"omnirelay up: {error}", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return 1
    control = ControlServer(cluster).start()  # `omnirelay stack ...` from other shells
    try:
        if args.json:
            print(json.dumps(cluster.endpoints(), indent=2), flush=True)
        else:
            _print_endpoints(cluster)
        print(f"omnirelay up: ready; artifacts in {cluster.artifacts_dir}; Ctrl-C to stop", flush=True)
        print(f"omnirelay up: control {control.url} ({control.state_files[-1]}): omnirelay stack ps|stop|"
              f"start|restart|kill|reset", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        reported = set()
        while not stop.wait(0.5):
            if deadline is not None and time.monotonic() >= deadline:
                break
            for node in cluster:
                if not node.is_running() and node.name not in reported and node._expected_down:
                    reported.add(node.name)
                    print(f"omnirelay up: node {node.name} exited (code {node.process.returncode}); "
                          f"logs in {node.dir}", flush=True)
                elif node.is_running():
                    reported.discard(node.name)
        print("omnirelay up: stopping", flush=True)
    finally:
        control.close()
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("omnirelay up: stopped", flush=True)
    return 0


def _print_endpoints(cluster) -> None:
    rows = [("NODE", "ROLE", "REGION", "PID", "ENDPOINTS")]
    for node in cluster:
        eps = " ".join(f"{k}={v}" for k, v in node.endpoints.items())
        rows.append((node.name, node.role, node.region, str(node.pid), eps))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    proxied = [l for l in cluster.links.values() if l.proxy is not None]
    if proxied:
        print(f"links through fault proxies ({len(proxied)}):")
        for link in proxied:
            print(f"  {link.name}: {link.address} -> {link.upstream}")
    sys.stdout.flush()


@register_verb("scenario", "Run a scenario without pytest: omnirelay scenario run NAME")
def scenario(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay scenario")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios/NAME.py's scenario(s) and print the verdict")
    run.add_argument("name", help="scenario name (scenarios/NAME.py) or path to a .py file")
    run.add_argument("--scale", choices=["ci", "full"], default="ci")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--artifacts", type=Path, default=None)
    run.add_argument("--path", action="append", type=Path, default=[], help="extra folder to look in")
    run.add_argument("--update-golden", action="store_true", help="rewrite golden files instead of comparing")
    listing = sub.add_parser("list", help="list scenarios")
    listing.add_argument("--path", action="append", type=Path, default=[])
    args = parser.parse_args(argv)

    from omnirelay.scenario import find_scenario, load_scenario, run_scenario, scenario_dirs

    if args.command == "list":
        # A name is listed once, with the file `scenario run NAME` would pick
        # (the first folder that has it, as find_scenario searches).
        listed = set()
        for directory in [*args.path, *scenario_dirs()]:
            for path in sorted([*Path(directory).glob("*.py"), *Path(directory).glob("*/*.py")]):
                name = path.stem.removeprefix("test_")
                if (path.name != "__init__.py" and name not in listed
                        and "def scenario(" in path.read_text(errors="replace")):
                    listed.add(name)
                    print(f"{name}\t{path}")
        return 0
    try:
        path = find_scenario(args.name, args.path)
        fn = load_scenario(path)
    except (FileNotFoundError, AttributeError, ImportError, SyntaxError) as error:
        print(f"omnirelay scenario: {error}", file=sys.stderr)
        return 2
    name = path.stem.removeprefix("test_")
    artifacts = args.artifacts or _default_artifacts("scenario", name)
    print(f"scenario {name} ({path}), scale={args.scale}, seed={args.seed}, artifacts {artifacts}", flush=True)
    try:
        s = run_scenario(fn, name, artifacts, scale=args.scale, seed=args.seed,
                         update_golden=True if args.update_golden else None,
                         echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("verdict: INTERRUPTED", flush=True)
        return 130
    if s.error:
        print(f"error: {s.error}", flush=True)
    print(f"verdict: {s.verdict}", flush=True)
    return 0 if s.verdict == "PASS" else 1
