"""Contrastive stage: a 3D ViT trained against the reports, as CLIP and CT-CLIP do.

Image side: the scan preprocessed by :meth:`ViTEncoder.preprocess` (cached once per scan), the
ViT's [CLS] vector, a linear projection to ``model.embed_dim``. Text side: the report (findings +
impressions) through the head's own tokenizer (a byte-level BPE trained on the training reports,
:func:`neuroradix.models.tokenizer.train_tokenizer`) and a small BERT built from a local
``transformers.BertConfig`` with random weights (nothing is loaded from a hub), mean-pooled over
its tokens, a linear projection. Loss: the symmetric InfoNCE of CLIP with a learnable temperature
(:func:`info_nce`); reports identical to each other count as positives of each other's scans.

Validation metrics (``val_every_epochs`` and at the end, in ``val_metrics.json``):

* image -> report retrieval recall@k over the validation split (:func:`recall_at_k`); a report
  with the same text as the scan's own is a hit, and the chance level is given with it;
* zero-shot finding scores from prompt pairs (:func:`zero_shot_scores`): for each finding of the
  node's catalogue, the softmax of the scan's similarity to a "present" and a "not present"
  prompt, as CT-CLIP scores its 18 findings (``ibrahimethemhamamci/CT-CLIP``,
  ``scripts/zero_shot.py``: ``[f"{pathology}.", f"not {pathology}."]``, softmax over the pair; its
  later scripts use ``"{pathology} is present."`` / ``"{pathology} is not present."``, the default
  here), then the AUROC per finding (:func:`neuroradix_train.evaluation.metrics.auroc`).

The trained ViT is written as ``encoder.json`` + ``encoder.pt`` (:func:`save_vit`): the embeddings
stage exports its tokens (:func:`vit_export_sets`), the head stage trains the head on them, and
:func:`publish_vit_release` makes a release whose manifest names the ``vit`` encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from neuroradix.errors import ConfigError
from neuroradix.models.config import ModelConfig
from neuroradix.models.encoders.vit import ENCODER_CONFIG, ENCODER_WEIGHTS, ViTEncoder, save_vit
from neuroradix.models.release import load_release, write_release
from neuroradix.models.tokenizer import load_tokenizer, train_tokenizer
from neuroradix_train.data.dataset import ScanRecord, load_records, load_volume
from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.data.preprocess import cache_key
from neuroradix_train.evaluation.metrics import auroc
from neuroradix_train.evaluation.plots import plot_loss_curves, plot_roc
from neuroradix_train.settings import ContrastiveConfig, ContrastiveData, ContrastiveModelSection
from neuroradix_train.stages import distributed as D
from neuroradix_train.stages.trainer import StageRun, StepOutput, TrainingTask, Validation, fit, progress

logger = logging.getLogger(__name__)

CT_CLIP_TEMPLATES = (("{finding} is present.", "{finding} is not present."),)
"""CT-CLIP's prompt pair (see the module docstring)."""


# --------------------------------------------------------------------------- losses and metrics


