"""CT-RATE layout readers: columns, missing files, HU and geometry, remap of real segmentations."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from neuroradix.errors import ConfigError
from neuroradix.imaging.nifti import nifti_to_volume
from neuroradix.models.findings import CTRATE_FINDINGS
from neuroradix.models.remap import load_remap
from neuroradix.samples.phantom import PLANTED, findings_phantom
from neuroradix_train.data import dataset as data
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.data.phantoms import PHANTOM_VERSION
from tests.training.smoke import ensure_dataset


def test_records_join_reports_labels_metadata(mini_ctrate):
    recs = data.load_records(mini_ctrate, "train", require_labels=False)
    phantoms = [r for r in recs if r.name.startswith("train_") and r.labels is not None]
    assert len(phantoms) == 6
    r = phantoms[0]
    assert r.path.name == r.name and r.path.parent.name == "train_1_a" and r.path.parent.parent.name == "train_1"
    assert r.spacing_zyx == (7.5, 6.0, 6.0)
    assert r.labels.shape == (18,) and r.segmentation is not None
    assert r.report.startswith("Trachea and both main bronchi are open.")


def test_volume_is_hu_with_metadata_spacing(mini_ctrate):
    r = data.load_records(mini_ctrate, "valid", require_labels=False)[0]
    vol = data.load_volume(r)
    hu, _ = findings_phantom([], seed=0)  # same anatomy class: air outside, lungs near -850
    assert vol.shape == hu.shape
    np.testing.assert_allclose(vol.spacing, [7.5, 6.0, 6.0])
    assert vol.array[0, 0, 0] < -900  # corner is air in HU (raw + RescaleIntercept -1024)
    # LPS: the column axis runs towards the patient's left (+x), rows towards posterior (+y)
    assert vol.affine[0, 2] > 0 and vol.affine[1, 1] > 0 and vol.affine[2, 0] > 0


def test_missing_column_is_named(mini_ctrate, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(mini_ctrate / "dataset", root / "dataset", ignore=shutil.ignore_patterns("*.nii.gz"))
    path = root / "dataset" / "metadata" / "train_metadata.csv"
    rows = list(csv.reader(path.open()))
    rows[0][rows[0].index("ZSpacing")] = "Z_Spacing"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(ConfigError, match="column\\(s\\) missing: ZSpacing"):
        data.load_records(root, "train")


def test_missing_file_and_volume_are_named(mini_ctrate, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(mini_ctrate / "dataset", root / "dataset", ignore=shutil.ignore_patterns("*.nii.gz"))
    with pytest.raises(ConfigError, match="volume file\\(s\\) missing, first: .*train_1_a_1.nii.gz"):
        data.load_records(root, "train", require_labels=False)
    (root / "dataset" / "multi_abnormality_labels" / "valid_predicted_labels.csv").unlink()
    with pytest.raises(ConfigError, match="CT-RATE file missing: .*valid_predicted_labels.csv"):
        data.load_records(root, "valid")


def test_label_header_is_ctrate_order(mini_ctrate):
    header = next(
        csv.reader((mini_ctrate / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv").open())
    )
    assert header == ["VolumeName", *FINDINGS]
    assert FINDINGS == CTRATE_FINDINGS


def test_xy_spacing_literal():
    assert data.parse_xy_spacing("[0.75, 0.75]") == (0.75, 0.75)
    assert data.parse_xy_spacing("0.8") == (0.8, 0.8)


def test_real_ct_segmentation_goes_through_remap(mini_ctrate):
    recs = {r.name: r for r in data.load_records(mini_ctrate, "train", require_labels=False)}
    r = recs["train_1001_a_1.nii.gz"]
    assert r.labels is None and r.segmentation is not None
    vol = data.load_volume(r)
    src = data.load_label_map(r.segmentation)
    assert src.shape == vol.shape and src.max() > 43  # 117-class ids
    out = load_remap("totalseg117-to-chest-ct-43").apply(src)
    assert 0 < out.max() <= 43 and set(np.unique(out)) <= set(range(44))  # now in the 43-class scheme
    assert 0 < float(np.median(vol.array[src == 5])) < 300  # liver (117 id 5) is soft tissue in HU


def test_smoke_rebuilds_a_dataset_of_an_older_phantom_version(tmp_path):
    root = tmp_path / "mini"
    ensure_dataset(root, n_train=1, n_valid=1, real_ct_dir=None)
    version = root / "dataset" / "phantoms.version"
    assert version.read_text().strip() == PHANTOM_VERSION
    stale = root / "cache" / "segmentation" / "old.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    ensure_dataset(root, n_train=1, n_valid=1, real_ct_dir=None)  # same version: kept as is
    assert stale.exists()
    version.write_text("1\n")
    ensure_dataset(root, n_train=1, n_valid=1, real_ct_dir=None)
    assert not stale.exists() and version.read_text().strip() == PHANTOM_VERSION


def test_dataset_phantoms_are_the_generators_arrays(mini_ctrate):
    """The dataset holds findings_phantom's arrays, and the reader gives them back voxel for voxel."""
    recs = [r for r in data.load_records(mini_ctrate, "valid", require_labels=False) if r.labels is not None]
    r = recs[0]  # valid_1: the 7th phantom of the mini dataset (seed 1, 6 train phantoms before it)
    planted = [f for f in PLANTED if r.labels[FINDINGS.index(f)]]
    hu, labels = findings_phantom(planted, seed=1 * 100003 + 7)
    np.testing.assert_array_equal(data.load_volume(r).array, np.rint(hu + 1024.0) - 1024.0)
    np.testing.assert_array_equal(data.load_label_map(r.segmentation), labels)


@pytest.mark.parametrize("name", ["train_1001_a_1.nii.gz", "valid_1001_a_1.nii.gz"], ids=["abdomen-RAS", "thorax-LPS"])
def test_training_reads_real_cts_as_the_node_does(mini_ctrate, name):
    """One NIfTI conversion: training's volume is the node's (same axes, flips and affine) plus the rescale."""
    recs = {
        r.name: r for split in ("train", "valid") for r in data.load_records(mini_ctrate, split, require_labels=False)
    }
    r = recs[name]
    train, node = data.load_volume(r), nifti_to_volume(r.path)
    np.testing.assert_array_equal(train.array, node.array.astype(np.float32) + r.rescale_intercept)
    np.testing.assert_allclose(train.affine, node.affine, atol=1e-4)
    if r.segmentation is not None:  # the label map lands on the volume's grid through the same conversion
        labels = data.load_label_map(r.segmentation)
        np.testing.assert_array_equal(labels, nifti_to_volume(r.segmentation).array)
