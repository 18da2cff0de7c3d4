"""gateway_error_unauthenticated (issue 6): the gateway rejects calls to the
MyService* routes that carry no valid token — before any worker sees them:
no credentials at all (Echo, Subscribe, Shutdown), a token signed with another
key, an unsigned ``alg: none`` token, a token without claims. All are
UNAUTHENTICATED; afterwards all three instances are still free.

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
            "echo with session-id": error_of(client.echo, "x", None, sid),
            "subscribe": error_of(lambda: client.subscribe("x", None, sid, timeout_s=10).take(1)),
            "shutdown": error_of(client.shutdown, None, sid),
        }
        for what, got in bare.items():
            s.note(f"{what}: {got}")

    with s.then('each is UNAUTHENTICATED "missing token"'):
        for what, got in bare.items():
            assert got == ("UNAUTHENTICATED", "missing token"), (what, got)

    with s.when("it calls MyServiceEcho with forged tokens"):
        forged_results = {
            "other key": error_of(client.echo, "x", forged, sid),
            "alg none": error_of(client.echo, "x", unsigned, sid),
            "no claims": error_of(client.echo, "x", no_claims, sid),
        }
        for what, got in forged_results.items():
            s.note(f"{what}: {got}")

    with s.then("each is UNAUTHENTICATED with the reason"):
        assert forged_results["other key"] == ("UNAUTHENTICATED", "invalid token signature")
        assert forged_results["alg none"] == ("UNAUTHENTICATED", "unsupported token algorithm")
        assert forged_results["no claims"] == ("UNAUTHENTICATED", "token is missing claims")

    with s.and_("no worker was bound: three real sessions get three different pods"):
        pods = sorted(client.session(stack.session_id("real")).echo("hi").pod_name for _ in range(3))
        assert pods == ["worker-1", "worker-2", "worker-3"], pods


def test_gateway_error_unauthenticated(run_scenario):
    run_scenario(scenario)
