"""The documentation stands alone: citations point into docs/methods.md, and its anchors and paths exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "weightshare"
METHODS = ROOT / "docs" / "methods.md"
SCANNED = ("src", "tests", "benchmarks", "docs")
PROSE = (
    ROOT / "README.md",
    METHODS,
    ROOT / "docs" / "format.md",
    ROOT / "docs" / "export.md",
    ROOT / "benchmarks" / "RESULTS.md",
)

# Design notes that were never part of the repository; split so that this file does not cite them either.
GONE = re.compile(r"\b" + "REFER" + r"ENCES\b|\b" + "DESIGN" + r"\.md\b")
CITED_ANCHOR = re.compile(r"methods\.md#([\w-]+)")
LOCAL_ANCHOR = re.compile(r"\]\(#([\w-]+)\)")
STAGES = "core|data|models|train|methods|finish|codec|export|report|plots|runs|pipeline|search"
MODULE_PATH = re.compile(rf"(?<![\w/])(?:src/weightshare/)?(?:{STAGES})/[\w/]*\w\.py\b")  # a package module
REPO_PATH = re.compile(r"(?<![\w/])(?:tests|benchmarks)/[\w/]*\w\.(?:py|md)\b")  # from the repository root
DOTTED = re.compile(r"(?<![\"\w./])weightshare(?:\.\w+)+")  # a quoted one is a format id, not a module


def _texts() -> dict[Path, str]:
    """Every text file of the scanned trees and the README."""
    files = [ROOT / "README.md", *(p for top in SCANNED for p in (ROOT / top).rglob("*") if p.is_file())]
    texts = {}
    for path in files:
        if "__pycache__" in path.parts:
            continue
        try:
            texts[path] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # figures and other binaries
    return texts


TEXTS = _texts()
ANCHORS = set(re.findall(r'<a id="([\w-]+)"></a>', METHODS.read_text(encoding="utf-8")))


def _hits(pattern: re.Pattern[str], text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(m.lastindex or 0)) for m in pattern.finditer(text)]


def test_nothing_cites_the_old_design_notes() -> None:
    found = [f"{p.relative_to(ROOT)}:{line}: {hit}" for p, text in TEXTS.items() for line, hit in _hits(GONE, text)]
    assert not found, "cite docs/methods.md instead:\n" + "\n".join(found)


def test_every_cited_anchor_exists() -> None:
    assert len(ANCHORS) > 50  # the page defines its anchors as <a id="..."></a>
    cited = {(p, line, a) for p, text in TEXTS.items() for line, a in _hits(CITED_ANCHOR, text)}
    cited |= {(METHODS, line, a) for line, a in _hits(LOCAL_ANCHOR, TEXTS[METHODS])}
    assert len(cited) > 50
    missing = [f"{p.relative_to(ROOT)}:{line}: #{a}" for p, line, a in sorted(cited) if a not in ANCHORS]
    assert not missing, "anchors not defined in docs/methods.md:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", PROSE, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_paths_in_the_docs_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    modules = _hits(MODULE_PATH, text)
    stale = [f"{line}: {p}" for line, p in modules if not (PACKAGE / p.removeprefix("src/weightshare/")).is_file()]
    stale += [f"{line}: {p}" for line, p in _hits(REPO_PATH, text) if not (ROOT / p).is_file()]
    stale += [f"{line}: {name}" for line, name in _hits(DOTTED, text) if not _resolves(name)]
    assert not stale, f"{doc.name} names modules that do not exist:\n" + "\n".join(stale)


def _resolves(dotted: str) -> bool:
    """``weightshare.a.b.name``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False
