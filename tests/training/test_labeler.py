"""Report labelers: the rule labeler (negation included), CT-RATE's RadBERT from local files, agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertTokenizer

from neuroradix.errors import ConfigError
from neuroradix_train.cli import main as train_cli
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.evaluate import labeler_agreement_on, labeler_agreement_reports
from neuroradix_train.evaluation.labeler import Labeler, ReportLabeler, build_labeler
from neuroradix_train.evaluation.radbert import RadBertClassifier, RadBERTLabeler


def _pos(text):
    lab = ReportLabeler().label(text)
    return {FINDINGS[i] for i in np.nonzero(lab)[0]}


def test_positive_and_negated_mentions():
    assert _pos("Emphysematous changes are observed in both lungs.") == {"Emphysema"}
    assert _pos("No pleural effusion was detected.") == set()
    assert _pos("Pleural effusion was not detected.") == set()
    assert _pos("No pleural or pericardial effusion was detected. Cardiomegaly.") == {"Cardiomegaly"}
    assert _pos("Bilateral pleural effusion, but no pericardial effusion.") == {"Pleural effusion"}
    assert _pos("A 4 mm nodule in the right lower lobe; no consolidation.") == {"Lung nodule"}
    assert _pos("Calcific atherosclerotic changes in the aorta and coronary artery wall calcification.") == {
        "Arterial wall calcification",
        "Coronary artery wall calcification",
    }
    assert _pos("No lymph nodes of pathological size. Sliding hiatal hernia.") == {"Hiatal hernia"}
    assert _pos("") == set()


def test_agreement_with_fixture_label_csv(mini_ctrate):
    agr = labeler_agreement_on(mini_ctrate, "train")
    assert agr["micro"]["accuracy"] == 1.0  # templated phantom reports: the labeler reads them exactly
    assert agr["per_finding"]["Emphysema"]["accuracy"] == 1.0


# --------------------------------------------------------------------------- labelers as plug-ins: CT-RATE's RadBERT

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "emphysema", "is", "seen", "."]
POSITIVE = list(range(0, 18, 2))  # the tiny classifier calls these findings present, whatever the text


@pytest.fixture(scope="module")
def tiny_radbert(tmp_path_factory) -> tuple[Path, Path]:
    """A BERT of 2 layers built here (config.json + tokenizer files + a CT-RATE-layout .pt state dict)."""
    root = tmp_path_factory.mktemp("radbert")
    tok_dir = root / "radbert-tokenizer"
    tok_dir.mkdir()
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab_file=str(root / "vocab.txt")).save_pretrained(tok_dir)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config.save_pretrained(tok_dir)
    torch.manual_seed(0)
    model = RadBertClassifier(config, 18)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-6.0)
        model.classifier.bias[POSITIVE] = 6.0
    ckpt = root / "RadBertClassifier.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ckpt)  # as saved from DataParallel
    return ckpt, tok_dir


def test_radbert_labeler_loads_local_files_and_labels(tiny_radbert):
    ckpt, tok_dir = tiny_radbert
    lab = build_labeler("radbert", ckpt, tok_dir)
    assert isinstance(lab, RadBERTLabeler) and isinstance(lab, Labeler) and lab.name == "radbert"
    out = lab.label_many(["No pleural effusion.", "Emphysema is seen.", ""])
    expected = np.zeros(18, np.int64)
    expected[POSITIVE] = 1
    assert out.shape == (3, 18) and (out == expected).all()
    assert lab.label_many([]).shape == (0, 18)
    # the probabilities are the classifier's own forward pass
    enc = lab.tokenizer(["Emphysema is seen."], return_tensors="pt")
    with torch.no_grad():
        direct = torch.sigmoid(lab.model(enc["input_ids"], enc["attention_mask"])).numpy()
    assert lab.probabilities(["Emphysema is seen."]) == pytest.approx(direct, abs=1e-6)


def test_radbert_errors_name_what_is_missing(tiny_radbert, tmp_path):
    ckpt, tok_dir = tiny_radbert
    with pytest.raises(ConfigError, match="checkpoint"):
        build_labeler("radbert", None, tok_dir)
    with pytest.raises(ConfigError, match="nowhere.pt does not exist"):
        RadBERTLabeler(tmp_path / "nowhere.pt", tok_dir)
    empty = tmp_path / "tok"
    empty.mkdir()
    (empty / "config.json").write_text((tok_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"lacks tokenizer files \(one of: tokenizer.json"):
        RadBERTLabeler(ckpt, empty)
    (empty / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (empty / "config.json").unlink()
    with pytest.raises(ConfigError, match="lacks config.json"):
        RadBERTLabeler(ckpt, empty)
    with pytest.raises(ConfigError, match="tokenizer folder .* does not exist"):
        RadBERTLabeler(ckpt, tmp_path / "missing")
    wrong = tmp_path / "wrong.pt"
    state = torch.load(ckpt, weights_only=True)
    state["module.classifier.weight"] = torch.zeros(14, 16)  # a 14-label (CXR) head
    torch.save(state, wrong)
    with pytest.raises(ConfigError, match="does not fit"):
        RadBERTLabeler(wrong, tok_dir)
    del state["module.classifier.weight"]
    torch.save(state, wrong)
    with pytest.raises(ConfigError, match="missing.*classifier.weight"):
        RadBERTLabeler(wrong, tok_dir)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable PyTorch state dict"):
        RadBERTLabeler(tmp_path / "junk.pt", tok_dir)
    with pytest.raises(ConfigError, match="labeler must be one of"):
        build_labeler("chexbert")


def _write_reports(tmp_path: Path) -> tuple[Path, Path]:
    reports = tmp_path / "reports.csv"
    reports.write_text(
        "VolumeName,Findings_EN,Impressions_EN\n"
        "a_1_a_1.nii.gz,Emphysema is seen.,No pleural effusion.\n"
        "a_2_a_1.nii.gz,Bilateral pleural effusion.,Cardiomegaly.\n"
        "a_3_a_1.nii.gz,No nodule.,\n"
    )
    labels = tmp_path / "labels.csv"
    rows = {"a_1_a_1.nii.gz": {"Emphysema"}, "a_2_a_1.nii.gz": {"Pleural effusion", "Lung nodule"}}
    labels.write_text(
        ",".join(("VolumeName",) + FINDINGS)
        + "\n"
        + "".join(",".join([name] + [str(int(f in pos)) for f in FINDINGS]) + "\n" for name, pos in rows.items())
    )
    return reports, labels


def test_labeler_agreement_on_any_reports(tmp_path, tiny_radbert):
    reports, labels = _write_reports(tmp_path)
    agr = labeler_agreement_reports(reports, labels_csv=labels)
    # rule labels: {Emphysema}, {Pleural effusion, Cardiomegaly}; RadBERT CSV: {Emphysema}, {Pleural effusion, Lung nodule}
    assert agr["labeler"] == "rule" and agr["n_reports"] == 2 and agr["n_without_labels"] == 1
    assert agr["micro"]["precision"] == pytest.approx(2 / 3) and agr["micro"]["recall"] == pytest.approx(2 / 3)
    assert agr["per_finding"]["Lung nodule"]["recall"] == 0.0 and agr["macro"]["n_findings"] == 3
    assert agr["macro"]["f1"] == pytest.approx((1 + 1 + 0) / 3)
    with pytest.raises(ConfigError, match="--labels"):
        labeler_agreement_reports(reports)
    # the classifier itself as the reference, through the CLI
    ckpt, tok_dir = tiny_radbert
    out = tmp_path / "agreement.json"
    assert (
        train_cli(
            [
                "evaluate",
                "--labeler-agreement",
                "--reports",
                str(reports),
                "--radbert-checkpoint",
                str(ckpt),
                "--radbert-tokenizer",
                str(tok_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert got["reference"] == "radbert classifier" and got["n_reports"] == 3
    # the tiny classifier says POSITIVE (even indices) for every report; the rule labeler says Emphysema (7),
    # then Pleural effusion (12) and Cardiomegaly (2): 2 of its 3 positives are RadBERT's
    assert got["micro"]["support"] == 3 * len(POSITIVE)
    assert got["micro"]["precision"] == pytest.approx(2 / 3) and got["micro"]["recall"] == pytest.approx(2 / 27)
