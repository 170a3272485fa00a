"""One exception hierarchy for the whole node.

The worker loop is the only place that catches broadly; it maps each class to what happens
to the job: :class:`TransientError` is retried with backoff, :class:`BadInputError` fails the
job at once with the message as the reason, :class:`NotEligibleError` ends it as "skipped".
"""

from __future__ import annotations


class NeuroRadixError(Exception):
    """Base class of every error the node raises on purpose."""


class TransientError(NeuroRadixError):
    """Something outside the node is down or busy (PACS unreachable, timeout): try again later."""


class PacsAuthError(TransientError):
    """The PACS refused the node's credentials (HTTP 401/403): a rotated password, or an account
    without the permission. Retried like any outage (it heals once the operator fixes the
    credentials); ``/readyz`` is red meanwhile and says why.
    """


class PartialStoreError(TransientError):
    """The PACS stored only some of the node's objects (STOW-RS ``FailedSOPSequence``).

    Retried like an outage (a full disk, a restart mid-request): the rerun deletes the node's own
    series before storing them again, so no partial result stays behind.
    """


class LedgerUnavailableError(TransientError):
    """The job ledger's database refused a write several times in a row (disk full, locked, connection lost).

    Nothing was recorded by the failed call. A worker holding a job keeps its lease until it
    expires, so the job is claimed again later (at-least-once); the worker backs off and carries on.
    """


class BadInputError(NeuroRadixError):
    """The study cannot be processed as it is (corrupt file, missing slices ...): fail with the reason."""


class UndecodablePixelsError(BadInputError):
    """The pixel data cannot be decoded here (an unsupported transfer syntax): the PACS may transcode it."""


class InputTooLargeError(BadInputError):
    """The input exceeds a configured limit (slices, voxels, image size, upload size): the message gives
    the numbers and the setting that raises the limit. Found from metadata, before anything is fetched
    or decoded where the source allows."""


class NotEligibleError(NeuroRadixError):
    """The study is not for this node (no CT series, only localizers ...): skip with the reason."""


class NotConfiguredError(NeuroRadixError):
    """An analyzer lacks what it needs to run (no verified weights): nothing is written."""


class ConfigError(NeuroRadixError):
    """A setting or data file is missing or invalid."""


class WeightsError(ConfigError):
    """A weights release does not match its manifest (hash, config, class scheme)."""


class NotificationError(NeuroRadixError):
    """A notification cannot be built or stored as it is (a FHIR resource that does not validate,
    an HL7 message that does not parse, unreadable outbox JSON): a defect or bad data, never retried."""
