"""The DICOM senders the node accepts C-STORE (and C-ECHO) from: data the operator edits.

They live in ``var/senders.json`` (mode 0600), not in ``orthanc.json``::

    {"senders": [{"name": "local", "aet": "NRX_LOCAL", "host": "127.0.0.1"}]}

The launcher turns them into Orthanc's ``DicomModalities`` (AE title *and* host are checked,
``DicomAlwaysAllowStore`` is false), so a store from any other AE title or host is refused at
association. ``neuroradix senders list|add|remove`` edits the file; when the node is running the
change is applied to Orthanc at once through its REST API (``PUT/DELETE /modalities/{name}``)
with the people account from ``var/node.env``.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from neuroradix.deploy.envfile import read_env_file

logger = logging.getLogger(__name__)

SENDERS_FILE = "senders.json"
LOCAL_SENDER_AET = "NRX_LOCAL"
LOCAL_SENDER_HOST = "127.0.0.1"
_AET = re.compile(r"^[A-Za-z0-9_.\-]{1,16}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,31}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Sender:
    """One known sender: an AE title accepted from one host.

    Parameters
    ----------
    name:
        Short identifier (lowercase letters, digits, ``-``/``_``); Orthanc's modality name.
    aet:
        The sender's calling AE title (1-16 of ``A-Z a-z 0-9 _ . -``).
    host:
        IP address or host name the association must come from.
    """

    name: str
    aet: str
    host: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must be 1-32 lowercase letters, digits, '-' or '_', got {self.name!r}")
        if not isinstance(self.aet, str) or not _AET.match(self.aet):
            raise ValueError(f"aet must be 1-16 characters of A-Z, a-z, 0-9, '_', '.', '-', got {self.aet!r}")
        if not isinstance(self.host, str) or not _valid_host(self.host):
            raise ValueError(f"host must be an IP address or a host name, got {self.host!r}")

    def orthanc_modality(self) -> dict:
        """This sender as an entry of Orthanc's ``DicomModalities``: store and echo only."""
        return {
            "AET": self.aet,
            "Host": self.host,
            "Port": 104,  # Orthanc never connects back: no C-MOVE/C-GET is allowed
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFind": False,
            "AllowMove": False,
            "AllowGet": False,
            "AllowStorageCommitment": False,
        }


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()


def senders_path(var_dir: Path) -> Path:
    """Where the senders of the node in ``var_dir`` are kept."""
    return Path(var_dir) / SENDERS_FILE


def load_senders(path: Path) -> list[Sender]:
    """Read and validate ``path``; a missing file means no sender."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["senders"]
        senders = [Sender(str(e["name"]), str(e["aet"]), str(e["host"])) for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid senders file ({exc})") from exc
    names = [s.name for s in senders]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: sender names must be unique")
    return senders


def save_senders(path: Path, senders: Sequence[Sender]) -> None:
    """Write ``senders`` to ``path`` (mode 0600, replaced atomically)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"senders": [asdict(s) for s in senders]}, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def add_sender(path: Path, sender: Sender) -> list[Sender]:
    """Add ``sender`` (replacing one of the same name); returns the new list."""
    senders = [s for s in load_senders(path) if s.name != sender.name]
    senders.append(sender)
    save_senders(path, senders)
    return senders


def remove_sender(path: Path, name: str) -> list[Sender]:
    """Remove the sender called ``name``; raises KeyError if there is none."""
    senders = load_senders(path)
    kept = [s for s in senders if s.name != name]
    if len(kept) == len(senders):
        raise KeyError(name)
    save_senders(path, kept)
    return kept


def ensure_local_sender(path: Path) -> Sender:
    """The sender ``make up`` registers for this host (``NRX_LOCAL`` from 127.0.0.1), added if missing."""
    for sender in load_senders(path):
        if sender.host == LOCAL_SENDER_HOST and sender.name == "local":
            return sender
    sender = Sender("local", LOCAL_SENDER_AET, LOCAL_SENDER_HOST)
    add_sender(path, sender)
    return sender


def orthanc_modalities(senders: Sequence[Sender]) -> dict:
    """Orthanc's ``DicomModalities`` for ``senders``."""
    return {s.name: s.orthanc_modality() for s in senders}


def _apply_live(var_dir: Path, method: str, sender_name: str, body: Optional[dict]) -> bool:
    """Tell a running Orthanc about a change (``PUT``/``DELETE /modalities/{name}``); False if not running."""
    env = read_env_file(Path(var_dir) / "node.env")
    if not env.get("ORTHANC_URL"):
        return False
    token = base64.b64encode(f"{env['ORTHANC_USER']}:{env['ORTHANC_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(
        f"{env['ORTHANC_URL']}/modalities/{sender_name}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except urllib.error.HTTPError as exc:
        return method == "DELETE" and exc.code == 404
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def run(args: argparse.Namespace) -> int:
    """``neuroradix senders list|add|remove``."""
    var_dir = Path(args.var)
    path = senders_path(var_dir)
    try:
        if args.senders_command == "list":
            for s in load_senders(path):
                print(f"{s.name}\t{s.aet}\t{s.host}")
            return 0
        if args.senders_command == "add":
            sender = Sender(args.name or args.aet.lower().replace(".", "-")[:32], args.aet, args.host)
            add_sender(path, sender)
            live = _apply_live(var_dir, "PUT", sender.name, sender.orthanc_modality())
        else:
            remove_sender(path, args.name)
            live = _apply_live(var_dir, "DELETE", args.name, None)
    except KeyError as exc:
        print(f"neuroradix senders: no sender called {exc.args[0]!r}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"neuroradix senders: {exc}", file=sys.stderr)
        return 2
    print("applied to the running node" if live else "the node applies it at its next start (make up)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``senders`` to the ``neuroradix`` command line."""
    parser = subparsers.add_parser(
        "senders",
        help="list, add or remove the DICOM senders (AE title + host) the node accepts",
        description="Known senders only: C-STORE and C-ECHO are accepted from these AE titles and hosts.",
    )
    parser.add_argument("--var", default="var", help="the node's state folder (default var)")
    sub = parser.add_subparsers(dest="senders_command", required=True)
    sub.add_parser("list", help="print name, AE title and host of each sender")
    add = sub.add_parser("add", help="accept C-STORE from AET at HOST")
    add.add_argument("aet", help="the sender's calling AE title")
    add.add_argument("host", help="IP address or host name it connects from")
    add.add_argument("--name", help="identifier (default: the AE title in lowercase)")
    remove = sub.add_parser("remove", help="stop accepting a sender")
    remove.add_argument("name", help="the sender's identifier (see `list`)")
    parser.set_defaults(func=run)
    return parser
