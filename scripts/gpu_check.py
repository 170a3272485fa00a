#!/usr/bin/env python
"""GPU speed check of the deep-learning model: parity first, then timings.

One run, under 10 minutes on an H100/H200 without internet access (``scripts/gpu_check.sh``
installs the wheels brought along, then calls this):

1. parity on the full-size model (random weights, fixed seeds): state-dict keys of the fused
   and the plain backbone, one window's logits fused vs MONAI in fp32 and bf16, label maps of the
   sliding window fused vs MONAI (>= 99.9 % of voxels), static-cache vs eager greedy tokens and
   their cross-attention;
2. timings at 300x512x512 and 512^3 (1 mm voxels): preprocess, sliding window (segmentation +
   embeddings), labels to source, head (classify + report), a forced 256-token report (eager
   ``generate`` vs the static-cache decoder), peak GPU memory and TFLOP/s of the window loop,
   with ``sw_batch`` chosen for an 8 GB budget and, with ``--compile``, the compiled backbone
   (persistent cache in ``--cache-dir``).

``--dry-run`` runs the same code on the CPU with a tiny model and small volumes (a minute or
two), so the script is known to work before a GPU is spent on it.  Results: ``gpu-check.json``
and ``gpu-check.md`` in ``--out``; exit status 1 when a parity check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.modeling_outputs import BaseModelOutput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))

from neuroradix.models.backbone import build_backbone, forward_with_features  # noqa: E402
from neuroradix.models.config import (  # noqa: E402
    BackboneConfig,
    HeadConfig,
    ModelConfig,
    PreprocessConfig,
    tiny_config,
)
from neuroradix.models.decode import StaticGreedyDecoder  # noqa: E402
from neuroradix.models.head import MultitaskHead  # noqa: E402
from neuroradix.models.sliding import SlidingOptions, sliding_segment, window_starts  # noqa: E402
from neuroradix.models.speed import (  # noqa: E402
    GIB,
    choose_sw_batch,
    compile_backbone,
    probe_window_bytes,
    sliding_fixed_bytes,
)
from neuroradix.models.tokenizer import train_tokenizer  # noqa: E402
from neuroradix.models.transforms import preprocess_volume  # noqa: E402
from neuroradix.types import Volume  # noqa: E402

logger = logging.getLogger("gpu_check")
TEXTS = [
    "No pleural effusion. Mild emphysema in both upper lobes. Heart size is normal.",
    "A nodule in the right lower lobe. No consolidation. Atelectasis at the left base.",
] * 25


class Clock:
    """Wall time and peak memory of a block (GPU allocator peak, or process peak RSS on the CPU)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> Clock:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        if self.cuda:
            self.peak_gb = torch.cuda.max_memory_allocated() / GIB
        else:
            self.peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        return False


def _config(dry: bool) -> ModelConfig:
    if dry:
        return tiny_config()
    return ModelConfig(PreprocessConfig(target_spacing=(1.0, 1.0, 1.0)), BackboneConfig(), HeadConfig())


