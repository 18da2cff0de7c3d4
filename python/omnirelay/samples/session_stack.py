"""The session stack as the twelve scenarios use it (topologies/session-stack.yaml).

    from omnirelay.samples.session_stack import start_session_stack

    def scenario(s):
        with s.given("the session stack"):
            stack = start_session_stack(s)           # gateway, auth, registry, worker-1..3
        with s.when("a client logs in and echoes"):
            session = stack.client().session()     # Login testuser/testpass via the gateway
            reply = session.echo("hello")
        ...
        stack.control.kill("worker-2")             # compose-style control (StackControl)

The gateway's port is allocated (never the 10000 ``omnirelay up`` pins), so a
scenario does not clash with a stack a developer keeps running.

The topology behaves like the reference system: a worker that exits (after
MyServiceShutdown, or killed) stays down until started again
(``stack.control.start(pod)``), and a subscription sends one message every 5 s.
Both are options (:func:`session_topology`): ``worker_restart="always"`` brings
exited workers back like a container restart policy, ``stream_interval="200ms"``
keeps streaming scenarios short in CI.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from omnirelay.harness.stack import StackControl, control
from omnirelay.samples.my_service import Client

TOPOLOGY = "session-stack"
WORKERS = ("worker-1", "worker-2", "worker-3")
SERVER_VALUE = "my_service"


class SessionStack:
    """A started session stack: cluster, control, gateway address, clients."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.control: StackControl = control(cluster)
        self._clients: List[Client] = []
        self._ids = itertools.count(1)

    @property
    def gateway(self) -> str:
        return self.cluster["gateway"].address("grpc")

    def client(self, address: Optional[str] = None, timeout_s: float = 5.0) -> Client:
        """A new client with its own channel (closed when the stack stops)."""
        # Under mTLS every port of the stack speaks TLS: the client presents
        # the harness certificate from the run's test CA.
        pki = getattr(self.cluster, "pki", None)
        c = Client(address or self.gateway, timeout_s=timeout_s,
                   credentials=pki.grpc_credentials("harness") if pki is not None else None)
        self._clients.append(c)
        return c

    def worker_client(self, pod: str) -> Client:
        """A client connected to one worker directly, bypassing the gateway."""
        return self.client(self.control.node_for_pod(pod).address("grpc"))

    def session_id(self, label: str = "client") -> str:
        from omnirelay.samples.my_service import new_session_id

        return new_session_id(f"integration-test-session-{label}{next(self._ids)}")

    def secret(self) -> str:
        """The JWT secret the auth node created (for forging test tokens)."""
        return (Path(self.cluster["auth"].dir) / "state" / "jwt-secret").read_text().strip()

    def pid(self, pod: str) -> Optional[int]:
        node = self.control.node_for_pod(pod)
        return node.pid if node.is_running() else None

    def wait_exit(self, pod: str, pid: int, within_s: float = 10.0) -> None:
        """Waits (bounded) until the process ``pid`` of ``pod`` has exited."""
        import time

        node = self.control.node_for_pod(pod)
        deadline = time.monotonic() + within_s
        while node.pid == pid and node.is_running():
            if time.monotonic() >= deadline:
                raise AssertionError(f"{pod} (pid {pid}) still running after {within_s:g}s")
            time.sleep(0.01)

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()


def session_topology(*, stream_interval: Optional[str] = None, worker_restart: Optional[str] = None,
                     restart_backoff_s: float = 2.0) -> Any:
    """topologies/session-stack.yaml with the workers' options changed:
    ``stream_interval`` (the worker's ``--stream-interval``; default 5 s) and
    ``worker_restart`` (a restart policy: ``"always"`` restarts an exited worker
    after ``restart_backoff_s``; default ``"no"``, as the reference)."""
    from omnirelay.topology import Topology

    topology = Topology.load(TOPOLOGY)
    for spec in topology.nodes:
        if spec.role != "worker":
            continue
        if stream_interval is not None:
            spec.with_args(list(spec.launch_args()) + ["--stream-interval", str(stream_interval)])
        if worker_restart is not None:
            spec.with_restart(worker_restart, max_restarts=10000, backoff_s=restart_backoff_s)
    return topology


def start_session_stack(s: Any, *, stream_interval: Optional[str] = None, worker_restart: Optional[str] = None,
                        **cluster_kwargs: Any) -> SessionStack:
    """Starts the session stack in scenario ``s`` (stopped when ``s`` closes)
    and waits until the gateway can see all three workers. ``stream_interval``
    and ``worker_restart``: see :func:`session_topology`."""
    topology: Any = TOPOLOGY
    if stream_interval is not None or worker_restart is not None:
        topology = session_topology(stream_interval=stream_interval, worker_restart=worker_restart)
    cluster = s.cluster(topology, **cluster_kwargs)
    stack = SessionStack(cluster)
    stack.control.wait_workers(WORKERS)
    s.note(f"gateway {stack.gateway}; workers " + ", ".join(
        f"{p}={cluster[p].address('grpc')}" for p in WORKERS))
    return stack


def check_echo(reply: Any, *, value: str, session_id: str, index: int = 0,
               method: str = "MyServiceEcho") -> None:
    """The EchoResponse fields every scenario expects."""
    assert reply.server_value == SERVER_VALUE, reply
    assert reply.client_value == value, reply
    assert reply.client_session_id == session_id, reply
    assert reply.pod_name in WORKERS, reply
    assert reply.server_session_id, reply
    assert reply.index == index, reply
    assert reply.server_method == method, reply


def check_shutdown(reply: Any, *, pod: str, session_id: str, server_session_id: Optional[str] = None) -> None:
    assert reply.pod_name == pod, reply
    assert reply.client_session_id == session_id, reply
    if server_session_id is not None:
        assert reply.server_session_id == server_session_id, reply
    assert reply.server_method == "MyServiceShutdown", reply
    assert reply.index == 0, reply


__all__ = ["SERVER_VALUE", "SessionStack", "TOPOLOGY", "WORKERS", "check_echo", "check_shutdown",
           "session_topology", "start_session_stack"]
