"""A small typed client of ``my_service.MyServiceAPI`` (the session gateway's
client-facing contract, docs/session-gateway.md).

    from omnirelay.samples.my_service import Client

    with Client("127.0.0.1:10000") as client:
        session = client.session("my-session")          # Login as testuser/testpass
        reply = session.echo("hello")                   # EchoResponse
        print(reply.pod_name, reply.server_session_id)
        for message in session.subscribe("tick").take(3):
            print(message.index)
        session.shutdown()

Every failed call raises the project's typed exception (``omnirelay.errors``:
``ResourceExhausted``, ``Unauthenticated``, ...) whose ``.name`` is the status
code name and ``.message`` the status message; :func:`outcome` turns a call into
a ``(code name, message or reply)`` pair for table-style checks.

The grpcio stubs are generated at first use (never committed) with Debian's
``protoc`` and ``/usr/bin/grpc_python_plugin`` into a cache folder keyed by the
proto's content and the compiler's version: ``$OMNIRELAY_CACHE_DIR`` or
``$XDG_CACHE_HOME/omnirelay`` (default ``~/.cache/omnirelay``). The .proto comes
from ``$OMNIRELAY_PROTO_PATH``, the installed package (``omnirelay/proto``, shipped
in the wheel) or the source tree's ``proto/``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from omnirelay import errors

SERVICE = "my_service.MyServiceAPI"
PROTO = "my_service/my_service.proto"
GRPC_PYTHON_PLUGIN = "/usr/bin/grpc_python_plugin"
DEFAULT_USERNAME = "testuser"
DEFAULT_PASSWORD = "testpass"
DEFAULT_TIMEOUT_S = 5.0

_stubs_lock = threading.Lock()
_stubs: Optional[Tuple[ModuleType, ModuleType]] = None


# -- stubs ------------------------------------------------------------------------------

class StubGenerationError(RuntimeError):
    """protoc or the grpc plugin is missing, or the proto did not compile."""


def proto_root() -> Path:
    """The folder holding ``my_service/my_service.proto``."""
    candidates = []
    env = os.environ.get("OMNIRELAY_PROTO_PATH")
    if env:
        candidates += [Path(p) for p in env.split(os.pathsep) if p]
    package = Path(__file__).resolve().parent.parent
    candidates += [package / "proto", package.parent.parent / "proto", Path.cwd() / "proto"]
    for candidate in candidates:
        if (candidate / PROTO).is_file():
            return candidate
    raise StubGenerationError(f"{PROTO} not found (looked in {', '.join(str(c) for c in candidates)})")


def cache_dir() -> Path:
    env = os.environ.get("OMNIRELAY_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "omnirelay"


def _protoc() -> str:
    protoc = shutil.which("protoc")
    if protoc is None:
        raise StubGenerationError("protoc not found (Debian package protobuf-compiler)")
    if not os.access(GRPC_PYTHON_PLUGIN, os.X_OK):
        raise StubGenerationError(f"{GRPC_PYTHON_PLUGIN} not found (Debian package protobuf-compiler-grpc)")
    return protoc


def generate_stubs(out_root: Optional[Path] = None) -> Path:
    """Generates (once per proto content and compiler version) the stubs and
    returns the folder to put on ``sys.path``. Safe across concurrent processes:
    each generates into a private temporary folder renamed into place."""
    root = proto_root()
    protoc = _protoc()
    version = subprocess.run([protoc, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    digest = hashlib.sha256(((root / PROTO).read_bytes() + version.encode())).hexdigest()[:16]
    target = (out_root or cache_dir()) / f"my_service-{digest}"
    if (target / "my_service" / "my_service_pb2_grpc.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        result = subprocess.run(
            [protoc, f"--proto_path={root}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
             f"--plugin=protoc-gen-grpc_python={GRPC_PYTHON_PLUGIN}", str(root / PROTO)],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise StubGenerationError(f"protoc failed ({result.returncode}): {result.stderr.strip()}")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "my_service" / "my_service_pb2_grpc.py").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def stubs() -> Tuple[ModuleType, ModuleType]:
    """``(my_service_pb2, my_service_pb2_grpc)``, generated on first use."""
    global _stubs
    with _stubs_lock:
        if _stubs is None:
            if "my_service.my_service_pb2" in sys.modules and "my_service.my_service_pb2_grpc" in sys.modules:
                _stubs = (sys.modules["my_service.my_service_pb2"], sys.modules["my_service.my_service_pb2_grpc"])
            else:
                folder = str(generate_stubs())
                sys.path.insert(0, folder)
                try:
                    _stubs = (importlib.import_module("my_service.my_service_pb2"),
                              importlib.import_module("my_service.my_service_pb2_grpc"))
                finally:
                    sys.path.remove(folder)
        return _stubs


def messages() -> ModuleType:
    """The generated message module (``LoginRequest``, ``EchoResponse``, ...)."""
    return stubs()[0]


# -- errors -----------------------------------------------------------------------------------

def _from_rpc_error(error: Any) -> errors.OmniRelayError:
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    value = code.value[0] if code is not None else 2
    return errors.from_status(value, details or "")


def _wrap(fn: Callable[[], Any]) -> Any:
    import grpc

    try:
        return fn()
    except grpc.RpcError as error:
        raise _from_rpc_error(error) from None


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Tuple[str, Any]:
    """``("OK", reply)`` or ``(code name, message)`` — never raises a call error."""
    try:
        return "OK", fn(*args, **kwargs)
    except errors.OmniRelayError as error:
        return error.name, error.message


def error_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Tuple[str, str]:
    """The ``(code name, message)`` a call fails with; AssertionError if it succeeds."""
    code, value = outcome(fn, *args, **kwargs)
    if code == "OK":
        raise AssertionError(f"{getattr(fn, '__name__', fn)} succeeded, expected an error: {value}")
    return code, value


# -- the client ------------------------------------------------------------------------------------

def _metadata(token: Optional[str], session_id: Optional[str],
              extra: Optional[Mapping[str, str]]) -> List[Tuple[str, str]]:
    md: List[Tuple[str, str]] = []
    if token is not None:
        md.append(("authorization", token))
    if session_id is not None:
        md.append(("session-id", session_id))
    md.extend((k, v) for k, v in (extra or {}).items())
    return md


class Subscription:
    """A running ``MyServiceSubscribe`` call: iterate for ``EchoResponse``s; a
    failed stream raises the typed error; :meth:`cancel` ends it client-side."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.received: List[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        message = _wrap(lambda: next(self._call))
        self.received.append(message)
        return message

    def take(self, n: int) -> List[Any]:
        """The next ``n`` messages (fewer if the stream ends OK first)."""
        out = []
        for message in self:
            out.append(message)
            if len(out) >= n:
                break
        return out

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class Client:
    """One gRPC channel to a MyServiceAPI endpoint (usually the gateway)."""

    def __init__(self, address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, credentials: Any = None) -> None:
        import grpc

        pb2, pb2_grpc = stubs()
        self.address = address
        self.timeout_s = timeout_s
        self.pb = pb2
        # `credentials` (grpc.ChannelCredentials): TLS, e.g. the harness
        # certificate of an mTLS cluster; plaintext without.
        self.channel = (grpc.secure_channel(address, credentials) if credentials is not None
                        else grpc.insecure_channel(address))
        self.stub = pb2_grpc.MyServiceAPIStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _timeout(self, timeout_s: Optional[float]) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def login(self, username: str, password: str, session_id: str, *, timeout_s: Optional[float] = None) -> Any:
        """``LoginResponse{token, expires_at, role}``."""
        request = self.pb.LoginRequest(username=username, password=password, session_id=session_id)
        return _wrap(lambda: self.stub.Login(request, timeout=self._timeout(timeout_s)))

    def echo(self, value: str, token: Optional[str] = None, session_id: Optional[str] = None, *,
             metadata: Optional[Mapping[str, str]] = None, timeout_s: Optional[float] = None) -> Any:
        """``EchoResponse``; ``None`` token/session_id leave the header out."""
        request = self.pb.EchoRequest(value=value)
        md = _metadata(token, session_id, metadata)
        return _wrap(lambda: self.stub.MyServiceEcho(request, metadata=md, timeout=self._timeout(timeout_s)))

    def subscribe(self, value: str, token: Optional[str] = None, session_id: Optional[str] = None, *,
                  metadata: Optional[Mapping[str, str]] = None, timeout_s: Optional[float] = None) -> Subscription:
        """A :class:`Subscription`; the deadline (default: the client's timeout
        x 6) bounds the whole stream so no test can hang on it."""
        request = self.pb.EchoRequest(value=value)
        md = _metadata(token, session_id, metadata)
        timeout = self.timeout_s * 6 if timeout_s is None else timeout_s
        return Subscription(self.stub.MyServiceSubscribe(request, metadata=md, timeout=timeout))

    def shutdown(self, token: Optional[str] = None, session_id: Optional[str] = None, *,
                 metadata: Optional[Mapping[str, str]] = None, timeout_s: Optional[float] = None) -> Any:
        """``ShutdownResponse``; the instance exits after answering."""
        request = self.pb.ShutdownRequest()
        md = _metadata(token, session_id, metadata)
        return _wrap(lambda: self.stub.MyServiceShutdown(request, metadata=md, timeout=self._timeout(timeout_s)))

    def session(self, session_id: Optional[str] = None, username: str = DEFAULT_USERNAME,
                password: str = DEFAULT_PASSWORD) -> "Session":
        """Logs in and returns a :class:`Session` carrying the token and id."""
        session_id = session_id or new_session_id()
        reply = self.login(username, password, session_id)
        return Session(self, session_id, reply.token, reply)


