"""What a wheel holds: every package of the source tree, so that a non-editable install runs what the tests ran."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    renamed = {source: name for name, source in config.get("package-dir", {}).items()}
    found = set()
    for top in ("crawler", "plugins"):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            found.add(".".join((renamed.get(parts[0], parts[0]),) + parts[1:]))
    assert found == listed


def test_every_entry_point_names_a_listed_package_module():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    for name, target in project["project"]["entry-points"]["crawler"].items():
        module = target.split(":")[0]
        assert module in listed or module.rpartition(".")[0] in listed, (name, target)
