"""One HTTP POST of a notification (FHIR and webhook), classified into a :class:`DeliveryResult`.

The classes are the same for both channels: 2xx delivered; 408 and 429 (the receiver asks to come
back later), 5xx, timeouts and connection errors are retried; any other answer (4xx, and 1xx/3xx,
which the client does not follow for a POST) is permanent: the receiver rejects this request and
will reject it again. Redirects are not followed: a moved endpoint is a configuration change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from neuroradix.notify.result import DeliveryResult

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429})


def check_http_url(url: str) -> str:
    """Return ``url`` if it is an absolute ``http://`` or ``https://`` URL with a host, else raise ValueError."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be http://host[:port]/path or https://..., not {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"url has a bad port: {url!r}") from exc
    if any(c.isspace() for c in url):
        raise ValueError("url must not contain white space")
    return url


def classify_status(status: int) -> DeliveryResult:
    """The result of an HTTP answer with ``status`` (see the module docstring).

    Parameters
    ----------
    status
        The HTTP status code.
    """
    detail = f"HTTP {status}"
    if 200 <= status < 300:
        return DeliveryResult.delivered(detail)
    if status >= 500 or status in RETRY_STATUSES:
        return DeliveryResult.retry(detail)
    return DeliveryResult.dead(detail)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the chain is short (httpx -> httpcore -> OSError); bound it anyway
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def post(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> DeliveryResult:
    """POST ``body`` to ``url`` once and classify the outcome; never raises for network trouble.

    Parameters
    ----------
    url
        An ``http(s)://`` URL.
    body
        The raw request body (sent as is; a webhook's signature covers these bytes).
    headers
        Request headers (Content-Type included).
    timeout
        Seconds for connecting, and for each read and write.
    """
    try:
        check_http_url(url)
    except ValueError as exc:
        return DeliveryResult.dead(f"bad URL: {exc}")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=dict(headers))
    except httpx.TimeoutException:
        return DeliveryResult.retry("timeout")
    except httpx.ConnectError as exc:
        return DeliveryResult.retry(
            "connection refused" if _caused_by(exc, ConnectionRefusedError) else "connection failed"
        )
    except httpx.TransportError as exc:  # reset, protocol errors, closed without an answer
        return DeliveryResult.retry(f"transport error: {type(exc).__name__}")
    result = classify_status(response.status_code)
    if not result.ok:
        snippet = " ".join(response.text[:120].split())
        if snippet:
            result = DeliveryResult(False, result.permanent, f"{result.detail}: {snippet}")
    return result
