"""``KEY=VALUE`` files under ``var/`` (``node.env``, ``secrets.env``, ``worker.env``): read, write, and what ``worker.env`` holds."""

from __future__ import annotations

import os
import re
from pathlib import Path

from neuroradix.config import PipelineSettings
from neuroradix.errors import ConfigError


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file such as ``var/node.env`` (``#`` comments, optional ``export``
    and quotes). A missing file gives an empty dict; a malformed line raises ConfigError."""
    values: dict[str, str] = {}
    path = Path(path)
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def write_env_file(path: Path, values: dict[str, str], header: str) -> None:
    """Write ``values`` as ``KEY='VALUE'`` lines, mode 0600 (also when the file existed)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# {header}\n")
        for key, value in values.items():
            fh.write(f"{key}='{value}'\n")


WORKER_ENV_KEYS = (
    "NEURORADIX_LEDGER_URL",
    "NEURORADIX_ORTHANC_URL",
    "NEURORADIX_ORTHANC_USER",
    "NEURORADIX_ORTHANC_PASSWORD",
    "NEURORADIX_UID_KEY",
    "NEURORADIX_VAR_DIR",
)
PIPELINE_KEYS = tuple(f"NEURORADIX_{name.upper()}" for name in PipelineSettings.model_fields)


def worker_env_values(sidecar_env: dict[str, str], ledger_url: str) -> dict[str, str]:
    """What ``var/worker.env`` holds: what a worker elsewhere needs to join (no API token).

    The ledger URL, Orthanc's URL and the sidecar's Orthanc account, the UID key, the var
    directory, and the pipeline settings the sidecar runs with (a worker must produce the same
    pipeline version). ``NEURORADIX_VAR_DIR`` is the sidecar's: a worker in a second shell shares
    it; on another host it is where that worker keeps job results (see docs/scale-out.md).
    """
    values = {key: sidecar_env[key] for key in (*WORKER_ENV_KEYS, *PIPELINE_KEYS) if sidecar_env.get(key)}
    values["NEURORADIX_LEDGER_URL"] = ledger_url
    return values