def _volume(shape, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    hu = rng.random(tuple(shape), dtype=np.float32) * 1400 - 1000
    affine = np.diag([1.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]]  # slices along z, rows along y, columns along x
    return Volume(hu.astype(np.int16), affine)


def _backbones(cfg: ModelConfig, device: str):
    torch.manual_seed(0)
    ref = build_backbone(cfg.backbone, fused_attention=False).to(device).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # relative-position biases of order 1, so that the bias path is exercised
        for name, p in ref.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g).to(device))
    fused = build_backbone(cfg.backbone, fused_attention=True).to(device).eval()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def parity(cfg: ModelConfig, ref, fused, head, tok, device: str, dry: bool) -> list[dict]:
    """The speed checks (docs/benchmarks.md) on this device; each row has ``name``, ``value``, ``limit``, ``ok``."""
    rows = []

    def check(name, value, limit, ok):
        rows.append({"name": name, "value": value, "limit": limit, "ok": bool(ok)})
        logger.info("parity %-45s %s (limit %s) %s", name, value, limit, "ok" if ok else "FAILED")

    check(
        "state_dict keys fused == plain",
        list(fused.state_dict()) == list(ref.state_dict()),
        True,
        list(fused.state_dict()) == list(ref.state_dict()),
    )
    roi = cfg.preprocess.patch_size
    x = torch.rand((1, 2, roi, roi, roi), generator=torch.Generator().manual_seed(2)).to(device)
    cuda = device.startswith("cuda")
    with torch.no_grad():
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        a, _ = forward_with_features(ref, x)
        b, _ = forward_with_features(fused, x)
        check("one window fp32, max rel. diff", _rel(b, a), 1e-4, _rel(b, a) <= 1e-4)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        module = (lambda m, t: forward_with_features(m, t)[0]) if cuda else (lambda m, t: m.swinViT(t, m.normalize)[-1])
        ref32 = module(ref, x)
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16):
            a16, b16 = module(ref, x), module(fused, x)
        err_m, err_f = _rel(a16, ref32), _rel(b16, ref32)
        check(
            f"one window bf16 vs fp32, fused (MONAI {err_m:.4f})",
            err_f,
            0.05,
            err_f <= 0.05 and err_f <= 2 * err_m + 1e-3,
        )
    shape = (80, 72, 72) if dry else (160, 192, 192)
    grid = preprocess_volume(_volume(shape, 3), cfg.preprocess, device)
    grid_img = torch.nn.functional.avg_pool3d(
        torch.as_tensor(grid.array, device=device)[None, None].float(), 5, stride=1, padding=2
    )[0, 0]
    opts = SlidingOptions(sw_batch_size=2)
    args = (roi, cfg.preprocess.overlap, cfg.preprocess.sigma_scale, grid.affine, opts, device)
    la = sliding_segment(grid_img, lambda t: forward_with_features(ref, t), *args).labels
    lb = sliding_segment(grid_img, lambda t: forward_with_features(fused, t), *args).labels
    agree = float((la == lb).mean())
    check(f"sliding-window labels agree ({'bf16' if cuda else 'fp32'})", agree, 0.999, agree >= 0.999)
    # decoding: the static cache gives eager greedy's tokens and cross-attention
    n = 24 if dry else 64
    enc = torch.randn((1, head.cfg.num_gen_queries, head.cfg.d_model), generator=torch.Generator().manual_seed(4))
    enc = enc.to(device)
    prefix = [tok.eos_token_id, tok.bos_token_id]
    with torch.no_grad():
        seq = head.bart.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc),
            decoder_input_ids=torch.tensor([prefix], device=device),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            num_beams=1,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        eager = seq[0, len(prefix) :].tolist()
        out = head.bart(encoder_outputs=(enc,), decoder_input_ids=seq[:, :-1], output_attentions=True, return_dict=True)
        cross_ref = torch.stack(out.cross_attentions).float().mean(dim=(0, 2))[0][len(prefix) - 1 :]
    # min_new_tokens masks EOS in eager generate; -1 never matches, so the static decoder runs n steps too
    got = StaticGreedyDecoder(head.bart).decode(enc, prefix, n, eos_token_id=-1)
    check(f"static-cache tokens == eager greedy ({n})", got.tokens == eager, True, got.tokens == eager)
    diff = float((got.cross_attention - cross_ref.cpu()).abs().max()) if got.tokens == eager else float("nan")
    check("static-cache cross-attention max abs diff", diff, 1e-3, diff <= 1e-3)
    return rows


