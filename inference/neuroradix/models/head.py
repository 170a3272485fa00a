"""The multitask head (the original design's ``MultiModalMonsterUltimate``).

Patch embeddings -> :class:`~neuroradix.models.bridge.CrossAttentionBridge` ->
(cls tokens -> :class:`~neuroradix.models.moe.MoEClassifier` -> 18 findings + abnormal) and
(gen tokens -> BART decoder -> report).  In soft-prompt mode the report is prefixed with
``"Findings: a, b. Report:"`` built from the top-k predicted findings, and the loss skips the
prefix.  ``loss = cls_loss + lambda_gen * (bart_loss + coverage_weight * coverage_loss)``, or
learned task weights (Kendall et al. 2018) with ``uncertainty_weighting``.

Token sequence of a report: ``<s> prefix report </s>``; the decoder input is that sequence
shifted right behind ``decoder_start_token_id`` (``</s>``, BART's convention).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from neuroradix.models.bridge import CrossAttentionBridge
from neuroradix.models.config import HeadConfig
from neuroradix.models.decode import StaticGreedyDecoder
from neuroradix.models.findings import CTRATE_FINDINGS
from neuroradix.models.moe import MoEClassifier

logger = logging.getLogger(__name__)

__all__ = ["MultitaskHead", "build_bart", "coverage_loss", "format_prompt"]


def build_bart(cfg: HeadConfig, tokenizer) -> BartForConditionalGeneration:
    """``BartForConditionalGeneration`` with eager attention (cross-attentions are needed).

    Built from ``cfg.bart`` or loaded from the local folder ``cfg.bart_pretrained``.
    """

    if cfg.bart_pretrained:
        model = BartForConditionalGeneration.from_pretrained(
            cfg.bart_pretrained, local_files_only=True, attn_implementation="eager"
        )
        if model.config.d_model != cfg.d_model:
            raise ValueError(
                f"BART at {cfg.bart_pretrained} has d_model {model.config.d_model}, head expects {cfg.d_model}"
            )
        if model.config.vocab_size < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model
    bart_cfg = BartConfig(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=None,
        **cfg.bart,
    )
    return BartForConditionalGeneration._from_config(bart_cfg, attn_implementation="eager")


def format_prompt(names: Sequence[str]) -> str:
    """``"Findings: a, b. Report:"`` (``"Findings: none. Report:"`` when empty)."""
    return f"Findings: {', '.join(names) if names else 'none'}. Report:"


def coverage_loss(cross_attention: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Coverage loss (See et al. 2017): ``sum_q min(a_t, sum_{t'<t} a_t')``, mean over real tokens.

    ``cross_attention [B, T, Q]`` (layers and heads averaged), ``token_mask [B, T]``.
    """
    coverage = torch.cumsum(cross_attention, dim=1) - cross_attention
    per_token = torch.minimum(cross_attention, coverage).sum(-1)
    mask = token_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


