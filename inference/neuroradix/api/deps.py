"""What the routes of the API share: the node's settings, ledger and PACS client, and the bearer check.

:func:`neuroradix.api.app.create_app` puts them on ``app.state``; routes get them as FastAPI
dependencies, so a route module needs neither the app nor globals.

Tokens and scopes (least privilege, docs/security.md):

========  =============================  ==========================================
role      setting                        scopes
========  =============================  ==========================================
admin     ``SIDECAR_TOKEN``              every route
reader    ``SIDECAR_READER_TOKEN``       ``read``: GET/HEAD on ``/v1/...`` and ``/metrics``
plugin    ``SIDECAR_PLUGIN_TOKEN``       ``queue``: ``POST /v1/jobs`` only
========  =============================  ==========================================

:class:`BearerAuthMiddleware` checks every request to ``/v1/...`` and ``/metrics`` before the
app reads its body: no valid token is 401, a valid token beyond its scope 403. The
:func:`require_scope` dependency says the same on a route (``Depends(require_scope(READ))``),
for routes outside ``/v1`` and as a second check inside.
"""

from __future__ import annotations

import json
import secrets
from typing import Callable, Optional

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from neuroradix.config import Settings
from neuroradix.jobs.ledger import Ledger
from neuroradix.pacs.dicomweb import PacsClient

_BEARER = HTTPBearer(auto_error=False)

ADMIN = "admin"
READ = "read"
QUEUE = "queue"
SCOPES: dict[str, frozenset[str]] = {
    "admin": frozenset({ADMIN, READ, QUEUE}),
    "reader": frozenset({READ}),
    "plugin": frozenset({QUEUE}),
}
"""What each token's holder may do."""

PROTECTED_PREFIXES = ("/v1/", "/metrics")
_READ_METHODS = ("GET", "HEAD")


def get_settings(request: Request) -> Settings:
    """The node's settings."""
    return request.app.state.settings


def get_ledger(request: Request) -> Ledger:
    """The job ledger."""
    return request.app.state.ledger


def get_pacs(request: Request) -> PacsClient:
    """The PACS client."""
    return request.app.state.pacs


def protected(path: str) -> bool:
    """Whether ``path`` needs a bearer token (``/v1/...`` and ``/metrics``)."""
    return path == "/v1" or path == "/metrics" or path.startswith(PROTECTED_PREFIXES)


def required_scope(method: str, path: str) -> str:
    """The scope a request needs: ``queue`` for ``POST /v1/jobs``, ``read`` for GET/HEAD, else ``admin``."""
    if method == "POST" and path.rstrip("/") == "/v1/jobs":
        return QUEUE
    if method in _READ_METHODS:
        return READ
    return ADMIN


def token_role(settings: Settings, presented: Optional[str]) -> Optional[str]:
    """The role (``admin``, ``reader``, ``plugin``) whose token was presented; None for none or a wrong one.

    Every configured token is compared in constant time, all of them on every call.
    """
    if not presented:
        return None
    tokens = {
        "admin": settings.sidecar_token,
        "reader": settings.sidecar_reader_token,
        "plugin": settings.sidecar_plugin_token,
    }
    given = presented.encode()
    found = None
    for role, secret in tokens.items():
        if secret is not None and secrets.compare_digest(given, secret.get_secret_value().encode()):
            found = role
    return found


def bearer_token(authorization: str) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header value, None for any other."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check(settings: Settings, authorization: Optional[str], needed: str) -> Optional[tuple[int, str]]:
    """None when ``authorization`` grants ``needed``; else ``(401 or 403, reason)``."""
    role = token_role(settings, bearer_token(authorization or ""))
    if role is None:
        return status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token"
    if needed not in SCOPES[role]:
        return status.HTTP_403_FORBIDDEN, f"the {role} token may not do this (needs scope {needed!r})"
    return None


def _raise_for(refusal: Optional[tuple[int, str]]) -> None:
    if refusal is None:
        return
    code, reason = refusal
    headers = {"WWW-Authenticate": "Bearer"} if code == status.HTTP_401_UNAUTHORIZED else None
    raise HTTPException(code, reason, headers=headers)


def require_scope(needed: str) -> Callable[..., None]:
    """A FastAPI dependency: the request's bearer token must grant ``needed`` (401 / 403 otherwise).

    Example: ``@router.get("/metrics", dependencies=[Depends(require_scope(READ))])``.
    """
    if needed not in (ADMIN, READ, QUEUE):
        raise ValueError(f"needed must be one of {ADMIN!r}, {READ!r}, {QUEUE!r}, got {needed!r}")

    def dependency(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(_BEARER)) -> None:
        header = f"Bearer {credentials.credentials}" if credentials is not None else None
        _raise_for(check(request.app.state.settings, header, needed))

    return dependency


def authorized(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(_BEARER)) -> None:
    """The bearer token grants what the request's method and path need (:func:`required_scope`).

    Raises
    ------
    HTTPException
        401 when the token is missing or wrong, 403 when it is valid but beyond its scope.
    """
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    needed = required_scope(request.method, request.url.path)
    _raise_for(check(request.app.state.settings, header, needed))


class BearerAuthMiddleware:
    """Pure ASGI middleware: authenticate ``/v1/...`` and ``/metrics`` before anything reads the body.

    A refused request is answered at once (401 or 403, JSON ``detail``) without calling
    ``receive``, so a client without a valid token cannot make the API parse or spool a body.

    Parameters
    ----------
    app:
        The application behind it.
    settings:
        Where the tokens are.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorized (or unprotected) request on; answer 401/403 to any other, body unread."""
        if scope["type"] != "http" or not protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = None
        for key, value in scope.get("headers", []):
            if key.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        refusal = check(self.settings, authorization, required_scope(scope["method"], scope["path"]))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, reason = refusal
        body = json.dumps({"detail": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if code == status.HTTP_401_UNAUTHORIZED:
            headers.append((b"www-authenticate", b"Bearer"))
        headers.append((b"connection", b"close"))  # the unread body must not be taken for the next request
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
