"""The Orthanc plugin holds the plugin's sidecar token only (it may queue studies, nothing else)."""

from __future__ import annotations

import os
import stat

from neuroradix.config import Settings
from neuroradix.deploy import launcher
from neuroradix.deploy.orthanc import OrthancProcess


def test_make_up_generates_scoped_tokens_once_and_adds_them_to_an_old_secrets_file(tmp_path, monkeypatch):
    for key in launcher.DEFAULT_PORTS:
        monkeypatch.setenv(f"NEURORADIX_{key}", "0")
    old = {"ORTHANC_USER": "neuroradix", "ORTHANC_PASSWORD": "kept-password", "SIDECAR_TOKEN": "kept-token-0123456789"}
    launcher.write_env_file(tmp_path / "secrets.env", old, "older version")
    config = launcher.load_or_create_config(tmp_path)
    stored = launcher.read_env_file(tmp_path / "secrets.env")
    assert {k: stored[k] for k in old} == old
    tokens = {stored["SIDECAR_TOKEN"], stored["SIDECAR_PLUGIN_TOKEN"], stored["SIDECAR_READER_TOKEN"]}
    assert len(tokens) == 3 and all(len(t) >= 16 for t in tokens)
    assert (config.sidecar_plugin_token, config.sidecar_reader_token) == (
        stored["SIDECAR_PLUGIN_TOKEN"],
        stored["SIDECAR_READER_TOKEN"],
    )
    assert launcher.load_or_create_config(tmp_path) == config  # kept, not regenerated
    assert stat.S_IMODE(os.stat(tmp_path / "secrets.env").st_mode) == 0o600

    node_env = config.node_env()
    assert node_env["SIDECAR_TOKEN"] == old["SIDECAR_TOKEN"]  # scripts keep the admin token
    assert node_env["SIDECAR_READER_TOKEN"] == config.sidecar_reader_token
    assert config.sidecar_plugin_token not in node_env.values()

    env = launcher.sidecar_environment(config)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    monkeypatch.setenv("NEURORADIX_VAR_DIR", str(tmp_path))
    for key, value in env.items():
        if key.startswith("NEURORADIX_"):
            monkeypatch.setenv(key, value)
    settings = Settings()  # what the sidecar reads from that environment
    assert settings.sidecar_token.get_secret_value() == old["SIDECAR_TOKEN"]
    assert settings.sidecar_plugin_token.get_secret_value() == config.sidecar_plugin_token
    assert settings.sidecar_reader_token.get_secret_value() == config.sidecar_reader_token


def test_orthanc_gets_the_plugin_token_and_no_other(tmp_path, monkeypatch):
    captured = {}

    class Recorder:
        def __init__(self, command, **kwargs):
            captured["env"] = kwargs["env"]
            self.pid = 1

        def poll(self):
            return None

    monkeypatch.setattr(launcher.subprocess, "Popen", Recorder)  # the same module object orthanc.py uses
    monkeypatch.setattr(OrthancProcess, "wait_ready", lambda self, timeout: None)
    monkeypatch.setenv("NEURORADIX_SIDECAR_TOKEN", "admin-token-of-the-caller")  # e.g. a sourced env
    monkeypatch.setenv("SIDECAR_READER_TOKEN", "reader-token-of-the-caller")
    config = launcher.NodeConfig(
        var_dir=tmp_path,
        orthanc_port=18042,
        dicom_port=14242,
        sidecar_port=18000,
        orthanc_user="people",
        orthanc_password="people-pw",
        sidecar_token="a" * 32,
        sidecar_plugin_token="p" * 32,
        sidecar_reader_token="r" * 32,
    )
    OrthancProcess(config.orthanc_spec()).start()
    env = captured["env"]
    tokens = {k: v for k, v in env.items() if "TOKEN" in k}
    assert tokens == {"NEURORADIX_SIDECAR_PLUGIN_TOKEN": "p" * 32}
    assert "a" * 32 not in env.values() and "r" * 32 not in env.values()
