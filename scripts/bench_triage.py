#!/usr/bin/env python3
"""Triage latency: from a study becoming stable to its label and to each destination's delivery.

A real node (Orthanc + sidecar, :class:`~tests.harness.EphemeralNode`) with a policy installed by
``neuroradix triage set`` and three destinations added by ``neuroradix destinations add``: an MLLP
listener that ACKs, a webhook receiver and a FHIR receiver (:mod:`tests.peers`, on loopback).

1. **Sequential**: ``--studies`` synthetic thorax studies (``--shape``) are stored one after another
   (each after the previous one's deliveries). Per study, from the ledger's timeline: stable (the
   job's creation, when Orthanc's STABLE_STUDY handed it off) -> labelled, and -> delivered per
   destination. Reported as p50 / p95.
2. **Outage** (``--outage`` seconds, 0 to skip): every destination refuses (MLLP connections
   dropped, HTTP 503) while ``--burst`` studies arrive; then they come back. Reported: the time
   from the return to the last delivery, and whether every delivery id arrived at least once and
   was acted on once (the receivers deduplicate on the id).

Prints a markdown table; ``--markdown FILE`` also writes it between ``<!-- bench_triage:begin -->``
and ``<!-- bench_triage:end -->`` (appended when absent).

Examples::

    python scripts/bench_triage.py                       # the issue's shape: 20 x 300x512x512, 10 min outage
    python scripts/bench_triage.py --studies 5 --shape 64 96 96 --outage 60 --burst 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "inference"), str(REPO)]

from tests.harness import EphemeralNode  # noqa: E402
from tests.peers import HttpPeer, MllpPeer, http_receiver, mllp_listener  # noqa: E402

from neuroradix.cli import main as neuroradix  # noqa: E402
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series  # noqa: E402
from neuroradix.samples.phantom import thorax_phantom  # noqa: E402

BEGIN, END = "<!-- bench_triage:begin -->", "<!-- bench_triage:end -->"
DESTINATIONS = ("ris", "hook", "fhir")
POLICY = """version: "bench-1"
mode: active
escalate_after_minutes: 600
max_wait_minutes: 600
rules:
  - name: severe emphysema
    level: priority
    measurement: "Total LAA-950"
    at_least: 10
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _timeline(node: EphemeralNode, study_uid: str) -> list[dict]:
    try:
        return node.api("GET", f"/v1/studies/{study_uid}/timeline")["events"]
    except OSError:
        return []


def _delivered(events: list[dict]) -> dict[str, float]:
    return {
        e["destination"]: _at(e["at"])
        for e in events
        if e["event"] == "delivery" and e.get("state") == "delivered" and e.get("kind") == "decision"
    }


def _send(node: EphemeralNode, work: Path, index: int, shape: tuple[int, int, int]) -> str:
    volume, _ = thorax_phantom(shape, emphysema=0.2 if index % 2 else 0.0, seed=index)
    datasets = volume_to_ct_series(volume, uid_seed=f"bench-triage-{os.getpid()}-{index}")
    node.storescu(write_series(datasets, work / f"s{index}"))
    return str(datasets[0].StudyInstanceUID)


