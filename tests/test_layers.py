"""The tree shows the pipeline: imports run from a stage to the stages below it, never back.

Every ``weightshare`` import of every module (lazy ones inside functions included) is an
edge; the stages are ranked and an edge may not climb. A method's own figures may use
the plotting toolkit (they live with the method by design).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "weightshare"

# Lower rank = lower stage. A module may import its own stage and the ones below it.
RANK = {
    "core": 0,
    "data": 1,
    "models": 1,
    "codec": 1,
    "runs": 1,
    "train": 2,
    "export": 2,
    "finish": 3,
    "methods": 4,
    "report": 4,
    "plots": 5,
    "pipeline": 6,
    "lightning": 6,  # the Lightning callback: a pipeline of its own, for a user's Trainer
    "search": 7,
    "cli": 8,
    "__main__": 9,
    "__init__": 9,
}
# The plotting toolkit a method's own figures may draw with.
FIGURE_TOOLKIT = ("weightshare.plots.style", "weightshare.plots.weights", "weightshare.plots.artifacts")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every weightshare module ``path`` imports (``from a.b import c`` counts a.b and a.b.c if it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("weightshare"):
            submodules = {f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")}
            found |= submodules if len(submodules) == len(node.names) else {node.module, *submodules}
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("weightshare"))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; weightshare imports are absolute")
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_few_modules_sit_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_never_climb_a_stage(module: str):
    if module == "weightshare":
        return  # the package face re-exports the public API of every stage
    rank = RANK[_stage(module)]
    for target in sorted(GRAPH[module]):
        if target == "weightshare" or _stage(target) == _stage(module):
            continue
        if module.startswith("weightshare.methods.") and module.endswith(".figures") and target in FIGURE_TOOLKIT:
            continue
        assert RANK[_stage(target)] <= rank, f"{module} (stage {_stage(module)}) imports {target}"


def test_core_imports_nothing_else_and_codec_only_core():
    for module, targets in GRAPH.items():
        stage = _stage(module)
        others = {_stage(t) for t in targets if t != "weightshare"} - {stage}
        if stage == "core":
            assert not others, f"{module} imports {others}"
        if stage == "codec":
            assert others <= {"core"}, f"{module} imports {others}"
        if stage == "export":  # the exporters start from a QuantizedModel or a .wsz file, nothing else
            assert others <= {"core", "codec"}, f"{module} imports {others}"


def test_nothing_imports_the_command_line():
    for module, targets in GRAPH.items():
        if module != "weightshare.__main__":
            assert "weightshare.cli" not in targets, module


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH or nxt == "weightshare":
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


# Deep Compression's own sensitivity analysis (Han et al. 2015, Sec. 4) is a pipeline command of its own
# that prunes with DC's magnitude rule and suggests DC's ``kept`` setting: it may use DC's pruning module.
OWN_ANALYSES = {"weightshare.pipeline.sensitivity": {"weightshare.methods.dc.pruning"}}


def test_no_method_is_named_outside_methods():
    """Shared code never asks which method it runs: no ``.name ==`` tests, no method modules imported."""
    specific = (
        "weightshare.methods.sws",
        "weightshare.methods.dc",
        "weightshare.methods.admm",
        "weightshare.methods.pwfn",
    )
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module.startswith("weightshare.methods") or module in ("weightshare", "weightshare.cli"):
            continue
        text = path.read_text()
        asks = re.search(r"(method|hooks)\.name\s*[=!]=|\.name\s*[=!]=\s*[\"'](sws|dc|admm|pwfn)[\"']", text)
        assert asks is None and "getattr(method" not in text, module
        climbing = [t for t in GRAPH[module] if t.startswith(specific) and t not in OWN_ANALYSES.get(module, ())]
        assert not climbing, f"{module} imports {climbing}"
