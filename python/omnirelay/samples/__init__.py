"""Clients of OmniRelay's sample services (issue 6's session gateway).

``omnirelay.samples.my_service`` — a typed client of ``my_service.MyServiceAPI``
(Login, MyServiceEcho, MyServiceSubscribe, MyServiceShutdown) whose grpcio stubs
are generated from ``proto/my_service/my_service.proto`` at first use.
"""
