"""Build the analyzers named in the settings (``NEURORADIX_ANALYZERS=lung-hu,deep``).

The names themselves are :data:`neuroradix.config.ANALYZER_NAMES` (settings sit below the
analyzers in the layers, so the list lives there and is re-exported here); :data:`BUILDERS` maps
each name to the function that builds it, and this module refuses to import when the two
disagree, so a new analyzer cannot be half-registered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Union

from neuroradix.analyzers.base import Analyzer
from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.config import ANALYZER_NAMES, PipelineSettings
from neuroradix.errors import NotConfiguredError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unavailable:
    """An analyzer that was asked for but cannot run; the job records ``reason``."""

    name: str
    reason: str


Built = Union[Analyzer, Unavailable]
Builder = Callable[[PipelineSettings], Built]


def _build_lung(settings: PipelineSettings) -> Built:
    """The no-weights lung analyzer (needs no settings)."""
    return LungAnalyzer()


def _build_deep(settings: PipelineSettings) -> Built:
    """The deep-learning analyzer, or :class:`Unavailable` when its weights are not configured."""
    from neuroradix.analyzers.deep import (  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        NAME,
        DeepAnalyzer,
    )
    from neuroradix.models.release import is_published_release  # noqa: PLC0415 - keeps the registry light

    if settings.weights_dir is not None and is_published_release(settings.weights_dir):
        # a release imported from a published model (COLIPRI, CT-CLIP, Merlin) runs in its own analyzer
        from neuroradix.analyzers.published import PublishedAnalyzer  # noqa: PLC0415 - optional heavy dependency

        try:
            return PublishedAnalyzer(
                settings.weights_dir, allow_untrained=settings.allow_untrained, device=settings.device
            )
        except NotConfiguredError as exc:
            logger.warning("published-model analyzer not configured: %s", exc)
            return Unavailable(NAME, f"not configured: {exc}")
    try:
        return DeepAnalyzer(settings.weights_dir, allow_untrained=settings.allow_untrained, device=settings.device)
    except NotConfiguredError as exc:
        logger.warning("deep-learning analyzer not configured: %s", exc)
        return Unavailable(NAME, f"not configured: {exc}")


BUILDERS: Mapping[str, Builder] = MappingProxyType({"lung-hu": _build_lung, "deep": _build_deep})
"""Analyzer name (as in the settings and the CLI) -> builder, in the order of :data:`ANALYZER_NAMES`."""

if tuple(BUILDERS) != ANALYZER_NAMES:  # not an assert: it must hold under ``python -O`` too
    raise ImportError(
        f"analyzer builders {list(BUILDERS)} do not match neuroradix.config.ANALYZER_NAMES {list(ANALYZER_NAMES)}"
    )


def build_analyzers(settings: PipelineSettings) -> list[Built]:
    """Instantiate each configured analyzer once (weights are loaded here, not per study).

    Parameters
    ----------
    settings:
        Validated settings; ``settings.analyzers`` holds names from :data:`ANALYZER_NAMES`.

    Returns
    -------
    list
        One :class:`~neuroradix.analyzers.base.Analyzer` or :class:`Unavailable` per name, in the
        order of ``settings.analyzers``.
    """
    built: list[Built] = []
    for name in settings.analyzers:
        builder = BUILDERS.get(name)
        if builder is None:  # settings validate names; this is a programming error
            raise ValueError(f"unknown analyzer {name!r}; known: {list(ANALYZER_NAMES)}")
        built.append(builder(settings))
    return built


__all__ = ["ANALYZER_NAMES", "BUILDERS", "Unavailable", "build_analyzers"]
