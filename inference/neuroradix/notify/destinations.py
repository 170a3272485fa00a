"""Where notifications go: destinations kept as data (``var/destinations.json``, mode 0600).

::

    {"destinations": [
      {"name": "ris", "kind": "hl7v2", "url": "mllp://10.0.0.5:2575", "min_level": "routine",
       "secret_file": null},
      {"name": "hook", "kind": "webhook", "url": "https://example.org/nrx", "min_level": "priority",
       "secret_file": "/etc/neuroradix/hook.secret"}]}

``neuroradix destinations add|list|remove`` edits the file (atomically, under a lock); a running
node's :class:`DestinationStore` sees the change at its next read (it compares the file's inode,
mtime and size), so changes apply without a restart.

Which notices a destination gets (:meth:`Destination.wants`):

- a decided level (``routine`` < ``priority`` < ``urgent``) when its rank is at least the
  destination's ``min_level`` (default ``routine``: every decided level); an escalation carries its
  study's level and follows the same rule;
- ``pending`` and ``not-analyzed`` **always**, whatever ``min_level`` says and whatever the notice
  kind (a decision that the study could not be analyzed, or a maximum-wait notice): ``min_level``
  filters what the AI flags, and a study the AI could not judge must never wait unseen.

Secrets: a webhook destination needs ``secret_file`` (the HMAC key); a FHIR destination may name
one (sent as ``Authorization: Bearer <secret>``); an HL7 v2 destination takes none (MLLP has no
authentication: use a VPN or a TLS tunnel). The file is read at every send, so a rotated secret
applies at once; it must not be readable or writable by others (mode ``0600`` or ``0640``);
surrounding white space (a trailing newline) is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional  # List: the class's own `list` method shadows the builtin there

from neuroradix.errors import ConfigError, NotificationError
from neuroradix.notify.fhir import build_bundle, send_fhir
from neuroradix.notify.hl7v2 import build_oru, parse_mllp_url, send_mllp
from neuroradix.notify.http import check_http_url
from neuroradix.notify.message import RANKED_LEVELS, UNDECIDED_LEVELS, Notification, level_rank
from neuroradix.notify.result import DeliveryResult
from neuroradix.notify.webhook import send_webhook, webhook_body
from neuroradix.uids import short_hash

logger = logging.getLogger(__name__)

DESTINATIONS_FILE = "destinations.json"
KINDS = ("hl7v2", "fhir", "webhook")
_NAME = re.compile(r"[a-z0-9_-]{1,40}")
_FIELDS = ("name", "kind", "url", "min_level", "secret_file")


@dataclass(frozen=True)
class Destination:
    """One receiver of notifications.

    Parameters
    ----------
    name
        Identifier: 1-40 of ``a-z 0-9 - _``.
    kind
        ``"hl7v2"``, ``"fhir"`` or ``"webhook"``.
    url
        ``mllp://host:port`` for hl7v2; ``http(s)://...`` for fhir (the base URL) and webhook.
    min_level
        The lowest decided level sent (``routine``, ``priority`` or ``urgent``); see the module
        docstring for ``pending`` and ``not-analyzed``.
    secret_file
        Absolute path of the secret: required for webhook, optional for fhir, refused for hl7v2.
    """

    name: str
    kind: str
    url: str
    min_level: str = "routine"
    secret_file: Optional[str] = None

    def __post_init__(self) -> None:
        for field_name in ("name", "kind", "url", "min_level"):
            if not isinstance(getattr(self, field_name), str):
                raise TypeError(f"Destination.{field_name} must be a str")
        if isinstance(self.secret_file, Path):
            object.__setattr__(self, "secret_file", str(self.secret_file))
        if self.secret_file is not None and not isinstance(self.secret_file, str):
            raise TypeError("Destination.secret_file must be a path (str) or None")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"Destination.name must be 1-40 of a-z 0-9 - _, not {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"Destination.kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.min_level not in RANKED_LEVELS:
            raise ValueError(f"Destination.min_level must be one of {', '.join(RANKED_LEVELS)}, not {self.min_level!r}")
        if self.kind == "hl7v2":
            parse_mllp_url(self.url)
            if self.secret_file is not None:
                raise ValueError("Destination.secret_file: an hl7v2 destination takes no secret (MLLP has none)")
        else:
            check_http_url(self.url)
        if self.kind == "webhook" and not self.secret_file:
            raise ValueError("Destination.secret_file is required for a webhook (the HMAC key)")
        if self.secret_file is not None and not os.path.isabs(self.secret_file):
            raise ValueError(f"Destination.secret_file must be an absolute path, not {self.secret_file!r}")

    def wants(self, level: str, kind: str = "decision") -> bool:
        """Whether a notice about a study at ``level`` goes to this destination.

        Parameters
        ----------
        level
            The study's level (one of ``urgent``, ``priority``, ``routine``, ``pending``,
            ``not-analyzed``).
        kind
            The notice kind (``decision``, ``escalation``, ``max-wait``); the rule is the same for
            all: undecided levels always, decided ones from ``min_level`` up.
        """
        if kind not in ("decision", "escalation", "max-wait"):
            raise ValueError(f"kind must be decision, escalation or max-wait, not {kind!r}")
        if level in UNDECIDED_LEVELS:
            return True
        return level_rank(level) >= level_rank(self.min_level)

    def to_dict(self) -> dict[str, Any]:
        """The destination as stored in ``destinations.json``."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> Destination:
        """Build from :meth:`to_dict`'s form (unknown keys refused)."""
        if not isinstance(data, dict):
            raise TypeError("a destination must be a JSON object")
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown destination keys: {sorted(unknown)}")
        return cls(**data)


