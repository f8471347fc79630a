"""The package list of pyproject.toml covers the tree: a package folder missing there would be missing from a
non-editable install (`pip install hadskip`), which the editable install the tests run under cannot show."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def tree_packages() -> set[str]:
    """Every folder with an __init__.py under hadskip/ and the mapped export/, runtime/, cli/, as installed."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    return found


def test_every_package_of_the_tree_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    tree = tree_packages()
    assert "hadskip.evaluation.baselines" in tree and "hadskip.runtime.serve" in tree  # the walk sees the tree
    assert tree - listed == set(), f"packages missing from pyproject's [tool.setuptools] packages: {tree - listed}"
    assert listed - tree == set(), f"listed packages that are not in the tree: {listed - tree}"


def test_the_torch_backend_entry_point_names_a_module_of_the_tree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["hadskip.backends"]["torch"]
    module, _, func = target.partition(":")
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    assert path.is_file() and f"def {func}(" in path.read_text(), target
