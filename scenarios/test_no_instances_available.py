"""no_instances_available (issue 6): three sessions occupy all three
instances; a fourth session gets RESOURCE_EXHAUSTED "all instances are busy"
while the three keep reaching their pods. When one session ends, its instance
exits and stays down (still busy for the fourth); once it is started again it
serves the waiting session; with no instance registered at all the gateway
answers RESOURCE_EXHAUSTED "no available instances".

Run: ``pytest scenarios/test_no_instances_available.py`` or
``omnirelay scenario run no_instances_available``.
"""

from __future__ import annotations

from omnirelay.samples.my_service import error_of
from omnirelay.samples.session_stack import check_echo, start_session_stack
from omnirelay.scenario import Scenario


def scenario(s: Scenario) -> None:
    with s.given("the session stack and three sessions, one per instance"):
        stack = start_session_stack(s)
        client = stack.client()
        sessions = [client.session(stack.session_id("holder")) for _ in range(3)]
        pods = [session.echo("hold").pod_name for session in sessions]
        s.note(f"pods {pods}")
        assert sorted(pods) == ["worker-1", "worker-2", "worker-3"], pods

    with s.when("a fourth session calls MyServiceEcho"):
        fourth = client.session(stack.session_id("fourth"))
        refused = error_of(fourth.echo, "me too")
        s.note(f"fourth: {refused}")

    with s.then('it gets RESOURCE_EXHAUSTED "all instances are busy"; the three still reach their pods'):
        assert refused == ("RESOURCE_EXHAUSTED", "all instances are busy"), refused
        assert [session.echo("still here").pod_name for session in sessions] == pods
        assert error_of(fourth.subscribe("me too").take, 1) == ("RESOURCE_EXHAUSTED", "all instances are busy")

    with s.when("the first session shuts down (its instance exits and stays down)"):
        pid = stack.pid(pods[0])
        freed = sessions[0].shutdown().pod_name
        stack.wait_exit(freed, pid)
        stack.control.wait_workers([p for p in pods if p != freed])

    with s.then("the fourth session still finds every remaining instance busy"):
        assert error_of(fourth.echo, "me too") == ("RESOURCE_EXHAUSTED", "all instances are busy")

    with s.when("the exited instance is started again (`omnirelay stack start`)"):
        stack.control.start(freed)

    with s.then("the fourth session is served by that instance once it is back"):
        reply = s.eventually(lambda: _echo_or_none(fourth), within_s=15, interval_s=0.2,
                             message="fourth session served")
        check_echo(reply, value="finally", session_id=fourth.session_id)
        assert reply.pod_name == freed, (reply.pod_name, freed)

    with s.when("every worker is stopped (they leave the registry)"):
        stack.control.stop("role:worker")
        stack.control.wait_workers([])
        fifth = client.session(stack.session_id("fifth"))

    with s.then('a new session gets RESOURCE_EXHAUSTED "no available instances"'):
        assert error_of(fifth.echo, "anyone?") == ("RESOURCE_EXHAUSTED", "no available instances")


def _echo_or_none(session):
    from omnirelay.errors import ResourceExhausted, Unavailable

    try:
        return session.echo("finally")
    except (ResourceExhausted, Unavailable):  # the gateway has not seen the pod back yet
        return None


def test_no_instances_available(run_scenario):
    run_scenario(scenario)