def destinations_path(var_dir: Path) -> Path:
    """``VAR/destinations.json``."""
    return Path(var_dir) / DESTINATIONS_FILE


def check_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The secret in ``path`` (stripped of surrounding white space).

    Parameters
    ----------
    path
        The secret file.

    Raises
    ------
    ConfigError
        The file is missing, unreadable, readable or writable by others, not a regular file, or empty.
    """
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"secret file {path} is not a regular file")
            if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
                raise ConfigError(f"secret file {path} is readable or writable by others: chmod 600 it")
            secret = handle.read(65536).strip()
    except OSError as exc:
        raise ConfigError(f"secret file {path} cannot be read: {exc.strerror}") from exc
    if not secret:
        raise ConfigError(f"secret file {path} is empty")
    return secret


class DestinationStore:
    """The destinations file, re-read whenever it changes.

    Parameters
    ----------
    path
        ``VAR/destinations.json`` (need not exist: no destinations).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: Optional[tuple[int, int, int]] = None
        self._items: tuple[Destination, ...] = ()
        self._loaded = False

    def _stat(self) -> Optional[tuple[int, int, int]]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _read(self) -> tuple[Destination, ...]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path} cannot be read as JSON: {exc}") from exc
        try:
            if not isinstance(data, dict) or set(data) != {"destinations"}:
                raise ValueError('the file must be {"destinations": [...]}')
            items = tuple(Destination.from_dict(item) for item in data["destinations"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path}: {exc}") from exc
        names = [d.name for d in items]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.path}: a destination name appears twice")
        return items

    def list(self) -> tuple[Destination, ...]:
        """The destinations now in the file (re-read when it changed since the last call).

        Raises
        ------
        ConfigError
            The file is invalid on the first read. On a later read the last valid list is kept
            and the problem logged (a running node keeps delivering while a person fixes the file).
        """
        with self._lock:
            stamp = self._stat()
            if self._loaded and stamp == self._stamp:
                return self._items
            try:
                items = self._read()
            except ConfigError:
                if not self._loaded:
                    raise
                logger.exception("destinations file changed but is invalid; keeping the previous destinations")
                self._stamp = stamp
                return self._items
            self._items, self._stamp, self._loaded = items, stamp, True
            return items

    def get(self, name: str) -> Destination:
        """The destination called ``name``; KeyError when there is none."""
        for item in self.list():
            if item.name == name:
                return item
        raise KeyError(name)

    @contextlib.contextmanager
    def _editing(self) -> Iterator[List[Destination]]:
        """Hold the lock file, yield the current list to edit in place, then write it atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            items = list(self._read())
            yield items
            self._write(items)
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, items: List[Destination]) -> None:
        text = json.dumps({"destinations": [d.to_dict() for d in items]}, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".destinations-", suffix=".tmp", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def add(self, destination: Destination, *, replace: bool = False) -> None:
        """Add ``destination`` (or replace the one of that name when ``replace``).

        Raises
        ------
        ValueError
            A destination of that name exists and ``replace`` is false.
        """
        with self._editing() as items:
            existing = [i for i, d in enumerate(items) if d.name == destination.name]
            if existing and not replace:
                raise ValueError(f"a destination called {destination.name!r} exists (remove it first)")
            if existing:
                items[existing[0]] = destination
            else:
                items.append(destination)

    def remove(self, name: str) -> None:
        """Remove the destination ``name``; KeyError when there is none."""
        with self._editing() as items:
            index = next((i for i, d in enumerate(items) if d.name == name), None)
            if index is None:
                raise KeyError(name)
            del items[index]


def deliver(destination: Destination, notification: Notification, *, timeout: float) -> DeliveryResult:
    """Build the channel's message for ``notification`` and send it once to ``destination``.

    Never raises for a receiver's or the network's trouble: the result says whether to retry.
    A message that cannot be built (:class:`~neuroradix.errors.NotificationError`) is permanent;
    an unreadable or unsafe secret file is retried (it heals when a person fixes the file).

    Parameters
    ----------
    destination
        Where to send.
    notification
        What to send.
    timeout
        Seconds for the exchange (see each channel's ``send_*``).
    """
    try:
        if destination.kind == "hl7v2":
            result = send_mllp(destination.url, build_oru(notification), timeout=timeout)
        elif destination.kind == "fhir":
            bundle = build_bundle(notification)
            auth = None
            if destination.secret_file:
                auth = "Bearer " + check_secret_file(destination.secret_file).decode("ascii")
            result = send_fhir(destination.url, bundle, timeout=timeout, auth_header=auth)
        else:
            secret = check_secret_file(destination.secret_file or "")
            body = webhook_body(notification)
            result = send_webhook(
                destination.url, body, secret=secret, delivery_id=notification.delivery_id, timeout=timeout
            )
    except NotificationError as exc:
        result = DeliveryResult.dead(f"message not built: {exc}")
    except (ConfigError, UnicodeDecodeError) as exc:
        result = DeliveryResult.retry(f"secret file: {exc}")
    logger.info(
        "delivery %s of study %s to %s: %s",
        notification.delivery_id,
        short_hash(notification.study_uid),
        destination.name,
        result.detail,
    )
    return result
