"""The packages' imports form no cycle, counting imports inside functions too.

Every `import` / `from ... import` statement of `pixelrefer_fast` and `pixelrefer_kernels` (module
level, inside functions, under `if TYPE_CHECKING`) is an edge from its module to the module it names.
`from pkg import name` points at `pkg.name` when that is a submodule, else at `pkg` itself. A module's
implicit import of its own parent package is not an edge: that is how Python loads every submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pixelrefer_fast": ROOT / "pixelrefer_fast", "pixelrefer_kernels": ROOT / "kernels"}


def package_modules() -> dict[str, Path]:
    """`{dotted module name: file}` of both packages (a package is named by its `__init__.py`)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_source(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` statement of module `name` (file `path`) imports from."""
    if not node.level:
        return node.module
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    return ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that `name` (the module in `path`) imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = import_source(name, path, node)
            submodules = {f"{source}.{alias.name}" for alias in node.names} & known.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(source)
    return {module for module in found if module in known and module != name}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, each as `[a, b, ..., a]` (empty when the graph is acyclic)."""
    state: dict[str, str] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return cycles


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_packages_have_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def defined_names(path: Path) -> set[str] | None:
    """Names a module defines at its top level (None when it has a module `__getattr__`: any name may exist)."""
    names: set[str] = set()
    body = list(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            body += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            body += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return names


def test_imported_names_exist():
    """`from pixelrefer_fast.x import name` (anywhere, lazy imports included) names something `x` defines."""
    modules = package_modules()
    missing = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = import_source(name, path, node)
            if source not in modules:
                continue
            defined = defined_names(modules[source])
            for alias in node.names:
                if defined is not None and alias.name != "*" and alias.name not in defined and f"{source}.{alias.name}" not in modules:
                    missing.append(f"{name}:{node.lineno}: {source} defines no {alias.name}")
    assert not missing, "\n".join(missing)


def test_kernels_never_import_the_model_package():
    """Imports flow one way: `pixelrefer_fast` -> `pixelrefer_kernels`, never back."""
    back = {
        (name, target)
        for name, targets in import_graph().items()
        if name.startswith("pixelrefer_kernels")
        for target in targets
        if target.startswith("pixelrefer_fast")
    }
    assert not back, f"pixelrefer_kernels imports pixelrefer_fast: {sorted(back)}"


@pytest.mark.parametrize(
    "edges, expected",
    [
        pytest.param({"a": {"b"}, "b": {"c"}, "c": set()}, [], id="chain"),
        pytest.param({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]], id="two-cycle"),
        pytest.param({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]], id="three-cycle"),
    ],
)
def test_find_cycles(edges, expected):
    assert find_cycles(edges) == expected


def test_function_level_import_is_an_edge(tmp_path):
    """A lazy import inside a function counts, and `from . import sub` points at the submodule."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def load():\n    from .b import thing\n    return thing\n")
    (package / "b.py").write_text("from . import a\nthing = a\n")
    known = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.b": package / "b.py"}
    edges = {name: imported_modules(name, path, known) for name, path in known.items()}
    assert edges == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycles(edges) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_bench_never_imports_the_tests():
    """`bench/` measures against the package (`pixelrefer_fast.reference` holds the official ports)."""
    offending = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offending += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert not offending, "bench/ imports tests/:\n" + "\n".join(offending)
