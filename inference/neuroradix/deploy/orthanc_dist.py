"""Which Orthanc the node runs, and installing a current one from Debian sid.

Debian 12's Orthanc is 1.10.1 (no study labels, CVE-2026-5437 ... 5445 unpatched). Debian's
unstable suite carries current builds (Orthanc 1.13, orthanc-python 7.x with Python 3.14,
DICOMweb, GDCM, PostgreSQL). The installer runs ``debootstrap --variant=minbase`` of those
packages into a cache folder (``~/.cache/neuroradix/orthanc-sid``, or ``NEURORADIX_ORTHANC_ROOT``)
once, as root (debootstrap needs it: ``make setup`` does it), and records the installed package
versions in ``versions.json`` in that folder. Running it needs no root and no chroot: the binary
starts through the folder's own dynamic loader with ``--library-path`` pointing into the folder,
``PYTHONHOME`` tells the embedded Python 3.14 where its standard library is, and
``DCMDICTPATH`` where DCMTK's dictionaries are. The mirror keeps only the current sid version,
so the installer checks a minimum (:data:`~neuroradix.pacs.orthanc_info.MINIMUM_VERSION`),
not an exact pin; ``make orthanc-refresh`` replaces the folder with today's packages.

Why this route: it takes only what CI and sites already reach (Debian's mirror), builds in under
a minute, runs without root, and is the same Debian packaging as the host's Orthanc.
The alternatives: the ``orthancteam/orthanc`` Docker image needs a container runtime the test
machines do not have; Orthanc's static Linux binaries come from a site CI cannot reach; apt
pinning sid packages onto a Debian 12 host would replace its C++ runtime and libc.

``NEURORADIX_ORTHANC=host`` keeps the host's own Orthanc (``Orthanc`` on ``PATH``, or
``NEURORADIX_ORTHANC_BINARY``; Debian's packages); the node still refuses one older than 1.12.11
unless ``NEURORADIX_ALLOW_OLD_ORTHANC=1``.

Command line (``make setup`` runs ``install`` as root, with the venv's Python)::

    python -m neuroradix.deploy.orthanc_dist root               # print the cache folder
    python -m neuroradix.deploy.orthanc_dist install [--refresh] [--root DIR]   # as root
    python -m neuroradix.deploy.orthanc_dist show              # versions of the Orthanc in use
    python -m neuroradix.deploy.orthanc_dist routes --out FILE # its REST routes (tests/deploy/data)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import enum
import fcntl
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from neuroradix.config import DeploySettings
from neuroradix.errors import ConfigError
from neuroradix.pacs.orthanc_info import (
    MINIMUM_VERSION,
    MINIMUM_VERSION_TEXT,
    check_version,
    parse_version,
)

logger = logging.getLogger(__name__)

SUITE = "sid"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("orthanc", "orthanc-python", "orthanc-dicomweb", "orthanc-gdcm", "orthanc-postgresql")
VERSIONS_FILE = "versions.json"
HOST_PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
# Plugin id (GET /plugins) -> shared object in the plugins folder. Only these are loaded: the
# folder also holds plugins the node does not use (worklists, housekeeper, multitenant DICOM ...).
PLUGIN_FILES = {
    "python": "libOrthancPython.so",
    "dicom-web": "libOrthancDicomWeb.so",
    "gdcm": "libOrthancGdcm.so",
}
POSTGRESQL_INDEX_FILE = "libOrthancPostgreSQLIndex.so"
# Machine -> (dynamic loader inside the folder, Debian's multiarch triplet).
_LOADERS = {
    "x86_64": ("usr/lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu"),
    "aarch64": ("usr/lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu"),
}


class OrthancSource(str, enum.Enum):
    """Where the node's Orthanc comes from (``NEURORADIX_ORTHANC``)."""

    SID = "sid"  # the current Orthanc `make setup` bootstraps from Debian sid
    HOST = "host"  # the host's own Orthanc and plugins


def default_root() -> Path:
    """The default cache folder of the sid Orthanc, ``~/.cache/neuroradix/orthanc-sid``."""
    return Path.home() / ".cache" / "neuroradix" / "orthanc-sid"


