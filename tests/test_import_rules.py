"""The layering as a test: every module under runtime/ (installed as hadskip.runtime) imports neither torch nor the
other training/export packages, no hadskip module outside hadskip.runtime but hadskip.errors (and the package
root, for __version__), and the web stack only inside the server code.

Imports are read from the source (an AST walk), so an import inside a function counts as much as one at the top,
and so do `importlib.import_module("x")`, `__import__("x")`, `find_spec("x")` and `require("x", ...)`.
Plug-in backends (the torch one) are found through entry points, which are not imports (runtime/backends)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
FORBIDDEN = {"torch", "transformers", "safetensors", "accelerate", "datasets", "optimum", "onnx"}
SERVE_ONLY = {"fastapi", "fastapi_offline", "uvicorn", "starlette", "pydantic", "prometheus_client"}
CORE_ALLOWED = {"errors", "runtime"}  # hadskip.<these> may be imported from the runtime
DYNAMIC = {"import_module", "__import__", "find_spec", "require"}


def _hadskip_modules() -> set[str]:
    """Submodule names of the hadskip package: hadskip/*.py, hadskip/*/, and the mapped export/runtime/cli."""
    names = {p.stem for p in (ROOT / "hadskip").glob("*.py")} | {p.name for p in (ROOT / "hadskip").iterdir()
                                                                 if p.is_dir() and (p / "__init__.py").exists()}
    return (names | {"export", "runtime", "cli"}) - {"__init__"}


SUBMODULES = _hadskip_modules()


def module_name(path: Path) -> str:
    parts = ["hadskip", "runtime", *path.relative_to(RUNTIME).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of everything `source` (the module `module`) imports."""
    found = []
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _import_stats().from_base(node, package)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]  # `from hadskip import model`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in DYNAMIC:
                found.append((node.lineno, node.args[0].value))
    return found


def violations(rel: str, source: str, module: str, is_package: bool = False) -> list[str]:
    serve = rel.split("/")[0].removesuffix(".py") in ("serve", "server")
    bad = []
    for line, name in imported_names(source, module, is_package):
        parts = name.split(".")
        if parts[0] in FORBIDDEN:
            bad.append(f"{rel}:{line} imports {name}")
        elif parts[0] in SERVE_ONLY and not serve:
            bad.append(f"{rel}:{line} imports {name} outside the server code")
        elif parts[0] == "hadskip" and len(parts) > 1 and parts[1] in SUBMODULES and parts[1] not in CORE_ALLOWED:
            bad.append(f"{rel}:{line} imports {'.'.join(parts[:2])} (the runtime may use hadskip.errors only)")
    return list(dict.fromkeys(bad))  # `from m import a, b` names m once per alias


def test_runtime_imports_nothing_from_training_or_core():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) >= 10, files  # the walk really sees the package
    bad = []
    for f in files:
        rel = f.relative_to(RUNTIME).as_posix()
        bad += violations(rel, f.read_text(), module_name(f), f.name == "__init__.py")
    assert not bad, "\n".join(bad)


BAD, OK = True, False


@pytest.mark.parametrize("rel, source, bad", [
    ("core.py", "import torch", BAD),
    ("core.py", "def f():\n    from safetensors.torch import load_file", BAD),
    ("backends/x.py", "from transformers import AutoModel", BAD),
    ("core.py", "from hadskip.modeling.encoder import GatedEncoder", BAD),
    ("core.py", "from hadskip import modeling", BAD),
    ("core.py", "import hadskip.export.api", BAD),
    ("backends/x.py", "from ... import training", BAD),
    ("backends/x.py", "from ...modeling.checkpoint import load_run", BAD),
    ("core.py", "import importlib\nimportlib.import_module('torch')", BAD),
    ("core.py", "require('transformers', 'train')", BAD),
    ("bench.py", "import fastapi", BAD),
    ("core.py", "from starlette.responses import Response", BAD),
    ("core.py", "import numpy as np\nfrom hadskip.errors import HadSkipError, require\nrequire('tensorrt', 'trt')", OK),
    ("core.py", "from hadskip import __version__", OK),
    ("backends/x.py", "from ..manifest import Manifest\nfrom . import memory\nimport hadskip.runtime.router", OK),
    ("server.py", "import fastapi\nimport uvicorn\nfrom pydantic import BaseModel", OK),
    ("serve/app.py", "from fastapi import FastAPI\nfrom prometheus_client import Counter", OK),
])
def test_the_walk_tells_bad_imports_from_good(rel, source, bad):
    module = "hadskip.runtime." + rel.removesuffix(".py").replace("/", ".")
    assert bool(violations(rel, source, module)) is bad


