"""Speed settings of the sliding window: a memory-aware ``sw_batch`` and a compiled backbone.

``choose_sw_batch`` picks the largest number of windows per backbone call whose estimated peak
stays within a memory budget (default 8 GiB): the peak is the sliding window's fixed buffers
(:func:`sliding_fixed_bytes`: the blending slab, labels, the image) plus the model's weights
plus ``sw_batch`` times the activation memory of one window.  On a GPU the per-window number is
measured once with :func:`probe_window_bytes` (two forwards, batch 1 and 2); on a CPU there is
nothing to protect and the configured value is returned.

``compile_backbone`` wraps the backbone's features-and-logits forward in ``torch.compile``
with a persistent inductor cache (``TORCHINDUCTOR_CACHE_DIR`` and the FX-graph cache), so only
the first study after an install pays for compilation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch._inductor.config as inductor_config
from torch import nn

from neuroradix.models.backbone import SegmentationWithFeatures

logger = logging.getLogger(__name__)

__all__ = [
    "GIB",
    "DEFAULT_BUDGET_BYTES",
    "sliding_fixed_bytes",
    "probe_window_bytes",
    "choose_sw_batch",
    "set_compile_cache",
    "compile_backbone",
]

GIB = 1 << 30
DEFAULT_BUDGET_BYTES = 8 * GIB
ForwardFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def sliding_fixed_bytes(
    grid_shape: tuple[int, int, int], roi: int, num_classes: int, accumulate_bytes: int = 2, image_bytes: int = 2
) -> int:
    """Memory of :func:`~neuroradix.models.sliding.sliding_segment`'s buffers besides the model.

    The blending slab ``[classes, roi, H, W]``, the label map (1 byte a voxel), the image in
    its input dtype plus the float32 copy made on entry, and the global channel.
    """
    d, h, w = (max(int(s), roi) for s in grid_shape)
    slab = num_classes * roi * h * w * accumulate_bytes
    return slab + d * h * w * (1 + image_bytes + 4) + roi**3 * 4


def probe_window_bytes(
    forward: ForwardFn, roi: int, in_channels: int = 2, device: Union[str, torch.device] = "cuda", amp: bool = True
) -> tuple[int, int]:
    """Measure ``(base_bytes, per_window_bytes)`` of ``forward`` on a CUDA device.

    Runs batch 1 and batch 2 under ``no_grad`` (bf16 autocast with ``amp``) and fits
    ``peak(B) = base + B * per_window`` to the allocator's peaks above the memory already
    allocated (the weights).  ``ValueError`` on a non-CUDA device.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"probe_window_bytes measures CUDA memory, got device {device}")
    peaks = []
    for batch in (1, 2):
        x = torch.zeros(
            (batch, in_channels, roi, roi, roi), device=device, dtype=torch.float16 if amp else torch.float32
        )
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = forward(x)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
        del out, x
    per_window = max(peaks[1] - peaks[0], 1)
    return max(peaks[0] - per_window, 0), per_window


def choose_sw_batch(
    device: Union[str, torch.device],
    *,
    per_window_bytes: Optional[int] = None,
    fixed_bytes: int = 0,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    configured: int = 4,
    max_batch: int = 32,
) -> int:
    """The largest ``sw_batch`` whose estimated peak memory stays within ``budget_bytes``.

    Parameters
    ----------
    device:
        Where the windows run.  On anything but CUDA ``configured`` is returned unchanged.
    per_window_bytes:
        Activation memory of one window (:func:`probe_window_bytes`); ``None`` keeps
        ``configured``.
    fixed_bytes:
        Everything else held during the loop: weights, :func:`sliding_fixed_bytes`, and the
        probe's base.
    budget_bytes:
        The limit on the estimated peak (default 8 GiB).
    configured:
        The value to use where nothing is measured.
    max_batch:
        Upper bound (larger batches stop paying off once the GPU is full).

    Returns
    -------
    int
        At least 1; a warning is logged when even one window exceeds the budget.
    """
    for name, value in (("configured", configured), ("max_batch", max_batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    if torch.device(device).type != "cuda" or per_window_bytes is None:
        return configured
    if per_window_bytes <= 0:
        raise ValueError(f"per_window_bytes must be positive, got {per_window_bytes}")
    batch = (budget_bytes - fixed_bytes) // per_window_bytes
    if batch < 1:
        logger.warning(
            "sw_batch: one window needs %.2f GiB over %.2f GiB fixed, above the %.2f GiB budget",
            per_window_bytes / GIB,
            fixed_bytes / GIB,
            budget_bytes / GIB,
        )
        return 1
    return int(min(batch, max_batch))


def set_compile_cache(cache_dir: Union[str, Path]) -> Path:
    """Point inductor's persistent caches at ``cache_dir`` (created if missing).

    Sets ``TORCHINDUCTOR_CACHE_DIR`` (read by inductor whenever it looks for its cache) and
    turns on the FX-graph cache, so a second process compiling the same graph loads the
    kernels instead of compiling them again.
    """
    path = Path(cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    # Inductor reads its cache folder only from its environment (this process and the ones it starts).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    inductor_config.fx_graph_cache = True
    return path


def compile_backbone(
    model: nn.Module, *, cache_dir: Union[str, Path, None] = None, mode: Optional[str] = None, dynamic: bool = False
) -> ForwardFn:
    """``torch.compile`` of the backbone's ``(logits, features)`` forward.

    Parameters
    ----------
    model:
        A ``SwinUNETR`` (fused or MONAI attention).
    cache_dir:
        Persistent compile cache (:func:`set_compile_cache`); ``None`` keeps inductor's default
        (a per-user folder under the temp dir, lost on reboot).
    mode:
        ``torch.compile`` mode (``None``, ``"max-autotune-no-cudagraphs"``, ...).
    dynamic:
        Window shape is fixed, so shapes are static by default.

    Returns
    -------
    callable
        ``x -> (logits, features)``, a drop-in for
        :func:`~neuroradix.models.backbone.forward_with_features` bound to ``model``.  Compiling
        the wrapper (not ``model``) matters: ``torch.compile(model)`` would only compile
        ``SwinUNETR.forward``, which the features path never calls.
    """
    if cache_dir is not None:
        set_compile_cache(cache_dir)
    return torch.compile(SegmentationWithFeatures(model), mode=mode, dynamic=dynamic)