@dataclass(frozen=True)
class OrthancDistSettings:
    """Which Orthanc to run (from :class:`~neuroradix.config.DeploySettings`).

    Parameters
    ----------
    mode
        :class:`OrthancSource` (default: the installed current Orthanc).
    root
        The sid install's folder.
    binary
        ``host`` mode: the Orthanc executable (default: ``Orthanc`` on ``PATH``).
    allow_old
        Run an Orthanc older than 1.12.11 anyway (``NEURORADIX_ALLOW_OLD_ORTHANC``).
    """

    mode: OrthancSource = OrthancSource.SID
    root: Path = field(default_factory=default_root)
    binary: Optional[str] = None
    allow_old: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.mode, OrthancSource):
            raise TypeError(f"mode must be an OrthancSource, got {type(self.mode).__name__}")

    @classmethod
    def from_settings(cls, settings: DeploySettings) -> OrthancDistSettings:
        """``NEURORADIX_ORTHANC``, ``NEURORADIX_ORTHANC_ROOT``, ``NEURORADIX_ORTHANC_BINARY``, ``NEURORADIX_ALLOW_OLD_ORTHANC``."""
        try:
            mode = OrthancSource(settings.orthanc.strip().lower())
        except ValueError as exc:
            raise ConfigError(f"NEURORADIX_ORTHANC must be 'sid' or 'host', got {settings.orthanc!r}") from exc
        return cls(
            mode=mode,
            root=(settings.orthanc_root or default_root()).expanduser(),
            binary=settings.orthanc_binary,
            allow_old=settings.allow_old_orthanc,
        )


@dataclass(frozen=True)
class OrthancDist:
    """An installed Orthanc: how to start it and what it is.

    Parameters
    ----------
    argv_prefix
        The command up to (and including) the Orthanc binary; append options and the configuration.
    env
        Variables the process needs on top of its environment (``PYTHONHOME``, ``DCMDICTPATH``).
    version
        Orthanc's version (``Orthanc --version``).
    plugins_dir
        The folder of the plugins' shared objects.
    python_home
        The embedded Python's prefix (sid), None for the host's.
    packages
        Debian package -> version, as recorded at install (empty for the host's).
    source
        Where it comes from.
    """

    argv_prefix: tuple[str, ...]
    env: Mapping[str, str]
    version: str
    plugins_dir: Path
    python_home: Optional[Path] = None
    packages: Mapping[str, str] = field(default_factory=dict)
    source: OrthancSource = OrthancSource.SID

    def plugin_paths(self, postgresql: bool = False) -> list[str]:
        """The plugins the node loads (``Plugins`` of the configuration): Python, DICOMweb, GDCM, and the PostgreSQL index on request."""
        names = list(PLUGIN_FILES.values()) + ([POSTGRESQL_INDEX_FILE] if postgresql else [])
        return [str(self.plugins_dir / name) for name in names]

    def command(self, *args: str) -> list[str]:
        """``argv_prefix`` + ``args``."""
        return [*self.argv_prefix, *args]

    def summary(self) -> str:
        """One line: source, Orthanc and plugin package versions."""
        extras = ", ".join(f"{name} {version}" for name, version in sorted(self.packages.items()) if name != "orthanc")
        return f"Orthanc {self.version} ({self.source.value}{'; ' + extras if extras else ''})"


def _sid_paths(root: Path) -> tuple[Path, str]:
    machine = platform.machine()
    if machine not in _LOADERS:
        raise ConfigError(f"no known dynamic loader for {machine}: set NEURORADIX_ORTHANC=host")
    loader, triplet = _LOADERS[machine]
    library_path = ":".join(str(root / part) for part in (f"usr/lib/{triplet}", f"lib/{triplet}", "usr/lib"))
    return root / loader, library_path


