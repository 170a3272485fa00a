"""COLIPRI served by the node equals the authors' ``colipri`` 0.1.3.

* forward: the node's release -> :class:`ColipriEncoder` against ``colipri.get_model(checkpoint_path=
  <the snapshot's model.safetensors>, image_only=True).encode_image(x, pool=True, project=True)`` on
  the same random weights, fp32 (tolerance :data:`FORWARD_ATOL`; a 32^3 input, see conftest);
* findings: the stored prompt embeddings equal the package's text encoder on its processor's
  tokens, and the probabilities equal ``Model.classify`` on them;
* preprocessing: the node's DICOM series -> :meth:`ColipriEncoder.preprocess` against the package's
  processor on the same real chest CT read from NIfTI by torchio, axial and as an oblique LPS series;
* the README-vs-code disagreements (orientation RAS vs the README's SAR+, 864 vs 768 channels) pinned;
* import: strict key check, licence acceptance, and ``make-test-snapshot`` -> ``weights import`` ->
  ``neuroradix analyze`` on the real chest CT (SR, PDF, Parametric Maps, results.json embedding).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from neuroradix.errors import NotConfiguredError, WeightsError
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.imaging.nifti import nifti_to_volume
from neuroradix.imaging.volume import assemble
from neuroradix.models.published import REGISTRY
from neuroradix.models.published import colipri as nc
from neuroradix.models.published.base import FINDINGS, key_list_of, load_key_list, verify_state_dict
from neuroradix.models.release import load_published_release
from neuroradix.types import Volume
from tests.support import real_ct, require_module

torch = require_module("torch")
try:  # timm imports torchvision: the node imports colipri through its helper (stand-ins if it is absent)
    nc.import_reference()
except ImportError:
    pass  # require_module below says which one is missing
colipri_pkg = require_module("colipri")
tio = require_module("torchio")

from neuroradix.analyzers.published import licence_notice  # noqa: E402 - after the module checks

FORWARD_ATOL = 1e-5  # fp32, same kernels: the node runs the package's own modules
# torchio resamples int16 HU into int16: a voxel whose interpolated value sits at a rounding edge can
# differ by 1 HU (0.001 after rescaling) when the DICOM header's decimal strings move the (oblique)
# grid by ~1e-6 mm; the mean difference must stay far below that.
PREPROCESS_ATOL = 1.0e-3 + 1e-6
PREPROCESS_MEAN_ATOL = 1e-4


@pytest.fixture(scope="module")
def encoder(colipri_release):
    return nc.COLIPRI.load(colipri_release)


@pytest.fixture(scope="module")
def reference(colipri_snapshot):
    """The authors' model, built by their code from the downloaded file (image side only)."""
    return colipri_pkg.get_model(checkpoint_path=colipri_snapshot / nc.WEIGHTS, image_only=True, input_size=32).eval()


def _chest() -> Volume:
    return nifti_to_volume(real_ct("thorax_ct_1.5mm.nii.gz"))


def _through_dicom(volume: Volume, tmp: Path) -> Volume:
    rounded = Volume(np.rint(volume.array).astype(np.int16), volume.affine)
    paths = write_series(volume_to_ct_series(rounded, uid_seed="colipri"), tmp)
    return assemble([pydicom.dcmread(p) for p in paths]).volume


def _as_nifti(volume: Volume, path: Path) -> Path:
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    nib.save(nib.Nifti1Image(np.rint(volume.array).astype(np.int16), ras), str(path))
    return path


def _oblique(volume: Volume, degrees: float = 20.0) -> Volume:
    """The chest as a coronal-ish series (slices along posterior), tilted ``degrees`` about L-R."""
    t = np.deg2rad(degrees)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    array = np.ascontiguousarray(np.transpose(volume.array, (1, 0, 2)))
    aff = volume.affine.copy()
    aff[:3, :3] = rot @ volume.affine[:3, [1, 0, 2]]
    return Volume(array, aff)


def _random_input(seed: int = 7) -> torch.Tensor:
    return torch.randn((1, 1, 32, 32, 32), generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def test_registry_names_colipri():
    assert REGISTRY["colipri"] is nc.COLIPRI
    assert nc.COLIPRI.licence == "MIT" and not nc.COLIPRI.needs_licence_acceptance
    assert "not meant to be used for clinical practice" in nc.COLIPRI.restriction_note
    assert all(r.to_dict()["label"] == "reported" for r in nc.COLIPRI.reported)


def test_committed_key_list_is_the_packages_image_model():
    committed = load_key_list("colipri")
    assert len(committed) == 380
    assert committed["image_encoder.projector.weight"] == [768, 864, 1, 1, 1]
    assert committed["image_encoder.backbone.down_projection.proj.weight"] == [864, 1, 8, 8, 8]
    assert sum(k.endswith(".attn.q_proj.weight") for k in committed) == 16  # 16 EVA layers
    assert nc.image_key_list(input_size=32) == committed


def test_forward_equals_reference(encoder, reference):
    x = _random_input()
    with torch.no_grad():
        want = reference.encode_image(x, pool=True, project=True)
    got = encoder.embed(x)
    assert got.shape == (1, 768)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=FORWARD_ATOL, rtol=0)
    # the comparison can fail: another input gives another embedding
    other = encoder.embed(_random_input(seed=8))
    assert float((other - want).abs().max()) > 100 * FORWARD_ATOL


