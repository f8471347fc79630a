"""Import facts of the hadskip tree, read from the source (an AST walk, nothing is imported):

- the module graph of hadskip (the core under hadskip/, and export/, runtime/, cli/ as they are installed), with
  imports inside functions counted as edges too, and its cycles (strongly connected components);
- the function-local imports of hadskip modules (an `import` inside a def), which hide such cycles;
- the largest modules by line count.

    python scripts/import_stats.py            # a summary
    python scripts/import_stats.py --list     # every function-local import of hadskip, file:line

tests/test_import_rules.py loads this file to hold the rules (no cycles, function-local imports only where
listed). grimp/import-linter would do the graph, but are not dependencies of the project; the walk is short.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> the dotted package it is installed as (pyproject's package-dir)
PACKAGES = {"hadskip": "hadskip", "export": "hadskip.export", "runtime": "hadskip.runtime", "cli": "hadskip.cli"}


def source_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the installed hadskip package."""
    out = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = [*dotted.split("."), *path.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest known module that `name` (a dotted import target) names or lies in."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def from_base(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a `from ... import` statement in `package` reads from (relative levels resolved)."""
    base = node.module or ""
    if node.level:
        anchor = package.split(".")
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return base


def imports_of(module: str, path: Path, modules: set[str]) -> list[tuple[int, str, bool]]:
    """(line, imported hadskip module, inside a function) for each hadskip import of `module`."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never imported at run time
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = from_base(child, package)
                # `from hadskip import model` imports hadskip.model; `from hadskip.x import f` imports hadskip.x
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
            else:
                visit(child, inner)
                continue
            for name in dict.fromkeys(names):
                target = _resolve(name, modules)
                if target and target != module:
                    found.append((child.lineno, target, local))
    visit(tree, False)
    return found


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module -> the hadskip modules it imports anywhere, [(module, line, target) of each function-local one])."""
    files = source_files(root)
    modules = set(files)
    edges: dict[str, set[str]] = {m: set() for m in files}
    local = []
    for module, path in files.items():
        for line, target, inside in imports_of(module, path, modules):
            edges[module].add(target)
            if inside:
                local.append((module, line, target))
    return edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted; a package's import of
    its own submodules (an __init__ re-exporting them) is not a cycle of design, so parent->child edges are
    left out."""
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(out)


def line_counts(root: Path = ROOT) -> list[tuple[int, str]]:
    return sorted(((len(p.read_text().splitlines()), p.relative_to(root).as_posix())
                   for p in source_files(root).values()), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list every function-local import of hadskip")
    parser.add_argument("--top", type=int, default=10, help="how many of the largest modules to show")
    args = parser.parse_args()
    edges, local = graph()
    core = [m for m in local if not m[0].startswith(("hadskip.export", "hadskip.runtime", "hadskip.cli"))]
    print(f"modules: {len(edges)}")
    print(f"function-local imports of hadskip modules: {len(local)} (core hadskip/: {len(core)})")
    found = cycles(edges)
    print(f"import cycles: {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    print("largest modules (lines):")
    for n, rel in line_counts()[: args.top]:
        print(f"  {n:5d} {rel}")
    if args.list:
        for module, line, target in local:
            print(f"{module}:{line} -> {target}")


if __name__ == "__main__":
    main()
