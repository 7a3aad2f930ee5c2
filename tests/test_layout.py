"""The house: every import of src/mbt (module level or inside a function) points to the importer's own layer or a
lower one, and no chain of imports comes back to where it started. Read from the source with `ast`, so nothing is
imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Bottom to top, as README's Layout section lists them (errors and progress are the ground floor). The package's face (mbt/__init__.py: the model's public names
# and __version__) stands on models; `python -m mbt` (__main__) on the CLI.
LAYERS = ["errors", "progress", "models", "__init__", "data", "weights", "engine", "analysis", "avdigits", "cli", "__main__"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "mbt").rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The mbt modules `path` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "mbt" or a.name.startswith("mbt.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "mbt" or target.startswith("mbt.")):
                continue
            # `from . import generator` names a module; `from .config import X` names things in one.
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            found |= subs or {target}
    return {m for m in found if m in known and m != name}


def layer(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in LAYERS, f"{name}: a module outside the known layers {LAYERS}; add its package to LAYERS"
    return LAYERS.index(key)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_import_reader_sees_relative_lazy_and_package_imports(tmp_path):
    """The reader itself, on a file written for it: without this the checks below could pass by seeing nothing."""
    known = modules()
    probe = tmp_path / "probe.py"
    probe.write_text("from ..models.config import MBTConfig\nfrom . import generator\n"
                     "def f():\n    from ..errors import MBTError\n    import mbt.engine.trainer\n")
    got = imports_of("mbt.avdigits.probe", probe, known)
    assert got == {"mbt.models.config", "mbt.avdigits.generator", "mbt.errors", "mbt.engine.trainer"}
    assert graph()["mbt.models.mbt"] >= {"mbt.models.config", "mbt.models.pretrained", "mbt.errors"}


def test_no_import_runs_up_a_layer():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("package", ["models", "data", "weights", "engine", "analysis", "avdigits"])
def test_each_package_says_what_lives_there(package):
    doc = ast.get_docstring(ast.parse((SRC / "mbt" / package / "__init__.py").read_text()))
    assert doc and len(doc) > 80, f"mbt.{package} has no docstring saying what lives there"
