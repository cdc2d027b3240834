"""Quality flags through a real build: computed with the dataset's thresholds, shown by status and
``@quality``, rejecting only when the manifest says so; and the catalog migration that added them."""

from __future__ import annotations

import re

from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data as skdata

from dsbuild.catalog import SCHEMA_VERSION, Catalog
from dsbuild.catalog.schema import MIGRATIONS
from dsbuild.cli import main

MANIFEST = """
[datasets.q.classes]
a = {{ folders = "img/a" }}
b = {{ folders = "img/b" }}
{extra}
"""


def make_images(root: Path) -> dict[str, str]:
    """Ten ordinary photo crops per class plus one image per planted problem; returns file name → expected flag."""
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.rocket()]
    for label in ("a", "b"):
        (root / "img" / label).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(20):
        arr = photos[k % len(photos)]
        h, w = arr.shape[:2]
        y, x = rng.integers(0, h - 256), rng.integers(0, w - 256)
        Image.fromarray(arr[y : y + 256, x : x + 256]).resize((160, 160)).save(root / "img" / "ab"[k % 2] / f"p{k}.png")
    def crop(arr) -> Image.Image:  # other photos than the ordinary ones: the planted images are not near duplicates
        return Image.fromarray(arr[:256, :256]).convert("RGB")

    planted = {
        "dark.png": ("dark", crop(skdata.immunohistochemistry()).resize((160, 160)).point(lambda v: v // 12)),
        "blurry.png": ("blurry", crop(skdata.coffee()).resize((160, 160)).filter(ImageFilter.GaussianBlur(8))),
        "gray.png": ("grayscale", crop(skdata.camera()).resize((160, 160))),
        "huge.png": ("odd_size", crop(skdata.retina()[200:, 200:]).resize((1400, 1400))),
    }
    for name, (_, img) in planted.items():
        img.save(root / "img" / "a" / name)
    return {name: flag for name, (flag, _) in planted.items()}


def flags_by_file(catalog: Path) -> dict[str, tuple[str, str, str | None]]:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        rows = con.execute("select origin, status, quality_flags, reason from images").fetchall()
    finally:
        con.close()
    return {Path(o).name: (s, f, r) for o, s, f, r in rows}


def test_flags_are_reported_not_rejected_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted = make_images(tmp_path)
    manifest = tmp_path / "datasets.toml"
    manifest.write_text(MANIFEST.format(extra=""))
    assert main(["-q", "-m", str(manifest), "build"]) == 0
    got = flags_by_file(tmp_path / "catalog" / "dsbuild.duckdb")
    for name, flag in planted.items():
        status, flags, _ = got[name]
        assert status == "ok" and flag in flags.split(","), (name, flags)
    ordinary = [f for n, (_, f, _) in got.items() if n.startswith("p")]
    assert sum(f == "" for f in ordinary) >= 18, ordinary  # real photo crops are mostly clean
    capsys.readouterr()
    assert main(["-m", str(manifest), "status", "q"]) == 0
    out = capsys.readouterr().out
    assert "quality flags on accepted images:" in out and "dark 1" in out and "odd_size 1" in out
    # Trial 3, section 11: the line ended "to reject them set datasets.q.quality.reject" (no value, no example).
    note = " ".join(out[out.index("q: quality flags on accepted images:"):].split())
    flags = re.search(r"quality flags on accepted images: (.*?) — ", note).group(1)
    named = ", ".join(f'"{f.rsplit(" ", 1)[0]}"' for f in flags.split(", "))
    assert note.startswith(f"q: quality flags on accepted images: {flags} — `dsbuild query @quality`; to reject images "
                           f"so flagged, add reject = [{named}] (the flags you want out) under [datasets.q.quality] in "
                           "the manifest and run `dsbuild build q`"), note
    assert main(["-m", str(manifest), "query", "@quality", "--format", "csv"]) == 0
    listed = capsys.readouterr().out
    for name in planted:
        assert any(line.endswith(name) for line in listed.splitlines()), name


def test_reject_setting_turns_a_flag_into_a_reject_and_back(tmp_path: Path) -> None:
    make_images(tmp_path)
    manifest = tmp_path / "datasets.toml"
    manifest.write_text(MANIFEST.format(extra='[datasets.q.quality]\nreject = ["dark", "blurry"]\n'))
    assert main(["-q", "-m", str(manifest), "build"]) == 0
    got = flags_by_file(tmp_path / "catalog" / "dsbuild.duckdb")
    assert got["dark.png"][0::2] == ("rejected", "quality: dark")
    assert got["blurry.png"][0::2] == ("rejected", "quality: blurry")
    assert got["gray.png"][0] == "ok"
    # Settings are read at every build: dropping the reject list accepts them again (nothing was deleted).
    manifest.write_text(MANIFEST.format(extra=""))
    assert main(["-q", "-m", str(manifest), "build"]) == 0
    got = flags_by_file(tmp_path / "catalog" / "dsbuild.duckdb")
    assert got["dark.png"][:2] == ("ok", "dark") and got["blurry.png"][0] == "ok"


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8])
def test_an_older_catalog_is_migrated_in_place(tmp_path: Path, version: int) -> None:
    """Every released schema version (1, 2, 3; 4 and 5 once arch is released) reaches the current one in place, rows kept."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for v in range(1, version + 1):
        for stmt in MIGRATIONS[v]:
            con.execute(stmt)
    con.execute(f"INSERT INTO meta VALUES ('schema_version', '{version}')")
    con.execute("INSERT INTO items (dataset, image_id, origin, source, class_label, status, first_seen, updated_at) "
                "VALUES ('d', 'x1', '/x.png', 'folder', 'a', 'ok', now(), now())")
    con.close()
    assert SCHEMA_VERSION == 9  # 2: quality flags; 3: what verification learned; 4: cleanlab's names (tests/test_rows.py); 5: inputs_digest; 6: train_ids; 7: neighbours of accepted images; 8: leak_with; 9: fetches.noai, fetches.redirects
    with Catalog.open(path) as cat:
        assert cat.get_meta("schema_version") == str(SCHEMA_VERSION)
        rows = cat.df("select image_id, label, quality_flags, q_odd_size, format, warnings, reviewed, last_review, "
                      "leak_with from images").to_dict("records")
        runs = cat.df("select column_name from information_schema.columns where table_name = 'model_runs'")
        fetches = cat.df("select column_name from information_schema.columns where table_name = 'fetches'")
    assert rows[0]["image_id"] == "x1" and rows[0]["label"] == "a"
    assert {"noai", "redirects"} <= set(fetches["column_name"])  # version 9: what a stored download is held to later
    assert rows[0]["quality_flags"] is None
    assert rows[0]["format"] is None and list(rows[0]["warnings"]) == []  # version 3: what verification learned
    assert (rows[0]["reviewed"], rows[0]["last_review"]) == (False, None)
    assert "inputs_digest" in set(runs["column_name"])  # version 5: what a mislabel run scored
    assert "train_ids" in set(runs["column_name"])  # version 6: what a train/retrain run learned from
    assert rows[0]["leak_with"] is None  # version 8: near duplicates kept in different splits (none known yet)
