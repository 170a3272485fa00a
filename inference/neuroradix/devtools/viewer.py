"""OHIF in front of the node's Orthanc: one origin for the viewer and for DICOMweb.

Orthanc 1.10.1 sends no CORS headers, so a browser viewer has to be served from the same
origin as the DICOMweb API it reads. This module is that origin, a small Starlette app:

* ``/dicom-web/*`` is proxied to ``$ORTHANC_URL/dicom-web/*`` (GET and HEAD only: the viewer
  reads, it never stores or deletes), with Orthanc's basic auth added here, so the browser
  holds no credential. Responses stream through, except DICOM JSON, where the absolute
  BulkDataURIs and RetrieveURLs that Orthanc writes with its own ``host:port``
  (``DicomWeb.Host``) are rewritten to ``/dicom-web/...`` on this origin. Whole instances are
  asked for in their stored transfer syntax (see :func:`stored_syntax_accept`), and ``%2C`` in
  query strings is decoded for Orthanc 1.10.1 (see :func:`orthanc_query`).
* ``/app-config.js`` is the project's OHIF configuration (``viewer/app-config.js``).
* ``/worklist`` is the triage worklist page and ``/worklist.json`` its data, read from the
  sidecar with the reader token (``SIDECAR_URL``/``SIDECAR_READER_TOKEN``), see
  :mod:`neuroradix.devtools.worklist`.
* everything else is OHIF's prebuilt ``dist/`` (npm package ``@ohif/app``, installed under
  ``viewer/node_modules`` by ``npm ci --prefix viewer``), with ``index.html`` for the
  single-page app's routes (``/viewer``, ``/segmentation`` ...).

Before any route, every request passes :class:`_Guard`: a path with dot segments, encoded
dots, slashes or backslashes, or a double-encoded ``%`` is refused with 400 (httpx would collapse
``/dicom-web/../patients`` to Orthanc's ``/patients``), a ``Host`` header that is not this
server's own address is refused with 421 (DNS rebinding), and when a login is configured
(``NEURORADIX_VIEWER_LOGIN=user:password``, required when bound beyond loopback) a request
without it gets 401.

It binds 127.0.0.1 by default. ``neuroradix viewer`` (see :func:`register`) reads
``var/node.env`` (written by ``make up``) for ``ORTHANC_URL`` and the viewer's own Orthanc
account (``VIEWER_ORTHANC_USER``/``VIEWER_ORTHANC_PASSWORD``: DICOMweb GET only; the people
account ``ORTHANC_USER``/``ORTHANC_PASSWORD`` when there is none). OHIF's files are found under
the setting ``NEURORADIX_VIEWER_DIR`` (default ``viewer`` in the working directory; the Makefile
passes the checkout's).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hmac
import ipaddress
import logging
import os
import re
import sys
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Mapping, Optional
from urllib.parse import quote

import httpx
import uvicorn  # local import: only the CLI serves
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from neuroradix.config import ToolSettings
from neuroradix.deploy.envfile import read_env_file
from neuroradix.devtools.worklist import worklist_routes
from neuroradix.errors import ConfigError

logger = logging.getLogger(__name__)

# Setting NEURORADIX_VIEWER_DIR: the folder with app-config.js and OHIF's node_modules.
VIEWER_DIR = ToolSettings().viewer_dir
DEFAULT_DIST = VIEWER_DIR / "node_modules" / "@ohif" / "app" / "dist"
DEFAULT_CONFIG = VIEWER_DIR / "app-config.js"
DEFAULT_ENV_FILE = Path("var") / "node.env"
DICOMWEB_PREFIX = "/dicom-web"
LOOPBACK = "127.0.0.1"
# In a raw (undecoded) path: encoded dot, slash, backslash or percent (double encoding).
_ENCODED_TRICKS = re.compile(rb"%(2e|2f|5c|25)", re.IGNORECASE)

# Request headers passed on to Orthanc; everything else (cookies, the browser's own
# Authorization, Accept-Encoding) stays here.
_FORWARDED_REQUEST_HEADERS = ("accept", "range", "if-none-match", "if-modified-since", "cache-control")
# Response headers passed back to the browser (hop-by-hop headers and Orthanc's own
# WWW-Authenticate are dropped).
_FORWARDED_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "etag",
    "last-modified",
    "cache-control",
    "content-range",
    "accept-ranges",
)
# An absolute URL to any host's /dicom-web/ root inside a JSON string value.
_ABSOLUTE_DICOMWEB_URL = re.compile(rb'"https?://[^/"\s]+/dicom-web/')


@dataclass(frozen=True)
class ViewerSettings:
    """Where Orthanc is, how to log in, and which OHIF build to serve.

    Parameters
    ----------
    orthanc_url:
        Orthanc's REST root, e.g. ``http://127.0.0.1:8042`` (DICOMweb is under ``/dicom-web``).
    orthanc_user, orthanc_password:
        Orthanc basic-auth credentials; they never leave this process.
    dist_dir:
        OHIF's prebuilt ``dist/`` folder (holds ``index.html``).
    config_file:
        The OHIF ``app-config.js`` served at ``/app-config.js``.
    timeout:
        Seconds to wait for Orthanc (connect and each read).
    """

    orthanc_url: str
    orthanc_user: str
    orthanc_password: str
    dist_dir: Path = DEFAULT_DIST
    config_file: Path = DEFAULT_CONFIG
    timeout: float = 120.0
    login: Optional[tuple[str, str]] = None  # (user, password) a browser must give; None: no login
    allowed_hosts: tuple[str, ...] = ()  # extra Host names (e.g. the DNS name of a reverse proxy)
    sidecar_url: Optional[str] = None  # the worklist page reads the sidecar's /v1/worklist ...
    sidecar_reader_token: Optional[str] = None  # ... with the reader token, kept on the server

    def __post_init__(self) -> None:
        if not isinstance(self.orthanc_url, str) or not re.match(r"^https?://[^/\s]+", self.orthanc_url):
            raise ConfigError(f"ORTHANC_URL must be an http(s) URL, got {self.orthanc_url!r}")
        object.__setattr__(self, "orthanc_url", self.orthanc_url.rstrip("/"))
        for name in ("orthanc_user", "orthanc_password"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name.upper()} must be set")
        object.__setattr__(self, "dist_dir", Path(self.dist_dir))
        object.__setattr__(self, "config_file", Path(self.config_file))
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout!r}")
        if self.login is not None and (len(self.login) != 2 or not all(self.login)):
            raise ConfigError("the viewer login needs a user and a password (NEURORADIX_VIEWER_LOGIN=user:password)")

    def check_files(self) -> None:
        """Raise :class:`~neuroradix.errors.ConfigError` when the OHIF build or config is missing."""
        if not (self.dist_dir / "index.html").is_file():
            raise ConfigError(
                f"OHIF is not installed: {self.dist_dir / 'index.html'} is missing; "
                "run `npm ci --prefix viewer --ignore-scripts`"
            )
        if not self.config_file.is_file():
            raise ConfigError(f"OHIF config {self.config_file} is missing")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> ViewerSettings:
        """Build from ``ORTHANC_URL`` and the viewer account (``VIEWER_ORTHANC_USER``/``_PASSWORD``,
        else ``ORTHANC_USER``/``ORTHANC_PASSWORD``), optionally ``NEURORADIX_OHIF_DIST`` and
        ``NEURORADIX_VIEWER_LOGIN`` (``user:password``), in ``env``; keyword arguments override."""
        if env.get("VIEWER_ORTHANC_USER") and env.get("VIEWER_ORTHANC_PASSWORD"):
            env = {
                **env,
                "ORTHANC_USER": env["VIEWER_ORTHANC_USER"],
                "ORTHANC_PASSWORD": env["VIEWER_ORTHANC_PASSWORD"],
            }
        missing = [k for k in ("ORTHANC_URL", "ORTHANC_USER", "ORTHANC_PASSWORD") if not env.get(k)]
        if missing:
            raise ConfigError(f"missing setting(s) {', '.join(missing)}: run `make up` (it writes var/node.env)")
        values: dict = {
            "orthanc_url": env["ORTHANC_URL"],
            "orthanc_user": env["ORTHANC_USER"],
            "orthanc_password": env["ORTHANC_PASSWORD"],
        }
        if env.get("NEURORADIX_OHIF_DIST"):
            values["dist_dir"] = Path(env["NEURORADIX_OHIF_DIST"])
        if env.get("SIDECAR_URL") and env.get("SIDECAR_READER_TOKEN"):
            values["sidecar_url"] = env["SIDECAR_URL"]
            values["sidecar_reader_token"] = env["SIDECAR_READER_TOKEN"]
        if env.get("NEURORADIX_VIEWER_LOGIN"):
            user, _, password = env["NEURORADIX_VIEWER_LOGIN"].partition(":")
            values["login"] = (user, password)
        values.update(overrides)
        return cls(**values)


def rewrite_dicomweb_urls(body: bytes) -> bytes:
    """Make absolute DICOMweb URLs in a DICOM JSON body relative to this origin.

    ``"http://127.0.0.1:8042/dicom-web/studies/..."`` becomes ``"/dicom-web/studies/..."``.
    OHIF uses a BulkDataURI that starts with ``/`` on the origin of its ``wadoRoot``.
    """
    return _ABSOLUTE_DICOMWEB_URL.sub(b'"' + DICOMWEB_PREFIX.encode() + b"/", body)


# Errors after which a GET can be sent again: the connection broke before Orthanc answered
# (typically a keep-alive connection that Orthanc closed while the request was on its way).
_RETRYABLE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)


async def _send_with_retry(client: httpx.AsyncClient, request: httpx.Request, attempts: int = 3) -> httpx.Response:
    """Send a GET/HEAD, again on a broken connection (idempotent, so safe); stream the response."""
    for attempt in range(1, attempts + 1):
        try:
            return await client.send(request, stream=True)
        except _RETRYABLE as exc:
            if attempt == attempts:
                raise
            logger.debug("retrying %s after %r", request.url.path, exc)
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def orthanc_query(query: str) -> str:
    """The query string as Orthanc 1.10.1 understands it.

    Orthanc 1.10.1 does not percent-decode QIDO query strings, so OHIF's
    ``includefield=00081030%2C00080060`` names no attribute it knows and the study list loses
    its descriptions. A comma is legal as is in a query string: ``%2C`` is decoded, everything
    else is passed on as the browser wrote it.
    """
    return re.sub(r"%2[cC]", ",", query)


def stored_syntax_accept(accept: str) -> str:
    """Ask for instances in the transfer syntax Orthanc stored them in.

    OHIF fetches a whole SEG (or other multi-frame object) with ``multipart/related;
    type="application/dicom"`` and no transfer syntax, which means Explicit VR Little Endian.
    Orthanc 1.10.1 transcodes a JPEG 2000 BINARY SEG to that with 8 bits per pixel instead of
    1, and OHIF then rejects every frame. OHIF decodes every syntax the node stores (it ships
    the codecs), so the proxy adds ``transfer-syntax=*`` to such requests: no transcoding.
    Other Accept values pass unchanged.
    """
    parts = [p.strip() for p in accept.split(";")]
    if (
        parts
        and parts[0].lower() == "multipart/related"
        and any(p.replace(" ", "").lower() in ('type="application/dicom"', "type=application/dicom") for p in parts[1:])
        and not any(p.lower().startswith("transfer-syntax") for p in parts[1:])
    ):
        return accept + "; transfer-syntax=*"
    return accept


class _SinglePageApp(StaticFiles):
    """OHIF's ``dist/``: files as they are, ``index.html`` for every other path."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or scope["method"] not in ("GET", "HEAD"):
                raise
            return FileResponse(Path(str(self.directory)) / "index.html", headers={"Cache-Control": "no-cache"})


