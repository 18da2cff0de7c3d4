"""Typed exceptions for every OmniRelay status code.

The C++ core reports failures as a status code (gRPC's codes), a message and
an optional error-code string; the bindings raise them as the subclasses below
through :func:`from_status`. The HTTP mapping is the one in docs/errors.md.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "OmniRelayError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "from_status",
    "exception_for",
]


class OmniRelayError(Exception):
    """Base class: ``code`` (int, gRPC numbering), ``message``, ``error_code``."""

    code: int = 2  # UNKNOWN
    name: str = "UNKNOWN"
    http_status: int = 500

    def __init__(self, message: str = "", error_code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    @property
    def status_code(self):  # -> omnirelay.StatusCode
        from omnirelay._core import StatusCode

        return StatusCode(self.code)

    def __str__(self) -> str:
        suffix = f" [{self.error_code}]" if self.error_code else ""
        return f"{self.name}: {self.message}{suffix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, error_code={self.error_code!r})"


_BY_CODE: Dict[int, Type[OmniRelayError]] = {}


def _define(class_name: str, code: int, name: str, http_status: int) -> Type[OmniRelayError]:
    cls = type(class_name, (OmniRelayError,), {"code": code, "name": name, "http_status": http_status})
    cls.__module__ = __name__
    cls.__doc__ = f"Status {name} ({code}); HTTP {http_status}."
    _BY_CODE[code] = cls
    return cls


Cancelled = _define("Cancelled", 1, "CANCELLED", 499)
Unknown = _define("Unknown", 2, "UNKNOWN", 500)
InvalidArgument = _define("InvalidArgument", 3, "INVALID_ARGUMENT", 400)
DeadlineExceeded = _define("DeadlineExceeded", 4, "DEADLINE_EXCEEDED", 504)
NotFound = _define("NotFound", 5, "NOT_FOUND", 404)
AlreadyExists = _define("AlreadyExists", 6, "ALREADY_EXISTS", 409)
PermissionDenied = _define("PermissionDenied", 7, "PERMISSION_DENIED", 403)
ResourceExhausted = _define("ResourceExhausted", 8, "RESOURCE_EXHAUSTED", 429)
FailedPrecondition = _define("FailedPrecondition", 9, "FAILED_PRECONDITION", 412)
Aborted = _define("Aborted", 10, "ABORTED", 409)
OutOfRange = _define("OutOfRange", 11, "OUT_OF_RANGE", 400)
Unimplemented = _define("Unimplemented", 12, "UNIMPLEMENTED", 501)
Internal = _define("Internal", 13, "INTERNAL", 500)
Unavailable = _define("Unavailable", 14, "UNAVAILABLE", 503)
DataLoss = _define("DataLoss", 15, "DATA_LOSS", 500)
Unauthenticated = _define("Unauthenticated", 16, "UNAUTHENTICATED", 401)


def exception_for(code: int) -> Type[OmniRelayError]:
    """The exception class for a status code (int or ``omnirelay.StatusCode``)."""
    code = int(code)
    if code == 0:
        raise ValueError("status OK is not an error")
    return _BY_CODE.get(code, Unknown)


def from_status(code: int, message: str, error_code: Optional[str] = None) -> OmniRelayError:
    """Builds the typed exception for a failed status (used by the bindings)."""
    return exception_for(code)(message, error_code)
