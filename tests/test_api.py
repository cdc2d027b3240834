"""The public API: small, documented, cheap to import, and the same library the CLI calls."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import dsbuild
from dsbuild.decisions import Decision
from helpers import skimage_photo

API = ("load_manifest", "build", "Catalog", "train", "find_issues", "review", "export", "DsbuildError")


def test_the_api_is_small_and_documented() -> None:
    assert sorted(dsbuild.__all__) == sorted(API)
    for name in API:
        obj = getattr(dsbuild, name)
        assert inspect.getdoc(obj) and len(inspect.getdoc(obj)) > 40, name
    assert inspect.isclass(dsbuild.Catalog) and issubclass(dsbuild.DsbuildError, Exception)


def test_import_dsbuild_is_cheap() -> None:
    code = ("import sys, dsbuild\n"
            "print(sorted(m for m in ('pandas', 'numpy', 'duckdb', 'torch', 'PIL', 'asyncio', 'dsbuild.manifest', "
            "'dsbuild.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_review_export_through_the_api(tmp_path: Path) -> None:
    """The README's lines, minus the model: build, read the catalog, review with Decision objects, export."""
    for label, names in {"cat": ("chelsea", "astronaut"), "cup": ("coffee",)}.items():
        folder = tmp_path / "photos" / label
        folder.mkdir(parents=True)
        for k, name in enumerate(names):
            skimage_photo(name).convert("RGB").resize((96, 64)).save(folder / f"{name}-{k}.jpg")
    (tmp_path / "datasets.toml").write_text(
        '[datasets.pets.classes]\ncat = { folders = "photos/cat" }\ncup = { folders = "photos/cup" }\n'
        "[datasets.pets.split]\ntrain = 0.5\nvalid = 0.5\n")
    manifest = dsbuild.load_manifest(tmp_path / "datasets.toml")
    summary = dsbuild.build(manifest, ["pets"], workers=1)
    assert summary.datasets[0].ok == 3
    with dsbuild.Catalog.open_readonly(manifest.catalog) as cat:
        images = cat.images("pets", statuses=("ok",)).set_index("origin")
    chelsea = images.loc[str((tmp_path / "photos/cat/chelsea-0.jpg").resolve()), "image_id"]
    coffee = images.loc[str((tmp_path / "photos/cup/coffee-0.jpg").resolve()), "image_id"]
    with pytest.raises(dsbuild.DsbuildError, match=r"decision 1 \(image .*\): unknown label 'kat' \(did you mean 'cat'\?\)"):
        dsbuild.review(manifest, "pets", decisions=[Decision(image_id=chelsea, action="relabel", new_label="kat")])
    done = dsbuild.review(manifest, "pets", decisions=[Decision(image_id=coffee, action="relabel", new_label="cat"),
                                                        Decision(image_id=chelsea, action="keep")])
    assert (done.applied, done.by_action, done.source) == (2, {"relabel": 1, "keep": 1}, "review:api")
    out = dsbuild.export(manifest, "pets", tmp_path / "out", fmt="csv")
    assert out.images == 3 and (tmp_path / "out" / "pets.csv").read_text().count(",cat,") == 3



def test_the_readme_example_is_the_docstring_example_and_compiles() -> None:
    import re
    import textwrap

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## From Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
    doc = re.search(r"::\n\n(.*?)\n\n(?=\S)", dsbuild.__doc__, re.S).group(1)
    assert block.strip() == textwrap.dedent(doc).strip()
    assert len(block.strip().splitlines()) <= 10
    compile(block, "README.md", "exec")
