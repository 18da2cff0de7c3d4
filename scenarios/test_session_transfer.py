"""session_transfer (issues 6, 16): MyServiceShutdown makes the instance exit;
the same session (same token, same session-id) then continues on a second
instance, and after shutting that one down, on a third. Each instance gives
it a new server session. Exited instances stay down (the reference stack's
behaviour), so once the third is shut down too, the session's next call
fails with UNAVAILABLE or RESOURCE_EXHAUSTED; after ``omnirelay stack start``
it is served again.

Run: ``pytest scenarios/test_session_transfer.py`` or ``omnirelay scenario run session_transfer``.
"""

from __future__ import annotations

from omnirelay.samples.my_service import outcome
from omnirelay.samples.session_stack import WORKERS, check_echo, check_shutdown, start_session_stack
from omnirelay.scenario import Scenario


def _hop(s: Scenario, stack, session, value: str):
    """Echo (establishes the session on some pod), then Shutdown; waits until
    that instance's process has exited."""
    reply = session.echo(value)
    check_echo(reply, value=value, session_id=session.session_id)
    pid = stack.pid(reply.pod_name)
    shutdown = session.shutdown()
    check_shutdown(shutdown, pod=reply.pod_name, session_id=session.session_id,
                   server_session_id=reply.server_session_id)
    stack.wait_exit(reply.pod_name, pid, within_s=10)
    s.note(f"{value}: {reply.pod_name} ({reply.server_session_id}) shut down and exited")
    return reply


def scenario(s: Scenario) -> None:
    with s.given("the session stack and one logged-in session"):
        stack = start_session_stack(s)
        session = stack.client().session(stack.session_id("transfer"))

    with s.when("the session echoes on its first instance and shuts it down"):
        first = _hop(s, stack, session, "one")

    with s.and_("the same session echoes again and shuts that instance down"):
        second = _hop(s, stack, session, "two")

    with s.and_("the same session echoes a third time"):
        third = session.echo("three")
        check_echo(third, value="three", session_id=session.session_id)
        s.note(f"three: {third.pod_name} ({third.server_session_id})")

    with s.then("the session moved to a second, then a third instance, each with a new server session"):
        pods = [first.pod_name, second.pod_name, third.pod_name]
        assert len(set(pods)) == 3, pods
        assert len({first.server_session_id, second.server_session_id, third.server_session_id}) == 3
        assert {r.client_session_id for r in (first, second, third)} == {session.session_id}

    with s.and_("it stays on the third instance; the exited instances stay down"):
        assert session.echo("four").pod_name == third.pod_name
        assert stack.pid(first.pod_name) is None and stack.pid(second.pod_name) is None

    with s.when("the session shuts the third instance down as well"):
        pid = stack.pid(third.pod_name)
        check_shutdown(session.shutdown(), pod=third.pod_name, session_id=session.session_id,
                       server_session_id=third.server_session_id)
        stack.wait_exit(third.pod_name, pid, within_s=10)
        code, message = outcome(session.echo, "five")
        s.note(f"five: {code} {message}")

    with s.then("with all three instances shut down, the session's next call fails with UNAVAILABLE or "
                "RESOURCE_EXHAUSTED"):
        assert code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"), (code, message)
        assert all(stack.pid(pod) is None for pod in WORKERS)

    with s.when("the workers are started again (`omnirelay stack start role:worker`)"):
        stack.control.start("role:worker")
        stack.control.wait_workers(list(WORKERS))

    with s.then("the same session is served by a fresh instance"):
        reply = s.eventually(lambda: _echo_or_none(session, "six"), within_s=15, interval_s=0.2,
                             message="session served after start")
        check_echo(reply, value="six", session_id=session.session_id)
        assert reply.server_session_id not in {first.server_session_id, second.server_session_id,
                                               third.server_session_id}


def _echo_or_none(session, value: str):
    code, reply = outcome(session.echo, value)
    return reply if code == "OK" else None


def test_session_transfer(run_scenario):
    run_scenario(scenario)
