"""Plain data passed between the stages of the pipeline.

Geometry convention (shared by every module, the same as highdicom's ``Volume``):

* a voxel array is indexed ``[slice, row, column]``;
* ``affine`` is a 4x4 matrix mapping the homogeneous index ``(slice, row, column, 1)``
  to patient coordinates in millimetres, in DICOM's LPS system
  (x towards the patient's Left, y towards Posterior, z towards Superior).

Column 0 of the affine is the slice step (normal times slice spacing), column 1 the row
step (ImageOrientationPatient[3:] times PixelSpacing[0]), column 2 the column step
(ImageOrientationPatient[:3] times PixelSpacing[1]) and column 3 the position of voxel
``(0, 0, 0)`` (ImagePositionPatient of the first slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Code:
    """A coded concept: ``(value, scheme designator, meaning)``, e.g. ``("44029006", "SCT", "Left lung")``."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("value", "scheme", "meaning"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Code.{name} must be a non-empty string")

    @classmethod
    def from_dict(cls, data: dict) -> Code:
        """Build from ``{"value": ..., "scheme": ..., "meaning": ...}``."""
        return cls(str(data["value"]), str(data["scheme"]), str(data["meaning"]))

    def to_dict(self) -> dict:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


@dataclass(frozen=True)
class AcquisitionInfo:
    """What the source series' header says about how the CT was acquired and reconstructed.

    Every field is optional (empty / ``None`` when the header does not say). Analyzers use it for
    scan-quality checks (a sharp kernel makes LAA-950 not comparable), never to change numbers.
    """

    convolution_kernel: str = ""  # (0018,1210); several values joined with "\\"
    slice_thickness_mm: Optional[float] = None  # (0018,0050)
    contrast_agent: str = ""  # (0018,0010) ContrastBolusAgent
    manufacturer: str = ""  # (0008,0070)

    @classmethod
    def from_dataset(cls, ds: object) -> AcquisitionInfo:
        """Read the fields from a pydicom dataset (any object with DICOM keyword attributes)."""

        def text(keyword: str) -> str:
            value = getattr(ds, keyword, None)
            if value is None:
                return ""
            if isinstance(value, str):
                return value.strip()
            try:
                return "\\".join(str(v).strip() for v in value)
            except TypeError:
                return str(value).strip()

        try:
            thickness: Optional[float] = float(ds.SliceThickness)  # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError):
            thickness = None
        return cls(text("ConvolutionKernel"), thickness, text("ContrastBolusAgent"), text("Manufacturer"))


