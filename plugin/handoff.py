"""Hand stable studies from Orthanc to the Neuro Radix sidecar (stdlib only, no ``orthanc`` import).

Orthanc calls its change callback one event at a time, so the callback only puts the study's
Orthanc id on a queue (:meth:`Handoff.submit`). A daemon thread takes ids off the queue, looks at
the study through Orthanc's own REST API, decides whether it is eligible, and posts the
StudyInstanceUID to the sidecar, retrying with exponential backoff while the sidecar is down.

Storing the node's results fires ``STABLE_STUDY`` again for the same study. The thread
recognises that: the study's *source fingerprint* (the series not made by this node, with their
instance counts) has not changed since it was last handed off, so nothing is posted and nothing
loops. A changed fingerprint (more slices arrived after a first hand-off) is posted with
``rerun`` so the sidecar processes the completed study again. Every hand-off also carries the
fingerprint, so the sidecar reruns a finished job whose study has changed even when this plugin
was restarted in between and has forgotten it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

logger = logging.getLogger("neuroradix.plugin")


def short_hash(uid: str) -> str:
    """The same short tag the sidecar logs (sha256, 10 hex digits): never log identifiers."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:10]


@dataclass(frozen=True)
class HandoffConfig:
    """What the plugin needs; built from Orthanc's configuration and the environment."""

    sidecar_url: str
    sidecar_token: str
    own_manufacturer: str = "Neuro Radix"
    modalities: tuple = ()  # empty: hand off every study; the sidecar skips non-CT ones with a reason
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    timeout_seconds: float = 10.0
    max_queue: int = 10000
    remembered_studies: int = 10000

    def __post_init__(self) -> None:
        if not self.sidecar_url.startswith(("http://", "https://")):
            raise ValueError(f"sidecar_url must be an http(s) URL, got {self.sidecar_url!r}")
        if not self.sidecar_token:
            raise ValueError("sidecar_token is empty: set NEURORADIX_SIDECAR_PLUGIN_TOKEN for Orthanc")
        if self.retry_base_seconds <= 0 or self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("retry_base_seconds must be > 0 and <= retry_max_seconds")


@dataclass(frozen=True)
class Decision:
    """Whether a study goes to the sidecar, and why."""

    post: bool
    reason: str
    study_uid: str = ""
    fingerprint: str = ""
    rerun: bool = False


def source_items(series: list, own_manufacturer: str) -> tuple:
    """The series that were not made by this node, as ``((SeriesInstanceUID, n_instances), ...)``."""
    items = []
    for s in series:
        tags = s.get("MainDicomTags", {})
        if tags.get("Manufacturer", "") == own_manufacturer:
            continue
        items.append((str(tags.get("SeriesInstanceUID", s.get("ID", ""))), len(s.get("Instances", []))))
    return tuple(sorted(items))


def source_fingerprint(items: tuple) -> str:
    """Short hash of :func:`source_items`; the sidecar computes the same from QIDO
    (``neuroradix.pacs.series.source_fingerprint``) and reruns a job when they differ."""
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


