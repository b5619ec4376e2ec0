"""The tree is the architecture: one subpackage per layer, dependencies pointing one way.

Every ``import`` and ``from ... import`` of every module under ``ppl_vae/`` is read with
``ast`` (relative and absolute, inside functions and ``if TYPE_CHECKING:`` blocks alike: a
type-only import ties two modules as much as any other), and

- the module graph and the graph of subpackages have no cycle;
- each subpackage imports only what the ``May import:`` sentence of its ``__init__``
  docstring allows (docs/architecture.md draws the same picture);
- nothing but ``ppl_vae.__main__`` imports ``cli``, the thin shell;
- every module lives in a subpackage, or is one of the few public modules of the root;
- the tests are grouped in folders named as the subpackages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ppl_vae"
# the root keeps the entry points and the public modules users import by path
# (``from ppl_vae.nets import mlp`` in pair files, ``ppl_vae.optim``, ``ppl_vae.arviz_compat``)
ROOT_MODULES = {"ppl_vae", "ppl_vae.__main__", "ppl_vae.nets", "ppl_vae.optim"}
ROOT_PACKAGES = {"arviz_compat", "cli"}
# test folders of the whole library rather than one subpackage: pairs and generated cases
TEST_FOLDERS_OF_THEIR_OWN = {"conformance", "corpus"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def imports(name: str) -> set[str]:
    """The ppl_vae modules that module ``name`` imports (a package counts as its
    ``__init__``; ``from package import module`` as the module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ppl_vae"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "ppl_vae":
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    unknown = found - set(MODULES)
    assert not unknown, f"{name} imports {sorted(unknown)}, which are not modules of ppl_vae"
    found.discard(name)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def unit(name: str) -> str:
    """The layer a module belongs to: its subpackage, or the root module itself."""
    parts = name.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in SUBPACKAGES):
        return parts[1]
    return name


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def allowed(subpackage: str) -> set[str] | None:
    """What the ``May import:`` sentence of a subpackage's docstring allows (None: all)."""
    init = PACKAGE / subpackage / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    match = re.search(r"May import: (.*?)\.(?:\s*\n\s*\n|\s*$)", doc, re.S)
    assert match, f"ppl_vae/{subpackage}/__init__.py: its docstring says what it may import"
    said = " ".join(match.group(1).split())
    if said == "every layer":
        return None
    if said == "nothing":
        return set()
    names = re.findall(r"`(\w+)`", said)
    assert names, f"ppl_vae/{subpackage}: 'May import: {said}' names no layer in `backticks`"
    return {n if n in SUBPACKAGES else f"ppl_vae.{n}" for n in names}


def test_the_module_graph_has_no_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_subpackage_graph_has_no_cycle():
    layers: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        others = {unit(t) for t in targets} - {unit(name)}
        layers.setdefault(unit(name), set()).update(others)
    assert find_cycle(layers) is None, " -> ".join(find_cycle(layers))


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_a_subpackage_imports_only_what_its_docstring_allows(subpackage):
    may = allowed(subpackage)
    if may is None:
        return
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items() if unit(name) == subpackage
        for target in targets if unit(target) not in may | {subpackage}
    )
    assert not wrong, f"ppl_vae/{subpackage} may import {sorted(may) or 'nothing'}: {wrong}"


def test_the_root_modules_import_no_layer():
    # the public modules of the root sit below every layer; __init__ imports lazily by name
    for name in ROOT_MODULES - {"ppl_vae.__main__"}:
        assert not GRAPH[name], f"{name} imports {sorted(GRAPH[name])}"


def test_only_the_entry_point_imports_the_command_line():
    users = {name for name, targets in GRAPH.items() if any(unit(t) == "cli" for t in targets)}
    assert {u for u in users if unit(u) != "cli"} == {"ppl_vae.__main__"}


def test_every_module_lives_in_a_subpackage_or_is_a_public_root_module():
    stray = [n for n in MODULES if unit(n) not in set(SUBPACKAGES) and n not in ROOT_MODULES]
    assert not stray, f"place {stray} in the subpackage of its layer (docs/architecture.md)"
    layers = set(SUBPACKAGES) - ROOT_PACKAGES
    assert layers == {"utils", "pair", "estimators", "training", "evaluation", "diagnostics",
                      "comparison"}


def test_every_public_name_is_found_where_the_package_says():
    import ppl_vae

    for name in ppl_vae.__all__:
        home = ppl_vae._HOME[name]
        assert f"ppl_vae.{home or name}" in MODULES, f"{name}: ppl_vae.{home} is no module"
        assert getattr(ppl_vae, name) is not None


def test_the_tests_are_grouped_as_the_package():
    folders = {p.name for p in (ROOT / "tests").iterdir()
               if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders - TEST_FOLDERS_OF_THEIR_OWN <= set(SUBPACKAGES), (
        f"test folders {sorted(folders - TEST_FOLDERS_OF_THEIR_OWN - set(SUBPACKAGES))} "
        "name no subpackage of ppl_vae"
    )
