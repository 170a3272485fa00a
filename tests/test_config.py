"""Settings from one place: a worker needs no API token, an env file yields to the environment, empty means default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from neuroradix.config import (
    DeploySettings,
    LogFormat,
    LoggingSettings,
    Settings,
    ToolSettings,
    WorkerSettings,
    load_worker_settings,
)
from neuroradix.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "inference" / "neuroradix"
NODE = {
    "NEURORADIX_ORTHANC_URL": "http://127.0.0.1:8042",
    "NEURORADIX_ORTHANC_USER": "u",
    "NEURORADIX_ORTHANC_PASSWORD": "p",
}


@pytest.fixture
def node_env(monkeypatch):
    for key in ("SIDECAR_TOKEN", "NEURORADIX_SIDECAR_TOKEN", "NEURORADIX_DEVICE", "NEURORADIX_ANALYZERS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in NODE.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_a_worker_needs_no_api_token_and_the_sidecar_does(node_env):
    worker = WorkerSettings()
    assert worker.orthanc_user == "u" and not hasattr(worker, "sidecar_token")
    with pytest.raises(ValidationError, match="sidecar_token|SIDECAR_TOKEN"):
        Settings()
    node_env.setenv("NEURORADIX_SIDECAR_TOKEN", "t" * 16)
    assert isinstance(Settings(), WorkerSettings)


def test_worker_env_file_yields_to_the_environment_and_options_win_over_both(node_env, tmp_path):
    env_file = tmp_path / "worker.env"
    env_file.write_text(
        "NEURORADIX_ORTHANC_USER='from-file'\nNEURORADIX_ANALYZERS='lung-hu'\nNEURORADIX_DEVICE='cuda:3'\n"
    )
    node_env.delenv("NEURORADIX_ORTHANC_USER")
    settings = load_worker_settings(env_file)
    assert settings.orthanc_user == "from-file" and settings.device == "cuda:3"
    node_env.setenv("NEURORADIX_ORTHANC_USER", "from-environment")
    assert load_worker_settings(env_file, device="cpu").orthanc_user == "from-environment"
    assert load_worker_settings(env_file, device="cpu").device == "cpu"
    with pytest.raises(ConfigError, match="no such env file"):
        load_worker_settings(tmp_path / "absent.env")


def test_deploy_and_tool_settings_read_their_variables_and_empty_means_default(monkeypatch):
    monkeypatch.setenv("NEURORADIX_STABLE_AGE", "9")
    monkeypatch.setenv("NEURORADIX_ORTHANC_VERBOSE", "")
    monkeypatch.setenv("NEURORADIX_DICOM_PORT", "11112")
    monkeypatch.setenv("NEURORADIX_VIEWER_PORT", "3333")
    settings = DeploySettings()
    assert (settings.stable_age, settings.orthanc_verbose, settings.dicom_port) == (9, False, 11112)
    assert ToolSettings().viewer_port == 3333
    monkeypatch.setenv("NEURORADIX_STABLE_AGE", "0")
    with pytest.raises(ValidationError):
        DeploySettings()


@pytest.mark.parametrize(
    ("value", "expected"), [("json", LogFormat.JSON), (" JSON ", LogFormat.JSON), ("", LogFormat.TEXT)]
)
def test_log_format(monkeypatch, value, expected):
    monkeypatch.setenv("NEURORADIX_LOG_FORMAT", value)
    assert LoggingSettings().log_format is expected


def _environ_writes(tree: ast.AST) -> list[ast.AST]:
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                found.append(node)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "os.environ.update",
            "os.environ.setdefault",
            "os.putenv",
        ):
            found.append(node)
    return found


def test_settings_are_read_in_config_only_and_environment_writes_say_why():
    """No module but config.py reads a NEURORADIX_* variable; a write to os.environ has a comment above it."""
    readers, silent = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
                if (
                    node.args
                    and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith("NEURORADIX_")
                ):
                    readers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                key = node.slice
                if isinstance(key, ast.Constant) and str(key.value).startswith("NEURORADIX_"):
                    readers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
        for node in _environ_writes(tree):
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if not above.startswith("#") and "#" not in lines[node.lineno - 1]:
                silent.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not readers, f"NEURORADIX_* read outside config.py: {readers}"
    assert not silent, f"writes to os.environ without a comment saying why: {silent}"