def window_flops(model, cfg: ModelConfig, device: str) -> float:
    """FLOPs of one window (batch 1) of ``forward_with_features``, counted by torch's FlopCounterMode."""
    roi = cfg.preprocess.patch_size
    x = torch.zeros((1, 2, roi, roi, roi), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward_with_features(model, x)
    return float(counter.get_total_flops())


def timings(cfg, fused, head, tok, device, shape, sw_batch, forward, gflop_window, tokens) -> dict:
    """Time the stages at one source shape."""
    res = {"shape": list(shape)}
    vol = _volume(shape)
    cuda = device.startswith("cuda")
    with Clock(device) as c:
        grid = preprocess_volume(vol, cfg.preprocess, device)
    res["preprocess"] = (c.seconds, c.peak_gb)
    warm_up(forward, cfg, grid.shape, sw_batch, device)
    opts = SlidingOptions(sw_batch_size=sw_batch)
    with Clock(device) as c:
        sl = sliding_segment(
            grid.array,
            forward,
            cfg.preprocess.patch_size,
            cfg.preprocess.overlap,
            cfg.preprocess.sigma_scale,
            grid.affine,
            opts,
            device,
        )
    res["sliding window"] = (c.seconds, c.peak_gb)
    res["windows"] = len(sl.grid)
    res["window TFLOP/s"] = len(sl.grid) * gflop_window / 1e3 / c.seconds
    with Clock(device) as c:
        grid.labels_to_source(sl.labels)
    res["labels to source"] = (c.seconds, c.peak_gb)
    emb = sl.embeddings[None].to(device)
    pos = torch.from_numpy(sl.grid.positions())[None].to(device)
    with Clock(device) as c, torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
        _, info = head.generate(emb, pos)
    res["head (classify + report)"] = (c.seconds, c.peak_gb)
    res["report tokens"] = len(info["tokens"][0])
    with torch.no_grad():
        br = head.bridge(emb, pos)
        enc = br.gen_repr[:1]
        start = torch.tensor([[tok.eos_token_id, tok.bos_token_id]], device=device)
        with Clock(device) as c:
            head.bart.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=enc),
                decoder_input_ids=start,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        res[f"report {tokens} tokens, eager generate"] = (c.seconds, c.peak_gb)
        with Clock(device) as c:
            head._decoder.decode(enc, start[0].tolist(), tokens, eos_token_id=-1)
        res[f"report {tokens} tokens, static cache"] = (c.seconds, c.peak_gb)
    return res


