#!/usr/bin/env python3
"""Ledger throughput: a backlog of small jobs drained by 1, 2, 3 worker processes sharing one PostgreSQL ledger.

No pipeline: each worker process opens its own :class:`~neuroradix.jobs.ledger.Ledger`, then
claims a job, "works" for ``--work-seconds`` (a sleep, standing in for the analysis), records it
as succeeded, and claims the next, until the queue is empty. For each worker count the backlog
is enqueued in a fresh database; the clock starts when every worker has opened its ledger and
stops when the last one finds the queue empty. Checked afterwards: every job ran exactly once
(each id claimed by one worker, one attempt, state ``succeeded``).

Without ``--url`` a throw-away PostgreSQL cluster is started (``initdb`` + ``pg_ctl`` in a temp
dir, the same helper as the tests' fixture) and removed at the end. Prints a markdown table.

Examples::

    python scripts/bench_ledger.py
    python scripts/bench_ledger.py --jobs 200 --workers 1 2 4 8 --url postgresql+psycopg://postgres@db/neuroradix
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "inference"), str(REPO)]

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from tests.jobs.conftest import PostgresCluster, start_postgres_cluster  # noqa: E402

from neuroradix.jobs.ledger import JobState, Ledger  # noqa: E402


def _worker(url: str, name: str, work_seconds: float, ready: Any, out: Any) -> None:
    ledger = Ledger(url)
    ready.wait()
    claimed = []
    while (job := ledger.claim(name, lease_seconds=60)) is not None:
        time.sleep(work_seconds)
        ledger.succeed(
            job.id,
            name,
            input_series_uid=None,
            output_uids=[],
            timings={"work": work_seconds},
            details={"worker": name},
        )
        claimed.append(job.id)
    out.put((name, claimed, time.monotonic()))
    ledger.engine.dispose()


def _fresh_database(base_url: str, name: str, cluster: PostgresCluster | None) -> str:
    if cluster is not None:
        return cluster.create_database()
    url = sa.make_url(base_url)
    dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def run_once(url: str, jobs: int, workers: int, work_seconds: float) -> dict:
    """Drain ``jobs`` jobs with ``workers`` processes; returns the measurement and the exactly-once checks."""
    ledger = Ledger(url)
    for i in range(jobs):
        ledger.enqueue(f"2.25.{i + 1}", "bench")
    ledger.engine.dispose()  # nothing pooled crosses the fork
    context = multiprocessing.get_context("fork")
    ready, out = context.Barrier(workers + 1), context.Queue()
    processes = [
        context.Process(target=_worker, args=(url, f"bench-w{i}", work_seconds, ready, out)) for i in range(workers)
    ]
    for p in processes:
        p.start()
    ready.wait()
    started = time.monotonic()
    results = [out.get(timeout=600) for _ in processes]
    for p in processes:
        p.join(60)
    elapsed = max(done for _, _, done in results) - started
    claimed = [job_id for _, ids, _ in results for job_id in ids]
    final = Ledger(url)
    states = final.counts()
    attempts = {job.attempts for job in final.list(limit=jobs + 1)}
    final.engine.dispose()
    return {
        "workers": workers,
        "elapsed": elapsed,
        "jobs_per_s": jobs / elapsed,
        "ideal_jobs_per_s": workers / work_seconds,
        "overhead_ms": 1000 * (elapsed * workers - jobs * work_seconds) / jobs,
        "per_worker": sorted(len(ids) for _, ids, _ in results),
        "exactly_once": (
            len(claimed) == len(set(claimed)) == jobs and states == {JobState.SUCCEEDED.value: jobs} and attempts == {1}
        ),
        "exit_codes": [p.exitcode for p in processes],
    }


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        help="PostgreSQL server URL (a database per run is created there); " "default: a throw-away local cluster",
    )
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--work-seconds", type=float, default=0.2)
    args = parser.parse_args(argv)
    cluster = None if args.url else start_postgres_cluster()
    try:
        rows = [
            run_once(_fresh_database(args.url or "", f"bench_ledger_{n}", cluster), args.jobs, n, args.work_seconds)
            for n in args.workers
        ]
    finally:
        if cluster is not None:
            cluster.stop()
    print(
        f"{args.jobs} jobs of {args.work_seconds} s each, PostgreSQL ledger, {os.cpu_count()} CPUs ({_cpu_name()}), "
        f"load average before: {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| worker processes | drain time | jobs/s | ideal jobs/s | ledger overhead per job | jobs per worker | every job exactly once |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        print(
            f"| {r['workers']} | {r['elapsed']:.2f} s | {r['jobs_per_s']:.2f} | {r['ideal_jobs_per_s']:.1f} | "
            f"{r['overhead_ms']:.0f} ms | {r['per_worker']} | {'yes' if r['exactly_once'] else 'NO'} |"
        )
    return 0 if all(r["exactly_once"] and r["exit_codes"] == [0] * r["workers"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
