"""Helpers shared by the real-process mesh tests (membership routing, geo
routing, backpressure propagation)."""

import time

import grpc


def identity(b):
    return b


def wait_until(predicate, within_s, interval_s=0.1, ignore=()):
    """Polls until ``predicate()`` is truthy or ``within_s`` passed; returns its
    last value (so a caller can assert on it or use it). Exceptions of the
    types in ``ignore`` count as "not yet" (a node still starting refuses
    connections); any other exception propagates."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


class Caller:
    """Calls one unary method; remembers who served (``x-omnirelay-instance``)
    and what failed."""

    def __init__(self, address, method):
        self.channel = grpc.insecure_channel(address)
        self.call = self.channel.unary_unary(method, request_serializer=identity,
                                             response_deserializer=identity)
        self.failures = []

    def burst(self, n):
        served = []
        for _ in range(n):
            try:
                _, call = self.call.with_call(b"", timeout=5)
                served.append(dict(call.initial_metadata())["x-omnirelay-instance"])
            except grpc.RpcError as error:
                self.failures.append((error.code(), error.details()))
        return served

    def close(self):
        self.channel.close()
