"""Greedy report decoding with a static KV cache, collecting the cross-attention on the way.

:func:`static_greedy_decode` runs BART's decoder one token at a time against a
``transformers`` ``StaticCache`` (fixed-shape key/value buffers: self-attention sized for the
whole report, cross-attention sized for the encoder states, filled once), stops at the first
end-of-sequence token, and keeps, for every token it produces, the cross-attention of the step
that predicted it (layers and heads averaged).  The eager path of
:meth:`~neuroradix.models.head.MultitaskHead.generate` used to call ``generate`` and then run the
decoder a second time over the whole sequence to get those maps; here they come from the decode
itself.  Fixed shapes are what ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) needs:
pass ``compile_step=True`` on a GPU.

The BART model must use eager attention (``attn_implementation="eager"``): under ``sdpa``
transformers 5.x returns no attention weights (see the design brief).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import BartForConditionalGeneration
from transformers.cache_utils import EncoderDecoderCache, StaticCache

logger = logging.getLogger(__name__)

__all__ = ["DecodeResult", "StaticGreedyDecoder", "static_greedy_decode"]


@dataclass
class DecodeResult:
    """What one greedy decode produced.

    Attributes
    ----------
    tokens:
        Generated token ids, without the prefix and without the end-of-sequence token.
    cross_attention:
        ``float32 [len(tokens), Q]``: for each token, the cross-attention over the ``Q`` encoder
        states of the step that predicted it, averaged over layers and heads.
    stopped_at_eos:
        ``True`` when decoding ended on the end-of-sequence token (not on the length limit).
    """

    tokens: list[int]
    cross_attention: torch.Tensor
    stopped_at_eos: bool


class StaticGreedyDecoder:
    """Greedy decoding of a ``BartForConditionalGeneration`` with a static KV cache.

    Parameters
    ----------
    bart:
        The model (eager attention; evaluation mode is set by the caller).
    compile_step:
        Compile the one-token decode step with ``torch.compile(mode="reduce-overhead")``
        (CUDA graphs on a GPU).  Off by default: on a CPU compiling costs far more than it saves.
    """

    def __init__(self, bart: BartForConditionalGeneration, *, compile_step: bool = False) -> None:
        impl = getattr(bart.config, "_attn_implementation", None)
        if impl not in (None, "eager"):
            raise ValueError(f"bart must use eager attention to return cross-attention, it uses {impl!r}")
        self.bart = bart
        self.compile_step = bool(compile_step)
        self._step: Callable = self._forward
        if self.compile_step:
            self._step = torch.compile(self._forward, mode="reduce-overhead", fullgraph=False)

    def _forward(self, ids: torch.Tensor, enc: torch.Tensor, cache: EncoderDecoderCache):
        out = self.bart(
            encoder_outputs=(enc,),
            decoder_input_ids=ids,
            cache=cache,
            use_cache=True,
            output_attentions=True,
            return_dict=True,
        )
        cross = torch.stack([a[:, :, -1] for a in out.cross_attentions]).float().mean(dim=(0, 2))  # [1, Q]
        return out.logits[:, -1], cross

    def _cache(self, max_len: int, enc: torch.Tensor) -> EncoderDecoderCache:
        cfg = self.bart.config.get_text_config(decoder=True)
        return EncoderDecoderCache(
            StaticCache(config=cfg, max_cache_len=max_len), StaticCache(config=cfg, max_cache_len=int(enc.shape[1]))
        )

    @torch.no_grad()
    def decode(
        self, encoder_states: torch.Tensor, prefix: Sequence[int], max_new_tokens: int, eos_token_id: int
    ) -> DecodeResult:
        """Decode one sequence.

        Parameters
        ----------
        encoder_states:
            ``[1, Q, d_model]`` (the head's generation queries).
        prefix:
            Decoder input that starts the sequence (``decoder_start_token_id``, ``<s>``, prompt).
        max_new_tokens:
            Upper limit of generated tokens (the end-of-sequence token counts).
        eos_token_id:
            Token that ends the sequence.
        """
        if encoder_states.ndim != 3 or encoder_states.shape[0] != 1:
            raise ValueError(f"encoder_states must be [1, Q, d_model], got {tuple(encoder_states.shape)}")
        if not prefix:
            raise ValueError("prefix must hold at least the decoder start token")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        device = encoder_states.device
        cache = self._cache(len(prefix) + max_new_tokens, encoder_states)
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        stopped = False
        for _ in range(max_new_tokens):
            logits, cross = self._step(ids, encoder_states, cache)
            nxt = int(logits.argmax(dim=-1)[0])  # one host sync per token: needed to stop at EOS
            if nxt == eos_token_id:
                stopped = True
                break
            tokens.append(nxt)
            rows.append(cross[0].clone())
            ids = torch.tensor([[nxt]], dtype=torch.long, device=device)
        q = int(encoder_states.shape[1])
        attn = torch.stack(rows) if rows else torch.zeros((0, q), device=device)
        return DecodeResult(tokens, attn.float(), stopped)


def static_greedy_decode(
    bart: BartForConditionalGeneration,
    encoder_states: torch.Tensor,
    prefix: Sequence[int],
    max_new_tokens: int,
    eos_token_id: int,
) -> DecodeResult:
    """One-call form of :meth:`StaticGreedyDecoder.decode` (no compilation)."""
    return StaticGreedyDecoder(bart).decode(encoder_states, prefix, max_new_tokens, eos_token_id)
