"""stream_subscription (issue 6): MyServiceSubscribe through the gateway
yields EchoResponses with index 0, 1, 2, ... from one pod; cancelling the
stream is the client's choice and keeps the session on its pod.

Run: ``pytest scenarios/test_stream_subscription.py`` or
``omnirelay scenario run stream_subscription``.
"""

from __future__ import annotations

from omnirelay.samples.session_stack import check_echo, check_shutdown, start_session_stack
from omnirelay.scenario import Scenario

MESSAGES = 5


def scenario(s: Scenario) -> None:
    with s.given("the session stack (subscriptions every 200 ms instead of 5 s) and a logged-in client"):
        stack = start_session_stack(s, stream_interval="200ms")
        session = stack.client().session(stack.session_id())

    with s.when(f"it subscribes and reads {MESSAGES} messages, then cancels"):
        subscription = session.subscribe("tick", timeout_s=20)
        messages = subscription.take(MESSAGES)
        subscription.cancel()
        s.note(f"pod {messages[0].pod_name}, indices {[m.index for m in messages]}")

    with s.then("indices are 0, 1, 2, ... and every message comes from the same pod and server session"):
        assert [m.index for m in messages] == list(range(MESSAGES))
        for m in messages:
            check_echo(m, value="tick", session_id=session.session_id, index=m.index,
                       method="MyServiceSubscribe")
        assert len({m.pod_name for m in messages}) == 1
        assert len({m.server_session_id for m in messages}) == 1
        pod = messages[0].pod_name

    with s.when("the session calls MyServiceEcho, then subscribes again"):
        echo = session.echo("after")
        again = session.subscribe("again", timeout_s=20)
        second = again.take(3)
        again.cancel()

    with s.then("both land on the same pod (a cancelled stream does not move the session)"):
        check_echo(echo, value="after", session_id=session.session_id)
        assert echo.pod_name == pod
        assert [m.index for m in second] == [0, 1, 2] and {m.pod_name for m in second} == {pod}
        check_shutdown(session.shutdown(), pod=pod, session_id=session.session_id,
                       server_session_id=messages[0].server_session_id)


def test_stream_subscription(run_scenario):
    run_scenario(scenario)
