"""Fixtures of the DICOM writer tests (data built in :mod:`writer_fixtures`)."""
from writer_fixtures import ctx, ct_series, result, roundtrip, untrained_result  # noqa: F401
