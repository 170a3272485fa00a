"""Measure output sizes for a realistic grid (run by hand; the numbers go into
docs/dicom-conformance.md).

    PYTHONPATH=inference:training python tests/writers/measure_sizes.py [slices] [size]

Builds a synthetic chest CT (body ellipse, two lungs and an airway, 300 x 512 x 512 by
default; the lungs and airway occupy the middle 220 slices), a label map with the
lung-hu-4 scheme, and a 4x coarser attention map, then writes every object and prints
sizes and build times.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from neuroradix.config import PmapGrid, SegType
from neuroradix.types import AttentionMap, Code, Volume
from neuroradix.writers.common import OutputContext
from neuroradix.writers.pdf import build_pdf
from neuroradix.writers.pmap import build_pmaps
from neuroradix.writers.seg import build_seg
from neuroradix.writers.sr import build_sr
from tests.writers.writer_fixtures import make_ct_series, make_result


def synthetic_chest(n: int, size: int):
    spacing = (1.0, 0.7, 0.7)
    aff = np.eye(4)
    aff[:3, 0] = (0, 0, -spacing[0])
    aff[:3, 1] = (0, spacing[1], 0)
    aff[:3, 2] = (spacing[2], 0, 0)
    aff[:3, 3] = (-size * spacing[2] / 2, -size * spacing[1] / 2, 0)
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    c = size / 2
    body2d = ((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.33 * size)) ** 2 <= 1
    hu = np.full((n, size, size), -1000, dtype=np.int16)
    labels = np.zeros((n, size, size), dtype=np.uint8)
    first, last = int(0.13 * n), int(0.87 * n)
    for k in range(n):
        hu[k][body2d] = 40
        labels[k][body2d] = 1
        if first <= k < last:
            t = (k - first) / max(last - first - 1, 1)
            r = 0.09 * size * (0.5 + 0.7 * np.sin(np.pi * t))
            left = ((x - (c + 0.2 * size)) / r) ** 2 + ((y - c) / (1.6 * r)) ** 2 <= 1
            right = ((x - (c - 0.2 * size)) / r) ** 2 + ((y - c) / (1.6 * r)) ** 2 <= 1
            airway = (x - c) ** 2 + (y - (c - 0.12 * size)) ** 2 <= (0.02 * size) ** 2
            hu[k][left | right] = -850
            hu[k][airway] = -1000
            labels[k][left], labels[k][right], labels[k][airway] = 2, 3, 4
    return hu, labels, aff


def ct_series_for(hu: np.ndarray, aff: np.ndarray):
    """Metadata-only CT datasets on the grid of ``aff`` (no pixel data is needed)."""
    template = make_ct_series()[0]
    del template.PixelData
    out = []
    for k in range(hu.shape[0]):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.3.{k + 1}"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.ImagePositionPatient = [float(v) for v in aff[:3, 3] + k * aff[:3, 0]]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(aff[1, 1]), float(aff[0, 2])]
        ds.SliceThickness = abs(float(aff[2, 0]))
        out.append(ds)
    return out


def main(n: int = 300, size: int = 512) -> None:
    hu, labels, aff = synthetic_chest(n, size)
    att_aff = aff.copy()
    att_aff[:3, :3] *= 4
    att_aff[:3, 3] = aff[:3, 3] + 1.5 * aff[:3, :3].sum(axis=1)
    s, r, c = np.meshgrid(np.arange(n // 4), np.arange(size // 4), np.arange(size // 4), indexing="ij")
    att = np.exp(-(((s - n / 8) / 8) ** 2 + ((r - size / 8) / 10) ** 2 + ((c - size * 0.7 / 4) / 8) ** 2))
    amap = AttentionMap(
        "abnormal",
        att.astype(np.float32),
        att_aff,
        Code("AttentionWeight", "99NRX", "Attention weight"),
        Code("1", "UCUM", "no units"),
    )
    result = replace(make_result(), labels=labels, attention=(amap,))
    ctx = OutputContext(
        source=ct_series_for(hu, aff),
        volume=Volume(hu.astype(np.float32), aff),
        pipeline_version="p1",
        software_version="0.1.0",
    )
    print(
        f"grid {n} x {size} x {size}; label voxels: "
        + ", ".join(f"{lab}: {(labels == lab).sum()}" for lab in range(1, 5))
        + f"; attention {amap.array.shape}"
    )
    out = Path(tempfile.mkdtemp())
    cases = [
        ("SEG BINARY, JPEG 2000 Lossless", lambda: build_seg(result, ctx)),
        ("SEG BINARY, uncompressed", lambda: build_seg(result, replace(ctx, seg_compress=False))),
        ("SEG LABELMAP, RLE Lossless", lambda: build_seg(result, replace(ctx, seg_type=SegType.LABELMAP))),
        ("PMAP on attention grid, uint16", lambda: build_pmaps(result, ctx)[0]),
        ("PMAP on CT grid, uint16", lambda: build_pmaps(result, replace(ctx, pmap_grid=PmapGrid.SOURCE))[0]),
    ]

    def measure(name, make, path):
        t0 = time.perf_counter()
        ds = make()
        seconds = time.perf_counter() - t0
        ds.save_as(path, enforce_file_format=True)
        frames = getattr(ds, "NumberOfFrames", None)
        print(
            f"| {name} | {f'{frames} frames' if frames else '-'} | {path.stat().st_size / 1e6:.2f} MB | {seconds:.1f} s |"
        )
        return ds

    built = {name: measure(name, make, out / f"{i}.dcm") for i, (name, make) in enumerate(cases)}
    seg, pmap = built["SEG BINARY, JPEG 2000 Lossless"], built["PMAP on attention grid, uint16"]
    measure("SR", lambda: build_sr(result, ctx, seg, [pmap]), out / "SR.dcm")
    measure("PDF", lambda: build_pdf(result, ctx, seg), out / "PDF.dcm")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
