"""The node's settings, read once from the environment and passed down: every ``NEURORADIX_*`` variable is here.

:class:`PipelineSettings` (``neuroradix analyze``) < :class:`WorkerSettings` (a worker: no API
token) < :class:`Settings` (the sidecar: the API's tokens); :class:`LoggingSettings` (every
command), :class:`DeploySettings` (``make up``) and :class:`ToolSettings` (viewer, samples) stand
beside them. Every setting has an environment variable ``NEURORADIX_<NAME>``; the connection settings also
accept the names ``make up`` writes to ``var/node.env`` (``ORTHANC_URL``, ``SIDECAR_TOKEN`` ...),
so ``set -a; . var/node.env`` is enough to point a script or a worker at a running node.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from neuroradix import __version__
from neuroradix.errors import ConfigError


class SegType(str, enum.Enum):
    """How the DICOM SEG is encoded (see docs/dicom-conformance.md)."""

    BINARY = "BINARY"
    LABELMAP = "LABELMAP"


class PmapGrid(str, enum.Enum):
    """Where the attention Parametric Map is written (see docs/dicom-conformance.md).

    SOURCE: on the CT grid, one frame per slice -- what OHIF 3.9-3.13 can overlay (about the
    size of the CT in uint16). ATTENTION: on the map's own coarse grid -- about 60x smaller,
    valid DICOM, but OHIF does not overlay it.
    """

    SOURCE = "SOURCE"
    ATTENTION = "ATTENTION"


DEFAULT_SEG_TYPE = SegType.BINARY
"""The SEG encoding when nothing is configured (settings and :class:`~neuroradix.writers.common.OutputContext`)."""

DEFAULT_PMAP_GRID = PmapGrid.SOURCE
"""The Parametric Map grid when nothing is configured: the CT grid, which OHIF can overlay."""

ANALYZER_NAMES: tuple[str, ...] = ("lung-hu", "deep")
"""The analyzers a node can run, in order: the one list of names.

Settings validate ``analyzers`` against it, the CLI offers it as choices and
:mod:`neuroradix.analyzers.registry` has one builder per name (it checks at import that its
builders cover exactly these names). It lives here, not in ``analyzers/``, because settings sit
below the analyzers in the layers and must not import them.
"""


class LogFormat(str, enum.Enum):
    """How the node's processes write their log lines (``NEURORADIX_LOG_FORMAT``)."""

    TEXT = "text"
    JSON = "json"  # one JSON object per line, for a log collector


def _env(name: str) -> AliasChoices:
    return AliasChoices(f"NEURORADIX_{name}", name)


