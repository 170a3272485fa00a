"""An Enhanced CT to try the node with: a classic CT series (or the real chest CT) as one multi-frame instance.

Run it as a tool::

    python -m neuroradix.samples.enhanced_ct OUT_DIR                 # the real chest CT, both ways
    python -m neuroradix.samples.enhanced_ct OUT_DIR --from SERIES_DIR  # your own classic CT series
    python -m neuroradix.samples.enhanced_ct OUT_DIR --shuffle 7     # frames stored in a random order

``OUT_DIR/enhanced/CT-enhanced.dcm`` is the Enhanced CT Image Storage instance. For the real chest
CT, ``OUT_DIR/classic/`` also holds the same scan as classic single-frame slices in another study,
so that ``neuroradix analyze OUT_DIR/classic`` and ``neuroradix analyze OUT_DIR/enhanced`` (or a
``storescu`` of each) can be compared: the lung volumes must agree.

The conversion is :func:`neuroradix.imaging.enhanced.classic_to_enhanced_ct`; the study, patient and
frame of reference of the source are kept, the series and instance UIDs are new.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from neuroradix.errors import BadInputError
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.imaging.enhanced import classic_to_enhanced_ct
from neuroradix.samples.real_ct import even_in_plane, sample_ct_volume
from neuroradix.types import Volume

logger = logging.getLogger(__name__)

ENHANCED_FILE = "CT-enhanced.dcm"


@dataclass(frozen=True)
class EnhancedSample:
    """A classic CT series and the same scan as one Enhanced CT instance (in another study)."""

    classic: list[Dataset]
    enhanced: Dataset


def frame_order(n: int, shuffle: Optional[int]) -> Optional[list[int]]:
    """Stored frame order: position order (``None``), or a permutation seeded by ``shuffle``."""
    return None if shuffle is None else [int(i) for i in np.random.default_rng(shuffle).permutation(n)]


def enhanced_sample(
    volume: Volume, *, shuffle: Optional[int] = None, uid_seed: str = "enhanced-sample"
) -> EnhancedSample:
    """The classic series of ``volume`` (one study) and its Enhanced CT (another study, same pixels).

    Parameters
    ----------
    volume:
        HU on an LPS grid, slices first (e.g. :func:`neuroradix.samples.real_ct.sample_ct_volume`).
    shuffle:
        Store the frames in a random order with this seed (``None``: position order).
    uid_seed:
        Every UID is derived from it: the same call gives the same files.
    """

    def series(seed: str, description: str) -> list[Dataset]:
        return volume_to_ct_series(
            volume,
            patient_name="Anonymous^Enhanced",
            patient_id="NRX-ENHANCED-0001",
            study_description="CT chest",
            series_description=description,
            uid_seed=f"{uid_seed}-{seed}",
        )

    classic = series("classic", "Chest classic")
    twin = series("enhanced", "Chest")
    enhanced = classic_to_enhanced_ct(
        twin, frame_order=frame_order(len(twin), shuffle), uid_seed=uid_seed, series_description="Chest enhanced"
    )
    return EnhancedSample(classic, enhanced)


def enhanced_from_folder(folder: Path, *, shuffle: Optional[int] = None) -> Dataset:
    """One Enhanced CT instance from the classic CT series in ``folder`` (DICOM files, one series).

    Raises
    ------
    BadInputError
        No DICOM CT files, or more than one series.
    """
    datasets = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            datasets.append(pydicom.dcmread(path))
        except pydicom.errors.InvalidDicomError:
            logger.info("skipping a file that is not DICOM")
    datasets = [ds for ds in datasets if str(ds.get("Modality", "")) == "CT" and "PixelData" in ds]
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) != 1:
        raise BadInputError(f"{folder}: expected the CT images of one series, found {len(series)} series")
    return classic_to_enhanced_ct(datasets, frame_order=frame_order(len(datasets), shuffle))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: write an Enhanced CT (and, for the real CT, its classic twin) to a folder."""
    parser = argparse.ArgumentParser(
        prog="python -m neuroradix.samples.enhanced_ct", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--from", dest="source", type=Path, help="a folder holding one classic CT series to convert")
    parser.add_argument("--shuffle", type=int, default=None, help="store the frames in a random order (a seed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    enhanced_dir = args.out / "enhanced"
    enhanced_dir.mkdir(parents=True, exist_ok=True)
    if args.source is not None:
        enhanced = enhanced_from_folder(args.source, shuffle=args.shuffle)
    else:
        volume, origin = sample_ct_volume()
        sample = enhanced_sample(even_in_plane(volume), shuffle=args.shuffle)
        write_series(sample.classic, args.out / "classic")
        enhanced = sample.enhanced
        print(f"classic series ({origin}): {len(sample.classic)} slices in {args.out / 'classic'}")
    enhanced.save_as(enhanced_dir / ENHANCED_FILE, enforce_file_format=True)
    print(f"Enhanced CT: {int(enhanced.NumberOfFrames)} frames in {enhanced_dir / ENHANCED_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
