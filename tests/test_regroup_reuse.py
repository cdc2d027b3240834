"""A rebuild whose grouping inputs did not change keeps the grouping; it is never another than a full regrouping's.

Real photos (scikit-image) with planted copies — mirror, central crop, off-centre crop, grayscale — and
quadrants of another photo (same scenery, not copies). A build with nothing new says whose groups it kept
(``grouping_reused``) and leaves the catalog exactly as a full regrouping leaves it (the recorded fingerprint
dropped: the next build regroups from scratch and must change nothing). A new image, a changed dedup setting and a
review decision each regroup.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import photo_quadrant, run_cli, skimage_photo
from PIL import Image

from dsbuild.catalog import Catalog
from dsbuild.dedup import reuse
from dsbuild.manifest import load_manifest

PHOTOS = {"a": ("astronaut", "coffee"), "b": ("chelsea", "rocket")}
STATE = ("image_id", "status", "reason", "dup_group", "dup_of", "dup_distance", "conflict", "split", "quality_flags",
         "q_odd_size", "outlier_score", "is_outlier", "label")


def _copies(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    dx, dy = round(w * 0.1), round(h * 0.1)
    return {"flip": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            "crop80": img.crop((dx, dy, w - dx, h - dy)),
            "offcrop": img.crop((round(w * 0.25), round(h * 0.05), w, round(h * 0.8))),
            "gray": img.convert("L")}


def _make(root: Path, manifest_extra: str = "") -> Path:
    for label, names in PHOTOS.items():
        folder = root / "photos" / label
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            img = skimage_photo(name).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
            img.save(folder / f"{name}.png")
            for var, copy in _copies(img).items():
                copy.save(folder / f"{name}_{var}.jpg", quality=92)
    for k in range(4):  # the same scenery, no copies of each other
        photo_quadrant("coins", k).save(root / "photos" / "b" / f"coins_q{k}.png")
    manifest = root / "datasets.toml"
    manifest.write_text('[datasets.photos]\nclasses = { a = { folders = ["photos/a"] }, b = { folders = ["photos/b"] } }\n'
                        + manifest_extra)
    return manifest


def _build(manifest: Path):
    from dsbuild.pipeline import build

    return build(load_manifest(manifest), workers=1).datasets[0]


def _state(manifest: Path):
    m = load_manifest(manifest)
    with Catalog.open_readonly(m.catalog) as cat:
        items = cat.df(f"SELECT {', '.join(STATE)} FROM images WHERE dataset = 'photos' ORDER BY image_id")
        knn = cat.df("SELECT * FROM neighbours WHERE dataset = 'photos' ORDER BY ALL")
    return items.astype(object).where(items.notna(), None), knn.astype(object).where(knn.notna(), None)


def _full_regroup(manifest: Path):
    """The same catalog regrouped from scratch (the recorded fingerprint dropped): the build's summary and state."""
    m = load_manifest(manifest)
    with Catalog.open(m.catalog) as cat:
        reuse.forget(cat, "photos")
    summary = _build(manifest)
    assert summary.grouping_reused == ""
    return summary, _state(manifest)


def _same(a, b) -> None:
    assert a[0].equals(b[0]), "items differ from a full regrouping"
    assert a[1].equals(b[1]), "neighbours differ from a full regrouping"


def _counts(s) -> tuple:
    return s.duplicates, s.dup_groups, s.near_pairs, s.conflicts, dict(s.splits)


def _reused_now(manifest: Path):
    """Build until the grouping is reused (the first build records, the next reuses); the reusing build's summary."""
    _build(manifest)
    again = _build(manifest)
    assert again.grouping_reused.startswith("build "), "a rebuild with nothing new regrouped"
    assert again.up_to_date and again.changed == 0
    return again


def test_a_rebuild_with_nothing_new_reuses_the_groups_and_equals_a_full_regrouping(tmp_path):
    manifest = _make(tmp_path)
    first = _build(manifest)
    assert first.duplicates >= 8  # the planted copies are grouped (with the grayscale ones: 16)
    reused = _reused_now(manifest)
    state = _state(manifest)
    groups = state[0].dropna(subset=["dup_group"]).groupby("dup_group")["image_id"].count()
    assert len(groups) == 4 and _counts(reused)[:2] == (first.duplicates, first.dup_groups)
    full, full_state = _full_regroup(manifest)
    assert full.changed == 0  # a full regrouping writes nothing new: the catalog was what it computes
    assert _counts(full) == _counts(reused)
    _same(state, full_state)
    from dsbuild.render.console import up_to_date_line

    # the line a user reads is the catalog's numbers, as before the reuse (test_crawl asserts it whole)
    assert up_to_date_line(reused).startswith(f"photos: up to date — {sum(reused.splits.values())} accepted images")


