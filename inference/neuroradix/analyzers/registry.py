"""Build the analyzers named in the settings (``NEURORADIX_ANALYZERS=lung-hu,deep``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Union

from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.config import PipelineSettings
from neuroradix.errors import NotConfiguredError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unavailable:
    """An analyzer that was asked for but cannot run; the job records ``reason``."""

    name: str
    reason: str


def build_analyzers(settings: PipelineSettings) -> list[Union[Analyzer, Unavailable]]:
    """Instantiate each configured analyzer once (weights are loaded here, not per study)."""
    built: list[Union[Analyzer, Unavailable]] = []
    for name in settings.analyzers:
        if name == "lung-hu":
            built.append(LungAnalyzer())
        elif name == "deep":
            from neuroradix.analyzers.deep import (  # noqa: PLC0415 - optional heavy dependency (torch etc.)
                NAME,
                DeepAnalyzer,
            )  # noqa: PLC0415 - optional heavy dependency (torch etc.)
            try:
                built.append(DeepAnalyzer(settings.weights_dir, allow_untrained=settings.allow_untrained))
            except NotConfiguredError as exc:
                LOG.warning("deep-learning analyzer not configured: %s", exc)
                built.append(Unavailable(NAME, f"not configured: {exc}"))
        else:  # Settings validates names; this is a programming error
            raise ValueError(f"unknown analyzer {name!r}")
    return built

