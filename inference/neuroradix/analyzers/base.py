"""The one analyzer interface every analyzer implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from neuroradix.types import AnalyzerInfo, StudyResult, Volume


@runtime_checkable
class Analyzer(Protocol):
    """Turns a CT volume into a :class:`StudyResult`. No I/O beyond loading its own weights."""

    info: AnalyzerInfo

    def analyze(self, volume: Volume) -> StudyResult:
        """Analyze one CT volume (HU, LPS geometry; see :mod:`neuroradix.types`)."""
        ...
