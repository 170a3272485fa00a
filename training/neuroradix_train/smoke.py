"""``train-smoke``: the three stages end to end on a miniature phantom dataset, with assertions.

1. build a CT-RATE-layout dataset (phantoms with planted findings + the real test CTs);
2. stage 1 with ``stage1-tiny.yaml`` -> Dice on the phantom organs (lungs, heart, aorta, trachea);
3. stage 2 export;
4. stage 3 with ``stage3-tiny.yaml`` -> macro AUROC over the planted findings, generated reports,
   CE-F1 against the templated references;
5. publish a release into ``<work>/release`` and load it through ``neuroradix.weights``.

The release is marked untrained: phantom weights must never reach a PACS as real results.
Thresholds: Dice > 0.8, macro AUROC > 0.9, CE micro F1 > 0.8 (see :data:`THRESHOLDS`).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from neuroradix.errors import NeuroRadixError

from .config import CONFIG_DIR, load_config
from .phantoms import PLANTED

log = logging.getLogger(__name__)

THRESHOLDS = {"dice": 0.8, "macro_auroc": 0.9, "ce_f1": 0.8}
PHANTOM_ORGANS = ("left lung", "right lung", "heart", "aorta", "trachea")  # each phantom lung is one lobe label


class SmokeFailure(NeuroRadixError):
    """A learning threshold of the smoke run was not met."""


def _organ_labels() -> dict[str, int]:
    """43-class labels of the phantom organs, found through the remap table."""
    from neuroradix.models.remap import load_remap

    from .phantoms import TS

    remap = load_remap("totalseg117-to-chest-ct-43")
    pairs = {"left lung": TS["lung_upper_lobe_left"], "right lung": TS["lung_upper_lobe_right"], "heart": TS["heart"],
             "aorta": TS["aorta"], "trachea": TS["trachea"]}
    return {name: int(remap.lut[src]) for name, src in pairs.items() if remap.lut[src] > 0}


def run_smoke(work: Path, *, real_ct_dir: Optional[Path] = None, check: bool = True, n_train: int = 40, n_valid: int = 20,
              seg_train_scans: int = 12, seg_epochs: int = 12, head_epochs: Optional[int] = None,
              extra_sets: Sequence[str] = ()) -> dict:
    """Run the smoke pipeline under ``work``; returns the numbers (raises :class:`SmokeFailure` when ``check``)."""
    from .phantoms import build_miniature_ctrate
    from .release import publish_release
    from .stage1 import train_seg
    from .stage2 import export_embeddings
    from .stage3 import train_head

    work = Path(work)
    t0 = time.time()
    root = work / "ctrate-mini"
    if not (root / "dataset" / "metadata" / "validation_metadata.csv").is_file():
        build_miniature_ctrate(root, n_train=n_train, n_valid=n_valid, real_ct_dir=real_ct_dir, seed=0)
    timings = {}
    s1 = load_config("stage1", [CONFIG_DIR / "stage1-tiny.yaml"],
                     [f"data.root={root}", f"train.out_dir={work / 'stage1'}", f"data.max_train_scans={seg_train_scans}",
                      f"train.epochs={seg_epochs}", *[s for s in extra_sets if s.startswith("stage1:")]])
    r1 = train_seg(s1)
    timings["stage1_s"] = round(time.time() - t0, 1)
    organs = _organ_labels()
    dice = {name: r1["dice_per_class"].get(label, float("nan")) for name, label in organs.items()}
    s2 = load_config("stage2", None, [f"data.root={root}", f"export.backbone={work / 'stage1'}", f"export.out_dir={work / 'embeddings'}",
                                      "export.threads=2"])
    export_embeddings(s2)
    timings["stage2_s"] = round(time.time() - t0 - timings["stage1_s"], 1)
    sets3 = [f"data.embeddings={work / 'embeddings'}", f"train.out_dir={work / 'head'}"]
    if head_epochs:
        sets3.append(f"train.epochs={head_epochs}")
    r3 = train_head(load_config("stage3", [CONFIG_DIR / "stage3-tiny.yaml"], sets3))
    timings["stage3_s"] = round(time.time() - t0 - timings["stage1_s"] - timings["stage2_s"], 1)
    cls = r3["metrics"]["classification"]["per_finding"]
    planted_auroc = {n: cls[n]["auroc"] for n in PLANTED}
    macro = sum(planted_auroc.values()) / len(planted_auroc)
    rep = r3["metrics"].get("report", {})
    release = publish_release(work / "stage1", work / "head", work / "release", version="0.0.0-smoke",
                              dataset="neuroradix phantoms", licence="Apache-2.0", untrained=True)
    result = {"dice": dice, "dice_mean_phantom_organs": sum(dice.values()) / max(len(dice), 1),
              "planted_auroc": planted_auroc, "macro_auroc_planted": macro,
              "ce_micro_f1": rep.get("ce_micro_f1"), "bleu1": rep.get("bleu1"), "meteor": rep.get("meteor"),
              "rouge_l": rep.get("rouge_l"), "labeler_agreement": r3["metrics"]["labeler_agreement"],
              "release": str(release), "seconds": timings}
    (work / "smoke.json").write_text(json.dumps(result, indent=1, default=float))
    if check:
        failures = []
        low = {k: v for k, v in dice.items() if math.isnan(v) or v <= THRESHOLDS["dice"]}
        if low:
            failures.append(f"Dice <= {THRESHOLDS['dice']} for {low}")
        if not macro > THRESHOLDS["macro_auroc"]:
            failures.append(f"macro AUROC over planted findings {macro:.3f} <= {THRESHOLDS['macro_auroc']}")
        if not (rep.get("ce_micro_f1") or 0) > THRESHOLDS["ce_f1"]:
            failures.append(f"CE micro F1 {rep.get('ce_micro_f1')} <= {THRESHOLDS['ce_f1']}")
        if failures:
            raise SmokeFailure("; ".join(failures) + f" (numbers in {work / 'smoke.json'})")
    return result
