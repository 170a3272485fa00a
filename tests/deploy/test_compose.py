"""The Docker shape a user follows: the ``.env`` recipe in docker-compose.yml's header, run as
written, gives a file that interpolates and validates against the Compose Specification.

Interpolation follows the Compose Specification (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``$$``); the interpolated file is checked with
the specification's JSON schema (as shipped by ``check-jsonschema``) and parsed by ``compose-spec``
(the ``compose_spec`` parser: image references, device reservations). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dotenv import dotenv_values

from neuroradix.pacs.orthanc_info import parse_version
from tests.support import require_module, require_tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)
# The Orthanc image names Orthanc's version: orthancteam/orthanc YY.M.N -> the Orthanc it ships.
ORTHANC_IN_IMAGE = {"26.4.1": "1.12.11"}


class InterpolationError(ValueError):
    """A required variable is missing (``${VAR:?message}``), or a reference is malformed."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """One string, interpolated the way ``docker compose`` does."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("bare"):
            return env.get(match.group("bare"), "")
        parsed = _BRACED.match(match.group("braced"))
        if parsed is None:
            raise InterpolationError(f"invalid interpolation format: {match.group(0)!r}")
        name, op, arg = parsed.group("name"), parsed.group("op"), parsed.group("arg") or ""
        present, nonempty = name in env, bool(env.get(name))
        if op in (":?", "?") and not (nonempty if op == ":?" else present):
            raise InterpolationError(f"required variable {name} is missing a value: {arg}")
        if op == ":-":
            return env[name] if nonempty else arg
        if op == "-":
            return env[name] if present else arg
        if op in (":+", "+"):
            return arg if (nonempty if op == ":+" else present) else ""
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


# After interpolation Compose casts typed fields back from strings (compose-go's TypeCastMapping);
# these are the typed fields this file interpolates.
INT_FIELDS = {("services", "*", "deploy", "replicas")}


def interpolate_tree(node: Any, env: dict[str, str], path: tuple[str, ...] = ()) -> Any:
    """Every string value of the parsed YAML, interpolated (keys stay as written, as in Compose)."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env, (*path, str(key))) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env, path) for value in node]
    if isinstance(node, str):
        value = interpolate(node, env)
        typed = any(len(f) == len(path) and all(a in ("*", b) for a, b in zip(f, path)) for f in INT_FIELDS)
        return int(value) if typed else value
    return node


def header_recipe(text: str) -> str:
    """The shell lines of the header comment (indented three spaces after ``#``)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            lines.append(line[4:])
    return "\n".join(lines) + "\n"


def run_recipe(recipe: str, folder: Path) -> dict[str, str]:
    require_tool("openssl")
    subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=folder, check=True, timeout=60)
    env_file = folder / ".env"
    assert env_file.stat().st_mode & 0o077 == 0, "the .env holds secrets: owner-only"
    return {key: value or "" for key, value in dotenv_values(env_file).items()}


def compose_schema() -> dict:
    require_module("check_jsonschema")
    schema = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(schema.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def interpolated(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("compose")
    env = run_recipe(header_recipe(COMPOSE.read_text(encoding="utf-8")), folder)
    return interpolate_tree(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), env)


def test_the_recipe_writes_every_required_variable(tmp_path):
    text = COMPOSE.read_text(encoding="utf-8")
    env = run_recipe(header_recipe(text), tmp_path)
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))
    assert "POSTGRES_PASSWORD" in required
    assert required <= {name for name, value in env.items() if value}
    assert all(len(env[name]) >= 32 for name in required - {"ORTHANC_DICOM_MODALITIES"})
    assert json.loads(env["ORTHANC_DICOM_MODALITIES"])["ct1"]["AET"] == "CT1"


def test_a_missing_variable_stops_interpolation_with_its_message(tmp_path):
    """What the old recipe (no POSTGRES_PASSWORD) ran into."""
    text = COMPOSE.read_text(encoding="utf-8")
    env = run_recipe(header_recipe(text), tmp_path)
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(InterpolationError, match="set POSTGRES_PASSWORD in .env"):
        interpolate_tree(yaml.safe_load(text), env)


def test_interpolation_rules():
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A}-${B:-b}-${EMPTY:-e}-${EMPTY-e}-$A-$$A-${A:+x}-${B+y}", env) == "a-b-e--a-$A-x-"
    with pytest.raises(InterpolationError, match="B is missing a value: say B"):
        interpolate("${B:?say B}", env)
    assert interpolate("${EMPTY?not raised}", env) == ""


def test_the_interpolated_file_is_a_valid_compose_file(interpolated):
    jsonschema.validate(interpolated, compose_schema())
    compose_spec = require_module("compose_spec")
    parsed = compose_spec.PyCompose.from_json(json.dumps(interpolated))  # typed: image references, devices
    assert set(parsed.service_names()) == {"orthanc", "postgres", "sidecar", "worker"}
    assert parsed.to_spec().services is not None  # and its pydantic models of the specification


def test_a_broken_file_is_refused_by_both_validators(interpolated):
    """The validators can fail: a GPU reservation without capabilities, an image reference with a space."""
    broken = json.loads(json.dumps(interpolated))
    del broken["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    with pytest.raises(jsonschema.ValidationError, match="capabilities"):
        jsonschema.validate(broken, compose_schema())
    bad_image = json.loads(json.dumps(interpolated))
    bad_image["services"]["orthanc"]["image"] = "orthancteam/orthanc:26.4.1 latest"
    with pytest.raises(ValueError):
        require_module("compose_spec").PyCompose.from_json(json.dumps(bad_image))


def test_images_are_pinned_and_orthanc_is_current(interpolated):
    services = interpolated["services"]
    for name, service in services.items():
        image = service.get("image", "")
        assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", image), f"{name}: image {image!r} has no explicit tag"
        assert not image.endswith(":latest"), name
    repository, tag = services["orthanc"]["image"].split(":")
    assert repository == "orthancteam/orthanc"
    assert parse_version(ORTHANC_IN_IMAGE[tag]) >= (1, 12, 11)


def test_gpu_workers_reserve_one_nvidia_gpu_each(interpolated):
    deploy = interpolated["services"]["worker"]["deploy"]
    assert int(deploy["replicas"]) >= 1
    devices = deploy["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "--device" in interpolated["services"]["worker"]["command"]
    assert "deploy" not in interpolated["services"]["sidecar"]  # the API and reconciler need no GPU
