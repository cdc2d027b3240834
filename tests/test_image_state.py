"""The Python twin of the images view's state columns agrees with the view, on random review sequences.

A review app reads an image's label, status and review state through
``Catalog.current_states`` (item row + events, :mod:`dsbuild.catalog.image_state`) instead of the
``images`` view; both must say the same after any sequence of relabels, removals, keeps and
undos, on ok, duplicate and rejected images. Real catalog, real review path.
"""

from __future__ import annotations

import random
import shutil

import pytest

import dsbuild
from dsbuild.catalog import Catalog
from dsbuild.cycle import review_dataset
from dsbuild.decisions import Decision
from dsbuild.errors import DsbuildError

from ui_data import make_project  # a built digits project with a mislabel run

COLUMNS = ["image_id", "label", "status", "reason", "last_review", "reviewed", "decided"]


def view_states(cat: Catalog, ids: list[str]):
    return cat.df("SELECT image_id, label, status, reason, last_review, reviewed, "
                  "coalesce(last_review IN ('relabel', 'remove', 'keep'), false) AS decided "
                  "FROM images WHERE dataset = 'digits' AND image_id IN (SELECT unnest(?)) ORDER BY image_id", [ids])


def as_rows(df) -> list[tuple]:
    return [tuple(None if v is None or v != v else v for v in r) for r in df[COLUMNS].itertuples(index=False)]


@pytest.mark.parametrize("seed", [0])
def test_current_states_agree_with_the_images_view_on_random_reviews(tmp_path, seed: int) -> None:
    path = make_project(tmp_path)
    # a copy in another class (a duplicate, in a label conflict) and a file that is no image (rejected)
    shutil.copy(next((tmp_path / "data" / "zero").glob("*.png")), tmp_path / "data" / "one" / "copy-of-a-zero.png")
    (tmp_path / "data" / "seven" / "not-an-image.png").write_bytes(b"<html>not a png</html>")
    manifest = dsbuild.load_manifest(path)
    dsbuild.build(manifest, ["digits"], workers=1)
    with Catalog.open_readonly(manifest.catalog) as cat:
        everything = cat.df("SELECT image_id, status FROM images WHERE dataset = 'digits' ORDER BY image_id")
        labels = cat.dataset_labels("digits")
    statuses = set(everything["status"])
    assert "ok" in statuses and statuses - {"ok"}, f"want ok and other statuses among the images, got {statuses}"
    rng = random.Random(seed)
    pool = list(everything["image_id"])
    chosen = rng.sample(pool, 12) + [i for i, s in zip(everything["image_id"], everything["status"]) if s != "ok"][:3]
    applied = refused = 0
    seen: set = set()
    for _ in range(90):
        image_id = rng.choice(chosen)
        action = rng.choice(["relabel", "relabel", "remove", "keep", "undo", "undo"])
        d = Decision(image_id=image_id, action=action,
                     new_label=rng.choice(labels) if action == "relabel" else None)
        try:
            review_dataset(manifest, "digits", decisions=[d], source="test")
            applied += 1
        except DsbuildError:
            refused += 1  # nothing to undo, same label, a rejected image: the review refuses, as it should
        with Catalog.open_readonly(manifest.catalog) as cat:
            states = cat.current_states("digits", chosen)
            assert as_rows(states) == as_rows(view_states(cat, chosen))
        seen |= {(r.status, r.last_review if isinstance(r.last_review, str) else None) for r in states.itertuples()}
    assert applied >= 30 and refused >= 5, (applied, refused)
    # the sequence went through every state the queue shows: kept, relabelled, removed, undone, never reviewed
    assert {("ok", "keep"), ("ok", "relabel"), ("rejected", "remove"), ("ok", None)} <= seen, seen
