"""docker-compose.yml, Dockerfile and orthanc.json agree with each other and with the local scripts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from neuroradix.config import Settings

REPO = Path(__file__).resolve().parents[2]


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_orthanc_json_is_safe_and_complete():
    config = json.loads((REPO / "orthanc.json").read_text())
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is False
    assert "RegisteredUsers" not in config  # credentials are generated per node, never committed
    assert config["PythonScript"].endswith("plugin/neuroradix_plugin.py")
    assert config["DicomWeb"]["Enable"] and ":" in config["DicomWeb"]["Host"]  # host:port keeps RetrieveURLs right
    assert config["Gdcm"]["Enable"] and isinstance(config["StableAge"], int)
    assert config["DicomAlwaysAllowStore"] and not config["DicomCheckCalledAet"]  # storescu from any AE title


def test_compose_mounts_what_orthanc_json_expects():
    compose = _compose()
    orthanc = compose["services"]["orthanc"]
    config = json.loads((REPO / "orthanc.json").read_text())
    mounts = {m.split(":")[1]: m.split(":")[0] for m in orthanc["volumes"]}
    plugin_dir = str(Path(config["PythonScript"]).parent)
    assert mounts[plugin_dir] == "./plugin" and mounts["/etc/orthanc/orthanc.json"] == "./orthanc.json"
    assert mounts[config["StorageDirectory"]] == "orthanc-db"
    assert any(p.endswith(f":{config['HttpPort']}") for p in orthanc["ports"])
    assert any(p.endswith(f":{config['DicomPort']}") for p in orthanc["ports"])
    env = orthanc["environment"]
    assert "REGISTERED_USERS" in "".join(env) and ":?" in env["ORTHANC__REGISTERED_USERS"]  # no default password
    assert env["NEURORADIX_SIDECAR_URL"].startswith("http://sidecar:")


def test_compose_sidecar_environment_matches_settings():
    compose = _compose()
    sidecar = compose["services"]["sidecar"]
    env = sidecar["environment"]
    fields = {f"NEURORADIX_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for secret in ("NEURORADIX_ORTHANC_PASSWORD", "NEURORADIX_SIDECAR_TOKEN"):
        assert re.search(r"\$\{\w+:\?", env[secret]), f"{secret} must have no default"
    assert env["NEURORADIX_ORTHANC_URL"] == "http://orthanc:8042"
    port = sidecar["command"][sidecar["command"].index("--port") + 1]
    assert compose["services"]["orthanc"]["environment"]["NEURORADIX_SIDECAR_URL"].endswith(f":{port}")
    devices = sidecar["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert sidecar["build"]["dockerfile"] == "Dockerfile" and (REPO / "Dockerfile").exists()


def test_dockerfile_pins_torch_and_runs_the_same_command():
    text = (REPO / "Dockerfile").read_text()
    assert 'TORCH_SPEC="torch==' in text  # never an unpinned (multi-GB CUDA) torch by accident
    assert "neuroradix" in text and '"serve"' in text
