"""Linear probe of frozen encoder features on the training smoke's phantom dataset.

For each encoder (default: pretrained ``astra`` and ``merlin`` if their weights are installed, and a
random-init SwinUNETR as the baseline) every phantom scan of a miniature CT-RATE-layout dataset
(:func:`neuroradix_train.data.phantoms.build_miniature_ctrate`, the planted findings of the training
smoke) is encoded once; the global vectors are standardised and a logistic regression
(``sklearn.linear_model.LogisticRegression``) is fitted per planted finding; AUROCs are
out-of-fold (stratified k-fold over all scans).  Features are cached per encoder in ``--work``.

    .venv/bin/python scripts/probe_encoders.py --work /tmp/probe --scans 48 --encoders astra,swinunetr

Prints one JSON object (per encoder: per-finding AUROC, their mean, seconds per scan) and writes
it to ``<work>/probe.json``.  The phantom is unlike real CT (7.5 x 6 x 6 mm voxels, geometric organs,
planted blobs); a pretrained encoder not beating random features here says little about real scans.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neuroradix.models.config import PreprocessConfig
from neuroradix.models.encoders import build_encoder
from neuroradix_train.data.dataset import load_records, load_volume
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.data.phantoms import PLANTED, build_miniature_ctrate

log = logging.getLogger("probe_encoders")


def dataset(work: Path, scans: int, seed: int) -> list:
    root = work / f"phantoms-{scans}-{seed}"
    if not (root / "dataset").is_dir():
        build_miniature_ctrate(root, n_train=scans // 2, n_valid=scans - scans // 2, seed=seed)
    records = load_records(root, "train", require_labels=True) + load_records(root, "valid", require_labels=True)
    return [r for r in records if r.name.startswith(("train_", "valid_"))]


def features(name: str, records: list, cache: Path, swin_spacing: float) -> tuple[np.ndarray, float]:
    """Global vectors ``[scans, width]`` of encoder ``name`` (cached) and seconds per scan."""
    if cache.is_file():
        with np.load(cache) as z:
            return z["x"], float(z["seconds_per_scan"])
    torch.manual_seed(0)
    kwargs = {}
    if name == "swinunetr":  # random init; the node's windows, at a coarser grid to keep the CPU cost down
        kwargs["preprocess_cfg"] = PreprocessConfig(target_spacing=(swin_spacing,) * 3)
    enc = build_encoder(name, **kwargs).eval()  # pretrained for merlin/astra
    rows, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for i, r in enumerate(records):
            vol = load_volume(r)
            x, _ = enc.preprocess_volume(vol.array, vol.affine)
            rows.append(enc(x).global_vector[0].float().numpy())
            log.info("%s: %d/%d scans", name, i + 1, len(records))
    sec = (time.perf_counter() - t0) / max(1, len(records))
    x = np.stack(rows)
    np.savez(cache, x=x, seconds_per_scan=sec)
    return x, sec


def probe(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> dict[str, float]:
    out = {}
    for j, finding in enumerate(PLANTED):
        target = y[:, j]
        k = int(min(folds, target.sum(), len(target) - target.sum()))
        if k < 2:
            out[finding] = float("nan")
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        p = cross_val_predict(model, x, target, cv=cv, method="predict_proba")[:, 1]
        out[finding] = float(roc_auc_score(target, p))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/probe_encoders"))
    ap.add_argument("--scans", type=int, default=48)
    ap.add_argument("--encoders", default="astra,merlin,swinunetr")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--swin-spacing", type=float, default=3.0, help="mm grid of the random SwinUNETR (node: 1.5)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    records = dataset(args.work, args.scans, args.seed)
    index = [FINDINGS.index(f) for f in PLANTED]
    y = np.stack([np.asarray(r.labels)[index] for r in records]).astype(int)
    report = {"scans": len(records), "positives": dict(zip(PLANTED, y.sum(axis=0).tolist())), "encoders": {}}
    for name in [n.strip() for n in args.encoders.split(",") if n.strip()]:
        try:
            suffix = f"-{args.swin_spacing:g}mm" if name == "swinunetr" else ""
            cache = args.work / f"features-{name}{suffix}-{args.scans}-{args.seed}.npz"
            x, sec = features(name, records, cache, args.swin_spacing)
        except Exception as exc:  # noqa: BLE001 - a missing extra skips that encoder, named in the report
            report["encoders"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        aucs = probe(x, y, args.folds, args.seed)
        report["encoders"][name] = {
            "width": int(x.shape[1]),
            "seconds_per_scan": round(sec, 2),
            "auroc": {k: round(v, 3) for k, v in aucs.items()},
            "mean_auroc": round(float(np.nanmean(list(aucs.values()))), 3),
        }
    (args.work / "probe.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
