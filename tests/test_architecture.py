"""The package's shape, checked: the layers of docs/architecture.md, no import cycles, imports at
the top (or a comment saying why not), and a package root that holds only what everything shares."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"neuroradix": ROOT / "inference" / "neuroradix", "neuroradix_train": ROOT / "training" / "neuroradix_train"}
PLUGIN = ROOT / "plugin"  # a separate program inside Orthanc: stdlib only, only its glue imports `orthanc`

# Lower layers never import higher ones (docs/architecture.md). Rank of a module = rank of its room.
LAYERS = {
    "neuroradix.types": 0,
    "neuroradix.errors": 0,
    "neuroradix.uids": 0,
    "neuroradix.config": 0,
    "neuroradix.schemes": 0,
    "neuroradix": 0,
    "neuroradix.imaging": 1,
    "neuroradix.models": 1,
    "neuroradix.samples": 2,
    "neuroradix.writers": 2,
    "neuroradix.pacs": 2,
    "neuroradix.analyzers": 3,
    "neuroradix.triage": 1,  # the policy and the pure decision from a study's results
    "neuroradix.pipeline": 4,
    "neuroradix.notify": 1,  # HL7 v2 / FHIR / webhook messages and their destinations
    "neuroradix.jobs": 6,
    "neuroradix.api": 7,
    "neuroradix.runtime": 8,  # the worker's entry point, the one supervisor, `neuroradix serve`
    "neuroradix.deploy": 9,  # launcher (make up), Orthanc's process and configuration, senders, PostgreSQL
    "neuroradix.devtools": 10,  # the demo, the viewer proxy
    "neuroradix.cli": 11,
    "neuroradix_train": 12,
}
ROOT_MODULES = {"__init__", "cli", "config", "errors", "types", "uids", "schemes"}


def _modules() -> dict[str, Path]:
    found = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


MODULES = _modules()


def _project_imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
    return out


def _rank(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_no_import_cycles():
    graph = {m: _project_imports(p, top_level_only=True) & MODULES.keys() for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_lower_layers_do_not_import_higher_ones():
    wrong = []
    for module, path in MODULES.items():
        for target in _project_imports(path, top_level_only=False):
            if _rank(target) > _rank(module):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(wrong))


# "# noqa: PLC0415 - why" (other codes may stand beside PLC0415): an import inside a function says why.
REASONED_IMPORT = re.compile(r"# noqa: (?:[A-Z]+[0-9]+, )*PLC0415(?:, [A-Z]+[0-9]+)* - \S")


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_inside_functions_say_why(package):
    silent = []
    for path in PACKAGES[package].rglob("*.py"):
        source = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(source))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        text = " ".join(source[sub.lineno - 1 : sub.end_lineno])
                        if not REASONED_IMPORT.search(text):
                            silent.append(f"{path.relative_to(ROOT)}:{sub.lineno}")
    assert not silent, "imports inside functions without a reason: " + ", ".join(silent)


def test_package_root_holds_only_shared_modules():
    root = PACKAGES["neuroradix"]
    modules = {p.stem for p in root.glob("*.py")}
    assert modules == ROOT_MODULES, f"unexpected modules in the package root: {sorted(modules ^ ROOT_MODULES)}"


def test_no_module_climbs_out_of_the_package():
    climbing = [
        str(p.relative_to(ROOT))
        for p in MODULES.values()
        if "parents[" in p.read_text() and "__file__" in p.read_text()
    ]
    assert not climbing, f"modules that find files by climbing out of the package: {climbing}"


def test_every_room_has_its_rank():
    rooms = {f"neuroradix.{p.name}" for p in PACKAGES["neuroradix"].iterdir() if (p / "__init__.py").is_file()}
    assert rooms <= set(
        LAYERS
    ), f"rooms without a rank in LAYERS (and docs/architecture.md): {sorted(rooms - set(LAYERS))}"


def test_plugin_imports_only_the_stdlib_and_only_its_glue_imports_orthanc():
    siblings = {p.stem for p in PLUGIN.glob("*.py")}
    wrong = []
    for path in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = (
                    top in sys.stdlib_module_names or top in siblings or (top == "orthanc" and path.stem == "glue")
                )
                if not allowed:
                    wrong.append(f"{path.name}: {name}")
    assert not wrong, f"plugin imports beyond the stdlib: {wrong}"


@pytest.mark.parametrize(
    "room", sorted(p.name for p in PACKAGES["neuroradix"].iterdir() if (p / "__init__.py").is_file())
)
def test_every_room_says_what_it_offers(room):
    """Each room's ``__init__`` has a docstring and an ``__all__`` whose every name resolves."""
    module = importlib.import_module(f"neuroradix.{room}")
    assert module.__doc__ and module.__doc__.strip(), f"neuroradix.{room} has no docstring"
    offered = getattr(module, "__all__", None)
    assert offered, f"neuroradix.{room} declares no __all__"
    missing = [name for name in offered if not hasattr(module, name)]
    assert not missing, f"neuroradix.{room}.__all__ names what it does not have: {missing}"


def test_one_logger_convention():
    """``logger = logging.getLogger(__name__)`` everywhere (the plugin names its one logger, as Orthanc loads it top-level)."""
    wrong = []
    for path in [*MODULES.values(), *PLUGIN.glob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "logging.getLogger(" in line and "=" in line.split("logging.getLogger(")[0]:
                name = line.split("=")[0].strip()
                argument = line.split("logging.getLogger(")[1]
                expected = '"neuroradix.plugin")' if path.parent == PLUGIN else "__name__)"
                if line.startswith(name) and (name != "logger" or not argument.startswith(expected)):
                    wrong.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not wrong, "module loggers named otherwise: " + "; ".join(wrong)


def test_no_references_to_tracker_numbers():
    """The issue tracker is not in the repository: code and docs say what, not "issue 13"."""
    pattern = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *PLUGIN.glob("*.py")]
    for folder in ("inference", "training", "tests", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*.py") if p != Path(__file__).resolve()]
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not found, f"references to tracker numbers: {found}"
