"""The export package's layout: shared constants defined once (on the torch-free side), no function without a
caller, and no module past ~400 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORT = sorted((ROOT / "export").glob("*.py"))
CODE = [p for d in ("hadskip", "export", "runtime", "cli", "bench", "tests") for p in (ROOT / d).rglob("*.py")]


def _top_level(path: Path) -> tuple[set[str], set[str]]:
    """(names assigned, functions defined) at module level."""
    tree = ast.parse(path.read_text())
    assigned = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    functions = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return assigned, functions


def test_engines_and_min_opset_are_defined_once_in_the_runtime_manifest():
    where = {name: [p.relative_to(ROOT).as_posix() for p in [*EXPORT, ROOT / "runtime" / "manifest.py"]
                    if name in _top_level(p)[0]] for name in ("ENGINES", "MIN_OPSET", "MANIFEST", "IO")}
    assert where == {name: ["runtime/manifest.py"] for name in where}


def test_every_public_export_function_has_a_caller():
    text = {p: p.read_text() for p in CODE}
    unused = []
    for path in EXPORT:
        for name in sorted(_top_level(path)[1]):
            if name.startswith("_"):
                continue
            uses = sum(len(re.findall(rf"\b{name}\b", t)) for t in text.values())
            if uses <= 1:  # the def itself
                unused.append(f"{path.name}:{name}")
    assert unused == []


def test_no_export_module_is_over_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in [*EXPORT, ROOT / "runtime" / "manifest.py",
                                                                ROOT / "bench" / "parity.py"]}
    assert {k: v for k, v in sizes.items() if v > 400} == {}
