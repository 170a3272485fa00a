"""The worklist page a radiologist keeps open, served by the viewer proxy (same origin, same login).

``GET /worklist`` is a static page (``data/worklist.html``) that reads ``/worklist.json`` every
10 s and lists the studies by triage level, then by waiting time, coloured by level, with the
reasons, who acknowledged them and a link that opens the study in OHIF on the same origin.
``GET /worklist.json`` asks the sidecar's ``GET /v1/worklist`` with the **reader** token, which
stays on the server: the browser holds no token (it passes the viewer's login, when one is set).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Optional

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

logger = logging.getLogger(__name__)

LEVELS = ("urgent", "priority", "routine", "not-analyzed", "pending")


def worklist_page() -> str:
    """The page's HTML (shipped in the package)."""
    return resources.files("neuroradix").joinpath("data/worklist.html").read_text(encoding="utf-8")


def worklist_routes(
    sidecar_url: Optional[str], reader_token: Optional[str], transport: Optional[httpx.AsyncBaseTransport] = None
) -> list[Route]:
    """``/worklist`` and ``/worklist.json`` for the viewer proxy.

    Parameters
    ----------
    sidecar_url
        The sidecar's base URL (``SIDECAR_URL`` in ``var/node.env``); None: the page says the
        worklist is not configured.
    reader_token
        The sidecar's reader token (``SIDECAR_READER_TOKEN``): GET only.
    transport
        httpx transport to the sidecar (tests may pass their own).
    """
    page = worklist_page()

    async def html(_request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def data(request: Request) -> Response:
        if not sidecar_url or not reader_token:
            return PlainTextResponse(
                "the worklist needs SIDECAR_URL and SIDECAR_READER_TOKEN (var/node.env, written by make up)",
                status_code=503,
            )
        level = request.query_params.get("level")
        if level is not None and level not in LEVELS:
            return PlainTextResponse(f"level must be one of {', '.join(LEVELS)}", status_code=400)
        params = {"level": level} if level else None
        try:
            async with httpx.AsyncClient(base_url=sidecar_url, timeout=10.0, transport=transport) as client:
                answer = await client.get(
                    "/v1/worklist", params=params, headers={"Authorization": f"Bearer {reader_token}"}
                )
        except httpx.HTTPError as exc:
            logger.warning("the sidecar did not answer the worklist: %r", exc)
            return PlainTextResponse(f"the sidecar is unreachable: {type(exc).__name__}", status_code=502)
        if answer.status_code != 200:
            return PlainTextResponse(f"the sidecar answered HTTP {answer.status_code}", status_code=502)
        return JSONResponse(answer.json(), headers={"Cache-Control": "no-store"})

    return [Route("/worklist", html, methods=["GET", "HEAD"]), Route("/worklist.json", data, methods=["GET"])]
