"""Static-KV-cache greedy decoding against transformers' eager greedy ``generate``."""

from __future__ import annotations

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from neuroradix.models.config import tiny_config
from neuroradix.models.decode import StaticGreedyDecoder, static_greedy_decode
from neuroradix.models.head import MultitaskHead


@pytest.fixture()
def head(tiny_tokenizer):
    """A tiny head whose BART weights are large enough for varied tokens (std 0.02 repeats one token)."""
    torch.manual_seed(0)
    h = MultitaskHead(tiny_config().head, tiny_tokenizer).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in h.bart.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return h


def _eager(bart, enc, prefix, max_new, eos, pad):
    """Reference: ``generate`` (dynamic cache) for the tokens, then one more eager pass for the maps."""
    seq = bart.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=enc),
        decoder_input_ids=torch.tensor([prefix]),
        max_new_tokens=max_new,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    new = seq[0, len(prefix) :].tolist()
    stopped = eos in new
    new = new[: new.index(eos)] if stopped else new
    full = torch.tensor([prefix + new])
    out = bart(encoder_outputs=(enc,), decoder_input_ids=full[:, :-1], output_attentions=True, return_dict=True)
    cross = torch.stack(out.cross_attentions).mean(dim=(0, 2))[0][len(prefix) - 1 :]
    return new, cross, stopped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_decoder_gives_eager_greedy_tokens_and_cross_attention(head, tiny_tokenizer, seed):
    tok = tiny_tokenizer
    enc = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(10 + seed))
    prefix = [tok.eos_token_id, tok.bos_token_id] + tok("Findings: none. Report: ", add_special_tokens=False)[
        "input_ids"
    ]
    with torch.no_grad():
        ref_tokens, ref_cross, _ = _eager(head.bart, enc, prefix, 20, tok.eos_token_id, tok.pad_token_id)
    got = static_greedy_decode(head.bart, enc, prefix, 20, tok.eos_token_id)
    assert len(ref_tokens) == 20 and len(set(ref_tokens)) >= 3  # a real sequence, not one token repeated
    assert got.tokens == ref_tokens
    assert got.cross_attention.shape == (20, 4)
    torch.testing.assert_close(got.cross_attention, ref_cross.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.cross_attention.sum(-1), torch.ones(20), atol=1e-5, rtol=0)


def test_static_decoder_stops_at_end_of_sequence(head, tiny_tokenizer):
    tok = tiny_tokenizer
    enc = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(20))
    prefix = [tok.eos_token_id, tok.bos_token_id]
    free = static_greedy_decode(head.bart, enc, prefix, 16, tok.eos_token_id)
    assert not free.stopped_at_eos and len(free.tokens) == 16
    # declare the 6th produced token the end-of-sequence token: both decoders must stop before it
    eos = free.tokens[5]
    with torch.no_grad():
        ref_tokens, ref_cross, ref_stopped = _eager(head.bart, enc, prefix, 16, eos, tok.pad_token_id)
    got = StaticGreedyDecoder(head.bart).decode(enc, prefix, 16, eos)
    cut = free.tokens.index(eos)
    assert got.stopped_at_eos and ref_stopped
    assert got.tokens == ref_tokens == free.tokens[:cut]
    assert got.cross_attention.shape == (cut, 4)
    torch.testing.assert_close(got.cross_attention, ref_cross.float(), atol=1e-5, rtol=1e-4)


def test_head_generate_static_matches_the_reference_path(head):
    torch.manual_seed(3)
    emb, pos = torch.randn(2, 6, head.cfg.embed_dim), torch.rand(2, 6, 3)
    texts_ref, info_ref = head.generate(emb, pos, max_new_tokens=12, static_cache=False)
    texts, info = head.generate(emb, pos, max_new_tokens=12)
    assert texts == texts_ref and info["tokens"] == info_ref["tokens"]
    assert all(len(t) > 0 for t in info["tokens"])
    for a, b in zip(info["token_attention"], info_ref["token_attention"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(info["token_cross_attention"], info_ref["token_cross_attention"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_static_decoder_checks_its_arguments(head, tiny_tokenizer):
    dec = StaticGreedyDecoder(head.bart)
    with pytest.raises(ValueError, match=r"\[1, Q, d_model\]"):
        dec.decode(torch.zeros(2, 4, 32), [2], 4, 2)
    with pytest.raises(ValueError, match="prefix"):
        dec.decode(torch.zeros(1, 4, 32), [], 4, 2)
    cfg = BartConfig(
        vocab_size=50,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
    )
    sdpa = BartForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="eager"):
        StaticGreedyDecoder(sdpa)
    empty = dec.decode(torch.zeros(1, 4, 32), [tiny_tokenizer.eos_token_id], 0, tiny_tokenizer.eos_token_id)
    assert empty.tokens == [] and empty.cross_attention.shape == (0, 4) and not empty.stopped_at_eos