def test_embed_with_nothing_new_says_whose_groups_it_kept(tmp_path, capsys):
    manifest = _make(tmp_path)
    reused = _reused_now(manifest)
    state = _state(manifest)
    code, out, err = run_cli(capsys, manifest, "embed", "photos")
    assert code == 0, err
    assert f"{reused.duplicates} duplicates in {reused.dup_groups} groups" in out
    assert f"as {reused.grouping_reused} grouped them (nothing they depend on changed)" in out
    _same(_state(manifest), state)


def test_a_new_copy_regroups_and_joins_its_photo(tmp_path):
    manifest = _make(tmp_path)
    _reused_now(manifest)
    img = skimage_photo("coffee").convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    img.crop((13, 13, 243, 243)).save(tmp_path / "photos" / "a" / "coffee_new_crop.jpg", quality=80)
    after = _build(manifest)
    assert after.grouping_reused == "" and after.new == 1
    items, _ = _state(manifest)
    row = items[items["image_id"].isin(_ids_of(manifest, "coffee_new_crop.jpg"))].iloc[0]
    coffee = items[items["image_id"].isin(_ids_of(manifest, "coffee.png"))].iloc[0]
    assert row["dup_group"] is not None and row["dup_group"] == coffee["dup_group"]
    state = _state(manifest)
    full, full_state = _full_regroup(manifest)
    assert full.changed == 0
    _same(state, full_state)


def _ids_of(manifest: Path, filename: str) -> list[str]:
    m = load_manifest(manifest)
    with Catalog.open_readonly(m.catalog) as cat:
        frame = cat.images("photos")
    return frame.loc[frame["origin"].str.endswith("/" + filename), "image_id"].tolist()


@pytest.mark.parametrize("setting, grouped", [("near = false", False), ("views = false", True)])
def test_a_changed_dedup_setting_regroups(tmp_path, setting, grouped):
    manifest = _make(tmp_path)
    reused = _reused_now(manifest)
    manifest.write_text(manifest.read_text() + f"[datasets.photos.dedup]\n{setting}\n")
    after = _build(manifest)
    assert after.grouping_reused == ""
    if not grouped:
        assert after.duplicates < reused.duplicates  # only the exact copies are left (none here)
    state = _state(manifest)
    full, full_state = _full_regroup(manifest)
    assert full.changed == 0 and _counts(full) == _counts(after)
    _same(state, full_state)


def test_a_review_decision_regroups(tmp_path):
    import dsbuild
    from dsbuild.decisions import Decision

    manifest = _make(tmp_path)
    _reused_now(manifest)
    items, _ = _state(manifest)
    rep = items[items["dup_group"].notna() & (items["status"] == "ok")].iloc[0]
    members = items[items["dup_group"] == rep["dup_group"]]
    m = load_manifest(manifest)
    dsbuild.review(m, "photos", decisions=[Decision(rep["image_id"], "remove")])
    after = _build(manifest)
    assert after.grouping_reused == ""
    items, _ = _state(manifest)
    left = items[items["image_id"].isin(members["image_id"]) & (items["image_id"] != rep["image_id"])]
    assert not (left["dup_of"] == rep["image_id"]).any()  # nothing is a copy of a removed image
    state = _state(manifest)
    full, full_state = _full_regroup(manifest)
    assert full.changed == 0
    _same(state, full_state)
    # Then nothing new: reused again, and still what a full regrouping computes.
    _reused_now(manifest)
    _same(_state(manifest), full_state)


def test_a_relabel_regroups_the_conflicts(tmp_path):
    import dsbuild
    from dsbuild.decisions import Decision

    manifest = _make(tmp_path)
    reused = _reused_now(manifest)
    items, _ = _state(manifest)
    copy = items[(items["status"] == "duplicate") & (items["label"] == "a")].iloc[0]
    dsbuild.review(load_manifest(manifest), "photos", decisions=[Decision(copy["image_id"], "relabel", new_label="b")])
    after = _build(manifest)
    assert after.grouping_reused == "" and after.conflicts == reused.conflicts + 1
    state = _state(manifest)
    full, full_state = _full_regroup(manifest)
    assert full.changed == 0
    _same(state, full_state)
