"""The outcome of one delivery attempt, shared by every channel.

``ok`` means the receiver took the notification; otherwise ``permanent`` says whether trying again
can help (a rejected message goes to dead-letter at once) or not (a receiver that is down, busy or
silent is retried until the outbox's window ends). ``detail`` is a short line for the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass

DETAIL_MAX = 200


def _one_line(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= DETAIL_MAX else flat[: DETAIL_MAX - 3] + "..."


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one attempt.

    Parameters
    ----------
    ok
        The receiver accepted the notification (ACK ``AA``, HTTP 2xx).
    permanent
        Only when not ``ok``: True when a retry cannot succeed (dead-letter now).
    detail
        Short text for the audit trail (``"ACK AA"``, ``"HTTP 503"``, ``"connection refused"``),
        one line, at most 200 characters; never patient data of the node's own making.
    """

    ok: bool
    permanent: bool
    detail: str

    def __post_init__(self) -> None:
        if not isinstance(self.ok, bool) or not isinstance(self.permanent, bool):
            raise TypeError("DeliveryResult.ok and .permanent must be bool")
        if not isinstance(self.detail, str):
            raise TypeError("DeliveryResult.detail must be a str")
        if self.ok and self.permanent:
            raise ValueError("a delivered result cannot be a permanent failure")
        object.__setattr__(self, "detail", _one_line(self.detail))

    @classmethod
    def delivered(cls, detail: str) -> DeliveryResult:
        """The receiver accepted it."""
        return cls(True, False, detail)

    @classmethod
    def retry(cls, detail: str) -> DeliveryResult:
        """Not delivered; try again later."""
        return cls(False, False, detail)

    @classmethod
    def dead(cls, detail: str) -> DeliveryResult:
        """Not delivered, and a retry cannot help: dead-letter."""
        return cls(False, True, detail)
