"""Which Orthanc the node runs: the version floor, the settings, and the installed sid Orthanc."""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from neuroradix.config import DeploySettings
from neuroradix.deploy.orthanc import OrthancSpec
from neuroradix.deploy.orthanc_dist import (
    PACKAGES,
    PLUGIN_FILES,
    VERSIONS_FILE,
    OrthancDist,
    OrthancDistSettings,
    OrthancSource,
    find_orthanc,
    read_dpkg_versions,
)
from neuroradix.errors import ConfigError
from neuroradix.pacs.orthanc_info import (
    OrthancInfo,
    OrthancTooOldError,
    check_version,
    parse_version,
    read_orthanc_info,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.10.1", (1, 10, 1)),
        ("1.12.11", (1, 12, 11)),
        ("1.13.0+dfsg-1+b1", (1, 13, 0)),
        ("1.12", (1, 12, 0)),
        ("mainline", (999, 0, 0)),
    ],
)
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_parse_version_refuses_garbage():
    with pytest.raises(ValueError, match="not an Orthanc version"):
        parse_version("unknown")


@pytest.mark.parametrize("version", ["1.10.1", "1.12.10", "1.9.7", "garbage"])
def test_an_old_orthanc_is_refused_naming_the_cves_and_the_override(version):
    with pytest.raises(OrthancTooOldError) as caught:
        check_version(version)
    message = str(caught.value)
    assert f"Orthanc {version} is older than 1.12.11" in message
    assert "CVE-2026-5437" in message and "CVE-2026-5445" in message
    assert "NEURORADIX_ALLOW_OLD_ORTHANC=1" in message
    assert isinstance(caught.value, ConfigError)


@pytest.mark.parametrize("version", ["1.12.11", "1.13.0", "2.0.0", "mainline"])
def test_a_current_orthanc_passes(version):
    check_version(version)


def test_the_override_runs_an_old_orthanc_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="neuroradix.pacs.orthanc_info"):
        check_version("1.10.1", allow_old=True)
    assert "NEURORADIX_ALLOW_OLD_ORTHANC" in caplog.text and "CVE-2026-5437" in caplog.text


def test_settings_from_the_environment(tmp_path, monkeypatch):
    for name in ("ORTHANC", "ORTHANC_ROOT", "ORTHANC_BINARY", "ALLOW_OLD_ORTHANC"):
        monkeypatch.delenv(f"NEURORADIX_{name}", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    default = OrthancDistSettings.from_settings(DeploySettings())
    assert default.mode is OrthancSource.SID and not default.allow_old and default.binary is None
    assert default.root == tmp_path / ".cache" / "neuroradix" / "orthanc-sid"
    monkeypatch.setenv("NEURORADIX_ORTHANC", "HOST")
    monkeypatch.setenv("NEURORADIX_ORTHANC_ROOT", str(tmp_path / "o"))
    monkeypatch.setenv("NEURORADIX_ORTHANC_BINARY", "/opt/Orthanc")
    monkeypatch.setenv("NEURORADIX_ALLOW_OLD_ORTHANC", "1")
    chosen = OrthancDistSettings.from_settings(DeploySettings())
    assert chosen.mode is OrthancSource.HOST
    assert (chosen.root, chosen.binary, chosen.allow_old) == (tmp_path / "o", "/opt/Orthanc", True)
    monkeypatch.setenv("NEURORADIX_ORTHANC", "docker")
    with pytest.raises(ConfigError, match="NEURORADIX_ORTHANC must be 'sid' or 'host'"):
        OrthancDistSettings.from_settings(DeploySettings())
    with pytest.raises(TypeError, match="mode must be an OrthancSource"):
        OrthancDistSettings(mode="host")  # type: ignore[arg-type]


def test_a_missing_install_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError) as caught:
        find_orthanc(OrthancDistSettings(root=tmp_path / "empty"))
    assert "make setup" in str(caught.value) and "NEURORADIX_ORTHANC=host" in str(caught.value)


def _fake_orthanc(tmp_path: Path, version: str) -> Path:
    binary = tmp_path / "Orthanc"
    binary.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "$0 {version}" && exit 0\nexit 3\n')
    binary.chmod(0o755)
    return binary


