"""What the launcher gives Orthanc and the sidecar: accounts, senders, keys, private files, no --verbose."""

from __future__ import annotations

import json
import os
import stat

from neuroradix.deploy import launcher
from neuroradix.deploy.orthanc import SIDECAR_ACCOUNT, VIEWER_ACCOUNT, OrthancProcess, packaged_file
from neuroradix.deploy.senders import Sender, add_sender, senders_path


def test_secrets_are_generated_once_and_an_old_file_gets_what_it_lacks(tmp_path, monkeypatch):
    for key in launcher.DEFAULT_PORTS:
        monkeypatch.setenv(f"NEURORADIX_{key}", "0")
    old = {
        "ORTHANC_USER": "neuroradix",
        "ORTHANC_PASSWORD": "kept-password",
        "SIDECAR_TOKEN": "kept-token-0123456789",
        "ORTHANC_HTTP_PORT": "18042",
        "DICOM_PORT": "14242",
        "SIDECAR_PORT": "18000",
    }
    launcher.write_env_file(tmp_path / "secrets.env", old, "older version")
    config = launcher.load_or_create_config(tmp_path)
    stored = launcher.read_env_file(tmp_path / "secrets.env")
    assert {k: stored[k] for k in old} == old
    assert len(stored["UID_KEY"]) == 64 and stored["ORTHANC_SIDECAR_PASSWORD"] != stored["ORTHANC_VIEWER_PASSWORD"]
    assert (config.uid_key, config.sidecar_orthanc_password) == (stored["UID_KEY"], stored["ORTHANC_SIDECAR_PASSWORD"])
    assert launcher.load_or_create_config(tmp_path) == config  # nothing regenerated
    assert stat.S_IMODE(os.stat(tmp_path / "secrets.env").st_mode) == 0o600


def _config(tmp_path, **kwargs) -> launcher.NodeConfig:
    return launcher.NodeConfig(
        var_dir=tmp_path,
        orthanc_port=18042,
        dicom_port=14242,
        sidecar_port=18000,
        orthanc_user="people",
        orthanc_password="people-pw",
        sidecar_token="t" * 32,
        sidecar_orthanc_password="sidecar-pw",
        viewer_orthanc_password="viewer-pw",
        uid_key="k" * 64,
        senders=(Sender("local", "NRX_LOCAL", "127.0.0.1"),),
        calling_aet="NRX_LOCAL",
        **kwargs,
    )


def test_runtime_config_has_three_accounts_known_senders_and_the_packaged_plugin(tmp_path):
    runtime = _config(tmp_path).orthanc_spec().runtime_config()
    assert runtime["RegisteredUsers"] == {
        "people": "people-pw",
        SIDECAR_ACCOUNT: "sidecar-pw",
        VIEWER_ACCOUNT: "viewer-pw",
    }
    assert (
        runtime["NeuroRadix"]["SidecarUser"] == SIDECAR_ACCOUNT
        and runtime["NeuroRadix"]["ViewerUser"] == VIEWER_ACCOUNT
    )
    assert runtime["DicomModalities"]["local"]["AET"] == "NRX_LOCAL"
    assert runtime["DicomAlwaysAllowStore"] is False and runtime["OverwriteInstances"] is False
    assert runtime["PythonScript"] == str(packaged_file("glue.py"))
    assert "sidecar-pw" not in json.dumps(runtime["NeuroRadix"])


def test_sidecar_uses_its_own_account_and_the_uid_key(tmp_path):
    config = _config(tmp_path)
    env = launcher.sidecar_environment(config)
    assert (env["NEURORADIX_ORTHANC_USER"], env["NEURORADIX_ORTHANC_PASSWORD"]) == (SIDECAR_ACCOUNT, "sidecar-pw")
    assert env["NEURORADIX_UID_KEY"] == "k" * 64
    node_env = config.node_env()
    assert node_env["ORTHANC_USER"] == "people" and node_env["DICOM_CALLING_AET"] == "NRX_LOCAL"
    assert node_env["VIEWER_ORTHANC_USER"] == VIEWER_ACCOUNT and "UID_KEY" not in node_env


def test_orthanc_is_not_verbose_unless_asked(tmp_path, monkeypatch):
    captured = {}

    class Recorder:
        def __init__(self, command, **kwargs):
            captured["command"], captured["umask"] = command, kwargs.get("umask")
            self.pid = 1

        def poll(self):
            return None

    monkeypatch.setattr(launcher.subprocess, "Popen", Recorder)  # the same module object orthanc.py uses
    monkeypatch.setattr(OrthancProcess, "wait_ready", lambda self, timeout: None)
    OrthancProcess(_config(tmp_path / "a").orthanc_spec()).start()
    assert "--verbose" not in captured["command"] and captured["umask"] == 0o077
    OrthancProcess(_config(tmp_path / "b", orthanc_verbose=True).orthanc_spec()).start()
    assert "--verbose" in captured["command"]
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "orthanc").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "orthanc" / "orthanc.log").st_mode) == 0o600


def test_verbose_setting_is_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORADIX_ORTHANC_VERBOSE", "1")
    assert launcher.load_or_create_config(tmp_path).orthanc_verbose is True
    monkeypatch.delenv("NEURORADIX_ORTHANC_VERBOSE")
    assert launcher.load_or_create_config(tmp_path).orthanc_verbose is False


def test_tighten_permissions_fixes_an_old_var(tmp_path):
    var = tmp_path / "var"
    (var / "orthanc" / "db").mkdir(parents=True, mode=0o755)
    os.chmod(var, 0o755)
    (var / "orthanc" / "orthanc.log").write_text("x")
    os.chmod(var / "orthanc" / "orthanc.log", 0o644)
    add_sender(senders_path(var), Sender("ct1", "CT1", "10.0.0.5"))
    launcher.tighten_permissions(var)
    for folder, _dirs, files in os.walk(var):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600


def test_keyed_output_uids_are_stable_per_key_and_valid(monkeypatch):
    from neuroradix.config import PipelineSettings
    from neuroradix.uids import derive_uid, valid_uid

    parts = ("1.2.3", "1.2.3.4", "neuroradix-0.1.0/lung-hu", "lung-hu", "SR", "instance")
    keyed = derive_uid(*parts, key="k" * 64)
    assert keyed == derive_uid(*parts, key="k" * 64)  # reruns: the same UID
    assert keyed not in {derive_uid(*parts), derive_uid(*parts, key="other")}
    assert valid_uid(keyed) == keyed and keyed.startswith("2.25.")
    monkeypatch.setenv("NEURORADIX_UID_KEY", "from-the-launcher")  # what the launcher gives the workers
    assert PipelineSettings().uid_key.get_secret_value() == "from-the-launcher"