class MultitaskHead(nn.Module):
    """Classification + report generation from patch embeddings.

    Parameters
    ----------
    cfg:
        The head's configuration.
    tokenizer:
        A fast tokenizer with ``<s>``, ``<pad>``, ``</s>`` (see :mod:`neuroradix.models.tokenizer`).
    finding_names:
        Names used in the soft prompt (default: CT-RATE's 18 findings).
    """

    def __init__(self, cfg: HeadConfig, tokenizer, finding_names: Sequence[str] = CTRATE_FINDINGS) -> None:
        super().__init__()
        if not isinstance(cfg, HeadConfig):
            raise TypeError(f"cfg must be a HeadConfig, got {type(cfg).__name__}")
        if len(finding_names) != cfg.num_findings:
            raise ValueError(f"finding_names has {len(finding_names)} names, cfg.num_findings is {cfg.num_findings}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.finding_names = tuple(finding_names)
        self.bridge = CrossAttentionBridge(
            cfg.embed_dim,
            cfg.d_model,
            cfg.num_cls_queries,
            cfg.num_gen_queries,
            cfg.num_heads,
            cfg.dropout,
            cfg.gat_heads,
            cfg.standardize_embeddings,
        )
        self.classifier = MoEClassifier(cfg.d_model, cfg.num_outputs, cfg.num_experts)
        self.bart = build_bart(cfg, tokenizer)
        self.log_vars = nn.Parameter(torch.zeros(2)) if cfg.uncertainty_weighting else None
        self._static_decoder: Optional[StaticGreedyDecoder] = None

    def set_embedding_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-feature statistics of the training embeddings, used to standardise the input.

        Only for heads built with ``standardize_embeddings``; features that never vary get std 1.
        """
        if not self.cfg.standardize_embeddings:
            raise ValueError("this head was configured without standardize_embeddings")
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != (self.cfg.embed_dim,) or std.shape != (self.cfg.embed_dim,):
            raise ValueError(f"embedding statistics must have shape ({self.cfg.embed_dim},)")
        self.bridge.embed_mean.copy_(mean)
        self.bridge.embed_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    # ------------------------------------------------------------------ prompts and tokens
    def prompts(self, logits_cls: torch.Tensor, labels: Optional[torch.Tensor] = None) -> list[str]:
        """Soft-prompt text per sample from the predicted finding probabilities.

        With ``labels`` (training, ``prompt_from_labels``) the prompt lists the true findings
        instead, so the decoder learns to follow the prompt; at inference the classifier's
        findings fill it and the report agrees with the classification.
        """
        if not self.cfg.soft_prompt:
            return ["" for _ in range(logits_cls.shape[0])]
        if labels is not None:
            out = []
            for row in labels:
                present = torch.nonzero(row[: self.cfg.num_findings] > 0.5).flatten().tolist()
                out.append(format_prompt([self.finding_names[i] for i in present][: self.cfg.prompt_top_k]))
            return out
        probs = torch.sigmoid(logits_cls.detach().float()[:, : self.cfg.num_findings])
        out = []
        for row in probs:
            order = torch.argsort(row, descending=True)[: self.cfg.prompt_top_k].tolist()
            names = [self.finding_names[i] for i in order if row[i] >= self.cfg.prompt_threshold]
            out.append(format_prompt(names))
        return out

    def tokenize_reports(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Report text -> ``(input_ids, attention_mask)`` for :meth:`forward` (no special tokens)."""
        enc = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            padding=True,
            truncation=True,
            max_length=self.cfg.max_report_tokens,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def _prefix_ids(self, prompt: str) -> list[int]:
        ids = [self.tokenizer.bos_token_id]
        if prompt:
            ids += self.tokenizer(prompt + " ", add_special_tokens=False)["input_ids"]
        return ids

    def _decoder_batch(self, prompts: list[str], input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]):
        tok, device = self.tokenizer, input_ids.device
        if attention_mask is None:
            attention_mask = (input_ids != tok.pad_token_id).long()
        seqs, masks = [], []
        for b, prompt in enumerate(prompts):
            prefix = self._prefix_ids(prompt)
            report = input_ids[b][attention_mask[b].bool()].tolist()
            seqs.append(prefix + report + [tok.eos_token_id])
            masks.append(len(prefix))
        length = max(len(s) for s in seqs)
        full = torch.full((len(seqs), length), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(seqs), length), -100, dtype=torch.long)
        dec_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for b, s in enumerate(seqs):
            full[b, : len(s)] = torch.tensor(s)
            labels[b, masks[b] : len(s)] = torch.tensor(s[masks[b] :])
            dec_mask[b, : len(s)] = 1
        start = torch.full((len(seqs), 1), self._decoder_start_id(), dtype=torch.long)
        dec_in = torch.cat([start, full[:, :-1]], dim=1)
        return dec_in.to(device), dec_mask.to(device), labels.to(device)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        embeddings: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        patch_mask: Optional[torch.Tensor] = None,
    ) -> dict:
        """Classify, and (when report tokens are given) teacher-force the report.

        Parameters
        ----------
        embeddings, positions, patch_mask:
            ``[B, N, E]`` patch embeddings, ``[B, N, 3]`` positions (0..1), ``[B, N]`` validity.
        labels:
            ``[B, 19]`` float targets (18 findings, then abnormal) or ``None``.
        input_ids, attention_mask:
            Report tokens ``[B, T]`` without special tokens (:meth:`tokenize_reports`) or ``None``.

        Returns
        -------
        dict
            ``logits_cls``, ``bart_out``, ``cls_loss``, ``bart_loss``, ``coverage_loss``, ``loss``
            (``None`` where not computed), plus ``cls_attention``, ``gen_attention``, ``gates``.
        """
        br = self.bridge(embeddings, positions, patch_mask)
        logits_cls, gates = self.classifier(br.cls_repr)
        out = {
            "logits_cls": logits_cls,
            "bart_out": None,
            "cls_loss": None,
            "bart_loss": None,
            "coverage_loss": None,
            "loss": None,
            "cls_attention": br.cls_attention,
            "gen_attention": br.gen_attention,
            "gates": gates,
        }
        if labels is not None:
            out["cls_loss"] = F.binary_cross_entropy_with_logits(logits_cls, labels.to(logits_cls.dtype))
        gen_loss = None
        if input_ids is not None:
            forced = labels if (self.training and labels is not None and self.cfg.prompt_from_labels) else None
            dec_in, dec_mask, tgt = self._decoder_batch(self.prompts(logits_cls, forced), input_ids, attention_mask)
            bart_out = self.bart(
                encoder_outputs=(br.gen_repr,),
                decoder_input_ids=dec_in,
                decoder_attention_mask=dec_mask,
                output_attentions=True,
                return_dict=True,
            )
            logits = bart_out.logits
            out["bart_out"] = bart_out
            out["bart_loss"] = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=-100
            )
            cross = torch.stack(bart_out.cross_attentions).mean(dim=(0, 2))  # [B, T, Q]
            out["coverage_loss"] = coverage_loss(cross, tgt != -100)
            gen_loss = out["bart_loss"] + self.cfg.coverage_weight * out["coverage_loss"]
        out["loss"] = self._combine(out["cls_loss"], gen_loss)
        return out

    def _combine(self, cls_loss, gen_loss):
        if self.log_vars is not None:
            total = None
            for i, part in enumerate((cls_loss, gen_loss)):
                if part is not None:
                    term = torch.exp(-self.log_vars[i]) * part + self.log_vars[i]
                    total = term if total is None else total + term
            return total
        if cls_loss is None and gen_loss is None:
            return None
        if gen_loss is None:
            return cls_loss
        weighted = self.cfg.lambda_gen * gen_loss
        return weighted if cls_loss is None else cls_loss + weighted

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(
        self,
        embeddings: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        max_new_tokens: Optional[int] = None,
        patch_mask: Optional[torch.Tensor] = None,
        static_cache: bool = True,
    ):
        """Greedy report generation.

        With ``static_cache`` (default) the report is decoded by
        :class:`~neuroradix.models.decode.StaticGreedyDecoder`, which collects the cross-attention
        while decoding; ``False`` runs transformers' ``generate`` and then the decoder once more
        over the sequence to get the maps (the reference path; same tokens, same maps).

        Returns
        -------
        texts : list[str]
            One report per sample (without the prompt).
        info : dict
            ``logits_cls [B, 19]``, ``probabilities [B, 19]``, ``cls_attention [B, 19, N]``,
            ``gen_attention [B, Qg, N]``, ``prompts``, and per sample ``tokens`` (decoded
            strings), ``token_cross_attention [T, Qg]`` and ``token_attention [T, N]``
            (token -> gen query composed with gen query -> patch).
        """

        max_new = int(max_new_tokens or self.cfg.max_report_tokens)
        br = self.bridge(embeddings, positions, patch_mask)
        logits_cls, _ = self.classifier(br.cls_repr)
        prompts = self.prompts(logits_cls)
        tok = self.tokenizer
        texts: list[str] = []
        tokens: list[list[str]] = []
        cross_list: list[torch.Tensor] = []
        token_att: list[torch.Tensor] = []
        for b, prompt in enumerate(prompts):
            enc = BaseModelOutput(last_hidden_state=br.gen_repr[b : b + 1])
            prefix = [self._decoder_start_id()] + self._prefix_ids(prompt)
            if static_cache:
                dec = self._decoder.decode(br.gen_repr[b : b + 1], prefix, max_new, tok.eos_token_id)
                new = torch.tensor(dec.tokens, dtype=torch.long)
                cross = dec.cross_attention.to(embeddings.device)
                self._append(b, new, cross, br, texts, tokens, cross_list, token_att)
                continue
            start = torch.tensor([prefix], dtype=torch.long, device=embeddings.device)
            seq = self.bart.generate(
                encoder_outputs=enc,
                decoder_input_ids=start,
                max_new_tokens=max_new,
                do_sample=False,
                num_beams=1,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
            )
            new = seq[0, len(prefix) :]
            eos = (new == tok.eos_token_id).nonzero()
            new = new[: int(eos[0]) if len(eos) else len(new)]
            if len(new):
                full = torch.cat([start[0], new])[None]
                fwd = self.bart(
                    encoder_outputs=(br.gen_repr[b : b + 1],),
                    decoder_input_ids=full[:, :-1],
                    output_attentions=True,
                    return_dict=True,
                )
                cross = torch.stack(fwd.cross_attentions).mean(dim=(0, 2))[0]  # [T_all, Q]
                # the prediction of token new[i] is made at decoder position len(prefix) - 1 + i
                cross = cross[len(prefix) - 1 :]
            else:
                cross = torch.zeros((0, br.gen_repr.shape[1]), device=embeddings.device)
            self._append(b, new, cross, br, texts, tokens, cross_list, token_att)
        info = {
            "logits_cls": logits_cls,
            "probabilities": torch.sigmoid(logits_cls.float()),
            "cls_attention": br.cls_attention,
            "gen_attention": br.gen_attention,
            "prompts": prompts,
            "tokens": tokens,
            "token_cross_attention": cross_list,
            "token_attention": token_att,
        }
        return texts, info

    def compile_decoder(self, enabled: bool = True) -> None:
        """Compile the static-cache decode step (``torch.compile``, CUDA graphs on a GPU)."""
        self._static_decoder = StaticGreedyDecoder(self.bart, compile_step=enabled)

    @property
    def _decoder(self) -> StaticGreedyDecoder:
        if self._static_decoder is None or self._static_decoder.bart is not self.bart:
            self._static_decoder = StaticGreedyDecoder(self.bart)
        return self._static_decoder

    def _decoder_start_id(self) -> int:
        """BART's ``decoder_start_token_id`` (``</s>``; set by :func:`build_bart`)."""
        value = self.bart.config.decoder_start_token_id
        if value is None:
            raise ValueError("the BART config has no decoder_start_token_id")
        return int(value)

    def _append(
        self,
        b: int,
        new: torch.Tensor,
        cross: torch.Tensor,
        br,
        texts: list,
        tokens: list,
        cross_list: list,
        token_att: list,
    ) -> None:
        tok = self.tokenizer
        texts.append(tok.decode(new.tolist(), skip_special_tokens=True).strip())
        tokens.append([tok.decode([i]) for i in new.tolist()])
        cross_list.append(cross.float().cpu())
        token_att.append((cross.float() @ br.gen_attention[b].float()).cpu())