def test_the_hosts_orthanc_is_refused_when_old_and_kept_on_request(tmp_path):
    binary = _fake_orthanc(tmp_path, "1.10.1")
    with pytest.raises(OrthancTooOldError, match="NEURORADIX_ALLOW_OLD_ORTHANC"):
        find_orthanc(OrthancDistSettings(mode=OrthancSource.HOST, binary=str(binary)))
    dist = find_orthanc(OrthancDistSettings(mode=OrthancSource.HOST, binary=str(binary), allow_old=True))
    assert (dist.version, dist.source, dist.argv_prefix) == ("1.10.1", OrthancSource.HOST, (str(binary),))
    assert dist.plugin_paths()[0] == "/usr/share/orthanc/plugins/libOrthancPython.so"
    current = find_orthanc(OrthancDistSettings(mode=OrthancSource.HOST, binary=str(_fake_orthanc(tmp_path, "1.12.11"))))
    assert current.version == "1.12.11"


def test_a_host_mode_without_orthanc_says_so(tmp_path):
    with pytest.raises(ConfigError, match="no Orthanc is installed"):
        find_orthanc(OrthancDistSettings(mode=OrthancSource.HOST, binary=str(tmp_path / "nothing")))


def test_dpkg_status_is_read_without_a_chroot(tmp_path):
    status = tmp_path / "var" / "lib" / "dpkg" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: orthanc\nStatus: install ok installed\nVersion: 1.13.0+dfsg-1+b1\nDescription: x\n y\n\n"
        "Package: orthanc-python\nStatus: deinstall ok config-files\nVersion: 7.0\n\n"
        "Package: libc6\nStatus: install ok installed\nVersion: 2.41-1\n"
    )
    assert read_dpkg_versions(tmp_path) == {"orthanc": "1.13.0+dfsg-1+b1"}


def test_orthanc_info_reads_versions_of_orthanc_and_its_plugins():
    answers = {
        "/system": {"Version": "1.13.0", "HasLabels": True, "DatabaseBackendPlugin": None},
        "/plugins": ["explorer.js", "dicom-web", "python"],
        "/plugins/dicom-web": {"Version": "1.24"},
        "/plugins/python": {"Version": "7.1"},
    }
    info = read_orthanc_info(answers.__getitem__)
    assert info == OrthancInfo("1.13.0", True, None, {"dicom-web": "1.24", "python": "7.1"})
    assert info.is_current and info.summary() == "Orthanc 1.13.0 (dicom-web 1.24, python 7.1)"
    assert not OrthancInfo("1.10.1").is_current


# --- the installed Orthanc (make setup) ---------------------------------------------------------


def test_the_installed_orthanc_is_current_and_recorded(orthanc_dist: OrthancDist):
    assert parse_version(orthanc_dist.version) >= (1, 12, 11)
    answer = subprocess.run(
        orthanc_dist.command("--version"), capture_output=True, text=True, env=dict(orthanc_dist.env), timeout=60
    )
    assert answer.returncode == 0 and answer.stdout.split()[1] == orthanc_dist.version
    for plugin in orthanc_dist.plugin_paths(postgresql=True):
        assert Path(plugin).exists(), plugin
    if orthanc_dist.source is OrthancSource.SID:
        record = json.loads((Path(orthanc_dist.plugins_dir).parents[3] / VERSIONS_FILE).read_text())
        assert set(record["packages"]) == set(PACKAGES)
        assert record["packages"]["orthanc"].startswith(orthanc_dist.version)
        assert orthanc_dist.python_home is not None
        assert (orthanc_dist.python_home / "lib" / f"python{record['python']}" / "os.py").is_file()


def test_the_runtime_configuration_loads_the_dists_plugins_and_binds_loopback(tmp_path):
    dist = OrthancDist(argv_prefix=("/x/Orthanc",), env={}, version="1.13.0", plugins_dir=tmp_path / "plugins")
    spec = OrthancSpec(
        data_dir=tmp_path, http_port=18042, dicom_port=14242, user="u", password="p",
        sidecar_url="http://127.0.0.1:1", sidecar_token="t" * 32,
    )  # fmt: skip
    config = spec.runtime_config(dist)
    assert config["Plugins"] == [str(tmp_path / "plugins" / name) for name in PLUGIN_FILES.values()]
    assert config["HttpBindAddresses"] == ["127.0.0.1"] and config["RemoteAccessAllowed"] is False
    pg = {"host": "127.0.0.1", "port": 5432, "database": "d", "user": "u", "password": "p"}
    with_pg = replace(spec, postgresql=pg).runtime_config(dist)
    assert with_pg["Plugins"][-1] == str(tmp_path / "plugins" / "libOrthancPostgreSQLIndex.so")
