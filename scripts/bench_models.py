#!/usr/bin/env python
"""Benchmark the full-size model (random weights): time and peak memory per stage.

Stages: preprocessing, segmentation + embeddings (sliding window, one backbone pass per window),
labels back to the source grid, the multitask head with report generation, and a greedy BART
decode of a fixed number of tokens.  Prints a markdown table.

Examples::

    python scripts/bench_models.py                                # CPU, 96^3 volume (one window)
    python scripts/bench_models.py --device cuda --shape 300 512 512
    python scripts/bench_models.py --device cuda --shape 512 512 512 --sw-batch 8
    python scripts/bench_models.py --device cuda --shape 300 512 512 --resize 512   # the original 512^3 resize
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


class Stage:
    """Context manager recording wall time and peak memory (GPU allocator peak, or process peak RSS)."""

    def __init__(self, rows: list, name: str, device: str) -> None:
        self.rows, self.name, self.device = rows, name, device

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 1024**3
        else:
            peak = _rss_gb()
        self.rows.append((self.name, time.perf_counter() - self.t0, peak))
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=[96, 96, 96],
        metavar=("SLICES", "ROWS", "COLS"),
        help="source volume shape (1 mm voxels); default 96^3 = one window",
    )
    p.add_argument("--resize", type=int, default=None, help="preprocess to N^3 (the original design's resize)")
    p.add_argument("--feature-size", type=int, default=48)
    p.add_argument("--sw-batch", type=int, default=4)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (CUDA)")
    p.add_argument("--tokens", type=int, default=256, help="greedy decode length for the BART stage")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--json", type=Path, help="also write the numbers as JSON")
    p.add_argument("--eager-attention", action="store_true", help="MONAI's window attention instead of the fused one")
    p.add_argument(
        "--compare",
        action="store_true",
        help="only compare eager vs fused attention (one window) and eager vs static-cache decoding",
    )
    p.add_argument("--roi", type=int, default=96, help="window edge for --compare")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats for --compare (after one warm-up)")
    args = p.parse_args(argv)
    if args.compare:
        return compare(args)

    import torch

    from neuroradix.models.backbone import build_backbone, forward_with_features
    from neuroradix.models.config import BackboneConfig, HeadConfig, ModelConfig, PreprocessConfig
    from neuroradix.models.head import MultitaskHead
    from neuroradix.models.sliding import SlidingOptions, sliding_segment
    from neuroradix.models.tokenizer import train_tokenizer
    from neuroradix.models.transforms import preprocess_volume
    from neuroradix.types import Volume

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pre = (
        PreprocessConfig(target_spacing=None, target_shape=(args.resize,) * 3, overlap=args.overlap)
        if args.resize
        else PreprocessConfig(target_spacing=(1.0, 1.0, 1.0), overlap=args.overlap)
    )
    cfg = ModelConfig(
        pre,
        BackboneConfig(feature_size=args.feature_size),
        HeadConfig(embed_dim=24 * args.feature_size, max_report_tokens=args.tokens),
    )
    device = args.device
    rows: list = []
    texts = ["No pleural effusion. Mild emphysema in both upper lobes. Heart size is normal."] * 50
    tok = train_tokenizer(texts, vocab_size=1000)
    backbone = build_backbone(cfg.backbone, fused_attention=not args.eager_attention).to(device).eval()
    head = MultitaskHead(cfg.head, tok).to(device).eval()
    n_params = sum(q.numel() for q in backbone.parameters()) / 1e6
    from neuroradix.models.speed import compile_backbone

    def fwd_eager(x):
        return forward_with_features(backbone, x)

    fwd = compile_backbone(backbone) if args.compile else fwd_eager
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]]  # slices along z, rows along y, columns along x
    vol = Volume((rng.random(tuple(args.shape), dtype=np.float32) * 1400 - 1000).astype(np.int16), affine)
    options = SlidingOptions(sw_batch_size=args.sw_batch, amp=not args.no_amp)

    with Stage(rows, "preprocess (reorient, resample, window)", device):
        grid = preprocess_volume(vol, cfg.preprocess, device)
    with Stage(rows, "segmentation + embeddings (sliding window)", device):
        res = sliding_segment(
            grid.array,
            fwd,
            cfg.preprocess.patch_size,
            cfg.preprocess.overlap,
            cfg.preprocess.sigma_scale,
            grid.affine,
            options,
            device,
        )
    with Stage(rows, "labels to source grid", device):
        grid.labels_to_source(res.labels)
    emb = res.embeddings[None].to(device)
    pos = torch.from_numpy(res.grid.positions())[None].to(device)
    with Stage(rows, "head: classify + generate report", device):
        _texts_out, info = head.generate(emb, pos)
    generated = len(info["tokens"][0])
    from transformers.modeling_outputs import BaseModelOutput

    with torch.no_grad():
        br = head.bridge(emb, pos)
        with Stage(rows, f"BART greedy decode, {args.tokens} tokens forced", device):
            head.bart.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=br.gen_repr),
                decoder_input_ids=torch.tensor([[tok.eos_token_id, tok.bos_token_id]], device=device),
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )

    dev_name = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    )
    mem_label = "peak GPU memory allocated (GB)" if device.startswith("cuda") else "process peak RSS so far (GB)"
    print(f"Device: {dev_name}; torch {torch.__version__}")
    print(
        f"Backbone: SwinUNETR(2 in, {cfg.backbone.out_channels} out, feature_size {cfg.backbone.feature_size}), "
        f"{n_params:.1f} M parameters, random weights; source {tuple(args.shape)}, network grid {grid.shape}, "
        f"{len(res.grid)} windows of {cfg.preprocess.patch_size}^3, overlap {cfg.preprocess.overlap}, "
        f"sw_batch {args.sw_batch}, amp {'bf16' if options.amp and device.startswith('cuda') else 'off'}"
        f"{', compiled' if args.compile else ''}; head generated {generated} tokens before stopping\n"
    )
    print(f"| stage | time (s) | {mem_label} |")
    print("| --- | ---: | ---: |")
    for name, t, m in rows:
        print(f"| {name} | {t:.2f} | {m:.2f} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": dev_name,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "stages": [dict(zip(("stage", "seconds", "peak_gb"), r)) for r in rows],
                },
                indent=2,
            )
        )
    return 0


def _time_decoders(head, tok, tokens: int, device: str, best) -> tuple[float, float]:
    """Eager path (``generate`` with a dynamic cache, then one more decoder pass for the cross-attention,
    as the head did before the static decoder) against the static-cache decoder, ``tokens`` forced."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from neuroradix.models.decode import StaticGreedyDecoder

    enc = torch.randn(1, head.cfg.num_gen_queries, head.cfg.d_model, device=device)
    start = [tok.eos_token_id, tok.bos_token_id]

    def eager():
        seq = head.bart.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc),
            decoder_input_ids=torch.tensor([start], device=device),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        head.bart(encoder_outputs=(enc,), decoder_input_ids=seq[:, :-1], output_attentions=True, return_dict=True)

    decoder = StaticGreedyDecoder(head.bart)
    with torch.no_grad():
        return best(eager), best(lambda: decoder.decode(enc, start, tokens, eos_token_id=-1))


