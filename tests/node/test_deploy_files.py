"""docker-compose.yml, Dockerfile and orthanc.json agree with each other and with the local scripts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from neuroradix.config import Settings
from neuroradix.node.orthanc import packaged_file

REPO = Path(__file__).resolve().parents[2]
ORTHANC_JSON = packaged_file("orthanc.json")
FILES_IN_REPO = "./" + str(ORTHANC_JSON.parent.relative_to(REPO))


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_orthanc_json_is_safe_and_complete():
    config = json.loads(ORTHANC_JSON.read_text())
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is False
    assert "RegisteredUsers" not in config  # credentials are generated per node, never committed
    assert config["PythonScript"].endswith("plugin/neuroradix_plugin.py")
    assert config["DicomWeb"]["Enable"] and ":" in config["DicomWeb"]["Host"]  # host:port keeps RetrieveURLs right
    assert config["Gdcm"]["Enable"] and isinstance(config["StableAge"], int)
    # Known senders only (AE title and host), nothing stored can be overwritten, finds are bounded.
    assert config["DicomAlwaysAllowStore"] is False and config["DicomAlwaysAllowEcho"] is False
    assert config["DicomCheckModalityHost"] is True and config["DicomModalities"] == {}
    assert config["OverwriteInstances"] is False
    assert config["LimitFindResults"] > 0 and config["LimitFindInstances"] > 0
    section = config["NeuroRadix"]
    assert section["SidecarUser"] != section["ViewerUser"] and section["OwnManufacturer"] == "Neuro Radix"


def test_compose_mounts_what_orthanc_json_expects():
    compose = _compose()
    orthanc = compose["services"]["orthanc"]
    config = json.loads(ORTHANC_JSON.read_text())
    mounts = {m.split(":")[1]: m.split(":")[0] for m in orthanc["volumes"]}
    plugin_dir = str(Path(config["PythonScript"]).parent)
    assert mounts[plugin_dir] == FILES_IN_REPO + "/plugin"
    assert mounts["/etc/orthanc/orthanc.json"] == FILES_IN_REPO + "/orthanc.json"
    assert (REPO / mounts[plugin_dir] / Path(config["PythonScript"]).name).is_file()
    assert mounts[config["StorageDirectory"]] == "orthanc-db"
    assert any(p.endswith(f":{config['HttpPort']}") for p in orthanc["ports"])
    assert any(p.endswith(f":{config['DicomPort']}") for p in orthanc["ports"])
    env = orthanc["environment"]
    assert "REGISTERED_USERS" in "".join(env) and ":?" in env["ORTHANC__REGISTERED_USERS"]  # no default password
    users = env["ORTHANC__REGISTERED_USERS"]
    for account in (config["NeuroRadix"]["SidecarUser"], config["NeuroRadix"]["ViewerUser"]):
        assert f'"{account}": "${{' in users and users.count(":?") == 3
    assert ":?" in env["ORTHANC__DICOM_MODALITIES"]  # the operator names the senders
    assert env["NEURORADIX_SIDECAR_URL"].startswith("http://sidecar:")


def test_compose_sidecar_environment_matches_settings():
    compose = _compose()
    sidecar = compose["services"]["sidecar"]
    env = sidecar["environment"]
    fields = {f"NEURORADIX_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for secret in ("NEURORADIX_ORTHANC_PASSWORD", "NEURORADIX_SIDECAR_TOKEN"):
        assert re.search(r"\$\{\w+:\?", env[secret]), f"{secret} must have no default"
    # The sidecar logs in with its own account, not the people (admin) one.
    config = json.loads(ORTHANC_JSON.read_text())
    assert env["NEURORADIX_ORTHANC_USER"] == config["NeuroRadix"]["SidecarUser"]
    assert "ORTHANC_SIDECAR_PASSWORD" in env["NEURORADIX_ORTHANC_PASSWORD"]
    assert env["NEURORADIX_ORTHANC_URL"] == "http://orthanc:8042"
    port = sidecar["command"][sidecar["command"].index("--port") + 1]
    assert compose["services"]["orthanc"]["environment"]["NEURORADIX_SIDECAR_URL"].endswith(f":{port}")
    # The sidecar runs the API and the reconciler; the analyses run in the GPU `worker` replicas.
    assert "deploy" not in sidecar and env["NEURORADIX_WORKERS"].endswith(":-0}")
    worker = compose["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert worker["command"][:2] == ["neuroradix", "worker"]
    assert sidecar["build"]["dockerfile"] == "Dockerfile" and (REPO / "Dockerfile").exists()


def test_dockerfile_pins_torch_and_runs_the_same_command():
    text = (REPO / "Dockerfile").read_text()
    assert 'TORCH_SPEC="torch==' in text  # never an unpinned (multi-GB CUDA) torch by accident
    assert "neuroradix" in text and '"serve"' in text


def test_compose_publishes_ports_on_a_configurable_interface_loopback_by_default():
    compose = _compose()
    for service in ("orthanc", "sidecar"):
        for port in compose["services"][service]["ports"]:
            assert port.startswith("${NEURORADIX_BIND:-127.0.0.1}:"), port


def test_compose_names_an_orthanc_with_the_parsing_fixes():
    image = _compose()["services"]["orthanc"]["image"]
    assert image.startswith("${ORTHANC_IMAGE:-orthancteam/orthanc:")
    text = (REPO / "docker-compose.yml").read_text()
    assert "1.12.11" in text and "docs/security.md" in text
    assert "1.12.11" in (REPO / "docs" / "security.md").read_text()
