"""Fixtures of the DICOM writer tests (data built in :mod:`writer_fixtures`)."""

from tests.writers.writer_fixtures import ct_series, ctx, result, roundtrip, untrained_result  # noqa: F401
