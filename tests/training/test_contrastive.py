"""The contrastive stage: its loss, its retrieval and zero-shot metrics, and resuming a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neuroradix.models.encoders.vit import load_vit
from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.evaluation.metrics import auroc
from neuroradix_train.evaluation.plots import read_jsonl
from neuroradix_train.stages.contrastive import info_nce, recall_at_k, text_id, train_contrastive, zero_shot_scores


def _scale(temperature: float) -> torch.Tensor:
    return torch.tensor(math.log(1.0 / temperature))


def test_info_nce_by_hand():
    """Temperature 0.5 (scale 2): logits [[2, 1.2], [0, 1.6]], cross-entropies worked out row and column."""
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    sp = lambda z: math.log1p(math.exp(-z))  # noqa: E731 - -log(sigmoid(z)), the 2-way cross-entropy
    i2t = (sp(2.0 - 1.2) + sp(1.6 - 0.0)) / 2
    t2i = (sp(2.0 - 0.0) + sp(1.6 - 1.2)) / 2
    loss = info_nce(image, text, _scale(0.5))
    assert abs(float(loss) - 0.5 * (i2t + t2i)) < 1e-6


def test_info_nce_is_symmetric_and_sharpened_by_a_lower_temperature():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(6, 8), dim=-1)
    a, b = info_nce(img, txt, _scale(0.1)), info_nce(txt, img, _scale(0.1))
    assert abs(float(a) - float(b)) < 1e-6
    # shuffled pairs cost more than matched ones
    assert float(info_nce(img, txt[torch.tensor([1, 2, 3, 4, 5, 0])], _scale(0.1))) > float(a)
    # each scan closest to its own report: a sharper softmax puts more mass on the diagonal
    assert (
        float(info_nce(img, img, _scale(0.05)))
        < float(info_nce(img, img, _scale(0.1)))
        < float(info_nce(img, img, _scale(1.0)))
    )
    # the temperature learns: the gradient of the log scale is negative (raise the scale) there
    scale = _scale(0.1).clone().requires_grad_(True)
    info_nce(img, img, scale).backward()
    assert scale.grad is not None and float(scale.grad) < 0


def test_info_nce_treats_identical_reports_as_positives():
    """Two scans with the same report: each row's target is split over both columns."""
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    ids = torch.tensor([7, 7])
    loss = info_nce(image, text, _scale(1.0), ids)
    # rows: logits [1, 1] and [0, 0], uniform targets -> log 2 each; columns: [1, 0] twice, targets 1/2
    col = 0.5 * (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)))
    assert abs(float(loss) - 0.5 * (math.log(2) + col)) < 1e-6
    # an asymmetric case: logits [[1, 0.6], [0, 0.8]], every target 1/2: CE of [a, b] = logsumexp - (a + b) / 2
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    ce = lambda a, b: math.log(math.exp(a) + math.exp(b)) - (a + b) / 2  # noqa: E731
    expect = 0.5 * ((ce(1.0, 0.6) + ce(0.0, 0.8)) / 2 + (ce(1.0, 0.0) + ce(0.6, 0.8)) / 2)
    assert abs(float(info_nce(image, text, _scale(1.0), ids)) - expect) < 1e-6
    assert (
        abs(float(info_nce(image, text, _scale(1.0), torch.tensor([1, 2]))) - float(info_nce(image, text, _scale(1.0))))
        < 1e-6
    )


def test_recall_at_k_on_a_known_similarity_matrix():
    sim = np.array(
        [
            [0.9, 0.1, 0.0, 0.2],  # own report first
            [0.8, 0.3, 0.1, 0.0],  # own report second
            [0.1, 0.2, 0.3, 0.9],  # own report second (after 0.9)
            [0.0, 0.1, 0.9, 0.2],  # own report second
        ]
    )
    r = recall_at_k(sim, [1, 2, 3, 4], ks=(1, 2))
    assert r["recall@1"] == 0.25 and r["recall@2"] == 1.0
    assert r["chance@1"] == pytest.approx(0.25) and r["chance@2"] == pytest.approx(0.5)
    # scans 2 and 3 share a report text: scan 3's top hit (report 2) now counts
    r = recall_at_k(sim, [1, 2, 3, 3], ks=(1,))
    assert r["recall@1"] == 0.75
    assert r["chance@1"] == pytest.approx((1 + 1 + 2 + 2) / 16)


