"""The exif_jax package has no import cycles: every module's imports (top level and inside functions, absolute
and relative) are read with `ast`, and the graph among exif_jax modules must be acyclic."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "exif_jax"


def module_names(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package ('exif_jax.export' for its __init__.py)."""
    root = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(modules: dict[str, Path], importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative levels counted from the importer's package)."""
    if not node.level:
        return node.module or ""
    is_package = modules[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the package modules it imports}, anywhere in its body (functions included)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(modules, name, node)
                # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import exif_jax.export.hf.x`-style names: the longest module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles until none is left, each found after cutting the first edge of the one before (so every
    tangle shows up, not only the first)."""
    graph = {k: set(v) for k, v in graph.items()}
    out = []
    while (cycle := find_cycle(graph)) is not None:
        out.append(cycle)
        graph[cycle[0]].discard(cycle[1])
    return out


def test_no_import_cycles():
    modules = module_names()
    assert "exif_jax.export.hf" in modules and "exif_jax.eval.localize" in modules
    graph = import_graph(modules)
    assert sum(map(len, graph.values())) > 50  # the graph was really read
    cycles = all_cycles(graph)
    assert not cycles, "import cycles among exif_jax modules:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    """A cycle through an import hidden inside a function, spelled relatively, is found."""
    pkg = tmp_path / "pkgx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkgx.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\n\ndef f():\n    from .c import g\n    return g\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    from .. import a\n")
    modules = module_names(pkg)
    graph = import_graph(modules)
    assert graph["pkgx.a"] == {"pkgx.sub.b"} and graph["pkgx.sub.b"] == {"pkgx.sub.c"}
    assert graph["pkgx.sub.c"] == {"pkgx.a"}
    assert find_cycle(graph) == ["pkgx.a", "pkgx.sub.b", "pkgx.sub.c", "pkgx.a"]
    (pkg / "sub" / "c.py").write_text("def g():\n    from ..sub import b as _  # b itself: no new cycle via a\n")
    graph = import_graph(module_names(pkg))
    assert find_cycle(graph) == ["pkgx.sub.b", "pkgx.sub.c", "pkgx.sub.b"]
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(module_names(pkg))) is None


# The builder and what only it needs (numba compiles the restart rewrite; Ray and pyarrow read inputs).
BUILD_ONLY = ("numba", "llvmlite", "ray", "pyarrow", "exif_jax.data.build", "exif_jax.data.build_ray",
              "exif_jax.data.inputs", "exif_jax.data.photo_check", "exif_jax.data.jpeg_restart")


def test_read_path_imports_no_build_code():
    """Training, the loader and localization import the reader, never the builder or numba."""
    code = ("import sys; import exif_jax.data.pipeline, exif_jax.eval.localize, exif_jax.train; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BUILD_ONLY!r} or m in {BUILD_ONLY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