def read_dpkg_versions(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` from ``ROOT/var/lib/dpkg/status`` (no chroot, no root).

    Parameters
    ----------
    root
        The install's folder.
    packages
        Package names to report.

    Returns
    -------
    dict
        Package -> version, for those installed.
    """
    versions: dict[str, str] = {}
    status = root / "var" / "lib" / "dpkg" / "status"
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Package") in packages and "installed" in fields.get("Status", "").split():
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


def _sid_dist(root: Path) -> OrthancDist:
    record_path = root / VERSIONS_FILE
    if not record_path.is_file():
        raise ConfigError(
            f"no current Orthanc in {root}: run `make setup` (as root, or with sudo), or set "
            "NEURORADIX_ORTHANC=host to use the host's Orthanc"
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    loader, library_path = _sid_paths(root)
    dcmtk = root / "usr" / "share" / "dcmtk"
    return OrthancDist(
        argv_prefix=(str(loader), "--library-path", library_path, str(root / "usr" / "sbin" / "Orthanc")),
        env={
            "PYTHONHOME": str(root / "usr"),
            "DCMDICTPATH": f"{dcmtk / 'dicom.dic'}:{dcmtk / 'private.dic'}",
        },
        version=str(record.get("orthanc_version", "?")),
        plugins_dir=root / "usr" / "share" / "orthanc" / "plugins",
        python_home=root / "usr",
        packages=dict(record.get("packages", {})),
        source=OrthancSource.SID,
    )


def _binary_version(argv_prefix: tuple[str, ...], env: Mapping[str, str]) -> str:
    answer = subprocess.run(
        [*argv_prefix, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )
    first = (answer.stdout or answer.stderr).strip().splitlines()[:1]
    if answer.returncode != 0 or not first:
        raise ConfigError(f"`{' '.join(argv_prefix[-1:])} --version` failed (exit {answer.returncode})")
    return first[0].split()[-1]


def _host_dist(binary: Optional[str]) -> OrthancDist:
    found = binary or shutil.which("Orthanc")
    if not found or not Path(found).exists():
        raise ConfigError(
            "NEURORADIX_ORTHANC=host but no Orthanc is installed on this host "
            "(set NEURORADIX_ORTHANC_BINARY, or leave NEURORADIX_ORTHANC unset for the current Orthanc)"
        )
    return OrthancDist(
        argv_prefix=(found,),
        env={},
        version=_binary_version((found,), {}),
        plugins_dir=HOST_PLUGIN_DIR,
        source=OrthancSource.HOST,
    )


def find_orthanc(settings: OrthancDistSettings, check: bool = True) -> OrthancDist:
    """The Orthanc the node runs.

    Parameters
    ----------
    settings
        Which one (:meth:`OrthancDistSettings.from_environ`).
    check
        Refuse one older than 1.12.11 unless ``settings.allow_old``.

    Returns
    -------
    OrthancDist

    Raises
    ------
    ConfigError
        Not installed (the message says how to install it or to choose the host's).
    neuroradix.pacs.orthanc_info.OrthancTooOldError
        Too old (the message names the CVEs and the override setting).
    """
    dist = _host_dist(settings.binary) if settings.mode is OrthancSource.HOST else _sid_dist(settings.root)
    if check:
        check_version(dist.version, settings.allow_old)
    return dist


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def install(
    root: Path,
    refresh: bool = False,
    mirror: str = DEFAULT_MIRROR,
    packages: tuple[str, ...] = PACKAGES,
) -> dict:
    """Install the current Orthanc from Debian sid into ``root`` (needs root and ``debootstrap``).

    Nothing happens when ``root`` already holds an install, unless ``refresh``. The new tree is
    built beside ``root`` and moved into place only when it runs and is recent enough, so a failed
    refresh leaves the old install working.

    Parameters
    ----------
    root
        The cache folder.
    refresh
        Replace an existing install with today's packages.
    mirror
        The Debian mirror.
    packages
        What to install.

    Returns
    -------
    dict
        The record written to ``root/versions.json``.

    Raises
    ------
    ConfigError
        Not root, no debootstrap, a failed bootstrap, or an Orthanc older than the minimum.
    """
    root = root.expanduser().absolute()
    with _install_lock(root):
        if (root / VERSIONS_FILE).is_file() and not refresh:
            return json.loads((root / VERSIONS_FILE).read_text(encoding="utf-8"))
        if os.geteuid() != 0:
            raise ConfigError("installing Orthanc with debootstrap needs root: run `sudo make setup`")
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists():
            raise ConfigError("debootstrap is missing: apt-get install debootstrap")
        staging = root.with_name(f"{root.name}.new")
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        command = [debootstrap, "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(staging), mirror]
        logger.info("installing %s from Debian %s into %s", ", ".join(packages), SUITE, root)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            shutil.rmtree(staging, ignore_errors=True)
            raise ConfigError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
        for cached in (staging / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            cached.unlink()  # the downloaded packages: ~100 MB that nothing reads again
        versions = read_dpkg_versions(staging, packages)
        missing = sorted(set(packages) - set(versions))
        if missing:
            raise ConfigError(f"debootstrap did not install {', '.join(missing)}")
        loader, library_path = _sid_paths(staging)
        orthanc_version = _binary_version(
            (str(loader), "--library-path", library_path, str(staging / "usr" / "sbin" / "Orthanc")), {}
        )
        if parse_version(orthanc_version) < MINIMUM_VERSION:
            shutil.rmtree(staging, ignore_errors=True)
            raise ConfigError(f"Debian {SUITE} has Orthanc {orthanc_version}, older than {MINIMUM_VERSION_TEXT}")
        record = {
            "suite": SUITE,
            "mirror": mirror,
            "installed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "install_seconds": round(time.monotonic() - started, 1),
            "orthanc_version": orthanc_version,
            "packages": versions,
            "python": _python_version(staging),
        }
        (staging / VERSIONS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        old = root.with_name(f"{root.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if root.exists():
            root.rename(old)
        staging.rename(root)
        shutil.rmtree(old, ignore_errors=True)
        return record


def rest_routes(dist: OrthancDist) -> list[tuple[str, str]]:
    """Every ``(method, path template)`` Orthanc's core REST API serves, e.g. ``("PUT", "/studies/{id}/labels/{label}")``.

    From ``Orthanc --openapi`` (the documented routes) and the warnings it logs for the routes it
    serves without documentation. Plugins' routes (``/dicom-web/...``) are not included.

    Parameters
    ----------
    dist
        The Orthanc to ask.

    Returns
    -------
    list of (str, str)
        Sorted by path, then method.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "openapi.json"
        answer = subprocess.run(
            dist.command(f"--openapi={out}"),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **dist.env},
            check=False,
        )
        if answer.returncode != 0 or not out.is_file():
            raise ConfigError(f"Orthanc --openapi failed (exit {answer.returncode})")
        spec = json.loads(out.read_text(encoding="utf-8"))
    routes = {
        (method.upper(), path)
        for path, operations in spec.get("paths", {}).items()
        for method in operations
        if method in ("get", "post", "put", "delete")
    }
    routes |= set(re.findall(r"without API documentation: ([A-Z]+) (\S+)", answer.stdout + answer.stderr))
    return sorted(routes, key=lambda route: (route[1], route[0]))


def _python_version(root: Path) -> str:
    found = sorted((root / "usr" / "lib").glob("python3.*"), key=lambda p: parse_version(p.name[len("python") :]))
    return found[-1].name[len("python") :] if found else ""


def main(argv: Optional[list[str]] = None) -> int:
    """``root``, ``install [--refresh] [--root DIR] [--mirror URL]``, ``show``."""
    parser = argparse.ArgumentParser(
        prog="python -m neuroradix.deploy.orthanc_dist", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("root", help="print the cache folder")
    install_cmd = sub.add_parser("install", help="install (as root) unless installed already")
    install_cmd.add_argument("--root", type=Path, default=None)
    install_cmd.add_argument("--refresh", action="store_true", help="replace the install with today's packages")
    install_cmd.add_argument("--mirror", default=DEFAULT_MIRROR)
    sub.add_parser("show", help="print the Orthanc in use and its versions")
    routes_cmd = sub.add_parser("routes", help="write the REST routes of the Orthanc in use as JSON")
    routes_cmd.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = OrthancDistSettings.from_settings(DeploySettings())
    try:
        if args.command == "root":
            print(settings.root)
        elif args.command == "install":
            record = install(args.root or settings.root, refresh=args.refresh, mirror=args.mirror)
            print(json.dumps(record, indent=2))
        elif args.command == "routes":
            dist = find_orthanc(settings, check=False)
            routes = rest_routes(dist)
            lines = ",\n".join(json.dumps(list(route)) for route in routes)  # one route a line: readable diffs
            args.out.write_text(
                f'{{"orthanc": {json.dumps(dist.version)}, "routes": [\n{lines}\n]}}\n', encoding="utf-8"
            )
            print(f"{len(routes)} routes of Orthanc {dist.version} -> {args.out}")
        else:
            print(find_orthanc(settings, check=False).summary())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