def test_plugin_backends_are_found_by_name(tmp_path):
    """torch is reached through the entry point hadskip's metadata declares; other names through
    register_backend; an unknown name lists what there is."""
    from importlib.metadata import entry_points

    from hadskip.errors import HadSkipError
    from hadskip.runtime import Runtime
    from hadskip.runtime.backends import BackendOptions, find_opener, register_backend

    (ep,) = [e for e in entry_points(group="hadskip.backends") if e.name == "torch"]
    assert ep.value == "hadskip.modeling.torch_backend:open_backend"
    assert find_opener("torch") is ep.load()
    seen = {}

    def opener(path, options):
        seen.update(path=path, options=options)
        raise HadSkipError("opened")

    register_backend("echo", opener)
    with pytest.raises(HadSkipError, match="opened"):
        Runtime.load(tmp_path, backend="echo", threads=3, device="cpu")
    assert seen == {"path": tmp_path, "options": BackendOptions(threads=3, device="cpu")}
    with pytest.raises(HadSkipError, match=r"unknown backend 'tpu'; choose one of .*echo.*torch"):
        Runtime.load(tmp_path, backend="tpu")
    with pytest.raises(HadSkipError, match="built-in"):
        register_backend("ort-cpu", opener)


# --- the core's module graph: no cycles, and function-local imports of hadskip only where listed -----------------

@functools.cache
def _import_stats():
    """scripts/import_stats.py (the AST walk of the whole installed tree), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_stats", ROOT / "scripts" / "import_stats.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# modules (or packages, by prefix) that may import hadskip modules inside functions, and why; everything else
# imports at the top, so the import graph is the one a reader sees
LOCAL_IMPORTS_ALLOWED = {
    "hadskip.cli.": "a command imports its library when it runs, so `hadskip --help` and the torch-free commands "
                    "(predict, bench, serve-local) never import torch",
    "hadskip.export.": "`hadskip export` checks the export extra first; the torch-heavy core (run dirs, units) is "
                       "imported by the call, so importing hadskip.export stays cheap",
    "hadskip.runtime.": "the runtime loads optional backends (TensorRT, CUDA) and the server stack only when chosen",
    "hadskip.modeling.torch_backend": "opened by the torch-free runtime through an entry point: it checks for torch "
                                      "(errors.require) before importing core",
    "hadskip": "the package root's hadskip.pipeline imports the runtime on first call, so `import hadskip` stays "
               "cheap (exact name: not a prefix)",
    "hadskip.testing": "torch-free tests use its text helpers (tiny_sentences, tiny_task_dir); the model builders "
                       "import core when called",
}


def test_the_core_has_no_import_cycles():
    stats = _import_stats()
    edges, _ = stats.graph()
    assert "hadskip.modeling.encoder" in edges and len(edges) > 50  # the walk sees the tree
    assert stats.cycles(edges) == []


def test_function_local_imports_of_hadskip_only_where_listed():
    _, local = _import_stats().graph()
    bad = [f"{m}:{line} imports {target} inside a function" for m, line, target in local
           if not any(m == p or (p != "hadskip" and m.startswith(p)) for p in LOCAL_IMPORTS_ALLOWED)]
    assert not bad, "\n".join(bad)


def test_the_leaf_modules_import_nothing_else_of_hadskip():
    edges, _ = _import_stats().graph()
    for leaf in ("hadskip.modeling.units", "hadskip.training.config"):
        assert edges[leaf] <= {"hadskip.errors"}, (leaf, edges[leaf])


def test_the_cycle_finder_finds_cycles(tmp_path):
    stats = _import_stats()
    for folder in stats.PACKAGES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "hadskip" / "a.py").write_text("def f():\n    from hadskip.b import g\n")
    (tmp_path / "hadskip" / "b.py").write_text("from hadskip import a\n")
    (tmp_path / "hadskip" / "c.py").write_text("from hadskip.a import f\n")
    edges, local = stats.graph(tmp_path)
    assert stats.cycles(edges) == [["hadskip.a", "hadskip.b"]]
    assert local == [("hadskip.a", 2, "hadskip.b")]
