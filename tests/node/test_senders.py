"""Known senders: validation, the file, the CLI, and what the launcher gives Orthanc."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest

from neuroradix.deploy.senders import (
    LOCAL_SENDER_AET,
    Sender,
    add_sender,
    ensure_local_sender,
    load_senders,
    orthanc_modalities,
    register,
    remove_sender,
    senders_path,
)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="neuroradix")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.mark.parametrize("aet", ["", "A" * 17, "HAS SPACE", "BACK\\SLASH", "quote'"])
def test_bad_ae_titles_are_refused(aet):
    with pytest.raises(ValueError, match="aet"):
        Sender("ct1", aet, "10.0.0.5")


@pytest.mark.parametrize("host", ["", "10.0.0.300", "a host", "-bad", "1.2.3"])
def test_bad_hosts_are_refused(host):
    with pytest.raises(ValueError, match="host"):
        Sender("ct1", "CT1", host)


def test_add_remove_and_file_mode(tmp_path):
    path = senders_path(tmp_path)
    assert load_senders(path) == []
    add_sender(path, Sender("ct1", "CT1", "10.0.0.5"))
    add_sender(path, Sender("ct1", "CT1", "10.0.0.6"))  # same name: replaced
    add_sender(path, Sender("mr", "MR_2", "pacs.example.org"))
    assert [(s.name, s.host) for s in load_senders(path)] == [("ct1", "10.0.0.6"), ("mr", "pacs.example.org")]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    remove_sender(path, "ct1")
    assert [s.name for s in load_senders(path)] == ["mr"]
    with pytest.raises(KeyError):
        remove_sender(path, "ct1")


def test_a_broken_file_names_itself(tmp_path):
    path = senders_path(tmp_path)
    path.write_text(json.dumps({"senders": [{"name": "x", "aet": "TOO LONG FOR AN AE", "host": "1.2.3.4"}]}))
    with pytest.raises(ValueError, match="senders.json"):
        load_senders(path)
    path.write_text(json.dumps({"senders": [{"name": "a", "aet": "A", "host": "1.2.3.4"}] * 2}))
    with pytest.raises(ValueError, match="unique"):
        load_senders(path)


def test_local_sender_is_registered_once(tmp_path):
    path = senders_path(tmp_path)
    first = ensure_local_sender(path)
    assert (first.aet, first.host) == (LOCAL_SENDER_AET, "127.0.0.1")
    assert ensure_local_sender(path) == first and len(load_senders(path)) == 1


def test_orthanc_modalities_allow_store_and_echo_only():
    modality = orthanc_modalities([Sender("ct1", "CT1", "10.0.0.5")])["ct1"]
    assert (modality["AET"], modality["Host"]) == ("CT1", "10.0.0.5")
    assert modality["AllowStore"] and modality["AllowEcho"]
    assert not any(modality[k] for k in ("AllowFind", "AllowMove", "AllowGet", "AllowStorageCommitment"))


def test_cli_list_add_remove(tmp_path, capsys):
    var = str(tmp_path)
    assert _cli("senders", "--var", var, "add", "CT_SCANNER_1", "10.0.4.21", "--name", "ct1") == 0
    assert "next start" in capsys.readouterr().out  # no node.env: not running
    assert _cli("senders", "--var", var, "list") == 0
    assert capsys.readouterr().out.strip() == "ct1\tCT_SCANNER_1\t10.0.4.21"
    assert _cli("senders", "--var", var, "add", "BAD AET", "10.0.4.21") == 2
    assert "aet" in capsys.readouterr().err
    assert _cli("senders", "--var", var, "remove", "nope") == 1
    assert _cli("senders", "--var", var, "remove", "ct1") == 0
    assert load_senders(senders_path(tmp_path)) == []
