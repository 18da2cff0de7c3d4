"""The in-memory ResourceLease queue through the bindings (omnirelay._core),
driven by a ManualClock: expiry, fencing, dead-letter, drain/restore and the
ordered mutation log that replication builds on."""

from __future__ import annotations

import pytest

from omnirelay import ManualClock, errors
from omnirelay._core import ResourceLeaseQueue


def item(rid, **extra):
    return {"resourceType": "table", "resourceId": rid, "body": b"\x00" + rid.encode(), "requestId": rid, **extra}


def test_queue_semantics_on_a_manual_clock():
    clock = ManualClock()
    q = ResourceLeaseQueue(name="py", lease_duration=2.0, max_attempts=2, clock=clock)
    assert q.enqueue(item("a"))["duplicate"] is False
    assert q.enqueue(item("a"))["duplicate"] is True
    lease = q.try_lease("w1")
    assert lease["item"]["body"] == b"\x00a" and lease["attempt"] == 1
    clock.advance(2.0)  # expires: back to pending
    assert q.stats()["expired"] == 1 and q.stats()["pending"] == 1
    with pytest.raises(errors.FailedPrecondition) as stale:
        q.complete(lease["itemId"], lease["fencingToken"], "w1")
    assert stale.value.error_code == "stale-fencing-token"
    again = q.try_lease("w2")
    assert again["fencingToken"] > lease["fencingToken"]
    with pytest.raises(errors.PermissionDenied):
        q.complete(again["itemId"], again["fencingToken"], "w1")
    assert q.fail(again["itemId"], again["fencingToken"], "w2", "boom") == "dead-letter"
    assert [d["item"]["requestId"] for d in q.dead_letters()] == ["a"]
    assert q.requeue_dead_letters() == 1

    q.enqueue(item("b", priority=4))
    drained = q.drain()
    assert [r["item"]["requestId"] for r in drained] == ["b", "a"]
    with pytest.raises(errors.Unavailable):
        q.enqueue(item("c"))
    other = ResourceLeaseQueue(name="py2", clock=clock)
    assert other.restore(drained) == 2
    assert [other.try_lease("w")["item"]["requestId"] for _ in range(2)] == ["b", "a"]

    ops = [e["op"] for e in q.events()]
    assert ops == ["enqueue", "lease", "expire", "lease", "fail", "dead-letter", "requeue", "enqueue",
                   "drain", "drain"]
    assert [e["sequence"] for e in q.events()] == list(range(1, len(ops) + 1))
