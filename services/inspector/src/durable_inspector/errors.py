"""HTTP errors of the inspector, and the one place that maps durable_core errors to them.

Every error response of the JSON API has the body ``{"error": <code>, "detail": <message>}``:

=====  =====================  ===========================================================
400    ``invalid_input``      bad JSON, bad filter value, unknown status, InvalidInputError
401    ``unauthorized``       the inspector has a token and the request did not present it
403    ``forbidden``          a cross-site request for an action
404    ``not_found``          unknown execution, awakeable, schedule or route; NotFoundError
409    ``conflict``           the engine refused the action in the execution's current state
501    ``not_implemented``    the connected durable_core Client has no method for the action
503    ``unavailable``        NATS cannot be reached, or the index has no snapshot yet
504    ``timeout``            the engine did not answer in time
500    ``internal``           anything else (logged with its traceback)
=====  =====================  ===========================================================
"""

from __future__ import annotations

import logging

from durable_core import (
    ConfigError,
    DurableError,
    InvalidInputError,
    InvocationTimeoutError,
    NatsUnavailableError,
    NotFoundError,
)

__all__ = ["ApiError", "from_exception"]

log = logging.getLogger("durable_inspector")


class ApiError(Exception):
    """An error answer: HTTP status, a short machine-readable code and a human message."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> dict[str, str]:
        """The error as the JSON body of its response."""
        return {"error": self.error, "detail": self.detail}


def from_exception(exc: BaseException) -> ApiError:
    """The API error for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidInputError):
        return ApiError(400, "invalid_input", str(exc))
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, NatsUnavailableError):
        return ApiError(503, "unavailable", str(exc))
    if isinstance(exc, InvocationTimeoutError):
        return ApiError(504, "timeout", str(exc))
    if isinstance(exc, ConfigError):
        log.error("configuration error while serving a request: %s", exc)
        return ApiError(500, "internal", str(exc))
    if isinstance(exc, DurableError):
        # Terminal and lifecycle refusals: the request was understood, the state forbids it.
        return ApiError(409, "conflict", str(exc))
    log.error("unexpected error while serving a request", exc_info=exc)
    return ApiError(500, "internal", f"{type(exc).__name__}: {exc}")


def not_implemented(method: str, what: str) -> ApiError:
    return ApiError(
        501,
        "not_implemented",
        f"{what} is not available yet: the durable_core Client has no {method}() method "
        "(upgrade durable-core once it ships)",
    )
