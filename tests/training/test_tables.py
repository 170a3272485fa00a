"""An evaluation folder -> both protocols in metrics.json -> the Markdown results table; the smoke's protocol lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroradix.errors import ConfigError
from neuroradix_train.cli import main as train_cli
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.predictions import evaluate_predictions
from neuroradix_train.evaluation.tables import find_metrics, write_results_table
from tests.training.smoke_checks import format_protocols, protocol_summary


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """A head evaluation of 40 synthetic scans: 19 columns, reports for each."""
    rng = np.random.default_rng(4)
    n = 40
    labels = (rng.random((n, 19)) < 0.3).astype(int)
    labels[:, 5] = 0  # an all-negative finding (Hiatal hernia)
    probs = np.clip(labels * 0.4 + rng.random((n, 19)) * 0.6, 0, 1)
    refs = ["Emphysema. No pleural effusion." if labels[i, 7] else "No emphysema." for i in range(n)]
    gen = ["Emphysema." if probs[i, 7] > 0.5 else "Normal lungs." for i in range(n)]
    out = tmp_path_factory.mktemp("eval") / "head"
    metrics = evaluate_predictions(
        {"labels": labels, "probabilities": probs, "generated": gen, "references": refs},
        out,
        thresholds=[0.5] * 19,
        n_bootstrap=50,
    )
    return out, metrics, labels, probs


def test_metrics_name_both_protocols(eval_dir):
    out, m, labels, probs = eval_dir
    assert m["protocols"] == ["held-out-threshold", "ct-clip"]
    assert m["classification"]["protocol"] == "held-out-threshold"
    assert m["classification"]["thresholds_from"] == "the validation split"
    ct = m["classification_ct_clip"]
    assert ct["protocol"] == "ct-clip" and ct["n_bootstrap"] == 50 and ct["mean"]["n_findings"] == 17
    assert m["report"]["ce_labeler"] == "rule" and m["labeler_agreement"]["labeler"] == "rule"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["classification_ct_clip"]["mean"]["f1_weighted"] == pytest.approx(ct["mean"]["f1_weighted"])
    assert not (out / "thresholds.json").exists()  # thresholds came from validation
    with pytest.raises(ValueError, match="protocols"):
        evaluate_predictions({"labels": labels, "probabilities": probs}, out / "x", protocols=["youden"])


def test_results_table_from_an_evaluation_folder(eval_dir, tmp_path):
    out, m, _, _ = eval_dir
    assert find_metrics(out.parent) == out / "metrics.json"  # an evaluate folder keeps the head under head/
    md_path = tmp_path / "table.md"
    text = write_results_table(out.parent, md_path, title="synthetic")
    assert md_path.read_text() == text and text.startswith("## synthetic (40 scans)")
    assert "Protocol `held-out-threshold`: thresholds from the validation split" in text
    assert "Protocol `ct-clip`" in text and "50 bootstrap resamples" in text
    held_part = text.split("Protocol `ct-clip`")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in held_part.splitlines() if line.startswith("| ")}
    h = m["classification"]["per_finding"]["Emphysema"]
    assert rows["Emphysema"].startswith(f"| Emphysema | {h['auroc']:.3f} | {h['f1']:.3f} |")
    assert f"| {m['classification']['micro']['f1']:.3f} |" in rows["**micro**"]
    assert rows["**macro** (17 findings)"].split(" | ")[1] == f"{m['classification']['macro']['auroc']:.3f}"
    assert "| Hiatal hernia | – | 0.000 |" in held_part  # all-negative: no AUROC, F1 0
    ct_mean = m["classification_ct_clip"]["mean"]
    lo, hi = ct_mean["ci"]["auroc"]
    assert f"| **mean** (17 findings) | {ct_mean['auroc']:.3f} ({lo:.3f}–{hi:.3f}) |" in text
    assert "`rule` labeler" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("| Emphysema |")]) == 2  # one row per protocol
    assert sum(1 for f in FINDINGS if f"| {f} |" in text) == 18
    with pytest.raises(ConfigError, match="no metrics.json"):
        find_metrics(tmp_path)


def test_results_table_command(eval_dir, capsys):
    out, _, _, _ = eval_dir
    assert train_cli(["results-table", str(out)]) == 0
    assert "Protocol `ct-clip`" in capsys.readouterr().out


def test_smoke_prints_both_protocols(eval_dir):
    _, m, _, _ = eval_dir
    summary = protocol_summary(m)
    assert set(summary) == {"held-out-threshold", "ct-clip"}
    lines = format_protocols(summary).splitlines()
    assert lines[0].startswith("protocol held-out-threshold (thresholds from the validation split): macro AUROC ")
    assert f"macro F1 {m['classification']['macro']['f1']:.3f}" in lines[0]
    ct = m["classification_ct_clip"]["mean"]
    assert lines[1].startswith("protocol ct-clip (thresholds from the evaluated set")
    assert (
        f"weighted F1 {ct['f1_weighted']:.3f} [{ct['ci']['f1_weighted'][0]:.3f}, {ct['ci']['f1_weighted'][1]:.3f}]"
        in lines[1]
    )
    held_only = {k: v for k, v in m.items() if k != "classification_ct_clip"}
    assert format_protocols(protocol_summary(held_only)).count("\n") == 0