@dataclass(frozen=True)
class Volume:
    """A CT volume on a regular grid.

    Parameters
    ----------
    array:
        Voxel values, shape ``(slices, rows, columns)``; Hounsfield units for CT.
    affine:
        4x4 index-to-LPS matrix (see the module docstring).
    acquisition:
        Header facts of the source series (kernel, slice thickness, contrast) when known.
    """

    array: np.ndarray
    affine: np.ndarray
    acquisition: Optional[AcquisitionInfo] = None

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray) or self.array.ndim != 3:
            raise ValueError("Volume.array must be a 3-D numpy array [slice, row, column]")
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.allclose(aff[3], [0, 0, 0, 1]):
            raise ValueError("Volume.affine must be a 4x4 homogeneous matrix")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
            raise ValueError("Volume.affine is singular")
        object.__setattr__(self, "affine", aff)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along (slice, row, column)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def directions(self) -> np.ndarray:
        """Unit vectors (as columns) of the slice, row and column axes in LPS."""
        return self.affine[:3, :3] / self.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def index_to_patient(self, index: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` voxel indices ``(slice, row, column)`` to LPS millimetres."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` LPS points to fractional voxel indices."""
        inv = np.linalg.inv(self.affine)
        points = np.asarray(points, dtype=np.float64)
        return points @ inv[:3, :3].T + inv[:3, 3]


@dataclass(frozen=True)
class SegmentDescription:
    """One segment of a label map, with the codes the DICOM SEG needs."""

    label: int
    name: str
    category: Code
    type: Code
    laterality: Optional[Code] = None
    color: Optional[tuple[int, int, int]] = None  # recommended display colour, sRGB 0-255

    def __post_init__(self) -> None:
        if not isinstance(self.label, int) or self.label < 1:
            raise ValueError(f"SegmentDescription.label must be a positive int, got {self.label!r}")
        if not self.name:
            raise ValueError("SegmentDescription.name must not be empty")


@dataclass(frozen=True)
class Finding:
    """A classification output: a CT-RATE finding name (or ``"Abnormal"``) and its probability."""

    name: str
    probability: float
    threshold: float = 0.5
    code: Optional[Code] = None  # what the finding is (SNOMED)
    site: Optional[Code] = None  # where (SNOMED finding site)
    segment_labels: tuple[int, ...] = ()  # segments of the label map it relates to
    attention_index: Optional[int] = None  # index into StudyResult.attention

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.probability) <= 1.0:
            raise ValueError(f"Finding {self.name!r}: probability {self.probability} is outside [0, 1]")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"Finding {self.name!r}: threshold {self.threshold} is outside [0, 1]")

    @property
    def present(self) -> bool:
        return float(self.probability) >= float(self.threshold)


@dataclass(frozen=True)
class Measurement:
    """A scalar measurement, e.g. left lung volume 2450 mL."""

    name: str
    value: float
    unit: Code  # UCUM, e.g. Code("mL", "UCUM", "milliliter")
    concept: Code  # what is measured
    site: Optional[Code] = None
    segment_label: Optional[int] = None
    derivation: Optional[Code] = None  # e.g. mean


@dataclass(frozen=True)
class AttentionMap:
    """A map of where the analyzer looked, on its own grid in the same frame of reference.

    ``array`` has shape ``(slices, rows, columns)`` and ``affine`` maps it to LPS like
    :class:`Volume`; values are non-negative floats (``unit`` says what they mean).

    ``display_range`` ``(floor, top)``, when given, says how to show the map: values below
    ``floor`` are 0 (not shown) and a viewer's colour scale spans ``floor`` to ``top``.
    ``note`` says, in a few words, why the map was made differently from the default
    (e.g. ``"smoothed: sharp kernel"``); it goes into the series description.
    """

    name: str
    array: np.ndarray
    affine: np.ndarray
    quantity: Code
    unit: Code
    display_range: Optional[tuple[float, float]] = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"AttentionMap {self.name!r}: array must be 3-D")
        if self.display_range is not None and not 0 <= self.display_range[0] < self.display_range[1]:
            raise ValueError(f"AttentionMap {self.name!r}: display_range must be (floor, top) with 0 <= floor < top")
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))


@dataclass(frozen=True)
class ReportAttention:
    """Where each generated report token looked: its attention over the analyzer's patches.

    Parameters
    ----------
    tokens:
        The report's tokens, in order (as the tokenizer decodes them, with leading spaces).
    patch_attention:
        ``(len(tokens), patches)`` array; row ``i`` is token ``i``'s attention over the patches
        (each row sums to 1).
    patch_grid:
        The patch layout as ``PatchGrid.to_dict()`` (:mod:`neuroradix.models.sliding`), JSON-able.
    grid_shape, grid_affine:
        Shape and index-to-LPS affine of the grid the maps are rendered on (the attention grid).
    """

    tokens: tuple[str, ...]
    patch_attention: np.ndarray
    patch_grid: dict
    grid_shape: tuple[int, int, int]
    grid_affine: np.ndarray

    def __post_init__(self) -> None:
        weights = np.asarray(self.patch_attention, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[0] != len(self.tokens):
            raise ValueError(
                f"ReportAttention.patch_attention must have shape (tokens={len(self.tokens)}, patches), "
                f"got {weights.shape}"
            )
        if len(self.grid_shape) != 3:
            raise ValueError(f"ReportAttention.grid_shape must have 3 entries, got {self.grid_shape!r}")
        affine = np.asarray(self.grid_affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError("ReportAttention.grid_affine must be a 4x4 matrix")
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
        object.__setattr__(self, "patch_attention", weights)
        object.__setattr__(self, "grid_shape", tuple(int(n) for n in self.grid_shape))
        object.__setattr__(self, "grid_affine", affine)

    def to_dict(self) -> dict:
        """JSON-able form (what a job records)."""
        return {
            "tokens": [
                {"token": t, "patch_attention": self.patch_attention[i].tolist()} for i, t in enumerate(self.tokens)
            ],
            "patch_grid": self.patch_grid,
            "attention_grid": {"shape": list(self.grid_shape), "affine": self.grid_affine.tolist()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> ReportAttention:
        """Inverse of :meth:`to_dict`."""
        tokens = data["tokens"]
        n_patches = len(tokens[0]["patch_attention"]) if tokens else 0
        weights = np.asarray([t["patch_attention"] for t in tokens], dtype=np.float64).reshape(len(tokens), n_patches)
        geo = data["attention_grid"]
        return cls(
            tuple(t["token"] for t in tokens),
            weights,
            dict(data["patch_grid"]),
            tuple(geo["shape"]),
            np.asarray(geo["affine"], dtype=np.float64),
        )


@dataclass(frozen=True)
class AnalyzerInfo:
    """Who produced a result: goes into every object's series description and provenance."""

    name: str  # short id, e.g. "lung-hu" or "swinunetr-ctrate"
    version: str  # algorithm / model release version
    title: str  # human-readable, e.g. "Lung HU analyzer"
    algorithm_family: Code = field(default_factory=lambda: Code("123109", "DCM", "Manual Processing"))
    untrained: bool = False  # random weights: every object must say "UNTRAINED - TEST OUTPUT"


@dataclass(frozen=True)
class StudyResult:
    """What an analyzer returns: everything the writers need, nothing about transport."""

    analyzer: AnalyzerInfo
    labels: np.ndarray  # uint8/uint16 label map on the source volume's grid
    segments: tuple[SegmentDescription, ...]
    findings: tuple[Finding, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    report_text: str = ""
    attention: tuple[AttentionMap, ...] = ()
    extra: dict = field(default_factory=dict)  # analyzer-specific JSON-able notes; nothing reads them as a contract
    report_attention: Optional[ReportAttention] = None  # per report token, where the report generator looked
    warnings: tuple[str, ...] = ()  # stated caveats, e.g. "LAA-950 not comparable: sharp kernel B70f"
    embedding: Optional[tuple[float, ...]] = None  # global image embedding (published models), in results.json

    def __post_init__(self) -> None:
        labels = {s.label for s in self.segments}
        if len(labels) != len(self.segments):
            raise ValueError("StudyResult.segments have duplicate labels")
        if self.labels.ndim != 3:
            raise ValueError("StudyResult.labels must be 3-D")
        for f in self.findings:
            if f.attention_index is not None and not 0 <= f.attention_index < len(self.attention):
                raise ValueError(
                    f"Finding {f.name!r} points at attention map {f.attention_index}, which does not exist"
                )