def _wait_delivered(node: EphemeralNode, study_uid: str, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _timeline(node, study_uid)
        if set(_delivered(events)) >= set(DESTINATIONS):
            return events
        time.sleep(0.5)
    raise TimeoutError(f"study not delivered to every destination in {timeout} s\n{node.log_tail()}")


def sequential(node: EphemeralNode, work: Path, studies: int, shape: tuple[int, int, int]) -> dict[str, list[float]]:
    """Stable -> label and -> each delivery, per study, one study after another."""
    lat: dict[str, list[float]] = {"label": [], **{d: [] for d in DESTINATIONS}}
    for index in range(studies):
        uid = _send(node, work, index, shape)
        events = _wait_delivered(node, uid, timeout=1800)
        stable = min(_at(e["at"]) for e in events if e["event"] == "stable")
        labelled = [_at(e["at"]) for e in events if e["event"] == "labelled" and e.get("label") != "ai-pending"]
        lat["label"].append(labelled[-1] - stable)
        for name, at in _delivered(events).items():
            lat[name].append(at - stable)
        print(f"study {index + 1}/{studies}: label {lat['label'][-1]:.1f} s", flush=True)
    return lat


def outage(node: EphemeralNode, work: Path, mllp: MllpPeer, http: HttpPeer, burst: int, seconds: float, shape) -> dict:
    """Every destination down for ``seconds`` while ``burst`` studies arrive; then back."""
    mllp.mode, http.default = "drop", 503
    started = time.monotonic()
    uids = [_send(node, work, 1000 + i, shape) for i in range(burst)]
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    mllp.mode, http.default = "aa", 200
    back = time.time()
    last = max(max(_delivered(_wait_delivered(node, uid, timeout=1800)).values()) for uid in uids)
    ids_hl7 = [m for m in mllp.received if any(u in m for u in uids)]
    hooks = [json.loads(r.body)["delivery_id"] for r in http.received if r.path == "/hook"]
    acted = {d for d in hooks}  # a receiver acts once per delivery id
    return {
        "studies": burst,
        "outage_s": seconds,
        "after_return_s": round(last - back, 1),
        "hl7_attempts": len(ids_hl7),
        "webhook_ids_received": len(hooks),
        "webhook_ids_acted_once": len(acted),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--outage", type=float, default=600.0, help="seconds every destination is down (0: skip)")
    parser.add_argument("--burst", type=int, default=5, help="studies arriving during the outage")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp, mllp_listener() as mllp, http_receiver() as http:
        work = Path(tmp)
        root = work / "node"
        root.mkdir()
        (work / "policy.yaml").write_text(POLICY)
        secret = work / "hook.secret"
        secret.write_text("bench-webhook-secret")
        secret.chmod(0o600)
        neuroradix(["triage", "set", str(work / "policy.yaml"), "--var", str(root)])
        neuroradix(["destinations", "add", "ris", "--kind", "hl7v2", "--url", mllp.url, "--var", str(root)])
        hook = ["--url", http.url + "/hook", "--secret-file", str(secret), "--var", str(root)]
        neuroradix(["destinations", "add", "hook", "--kind", "webhook", *hook])
        neuroradix(["destinations", "add", "fhir", "--kind", "fhir", "--url", http.url + "/fhir", "--var", str(root)])
        node = EphemeralNode(
            root,
            stable_age=2,
            reconcile_seconds=3600,
            extra_env={
                "NEURORADIX_TRIAGE_POLL_SECONDS": "0.5",
                "NEURORADIX_NOTIFY_RETRY_MAX_SECONDS": "30",
                "NEURORADIX_JOB_TIMEOUT_SECONDS": "3600",
                "NEURORADIX_LEASE_SECONDS": "120",
            },
        ).start()
        try:
            lat = sequential(node, work, args.studies, shape)
            down = outage(node, work, mllp, http, args.burst, args.outage, shape) if args.outage > 0 else None
        finally:
            node.stop()
    machine = f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    lines = [
        BEGIN,
        f"### Triage latency ({dt.date.today()}, {machine}, lung analyzer, "
        f"{args.studies} studies of {'x'.join(map(str, shape))}, StableAge 2 s)",
        "",
        "| from stable to | p50 (s) | p95 (s) |",
        "| --- | --- | --- |",
    ]
    for name, values in lat.items():
        what = "label in Orthanc" if name == "label" else f"delivery: {name}"
        lines.append(f"| {what} | {statistics.median(values):.1f} | {_percentile(values, 0.95):.1f} |")
    if down is not None:
        lines += ["", "Outage: " + ", ".join(f"{k} {v}" for k, v in down.items())]
    lines.append(END)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        doc = args.markdown.read_text() if args.markdown.exists() else ""
        if BEGIN in doc and END in doc:
            doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip() + "\n\n" + text + "\n"
        args.markdown.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
