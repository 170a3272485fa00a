"""The package's shape, checked: the layers of docs/architecture.md, no import cycles, imports at
the top (or a comment saying why not), and a package root that holds only what everything shares."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"neuroradix": ROOT / "inference" / "neuroradix", "neuroradix_train": ROOT / "training" / "neuroradix_train"}

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
    "neuroradix.weights": 2,
    "neuroradix.writers": 2,
    "neuroradix.pacs": 2,
    "neuroradix.analyzers": 3,
    "neuroradix.pipeline": 4,
    "neuroradix.offline": 5,
    "neuroradix.jobs": 6,
    "neuroradix.api": 7,
    "neuroradix.node": 8,
    "neuroradix.cli": 9,
    "neuroradix.models.cli": 9,  # the weights subcommands of the CLI
    "neuroradix_train": 10,
}
ROOT_MODULES = {"__init__", "cli", "config", "errors", "types", "uids", "pipeline", "offline", "weights", "schemes"}


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
                        if "# noqa: PLC0415 -" not in text:
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
