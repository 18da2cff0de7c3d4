"""login_errors (issue 6): Login through the gateway (a route without
authorization) validates its input and the credentials against the SQLite user
store: INVALID_ARGUMENT "username is required" (checked first) /
"session_id is required", PERMISSION_DENIED "invalid username or password"
for a wrong password and for an unknown user alike; the seeded user logs in.

Run: ``pytest scenarios/test_login_errors.py`` or ``omnirelay scenario run login_errors``.
"""

from __future__ import annotations

import time

from omnirelay.samples.my_service import error_of
from omnirelay.samples.session_stack import start_session_stack
from omnirelay.scenario import Scenario

CASES = [
    # (what, username, password, session_id, expected (code, message))
    ("no username", "", "testpass", "s-1", ("INVALID_ARGUMENT", "username is required")),
    ("nothing at all", "", "", "", ("INVALID_ARGUMENT", "username is required")),
    ("no session_id", "testuser", "testpass", "", ("INVALID_ARGUMENT", "session_id is required")),
    ("wrong password", "testuser", "wrong", "s-1", ("PERMISSION_DENIED", "invalid username or password")),
    ("empty password", "testuser", "", "s-1", ("PERMISSION_DENIED", "invalid username or password")),
    ("unknown user", "nobody", "testpass", "s-1", ("PERMISSION_DENIED", "invalid username or password")),
]


def scenario(s: Scenario) -> None:
    with s.given("the session stack and a client without any token"):
        stack = start_session_stack(s)
        client = stack.client()

    with s.when("it logs in with missing fields and bad credentials"):
        got = {what: error_of(client.login, user, password, sid) for what, user, password, sid, _ in CASES}
        for what, result in got.items():
            s.note(f"{what}: {result}")

    with s.then("each fails with the documented code and message"):
        for what, _, _, _, expected in CASES:
            assert got[what] == expected, (what, got[what], expected)

    with s.when("it logs in as the seeded user testuser/testpass"):
        reply = client.login("testuser", "testpass", stack.session_id())

    with s.then("it gets a token, role user and a future expiry"):
        assert reply.token and reply.role == "user", reply
        assert reply.expires_at.seconds > time.time(), reply.expires_at


def test_login_errors(run_scenario):
    run_scenario(scenario)
