"""myservice_authentication_errors (issues 6, 16): the gateway verifies the
JWT on every MyService* call, after the session. A missing session-id is
UNAUTHENTICATED "missing session-id" whatever the token; no token, a malformed
one (incl. "Bearer <jwt>"), an expired one and a token of another session are
UNAUTHENTICATED "missing or invalid token" — on MyServiceEcho and on
MyServiceSubscribe — and none of them binds an instance.

Run: ``pytest scenarios/test_myservice_authentication_errors.py`` or
``omnirelay scenario run myservice_authentication_errors``.
"""

from __future__ import annotations

from omnirelay.samples.my_service import error_of, make_token
from omnirelay.samples.session_stack import check_echo, start_session_stack
from omnirelay.scenario import Scenario


def _cases(token: str, session_id: str, other_token: str, expired: str):
    return [
        # (what, authorization, session-id, expected message)
        ("no token", None, session_id, "missing or invalid token"),
        ("empty token", "", session_id, "missing or invalid token"),
        ("bad format", "not-a-jwt", session_id, "missing or invalid token"),
        ("Bearer prefix", "Bearer " + token, session_id, "missing or invalid token"),
        ("expired", expired, session_id, "missing or invalid token"),
        ("session mismatch", other_token, session_id, "missing or invalid token"),
        ("missing session-id", token, None, "missing session-id"),
        ("empty session-id", token, "", "missing session-id"),
        ("nothing at all", None, None, "missing session-id"),  # the session is checked first
    ]


def scenario(s: Scenario) -> None:
    with s.given("the session stack and two logged-in sessions"):
        stack = start_session_stack(s)
        client = stack.client()
        session = client.session(stack.session_id("main"))
        other = client.session(stack.session_id("other"))
        expired = make_token(stack.secret(), session_id=session.session_id, expires_in_s=-60)
        cases = _cases(session.token, session.session_id, other.token, expired)

    with s.when("MyServiceEcho is called with each bad credential"):
        echo = {what: error_of(client.echo, "x", token, sid) for what, token, sid, _ in cases}

    with s.and_("MyServiceSubscribe is called with each bad credential"):
        sub = {what: error_of(lambda t=token, i=sid: client.subscribe("x", t, i, timeout_s=10).take(1))
               for what, token, sid, _ in cases}
        for what in echo:
            s.note(f"{what}: echo {echo[what]}, subscribe {sub[what]}")

    with s.then("every call is UNAUTHENTICATED with the documented message"):
        for what, _, _, message in cases:
            assert echo[what] == ("UNAUTHENTICATED", message), ("echo", what, echo[what])
            assert sub[what] == ("UNAUTHENTICATED", message), ("subscribe", what, sub[what])

    with s.and_("no instance was bound: the valid session and two more get three different pods"):
        pods = [session.echo("ok").pod_name, other.echo("ok").pod_name,
                client.session(stack.session_id("third")).echo("ok").pod_name]
        check_echo(session.echo("again"), value="again", session_id=session.session_id)
        assert sorted(pods) == ["worker-1", "worker-2", "worker-3"], pods


def test_myservice_authentication_errors(run_scenario):
    run_scenario(scenario)