def info_nce(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, text_ids: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised ``image`` and ``text`` embeddings ``(N, E)``.

    ``logits = exp(logit_scale) * image @ text.T``; the loss is the mean of the image->text and
    text->image cross-entropies with the diagonal as targets (CLIP). With ``text_ids`` (one id
    per pair, equal for identical reports) the targets of a row are spread evenly over the
    columns whose report is the same, so a duplicate report is not pushed away as a negative.
    """
    logits = logit_scale.exp() * image @ text.T
    if text_ids is None:
        target = torch.arange(len(image), device=image.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = (text_ids[:, None] == text_ids[None, :]).to(logits.dtype)
    soft = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft))


def recall_at_k(similarity: np.ndarray, text_ids: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict:
    """Image -> report retrieval: the fraction of scans with a correct report in their top ``k``.

    ``similarity[i, j]`` scores scan ``i`` against report ``j``; scan ``i``'s own report is
    ``j = i``, and any report with the same ``text_ids`` entry is as correct. Ties rank by column.
    Returns ``{"recall@k": ..., "chance@k": ...}``, chance being the expected recall of a random
    ranking (``1 - C(N - m, k) / C(N, k)`` averaged over scans, ``m`` correct reports of ``N``).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    ids = np.asarray(text_ids)
    n = sim.shape[0]
    if sim.shape != (n, n) or ids.shape != (n,):
        raise ValueError(f"similarity must be square (N, N) with N text ids, got {sim.shape} and {ids.shape}")
    order = np.argsort(-sim, axis=1, kind="stable")
    correct = ids[order] == ids[:, None]
    m = (ids[:, None] == ids[None, :]).sum(1)
    out = {}
    for k in ks:
        kk = min(int(k), n)
        out[f"recall@{k}"] = float(correct[:, :kk].any(1).mean())
        out[f"chance@{k}"] = float(np.mean([1.0 - math.comb(n - mi, kk) / math.comb(n, kk) for mi in m]))
    return out


def zero_shot_scores(
    image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """``P(present)`` per scan and finding: softmax over the two prompts' scaled similarities.

    ``image (N, E)``, ``positive`` and ``negative (F, E)``, all L2-normalised; returns ``(N, F)``.
    """
    scale = float(torch.as_tensor(logit_scale).exp())
    pos = scale * image @ positive.T
    neg = scale * image @ negative.T
    return torch.sigmoid(pos - neg)  # = softmax([pos, neg])[0]


def text_id(text: str) -> int:
    """A stable 63-bit id of a report's text (equal texts, equal ids; the same in every process)."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16)


# --------------------------------------------------------------------------- model


class TextEncoder(nn.Module):
    """A BERT from a local config (random init) over the head's tokenizer, mean-pooled over tokens."""

    def __init__(self, bert: dict, tokenizer, max_tokens: int) -> None:
        super().__init__()
        kwargs = dict(bert)
        clash = sorted({"vocab_size", "pad_token_id"} & set(kwargs))
        if clash:
            raise ConfigError(f"model.text must not set {clash}: they come from the tokenizer")
        self.tokenizer = tokenizer
        self.max_tokens = int(max_tokens)
        cfg = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **kwargs)
        if cfg.max_position_embeddings < self.max_tokens + 2:
            raise ConfigError(
                f"model.text.max_position_embeddings must be >= max_report_tokens + 2 ({self.max_tokens + 2})"
            )
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.width = cfg.hidden_size

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``<s> text </s>`` ids and attention mask, padded to the longest, cut to ``max_tokens``."""
        tok = self.tokenizer
        rows = [
            [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"][: self.max_tokens] + [tok.eos_token_id]
            for t in texts
        ]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class ContrastiveModel(nn.Module):
    """ViT + text encoder + the two projections and the learnable temperature (``logit_scale``)."""

    def __init__(self, vit: ViTEncoder, text: TextEncoder, embed_dim: int, temperature: float, learn: bool) -> None:
        super().__init__()
        self.image_encoder, self.text_encoder = vit, text
        self.image_proj = nn.Linear(vit.width, embed_dim, bias=False)
        self.text_proj = nn.Linear(text.width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_encoder(image).global_vector), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_encoder(input_ids, attention_mask)), dim=-1)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Normalised image and text embeddings and the clamped log scale (at most log 100, as CLIP)."""
        return (
            self.encode_image(image),
            self.encode_text(input_ids, attention_mask),
            self.logit_scale.clamp(max=math.log(100.0)),
        )


def build_model(m: ContrastiveModelSection, tokenizer) -> ContrastiveModel:
    """The model of the ``model`` section (``vit`` and ``text``, ``embed_dim``, ``temperature``)."""
    vit = ViTEncoder(m.vit_config())
    text = TextEncoder(dict(m.text), tokenizer, m.max_report_tokens)
    return ContrastiveModel(vit, text, m.embed_dim, m.temperature, m.learn_temperature)


# --------------------------------------------------------------------------- data


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, differentiable (CLIP's global batch); ``x`` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    from torch.distributed.nn.functional import all_gather  # noqa: PLC0415 - only under torchrun

    return torch.cat(all_gather(x), dim=0)


def _gather_ids(x: torch.Tensor) -> torch.Tensor:
    """All ranks' text ids (no gradient); ``x`` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def usable_records(d: ContrastiveData, split: str) -> list[ScanRecord]:
    """Scans of a split with a report (the real CTs without one are left out), up to ``max_<split>_scans``."""
    records = d.limit([r for r in load_records(d.root_dir(), split, require_labels=False) if r.report.strip()], split)
    if not records:
        raise ConfigError(f"no scan of split {split!r} has a report")
    return records


def cached_inputs(records: list[ScanRecord], vit: ViTEncoder, d: ContrastiveData, show: bool) -> list[Path]:
    """Preprocess each scan once for the ViT into ``data.cache_dir`` (float16 ``.npz``); returns the files."""
    cache_dir = d.cache("contrastive")
    cache_dir.mkdir(parents=True, exist_ok=True)
    c = vit.config
    key_cfg = {"vit": [c.input_shape, c.target_spacing, c.hu_window, c.output_range]}
    out = []
    for r in progress(records, show, desc="preprocess"):
        path = cache_dir / f"{r.stem}-{cache_key(r.path, key_cfg, None, d.intensity)}.npz"
        if not path.is_file():
            vol = load_volume(r, intensity=d.intensity)
            sz, sy, sx = (float(s) for s in vol.spacing)
            x = vit.preprocess(vol.array, (sz, sy, sx))
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, image=x[0].numpy().astype(np.float16))
            tmp.replace(path)
        out.append(path)
    return out


class ScanReportDataset(torch.utils.data.Dataset):
    """Cached scans + their reports; the training copy shifts each scan by up to ``shift`` voxels.

    The shift (a crop of the scan padded with air) is seeded by the sampler's key, so a resumed
    run sees the same augmentation.
    """

    def __init__(
        self, files: list[Path], records: list[ScanRecord], *, shift: int = 0, seed: int = 0, pad: float = -1.0
    ):
        self.images = []
        for f in files:
            with np.load(f) as z:
                self.images.append(torch.from_numpy(z["image"].astype(np.float32)))
        self.reports = [r.report for r in records]
        self.labels = [r.labels for r in records]
        self.shift, self.seed, self.pad = int(shift), int(seed), float(pad)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int):
        i = key % len(self.images)
        x = self.images[i]
        if self.shift:
            s = self.shift
            rng = np.random.default_rng((self.seed * 1_000_003 + int(key)) % (2**32))
            o = rng.integers(0, 2 * s + 1, size=3)
            padded = F.pad(x, [s] * 6, value=self.pad)
            x = padded[:, o[0] : o[0] + x.shape[1], o[1] : o[1] + x.shape[2], o[2] : o[2] + x.shape[3]]
        return x, self.reports[i]


def _collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


# --------------------------------------------------------------------------- evaluation


def _prompt_texts(templates: Sequence[Sequence[str]], prompts: dict, names: Sequence[str]) -> tuple[list, list]:
    """Positive and negative prompt lists per finding (``prompts[name]`` overrides the templates)."""
    pos, neg = [], []
    for name in names:
        if name in prompts:
            pairs = [tuple(prompts[name])]
        else:
            pairs = [
                (p.format(finding=name, finding_lower=name.lower()), n.format(finding=name, finding_lower=name.lower()))
                for p, n in templates
            ]
        pos.append([p for p, _ in pairs])
        neg.append([n for _, n in pairs])
    return pos, neg


@torch.no_grad()
def _encode_texts(model: ContrastiveModel, texts: Sequence[str], device, batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        ids, mask = model.text_encoder.tokenize(texts[i : i + batch])
        out.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


def _ensemble(model: ContrastiveModel, groups: list[list[str]], device) -> torch.Tensor:
    """One normalised embedding per group of prompts (the mean of the group's embeddings, as CLIP's ensembles)."""
    return F.normalize(torch.stack([_encode_texts(model, g, device).mean(0) for g in groups]), dim=-1)


@torch.no_grad()
def evaluate(
    model: ContrastiveModel,
    dataset: ScanReportDataset,
    device,
    *,
    templates: Sequence[Sequence[str]] = CT_CLIP_TEMPLATES,
    prompts: Optional[dict] = None,
    names: Sequence[str] = FINDINGS,
    ks: Sequence[int] = (1, 5),
    batch: int = 8,
) -> dict:
    """Retrieval recall@k and zero-shot AUROC per finding on ``dataset`` (see the module docstring)."""
    was_training = model.training
    model.eval()
    images = torch.cat(
        [
            model.encode_image(torch.stack(dataset.images[i : i + batch]).to(device)).float().cpu()
            for i in range(0, len(dataset), batch)
        ]
    )
    reports = _encode_texts(model, dataset.reports, device)
    sim = (images @ reports.T).numpy()
    out: dict = recall_at_k(sim, [text_id(t) for t in dataset.reports], ks)
    pos_txt, neg_txt = _prompt_texts(templates, prompts or {}, names)
    scores = zero_shot_scores(
        images, _ensemble(model, pos_txt, device), _ensemble(model, neg_txt, device), model.logit_scale.detach().cpu()
    )
    labelled = [i for i, y in enumerate(dataset.labels) if y is not None]
    y_true = np.stack([np.asarray(dataset.labels[i]) for i in labelled]) if labelled else np.zeros((0, len(names)))
    y_score = scores.numpy()[labelled]
    per = {name: auroc(y_true[:, j], y_score[:, j]) for j, name in enumerate(names)} if labelled else {}
    finite = [v for v in per.values() if not math.isnan(v)]
    out.update(
        {
            "zero_shot_auroc": per,
            "zero_shot_mean_auroc": float(np.mean(finite)) if finite else float("nan"),
            "zero_shot_n_findings": len(finite),
            "n_scans": len(dataset),
            "temperature": float(1.0 / model.logit_scale.exp()),
            "_y_true": y_true,
            "_y_score": y_score,
        }
    )
    if was_training:
        model.train()
    return out


def _public(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- training


def train_contrastive(cfg: ContrastiveConfig, *, resume: bool = False, max_steps: Optional[int] = None) -> dict:
    """Run the contrastive stage; returns the last validation metrics and the paths written.

    Parameters
    ----------
    cfg:
        The stage's configuration (``contrastive.yaml`` and overrides).
    resume:
        Continue from ``<out_dir>/last.pt`` (model, optimiser, scheduler, step, RNG states).
    max_steps:
        Stop after this many optimiser steps in total (to interrupt a run on purpose).
    """
    t, zs = cfg.train, cfg.zero_shot
    run = StageRun.training(t)
    info = run.info
    train_records = usable_records(cfg.data, cfg.data.train_split)
    val_records = usable_records(cfg.data, cfg.data.val_split)
    tok_dir = run.dir / "tokenizer"
    run.write_config(cfg)
    if info.is_main and not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer([r.report for r in train_records], vocab_size=t.vocab_size, out_dir=tok_dir)
    D.barrier()
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, load_tokenizer(tok_dir))
    if info.is_main:
        cached_inputs(train_records + val_records, model.image_encoder, cfg.data, True)
    D.barrier()
    pad = model.image_encoder.config.output_range[0]
    train_ds = ScanReportDataset(
        cached_inputs(train_records, model.image_encoder, cfg.data, False),
        train_records,
        shift=cfg.augment.shift_voxels,
        seed=t.seed,
        pad=pad,
    )
    val_ds = ScanReportDataset(cached_inputs(val_records, model.image_encoder, cfg.data, False), val_records, pad=pad)
    model = model.to(info.device)
    eval_kw: dict[str, Any] = {"templates": [tuple(p) for p in zs.templates], "prompts": dict(zs.prompts)}
    amp = t.amp

    def step(batch, forward) -> StepOutput:
        images, reports = batch
        ids, mask = model.text_encoder.tokenize(reports)
        tids = torch.tensor([text_id(r) for r in reports], device=info.device)
        with D.autocast(info.device, amp):
            img, txt, scale = forward(images.to(info.device), ids.to(info.device), mask.to(info.device))
            loss = info_nce(_gather(img.float()), _gather(txt.float()), scale.float(), _gather_ids(tids))
        return StepOutput({"loss": loss}, {"temperature": float(1.0 / scale.detach().exp())})

    def check() -> Validation:
        val = evaluate(model, val_ds, info.device, **eval_kw)
        row = {k: v for k, v in _public(val).items() if isinstance(v, float | int)}
        summary = (
            f"recall@1 {val['recall@1']:.3f} (chance {val['chance@1']:.3f}) "
            f"zero-shot mean AUROC {val['zero_shot_mean_auroc']:.3f}"
        )
        return Validation(val, row, summary)

    task = TrainingTask(model=model, dataset=train_ds, collate=_collate, step=step, validate=check)
    done = fit(run, task, t, cfg, resume=resume, max_steps=max_steps)
    result: dict = {"step": done.step, "epoch": done.epoch, "out_dir": str(run.dir)}
    if info.is_main:
        save_vit(model.image_encoder, run.dir, extra={"trained_by": "contrastive", "step": done.step})
        plot_loss_curves(run.dir / "steps.jsonl", run.dir / "loss.png", title="contrastive: symmetric InfoNCE")
        if done.finished:
            result.update(_final_metrics(model, val_ds, info.device, eval_kw, done.validation, run.dir))
    run.close()
    return result


def _final_metrics(
    model: ContrastiveModel, val_ds: ScanReportDataset, device, eval_kw: dict, last: Optional[Validation], out: Path
) -> dict:
    """The finished run's validation (with the generic prompt pair's numbers too), ROC plot and ``val_metrics.json``."""
    metrics = last.metrics if last is not None else evaluate(model, val_ds, device, **eval_kw)
    if eval_kw["prompts"]:  # per-finding prompts replace the templates: the generic pair's numbers too
        generic = evaluate(model, val_ds, device, templates=CT_CLIP_TEMPLATES)
        metrics["zero_shot_templates_only"] = {
            "templates": [list(t) for t in CT_CLIP_TEMPLATES],
            "auroc": generic["zero_shot_auroc"],
            "mean_auroc": generic["zero_shot_mean_auroc"],
        }
    if len(metrics["_y_true"]):
        plot_roc(
            metrics["_y_true"], metrics["_y_score"], FINDINGS, metrics["zero_shot_auroc"], out / "zero_shot_roc.png"
        )
    (out / "val_metrics.json").write_text(json.dumps(_public(metrics), indent=1, default=float), encoding="utf-8")
    return _public(metrics)


# --------------------------------------------------------------------------- the embeddings stage and the release


def vit_export_sets(contrastive_run: Path) -> list[str]:
    """``--set`` overrides of the ``embeddings`` stage that export the tokens of a contrastive run's ViT."""
    meta = json.loads((Path(contrastive_run) / ENCODER_CONFIG).read_text(encoding="utf-8"))
    kwargs = json.dumps(meta["config"], separators=(",", ":"))
    return ["export.encoder=vit", f"export.encoder_kwargs={kwargs}", f"export.encoder_weights={contrastive_run}"]


def publish_vit_release(
    contrastive_run: Path,
    head_run: Path,
    out: Path,
    *,
    version: str,
    dataset: str,
    licence: str,
    untrained: bool = False,
) -> Path:
    """A release of a contrastive run's ViT (``encoder.pt``) and a head-stage run trained on its tokens.

    The manifest's encoder entry is ``{"name": "vit", "width", "kwargs": ViTConfig}``; the release
    is loaded back (strict state dicts, encoder ``"vit"``) before returning.
    """
    contrastive_run, head_run = Path(contrastive_run), Path(head_run)
    for p in (
        contrastive_run / ENCODER_CONFIG,
        contrastive_run / ENCODER_WEIGHTS,
        head_run / "head.pt",
        head_run / "model_config.json",
    ):
        if not p.is_file():
            raise ConfigError(f"{p} is missing")
    meta = json.loads((contrastive_run / ENCODER_CONFIG).read_text(encoding="utf-8"))
    mcfg = ModelConfig.from_dict(json.loads((head_run / "model_config.json").read_text(encoding="utf-8")))
    if mcfg.encoder != "vit" or mcfg.head.embed_dim != int(meta["width"]):
        raise ConfigError(
            f"{head_run} was not trained on this ViT's tokens (encoder {mcfg.encoder!r}, embed_dim {mcfg.head.embed_dim})"
        )
    thr = head_run / "thresholds.json"
    write_release(
        out,
        mcfg,
        {
            "encoder": torch.load(contrastive_run / ENCODER_WEIGHTS, map_location="cpu", weights_only=True),
            "head": torch.load(head_run / "head.pt", map_location="cpu", weights_only=True),
        },
        head_run / "tokenizer",
        version=version,
        untrained=untrained,
        training_data=[{"name": dataset, "licence": licence}],
        licence=licence,
        name="vit-contrastive",
        notes="validation thresholds: " + thr.read_text(encoding="utf-8").replace("\n", " ") if thr.is_file() else "",
        encoder={"name": "vit", "width": int(meta["width"]), "kwargs": meta["config"]},
    )
    load_release(out, allow_untrained=untrained, encoder="vit").build_models()
    logger.info("vit release %s written to %s", version, out)
    return Path(out)
