"""stream_subscription_myservice_stop (issue 6): the worker serving a
subscription dies mid-stream. The client sees a clean error (a status, no
hang) and the session's next call lands on another instance. Both ways of
dying: a graceful stop (SIGTERM, ``omnirelay stack stop POD``) and a crash
(kill -9, ``omnirelay stack kill POD --no-restart``), each kept down until
restarted so "another instance" is deterministic.

Run: ``pytest scenarios/test_stream_subscription_myservice_stop.py`` or
``omnirelay scenario run stream_subscription_myservice_stop``.
"""

from __future__ import annotations

import time

from omnirelay.errors import OmniRelayError
from omnirelay.samples.my_service import outcome
from omnirelay.samples.session_stack import check_echo, start_session_stack
from omnirelay.scenario import Scenario

STREAM_DEADLINE_S = 15.0  # bounds every read: a hang would end DEADLINE_EXCEEDED


def _die_mid_stream(s: Scenario, stack, session, how: str):
    subscription = session.subscribe(f"stream-{how}", timeout_s=STREAM_DEADLINE_S)
    first = subscription.take(3)
    pod = first[0].pod_name
    assert [m.index for m in first] == [0, 1, 2] and {m.pod_name for m in first} == {pod}
    s.note(f"{how}: streaming from {pod}")
    started = time.monotonic()
    if how == "stop":
        stack.control.stop(pod)
    else:
        stack.control.kill(pod, restart=False)
    error = None
    more = 0
    try:
        for _ in subscription:
            more += 1
    except OmniRelayError as e:
        error = e
    elapsed = time.monotonic() - started
    s.note(f"{how}: {more} more message(s), then {error!r} after {elapsed:.2f}s")
    return pod, error, elapsed


def scenario(s: Scenario) -> None:
    with s.given("the session stack and a logged-in client"):
        stack = start_session_stack(s)
        session = stack.client().session(stack.session_id())

    with s.when("the worker serving its subscription is stopped gracefully mid-stream"):
        stopped, error, elapsed = _die_mid_stream(s, stack, session, "stop")

    with s.then("the stream ends with a clean UNAVAILABLE, promptly"):
        assert error is not None, "the stream ended OK although its worker stopped"
        assert error.name == "UNAVAILABLE", repr(error)
        assert elapsed < 10, elapsed

    with s.and_("the session's next call lands on another instance"):
        reply = session.echo("moved")
        check_echo(reply, value="moved", session_id=session.session_id)
        assert reply.pod_name != stopped, reply.pod_name

    with s.when("that worker is killed (-9) mid-stream"):
        killed, error, elapsed = _die_mid_stream(s, stack, session, "kill")

    with s.then("the stream ends with a clean UNAVAILABLE, and the next call lands on a third instance"):
        assert killed == reply.pod_name, (killed, reply.pod_name)
        assert error is not None and error.name == "UNAVAILABLE", repr(error)
        assert elapsed < 10, elapsed
        third = session.echo("moved again")
        check_echo(third, value="moved again", session_id=session.session_id)
        assert third.pod_name not in (stopped, killed), (third.pod_name, stopped, killed)

    with s.when("both workers are started again"):
        stack.control.start(stopped, killed)
        stack.control.wait_workers(["worker-1", "worker-2", "worker-3"])

    with s.then("the session stays on its instance and new sessions are served by the restarted ones"):
        assert session.echo("still").pod_name == third.pod_name
        # A restarted instance comes back on the same address; the gateway's
        # connection to it may still be in reconnect backoff, so bounded retries.
        client = stack.client()
        served = set()

        def new_session_served() -> bool:
            code, reply = outcome(client.session(stack.session_id("new")).echo, "hi")
            if code == "OK":
                served.add(reply.pod_name)
            else:
                s.note(f"new session: {code} {reply}")
            return len(served) == 2

        s.eventually(new_session_served, within_s=10, interval_s=0.2, message="restarted pods serve new sessions")
        assert served == {stopped, killed}, served


def test_stream_subscription_myservice_stop(run_scenario):
    run_scenario(scenario)
