"""sticky_session (issue 6): two clients, ten interleaved echos each; every
call of a session reaches that session's pod, and the two pods differ.

Run: ``pytest scenarios/test_sticky_session.py`` or ``omnirelay scenario run sticky_session``.
"""

from __future__ import annotations

from omnirelay.samples.session_stack import check_echo, start_session_stack
from omnirelay.scenario import History, Scenario

ROUNDS = 10


def scenario(s: Scenario) -> None:
    with s.given("the session stack and two logged-in clients"):
        stack = start_session_stack(s)
        sessions = {name: stack.client().session(stack.session_id(name)) for name in ("a", "b")}
        history = History()

    with s.when(f"they call MyServiceEcho {ROUNDS} times each, interleaved"):
        replies = {name: [] for name in sessions}
        for i in range(ROUNDS):
            for name, session in sessions.items():
                op = history.call(name, "echo", session.echo, f"{name}-{i}")
                if op.type == "ok":
                    replies[name].append(op.result)
        history.save(s.artifacts_dir / "history.jsonl")

    with s.then("all calls succeed, each client stays on its own pod, and the pods differ"):
        history.assert_counts(ok_at_least=2 * ROUNDS)
        pods = {}
        for name, session in sessions.items():
            for i, reply in enumerate(replies[name]):
                check_echo(reply, value=f"{name}-{i}", session_id=session.session_id)
            assert len({r.pod_name for r in replies[name]}) == 1, [r.pod_name for r in replies[name]]
            assert len({r.server_session_id for r in replies[name]}) == 1
            pods[name] = replies[name][0].pod_name
        s.note(f"pods {pods}")
        assert pods["a"] != pods["b"], pods

    with s.and_("both sessions shut down cleanly on their pods"):
        for name, session in sessions.items():
            assert session.shutdown().pod_name == pods[name]


def test_sticky_session(run_scenario):
    run_scenario(scenario)
