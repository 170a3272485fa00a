"""The multitask head on a tiny config: shapes, gradients, losses, prompts, generation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from neuroradix.models.bridge import SimpleGATLayer
from neuroradix.models.config import tiny_config
from neuroradix.models.head import MultitaskHead, coverage_loss, format_prompt

REPORTS = ["No pleural effusion. Mild emphysema in both upper lobes.", "Heart size normal."]


def _inputs(cfg, b=2, n=6):
    torch.manual_seed(1)
    return torch.randn(b, n, cfg.embed_dim), torch.rand(b, n, 3), torch.randint(0, 2, (b, cfg.num_outputs)).float()


def test_forward_shapes_and_gradients_reach_every_part(tiny_tokenizer):
    cfg = tiny_config().head
    head = MultitaskHead(cfg, tiny_tokenizer)
    emb, pos, labels = _inputs(cfg)
    ids, mask = head.tokenize_reports(REPORTS)
    out = head(emb, pos, labels=labels, input_ids=ids, attention_mask=mask)
    assert out["logits_cls"].shape == (2, 19)
    assert out["cls_attention"].shape == (2, 19, 6) and out["gen_attention"].shape == (2, cfg.num_gen_queries, 6)
    assert torch.allclose(out["cls_attention"].sum(-1), torch.ones(2, 19), atol=1e-5)
    assert out["bart_out"].logits.shape[-1] == len(tiny_tokenizer)
    expected = out["cls_loss"] + cfg.lambda_gen * (out["bart_loss"] + cfg.coverage_weight * out["coverage_loss"])
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    no_grad = {n for n, p in head.named_parameters() if p.grad is None or not torch.any(p.grad != 0)}
    # BART's own encoder is bypassed: the bridge's gen tokens are its encoder outputs
    assert no_grad and all(n.startswith("bart.model.encoder.") for n in no_grad), sorted(no_grad)[:5]
    for part in (
        "bridge.proj",
        "bridge.pos",
        "bridge.cls_stream",
        "bridge.gen_stream",
        "bridge.gat",
        "classifier.experts",
        "classifier.gate",
        "bart.model.decoder",
    ):
        assert any(n.startswith(part) for n, p in head.named_parameters() if n not in no_grad), part


def test_classification_only_and_uncertainty_weighting(tiny_tokenizer):
    cfg = dataclasses.replace(tiny_config().head, uncertainty_weighting=True)
    head = MultitaskHead(cfg, tiny_tokenizer)
    emb, pos, labels = _inputs(cfg)
    out = head(emb, None, labels=labels)
    assert out["bart_out"] is None and out["bart_loss"] is None
    assert torch.allclose(out["loss"], out["cls_loss"])  # log_vars start at 0: exp(0) * L + 0
    ids, mask = head.tokenize_reports(REPORTS)
    out = head(emb, pos, labels=labels, input_ids=ids, attention_mask=mask)
    out["loss"].backward()
    assert head.log_vars.grad is not None and torch.all(head.log_vars.grad != 0)


def test_soft_prompt_is_built_from_the_top_findings_and_masked_from_the_loss(tiny_tokenizer):
    cfg = tiny_config().head
    head = MultitaskHead(cfg, tiny_tokenizer)
    logits = torch.full((1, 19), -5.0)
    logits[0, 7], logits[0, 12], logits[0, 2] = 3.0, 2.0, 0.1  # emphysema, pleural effusion, ~0.52
    assert head.prompts(logits) == ["Findings: Emphysema, Pleural effusion, Cardiomegaly. Report:"]
    logits[0, 2] = -0.1  # below the 0.5 threshold
    assert head.prompts(logits) == [format_prompt(["Emphysema", "Pleural effusion"])]
    assert head.prompts(torch.full((1, 19), -5.0)) == ["Findings: none. Report:"]
    ids, mask = head.tokenize_reports(["Heart size normal."])
    dec_in, _dec_mask, tgt = head._decoder_batch(head.prompts(logits), ids, mask)
    prefix = head._prefix_ids(head.prompts(logits)[0])
    assert (tgt[0, : len(prefix)] == -100).all()
    assert tgt[0, len(prefix) :].tolist() == ids[0].tolist() + [tiny_tokenizer.eos_token_id]
    assert dec_in[0, 1 : len(prefix) + 1].tolist() == prefix  # decoder sees the prefix


def test_coverage_loss_by_hand():
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # token 2 repeats token 1's query
    assert coverage_loss(a, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(1.0 / 3.0)
    assert coverage_loss(a, torch.tensor([[True, False, True]])).item() == pytest.approx(0.0)


def test_gat_layer_mixes_tokens():
    torch.manual_seed(0)
    gat = SimpleGATLayer(16, num_heads=2, dropout=0.0).eval()
    x = torch.randn(1, 5, 16)
    y = gat(x)
    x2 = x.clone()
    x2[0, 4] += 1.0
    assert y.shape == x.shape and not torch.allclose(gat(x2)[0, 0], y[0, 0])  # token 0 sees token 4


def test_generate_returns_text_and_token_attention(tiny_tokenizer):
    cfg = tiny_config().head
    torch.manual_seed(3)
    head = MultitaskHead(cfg, tiny_tokenizer).eval()
    emb, pos, _ = _inputs(cfg, b=1, n=5)
    texts, info = head.generate(emb, pos, max_new_tokens=6)
    assert len(texts) == 1 and isinstance(texts[0], str)
    t = len(info["tokens"][0])
    assert 1 <= t <= 6
    assert info["token_attention"][0].shape == (t, 5) and info["token_cross_attention"][0].shape == (
        t,
        cfg.num_gen_queries,
    )
    # token -> gen query -> patch is a composition of two softmaxes: rows sum to one
    assert torch.allclose(info["token_attention"][0].sum(-1), torch.ones(t), atol=1e-5)


def test_standardized_head_equals_a_plain_head_on_standardized_input(tiny_tokenizer):
    base = tiny_config().head
    plain = MultitaskHead(base, tiny_tokenizer).eval()
    std_head = MultitaskHead(dataclasses.replace(base, standardize_embeddings=True), tiny_tokenizer).eval()
    missing = std_head.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["bridge.embed_mean", "bridge.embed_std"]  # stored with the weights
    emb, pos, _ = _inputs(base)
    mean, std = torch.linspace(-3, 3, base.embed_dim), torch.linspace(0.5, 20, base.embed_dim)
    std_head.set_embedding_stats(mean, std)
    with torch.no_grad():
        a = std_head(emb * std + mean, pos)["logits_cls"]
        b = plain(emb, pos)["logits_cls"]
    assert torch.allclose(a, b, atol=1e-4)
    again = MultitaskHead(dataclasses.replace(base, standardize_embeddings=True), tiny_tokenizer)
    again.load_state_dict(std_head.state_dict())
    assert torch.equal(again.bridge.embed_std, std_head.bridge.embed_std)
    with pytest.raises(ValueError, match="without standardize_embeddings"):
        plain.set_embedding_stats(mean, std)


def test_training_prompt_lists_the_true_findings(tiny_tokenizer):
    cfg = dataclasses.replace(tiny_config().head, prompt_top_k=2)
    head = MultitaskHead(cfg, tiny_tokenizer)
    logits = torch.full((2, cfg.num_outputs), -5.0)
    logits[0, 3] = 5.0  # the classifier's (wrong) finding
    labels = torch.zeros(2, cfg.num_outputs)
    labels[0, [1, 7, 9]] = 1.0
    names = head.finding_names
    assert head.prompts(logits, labels) == [format_prompt([names[1], names[7]]), format_prompt([])]
    assert head.prompts(logits) == [format_prompt([names[3]]), format_prompt([])]
