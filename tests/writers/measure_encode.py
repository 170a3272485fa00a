"""Time the DICOM writers on a CT-sized study (run by hand; the numbers go into
docs/dicom-conformance.md).

    PYTHONPATH=inference:training:tests/writers python tests/writers/measure_encode.py [repeats]

Synthetic thorax 300 x 512 x 512 (1.0 x 0.7 x 0.7 mm), written as a CT series, assembled
and analysed by the lung HU analyzer; the attention map goes onto the CT grid
(``pmap_grid=PmapGrid.SOURCE``, what the node writes for OHIF). For each writer it prints the
first call (which also pays highdicom's one-off loading of the standard's tables, about
1 s) and the best of ``repeats`` further calls, as wall-clock and CPU seconds of this
process (CPU is what the call would take on an idle core), and the load average seen.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.config import PmapGrid
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.imaging.volume import assemble
from neuroradix.samples.phantom import thorax_phantom
from neuroradix.types import StudyResult
from neuroradix.writers.common import OutputContext
from neuroradix.writers.pdf import build_pdf
from neuroradix.writers.pmap import build_pmaps
from neuroradix.writers.seg import build_seg


def make_case(shape: tuple[int, int, int] = (300, 512, 512)) -> tuple[StudyResult, OutputContext]:
    volume, _ = thorax_phantom(shape=shape, spacing=(1.0, 0.7, 0.7))
    assembled = assemble(volume_to_ct_series(volume, uid_seed="p"))
    result = LungAnalyzer().analyze(assembled.volume)
    ctx = OutputContext(
        source=assembled.datasets,
        volume=assembled.volume,
        pipeline_version="v1",
        software_version="0.1",
        pmap_grid=PmapGrid.SOURCE,
    )
    return result, ctx


def timed(call: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU includes finished child processes."""
    before, start = os.times(), time.perf_counter()
    call()
    wall, after = time.perf_counter() - start, os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    return wall, cpu


def measure(builders: dict[str, Callable[[], object]], repeats: int) -> None:
    for name, call in builders.items():
        first = timed(call)
        best = [timed(call) for _ in range(repeats)]
        wall, cpu = min(b[0] for b in best), min(b[1] for b in best)
        load = os.getloadavg()[0]
        print(
            f"| {name} | first {first[0]:.1f} s wall, {first[1]:.1f} s CPU | best of {repeats}: {wall:.1f} s wall, "
            f"{cpu:.1f} s CPU | load {load:.1f} |",
            flush=True,
        )


def main(repeats: int = 3) -> None:
    result, ctx = make_case()
    measure(
        {
            "build_seg (BINARY, JPEG 2000)": lambda: build_seg(result, ctx),
            "build_pmaps (SOURCE grid)": lambda: build_pmaps(result, ctx),
            "build_pdf": lambda: build_pdf(result, ctx),
        },
        repeats,
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
