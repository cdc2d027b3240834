"""What an installed dsbuild ships: every data file the package reads is declared as package data."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def test_package_data_is_declared_and_exists() -> None:
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dsbuild"]
    pkg = REPO / "dsbuild"
    declared = {f for g in globs for f in pkg.glob(g)}
    assert all(any(pkg.glob(g)) for g in globs), "a package-data glob matches nothing"
    data_files = {f for f in pkg.rglob("*") if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts}
    assert data_files == declared, sorted(str(f.relative_to(pkg)) for f in data_files ^ declared)
    assert {f.name for f in (pkg / "render" / "templates").iterdir()} >= {"report.css", "mislabels.js", "base.html.j2"}
