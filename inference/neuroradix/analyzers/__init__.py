"""Analyzers: ``analyze(volume) -> StudyResult``, pure functions of the CT volume."""