class LoggingSettings(BaseSettings):
    """How every ``neuroradix`` command writes its log lines; read before the command's own settings."""

    model_config = SettingsConfigDict(env_prefix="NEURORADIX_", extra="ignore", frozen=True, env_ignore_empty=True)

    log_format: LogFormat = LogFormat.TEXT  # NEURORADIX_LOG_FORMAT=json: one JSON object per line

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class PipelineSettings(BaseSettings):
    """What the pipeline needs to analyze a volume and encode the results (no PACS, no secrets).

    Used as is by ``neuroradix analyze`` (a folder of DICOM files, no node).
    """

    model_config = SettingsConfigDict(env_prefix="NEURORADIX_", extra="ignore", frozen=True)

    analyzers: Annotated[tuple[str, ...], NoDecode] = ("lung-hu",)  # env: "lung-hu,deep"
    weights_dir: Optional[Path] = None  # release folder for the deep-learning analyzer
    allow_untrained: bool = False  # test-only: run random weights, marked UNTRAINED - TEST OUTPUT
    device: str = "auto"  # torch device of the deep analyzer: auto, cpu, cuda, cuda:N (neuroradix worker --device)
    seg_type: SegType = DEFAULT_SEG_TYPE
    seg_compress: bool = True  # BINARY: JPEG 2000 lossless; False: uncompressed (for viewers that need it)
    pmap_grid: PmapGrid = DEFAULT_PMAP_GRID
    # Per-node secret of the output UIDs (keyed hash, neuroradix.uids.derive_uid): others cannot compute
    # them; reruns stay idempotent. "" (neuroradix analyze without a node) derives public UIDs.
    uid_key: SecretStr = SecretStr("")
    # Input limits (docs/reliability.md "Limits"): checked from metadata before pixels are fetched or
    # decoded; a study over one fails with the numbers and the setting's name instead of exhausting memory.
    max_series_instances: int = Field(2000, ge=1)  # the one slice cap: slices (instances, or Enhanced CT frames)
    max_volume_voxels: int = Field(1000 * 512 * 512, ge=1)  # 1,000 x 512^2 (or 250 x 1024^2): 1 GiB float32
    max_image_side: int = Field(2048, ge=1)  # Rows and Columns of a slice
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)  # an uploaded zip as sent
    max_upload_expanded_bytes: int = Field(4 * 1024**3, ge=1)  # the zip's members uncompressed, in all
    max_zip_member_ratio: float = Field(200.0, gt=1)  # uncompressed / compressed size of a member of 1 MiB+

    @field_validator("weights_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("analyzers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @model_validator(mode="after")
    def _check_analyzers(self) -> PipelineSettings:
        unknown = set(self.analyzers) - set(ANALYZER_NAMES)
        if unknown or not self.analyzers:
            raise ValueError(
                f"analyzers must be a non-empty subset of {list(ANALYZER_NAMES)}, got {list(self.analyzers)}"
            )
        return self

    @property
    def pipeline_version(self) -> str:
        """Identifies what produced a result; part of every output UID and of the job key."""
        seg = self.seg_type.value.lower() + ("" if self.seg_compress else "-raw")
        parts = [f"neuroradix-{__version__}", *sorted(self.analyzers), seg, f"pm-{self.pmap_grid.value.lower()}"]
        if "deep" in self.analyzers and self.weights_dir is not None:
            parts.append(f"weights-{Path(self.weights_dir).resolve().name}")
        return "/".join(parts)


class WorkerSettings(PipelineSettings):
    """Settings of a worker (and of everything the sidecar shares with it): the pipeline's plus the node's.

    No API token: a worker never serves the API, so ``var/worker.env`` and a worker host need not
    hold one. Secrets have no defaults: a node started without ``ORTHANC_PASSWORD`` fails at start
    with the name of what is missing.
    """

    # Where the PACS is (Orthanc's REST root; DICOMweb lives under /dicom-web).
    orthanc_url: str = Field(validation_alias=_env("ORTHANC_URL"))
    orthanc_user: str = Field(validation_alias=_env("ORTHANC_USER"))
    orthanc_password: SecretStr = Field(validation_alias=_env("ORTHANC_PASSWORD"))

    var_dir: Path = Path("var")
    # Triage policy (docs/triage.md): read by the sidecar's sweep and by workers for the SR's triage item.
    triage_policy: Optional[Path] = None  # NEURORADIX_TRIAGE_POLICY; default var/triage-policy.yaml, else shipped
    ledger_url: Optional[str] = None  # default: sqlite file under var_dir
    # Jobs
    lease_seconds: float = 120.0
    max_attempts: int = 5  # claims ended by a bug, a timeout or a lost worker (not by transient errors)
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 120.0  # backoff cap: a job runs again within this long after an outage ends
    retry_window_seconds: float = 86400.0  # transient errors (PACS down, 401/403 ...) are retried this long
    retry_jitter: float = 0.2  # each delay is drawn from [(1 - jitter) * d, d]
    job_timeout_seconds: float = 1800.0  # past it the worker records "timed out" and its process ends
    poll_seconds: float = 1.0
    workers: int = Field(1, ge=0)  # worker processes beside the API; 0: workers run elsewhere (neuroradix worker)
    worker_restart_max_seconds: float = 60.0  # a crashing worker is restarted after 1 s, 2 s ... up to this
    worker_stable_seconds: float = 60.0  # a worker that ran this long resets its restart backoff
    reconcile_interval_seconds: float = 60.0
    reconcile_settle_seconds: float = 30.0  # a study found by the sweep waits this long first
    reconcile_verify_per_sweep: int = 50  # succeeded studies whose results are checked in the PACS per sweep
    http_timeout_seconds: float = 120.0

    @field_validator("triage_policy", mode="before")
    @classmethod
    def _empty_policy_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_node(self) -> WorkerSettings:
        if not self.orthanc_password.get_secret_value():
            raise ValueError("ORTHANC_PASSWORD must not be empty")
        if self.lease_seconds <= 3 * self.poll_seconds:
            raise ValueError("lease_seconds must be well above poll_seconds")
        return self

    @property
    def dicomweb_url(self) -> str:
        return self.orthanc_url.rstrip("/") + "/dicom-web"

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{(self.var_dir / 'ledger.sqlite').resolve()}"


class Settings(WorkerSettings):
    """Settings of the sidecar (API, reconciler, the workers beside it): a worker's plus the API's tokens.

    ``SIDECAR_TOKEN`` has no default: a sidecar started without it fails at start with its name.
    """

    # Bearer token clients must present to the sidecar's API: the admin token (every route).
    sidecar_token: SecretStr = Field(validation_alias=_env("SIDECAR_TOKEN"))
    # Scoped tokens (optional, no defaults; see neuroradix.api.deps and docs/security.md): the
    # Orthanc plugin's may only queue a study (POST /v1/jobs), a reader's only GET /v1/... and /metrics.
    sidecar_plugin_token: Optional[SecretStr] = Field(None, validation_alias=_env("SIDECAR_PLUGIN_TOKEN"))
    sidecar_reader_token: Optional[SecretStr] = Field(None, validation_alias=_env("SIDECAR_READER_TOKEN"))
    # /readyz answers from a check at most this old, so anonymous calls cannot flood the PACS.
    readyz_cache_seconds: float = 5.0
    # /readyz is red on an Orthanc older than 1.12.11 (CVE-2026-5437 ... 5445) unless this is set.
    allow_old_orthanc: bool = False
    # POST /v1/analyze: uploads received at once by one API process; one more is answered 429 + Retry-After
    max_concurrent_uploads: int = Field(2, ge=1)
    # Triage on arrival (docs/triage.md): the sweep runs in the sidecar next to the reconciler.
    triage_poll_seconds: float = Field(1.0, gt=0)  # pause between triage passes
    notify_timeout_seconds: float = Field(10.0, gt=0)  # one delivery attempt (MLLP ACK, HTTP answer)
    notify_retry_base_seconds: float = Field(2.0, gt=0)  # first retry of a failed delivery, doubled each time
    notify_retry_max_seconds: float = Field(60.0, gt=0)  # backoff cap: delivered within this long of a return
    notify_retry_window_seconds: float = Field(86400.0, ge=0)  # then dead-lettered (neuroradix notify retry)
    public_viewer_url: Optional[str] = None  # links in notifications: the worklist page and OHIF
    public_api_url: Optional[str] = None  # links in notifications: the results zip

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if len(self.sidecar_token.get_secret_value()) < 16:
            raise ValueError("SIDECAR_TOKEN must be a real secret of 16+ characters (make up generates one)")
        scoped = {"SIDECAR_PLUGIN_TOKEN": self.sidecar_plugin_token, "SIDECAR_READER_TOKEN": self.sidecar_reader_token}
        for name, token in scoped.items():
            if token is not None and len(token.get_secret_value()) < 16:
                raise ValueError(f"{name} must be a real secret of 16+ characters when set (make up generates one)")
        values = [t.get_secret_value() for t in (self.sidecar_token, *scoped.values()) if t is not None]
        if len(set(values)) != len(values):
            raise ValueError("SIDECAR_TOKEN, SIDECAR_PLUGIN_TOKEN and SIDECAR_READER_TOKEN must all differ")
        if self.readyz_cache_seconds < 0:
            raise ValueError("readyz_cache_seconds must be >= 0")
        return self

    @field_validator(
        "sidecar_plugin_token",
        "sidecar_reader_token",
        "public_viewer_url",
        "public_api_url",
        mode="before",
    )
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value


class _LocalSettings(BaseSettings):
    """Settings read from ``NEURORADIX_<NAME>``; an empty variable counts as unset (the default)."""

    model_config = SettingsConfigDict(env_prefix="NEURORADIX_", extra="ignore", frozen=True, env_ignore_empty=True)


class DeploySettings(_LocalSettings):
    """What ``make up`` (:mod:`neuroradix.deploy`) reads besides the node's generated secrets.

    Ports are used on the first ``make up`` only (then kept in ``var/secrets.env``); a port that is
    taken is replaced by a free one.
    """

    orthanc_http_port: int = Field(8042, ge=0, le=65535)  # 0: any free port
    dicom_port: int = Field(4242, ge=0, le=65535)
    sidecar_port: int = Field(8000, ge=0, le=65535)
    stable_age: int = Field(5, ge=1)  # seconds without new instances before Orthanc calls a study stable
    orthanc_verbose: bool = False  # a verbose Orthanc logs every study UID (docs/security.md)
    postgres_listen: str = "127.0.0.1"  # where the node's PostgreSQL cluster listens (docs/scale-out.md)
    orthanc_storage: str = ""  # "postgresql": Orthanc's DICOM files in PostgreSQL too (with ORTHANC_INDEX=postgresql)
    ledger_url: Optional[str] = None  # given: the ledger is there, whatever `make up LEDGER=` says
    # Which Orthanc (neuroradix.deploy.orthanc_dist): "sid", the current one `make setup` installs
    # into orthanc_root (default ~/.cache/neuroradix/orthanc-sid); "host", the host's own
    # (orthanc_binary, default Orthanc on PATH). Older than 1.12.11 is refused unless allow_old_orthanc.
    orthanc: str = "sid"
    orthanc_root: Optional[Path] = None
    orthanc_binary: Optional[str] = None
    allow_old_orthanc: bool = False


class ToolSettings(_LocalSettings):
    """Where the developer tools and the sample data live (``neuroradix viewer``, :mod:`neuroradix.samples`)."""

    viewer_dir: Path = Path("viewer")  # app-config.js and OHIF's node_modules (the Makefile sets it)
    viewer_port: int = Field(3000, ge=1, le=65535)
    shared_dir: Optional[Path] = None  # the shared data folder; default ../shared from the working directory
    cache: Optional[Path] = None  # downloaded samples; default ~/.cache/neuroradix


def load_settings(**overrides: object) -> Settings:
    """Read the sidecar's settings once; a missing required one raises with its name."""
    return Settings(**overrides)  # type: ignore[arg-type]


def load_worker_settings(env_file: Optional[Path] = None, **overrides: object) -> WorkerSettings:
    """Read a worker's settings once: no API token needed.

    Parameters
    ----------
    env_file
        A ``KEY=VALUE`` file (``var/worker.env``) read beside the environment; a variable set in
        the environment wins over the file, and ``overrides`` (command-line options) over both.
    **overrides
        Field values that win over the environment and the file, e.g. ``device="cuda:1"``.

    Raises
    ------
    ConfigError
        When ``env_file`` is given but is not a file.
    """
    if env_file is not None and not Path(env_file).is_file():
        raise ConfigError(f"no such env file: {env_file}")
    return WorkerSettings(_env_file=env_file, **overrides)  # type: ignore[arg-type]
