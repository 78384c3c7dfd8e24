"""Domain errors of the router: one base class, each mapped to a clear HTTP status and `ErrorBody`."""

from __future__ import annotations

import re
from typing import ClassVar


class RouterError(Exception):
    """Base of every error the router reports to its clients.

    Attributes:
        status_code: HTTP status the error maps to.
        detail: What went wrong, in words a client can act on.
        extra: Structured details (e.g. the offending column names).
    """

    status_code: ClassVar[int] = 400

    def __init__(
        self,
        detail: str,
        *,
        extra: dict[str, object] | list[object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}


class InvalidCursor(RouterError):
    """A page cursor (`before`) that no page handed out."""


class Unauthenticated(RouterError):
    """The endpoint needs a token and the request carries none."""

    status_code = 401


class Forbidden(RouterError):
    """The request carries a token that does not grant this endpoint."""

    status_code = 403


class UnsupportedMediaType(RouterError):
    """A body that is not `application/json` (a browser form or `text/plain` POST)."""

    status_code = 415


class InvalidLabel(RouterError):
    """A label that is not among the classes of the model that made the prediction."""

    status_code = 422


class IdempotencyConflict(RouterError):
    """An idempotency key reused for a different request."""

    status_code = 409


class StoreUnavailable(RouterError):
    """The store did not take a read or write in time (locked, read-only, unreachable): retry later."""

    status_code = 503


class PayloadTooLarge(RouterError):
    """More rows than one call may carry."""

    status_code = 413


class Overloaded(RouterError):
    """The prediction queue is full (or the router is starting or stopping): retry after `Retry-After`."""

    status_code = 503


class InvalidFeatures(RouterError):
    """The features do not match the serving model's signature."""

    status_code = 422


class UnknownRequest(RouterError):
    """Feedback names a request_id the inference log does not hold."""

    status_code = 404


class AlreadyLabelled(RouterError):
    """Feedback for a request that already has a label (labels are write-once)."""

    status_code = 409


class NoModelLoaded(RouterError):
    """No champion could be loaded, so the router cannot predict."""

    status_code = 503


class ModelSourceError(RouterError):
    """The model registry could not be read or a version could not be loaded."""

    status_code = 503


class PredictionFailed(RouterError):
    """The served model raised while predicting: our fault, recorded as an error of its arm."""

    status_code = 500


class InvalidPlan(RouterError):
    """An experiment plan that passes the schema but cannot describe an experiment."""

    status_code = 422


class ExperimentConflict(RouterError):
    """A change to an experiment that its current state does not allow (started, wrong challenger, ended)."""

    status_code = 409


_URI = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)]*")
_USERINFO = re.compile(r"[^\s/@:'\"]+:[^\s/@'\"]+@")
_HOST = re.compile(r"\b(host|port|url)(=|: )('[^']*'|\"[^\"]*\"|[^\s,)]+)")


def redact(text: str) -> str:
    """Text safe for a client: URIs (which may carry hosts, paths or credentials) become `<uri>`, and
    `host=...`, `port=...`, `url: ...` as urllib3 quotes them become `host=<redacted>`."""
    return _HOST.sub(r"\1\2<redacted>", _URI.sub("<uri>", _USERINFO.sub("", text)))
