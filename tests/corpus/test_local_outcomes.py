"""The corpus without a PACS: each refused case gives its reason from the pipeline itself (``neuroradix analyze``).

The same checks as ``tests/integration/test_corpus.py`` makes through Orthanc, for the cases that end
before any analysis (fast, no Orthanc needed); valid input is only planned here (headers and
geometry), its full run is the integration test's.
"""

from __future__ import annotations

import pydicom
import pytest

from neuroradix.analyzers.registry import build_analyzers
from neuroradix.config import PipelineSettings
from neuroradix.errors import BadInputError, NotEligibleError
from neuroradix.imaging.volume import plan
from neuroradix.pipeline.run import analyze_datasets
from tests.corpus.generate import CASES, FAILED, GOOD, SUCCEEDED, write_case
from tests.support import require_tool

REFUSED = [c for c in CASES if c.state != SUCCEEDED]


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.name)
def test_refused_case_gives_its_reason_before_any_analysis(case, tmp_path):
    if case.tool:
        require_tool(case.tool[0])
    datasets = [pydicom.dcmread(p) for p in write_case(case, tmp_path, seed="local")]
    expected = BadInputError if case.state == FAILED else NotEligibleError
    with pytest.raises(expected) as err:
        analyze_datasets(datasets, PipelineSettings(), analyzers=())  # no analyzer: it must end before one runs
    assert case.reason in str(err.value)


@pytest.mark.parametrize(
    "name",
    [
        "jpeg-extended",
        "gantry-tilt",
        "variable-spacing",
        "head-first-reversed",
        "enhanced-multiframe-ct",
        "enhanced-shuffled-frames",
        "enhanced-two-instances",
    ],
)
def test_valid_unusual_case_is_planned_with_its_warning(name, tmp_path):
    case = next(c for c in CASES if c.name == name)
    if case.tool:
        require_tool(case.tool[0])
    layout = plan([pydicom.dcmread(p) for p in write_case(case, tmp_path, seed="local")])
    assert layout.shape[0] == 20
    assert any(case.reason in w for w in layout.warnings) if case.reason else layout.warnings == ()


@pytest.mark.parametrize("name", ["enhanced-shuffled-frames", "enhanced-two-instances"])
def test_enhanced_case_gives_the_results_of_the_classic_base_study(name, tmp_path):
    """The same scan as Enhanced CT: the same measurements and the same kinds of objects (lung analyzer)."""
    settings = PipelineSettings()
    analyzers = build_analyzers(settings)
    classic = [pydicom.dcmread(p) for p in write_case(GOOD, tmp_path / "good", seed="local")]
    case = next(c for c in CASES if c.name == name)
    enhanced = [pydicom.dcmread(p) for p in write_case(case, tmp_path / name, seed="local")]
    base, got = analyze_datasets(classic, settings, analyzers), analyze_datasets(enhanced, settings, analyzers)
    assert [ds.SOPClassUID for ds in got.stored] == [ds.SOPClassUID for ds in base.stored]
    values = {m.name: m.value for m in base.analyzers[0].result.measurements}
    measured = {m.name: m.value for m in got.analyzers[0].result.measurements}
    assert measured.keys() == values.keys() and any("lung volume" in name for name in values)
    for key, value in values.items():
        assert measured[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
