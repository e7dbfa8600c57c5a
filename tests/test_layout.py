"""The package layout stays as documented: the command line sits on top of the library, module-level imports
between dfcompress modules form no cycle, and the old module names are gone.

Pure ``ast`` over the source files: nothing here imports torch (or dfcompress itself)."""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dfcompress"

#: modules that moved in the layout change of issue 15 (see "Moved in this release" in docs/plugins.md)
OLD_MODULES = {
    "dfcompress.synthesis": "dfcompress.synth.driver",
    "dfcompress.synthdata": "dfcompress.data.synthetic",
    "dfcompress.datasets": "dfcompress.data.real",
    "dfcompress.pipeline": "dfcompress.run",
    "dfcompress.evaluate": "dfcompress.evaluation",
    "dfcompress.synth.stats": "dfcompress.synth.seeded_stats",
    "dfcompress.synth.stats_command": "dfcompress.commands.stats",
    "dfcompress.default_plugins.commands": "dfcompress.commands.stats",
    "dfcompress.default_plugins.bench_commands": "dfcompress.commands.bench",
}

#: entry points of the command line, allowed to import it
CLI_MODULES = {"dfcompress.cli", "dfcompress.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=1)
def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> source file."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@lru_cache(maxsize=None)
def _tree(name: str) -> ast.Module:
    path = _modules()[name]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_package(name: str) -> bool:
    return _modules()[name].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, *, module_level: bool):
    """The Import/ImportFrom nodes under ``node``; with ``module_level`` only those run when the module is
    imported: not inside functions (the project's way to keep ``--help`` light) nor ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        yield from _visit(child, module_level)


def _visit(node: ast.AST, module_level: bool):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return
    if module_level and isinstance(node, ast.If) and _is_type_checking(node.test):
        for other in node.orelse:  # the else branch does run
            yield from _visit(other, module_level)
        return
    for child in ast.iter_child_nodes(node):
        yield from _visit(child, module_level)


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative imports resolved against ``importer``)."""
    if not node.level:
        return node.module or ""
    package = importer if _is_package(importer) else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(importer: str, *, module_level: bool) -> list[tuple[str, int]]:
    """(imported dfcompress module name, line) for every import in ``importer``; ``from X import y`` names the
    submodule ``X.y`` when there is one, else ``X``. Names may be of modules that do not exist."""
    found = []
    for node in _import_nodes(_tree(importer), module_level=module_level):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _resolve(importer, node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in _modules() else base
                       for alias in node.names]
        found += [(t, node.lineno) for t in targets if t == "dfcompress" or t.startswith("dfcompress.")]
    return found


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those that hold a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(sorted(component))
    return components


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the component's first module, for the failure message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in sorted(graph[node] & members):
            if succ == start:
                return paths[node] + [start]
            if succ not in paths:
                paths[succ] = paths[node] + [succ]
                queue.append(succ)
    return component


def module_graph() -> dict[str, set[str]]:
    """Module-level imports between existing dfcompress modules."""
    modules = _modules()
    return {name: {t for t, _ in _imports(name, module_level=True) if t in modules} for name in modules}


# --------------------------------------------------------------------------------------------- the tests


def test_the_scan_sees_the_package():
    modules = _modules()
    assert {"dfcompress", "dfcompress.cli", "dfcompress.run", "dfcompress.commands.data",
            "dfcompress.data.synthetic", "dfcompress.tasks.distill"} <= set(modules)
    graph = module_graph()
    assert "dfcompress.data.synthetic" in graph["dfcompress.synth.driver"]
    assert "dfcompress.commands" in graph["dfcompress.cli"]
    # imports inside functions do not count: the CLI loads the run module only when a command runs
    assert "dfcompress.run" not in graph["dfcompress.cli"]
    assert "dfcompress.run" in {t for t, _ in _imports("dfcompress.cli", module_level=False)}


def test_the_library_never_imports_the_command_line():
    """Only the command line (cli.py, ``python -m dfcompress``) and dfcompress/commands/ may import
    dfcompress.cli or dfcompress.commands, at module level or inside a function."""
    offenders = []
    for name in _modules():
        if name in CLI_MODULES or name == "dfcompress.commands" or name.startswith("dfcompress.commands."):
            continue
        for target, line in _imports(name, module_level=False):
            if target in CLI_MODULES or target == "dfcompress.commands" or target.startswith("dfcompress.commands."):
                offenders.append(f"{_modules()[name].relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not offenders, "library modules importing the command line:\n  " + "\n  ".join(offenders)


def test_module_level_imports_have_no_cycle():
    graph = module_graph()
    cycles = [" -> ".join(_cycle_in(c, graph)) + f"   (component: {', '.join(c)})"
              for c in _strongly_connected(graph)]
    assert not cycles, "module-level import cycles:\n  " + "\n  ".join(cycles)


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert sorted(_strongly_connected(graph)) == [["a", "b", "c"], ["e"]]
    assert _cycle_in(["a", "b", "c"], graph) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("old", sorted(OLD_MODULES))
def test_old_module_names_are_gone(old):
    relative = Path(*old.split("."))
    assert old not in _modules(), f"{old} should have moved to {OLD_MODULES[old]}"
    assert not (PACKAGE.parent / relative.with_suffix(".py")).exists()
    assert not (PACKAGE.parent / relative / "__init__.py").exists()


def test_tasks_is_a_package_not_a_module():
    assert not (PACKAGE / "tasks.py").exists()
    assert (PACKAGE / "tasks" / "__init__.py").is_file()


def test_every_import_of_a_dfcompress_module_names_one_that_exists():
    """Also the imports inside functions, which only run when a command or a stage does."""
    modules = _modules()
    missing = [f"{modules[name].relative_to(PACKAGE.parent)}:{line} imports {target}"
               for name in modules for target, line in _imports(name, module_level=False) if target not in modules]
    assert not missing, "imports of modules that do not exist:\n  " + "\n  ".join(missing)


def _top_level_names(name: str) -> set[str]:
    names: set[str] = set()
    for node in _tree(name).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def test_built_in_plugin_strings_name_existing_modules_and_attributes():
    """The lazy ``"module:attr"`` registrations of the built-in plugins and DEFAULT_PLUGINS."""
    modules = _modules()
    sources = [n for n in modules if n.startswith("dfcompress.default_plugins.")] + ["dfcompress.plugins"]
    pattern = re.compile(r"dfcompress(\.\w+)+(:\w+)?")
    seen, broken = 0, []
    for name in sources:
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.fullmatch(node.value):
                seen += 1
                module, _, attr = node.value.partition(":")
                if module not in modules:
                    broken.append(f"{name}: {node.value} (no module {module})")
                elif attr and attr not in _top_level_names(module):
                    broken.append(f"{name}: {node.value} ({module} defines no {attr})")
    assert seen >= 20
    assert not broken, "\n".join(broken)
