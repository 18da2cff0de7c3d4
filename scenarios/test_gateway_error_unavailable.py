"""gateway_error_unavailable (issue 6): every worker stops while still
registered (kill -9 and kept down — the processes are gone, the registry lists
them until their TTL): calls fail with UNAVAILABLE "backend service
unavailable" after the gateway's bounded attempts, for an established session
and for a new one. Starting the workers again resumes service.

(A worker stopped gracefully leaves the registry; with none registered the
gateway answers RESOURCE_EXHAUSTED "no available instances" instead — see
no_instances_available.)

Run: ``pytest scenarios/test_gateway_error_unavailable.py`` or
``omnirelay scenario run gateway_error_unavailable``.
"""

from __future__ import annotations

import time

from omnirelay.samples.my_service import error_of
from omnirelay.samples.session_stack import WORKERS, check_echo, start_session_stack
from omnirelay.scenario import Scenario

EXPECTED = ("UNAVAILABLE", "backend service unavailable")


def scenario(s: Scenario) -> None:
    with s.given("the session stack and an established session"):
        stack = start_session_stack(s)
        client = stack.client(timeout_s=15)
        session = client.session(stack.session_id("steady"))
        pod = session.echo("before").pod_name
        newcomer = client.session(stack.session_id("newcomer"))

    with s.when("every worker is killed and kept down"):
        stack.control.kill(*WORKERS, restart=False)
        started = time.monotonic()
        established = error_of(session.echo, "during")
        fresh = error_of(newcomer.echo, "during")
        elapsed = time.monotonic() - started
        s.note(f"established: {established}; new: {fresh}; {elapsed:.2f}s for both")

    with s.then('both calls fail with UNAVAILABLE "backend service unavailable", within the attempt bound'):
        assert established == EXPECTED, established
        assert fresh == EXPECTED, fresh
        assert elapsed < 2 * 3 * 2.0 + 2, elapsed  # 2 calls x maxAttempts x attemptTimeout, plus slack

    with s.when("the workers are started again"):
        stack.control.start("role:worker")

    with s.then("service resumes for both sessions"):
        reply = s.eventually(lambda: _echo(session, "after"), within_s=15, interval_s=0.2,
                             message="established session served again")
        check_echo(reply, value="after", session_id=session.session_id)
        other = s.eventually(lambda: _echo(newcomer, "after"), within_s=15, interval_s=0.2)
        assert other.pod_name != reply.pod_name
        s.note(f"steady was on {pod}, now on {reply.pod_name}; newcomer on {other.pod_name}")


def _echo(session, value):
    from omnirelay.errors import ResourceExhausted, Unavailable

    try:
        return session.echo(value)
    except (Unavailable, ResourceExhausted):
        return None


def test_gateway_error_unavailable(run_scenario):
    run_scenario(scenario)
