"""Errors: one small hierarchy, mapped to JSON bodies `{"error", "message", ...}` by one middleware."""

from __future__ import annotations

from typing import Any


class SettingsError(Exception):
    """An invalid configuration value; start-up prints the message as one line and exits 2."""


class SandboxUnavailable(Exception):
    """The sandbox cannot work on this host; start-up prints the message as one line and exits 2."""


class ConveyorError(Exception):
    """An error a client sees: HTTP status, short `error` title, human `message`, optional extra fields."""

    status = 500
    error = "Internal server error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, **self.extra}


class BadRequest(ConveyorError):
    status = 400
    error = "Bad request"


class Unauthorized(ConveyorError):
    status = 401
    error = "Unauthorized"


class Forbidden(ConveyorError):
    status = 403
    error = "Forbidden"


class NotFound(ConveyorError):
    status = 404
    error = "Not found"


class MethodNotAllowed(ConveyorError):
    status = 405
    error = "Method not allowed"


class RequestTimeout(ConveyorError):
    """The request did not arrive in time; the connection is closed after the answer."""

    status = 408
    error = "Request timeout"


class Conflict(ConveyorError):
    status = 409
    error = "Conflict"


class PayloadTooLarge(ConveyorError):
    status = 413
    error = "Payload too large"


class MisdirectedRequest(ConveyorError):
    status = 421
    error = "Misdirected request"


class UnsupportedMediaType(ConveyorError):
    status = 415
    error = "Unsupported media type"


class TooManyRequests(ConveyorError):
    status = 429
    error = "Too many requests"


class QueueFull(ConveyorError):
    status = 503
    error = "Queue full"


class ShuttingDown(ConveyorError):
    status = 503
    error = "Shutting down"


class BackendUnavailable(ConveyorError):
    """The shared store (Redis) cannot be reached: nothing was accepted, try again."""

    status = 503
    error = "Service unavailable"


class InputBacklog(ConveyorError):
    """More live stdin is waiting for a program than MAX_STDIN_BYTES: the writer must wait until it reads."""

    status = 429
    error = "Input backlog full"
