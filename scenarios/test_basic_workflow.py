"""basic_workflow (issue 6): log in through the gateway, echo several times on
one pod, shut the session down; the instance then exits and stays down (the
reference stack's behaviour) until ``omnirelay stack start`` brings it back.

Run: ``pytest scenarios/test_basic_workflow.py`` or ``omnirelay scenario run basic_workflow``.
"""

from __future__ import annotations

import time

from omnirelay.samples.session_stack import check_echo, check_shutdown, start_session_stack
from omnirelay.scenario import Scenario

ECHOES = 5


def scenario(s: Scenario) -> None:
    with s.given("the session stack: gateway, auth, registry, worker-1..3"):
        stack = start_session_stack(s)
        client = stack.client()
        session_id = stack.session_id()

    with s.when("the client logs in through the gateway"):
        login = client.login("testuser", "testpass", session_id)

    with s.then("it gets a token, its role and an expiry about an hour ahead"):
        assert login.token and login.token.count(".") == 2, login
        assert login.role == "user", login
        assert 3500 < login.expires_at.seconds - time.time() <= 3600, login.expires_at

    with s.when(f"it calls MyServiceEcho {ECHOES} times"):
        replies = [client.echo(f"hello-{i}", login.token, session_id) for i in range(ECHOES)]
        s.note(f"pod {replies[0].pod_name}, server session {replies[0].server_session_id}")

    with s.then("every reply is well formed and comes from the same pod and server session"):
        for i, reply in enumerate(replies):
            check_echo(reply, value=f"hello-{i}", session_id=session_id)
        assert len({r.pod_name for r in replies}) == 1, [r.pod_name for r in replies]
        assert len({r.server_session_id for r in replies}) == 1
        pod = replies[0].pod_name
        assert replies[0].server_session_id.startswith(pod), replies[0]
        pid = stack.pid(pod)

    with s.when("it calls MyServiceShutdown"):
        shutdown = client.shutdown(login.token, session_id)

    with s.then("the reply names the same pod and session, and that instance exits"):
        check_shutdown(shutdown, pod=pod, session_id=session_id,
                       server_session_id=replies[0].server_session_id)
        stack.wait_exit(pod, pid, within_s=10)
        row = {r["pod"]: r for r in stack.control.ps()}[pod]
        assert row["state"] == "exited (0)" and row["pid"] is None, row

    with s.when("the stack starts it again (`omnirelay stack start POD`)"):
        stack.control.start(pod)
        stack.control.wait_workers(["worker-1", "worker-2", "worker-3"])

    with s.then("it runs as a new process and serves a new session"):
        assert stack.pid(pod) not in (None, pid)
        fresh = stack.client().session(stack.session_id("fresh"))
        reply = s.eventually(lambda: _echo_or_none(fresh), within_s=15, interval_s=0.2,
                             message="a new session served")
        check_echo(reply, value="fresh", session_id=fresh.session_id)


def _echo_or_none(session):
    from omnirelay.samples.my_service import outcome

    code, reply = outcome(session.echo, "fresh")
    return reply if code == "OK" else None


def test_basic_workflow(run_scenario):
    run_scenario(scenario)
