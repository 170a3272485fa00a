"""``neuroradix triage check|set``: through ``run`` on parsed arguments and as ``python -m``."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys

import pytest

from neuroradix.triage.cli import POLICY_FILENAME, add_parser, install_policy, run
from neuroradix.triage.policy import PolicyError, PolicyStore, load_policy
from tests.triage.policies import HEAD, ISSUE_EXAMPLE

BROKEN = HEAD + "  - name: x\n    level: urgent\n    finding: Emphysema\n    probability_at_least: 1.5\n"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="neuroradix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_check_ok(tmp_path, capsys):
    path = tmp_path / "site.yaml"
    path.write_text(ISSUE_EXAMPLE)
    args = parse("triage", "check", str(path))
    assert args.func is run
    assert run(args) == 0
    sha = load_policy(path).sha256
    assert capsys.readouterr().out == f"ok: version site-2026-12-01, sha256 {sha}, 2 rules, mode active\n"


def test_check_invalid_exits_2_with_file_line_reason(tmp_path, capsys):
    path = tmp_path / "site.yaml"
    path.write_text(BROKEN)
    assert run(parse("triage", "check", str(path))) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"{path}:9: rule 'x': probability_at_least must lie in 0..1, got 1.5\n"


def test_set_installs_atomically_0600_and_a_store_picks_it_up(tmp_path, capsys):
    var = tmp_path / "var"
    store = PolicyStore(var / POLICY_FILENAME)  # no file yet: the shipped default
    default_version = store.current().version
    source = tmp_path / "site.yaml"
    source.write_text(ISSUE_EXAMPLE)
    assert run(parse("triage", "set", str(source), "--var", str(var))) == 0
    target = var / POLICY_FILENAME
    assert capsys.readouterr().out.startswith(f"installed triage policy site-2026-12-01 to {target} ")
    assert target.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in var.iterdir()] == [POLICY_FILENAME]  # no temporary file left behind
    policy = store.current()
    assert policy.version == "site-2026-12-01" != default_version
    assert policy.sha256 == load_policy(source).sha256


def test_set_refuses_an_invalid_policy_and_keeps_the_installed_one(tmp_path, capsys):
    var = tmp_path / "var"
    good = tmp_path / "good.yaml"
    good.write_text(ISSUE_EXAMPLE)
    install_policy(good, var)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    assert run(parse("triage", "set", str(bad), "--var", str(var))) == 2
    assert f"{bad}:9:" in capsys.readouterr().err
    assert (var / POLICY_FILENAME).read_text() == ISSUE_EXAMPLE
    with pytest.raises(PolicyError):
        install_policy(bad, var)


def test_set_default_var_is_var(tmp_path):
    assert str(parse("triage", "set", "x.yaml").var) == "var"


@pytest.mark.parametrize(("text", "code"), [(ISSUE_EXAMPLE, 0), (BROKEN, 2)])
def test_python_dash_m(tmp_path, text, code):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "neuroradix.triage.cli", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith("ok: version site-2026-12-01") if code == 0 else f"{path}:9:" in done.stderr
