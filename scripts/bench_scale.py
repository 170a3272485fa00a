#!/usr/bin/env python3
"""Node throughput: a backlog of small studies drained by 1, 2, 3 worker processes on one PostgreSQL ledger.

A real node (Orthanc + sidecar, :class:`~tests.harness.EphemeralNode`) with its ledger
in a throw-away PostgreSQL cluster (:mod:`neuroradix.deploy.postgres`). For each worker count the
sidecar restarts with ``NEURORADIX_WORKERS=n`` on a fresh ledger database, then ``--studies``
synthetic thorax studies (``--shape``) are stored in Orthanc at once; each becomes a job when
Orthanc calls it stable. Measured from the ledger: studies per hour (jobs / time from the first
job's creation to the last one's end) and the latency of each study from stable (job created)
to stored (job succeeded), p50 and p95. Every job must succeed.

Prints a markdown table; ``--markdown FILE`` also writes it into FILE between
``<!-- bench_scale:begin -->`` and ``<!-- bench_scale:end -->`` (appended when absent).

Examples::

    python scripts/bench_scale.py
    python scripts/bench_scale.py --studies 40 --workers 1 2 3 --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "inference"), str(REPO)]

from tests.harness import EphemeralNode  # noqa: E402

from neuroradix.deploy.postgres import PostgresCluster, throwaway_cluster  # noqa: E402
from neuroradix.imaging.ctseries import volume_to_ct_series  # noqa: E402
from neuroradix.jobs.metrics import multiprocess_dir  # noqa: E402
from neuroradix.samples.phantom import thorax_phantom  # noqa: E402

BEGIN, END = "<!-- bench_scale:begin -->", "<!-- bench_scale:end -->"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_once(node: EphemeralNode, url: str, workers: int, studies: int, shape: tuple[int, int, int]) -> dict:
    """Restart the sidecar with ``workers`` workers on ledger ``url``, store ``studies`` studies, measure."""
    node.stop_sidecar()
    node.env.update({"NEURORADIX_WORKERS": str(workers), "NEURORADIX_LEDGER_URL": url})
    node.start_sidecar()
    # The clock starts once every worker polls the ledger (their imports take a while): each one's
    # first claim writes its heartbeat gauge file (multiprocess metrics, emptied at sidecar start).
    deadline = time.monotonic() + 600
    while len(list(multiprocess_dir(node.root).glob("gauge_max_*.db"))) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} worker(s) did not start:\n{node.log_tail()}")
        time.sleep(0.5)
    uids = []
    for n in range(studies):
        volume, _ = thorax_phantom(shape=shape, spacing=(8.0, 5.0, 5.0), seed=n)
        datasets = volume_to_ct_series(volume, uid_seed=f"bench-scale-{workers}-{n}-{os.getpid()}")
        uids.append(str(datasets[0].StudyInstanceUID))
        node.upload(datasets)
    jobs = [node.wait_job(uid, timeout=3600) for uid in uids]
    failed = [j for j in jobs if j["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not succeed: {failed[:2]}")
    created = [dt.datetime.fromisoformat(j["created_at"]) for j in jobs]
    finished = [dt.datetime.fromisoformat(j["finished_at"]) for j in jobs]
    latency = [(f - c).total_seconds() for c, f in zip(created, finished)]
    span = (max(finished) - min(created)).total_seconds()
    return {
        "workers": workers,
        "studies": studies,
        "seconds": span,
        "per_hour": studies / span * 3600,
        "p50": statistics.median(latency),
        "p95": _percentile(latency, 0.95),
        "job_p50": statistics.median(j["timings"].get("total", 0.0) for j in jobs),
    }


def table(rows: list[dict], shape: tuple[int, int, int]) -> str:
    lines = [
        f"Node throughput, {rows[0]['studies']} synthetic studies of {shape[0]}x{shape[1]}x{shape[2]} voxels "
        f"(analyzer lung-hu), one PostgreSQL ledger, real Orthanc; {platform.node()} "
        f"({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}):",
        "",
        "| worker processes | studies/hour | backlog drained in | latency stable→stored p50 | p95 | one job p50 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['per_hour']:.0f} | {r['seconds']:.0f} s | {r['p50']:.1f} s | {r['p95']:.1f} s "
            f"| {r['job_p50']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + "\n## Scale-out\n\n" + block
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 48, 48], help="slices rows columns")
    parser.add_argument("--lease-seconds", type=float, default=60.0, help="job lease of the workers")
    parser.add_argument("--markdown", type=Path, help="write the table into this markdown file (its own section)")
    args = parser.parse_args()
    shape = (args.shape[0], args.shape[1], args.shape[2])
    cluster = throwaway_cluster(PostgresCluster)
    node = EphemeralNode(
        Path(tempfile.mkdtemp(prefix="bench-scale-")),
        reconcile_seconds=3600,
        lease_seconds=args.lease_seconds,  # well above one job: a lease lost under load wastes a whole job
        extra_env={"NEURORADIX_LEDGER_URL": cluster.create_database("bench_scale_0")},
    )
    rows = []
    try:
        node.start()
        for n in args.workers:
            url = cluster.create_database(f"bench_scale_{n}")
            row = run_once(node, url, n, args.studies, shape)
            print(row, flush=True)
            rows.append(row)
    finally:
        node.stop()
        cluster.remove()
        shutil.rmtree(node.root, ignore_errors=True)
    text = table(rows, shape)
    print(text)
    if args.markdown:
        write_section(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
