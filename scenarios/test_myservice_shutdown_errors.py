"""myservice_shutdown_errors (issue 6): MyServiceShutdown's rules.

* a session that never established itself: PERMISSION_DENIED "Server session is not set";
* another session than the bound one: PERMISSION_DENIED "Client session mismatch:
  client={c}, server={s}" — the gateway never routes a second session to an
  occupied instance, so this is checked against the worker directly, and the
  bound session is unaffected;
* no token: UNAUTHENTICATED "missing or invalid token" (the gateway); no
  session-id either: UNAUTHENTICATED "missing session-id" (checked first);
* after a successful Shutdown the instance exits (and stays down); a repeated
  Shutdown of that session lands on another, free instance: "Server session is
  not set".

Run: ``pytest scenarios/test_myservice_shutdown_errors.py`` or
``omnirelay scenario run myservice_shutdown_errors``.
"""

from __future__ import annotations

from omnirelay.samples.my_service import error_of
from omnirelay.samples.session_stack import check_shutdown, start_session_stack
from omnirelay.scenario import Scenario


def scenario(s: Scenario) -> None:
    with s.given("the session stack and two logged-in sessions, one established on a pod"):
        stack = start_session_stack(s)
        client = stack.client()
        bound = client.session(stack.session_id("bound"))
        first = bound.echo("establish")
        pod = first.pod_name
        fresh = client.session(stack.session_id("fresh"))
        s.note(f"bound session on {pod}")

    with s.when("the fresh session calls MyServiceShutdown before any other call"):
        not_set = error_of(fresh.shutdown)

    with s.then('it gets PERMISSION_DENIED "Server session is not set"'):
        assert not_set == ("PERMISSION_DENIED", "Server session is not set"), not_set

    with s.when("the fresh session's Shutdown reaches the bound pod directly"):
        direct = stack.worker_client(pod)
        mismatch = error_of(direct.shutdown, fresh.token, fresh.session_id)

    with s.then('it gets PERMISSION_DENIED "Client session mismatch: ..." and the bound session is unaffected'):
        assert mismatch == ("PERMISSION_DENIED",
                            f"Client session mismatch: client={fresh.session_id}, server={bound.session_id}"), mismatch
        assert bound.echo("still mine").pod_name == pod

    with s.when("Shutdown is called without a token"):
        no_token = error_of(client.shutdown, None, bound.session_id)

    with s.then('the gateway answers UNAUTHENTICATED "missing or invalid token"; without a session-id '
                'too, "missing session-id"'):
        assert no_token == ("UNAUTHENTICATED", "missing or invalid token"), no_token
        assert error_of(client.shutdown, None, None) == ("UNAUTHENTICATED", "missing session-id")

    with s.when("the bound session shuts down, then calls Shutdown again"):
        pid = stack.pid(pod)
        check_shutdown(bound.shutdown(), pod=pod, session_id=bound.session_id,
                       server_session_id=first.server_session_id)
        stack.wait_exit(pod, pid)
        again = error_of(bound.shutdown)

    with s.then('the instance exited and stays down; the repeat gets "Server session is not set" from '
                'another instance'):
        assert again == ("PERMISSION_DENIED", "Server session is not set"), again
        assert stack.pid(pod) is None


def test_myservice_shutdown_errors(run_scenario):
    run_scenario(scenario)
