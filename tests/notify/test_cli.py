"""``neuroradix destinations add|list|remove`` through its parser, on a real var folder."""

from __future__ import annotations

import argparse
import json
import stat

from neuroradix.notify.cli import add_parser


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="neuroradix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_add_list_remove(tmp_path, capsys):
    var = str(tmp_path / "var")
    secret = tmp_path / "hook.secret"
    secret.write_text("k3y\n")
    secret.chmod(0o600)
    assert _run("destinations", "add", "ris", "--kind", "hl7v2", "--url", "mllp://127.0.0.1:2575", "--var", var) == 0
    assert (
        _run(
            "destinations",
            "--var",
            var,
            "add",
            "hook",
            "--kind",
            "webhook",
            "--url",
            "http://127.0.0.1:9000/h",
            "--min-level",
            "urgent",
            "--secret-file",
            str(secret),
        )  # fmt: skip
        == 0
    )
    path = tmp_path / "var" / "destinations.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    capsys.readouterr()
    assert _run("destinations", "list", "--var", var) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        "ris\thl7v2\tmllp://127.0.0.1:2575\troutine\t-",
        f"hook\twebhook\thttp://127.0.0.1:9000/h\turgent\t{secret}",
    ]
    assert _run("destinations", "remove", "ris", "--var", var) == 0
    assert [d["name"] for d in json.loads(path.read_text())["destinations"]] == ["hook"]
    assert _run("destinations", "remove", "ris", "--var", var) == 1
    assert "no destination called 'ris'" in capsys.readouterr().err


def test_invalid_input_exits_2(tmp_path, capsys):
    var = str(tmp_path / "var")
    assert _run("destinations", "add", "ris", "--kind", "hl7v2", "--url", "http://x", "--var", var) == 2
    assert "mllp://host:port" in capsys.readouterr().err
    assert _run("destinations", "add", "hook", "--kind", "webhook", "--url", "http://127.0.0.1/h", "--var", var) == 2
    assert "secret_file is required" in capsys.readouterr().err
    loose = tmp_path / "loose.secret"
    loose.write_text("k")
    loose.chmod(0o644)
    argv = ["destinations", "add", "hook", "--kind", "webhook", "--url", "http://127.0.0.1/h", "--var", var]
    assert _run(*argv, "--secret-file", str(loose)) == 2
    assert "readable or writable by others" in capsys.readouterr().err
    assert not (tmp_path / "var" / "destinations.json").exists()


def test_relative_secret_file_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s").write_text("k")
    (tmp_path / "s").chmod(0o600)
    assert (
        _run("destinations", "add", "fhir", "--kind", "fhir", "--url", "https://fhir.example/r4", "--secret-file", "s")
        == 0
    )
    data = json.loads((tmp_path / "var" / "destinations.json").read_text())
    assert data["destinations"][0]["secret_file"] == str(tmp_path / "s")