class Session:
    """A logged-in session: every call carries its token and ``session-id``."""

    def __init__(self, client: Client, session_id: str, token: str, login_reply: Any = None) -> None:
        self.client = client
        self.session_id = session_id
        self.token = token
        self.login_reply = login_reply

    def echo(self, value: str, **kwargs: Any) -> Any:
        return self.client.echo(value, self.token, self.session_id, **kwargs)

    def subscribe(self, value: str, **kwargs: Any) -> Subscription:
        return self.client.subscribe(value, self.token, self.session_id, **kwargs)

    def shutdown(self, **kwargs: Any) -> Any:
        return self.client.shutdown(self.token, self.session_id, **kwargs)

    def __repr__(self) -> str:
        return f"Session({self.session_id!r})"


def new_session_id(prefix: str = "session") -> str:
    """Unique per call, like the seed's ``integration-test-session-client1-{timestamp}``."""
    return f"{prefix}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"


# -- tokens for negative tests ---------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(secret: str, *, session_id: str, sub: str = DEFAULT_USERNAME, role: str = "user",
               expires_in_s: float = 3600, alg: str = "HS256", claims: Optional[Dict[str, Any]] = None) -> str:
    """An HS256 JWT like the auth service's (``sub``, ``session_id``, ``role``,
    ``iat``, ``exp``), for tests: a negative ``expires_in_s`` gives an expired
    token, another ``secret`` a wrongly signed one, ``alg="none"`` an unsigned
    one. ``secret`` is the text of the stack's secret file (the HMAC key is the
    file's trimmed text, as in ``auth::LoadOrCreateSecret``)."""
    now = int(time.time())
    body = {"sub": sub, "session_id": session_id, "role": role, "iat": now, "exp": int(now + expires_in_s)}
    if claims is not None:
        body = dict(claims)
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    if alg == "none":
        return f"{header}.{payload}."
    signature = hmac.new(secret.strip().encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


__all__ = ["Client", "Session", "Subscription", "StubGenerationError", "error_of", "generate_stubs",
           "make_token", "messages", "new_session_id", "outcome", "proto_root", "stubs"]
