"""The package's import graph: data flows one way, and the core never imports the demo wing.

Read from the sources with :mod:`ast` (nothing is imported), so a new module is checked too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "exfiqa"

#: The commands that build a missing demo world before running a ``demo: true`` config: the only
#: places outside the demo wing allowed to import it (inside the function, never at module level).
DEMO_CALLERS = {("exfiqa.paper", "run_paper"), ("exfiqa.extract.stage", "run")}

#: Modules that must stay free of models and I/O: the evaluation core a reader checks by hand.
PURE = {
    "exfiqa.evaluation.rules": set(),
    "exfiqa.evaluation.quality": {"exfiqa.evaluation.rules"},
    "exfiqa.evaluation.verification": {"exfiqa.evaluation.rules"},
    "exfiqa.evaluation.scores": {"exfiqa.evaluation.rules"},
    "exfiqa.evaluation.edc": {"exfiqa.evaluation.rules", "exfiqa.evaluation.scores"},
    "exfiqa.evaluation.pauc": {"exfiqa.evaluation.edc", "exfiqa.evaluation.rules"},
    "exfiqa.evaluation.metrics": {"exfiqa.evaluation.edc", "exfiqa.evaluation.pauc", "exfiqa.evaluation.quality", "exfiqa.evaluation.rules", "exfiqa.evaluation.verification"},
    "exfiqa.evaluation.pairs": {"exfiqa.evaluation.quality", "exfiqa.evaluation.rules", "exfiqa.evaluation.scores"},
    "exfiqa.evaluation.subjects": {"exfiqa.evaluation.pairs", "exfiqa.evaluation.rules"},
    "exfiqa.evaluation.bootstrap": {"exfiqa.evaluation.edc", "exfiqa.evaluation.pauc", "exfiqa.evaluation.rules", "exfiqa.evaluation.scores", "exfiqa.evaluation.subjects"},
    "exfiqa.evaluation.fusion": set(),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_pkg: bool) -> list[str]:
    """Absolute ``exfiqa...`` names an import statement refers to (modules, not attributes)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "exfiqa"]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "exfiqa":
        return []
    # ``from . import fr`` names a module; ``from exfiqa.evaluation.metrics import edc`` names the module metrics.
    subs = [f"{target}.{a.name}" for a in node.names]
    return [s for s in subs if _exists(s)] or [target]


def _exists(name: str) -> bool:
    p = PACKAGE.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[str, str | None, bool]]:
    """(imported module, enclosing function or None, at module level) for every exfiqa import."""
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, str | None, bool]] = []

    def walk(node: ast.AST, func: str | None, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend((t, func, top) for t in _resolve(module, child, is_pkg))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(child, func or child.name, False)
            elif isinstance(child, ast.ClassDef):
                walk(child, func, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only, never executed
            else:
                walk(child, func, top)

    walk(ast.parse(path.read_text()), None, True)
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _in_demo(name: str) -> bool:
    return name == "exfiqa.demo" or name.startswith("exfiqa.demo.")


def test_the_graph_is_read_from_every_module():
    assert {"exfiqa.evaluation.metrics", "exfiqa.study", "exfiqa.demo", "exfiqa.demo.world"} <= set(GRAPH)
    # the resolver sees relative imports of both kinds (a probe against known lines of the tree)
    if "exfiqa.evaluation.bootstrap" in GRAPH:
        assert ("exfiqa.evaluation.edc", None, True) in GRAPH["exfiqa.evaluation.bootstrap"]
    assert any(t == "exfiqa.demo.synth" for t, _, _ in GRAPH["exfiqa.demo.world"])
    assert any(t == "exfiqa.io" for t, _, _ in GRAPH["exfiqa.demo.world"])


def test_the_core_never_imports_the_demo_wing():
    found = {(m, f) for m, imps in GRAPH.items() if not _in_demo(m) for t, f, _ in imps if _in_demo(t)}
    assert found <= DEMO_CALLERS, f"core modules importing exfiqa.demo: {sorted(found - DEMO_CALLERS)}"
    top = [(m, t) for m, imps in GRAPH.items() if not _in_demo(m) for t, _, at_top in imps if at_top and _in_demo(t)]
    assert not top, top


@pytest.mark.parametrize("module", sorted(PURE))
def test_the_evaluation_core_imports_no_model(module):
    if module not in GRAPH:
        pytest.skip(f"{module} does not exist")
    used = {t for t, _, _ in GRAPH[module]} - {module}
    assert used <= PURE[module], f"{module} imports {sorted(used - PURE[module])}"


def test_module_level_imports_have_no_cycle():
    edges = {m: {t for t, _, top in imps if top and t != m and t in GRAPH} for m, imps in GRAPH.items()}
    # a package's __init__ importing its own modules is not a cycle of the data flow
    for m in edges:
        edges[m] = {t for t in edges[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t):], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_checks_catch_a_core_module_importing_the_demo(tmp_path):
    """The walker finds a function-level import of the demo wing (what the first check relies on)."""
    pkg = tmp_path / "exfiqa"
    pkg.mkdir()
    (pkg / "metrics.py").write_text("def f():\n    from exfiqa.demo import synth\n    return synth\n")
    global PACKAGE
    saved = PACKAGE
    PACKAGE = pkg
    try:
        assert _imports(pkg / "metrics.py") == [("exfiqa.demo", "f", False)]
    finally:
        PACKAGE = saved
