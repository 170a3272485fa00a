"""The no-silent-skip rule: under ``CI`` a skip is a failure; without it a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import real_ct_dir

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """
import pytest

from tests.support import require_tool, unavailable


def test_passes():
    assert True


def test_skips_with_a_reason():
    pytest.skip("the frobnicator is missing")  # under CI the hook must turn this into a failure


@pytest.mark.skipif(True, reason="marked skip at collection")  # under CI: an error, not a skip
def test_marked_skip():
    pass


def test_tool_is_missing():
    require_tool("no-such-tool-neuroradix")


def test_unavailable():
    unavailable("a file is missing")


@pytest.mark.xfail(reason="a known failure", strict=True)
def test_expected_failure():
    raise AssertionError
"""


def _run_sample(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "tests.conftest",
        "-p",
        "no:cacheprovider",
        "-rA",
        "--rootdir",
        str(tmp_path),
        "-c",
        os.devnull,
        str(tmp_path / "test_sample.py"),
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_under_ci_every_skip_fails_and_names_its_reason(tmp_path):
    run = _run_sample(tmp_path, ci=True)
    out = run.stdout
    assert run.returncode == 1, out
    # A skip in the call turns into "failed"; a skip mark (setup phase) into "error".
    assert "3 failed, 1 passed, 1 xfailed, 1 error" in out and " skipped" not in out.splitlines()[-1], out
    assert "the frobnicator is missing" in out and "marked skip at collection" in out, out
    assert "no-such-tool-neuroradix is not installed" in out and "a file is missing" in out, out
    assert out.count("skipped under CI") >= 2, out


@pytest.mark.slow
def test_without_ci_a_skip_stays_a_skip(tmp_path):
    run = _run_sample(tmp_path, ci=False)
    assert run.returncode == 0, run.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in run.stdout, run.stdout


def test_real_ct_dir_links_files_from_different_folders(tmp_path, monkeypatch):
    """Files from one folder come back as that folder; from several, as links in ``tmp_dir``."""
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, name in ((one, "a.nii.gz"), (one, "b.nii.gz"), (two, "c.nii.gz")):
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(name.encode())
    places = {"a.nii.gz": one, "b.nii.gz": one, "c.nii.gz": two}
    monkeypatch.setattr("tests.support.real_ct_path", lambda name: places[name] / name)
    assert real_ct_dir(["a.nii.gz", "b.nii.gz"], tmp_path / "unused") == one
    mixed = real_ct_dir(["a.nii.gz", "c.nii.gz"], tmp_path / "mixed")
    assert mixed == tmp_path / "mixed"
    assert sorted(p.name for p in mixed.iterdir()) == ["a.nii.gz", "c.nii.gz"]
    assert (mixed / "c.nii.gz").read_bytes() == b"c.nii.gz"
