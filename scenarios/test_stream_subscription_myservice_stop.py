"""stream_subscription_myservice_stop (issues 6, 16): the worker serving a live
subscription dies mid-stream, and the stream goes on. The gateway rebinds the
session to another free instance, replays the subscribe request there, and the
client's same stream continues with that instance's messages (new
``pod_name``, new server session, ``index`` from 0). Both ways of dying: a
graceful stop (SIGTERM, ``omnirelay stack stop POD``) and a crash (kill -9,
``omnirelay stack kill POD``); dead workers stay down (the reference stack's
behaviour), so "another instance" is deterministic. Only when no instance can
take the stream does it end, with UNAVAILABLE "backend service unavailable".

The workers stream every 200 ms here (the default period is 5 s) so the
scenario stays short in CI.

Run: ``pytest scenarios/test_stream_subscription_myservice_stop.py`` or
``omnirelay scenario run stream_subscription_myservice_stop``.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

from omnirelay.errors import OmniRelayError
from omnirelay.samples.my_service import outcome
from omnirelay.samples.session_stack import WORKERS, check_echo, start_session_stack
from omnirelay.scenario import Scenario

STREAM_INTERVAL = "200ms"
STREAM_DEADLINE_S = 60.0  # bounds the whole stream: a hang would end DEADLINE_EXCEEDED
SWITCH_WITHIN_S = 15.0    # the stream must be continuing elsewhere within this


def _until_other_pod(subscription, pod: str, value: str, session_id: str) -> Tuple[List[Any], List[Any], float]:
    """Reads the live stream until three messages came from a pod other than
    ``pod``: returns (the rest from ``pod``, the three from the new pod, the
    seconds the switch took)."""
    started = time.monotonic()
    before: List[Any] = []
    after: List[Any] = []
    for message in subscription:
        check_echo(message, value=value, session_id=session_id, index=message.index,
                   method="MyServiceSubscribe")
        if message.pod_name == pod and not after:
            before.append(message)
        else:
            after.append(message)
            if len(after) == 3:
                break
        assert time.monotonic() - started < SWITCH_WITHIN_S, (before, after)
    return before, after, time.monotonic() - started


def _check_continued(after: List[Any], dead: Tuple[str, ...]) -> str:
    pods = {m.pod_name for m in after}
    assert len(pods) == 1, [m.pod_name for m in after]
    new_pod = after[0].pod_name
    assert new_pod not in dead, (new_pod, dead)
    assert [m.index for m in after] == [0, 1, 2], [m.index for m in after]
    assert len({m.server_session_id for m in after}) == 1
    assert after[0].server_session_id.startswith(new_pod), after[0]
    return new_pod


def scenario(s: Scenario) -> None:
    with s.given("the session stack and a logged-in client with a live subscription"):
        stack = start_session_stack(s, stream_interval=STREAM_INTERVAL)
        session = stack.client().session(stack.session_id())
        subscription = session.subscribe("live", timeout_s=STREAM_DEADLINE_S)
        first = subscription.take(3)
        pod_a = first[0].pod_name
        assert [m.index for m in first] == [0, 1, 2] and {m.pod_name for m in first} == {pod_a}
        s.note(f"streaming from {pod_a} ({first[0].server_session_id})")

    with s.when("the worker serving it is stopped gracefully (SIGTERM) mid-stream"):
        stack.control.stop(pod_a)
        before, after, took = _until_other_pod(subscription, pod_a, "live", session.session_id)
        s.note(f"stop: {len(before)} more from {pod_a}, then {after[0].pod_name} after {took:.2f}s")

    with s.then("the same stream continues on another instance: new pod_name and server session, index from 0"):
        assert [m.index for m in before] == list(range(3, 3 + len(before)))
        pod_b = _check_continued(after, (pod_a,))
        assert after[0].server_session_id != first[0].server_session_id

    with s.when("that worker is killed (-9) mid-stream"):
        stack.control.kill(pod_b)
        before, after, took = _until_other_pod(subscription, pod_b, "live", session.session_id)
        s.note(f"kill: {len(before)} more from {pod_b}, then {after[0].pod_name} after {took:.2f}s")

    with s.then("the stream continues on the third instance, and the session's calls follow it"):
        pod_c = _check_continued(after, (pod_a, pod_b))
        assert sorted((pod_a, pod_b, pod_c)) == sorted(WORKERS)
        assert not stack.control.node_for_pod(pod_a).is_running()  # dead workers stay down
        assert not stack.control.node_for_pod(pod_b).is_running()
        reply = session.echo("follows")
        check_echo(reply, value="follows", session_id=session.session_id)
        assert reply.pod_name == pod_c, reply.pod_name

    with s.when("the last instance is killed too while the stream is live"):
        stack.control.kill(pod_c)
        error = None
        started = time.monotonic()
        try:
            for message in subscription:
                assert message.pod_name == pod_c, message  # nowhere else to go
        except OmniRelayError as e:
            error = e
        elapsed = time.monotonic() - started
        s.note(f"last instance gone: {error!r} after {elapsed:.2f}s")

    with s.then('no instance can take it: the stream ends UNAVAILABLE "backend service unavailable", promptly'):
        assert error is not None, "the stream ended OK although no instance is left"
        assert (error.name, error.message) == ("UNAVAILABLE", "backend service unavailable"), repr(error)
        assert elapsed < 15, elapsed

    with s.when("the workers are started again"):
        stack.control.start("role:worker")
        stack.control.wait_workers(list(WORKERS))

    with s.then("the session and new sessions are served again"):
        # A restarted instance comes back on the same address; the gateway's
        # connection to it may still be in reconnect backoff: bounded retries.
        newcomer = stack.client().session(stack.session_id("new"))
        served = {}

        def sessions_served() -> bool:
            for kind, who in (("old", session), ("new", newcomer)):
                if kind not in served:
                    code, reply = outcome(who.echo, "back")
                    if code == "OK":
                        served[kind] = reply.pod_name
            return len(served) == 2

        s.eventually(sessions_served, within_s=15, interval_s=0.2, message="sessions served after start")
        assert served["old"] != served["new"], served


def test_stream_subscription_myservice_stop(run_scenario):
    run_scenario(scenario)
