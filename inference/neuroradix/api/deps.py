"""What the routes of the API share: the node's settings, ledger and PACS client, and the bearer check.

:func:`neuroradix.api.app.create_app` puts them on ``app.state``; routes get them as FastAPI
dependencies, so a route module needs neither the app nor globals.
"""

from __future__ import annotations

import secrets
from typing import Optional

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from neuroradix.config import Settings
from neuroradix.jobs.ledger import Ledger
from neuroradix.pacs.dicomweb import PacsClient

_BEARER = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    """The node's settings."""
    return request.app.state.settings


def get_ledger(request: Request) -> Ledger:
    """The job ledger."""
    return request.app.state.ledger


def get_pacs(request: Request) -> PacsClient:
    """The PACS client."""
    return request.app.state.pacs


def authorized(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(_BEARER)) -> None:
    """Require ``Authorization: Bearer <SIDECAR_TOKEN>`` (compared in constant time).

    Raises
    ------
    HTTPException
        401 when the token is missing or wrong.
    """
    token = request.app.state.settings.sidecar_token.get_secret_value().encode()
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
