"""Fixtures of the published-model tests."""

from __future__ import annotations

import pytest

from tests.support import require_module


@pytest.fixture(scope="session")
def colipri_snapshot(tmp_path_factory):
    """A COLIPRI test snapshot (the published layout, random weights) with a 32-voxel input cube.

    The Primus backbone has rotary positions only (no absolute embedding), so the weights' keys and
    shapes do not depend on the input size; a 32^3 input (4^3 patches) keeps the forward pass short.
    """
    from neuroradix.models.published.colipri import COLIPRI, import_reference

    try:
        import_reference()
    except ImportError:
        pass  # require_module says which one is missing
    require_module("colipri")
    require_module("torchio")

    out = tmp_path_factory.mktemp("colipri") / "download"
    COLIPRI.make_test_snapshot(out, seed=0, input_size=32)
    return out


@pytest.fixture(scope="session")
def colipri_release(colipri_snapshot, tmp_path_factory):
    """The release imported from :func:`colipri_snapshot` (UNTRAINED-marked)."""
    from neuroradix.models.published.colipri import COLIPRI

    out = tmp_path_factory.mktemp("colipri-release") / "release"
    COLIPRI.import_release(colipri_snapshot, out)
    return out
