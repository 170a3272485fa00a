"""Results tables: an evaluation folder as the Markdown tables used in ``docs/``.

``neuroradix-train results-table FOLDER`` reads the ``metrics.json`` that
:func:`~neuroradix_train.evaluation.predictions.evaluate_predictions` wrote (in ``FOLDER`` or, for an
``evaluate`` run, ``FOLDER/head``) and writes one table per protocol (per finding AUROC, F1,
precision, recall, threshold; macro and micro rows; 95 % bootstrap intervals under ``ct-clip``)
and one for the reports (with the labeler that produced the CE numbers). Every table names its protocol.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from neuroradix.errors import ConfigError
from neuroradix_train.evaluation.metrics import HELD_OUT_THRESHOLD
from neuroradix_train.evaluation.protocols import CT_CLIP


def find_metrics(folder: Path) -> Path:
    """The ``metrics.json`` of an evaluation folder (``FOLDER/metrics.json`` or ``FOLDER/head/metrics.json``).

    Raises
    ------
    ConfigError
        Neither file exists.
    """
    folder = Path(folder)
    for cand in (folder / "metrics.json", folder / "head" / "metrics.json"):
        if cand.is_file():
            return cand
    raise ConfigError(
        f"{folder} holds no metrics.json (nor head/metrics.json): is it an evaluate or train-head output folder?"
    )


def _num(v: Optional[float], digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _ci(value: Optional[float], ci: Optional[Sequence[float]]) -> str:
    if not ci or any(c is None or math.isnan(c) for c in ci):
        return _num(value)
    return f"{_num(value)} ({_num(ci[0])}–{_num(ci[1])})"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def held_out_table(cls: dict) -> list[str]:
    """Markdown lines of the ``held-out-threshold`` classification block."""
    lines = [
        f"Protocol `{HELD_OUT_THRESHOLD}`: thresholds from {cls.get('thresholds_from', 'the validation split')}; "
        "F1, precision and recall of the positive class.",
        "",
        _row(["finding", "AUROC", "F1", "precision", "recall", "threshold", "positives"]),
        _row(["---"] * 7),
    ]
    for name, v in cls["per_finding"].items():
        lines.append(
            _row(
                [
                    name,
                    _num(v["auroc"]),
                    _num(v["f1"]),
                    _num(v["precision"]),
                    _num(v["recall"]),
                    _num(v["threshold"]),
                    str(v.get("support", "–")),
                ]
            )
        )
    m = cls["macro"]
    lines.append(
        _row(
            [
                f"**macro** ({m.get('n_findings', '–')} findings)",
                _num(m["auroc"]),
                _num(m["f1"]),
                _num(m["precision"]),
                _num(m["recall"]),
                "–",
                "–",
            ]
        )
    )
    if "micro" in cls:
        u = cls["micro"]
        lines.append(
            _row(
                [
                    "**micro**",
                    _num(u.get("auroc")),
                    _num(u["f1"]),
                    _num(u["precision"]),
                    _num(u["recall"]),
                    "–",
                    str(u.get("support", "–")),
                ]
            )
        )
    return lines


def ct_clip_table(cls: dict) -> list[str]:
    """Markdown lines of the ``ct-clip`` classification block, 95 % intervals in brackets."""
    n = cls.get("n_bootstrap", 0)
    lines = [
        f"Protocol `{CT_CLIP}` (CT-CLIP's bootstrap_values.py): thresholds on the evaluated set at the ROC point "
        f"closest to (0, 1); weighted F1; {n} bootstrap resamples, 95 % intervals in brackets.",
        "",
        _row(["finding", "AUROC", "weighted F1", "accuracy", "precision", "recall", "threshold"]),
        _row(["---"] * 7),
    ]
    keys = ("auroc", "f1_weighted", "accuracy", "precision", "recall")
    for name, v in cls["per_finding"].items():
        ci = v.get("ci", {})
        lines.append(_row([name, *(_ci(v[k], ci.get(k)) for k in keys), _num(v["threshold"])]))
    m = cls["mean"]
    ci = m.get("ci", {})
    lines.append(_row([f"**mean** ({m.get('n_findings', '–')} findings)", *(_ci(m[k], ci.get(k)) for k in keys), "–"]))
    return lines


def report_table(rep: dict, agreement: Optional[dict]) -> list[str]:
    """Markdown lines of the report metrics, naming the CE labeler and its agreement with the label CSV."""
    agr = _num(agreement.get("f1")) if agreement else "–"
    lines = [
        "Reports: BLEU (nltk corpus_bleu), METEOR (exact + stem, offline), ROUGE-L (rouge-score LCS, beta 1.2); "
        f"clinical efficacy labeled by the `{rep.get('ce_labeler', 'rule')}` labeler.",
        "",
        _row(
            [
                "BLEU-1",
                "BLEU-4",
                "METEOR",
                "ROUGE-L",
                "CE micro F1 / P / R",
                "CE macro F1 / P / R",
                "labeler",
                "labeler vs label CSV (micro F1)",
            ]
        ),
        _row(["---"] * 8),
        _row(
            [
                _num(rep.get("bleu1")),
                _num(rep.get("bleu4")),
                _num(rep.get("meteor")),
                _num(rep.get("rouge_l")),
                " / ".join(_num(rep.get(f"ce_micro_{k}")) for k in ("f1", "precision", "recall")),
                " / ".join(_num(rep.get(f"ce_macro_{k}")) for k in ("f1", "precision", "recall")),
                rep.get("ce_labeler", "rule"),
                agr,
            ]
        ),
    ]
    return lines


def results_markdown(metrics: dict, title: str = "Results") -> str:
    """The Markdown tables of one ``metrics.json`` (already loaded)."""
    n = metrics.get("n_cases")
    out = [f"## {title}" + (f" ({n} scans)" if n else ""), ""]
    out += held_out_table(metrics["classification"]) + [""]
    if "classification_ct_clip" in metrics:
        out += ct_clip_table(metrics["classification_ct_clip"]) + [""]
    if "report" in metrics:
        out += report_table(metrics["report"], metrics.get("labeler_agreement")) + [""]
    return "\n".join(out)


def write_results_table(folder: Path, out: Optional[Path] = None, title: Optional[str] = None) -> str:
    """Turn an evaluation folder into Markdown; written to ``out`` when given, and returned.

    Parameters
    ----------
    folder:
        An ``evaluate`` output folder or a ``train-head`` run folder.
    out:
        Markdown file to write (default: only return the text).
    title:
        Heading of the tables (default: the folder's name).
    """
    path = find_metrics(folder)
    text = results_markdown(json.loads(path.read_text(encoding="utf-8")), title or Path(folder).resolve().name)
    if out is not None:
        Path(out).write_text(text, encoding="utf-8")
    return text
