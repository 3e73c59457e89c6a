"""One exception hierarchy for the gateway, and one table mapping it to gRPC codes.

Every error a client can cause or observe is a :class:`ServingError` subclass carrying an
``http.HTTPStatus``; protocol adapters translate it (REST: status + ``{"error": msg}``,
gRPC: :data:`GRPC_STATUS`) and never invent statuses of their own.
"""

from __future__ import annotations

from http import HTTPStatus


class ServingError(Exception):
    """Base class: ``status`` is the HTTP status the client receives."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidRequest(ServingError):
    """Malformed body, wrong shape, wrong datatype, bad parameter."""

    status = HTTPStatus.BAD_REQUEST


class ModelNotFound(ServingError):
    """Unknown model name or version."""

    status = HTTPStatus.NOT_FOUND


class PayloadTooLarge(ServingError):
    """Request body over the configured ``max_request_bytes``."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ModelNotReady(ServingError):
    """The model exists but no worker can serve it right now."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class Overloaded(ServingError):
    """Admission control rejected the request; ``retry_after_s`` says when to retry."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class QuotaExceeded(ServingError):
    """A tenant is over its quota."""

    status = HTTPStatus.TOO_MANY_REQUESTS


class DeadlineExceeded(ServingError):
    """The request's deadline passed (or became unreachable) before it could be answered."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class BackendError(ServingError):
    """A model worker or backend server failed while running the request."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class Unimplemented(ServingError):
    """A protocol operation this gateway does not serve (e.g. shared-memory RPCs)."""

    status = HTTPStatus.NOT_IMPLEMENTED


class ConfigError(ValueError):
    """Invalid gateway or model configuration; raised at start, never per request."""


# gRPC status code *names* (grpc.StatusCode attribute names), so this module needs no grpc import.
GRPC_STATUS: dict[HTTPStatus, str] = {
    HTTPStatus.BAD_REQUEST: "INVALID_ARGUMENT",
    HTTPStatus.NOT_FOUND: "NOT_FOUND",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "RESOURCE_EXHAUSTED",
    HTTPStatus.TOO_MANY_REQUESTS: "RESOURCE_EXHAUSTED",
    HTTPStatus.SERVICE_UNAVAILABLE: "UNAVAILABLE",
    HTTPStatus.GATEWAY_TIMEOUT: "DEADLINE_EXCEEDED",
    HTTPStatus.INTERNAL_SERVER_ERROR: "INTERNAL",
    HTTPStatus.NOT_IMPLEMENTED: "UNIMPLEMENTED",
}


def grpc_status_name(error: ServingError) -> str:
    """The gRPC status code name for ``error`` (``INTERNAL`` for anything unmapped)."""
    return GRPC_STATUS.get(error.status, "INTERNAL")
