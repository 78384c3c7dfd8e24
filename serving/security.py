"""Who may call what: bearer tokens per scope (constant-time), JSON-only bodies, and the bind-address rule."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from litestar.types import ASGIApp, Receive, Send
from litestar.types import Scope as ASGIScope
from pydantic import SecretStr

from contracts.auth import TOKEN_ENV, RouterTokens
from serving.errors import Forbidden, Unauthenticated, UnsupportedMediaType

Scope = Literal["admin", "label", "read", "client"]
"""What a route needs: `admin` (writes), `label` (labels), `read` (log and outcomes), `client` (predictions)."""

GRANTS: Mapping[Scope, frozenset[Scope]] = {
    "admin": frozenset({"admin", "label", "read", "client"}),
    "label": frozenset({"label", "client"}),
    "read": frozenset({"read"}),
    "client": frozenset({"client"}),
}
"""What each token grants: the admin token everything, the label token labels and predictions."""

_WHAT = {
    "admin": "writes (config, plan, end, reload)",
    "label": "labels (/feedback and inline labels)",
    "read": "the inference log and the outcomes",
    "client": "predictions",
}


class Authorizer:
    """Checks the bearer token of a request against the configured ones, in constant time."""

    def __init__(self, tokens: RouterTokens) -> None:
        """Take the tokens from settings.

        Args:
            tokens: The router's settings (or any `RouterTokens`).
        """
        configured: dict[Scope, SecretStr | str | None] = {
            "admin": tokens.router_admin_token,
            "label": tokens.router_label_token,
            "read": tokens.router_read_token,
            "client": tokens.router_client_token,
        }
        self._tokens: dict[Scope, bytes] = {}
        for scope, value in configured.items():
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            if plain:
                self._tokens[scope] = plain.encode()

    @property
    def enabled(self) -> bool:
        """Whether tokens are enforced at all: without an admin token the router runs open (loopback only)."""
        return "admin" in self._tokens

    def required(self, scope: Scope) -> bool:
        """Whether a request needs a token for `scope` (predictions only when a client token is set)."""
        if not self.enabled:
            return False
        return scope != "client" or "client" in self._tokens

    def granted(self, authorization: str | None) -> frozenset[Scope] | None:
        """The scopes a request's `Authorization` header grants: None without a bearer token.

        Every configured token is compared, whichever matches, so the time taken does not tell which.
        """
        if not authorization:
            return None
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            return None
        presented = token.strip().encode()
        scopes: frozenset[Scope] = frozenset()
        for scope, expected in self._tokens.items():
            if hmac.compare_digest(presented, expected):
                scopes |= GRANTS[scope]
        return scopes

    def check(self, scope: Scope, authorization: str | None) -> None:
        """Let the request through or say why not.

        Raises:
            Unauthenticated: A token is needed and none was sent (401).
            Forbidden: The token sent does not grant `scope` (403).
        """
        if not self.required(scope):
            return
        granted = self.granted(authorization)
        accepted = f"the {scope} token" + ("" if scope == "admin" else " or the admin token")
        if granted is None:
            raise Unauthenticated(
                f"this needs a bearer token for {_WHAT[scope]}: send 'Authorization: Bearer <token>' with "
                f"{accepted} ({TOKEN_ENV[scope]})",
                extra={"scope": scope},
                headers={"WWW-Authenticate": 'Bearer realm="driftloop-router"'},
            )
        if scope not in granted:
            raise Forbidden(
                f"the token sent does not grant {_WHAT[scope]}: use {accepted} ({TOKEN_ENV[scope]})",
                extra={"scope": scope},
                headers={"WWW-Authenticate": 'Bearer realm="driftloop-router", error="insufficient_scope"'},
            )


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON (`application/json`, with parameters, or `application/<x>+json`)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _header(scope: Any, name: bytes) -> str | None:
    """The first value of a header in an ASGI scope (names are lowercase in ASGI), decoded as Litestar does."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def check_access(authorizer: Authorizer, scope: Any) -> None:
    """What every route requires of a request: the token its `opt["scope"]` needs, and JSON bodies only.

    Args:
        authorizer: The configured tokens.
        scope: The request's ASGI scope, after routing (its `route_handler` says what the route needs).

    Raises:
        Unauthenticated: 401.
        Forbidden: 403.
        UnsupportedMediaType: A body that is not JSON (a browser's `text/plain` or form POST), 415.
    """
    opt = getattr(scope.get("route_handler"), "opt", None) or {}
    needed: Scope | None = opt.get("scope")
    if needed is not None:
        authorizer.check(needed, _header(scope, b"authorization"))
    if scope.get("method") in ("POST", "PUT", "PATCH"):
        content_type = _header(scope, b"content-type")
        has_body = opt.get("json_body", False) or _header(scope, b"content-length") not in (None, "", "0")
        if has_body and not is_json(content_type):
            raise UnsupportedMediaType(
                f"the body must be JSON: send 'Content-Type: application/json' (got {content_type or 'none'!r})",
                extra={"content_type": (content_type or "")[:100]},
            )


class AccessMiddleware:
    """Pure ASGI middleware that applies `check_access` to every routed HTTP request, before its body is read.

    A middleware rather than a Litestar guard: Litestar copies the route handler for every guard call, which cost
    more than the checks themselves on the request path. Its errors are answered by the app's exception handlers
    like any other (401/403 with `WWW-Authenticate`, 415).
    """

    def __init__(self, app: ASGIApp, authorizer: Authorizer) -> None:
        """Wrap `app`."""
        self.app = app
        self.authorizer = authorizer

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Check the request, then pass it on."""
        if scope["type"] == "http":
            check_access(self.authorizer, scope)
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the router reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: RouterTokens) -> None:
    """Refuse to expose an open router: a non-loopback address needs an admin token.

    Raises:
        SystemExit: With the reason, when the address is not loopback and no admin token is set.
    """
    if not is_loopback(host) and not Authorizer(tokens).enabled:
        raise SystemExit(
            f"refusing to bind {host}: the router would accept writes from anyone who can reach it. Set "
            f"{TOKEN_ENV['admin']} (and the label/read tokens), or bind 127.0.0.1."
        )
