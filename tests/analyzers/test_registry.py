"""One list of analyzer names: settings, builders and the CLI choices all read it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from neuroradix import config
from neuroradix.analyzers import registry
from neuroradix.analyzers.lung import LungAnalyzer
from neuroradix.config import PipelineSettings


def test_builders_cover_exactly_the_configured_names_in_order():
    assert registry.ANALYZER_NAMES is config.ANALYZER_NAMES
    assert tuple(registry.BUILDERS) == config.ANALYZER_NAMES == ("lung-hu", "deep")


def test_settings_accept_every_registered_name_and_reject_others():
    assert PipelineSettings(analyzers=registry.ANALYZER_NAMES).analyzers == registry.ANALYZER_NAMES
    with pytest.raises(ValidationError, match="lung-hu"):
        PipelineSettings(analyzers=("lung-hu", "fractal"))
    with pytest.raises(ValidationError):
        PipelineSettings(analyzers=())


def test_build_analyzers_uses_the_builder_of_each_name():
    built = registry.build_analyzers(PipelineSettings(analyzers=("lung-hu", "deep")))
    assert isinstance(built[0], LungAnalyzer)
    # without a weights release the deep analyzer is "not configured", never random weights
    assert isinstance(built[1], registry.Unavailable) and "not configured" in built[1].reason


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        registry.BUILDERS["other"] = registry.BUILDERS["lung-hu"]  # type: ignore[index]