def warm_up(forward, cfg: ModelConfig, shape, sw_batch: int, device: str) -> None:
    """Run the batch sizes the window loop will use once, outside the timings (a compiled forward
    compiles once per batch shape; cuDNN picks its kernels on first use)."""
    roi = cfg.preprocess.patch_size
    per_slab = int(np.prod([len(window_starts(max(int(n), roi), roi, cfg.preprocess.overlap)) for n in shape[1:]]))
    cuda = device.startswith("cuda")
    for batch in sorted({min(sw_batch, per_slab), per_slab % sw_batch} - {0}):
        x = torch.zeros((batch, 2, roi, roi, roi), device=device, dtype=torch.float16 if cuda else torch.float32)
        with torch.no_grad(), torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            forward(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, small volumes")
    p.add_argument("--out", type=Path, default=Path("/tmp/neuroradix-gpu"))
    p.add_argument("--budget-gb", type=float, default=8.0, help="peak-memory budget for the sw_batch choice")
    p.add_argument("--sw-batch", type=int, default=None, help="fixed sw_batch (default: chosen for the budget)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (and the decode step)")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/neuroradix-inductor"), help="compile cache")
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (dry run)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads if args.dry_run else torch.get_num_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = _config(args.dry_run)
    tok = train_tokenizer(TEXTS, vocab_size=300 if args.dry_run else 1000)
    torch.manual_seed(0)
    head = MultitaskHead(cfg.head, tok).to(device).eval()
    tokens = 16 if args.dry_run else 256
    ref, fused = _backbones(cfg, device)
    report: dict = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU ({platform.machine()}, {args.threads} threads)",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "date": time.strftime("%Y-%m-%d"),
    }
    t0 = time.perf_counter()
    report["parity"] = [] if args.skip_parity else parity(cfg, ref, fused, head, tok, device, args.dry_run)
    report["parity_seconds"] = time.perf_counter() - t0
    gflop = window_flops(ref, cfg, device) / 1e9  # MONAI's explicit matmuls: every FLOP is counted
    del ref
    if device == "cuda":
        torch.cuda.empty_cache()
    report["gflop_per_window"] = gflop

    def forward(x: torch.Tensor):
        return forward_with_features(fused, x)

    if args.compile:
        forward = compile_backbone(fused, cache_dir=args.cache_dir)
        head.compile_decoder(device == "cuda")
        roi = cfg.preprocess.patch_size
        with (
            Clock(device) as c,
            torch.no_grad(),
            torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"),
        ):
            forward(
                torch.zeros(
                    (1, 2, roi, roi, roi), device=device, dtype=torch.float16 if device == "cuda" else torch.float32
                )
            )
        report["compile_first_call_seconds"] = c.seconds
    shapes = [(72, 96, 96), (96, 96, 96)] if args.dry_run else [(300, 512, 512), (512, 512, 512)]
    report["runs"] = []
    for shape in shapes:
        sw = args.sw_batch
        if sw is None:
            per_window = None
            fixed = sum(t.numel() * t.element_size() for t in fused.state_dict().values())
            if device == "cuda":
                base, per_window = probe_window_bytes(forward, cfg.preprocess.patch_size, device=device)
                fixed += base
            fixed += sliding_fixed_bytes(shape, cfg.preprocess.patch_size, cfg.backbone.out_channels)
            sw = choose_sw_batch(
                device,
                per_window_bytes=per_window,
                fixed_bytes=fixed,
                budget_bytes=int(args.budget_gb * GIB),
                configured=2 if args.dry_run else 4,
            )
            report.setdefault("sw_batch_choice", []).append(
                {
                    "shape": list(shape),
                    "per_window_gb": (per_window or 0) / GIB,
                    "fixed_gb": fixed / GIB,
                    "sw_batch": sw,
                }
            )
        logger.info("timing %s with sw_batch %d", shape, sw)
        run = timings(cfg, fused, head, tok, device, shape, sw, forward, gflop, tokens)
        run["sw_batch"] = sw
        report["runs"].append(run)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.out / "gpu-check.md").write_text(md)
    print(md)
    return 0 if all(r["ok"] for r in report["parity"]) else 1


def markdown(report: dict) -> str:
    """The benchmark table for docs/benchmarks.md."""
    lines = [
        f"Device: {report['device']}; torch {report['torch']}; {report['date']}"
        f"{' (DRY RUN: tiny model on the CPU, not a GPU number)' if report['dry_run'] else ''}",
        f"One window: {report['gflop_per_window']:.1f} GFLOP"
        + (
            f"; first compiled call {report['compile_first_call_seconds']:.1f} s"
            if "compile_first_call_seconds" in report
            else ""
        ),
        "",
        "| parity check | value | limit | ok |",
        "| --- | ---: | ---: | --- |",
    ]
    for r in report["parity"]:
        value = f"{r['value']:.3g}" if isinstance(r["value"], float) else r["value"]
        lines.append(f"| {r['name']} | {value} | {r['limit']} | {'yes' if r['ok'] else 'NO'} |")
    for run in report["runs"]:
        lines += [
            "",
            f"Source {tuple(run['shape'])}: {run['windows']} windows, sw_batch {run['sw_batch']}, "
            f"window loop {run['window TFLOP/s']:.4g} TFLOP/s, report {run['report tokens']} tokens",
            "",
            "| stage | time (s) | peak memory (GB) |",
            "| --- | ---: | ---: |",
        ]
        for key, value in run.items():
            if isinstance(value, tuple | list) and len(value) == 2 and key != "shape":
                lines.append(f"| {key} | {value[0]:.3f} | {value[1]:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
