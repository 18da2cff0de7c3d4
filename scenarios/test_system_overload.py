"""system_overload (seed 004): four clients, three single-session instances.

All four log in; all four try to establish a session with MyServiceEcho at
once. At least one fails and not all do; failures are only RESOURCE_EXHAUSTED
("no available instances" / "all instances are busy"), UNAVAILABLE ("service
unavailable" / "backend service unavailable") or INTERNAL "Session conflict: ...";
the successful clients are on pairwise different pods and shut down cleanly.
With the gateway's occupancy routing exactly three succeed.

Run: ``pytest scenarios/test_system_overload.py`` or ``omnirelay scenario run system_overload``.
"""

from __future__ import annotations

import threading

from omnirelay.samples.session_stack import check_echo, check_shutdown, start_session_stack
from omnirelay.scenario import History, Scenario

CLIENTS = 4
ALLOWED = {
    "RESOURCE_EXHAUSTED": ("no available instances", "all instances are busy"),
    "UNAVAILABLE": ("service unavailable", "backend service unavailable"),
}


def _allowed(code: str, message: str) -> bool:
    if code == "INTERNAL":
        return message.startswith("Session conflict: was=")
    return message in ALLOWED.get(code, ())


def scenario(s: Scenario) -> None:
    with s.given(f"the session stack (3 worker instances) and {CLIENTS} clients with their own connections"):
        stack = start_session_stack(s)
        clients = [stack.client() for _ in range(CLIENTS)]
        ids = [stack.session_id(f"client{i + 1}-") for i in range(CLIENTS)]
        history = History()

    with s.when("all four log in"):
        logins = [history.call(f"client{i + 1}", "login", c.login, "testuser", "testpass", ids[i])
                  for i, c in enumerate(clients)]

    with s.then("all four authenticate, each with its own token"):
        assert all(op.type == "ok" for op in logins), [(op.process, op.error) for op in logins]
        tokens = [op.result.token for op in logins]
        assert len(set(tokens)) == CLIENTS

    with s.when("all four call MyServiceEcho at the same time"):
        barrier = threading.Barrier(CLIENTS)
        results = [None] * CLIENTS

        def attempt(i: int) -> None:
            barrier.wait(timeout=10)
            op = history.invoke(f"client{i + 1}", "echo", f"value-{i + 1}")
            try:
                op.ok(clients[i].echo(f"value-{i + 1}", tokens[i], ids[i], timeout_s=10))
            except Exception as error:
                op.fail(error)
                op.result = getattr(error, "message", str(error))
            results[i] = op

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        history.save(s.artifacts_dir / "history.jsonl")
        ok = [op for op in results if op is not None and op.type == "ok"]
        failed = [op for op in results if op is not None and op.type != "ok"]
        for op in failed:
            s.note(f"{op.process}: {op.error} {op.result!r}")
        for op in ok:
            s.note(f"{op.process}: pod {op.result.pod_name}")

    with s.then("at least one fails, not all do, and failures are only the allowed kinds"):
        history.assert_all_completed()
        assert len(ok) + len(failed) == CLIENTS
        assert len(failed) >= 1, "four clients on three instances: someone must be refused"
        assert len(ok) >= 1, "nobody got an instance"
        for op in failed:
            assert _allowed(op.error, op.result), f"{op.process}: unexpected {op.error} {op.result!r}"

    with s.and_("successful clients got well-formed replies from pairwise different pods"):
        for op in ok:
            i = int(op.process.removeprefix("client")) - 1
            check_echo(op.result, value=f"value-{i + 1}", session_id=ids[i])
        pods = [op.result.pod_name for op in ok]
        assert len(set(pods)) == len(pods), pods

    with s.and_("with occupancy routing exactly three succeed (one per instance)"):
        assert len(ok) == 3, [(op.process, op.error, op.result) for op in results]

    with s.when("the successful clients shut their sessions down"):
        shutdowns = {}
        for op in ok:
            i = int(op.process.removeprefix("client")) - 1
            shutdowns[op.process] = (op, history.call(op.process, "shutdown", clients[i].shutdown, tokens[i], ids[i]))

    with s.then("each shutdown succeeds on the pod that served its session"):
        for name, (echo_op, op) in shutdowns.items():
            assert op.type == "ok", f"{name}: {op.error}"
            i = int(name.removeprefix("client")) - 1
            check_shutdown(op.result, pod=echo_op.result.pod_name, session_id=ids[i],
                           server_session_id=echo_op.result.server_session_id)
        history.save(s.artifacts_dir / "history.jsonl")


def test_system_overload(run_scenario):
    run_scenario(scenario)
