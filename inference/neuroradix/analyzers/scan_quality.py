"""Is the scan fit for lung densitometry? Checks from the header and from the image.

Each check gives a :class:`QualityCheck`; failed checks become stated warnings of the result (SR,
``results.json``, PDF). They never change a number: a user reads "LAA-950 not comparable: sharp
kernel B70f" next to the LAA-950 itself.

What is checked, and why (the QIBA CT lung-density profile; Gierada et al., Acad Radiol 2010;17:146-156
on the effect of section thickness and kernel; details and references in docs/lung-analyzer.md):

* **reconstruction kernel** (0018,1210): sharp (high-frequency) kernels add noise and raise LAA-950
  by several percentage points; smooth kernels (Siemens B30f/B35f, GE STANDARD, Philips B/C,
  Canon FC0x-FC1x) are expected. A kernel that is not recorded is stated as unchecked.
* **slice thickness**: thick slices average noise away (LAA-950 reads lower, Perc15 higher); the
  profile asks for thin sections (we flag above 1.25 mm).
* **contrast**: an enhanced mediastinal vessel (a round lumen above 120 HU that is not bone) or a
  ContrastBolusAgent in the header; contrast raises lung density a little.
* **HU calibration**: tracheal air (the core of the tracheal lumen) and, where the field of view
  shows it, air outside the body should read -1000 HU; we flag a median more than 25 HU away.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from neuroradix.types import AcquisitionInfo

logger = logging.getLogger(__name__)

_SIEMENS = re.compile(r"^\s*(B|Br|Bl|Bf|Bv|Hr|I|Ir|Qr)(\d{2})", re.IGNORECASE)
_CANON = re.compile(r"^\s*FC(\d{2})", re.IGNORECASE)
_GE_SHARP = {"BONE", "BONEPLUS", "LUNG", "EDGE", "SHARP", "DETAIL", "HD LUNG", "HD BONE"}
_GE_SMOOTH = {"STANDARD", "SOFT", "SMOOTH", "STND", "HD STANDARD"}
_PHILIPS_SHARP = {"D", "E", "L", "YA", "YB", "YC", "YD", "YE", "YF"}
_PHILIPS_SMOOTH = {"A", "B", "C"}


@dataclass(frozen=True)
class QualityConfig:
    """Limits of the checks (mm, HU)."""

    max_slice_thickness_mm: float = 1.25
    air_tolerance_hu: float = 25.0
    contrast_hu: float = 120.0

    def __post_init__(self) -> None:
        if self.max_slice_thickness_mm <= 0 or self.air_tolerance_hu <= 0:
            raise ValueError("max_slice_thickness_mm and air_tolerance_hu must be positive")


@dataclass(frozen=True)
class QualityCheck:
    """One check: what was measured and, when it failed, the warning to state."""

    name: str
    value: Optional[str]
    ok: bool
    warning: str = ""


def kernel_sharpness(kernel: str) -> Optional[bool]:
    """True for a sharp kernel, False for a smooth one, None when the name is not recognised."""
    first = kernel.split("\\")[0].strip()
    if not first:
        return None
    match = _SIEMENS.match(first)
    if match:
        return int(match.group(2)) >= 50
    match = _CANON.match(first)
    if match:
        return int(match.group(1)) >= 50
    upper = first.upper()
    if upper in _GE_SHARP or upper in _PHILIPS_SHARP:
        return True
    if upper in _GE_SMOOTH or upper in _PHILIPS_SMOOTH:
        return False
    return None


def check_kernel(acquisition: Optional[AcquisitionInfo]) -> QualityCheck:
    """Flag a sharp (or unrecorded) reconstruction kernel: LAA-950 depends on it."""
    kernel = acquisition.convolution_kernel if acquisition else ""
    sharp = kernel_sharpness(kernel)
    if not kernel:
        return QualityCheck(
            "kernel",
            None,
            False,
            "Reconstruction kernel not recorded: check that a smooth kernel "
            "was used before comparing LAA-950 with other scans",
        )
    if sharp is None:
        return QualityCheck(
            "kernel",
            kernel,
            False,
            f"Reconstruction kernel {kernel} not recognised: LAA-950 "
            "comparable only with scans reconstructed the same way",
        )
    if sharp:
        return QualityCheck(
            "kernel",
            kernel,
            False,
            f"LAA-950 not comparable: sharp kernel {kernel} (noise raises "
            "LAA-950; a smooth kernel is expected for densitometry)",
        )
    return QualityCheck("kernel", kernel, True)


def check_slice_thickness(
    acquisition: Optional[AcquisitionInfo], slice_spacing_mm: float, config: QualityConfig
) -> QualityCheck:
    """Flag slices thicker than the densitometry limit (thick slices average out low attenuation)."""
    thickness = acquisition.slice_thickness_mm if acquisition and acquisition.slice_thickness_mm else None
    value = max(thickness or 0.0, float(slice_spacing_mm))
    if value > config.max_slice_thickness_mm + 1e-3:
        return QualityCheck(
            "slice thickness",
            f"{value:.2f} mm",
            False,
            f"Slice thickness {value:.1f} mm (above {config.max_slice_thickness_mm:.2f} mm): "
            "LAA-950 reads lower and Perc15 higher than on thin slices",
        )
    return QualityCheck("slice thickness", f"{value:.2f} mm", True)


def check_contrast(
    acquisition: Optional[AcquisitionInfo], vessel_hu: Optional[float], config: QualityConfig
) -> QualityCheck:
    """Flag an enhanced scan (contrast agent in the header, or an enhanced mediastinal vessel)."""
    agent = acquisition.contrast_agent if acquisition else ""
    if vessel_hu is not None and vessel_hu >= config.contrast_hu:
        return QualityCheck(
            "contrast",
            f"{vessel_hu:.0f} HU",
            False,
            f"Contrast-enhanced scan (mediastinal vessel {vessel_hu:.0f} HU): lung density reads "
            "higher; LAA-950 not comparable with non-contrast scans",
        )
    if agent:
        return QualityCheck(
            "contrast",
            agent,
            False,
            f"Contrast agent recorded ({agent}): lung density reads higher; "
            "LAA-950 not comparable with non-contrast scans",
        )
    return QualityCheck("contrast", None if vessel_hu is None else f"{vessel_hu:.0f} HU", True)


def check_air(name: str, air_hu: Optional[float], config: QualityConfig) -> QualityCheck:
    """Calibration check on air that should read -1000 HU (``name``: "tracheal air", "external air")."""
    if air_hu is None:
        if name == "tracheal air":
            return QualityCheck(
                name, None, False, "Tracheal air not measured (no trachea found): HU calibration " "unchecked"
            )
        return QualityCheck(name, None, True)
    offset = air_hu + 1000.0
    if abs(offset) > config.air_tolerance_hu:
        return QualityCheck(
            name,
            f"{air_hu:.0f} HU",
            False,
            f"HU calibration: {name} reads {air_hu:.0f} HU (expected -1000 +/- "
            f"{config.air_tolerance_hu:.0f}); density thresholds are shifted by about {offset:+.0f} HU",
        )
    return QualityCheck(name, f"{air_hu:.0f} HU", True)


def tracheal_air_hu(hu: np.ndarray, trachea: np.ndarray) -> Optional[float]:
    """Median HU of the core of the tracheal lumen (the mask eroded twice in plane), ``None`` if too small."""
    core = ndimage.binary_erosion(
        trachea, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool), iterations=2
    )
    if np.count_nonzero(core) < 20:
        core = trachea
    if np.count_nonzero(core) < 20:
        return None
    return float(np.median(hu[core]))


def external_air_hu(hu: np.ndarray, body: np.ndarray, margin: int = 3) -> Optional[float]:
    """Median HU of air outside the body (away from the skin), without padding values; ``None`` if none."""
    outside = ~ndimage.binary_dilation(body, iterations=margin) & (hu < -500.0) & (hu > -1500.0)
    values = hu[outside]
    if values.size < 1000:
        return None
    unique, counts = np.unique(values, return_counts=True)
    common = unique[counts > 0.1 * values.size]  # a fill value of the reconstruction circle
    if common.size:
        values = values[~np.isin(values, common)]
    if values.size < 1000:
        return None
    return float(np.median(values))


def mediastinal_vessel_hu(
    hu: np.ndarray, body: np.ndarray, lungs: np.ndarray, spacing: np.ndarray, contrast_hu: float = 120.0
) -> Optional[float]:
    """Median HU of the largest round, non-bone lumen above ``contrast_hu`` between the lungs.

    Looks at the slices of the middle of the lungs (axis 0 is z), in the box between the lungs; a
    bone is recognised by its cortical ring (> 300 HU around it). ``None`` when none is found.
    """
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    if zs.size < 3:
        return None
    pixel_cm2 = float(spacing[1] * spacing[2]) / 100.0
    found = []
    for s in range(int(zs[0] + 0.4 * (zs[-1] - zs[0])), int(zs[0] + 0.8 * (zs[-1] - zs[0])) + 1):
        rows, cols = np.nonzero(lungs[s])
        if rows.size < 10:
            continue
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        region = body[s][box] & ~lungs[s][box]
        plane = hu[s][box]
        labels, _ = ndimage.label(region & (plane >= contrast_hu) & (plane < 600.0))
        for index, where in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[where] == index
            area = float(comp.sum()) * pixel_cm2
            extent = max(comp.shape) * float(max(spacing[1], spacing[2])) / 10.0
            if not 2.0 <= area <= 15.0 or area < 0.5 * np.pi * (extent / 2.0) ** 2:
                continue
            full = labels == index
            ring = ndimage.binary_dilation(full, iterations=2) & ~full
            if np.median(plane[ring]) > 300.0 or np.percentile(plane[ring], 90) > 400.0:
                continue  # bone
            found.append((area, float(np.median(plane[full]))))
    if not found:
        return None
    return float(np.median([value for _, value in found]))


__all__ = [
    "QualityConfig",
    "QualityCheck",
    "kernel_sharpness",
    "check_kernel",
    "check_slice_thickness",
    "check_contrast",
    "check_air",
    "tracheal_air_hu",
    "external_air_hu",
    "mediastinal_vessel_hu",
]
