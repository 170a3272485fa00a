#!/usr/bin/env python3
"""Peak memory and time of a thin-slice chest CT (800 slices of 512x512) through ``neuroradix analyze``.

The study is built from the real thorax CT (``thorax_ct_1.5mm.nii.gz``, see
:mod:`neuroradix.samples.real_ct`): each slice padded with air to a square and resampled to
``--matrix`` pixels, then interpolated linearly along the body axis to ``--slices`` slices written
with ``--slice-mm`` spacing (default 0.5 mm: with 800 slices the anatomy is stretched ~1.4x along
the body axis, which a memory measurement does not mind; ``--slice-mm 0`` keeps the true extent,
about 0.36 mm). It is written as a DICOM CT series (Explicit VR Little Endian) in a temp folder,
nothing in git.

Two measurements, each in a fresh child process (``ru_maxrss`` is per process):

``pipeline``
    What ``neuroradix analyze DIR --out OUT`` does with the default analyzers: read the folder,
    select, assemble, decode, analyze, encode (SEG, Parametric Map, SR, PDF), write. Stage times
    and the process's peak RSS after each stage. Each slice's pixel data is dropped once decoded,
    as the worker does with what it fetched from the PACS (``--keep-pixels``: kept, as a caller
    that owns the datasets may ask).
``analyzer``
    The default analyzer alone (``LungAnalyzer.analyze``) on the assembled volume: RSS before, peak
    RSS, time, and the densitometry numbers.
``pacs`` (with ``--pacs``)
    The node's own path: a throw-away node (real Orthanc + sidecar, :mod:`tests.harness`),
    the series stored in Orthanc, the job run by the worker (QIDO, WADO-RS metadata and fetch,
    analysis, STOW-RS of the results). Reports the job's stage times and the peak RSS of the
    sidecar's processes, sampled from ``/proc`` (``VmHWM``) every 0.5 s.

Examples::

    python scripts/bench_thin_slice.py                  # 800 x 512 x 512, 0.5 mm
    python scripts/bench_thin_slice.py --slices 1000 --keep /tmp/thin
    python scripts/bench_thin_slice.py --keep /tmp/thin --only pacs --pacs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "inference"), str(REPO)]  # and tests.harness (the throw-away node)

from neuroradix.analyzers.registry import build_analyzers  # noqa: E402
from neuroradix.config import PipelineSettings  # noqa: E402
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series  # noqa: E402
from neuroradix.imaging.nifti import nifti_to_volume  # noqa: E402
from neuroradix.pipeline.run import StageTimer, load_volume, process_study  # noqa: E402
from neuroradix.pipeline.sinks import FolderSink  # noqa: E402
from neuroradix.pipeline.sources import LocalSource, read_folder  # noqa: E402
from neuroradix.samples.real_ct import THORAX, real_ct_path  # noqa: E402
from neuroradix.types import Volume  # noqa: E402

GB = 1024**3


def peak_rss_gb() -> float:
    """This process's peak resident set size so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def build_study(out_dir: Path, slices: int, matrix: int, slice_mm: float) -> dict:
    """Write the thin-slice series into ``out_dir``; returns its description."""
    source = nifti_to_volume(real_ct_path(THORAX))
    array = np.asarray(source.array, dtype=np.float32)
    n, rows, cols = array.shape
    side = max(rows, cols)
    pad = (
        (0, 0),
        ((side - rows) // 2, side - rows - (side - rows) // 2),
        ((side - cols) // 2, side - cols - (side - cols) // 2),
    )
    square = np.pad(array, pad, constant_values=-1024.0)
    zoom = matrix / side
    planes = np.stack([ndimage.zoom(square[k], zoom, order=1) for k in range(n)])
    positions = np.linspace(0.0, n - 1.0, slices)
    lower = np.clip(np.floor(positions).astype(int), 0, n - 2)
    weight = (positions - lower).astype(np.float32)[:, None, None]
    stack = np.empty((slices, matrix, matrix), dtype=np.int16)
    for start in range(0, slices, 64):
        part = slice(start, start + 64)
        mixed = planes[lower[part]] * (1 - weight[part]) + planes[lower[part] + 1] * weight[part]
        stack[part] = np.rint(mixed).astype(np.int16)
    del planes
    spacing_src = source.spacing
    in_plane = float(spacing_src[1]) * side / matrix
    step = slice_mm if slice_mm > 0 else float(spacing_src[0]) * (n - 1) / (slices - 1)
    directions = source.affine[:3, :3] / np.linalg.norm(source.affine[:3, :3], axis=0)
    affine = np.eye(4)
    affine[:3, 0] = directions[:, 0] * step
    affine[:3, 1] = directions[:, 1] * in_plane
    affine[:3, 2] = directions[:, 2] * in_plane
    affine[:3, 3] = source.affine[:3, 3] - affine[:3, 1] * pad[1][0] / zoom - affine[:3, 2] * pad[2][0] / zoom
    volume = Volume(stack, affine)
    datasets = volume_to_ct_series(
        volume, uid_seed=f"bench-thin-{slices}-{matrix}-{step:.3f}", series_description="Thin-slice chest CT (bench)"
    )
    write_series(datasets, out_dir)
    return {"shape": list(stack.shape), "spacing_mm": [round(step, 3), round(in_plane, 3), round(in_plane, 3)]}


class RssTimer(StageTimer):
    """A :class:`StageTimer` that also notes the process's peak RSS at the end of each stage."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_gb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with super().stage(name):
            yield
        self.peak_gb[name] = round(peak_rss_gb(), 2)


def measure_pipeline(folder: Path, out: Path, release: bool) -> dict:
    """``neuroradix analyze`` in this process, default settings: stage seconds and peak RSS."""
    settings = PipelineSettings()
    started = time.perf_counter()
    datasets = read_folder(folder)
    read_s, read_gb = time.perf_counter() - started, peak_rss_gb()
    timer = RssTimer()
    source = LocalSource(datasets, release_pixels=release)
    del datasets
    process_study(source, [FolderSink(out)], settings, build_analyzers(settings), timer)
    return {
        "analyzers": list(settings.analyzers),
        "pixels_released_once_decoded": release,
        "read_folder": {"seconds": round(read_s, 2), "peak_rss_gb": round(read_gb, 2)},
        "stages": {k: {"seconds": round(v, 2), "peak_rss_gb": timer.peak_gb.get(k)} for k, v in timer.seconds.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "results": json.loads((out / "results.json").read_text())["results"],
    }


def measure_analyzer(folder: Path) -> dict:
    """The default analyzer alone on the assembled volume: RSS before and peak, seconds."""
    settings = PipelineSettings()
    source = LocalSource(read_folder(folder), release_pixels=True)
    analyzers = build_analyzers(settings)
    series_uid = source.series()[0].series_uid
    assembled = load_volume(source.datasets(series_uid), settings, StageTimer(), release=True)
    del source
    before = peak_rss_gb()
    started = time.perf_counter()
    result = analyzers[0].analyze(assembled.volume)
    return {
        "analyzer": analyzers[0].info.name,
        "volume": {"shape": list(assembled.volume.shape), "dtype": str(assembled.volume.array.dtype)},
        "rss_before_gb": round(before, 2),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "measurements": {
            m.name + (f" ({m.site.meaning})" if m.site else ""): round(m.value, 3) for m in result.measurements
        },
    }


def _tree(root: int) -> set[int]:
    """``root`` and its descendants, from ``/proc``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _hwm_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return 0.0


def measure_pacs(folder: Path) -> dict:
    """The study through a throw-away node (Orthanc + sidecar): job timings and the sidecar's peak RSS."""
    from tests.harness import EphemeralNode  # noqa: PLC0415 - only this mode needs a node

    datasets = read_folder(folder)
    study_uid = str(datasets[0].StudyInstanceUID)
    with tempfile.TemporaryDirectory(prefix="nrx-thin-node-") as tmp:
        node = EphemeralNode(
            Path(tmp), lease_seconds=300, extra_env={"NEURORADIX_RECONCILE_INTERVAL_SECONDS": "3600"}
        ).start()
        try:
            started = time.perf_counter()
            node.upload(datasets)
            del datasets
            uploaded = time.perf_counter()
            peaks: dict[int, float] = {}
            job: dict = {}
            while not job or job["state"] not in ("succeeded", "failed", "skipped"):
                for pid in _tree(node.sidecar.pid):
                    peaks[pid] = max(peaks.get(pid, 0.0), _hwm_gb(pid))
                jobs = node.jobs(study_uid)
                job = jobs[0] if jobs else {}
                if time.perf_counter() - uploaded > 3600:
                    raise TimeoutError(f"no result in an hour: {job}")
                time.sleep(0.5)
            return {
                "state": job["state"],
                "error": job.get("error_message"),
                "upload_seconds": round(uploaded - started, 1),
                "job_seconds_after_upload": round(time.perf_counter() - uploaded, 1),
                "stages": {k: round(v, 2) for k, v in (job.get("timings") or {}).items()},
                "peak_rss_gb_by_process": sorted((round(v, 2) for v in peaks.values()), reverse=True)[:4],
                "peak_rss_gb": round(max(peaks.values(), default=0.0), 2),
            }
        finally:
            node.stop()


def _child(mode: str, folder: Path, out: Path, keep_pixels: bool) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--keep", str(folder), "--out", str(out)]
    command += ["--keep-pixels"] if keep_pixels else []
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-4000:], "seconds": round(time.perf_counter() - started, 1)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=800)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slice-mm", type=float, default=0.5, help="slice spacing; 0: the true extent")
    parser.add_argument("--keep", type=Path, help="build the study here (reused when it holds files) and keep it")
    parser.add_argument("--out", type=Path, help="results folder (default: a temp folder)")
    parser.add_argument("--only", choices=("pipeline", "analyzer", "pacs"), help="run one measurement")
    parser.add_argument("--pacs", action="store_true", help="also run the study through a real Orthanc + sidecar")
    parser.add_argument("--keep-pixels", action="store_true", help="pipeline: keep each slice's pixel data")
    parser.add_argument("--child", choices=("pipeline", "analyzer", "pacs"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "pipeline":
            result = measure_pipeline(args.keep, args.out, release=not args.keep_pixels)
        elif args.child == "pacs":
            result = measure_pacs(args.keep)
        else:
            result = measure_analyzer(args.keep)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="nrx-thin-") as tmp:
        folder = args.keep or Path(tmp) / "study"
        report: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
        if not (folder.is_dir() and any(folder.iterdir())):
            started = time.perf_counter()
            report["study"] = build_study(folder, args.slices, args.matrix, args.slice_mm)
            report["study"]["build_seconds"] = round(time.perf_counter() - started, 1)
        for mode in ("pipeline", "analyzer", "pacs"):
            if args.only == mode or (args.only is None and (mode != "pacs" or args.pacs)):
                out = args.out or Path(tmp) / f"out-{mode}"
                report[mode] = _child(mode, folder, out, args.keep_pixels)
                print(json.dumps({mode: report[mode]}), file=sys.stderr, flush=True)  # partial results survive
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
