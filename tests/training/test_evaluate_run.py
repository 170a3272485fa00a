"""``evaluate`` of a head run: both protocols in evaluation.json, the labeler checked before any prediction."""

from __future__ import annotations

import json

import pytest

from neuroradix.errors import ConfigError
from neuroradix_train.config import CONFIG_DIR, load_config
from neuroradix_train.evaluation.evaluate import evaluate_run
from neuroradix_train.evaluation.tables import write_results_table
from neuroradix_train.stages.head import train_head
from tests.training.test_head_resume import _embedding_export


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    export = _embedding_export(root / "emb", n_train=16, n_valid=12)
    train_head(
        load_config(
            "head",
            [CONFIG_DIR / "head-tiny.yaml"],
            [
                f"data.embeddings={export}",
                f"train.out_dir={root / 'head'}",
                "train.epochs=2",
                "train.ckpt_every_steps=0",
                "train.val_every_epochs=100",
                "train.generate_on_val=false",
            ],
        )
    )
    return root, export


def _cfg(root, export, *sets):
    return load_config(
        "evaluate",
        None,
        [
            f"data.embeddings={export}",
            f"evaluate.head={root / 'head'}",
            f"evaluate.out_dir={root / 'eval'}",
            "evaluate.device=cpu",
            "evaluate.generate=false",
            "evaluate.n_bootstrap=20",
            *sets,
        ],
    )


def test_evaluate_reports_both_protocols(head_run):
    root, export = head_run
    result = evaluate_run(_cfg(root, export))
    head = result["head"]
    assert head["protocols"] == ["held-out-threshold", "ct-clip"]
    # valid is the threshold split: the thresholds are chosen on it, and the report says so
    assert head["classification"]["thresholds_from"].startswith("these data")
    assert head["classification_ct_clip"]["n_bootstrap"] == 20
    saved = json.loads((root / "eval" / "evaluation.json").read_text())
    assert saved["head"]["classification_ct_clip"]["protocol"] == "ct-clip"
    assert "Protocol `ct-clip`" in write_results_table(root / "eval")


def test_evaluate_fails_on_missing_radbert_files_first(head_run):
    root, export = head_run
    with pytest.raises(ConfigError, match="tokenizer"):
        evaluate_run(
            _cfg(
                root,
                export,
                "evaluate.labeler=radbert",
                f"evaluate.radbert_checkpoint={root / 'none.pt'}",
                "evaluate.out_dir=" + str(root / "eval2"),
            )
        )
    assert not (root / "eval2").exists()
