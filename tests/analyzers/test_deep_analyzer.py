"""Weights releases (manifest, hashes, untrained safety) and the deep analyzer end to end."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from neuroradix.analyzers.deep import report_patch_centres, report_token_map
from neuroradix.errors import NotConfiguredError, WeightsError
from neuroradix.models.backbone import build_backbone, encode_patches, forward_with_features
from neuroradix.models.config import BackboneConfig, tiny_config
from neuroradix.models.release import load_release, write_release
from neuroradix.types import ReportAttention, StudyResult, Volume


def test_backbone_returns_logits_and_features_from_one_pass():
    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(feature_size=12)).eval()
    x = torch.randn(1, 2, 64, 64, 64)
    with torch.no_grad():
        logits, feats = forward_with_features(model, x)
        assert torch.allclose(logits, model(x), atol=1e-5)  # the same computation as SwinUNETR.forward
        assert torch.allclose(encode_patches(model, x), feats, atol=1e-5)
    assert logits.shape == (1, 44, 64, 64, 64) and feats.shape == (1, 24 * 12)


def test_release_manifest_and_round_trip(test_release, tmp_path):
    manifest = json.loads((test_release / "manifest.json").read_text())
    assert manifest["untrained"] is True and manifest["class_scheme"]["name"] == "chest-ct-43"
    assert {"backbone", "head", "tokenizer/tokenizer.json"} <= set(manifest["files"])
    rel = load_release(test_release, allow_untrained=True)
    backbone, head, _tok = rel.build_models()
    # write the loaded modules again: every tensor must come back identical
    out = write_release(
        tmp_path / "again",
        rel.config,
        {"backbone": backbone.state_dict(), "head": head.state_dict()},
        test_release / "tokenizer",
        version="0.0.1",
        untrained=False,
        training_data=[{"name": "CT-RATE", "licence": "CC-BY-NC-SA-4.0"}],
    )
    rel2 = load_release(out)
    assert rel2.manifest["licence"] == "CC-BY-NC-SA-4.0" and not rel2.untrained
    b2, h2, _ = rel2.build_models()
    for a, b in ((backbone, b2), (head, h2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_untrained_release_needs_the_test_switch(test_release):
    with pytest.raises(NotConfiguredError, match="untrained"):
        load_release(test_release)


def test_sha_mismatch_is_refused_naming_the_file(test_release, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(test_release, bad)
    data = bytearray((bad / "head.pt").read_bytes())
    data[-10] ^= 0xFF
    (bad / "head.pt").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"head\.pt.*sha256 mismatch"):
        load_release(bad, allow_untrained=True)
    (bad / "head.pt").unlink()
    with pytest.raises(WeightsError, match=r"head\.pt.*missing"):
        load_release(bad, allow_untrained=True)


def test_config_and_scheme_mismatches_say_what_differs(test_release, tmp_path):
    import dataclasses

    other = dataclasses.replace(
        tiny_config(),
        backbone=BackboneConfig(feature_size=24),
        head=dataclasses.replace(tiny_config().head, embed_dim=24 * 24),
    )
    with pytest.raises(WeightsError, match=r"backbone\.feature_size: expected 24, got 12"):
        load_release(test_release, allow_untrained=True, expected=other)
    bad = tmp_path / "scheme"
    shutil.copytree(test_release, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["class_scheme"]["version"] = "0"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match=r"class scheme differs: version: expected '1', got '0'"):
        load_release(bad, allow_untrained=True)


def test_cli_verify(test_release, capsys):
    from neuroradix.models.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["weights", "verify", str(test_release)])
    assert args.func(args) == 0
    assert "UNTRAINED" in capsys.readouterr().out


def test_analyzer_is_not_configured_without_a_trained_release(test_release):
    from neuroradix.analyzers.deep import DeepAnalyzer

    with pytest.raises(NotConfiguredError):
        DeepAnalyzer(None)
    with pytest.raises(NotConfiguredError, match="untrained"):
        DeepAnalyzer(test_release)


@pytest.mark.slow
def test_analyzer_end_to_end_on_an_untrained_release(test_release):
    from neuroradix.analyzers.base import Analyzer
    from neuroradix.analyzers.deep import DeepAnalyzer
    from neuroradix.models.findings import CTRATE_FINDINGS

    analyzer = DeepAnalyzer(test_release, allow_untrained=True, device="cpu", attention_voxel_mm=4.0)
    assert isinstance(analyzer, Analyzer) and analyzer.info.untrained
    affine = np.array([[0, 0, -2.0, 10], [0, 1.5, 0, -20], [3.0, 0, 0, -100], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    vol = Volume((rng.random((30, 60, 50)) * 1000 - 800).astype(np.int16), affine)
    result = analyzer.analyze(vol)
    assert isinstance(result, StudyResult)
    assert result.labels.shape == vol.shape and result.labels.dtype == np.uint8 and result.labels.max() <= 43
    assert len(result.segments) == 43
    assert [f.name for f in result.findings] == list(CTRATE_FINDINGS) + ["Abnormal"]
    assert all(0 <= f.probability <= 1 and f.code is not None for f in result.findings)
    # maps for "Abnormal", the (at most 4) most probable present findings, and the report
    mapped = {f.name for f in result.findings if f.attention_index is not None}
    present = sorted((f for f in result.findings if f.name != "Abnormal" and f.present), key=lambda f: -f.probability)
    assert mapped == {"Abnormal"} | {f.name for f in present[:4]}
    assert len(result.attention) == len(mapped) + 1 and result.attention[-1].name == "Report"
    for f in result.findings:
        if f.attention_index is not None:
            assert result.attention[f.attention_index].name == f.name
    assert set(result.extra["finding_patch_attention"]) == {f.name for f in result.findings}
    amap = result.attention[0]
    assert amap.array.shape == (30, 20, 25)  # 2 mm columns -> x2, 1.5 mm rows -> x3, 3 mm slices -> x1
    assert np.allclose(amap.array.mean(), 1.0, atol=1e-5)  # one patch: relative attention 1 everywhere
    attention = result.report_attention
    assert isinstance(attention, ReportAttention)
    assert attention.patch_attention.shape[0] == len(attention.tokens) and attention.grid_shape == amap.array.shape
    if attention.tokens:
        assert np.allclose(attention.patch_attention.sum(axis=1), 1.0, atol=1e-4)
        token_map = analyzer.token_attention_map(result, 0)
        assert token_map.array.shape == amap.array.shape
        assert np.allclose(token_map.array, report_token_map(attention, 0).array)  # one renderer
        with pytest.raises(IndexError):
            report_token_map(attention, len(attention.tokens))
    # the job records it as JSON and the API reads it back unchanged
    again = ReportAttention.from_dict(json.loads(json.dumps(attention.to_dict())))
    assert again.tokens == attention.tokens and np.allclose(again.patch_attention, attention.patch_attention)
    assert np.allclose(again.grid_affine, attention.grid_affine) and again.patch_grid == attention.patch_grid
    assert report_patch_centres(again).shape == (attention.patch_attention.shape[1], 3)
    json.dumps(result.extra)  # JSON-able
