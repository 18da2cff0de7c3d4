"""Seeders and workers of the ResourceLease mesh demo (``topologies/resourcelease-mesh.yaml``).

Run as processes by the topology (``command: ${python}``)::

    python -m omnirelay.resourcelease_demo seeder --address H:P --peer-id seeder-1 --count 200
    python -m omnirelay.resourcelease_demo worker --address H:P --peer-id worker-1

A seeder enqueues ``--count`` items with RequestIds ``<peer-id>-<n>`` (retrying through
backpressure, drains and restarts, so every item is eventually accepted exactly once
thanks to idempotent enqueue), then idles. A worker leases with a long poll as its peer
id (the owner identity), heartbeats, "works" ``--work`` seconds, completes, and appends
each completed RequestId to ``<dir>/completed.log`` — the ledger the rollout test reads.
Both write ``--ready-file`` once they run and exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

from omnirelay import errors
from omnirelay.resourcelease import Lease, ResourceLeaseClient, Worker


def _ready(path: Optional[str], peer_id: str) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps({"name": peer_id, "pid": os.getpid()}))
        tmp.replace(path)


def _log(event: str, **fields) -> None:
    print(json.dumps({"ts": time.time(), "event": event, **fields}), flush=True)


def run_seeder(args: argparse.Namespace, stop: threading.Event) -> None:
    client = ResourceLeaseClient(args.address, args.namespace, principal=args.peer_id, timeout=5)
    _ready(args.ready_file, args.peer_id)
    n = 0
    while n < args.count and not stop.is_set():
        request_id = f"{args.peer_id}-{n}"
        try:
            answer = client.enqueue("demo.job", request_id, f"job {n} from {args.peer_id}".encode(),
                                    request_id=request_id, partition_key=args.peer_id,
                                    attributes={"seeder": args.peer_id})
            _log("enqueued", requestId=request_id, duplicate=answer["duplicate"])
            n += 1
            if args.interval:
                stop.wait(args.interval)
        except errors.ResourceExhausted as pushback:
            stop.wait(getattr(pushback, "retry_after", None) or 0.5)
        except (errors.OmniRelayError, OSError) as error:  # drained, restarting: retry the same id
            _log("enqueue-retry", requestId=request_id, error=str(error))
            stop.wait(0.2)
    _log("seeded", count=n)
    stop.wait()


def run_worker(args: argparse.Namespace, stop: threading.Event) -> None:
    client = ResourceLeaseClient(args.address, args.namespace, principal=args.peer_id, timeout=5)
    ledger = Path(args.dir or ".") / "completed.log"
    lock = threading.Lock()

    def handle(lease: Lease) -> None:
        if args.work:
            time.sleep(args.work)

    worker = Worker(client, handle, heartbeat_interval=args.heartbeat, lease_wait=1.0)
    original_complete = client.complete

    def complete_and_record(lease: Lease) -> None:
        original_complete(lease)
        with lock, ledger.open("a") as out:
            out.write(lease.request_id + "\n")
        _log("completed", requestId=lease.request_id, attempt=lease.attempt, token=lease.fencing_token)

    client.complete = complete_and_record  # type: ignore[method-assign]
    _ready(args.ready_file, args.peer_id)
    while not stop.is_set():
        try:
            worker.run_once()
        except (errors.OmniRelayError, OSError) as error:  # drained or restarting node
            _log("worker-retry", error=str(error))
            stop.wait(0.3)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirelay.resourcelease_demo")
    parser.add_argument("role", choices=("seeder", "worker"))
    parser.add_argument("--address", required=True, help="dispatcher HTTP inbound host:port")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--peer-id", required=True)
    parser.add_argument("--ready-file", default=None)
    parser.add_argument("--dir", default=None, help="worker: folder of completed.log")
    parser.add_argument("--count", type=int, default=100, help="seeder: items to enqueue")
    parser.add_argument("--interval", type=float, default=0.0, help="seeder: seconds between items")
    parser.add_argument("--work", type=float, default=0.05, help="worker: seconds per item")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="worker: heartbeat interval (s)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runner = run_seeder if args.role == "seeder" else run_worker
    thread = threading.Thread(target=runner, args=(args, stop), daemon=True)
    thread.start()
    while thread.is_alive() and not stop.is_set():
        stop.wait(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