def compare(args) -> int:
    """Time MONAI vs fused window attention (one window, whole backbone) and eager vs static decoding."""
    import torch

    from neuroradix.models.attention import set_fused_attention
    from neuroradix.models.backbone import build_backbone, forward_with_features
    from neuroradix.models.config import BackboneConfig, HeadConfig, default_bart_config, tiny_config
    from neuroradix.models.head import MultitaskHead
    from neuroradix.models.tokenizer import train_tokenizer

    torch.set_num_threads(args.threads)
    device = args.device

    def best(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    torch.manual_seed(0)
    model = build_backbone(BackboneConfig(feature_size=args.feature_size), fused_attention=False).to(device).eval()
    x = torch.rand(1, 2, args.roi, args.roi, args.roi, device=device)
    rows = []
    with torch.no_grad():
        t_vit_e = best(lambda: model.swinViT(x, model.normalize))
        t_all_e = best(lambda: forward_with_features(model, x))
        set_fused_attention(model, True)
        t_vit_f = best(lambda: model.swinViT(x, model.normalize))
        t_all_f = best(lambda: forward_with_features(model, x))
    tag = f"feature_size {args.feature_size}, one {args.roi}^3 window, fp32"
    rows.append((f"Swin encoder (attention part), {tag}", t_vit_e, t_vit_f))
    rows.append((f"whole backbone forward, {tag}", t_all_e, t_all_f))
    tok = train_tokenizer(
        ["No pleural effusion. Mild emphysema in both upper lobes. Heart size is normal."] * 50, vocab_size=300
    )
    heads = {
        "tiny BART (d_model 32, 1 layer)": tiny_config().head,
        "BART-base-sized (d_model 768, 6 layers)": HeadConfig(bart=default_bart_config()),
    }
    for name, hcfg in heads.items():
        t_e, t_s = _time_decoders(MultitaskHead(hcfg, tok).to(device).eval(), tok, args.tokens, device, best)
        rows.append((f"greedy decode {args.tokens} tokens + cross-attention, {name}", t_e, t_s))
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    )
    print(f"Device: {dev_name}; torch {torch.__version__}; best of {args.repeats} after a warm-up\n")
    print("| what | eager / MONAI (s) | fused / static cache (s) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
