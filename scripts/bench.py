#!/usr/bin/env python3
"""``make bench``: stage timings and end-to-end latency of the node, written to docs/benchmarks.md.

Starts a throw-away node (real Orthanc + sidecar) in a temp dir, stores each study through
Orthanc's REST API, and reads the job's stage timings from the ledger. "After stable" is the
time from the study becoming stable (last instance + StableAge) to the results being stored.
Cases: the sample chest CT, and a 300-slice 512x512 synthetic thorax.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]  # tests.harness (the throw-away node) lives in the repository, not in the package
BEGIN, END = "<!-- bench:node:begin -->", "<!-- bench:node:end -->"
MODELS_BEGIN, MODELS_END = "<!-- bench:models-cpu:begin -->", "<!-- bench:models-cpu:end -->"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({__import__('os').cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cases(quick: bool):
    from neuroradix.imaging.ctseries import volume_to_ct_series
    from neuroradix.samples.phantom import thorax_phantom
    from neuroradix.samples.real_ct import sample_ct_volume

    volume, source = sample_ct_volume()
    yield (
        f"sample chest CT ({source.split(':')[0]}, {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]})",
        volume_to_ct_series(volume, uid_seed="bench-sample"),
    )
    if not quick:
        phantom, _ = thorax_phantom(shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7))
        yield "synthetic thorax 300x512x512", volume_to_ct_series(phantom, uid_seed="bench-300")


def run(quick: bool) -> list[dict]:
    from tests.harness import EphemeralNode

    rows = []
    with tempfile.TemporaryDirectory(prefix="neuroradix-bench-") as tmp:
        stable_age = 2
        node = EphemeralNode(
            Path(tmp),
            stable_age=stable_age,
            lease_seconds=120,
            extra_env={"NEURORADIX_RECONCILE_INTERVAL_SECONDS": "3600"},
        ).start()
        try:
            for name, datasets in cases(quick):
                study_uid = str(datasets[0].StudyInstanceUID)
                started = time.monotonic()
                node.upload(datasets)
                uploaded = time.monotonic()
                job = node.wait_job(study_uid, timeout=1800, states=("succeeded", "failed", "skipped"))
                done = time.monotonic()
                if job["state"] != "succeeded":
                    raise RuntimeError(f"{name}: job {job['state']}: {job['error_message']}")
                rows.append(
                    {
                        "case": name,
                        "slices": len(datasets),
                        "upload_s": uploaded - started,
                        "after_stable_s": done - uploaded - stable_age,
                        "timings": job["timings"],
                    }
                )
                logging.info("%s: %.1f s after stable", name, rows[-1]["after_stable_s"])
        finally:
            node.stop()
    return rows


def render(rows: list[dict]) -> str:
    stages = ["select", "fetch", "decode", "assemble", "analyze:lung-hu", "encode:lung-hu", "store", "total"]
    lines = [
        BEGIN,
        f"Measured {dt.date.today().isoformat()} on {cpu_name()}, no GPU; Python {platform.python_version()}. "
        "Real Orthanc 1.10.1 + sidecar on loopback, lung-hu analyzer, BINARY SEG (JPEG 2000), "
        "attention map on the CT grid. Seconds.",
        "",
        "| case | " + " | ".join(stages) + " | after stable |",
        "| --- | " + " | ".join("---" for _ in stages) + " | --- |",
    ]
    for r in rows:
        cells = [f"{r['timings'].get(s, 0.0):.1f}" for s in stages]
        lines.append(f"| {r['case']} | " + " | ".join(cells) + f" | **{r['after_stable_s']:.1f}** |")
    lines += [
        "",
        "`after stable`: from the study becoming stable (last instance + StableAge) to the results stored.",
        END,
    ]
    return "\n".join(lines)


def write(doc: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between ``begin`` and ``end`` (or append it)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def model_block() -> str:
    """The full-size model on this CPU, one 96^3 window (scripts/bench_models.py)."""
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_models.py")], check=True, capture_output=True, text=True
    )
    table = [line for line in run.stdout.splitlines() if line.startswith(("|", "Device", "Backbone"))]
    return "\n".join([MODELS_BEGIN, f"Measured {dt.date.today().isoformat()} on {cpu_name()}:", "", *table, MODELS_END])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="only the sample CT")
    parser.add_argument(
        "--models", action="store_true", help="also the full-size model on the CPU (one window, minutes)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("highdicom", "openjpeg", "pydicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    block = render(run(args.quick))
    print(block)
    write(args.out, block)
    if args.models:
        block = model_block()
        print(block)
        write(args.out, block, MODELS_BEGIN, MODELS_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
