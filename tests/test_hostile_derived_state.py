"""State derived from labels agrees with the label events right after every review and undo.

Kind of fault (issue 11, kind 10): relabelling one image of a cross-label
duplicate pair emptied the ``conflicts`` view at once, but ``images.conflict``
stayed true until the next build. Every column derived from labels must agree
with the events immediately after any ``review`` (relabel, remove, keep, undo).

Inputs: real photos in two classes, three exact copies across the classes (three
label conflicts) and one within a class; after a build, a sequence of decision
files (keyed by ``image_id``) applied one by one; after each step the
``images.conflict`` column is compared with the ``conflicts`` view and with a
recount from the current labels.
"""

from __future__ import annotations

import pytest

from hostile_kit import Project, encode, photo


def _consistent(proj: Project) -> dict[str, bool]:
    """Check images.conflict against the conflicts view and against the current labels; return it by file name."""
    rows = proj.rows("SELECT image_id, origin, label, status, dup_group, conflict FROM images WHERE dataset = ?", proj.dataset)
    view = {r["dup_group"] for r in proj.rows("SELECT dup_group FROM conflicts WHERE dataset = ?", proj.dataset)}
    labels: dict[str, set] = {}
    for r in rows:
        if r["dup_group"] and r["status"] in ("ok", "duplicate"):
            labels.setdefault(r["dup_group"], set()).add(r["label"])
    for r in rows:
        expected = bool(r["dup_group"]) and len(labels.get(r["dup_group"], ())) > 1
        assert bool(r["conflict"]) == expected, r
        assert (r["dup_group"] in view) == expected or not r["dup_group"], r
    return {r["origin"].rsplit("/", 2)[-2] + "/" + r["origin"].rsplit("/", 1)[-1]: bool(r["conflict"]) for r in rows}


@pytest.fixture()
def proj(tmp_path) -> Project:
    p = Project(tmp_path)
    for i, n in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        p.add("a", f"{i:08d}.jpg", encode(photo(n), "JPEG"))
    for i, n in enumerate(("camera", "coins", "moon", "clock")):
        p.add("b", f"{i:08d}.jpg", encode(photo(n), "JPEG"))
    for k, n in enumerate(("astronaut", "coffee", "chelsea")):  # b/0000001k.jpg = a/0000000k.jpg: three conflicts
        p.add("b", f"{10 + k:08d}.jpg", encode(photo(n), "JPEG"))
    p.add("a", "00000020.jpg", encode(photo("rocket"), "JPEG"))  # a copy within class a: no conflict
    assert p.build()[0] == 0
    return p


def _review(proj: Project, tmp_path, rows: list[tuple[str, str, str]]) -> None:
    ids = {r["origin"].rsplit("/", 2)[-2] + "/" + r["origin"].rsplit("/", 1)[-1]: r["image_id"]
           for r in proj.rows("SELECT image_id, origin FROM images")}
    path = tmp_path / f"decisions-{len(list(tmp_path.glob('decisions-*')))}.csv"
    path.write_text("image_id,action,new_label\n" + "".join(f"{ids[n]},{a},{lbl}\n" for n, a, lbl in rows))
    code, out, err = proj.cli("review", proj.dataset, "--decisions", str(path))
    assert code == 0, out + err


def test_conflict_flags_follow_every_review_step(proj, tmp_path) -> None:
    flags = _consistent(proj)
    assert sorted(k for k, v in flags.items() if v) == sorted(["a/00000000.jpg", "a/00000001.jpg", "a/00000002.jpg",
                                                                "b/00000010.jpg", "b/00000011.jpg", "b/00000012.jpg"])

    _review(proj, tmp_path, [("b/00000010.jpg", "relabel", "a")])  # conflict 0 resolved by a relabel
    flags = _consistent(proj)
    assert not flags["a/00000000.jpg"] and not flags["b/00000010.jpg"]
    assert flags["a/00000001.jpg"] and flags["b/00000011.jpg"]

    _review(proj, tmp_path, [("b/00000011.jpg", "remove", "")])  # conflict 1 resolved by a removal
    flags = _consistent(proj)
    assert not flags["a/00000001.jpg"] and not flags["b/00000011.jpg"]

    _review(proj, tmp_path, [("a/00000003.jpg", "relabel", "b")])  # a new conflict inside the within-class pair
    flags = _consistent(proj)
    assert flags["a/00000003.jpg"] and flags["a/00000020.jpg"]

    _review(proj, tmp_path, [("b/00000010.jpg", "undo", ""), ("b/00000011.jpg", "undo", ""),
                             ("a/00000003.jpg", "undo", "")])  # back to the build's labels
    flags = _consistent(proj)
    assert sorted(k for k, v in flags.items() if v) == sorted(["a/00000000.jpg", "a/00000001.jpg", "a/00000002.jpg",
                                                                "b/00000010.jpg", "b/00000011.jpg", "b/00000012.jpg"])


def test_a_rebuild_after_review_keeps_the_same_flags(proj, tmp_path) -> None:
    _review(proj, tmp_path, [("b/00000010.jpg", "relabel", "a"), ("b/00000012.jpg", "keep", "b")])
    before = _consistent(proj)
    assert proj.build()[0] == 0
    assert _consistent(proj) == before
