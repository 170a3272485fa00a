"""docker-compose.yml, Dockerfile and orthanc.json agree with each other and with the local scripts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

from neuroradix.config import Settings
from neuroradix.deploy.orthanc import packaged_file

REPO = Path(__file__).resolve().parents[2]
ORTHANC_JSON = REPO / "orthanc.json"
PLUGIN_FILES = ("__init__.py", "glue.py", "handoff.py", "policy.py")


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_orthanc_json_is_safe_and_complete():
    config = json.loads(ORTHANC_JSON.read_text())
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is False
    assert "RegisteredUsers" not in config  # credentials are generated per node, never committed
    assert config["PythonScript"].endswith("plugin/glue.py")
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
    assert mounts[plugin_dir] == "./plugin"
    assert mounts["/etc/orthanc/orthanc.json"] == "./orthanc.json"
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


def test_plugin_and_orthanc_json_sit_at_the_top_and_the_package_finds_the_same_files():
    """One copy in git: the installed package's files are the repository's (editable install)."""
    assert ORTHANC_JSON.is_file() and not ORTHANC_JSON.is_symlink()
    assert packaged_file("orthanc.json").resolve() == ORTHANC_JSON
    for name in PLUGIN_FILES:
        assert packaged_file(name).resolve() == REPO / "plugin" / name
    assert not (REPO / "inference" / "neuroradix" / "node").exists()


def test_dockerfile_copies_what_the_build_packages():
    text = (REPO / "Dockerfile").read_text()
    for path in ("setup.py", "orthanc.json", "plugin"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, re.MULTILINE), path


@pytest.mark.slow
def test_the_wheel_carries_the_plugin_and_orthanc_json(tmp_path):
    """`pip wheel .` from what the Dockerfile copies: the plugin and orthanc.json are package data of neuroradix_plugin."""
    source = tmp_path / "src"  # a copy, so the build leaves no build/ folder in the repository
    source.mkdir()
    copied = re.findall(r"^COPY (.+) \S+$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    for name in " ".join(copied).split():
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = tmp_path.glob("neuroradix-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert archive.read("neuroradix_plugin/orthanc.json") == ORTHANC_JSON.read_bytes()
        for name in PLUGIN_FILES:
            assert archive.read(f"neuroradix_plugin/{name}") == (REPO / "plugin" / name).read_bytes()
    assert "neuroradix/deploy/launcher.py" in names and "neuroradix/runtime/supervisor.py" in names
    assert not any(n.startswith(("neuroradix/node/", "plugin/")) or n == "orthanc.json" for n in names)


def test_orthanc_loads_the_glue_as_a_top_level_script(tmp_path):
    """Orthanc imports ``PythonScript`` as a top-level module with its folder first on sys.path."""
    (tmp_path / "orthanc.py").write_text(
        textwrap.dedent(
            """
            REGISTERED = []
            class _Anything:  # enums (HttpMethod.GET ...) and functions alike
                def __call__(self, *args, **kwargs):
                    return None
                def __getattr__(self, name):
                    return name
            def GetConfiguration():
                return "{}"
            def __getattr__(name):
                return REGISTERED.append if name.startswith("Register") else _Anything()
            """
        )
    )
    script = packaged_file("glue.py")
    code = (
        "import runpy, sys; "
        f"sys.path[:0] = [{str(script.parent)!r}, {str(tmp_path)!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='glue'); "
        "import orthanc, policy, handoff; print(len(orthanc.REGISTERED))"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 1  # the glue registered its callbacks, importing policy and handoff beside it