class Handoff:
    """Queue + worker thread that posts eligible stable studies to the sidecar.

    Parameters
    ----------
    config:
        Where the sidecar is and how to retry.
    rest_get:
        ``rest_get(uri) -> str``: a GET on Orthanc's own REST API (``orthanc.RestApiGet`` in the
        plugin, a fake in tests). Only called from the worker thread, never in the callback.
    post:
        ``post(url, body, headers, timeout) -> int`` HTTP status; defaults to urllib.
    sleep:
        Injected for tests.
    """

    def __init__(
        self,
        config: HandoffConfig,
        rest_get: Callable[[str], str],
        post: Optional[Callable[[str, bytes, dict, float], int]] = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._rest_get = rest_get
        self._post = post or _urllib_post
        self._sleep = sleep
        self._queue: queue.Queue[Optional[str]] = queue.Queue(maxsize=config.max_queue)
        self._seen: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.posted = 0
        self.skipped = 0

    # --- called from Orthanc's callback: cheap and non-blocking ---------------------------
    def submit(self, orthanc_study_id: str) -> None:
        """Queue a stable study; never blocks (a full queue drops: the reconciler catches up)."""
        try:
            self._queue.put_nowait(orthanc_study_id)
        except queue.Full:
            logger.warning("hand-off queue full, dropping a stable-study event (the reconciler will catch up)")

    # --- thread --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="neuroradix-handoff", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                break
            try:
                self.process(item)
            except Exception:  # noqa: BLE001 - the thread must survive any one study
                logger.exception("hand-off of a study failed; the reconciler will retry it")

    def drain(self) -> None:
        """Process everything queued now, in this thread (for tests)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self.process(item)

    # --- logic ---------------------------------------------------------------------------
    def decide(self, orthanc_study_id: str) -> Decision:
        """Look at the study and decide whether to post it."""
        study = json.loads(self._rest_get(f"/studies/{orthanc_study_id}"))
        study_uid = study.get("MainDicomTags", {}).get("StudyInstanceUID", "")
        if not study_uid:
            return Decision(False, "study has no StudyInstanceUID")
        series = json.loads(self._rest_get(f"/studies/{orthanc_study_id}/series"))
        fingerprint_items = source_items(series, self.config.own_manufacturer)
        modalities = {
            s.get("MainDicomTags", {}).get("Modality", "")
            for s in series
            if s.get("MainDicomTags", {}).get("Manufacturer", "") != self.config.own_manufacturer
        }
        if not fingerprint_items:
            return Decision(False, "only this node's own output series", study_uid)
        if self.config.modalities and not modalities & set(self.config.modalities):
            return Decision(
                False, f"no {'/'.join(self.config.modalities)} series (has {sorted(modalities)})", study_uid
            )
        fingerprint = source_fingerprint(fingerprint_items)
        previous = self._seen.get(study_uid)
        if previous == fingerprint:
            return Decision(
                False, "source series unchanged since last hand-off (own results arrived)", study_uid, fingerprint
            )
        return Decision(True, "stable study", study_uid, fingerprint, rerun=previous is not None)

    def process(self, orthanc_study_id: str) -> Decision:
        decision = self.decide(orthanc_study_id)
        tag = short_hash(decision.study_uid) if decision.study_uid else "-"
        if not decision.post:
            self.skipped += 1
            logger.info("study %s not handed off: %s", tag, decision.reason)
            return decision
        body = json.dumps(
            {
                "study_uid": decision.study_uid,
                "trigger": "stable-study",
                "rerun": decision.rerun,
                "source_fingerprint": decision.fingerprint,
            }
        ).encode()
        self._post_with_retry(body, tag)
        self._remember(decision.study_uid, decision.fingerprint)
        self.posted += 1
        return decision

    def _remember(self, study_uid: str, fingerprint: str) -> None:
        self._seen[study_uid] = fingerprint
        self._seen.move_to_end(study_uid)
        while len(self._seen) > self.config.remembered_studies:
            self._seen.popitem(last=False)

    def _post_with_retry(self, body: bytes, tag: str) -> None:
        url = self.config.sidecar_url.rstrip("/") + "/v1/jobs"
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.config.sidecar_token}",
        }
        delay = self.config.retry_base_seconds
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                status = self._post(url, body, headers, self.config.timeout_seconds)
            except OSError as exc:  # connection refused, timeout, DNS ...
                status, detail = 0, str(exc)
            else:
                detail = f"HTTP {status}"
            if 200 <= status < 300:
                logger.info("study %s handed off to the sidecar (attempt %d)", tag, attempt)
                return
            if 400 <= status < 500 and status not in (408, 429):
                logger.error("sidecar refused study %s: %s; not retrying", tag, detail)
                return
            logger.warning("sidecar not reachable for study %s (%s); retrying in %.0f s", tag, detail, delay)
            self._sleep(delay)
            delay = min(delay * 2, self.config.retry_max_seconds)


def _urllib_post(url: str, body: bytes, headers: dict, timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
