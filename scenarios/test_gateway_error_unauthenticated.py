"""gateway_error_unauthenticated (issues 6, 16): the gateway rejects calls to
the MyService* routes that carry no valid credentials — before any worker sees
them. The session is checked before the token: no metadata at all (Echo,
Subscribe, Shutdown) is UNAUTHENTICATED "missing session-id"; a session-id
without a token, a token signed with another key, an unsigned ``alg: none``
token, a token without claims are UNAUTHENTICATED "missing or invalid token".
Afterwards all three instances are still free.

Run: ``pytest scenarios/test_gateway_error_unauthenticated.py`` or
``omnirelay scenario run gateway_error_unauthenticated``.
"""

from __future__ import annotations

from omnirelay.samples.my_service import error_of, make_token
from omnirelay.samples.session_stack import start_session_stack
from omnirelay.scenario import Scenario

OTHER_KEY = "0" * 64


def scenario(s: Scenario) -> None:
    with s.given("the session stack and a client that never logged in"):
        stack = start_session_stack(s)
        client = stack.client()
        sid = stack.session_id("anonymous")
        forged = make_token(OTHER_KEY, session_id=sid)
        unsigned = make_token("", session_id=sid, alg="none")
        no_claims = make_token(stack.secret(), session_id=sid, claims={"role": "user"})

    with s.when("it calls every MyService method without credentials"):
        bare = {
            "echo": error_of(client.echo, "x"),
            "subscribe": error_of(lambda: client.subscribe("x", timeout_s=10).take(1)),
            "shutdown": error_of(client.shutdown),
        }
        with_session = {
            "echo": error_of(client.echo, "x", None, sid),
            "subscribe": error_of(lambda: client.subscribe("x", None, sid, timeout_s=10).take(1)),
            "shutdown": error_of(client.shutdown, None, sid),
        }
        for what in bare:
            s.note(f"{what}: no metadata {bare[what]}, session-id only {with_session[what]}")

    with s.then('each is UNAUTHENTICATED: "missing session-id" first, then "missing or invalid token"'):
        for what in bare:
            assert bare[what] == ("UNAUTHENTICATED", "missing session-id"), (what, bare[what])
            assert with_session[what] == ("UNAUTHENTICATED", "missing or invalid token"), \
                (what, with_session[what])

    with s.when("it calls MyServiceEcho with forged tokens"):
        forged_results = {
            "other key": error_of(client.echo, "x", forged, sid),
            "alg none": error_of(client.echo, "x", unsigned, sid),
            "no claims": error_of(client.echo, "x", no_claims, sid),
        }
        for what, got in forged_results.items():
            s.note(f"{what}: {got}")

    with s.then('each is UNAUTHENTICATED "missing or invalid token"'):
        for what, got in forged_results.items():
            assert got == ("UNAUTHENTICATED", "missing or invalid token"), (what, got)

    with s.and_("no worker was bound: three real sessions get three different pods"):
        pods = sorted(client.session(stack.session_id("real")).echo("hi").pod_name for _ in range(3))
        assert pods == ["worker-1", "worker-2", "worker-3"], pods


def test_gateway_error_unauthenticated(run_scenario):
    run_scenario(scenario)
