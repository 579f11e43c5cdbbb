"""Imports go one way: core <- exporters, analyzers, dashboards <- simulate; core <- testbed.

Every module's imports are read with ``ast`` (imports inside functions included, since a lazy
import is still a dependency), resolved to fmdiag's module names through the package-dir
mapping, and checked against the layers below. A failure names the importing file, its line
and the module it must not import.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Layer of each subpackage; "core" is every module directly in fmdiag/.
LAYERS = ("core", "exporters", "analyzers", "dashboards", "simulate", "testbed")
#: Which layers each layer may import. The three products are independent of each other;
#: only the simulator (which emulates what they read) and the tests may use them all. The
#: real-process test bed is a judge: it drives the products as a user does (their commands, in
#: processes) and imports only the core's formats; nothing imports it, the simulator included.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "exporters": frozenset({"core", "exporters"}),
    "analyzers": frozenset({"core", "analyzers"}),
    "dashboards": frozenset({"core", "dashboards"}),
    "simulate": frozenset(LAYERS) - {"testbed"},
    "testbed": frozenset({"core", "testbed"}),
}


def package_dirs(root: Path) -> dict[str, Path]:
    """fmdiag's subpackage -> folder, from pyproject's [tool.setuptools.package-dir]."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def modules(root: Path) -> Iterator[tuple[str, Path]]:
    """(module name, file) of every module fmdiag installs."""
    dirs = package_dirs(root)
    nested = {name.split(".")[1] for name in dirs if "." in name}
    for package, folder in sorted(dirs.items()):
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "fmdiag" and parts and parts[0] in nested:
                continue  # a subpackage folder nested in fmdiag/ is listed under its own mapping
            yield ".".join([package, *parts]), path


def layer(module: str) -> str | None:
    """The layer of an fmdiag module; None for anything outside fmdiag."""
    parts = module.split(".")
    if parts[0] != "fmdiag":
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def imported(module: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line, absolute module names) of every import statement in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from fmdiag import simulate` imports a subpackage: the names count as modules too.
            yield node.lineno, [target, *(f"{target}.{alias.name}" for alias in node.names)]


def violations(root: Path) -> list[str]:
    found = []
    for module, path in modules(root):
        own = layer(module)
        assert own is not None
        for line, targets in imported(module, path):
            for target in targets:
                other = layer(target)
                if other is not None and other not in ALLOWED[own]:
                    rel = path.relative_to(root)
                    found.append(f"{rel}:{line}: {module} ({own}) imports {target} ({other})")
                    break  # one finding per statement
    return sorted(found)


def test_imports_go_one_way() -> None:
    bad = violations(ROOT)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_every_layer_has_modules() -> None:
    """The walk must see the whole tree, or the test above proves nothing."""
    seen = {layer(m) for m, _ in modules(ROOT)}
    assert {"core", "exporters", "simulate", "testbed"} <= seen
    names = {m for m, _ in modules(ROOT)}
    assert {"fmdiag.catalog", "fmdiag.exporters.collectors.gpu", "fmdiag.simulate.cluster.model"} <= names


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"fmdiag" = "fmdiag"\n"fmdiag.exporters" = "exporters"\n'
        '"fmdiag.simulate" = "simulate"\n"fmdiag.testbed" = "testbed"\n'
    )
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "text", "edge"),
    [
        (
            "exporters/collectors/gpu.py",
            "def f():\n    from fmdiag.simulate import fake\n",
            "fmdiag.simulate",
        ),
        ("fmdiag/catalog.py", "import fmdiag.exporters.collector\n", "fmdiag.exporters.collector"),
        ("exporters/x.py", "from fmdiag import simulate\n", "fmdiag.simulate"),
        ("exporters/sub/y.py", "from ...simulate import z\n", "fmdiag.simulate"),
        ("simulate/z.py", "from fmdiag.testbed import run\n", "fmdiag.testbed"),
        ("testbed/w.py", "from fmdiag.exporters import x\n", "fmdiag.exporters"),
    ],
)
def test_a_wrong_edge_is_named(tmp_path: Path, name: str, text: str, edge: str) -> None:
    root = _tree(tmp_path, {name: text, "simulate/ok.py": "from fmdiag.exporters import x\n"})
    bad = violations(root)
    assert len(bad) == 1 and edge in bad[0] and name in bad[0], bad