def test_prompt_embeddings_and_probabilities_equal_reference(colipri_snapshot, colipri_release, encoder, reference):
    from colipri.model.text import TextEncoder
    from colipri.pooling import AttentionPool1D
    from colipri.processor import Processor
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel, BertTokenizer

    text_dir = colipri_snapshot / nc.TEXT_DIR
    state = load_file(str(colipri_snapshot / nc.WEIGHTS))
    text = TextEncoder(
        BertModel(BertConfig.from_pretrained(str(text_dir)), add_pooling_layer=False), AttentionPool1D(768, 12)
    ).eval()
    text.load_state_dict({k[len("text_encoder.") :]: v for k, v in state.items() if k.startswith("text_encoder.")})
    processor = Processor(image_transform=None, tokenizer=BertTokenizer.from_pretrained(str(text_dir)))
    manifest = load_published_release(colipri_release, allow_untrained=True)
    prompts = manifest["published"]["prompts"]
    assert prompts["Lung nodule"] == ["lung nodule present", "no lung nodule present"]
    with torch.no_grad():
        pos = text(*processor.process_text([prompts[n][0] for n in FINDINGS]))
        neg = text(*processor.process_text([prompts[n][1] for n in FINDINGS]))
    np.testing.assert_allclose(encoder.positive.numpy(), pos.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(encoder.negative.numpy(), neg.numpy(), atol=1e-5, rtol=0)

    x = _random_input()
    got = encoder.findings(x)
    assert list(got) == list(FINDINGS)
    with torch.no_grad():
        image = reference.encode_image(x, pool=True, project=True, normalize=True)
        for i, name in enumerate(FINDINGS):
            want = reference.classify(image, torch.stack([pos[i], neg[i]]))[0, 0]
            assert got[name] == pytest.approx(float(want), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_preprocessing_of_dicom_equals_package_processor_on_nifti(tmp_path, kind):
    chest = _chest()
    if kind == "oblique":
        chest = _oblique(chest)
        assert abs(chest.affine[2, 0]) > 0.1  # slice axis not along S: a non-axial series
    processor = colipri_pkg.get_processor(image_only=True)
    want_img = processor.process_images(tio.ScalarImage(_as_nifti(chest, tmp_path / "ct.nii.gz")))[0]
    want = processor.to_images_batch([want_img])
    node = nc.ColipriEncoder.__new__(nc.ColipriEncoder)  # preprocessing needs no weights
    node.processor, node._last_affine = processor, None
    got = node.preprocess(_through_dicom(chest, tmp_path / "dicom"))
    assert got.shape == want.shape == (1, 1, 192, 192, 192)
    assert float(want.std()) > 0.05  # real anatomy, not padding
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=PREPROCESS_ATOL, rtol=0)
    assert float((got - want).abs().mean()) < PREPROCESS_MEAN_ATOL
    np.testing.assert_allclose(node._last_affine, want_img.affine, atol=1e-4)
    # an LPS/RAS mix-up would be seen
    assert not torch.allclose(got, want.flip(2), atol=1e-2)


def test_readme_vs_code_orientation_and_widths(reference):
    """README: preprocessed image ``SAR+`` and ``encode_image(x)`` 768 channels; colipri 0.1.3 code: RAS+, 864."""
    processor = colipri_pkg.get_processor(image_only=True, input_size=32)
    image = tio.ScalarImage(tensor=torch.zeros((1, 20, 24, 28)), affine=np.diag([-1.5, 2.0, 2.5, 1.0]))
    out = processor.process_images(image)[0]
    assert "".join(out.orientation) == "RAS"  # the code (configs/config.yaml), not the README's SAR+
    assert out.spacing == pytest.approx((2.0, 2.0, 2.0))
    with torch.no_grad():
        patches = reference.encode_image(_random_input())
    assert tuple(patches.shape) == (1, 864, 4, 4, 4)  # the backbone's width, not the README's 768


def test_import_refuses_weights_off_the_key_list(colipri_snapshot, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(colipri_snapshot / nc.WEIGHTS))
    image = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
    verify_state_dict(image, "colipri")  # the snapshot is in the published layout
    assert key_list_of(image) == load_key_list("colipri")
    bad = dict(state)
    bad["image_encoder.projector.weight"] = bad["image_encoder.projector.weight"][:700]
    del bad["image_encoder.backbone.eva.norm.bias"]
    broken = tmp_path / "download"
    broken.mkdir()
    save_file(bad, str(broken / nc.WEIGHTS))
    (broken / nc.TEXT_DIR).symlink_to(colipri_snapshot / nc.TEXT_DIR)
    with pytest.raises(WeightsError, match="missing.*eva.norm.bias|shapes differ"):
        nc.COLIPRI.import_release(broken, tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_release_manifest_and_untrained_refusal(colipri_snapshot, colipri_release):
    manifest = load_published_release(colipri_release, allow_untrained=True)
    pub = manifest["published"]
    assert manifest["untrained"] is True and pub["untrained"] is True
    assert pub["model"] == "colipri" and pub["licence"] == "MIT"
    assert pub["reported"] and all(r["label"] == "reported" for r in pub["reported"])
    from neuroradix.models.release import sha256_file

    assert pub["source_sha256"][nc.WEIGHTS] == sha256_file(colipri_snapshot / nc.WEIGHTS)
    assert set(manifest["files"]) == {nc.IMAGE_FILE, "prompt_embeddings.safetensors"}
    with pytest.raises(NotConfiguredError, match="untrained"):
        load_published_release(colipri_release)


def test_licence_acceptance_and_notice():
    nc_spec = dataclasses.replace(nc.COLIPRI, licence="CC-BY-NC-SA-4.0", needs_licence_acceptance=True)
    with pytest.raises(WeightsError, match="--accept-license cc-by-nc-sa-4.0"):
        nc_spec.check_acceptance(None)
    nc_spec.check_acceptance("CC-BY-NC-SA-4.0")
    nc.COLIPRI.check_acceptance(None)  # MIT: nothing to accept
    assert "non-commercial licence" in licence_notice({"model": "x", "version": "1", "licence": "CC-BY-NC-SA-4.0"})
    text = licence_notice({"model": "colipri", "version": "1", "licence": "MIT", "restriction": "research only"})
    assert "non-commercial" not in text and "research only" in text


def test_dense_maps_on_the_input_grid(encoder):
    aff = np.eye(4)
    aff[:3, :3] = np.diag([2.5, 0.8, 0.8])
    vol = Volume(np.full((30, 60, 60), -800.0, dtype=np.float32), aff)
    x = encoder.preprocess(vol)
    dense = encoder.dense_maps(x, ["Emphysema", "Cardiomegaly"])
    assert dense is not None and set(dense.maps) == {"Emphysema", "Cardiomegaly"}
    assert dense.maps["Emphysema"].shape == (4, 4, 4)
    assert np.abs(dense.maps["Emphysema"]).max() <= 1.0 + 1e-5  # cosine similarity
    # patch centres are 16 mm apart (8 voxels of 2 mm) in LPS, RAS flipped
    np.testing.assert_allclose(np.diag(dense.affine)[:3], [-16.0, -16.0, 16.0])


@pytest.mark.slow
def test_snapshot_import_analyze_on_real_chest_ct(tmp_path):
    """make-test-snapshot -> weights import -> neuroradix analyze: SR, PDF, Parametric Maps, embedding."""
    from neuroradix.cli import main

    snap, rel, out = tmp_path / "download", tmp_path / "release", tmp_path / "out"
    assert main(["weights", "make-test-snapshot", "colipri", str(snap), "--input-size", "32"]) == 0
    assert main(["weights", "import", "colipri", str(snap), "--out", str(rel)]) == 0
    write_series(volume_to_ct_series(_chest(), uid_seed="colipri-e2e"), tmp_path / "dicom")
    # without the test-only switch the untrained release does not run
    args = ["analyze", str(tmp_path / "dicom"), "--out", str(out), "--analyzers", "deep", "--weights", str(rel)]
    assert main(args) != 0
    assert not (out / "results.json").exists()
    assert main([*args, "--allow-untrained"]) == 0
    doc = json.loads((out / "results.json").read_text())
    result = doc["results"]["colipri-published"]
    assert result["analyzer"]["untrained"] is True and "UNTRAINED" in result["analyzer"]["title"]
    assert [f["name"] for f in result["findings"]] == list(FINDINGS)
    assert len(result["embedding"]) == 768 and np.isfinite(result["embedding"]).all()
    assert any("not meant to be used for clinical practice" in w for w in result["warnings"])
    kinds = {o["modality"]: o for o in doc["outputs"]}
    assert {"SR", "DOC", "OT"} <= set(kinds)
    classes = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in (out / "colipri-published").glob("*.dcm")
    }
    assert "1.2.840.10008.5.1.4.1.1.30" in classes  # Parametric Map Storage
    sr = next(p for p in (out / "colipri-published").glob("*-sr.dcm"))
    assert "UNTRAINED" in pydicom.dcmread(sr).SeriesDescription
