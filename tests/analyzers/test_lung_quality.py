"""Scan-quality checks and densitometry arithmetic, with inputs whose answer is known."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pydicom
import pytest

from neuroradix.analyzers.densitometry import cluster_exponent, density_stats, lung_codes, zone_index
from neuroradix.analyzers.scan_quality import (
    QualityConfig,
    check_air,
    check_contrast,
    check_kernel,
    check_slice_thickness,
    external_air_hu,
    kernel_sharpness,
)
from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.imaging.volume import assemble
from neuroradix.types import AcquisitionInfo


@pytest.mark.parametrize(
    "kernel, sharp",
    [
        ("B70f", True),
        ("B30f", False),
        ("Br59", True),
        ("Br40", False),
        ("I70f\\3", True),
        ("BONE", True),
        ("STANDARD", False),
        ("LUNG", True),
        ("FC52", True),
        ("FC03", False),
        ("YC", True),
        ("B", False),
        ("MYSTERY", None),
        ("", None),
    ],
)
def test_kernel_sharpness(kernel, sharp):
    assert kernel_sharpness(kernel) is sharp


def test_kernel_warnings_say_what_is_wrong():
    assert check_kernel(AcquisitionInfo("B70f")).warning.startswith("LAA-950 not comparable: sharp kernel B70f")
    assert check_kernel(AcquisitionInfo("B30f")).ok
    assert "not recorded" in check_kernel(None).warning


def test_acquisition_info_reads_the_header():
    ds = pydicom.Dataset()
    ds.ConvolutionKernel = ["B70f", "3"]
    ds.SliceThickness = "2.0"
    ds.ContrastBolusAgent = "Iomeprol"
    info = AcquisitionInfo.from_dataset(ds)
    assert info == AcquisitionInfo("B70f\\3", 2.0, "Iomeprol", "")
    assert AcquisitionInfo.from_dataset(pydicom.Dataset()) == AcquisitionInfo()


def test_slice_thickness_contrast_and_air_limits():
    cfg = QualityConfig()
    assert check_slice_thickness(AcquisitionInfo(slice_thickness_mm=1.0), 1.0, cfg).ok
    thick = check_slice_thickness(AcquisitionInfo(slice_thickness_mm=5.0), 1.0, cfg)
    assert not thick.ok and "5.0 mm" in thick.warning
    assert not check_slice_thickness(None, 3.0, cfg).ok  # the grid itself is thick
    assert check_contrast(None, 45.0, cfg).ok and check_contrast(None, None, cfg).ok
    assert "280 HU" in check_contrast(None, 280.0, cfg).warning
    assert not check_contrast(AcquisitionInfo(contrast_agent="Iomeprol"), None, cfg).ok
    assert check_air("tracheal air", -990.0, cfg).ok
    assert "+40 HU" in check_air("tracheal air", -960.0, cfg).warning
    assert not check_air("tracheal air", None, cfg).ok and check_air("external air", None, cfg).ok


def test_external_air_ignores_the_fill_value_outside_the_reconstruction_circle():
    rng = np.random.default_rng(0)
    hu = (rng.standard_normal((10, 80, 80)) * 10 - 960).astype(np.float32)  # air reading -960
    hu[:, :10, :] = -1024.0  # fill value
    body = np.zeros(hu.shape, dtype=bool)
    body[:, 30:50, 30:50] = True
    assert external_air_hu(hu, body) == pytest.approx(-960.0, abs=2.0)


def test_a_sharp_kernel_reaches_the_result_as_a_warning(analyzer, emphysema_phantom):
    volume = emphysema_phantom[0]
    sharp = replace(volume, acquisition=AcquisitionInfo("B70f", 1.0))
    result = analyzer.analyze(sharp)
    assert (
        "LAA-950 not comparable: sharp kernel B70f (noise raises LAA-950; a smooth kernel is expected for "
        "densitometry)" in result.warnings
    )
    plain = analyzer.analyze(volume)
    laa = {m.name: m.value for m in plain.measurements}
    assert {m.name: m.value for m in result.measurements}["Total LAA-950"] == laa["Total LAA-950"]  # never mixed in


def test_density_stats_on_known_values():
    values = np.concatenate([np.full(10, -980.0), np.full(10, -920.0), np.full(80, -850.0)])
    stats = density_stats(values, voxel_ml=0.5)
    assert stats.volume_ml == 50.0
    assert stats.laa950_percent == 10.0 and stats.laa910_percent == 20.0
    assert stats.perc15_hu == -920.0  # the 15th of 100 sorted values
    assert stats.mean_hu == pytest.approx((-9800 - 9200 - 68000) / 100)


def test_zones_are_equal_volume_thirds_from_the_bottom():
    z = np.array([5.0, 1.0, 3.0, 2.0, 6.0, 4.0])
    assert zone_index(z).tolist() == [2, 0, 1, 0, 2, 1]


def test_cluster_exponent_of_a_power_law():
    rng = np.random.default_rng(1)
    sizes = np.floor(rng.pareto(1.5, 5000) + 1).astype(np.int64)  # N(size >= s) ~ s^-1.5
    assert cluster_exponent(sizes) == pytest.approx(1.5, abs=0.2)
    assert cluster_exponent(sizes[:5]) is None


def test_codes_file_names_every_zone():
    codes = lung_codes()
    assert codes.sites["left_lung"].value == "44029006" and codes.sites["right_lung"].value == "3341006"
    assert {codes.sites[f"{s}_{z}"].scheme for s in ("left", "right") for z in ("upper", "middle", "lower")} == {
        "99NRX"
    }


def test_the_assembled_volume_carries_the_series_header(emphysema_phantom):
    series = volume_to_ct_series(emphysema_phantom[0])
    for ds in series:
        ds.ConvolutionKernel = "B70f"
    volume = assemble(series).volume
    assert volume.acquisition == AcquisitionInfo(
        "B70f", float(series[0].SliceThickness), "", str(series[0].Manufacturer)
    )
    assert check_kernel(volume.acquisition).warning.startswith("LAA-950 not comparable: sharp kernel B70f")