def test_text_ids_are_stable_and_equal_for_equal_texts():
    assert text_id("No emphysema is seen.") == text_id("No emphysema is seen.") != text_id("Emphysema.")
    assert 0 <= text_id("x") < 2**63


def test_zero_shot_scores_on_a_constructed_case():
    """Scans built along the 'present' direction of finding 0 score high on it, the others low."""
    pos = torch.eye(4)[:2]  # finding 0 present along e0, finding 1 along e1
    neg = torch.eye(4)[2:]  # their 'not present' prompts along e2, e3
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    image = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]),
        dim=-1,
    )
    p = zero_shot_scores(image, pos, neg, _scale(0.1))
    assert p.shape == (4, 2)
    # P(present) is the softmax over the two prompts' scaled similarities
    s = 10.0 * image[0]
    expect = torch.softmax(torch.stack([s @ pos[0], s @ neg[0]]), 0)[0]
    assert abs(float(p[0, 0]) - float(expect)) < 1e-6
    assert auroc(y[:, 0], p[:, 0].numpy()) == 1.0 and auroc(y[:, 1], p[:, 1].numpy()) == 1.0
    assert float(p[3, 0]) < 0.5 < float(p[0, 0])


def _cfg(root, out, *sets):
    return load_config(
        "contrastive",
        [CONFIG_DIR / "contrastive-tiny.yaml"],
        [
            f"data.root={root}",
            f"train.out_dir={out}",
            "data.max_train_scans=4",
            "data.max_valid_scans=3",
            "train.batch_size=2",
            "train.epochs=1",
            "train.ckpt_every_steps=1",
            "train.threads=1",
            "model.vit.width=32",
            "model.vit.depth=1",
            "model.text.num_hidden_layers=1",
            *sets,
        ],
    )


def test_contrastive_resumes_with_the_losses_of_an_uninterrupted_run(mini_ctrate, tmp_path):
    """Two steps in one go, and one step + resume, log the same losses and write the same ViT."""
    whole = train_contrastive(_cfg(mini_ctrate, tmp_path / "whole"))
    assert whole["step"] == 2 and whole["epoch"] == 1
    out = tmp_path / "resumed"
    first = train_contrastive(_cfg(mini_ctrate, out), max_steps=1)
    assert first["step"] == 1 and not (out / "val_metrics.json").exists()
    resumed = train_contrastive(_cfg(mini_ctrate, out), resume=True)
    assert resumed["step"] == 2 and resumed["epoch"] == 1
    a, b = read_jsonl(tmp_path / "whole" / "steps.jsonl"), read_jsonl(out / "steps.jsonl")
    assert [s["step"] for s in b] == [1, 2]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), (x, y)
    va, vb = load_vit(tmp_path / "whole"), load_vit(out)
    for (name, p), (_, q) in zip(va.state_dict().items(), vb.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-6), name
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert metrics["n_scans"] == 3 and 0.0 <= metrics["recall@1"] <= 1.0
    assert set(metrics["zero_shot_auroc"]) >= {"Emphysema", "Cardiomegaly"}
    assert (out / "loss.png").is_file() and (out / "epochs.csv").is_file()


def test_phantom_prompts_are_the_reports_own_sentences():
    from neuroradix_train.data.phantoms import PLANTED, phantom_report
    from tests.training.smoke import phantom_prompts

    prompts = phantom_prompts()
    assert list(prompts) == list(PLANTED)
    rng = np.random.default_rng(1)
    for name, (present, absent) in prompts.items():
        text = phantom_report([name], rng)[0]
        assert present in text and absent not in text, name
        assert absent in phantom_report([], rng)[0]