def unsafe_path(raw_path: bytes, path: str) -> bool:
    """Whether a request path could name something else once normalised: a ``.``/``..`` segment,
    an encoded dot, slash, backslash or ``%`` (double encoding), a backslash or a NUL."""
    if _ENCODED_TRICKS.search(raw_path) or "\\" in path or "\x00" in path:
        return True
    return any(segment in (".", "..") for segment in path.split("/"))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class _Guard:
    """ASGI middleware in front of every route: path normalisation, Host check, optional login."""

    def __init__(self, app: ASGIApp, settings: ViewerSettings) -> None:
        self.app, self.settings = app, settings
        self._expected_auth = None
        if settings.login is not None:
            token = base64.b64encode(f"{settings.login[0]}:{settings.login[1]}".encode()).decode()
            self._expected_auth = f"Basic {token}".encode()

    def _host_ok(self, scope: Scope, host_header: str) -> bool:
        name, _, port = host_header.rpartition(":") if not host_header.endswith("]") else (host_header, "", "")
        if not name or not port.isdigit():
            name, port = host_header, "80"
        server = scope.get("server") or ("", None)
        if server[1] is not None and int(port) != int(server[1]):
            return False
        name = name.lower()
        return (
            name in self.settings.allowed_hosts
            or name == str(server[0]).lower()
            or (_is_loopback(str(server[0])) and _is_loopback(name))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        problem = None
        if unsafe_path(scope.get("raw_path") or scope["path"].encode(), scope["path"]):
            problem = (400, "path refused: dot segments and encoded dots, slashes or percents are not allowed")
        elif not self._host_ok(scope, headers.get(b"host", b"").decode("latin-1")):
            problem = (421, "Host header does not name this viewer")
        elif self._expected_auth is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self._expected_auth
        ):
            response = PlainTextResponse(
                "login required", status_code=401, headers={"WWW-Authenticate": 'Basic realm="Neuro Radix viewer"'}
            )
            await response(scope, receive, send)
            return
        if problem is not None:
            logger.warning("viewer refused a request: %s", problem[1])
            await PlainTextResponse(problem[1], status_code=problem[0])(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: ViewerSettings, transport: Optional[httpx.AsyncBaseTransport] = None) -> Starlette:
    """The viewer origin: proxy, OHIF config and OHIF's static files.

    Parameters
    ----------
    settings:
        Orthanc location and credentials, OHIF paths (checked here).
    transport:
        httpx transport to Orthanc; tests pass an ``httpx.MockTransport``.

    Returns
    -------
    starlette.applications.Starlette
        Serve it with uvicorn on 127.0.0.1.
    """
    settings.check_files()
    client = httpx.AsyncClient(
        base_url=settings.orthanc_url,
        auth=(settings.orthanc_user, settings.orthanc_password),
        timeout=httpx.Timeout(settings.timeout, connect=10.0),
        follow_redirects=False,
        # Orthanc closes idle keep-alive connections after 1 s (KeepAliveTimeout): drop ours first.
        limits=httpx.Limits(max_connections=32, keepalive_expiry=0.5),
        transport=transport,
    )

    async def dicomweb(request: Request) -> Response:
        path = quote(request.path_params["path"], safe="/.-_~:@!$&'()*+,;=")
        url = f"{DICOMWEB_PREFIX}/{path}"
        if request.url.query:
            url += "?" + orthanc_query(request.url.query)
        headers = {k: v for k, v in request.headers.items() if k in _FORWARDED_REQUEST_HEADERS}
        headers["accept-encoding"] = "identity"  # loopback: compressing costs more than it saves
        if "accept" in headers:
            headers["accept"] = stored_syntax_accept(headers["accept"])
        try:
            upstream = await _send_with_retry(client, client.build_request(request.method, url, headers=headers))
        except httpx.HTTPError as exc:
            logger.warning("Orthanc did not answer %s %s: %r", request.method, url.split("?")[0], exc)
            return PlainTextResponse(f"Orthanc is unreachable: {type(exc).__name__}", status_code=502)
        out_headers = {k: v for k, v in upstream.headers.items() if k in _FORWARDED_RESPONSE_HEADERS}
        content_type = upstream.headers.get("content-type", "")
        if upstream.status_code == 401:
            await upstream.aclose()
            logger.error("Orthanc rejected the proxy's credentials (check ORTHANC_USER / ORTHANC_PASSWORD)")
            return PlainTextResponse("Orthanc rejected the viewer proxy's credentials", status_code=502)
        if "json" in content_type and request.method == "GET":
            try:
                body = rewrite_dicomweb_urls(await upstream.aread())
            finally:
                await upstream.aclose()
            out_headers.pop("content-length", None)
            out_headers.pop("content-encoding", None)  # aread() decoded it
            return Response(body, status_code=upstream.status_code, headers=out_headers)
        if "content-encoding" in out_headers:  # aiter_bytes() decodes it
            out_headers.pop("content-encoding")
            out_headers.pop("content-length", None)
        return StreamingResponse(
            upstream.aiter_bytes(),
            status_code=upstream.status_code,
            headers=out_headers,
            background=BackgroundTask(upstream.aclose),
        )

    async def app_config(request: Request) -> Response:
        return FileResponse(settings.config_file, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    async def not_allowed(request: Request) -> Response:
        return PlainTextResponse("the viewer proxy is read-only", status_code=405)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    routes = [
        Route(DICOMWEB_PREFIX + "/{path:path}", dicomweb, methods=["GET", "HEAD"]),
        Route(DICOMWEB_PREFIX + "/{path:path}", not_allowed, methods=["POST", "PUT", "DELETE", "PATCH"]),
        Route("/app-config.js", app_config, methods=["GET", "HEAD"]),
        *worklist_routes(settings.sidecar_url, settings.sidecar_reader_token),
        Mount("/", app=_SinglePageApp(directory=settings.dist_dir, html=True), name="ohif"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_Guard, settings=settings)
    return app


def study_list_url(base_url: str) -> str:
    """URL of OHIF's study list on ``base_url`` (``http://127.0.0.1:PORT``)."""
    return base_url.rstrip("/") + "/"


def study_url(base_url: str, study_uid: str) -> str:
    """URL that opens ``study_uid`` in OHIF's basic viewer."""
    if not re.fullmatch(r"[0-9.]{1,64}", study_uid):
        raise ValueError(f"not a DICOM UID: {study_uid!r}")
    return f"{base_url.rstrip('/')}/viewer?StudyInstanceUIDs={study_uid}"


def settings_from_files(
    env_file: Path = DEFAULT_ENV_FILE, environ: Optional[Mapping[str, str]] = None
) -> ViewerSettings:
    """Settings from ``env_file`` (``var/node.env``), with the process environment taking precedence."""
    env = read_env_file(env_file)
    env.update(
        {
            k: v
            for k, v in (os.environ if environ is None else environ).items()
            if k
            in (
                "ORTHANC_URL",
                "ORTHANC_USER",
                "ORTHANC_PASSWORD",
                "VIEWER_ORTHANC_USER",
                "VIEWER_ORTHANC_PASSWORD",
                "NEURORADIX_OHIF_DIST",
                "NEURORADIX_VIEWER_LOGIN",
                "SIDECAR_URL",
                "SIDECAR_READER_TOKEN",
            )
            and v
        }
    )
    return ViewerSettings.from_env(env)


def run(args: argparse.Namespace) -> int:
    """``neuroradix viewer``: serve OHIF and the DICOMweb proxy (127.0.0.1 by default) until Ctrl-C."""
    try:
        settings = settings_from_files(Path(args.env_file))
        if not _is_loopback(args.host):
            if settings.login is None:
                raise ConfigError(f"--host {args.host} is beyond loopback: set NEURORADIX_VIEWER_LOGIN=user:password")
            settings = dataclasses.replace(settings, allowed_hosts=(*settings.allowed_hosts, *args.allow_host))
        app = create_app(settings)
    except ConfigError as exc:
        print(f"neuroradix viewer: {exc}", file=sys.stderr)
        return 2
    base = f"http://{args.host}:{args.port}"
    print(f"OHIF study list:  {study_list_url(base)}")
    if args.open:
        url = study_url(base, args.open)
        print(f"Study:            {url}")
        if not args.no_browser:
            webbrowser.open(url)
    print("Press Ctrl-C to stop.", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``viewer`` to the ``neuroradix`` command line (``subparsers`` from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "viewer",
        help="open the node's studies and results in OHIF (local web viewer)",
        description="Serve OHIF and a same-origin DICOMweb proxy to the node's Orthanc on 127.0.0.1.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=ToolSettings().viewer_port,
        help="port on 127.0.0.1 (default 3000, or $NEURORADIX_VIEWER_PORT)",
    )
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help="address to bind (default 127.0.0.1; beyond loopback needs NEURORADIX_VIEWER_LOGIN)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another Host name browsers use to reach it (e.g. a reverse proxy's), repeatable",
    )
    parser.add_argument("--open", metavar="STUDY_UID", help="open this study in a web browser")
    parser.add_argument("--no-browser", action="store_true", help="print the study URL, do not open a browser")
    parser.add_argument(
        "--env-file",
        default=str(DEFAULT_ENV_FILE),
        help="file with ORTHANC_URL/ORTHANC_USER/ORTHANC_PASSWORD (default var/node.env)",
    )
    parser.set_defaults(func=run)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m neuroradix.devtools.viewer [--port P] [--open UID]``: the ``viewer`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="neuroradix")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["viewer", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
