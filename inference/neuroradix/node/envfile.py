"""``KEY=VALUE`` files under ``var/`` (``node.env``, ``secrets.env``, ``worker.env``): read and write (mode 0600)."""

from __future__ import annotations

import os
import re
from pathlib import Path

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
