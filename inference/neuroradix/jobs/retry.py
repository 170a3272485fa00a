"""When a failed job runs again: capped exponential backoff with jitter, bounded by time or by count.

Two kinds of failure are retried, with different budgets:

* **Transient** (:class:`~neuroradix.errors.TransientError`: the PACS unreachable, 5xx, timeouts,
  401/403, a partial STOW): the world outside the node is broken and will be mended, however long
  that takes. The job is retried for ``window_seconds`` (default 24 h) counted from the first
  failure of the current run of them, then ends ``failed`` with "gave up after 24 h: <reason>"
  (and the reconciler queues it again once the PACS answers). The backoff is capped at
  ``max_seconds`` (default 120 s) so that a job runs again within about two minutes of the end of
  an outage, however long the outage was.
* **Counted** (an unexpected exception, i.e. a bug, or a job that ran past its time limit): the
  same input fails the same way, so these end after ``max_attempts`` claims.

The jitter spreads the retries of many jobs failed by one outage: each delay is drawn uniformly
from ``[(1 - jitter) * d, d]`` where ``d = min(base * 2**(n - 1), max_seconds)`` for the n-th
failure in a row. A delay never overshoots the window: the last try happens when it ends.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from neuroradix.config import WorkerSettings


def describe_seconds(seconds: float) -> str:
    """A duration as a person says it: ``"24 h"``, ``"10 min"``, ``"45 s"``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff and budget of retried jobs (see the module docstring).

    Parameters
    ----------
    base_seconds:
        The delay after the first failure (before jitter).
    max_seconds:
        The cap of the delay: how long after an outage ends a job may wait at most.
    window_seconds:
        How long transient failures are retried, counted from the first of the current run.
    jitter:
        Fraction of the delay drawn at random (0: none, 1: anything from 0 to the delay).
    rand:
        Source of uniform numbers in [0, 1) (tests pass a fixed one).
    """

    base_seconds: float = 5.0
    max_seconds: float = 120.0
    window_seconds: float = 86400.0
    jitter: float = 0.2
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_seconds <= 0:
            raise ValueError(f"base_seconds must be positive, got {self.base_seconds}")
        if self.max_seconds < self.base_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) must be at least base_seconds ({self.base_seconds})")
        if self.window_seconds < 0:
            raise ValueError(f"window_seconds must not be negative, got {self.window_seconds}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> RetryPolicy:
        """The policy the node's settings describe (``NEURORADIX_RETRY_*``)."""
        return cls(
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
            window_seconds=settings.retry_window_seconds,
            jitter=settings.retry_jitter,
        )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first), with jitter."""
        capped = min(self.base_seconds * 2 ** max(failures - 1, 0), self.max_seconds)
        return capped * (1.0 - self.jitter * self.rand())

    def transient_delay(self, since: dt.datetime, now: dt.datetime, failures: int) -> Optional[float]:
        """The delay before the next try after a transient failure, or None when the window is spent.

        Parameters
        ----------
        since:
            The first failure of the current run of transient failures.
        now:
            The time of this failure.
        failures:
            How many transient failures in a row this one makes (1 for the first).
        """
        elapsed = (now - since).total_seconds()
        if elapsed >= self.window_seconds:
            return None
        return min(self.delay(failures), self.window_seconds - elapsed)

    @property
    def window(self) -> str:
        """The retry window as a person says it (``"24 h"``)."""
        return describe_seconds(self.window_seconds)
