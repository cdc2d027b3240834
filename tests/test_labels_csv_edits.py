"""A user who owns a labels CSV edits it between builds (fresh-user trial 11).

The reviewed labels written back into the CSV (H1): the same files, their labels now the ones a person chose —
each stays decided by that person, so ``--accept-suggestions`` does not overrule them. Real photos
(``skimage.data`` quadrants), real DuckDB catalogs, the CLI in-process.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import photo_quadrant, run_cli, sql

from dsbuild.catalog import Catalog
from dsbuild.decisions import standing_decisions
from dsbuild.manifest import load_manifest

pytestmark = pytest.mark.usefixtures("wide_terminal")

NAMES = ("chelsea", "astronaut", "coffee")


def flat(text: str) -> str:
    return " ".join(text.split())


def project(tmp_path: Path, labels: dict[str, str]) -> Path:
    """``data/labels.csv`` giving each file of ``labels`` (``images/<name>``) its label, and the manifest of
    dataset ``photos`` over it (no embeddings); the manifest's path. Files are written once."""
    data = tmp_path / "data"
    for i, name in enumerate(labels):
        path = data / "images" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            photo_quadrant(NAMES[i // 4 % len(NAMES)], i % 4, 96).save(path)
    (data / "labels.csv").write_text("file,label\n" + "".join(f"images/{n},{lb}\n" for n, lb in labels.items()))
    m = tmp_path / "datasets.toml"
    m.write_text('[datasets.photos]\nlabels_csv = "data/labels.csv"\n[datasets.photos.dedup]\nsemantic = false\n')
    return m


def ids(m: Path) -> dict[str, str]:
    """file name → image_id of the items not set aside."""
    rows = sql(m, "select origin, image_id from images where reason is distinct from 'source removed'")
    return {Path(o).name: i for o, i in rows}


def test_reviewed_labels_written_back_into_the_csv_stay_a_persons_decisions(tmp_path: Path, capsys) -> None:
    """H1: after copying the reviewed labels into labels.csv and building again, the relabelled images lost their
    "decided by a person" standing (no event was written, though the build counted them as kept decisions), and a
    later --accept-suggestions overruled the person. Now the decision is carried as a keep noted so, and it is
    still traced as the person's relabel."""
    labels = {f"IMG_{i:04d}.png": ("cat" if i < 4 else "dog") for i in range(8)}
    m = project(tmp_path, labels)
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    before = ids(m)
    dec = tmp_path / "decisions1.csv"
    dec.write_text(f"image_id,action,new_label\n{before['IMG_0000.png']},relabel,dog\n"
                   f"{before['IMG_0005.png']},relabel,cat\n{before['IMG_0001.png']},keep,\n")
    code, out, err = run_cli(capsys, m, "review", "photos", "--decisions", str(dec))
    assert code == 0, err

    labels.update({"IMG_0000.png": "dog", "IMG_0005.png": "cat"})  # the reviewed labels, written back
    project(tmp_path, labels)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    after = ids(m)
    with Catalog.open_readonly(load_manifest(m).catalog) as cat:
        standing = standing_decisions(cat.label_history("photos"))
    for name, label in (("IMG_0000.png", "dog"), ("IMG_0005.png", "cat")):
        new = after[name]
        assert new != before[name]
        assert sql(m, "select label, reviewed from images where image_id = ?", [new]) == [(label, True)]
        assert standing[new].by_person and standing[new].action == "relabel", standing.get(new)
        assert standing[new].source == "review:decisions1.csv"
        assert standing[new].words().startswith("relabelled by a person")
    assert after["IMG_0001.png"] == before["IMG_0001.png"]  # untouched row: its own keep stands
    # The build's words count what it wrote: one event per decision it says it kept.
    events = sql(m, "select count(*) from label_history where source like 'build:%'")[0][0]
    assert events == 2
    assert "2 review decisions" in flat(out), out
    assert ("2 images relabelled in review have that label in the labels CSV now: their relabel stands as the "
            "review decision it was (carried as a keep") in flat(out), out


@pytest.mark.parametrize("copy", ["IMG_0011 (copy).png", "IMG_0011 - Copy.png", "IMG_0011(1).png", "IMG_0011 copy 2.png",
                                  "Copy of IMG_0011.png"])
def test_of_two_byte_identical_files_the_one_without_a_copy_marker_represents_them(tmp_path: Path, capsys,
                                                                                    copy: str) -> None:
    """L1: of IMG_0011.png and its byte copy "IMG_0011 (copy).png" (same label), the original was marked the
    duplicate (' ' sorts before '.'), so a user deleting the files marked duplicate deleted the original name."""
    labels = {f"IMG_{i:04d}.png": ("cat" if i < 14 else "dog") for i in range(10, 18)}
    m = project(tmp_path, labels)
    images = tmp_path / "data" / "images"
    (images / copy).write_bytes((images / "IMG_0011.png").read_bytes())
    rows = (tmp_path / "data" / "labels.csv").read_text().splitlines()
    # the copy listed first, as a file manager's sort puts it: the order of rows must not decide either
    (tmp_path / "data" / "labels.csv").write_text("\n".join([rows[0], f"images/{copy},cat", *rows[1:]]) + "\n")
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    got = {Path(o).name: (s, r) for o, s, r in sql(m, "select origin, status, reason from images "
                                                   "where origin like '%IMG_0011%'")}
    assert got == {"IMG_0011.png": ("ok", None), copy: ("duplicate", "exact duplicate")}, got


def test_copy_markers_are_told_from_names_that_merely_contain_copy() -> None:
    from dsbuild.dedup.grouping import is_copy_name

    marked = ["a/IMG_1 (copy).jpg", "IMG_1 - Copy.jpg", "IMG_1 - Copy (2).jpg", "IMG_1 copy.jpg", "IMG_1_copy.jpg",
              "IMG_1(1).jpg", "IMG_1 (12).jpg", "IMG_1 [1].jpg", "Copy of IMG_1.jpg", "https://x.org/p/IMG_1%20(1).jpg"]
    plain = ["IMG_1.jpg", "copyright.jpg", "photocopy.jpg", "IMG_2021.jpg", "scan_0020.png", "copy/IMG_1.jpg", ".hidden"]
    assert [n for n in marked if not is_copy_name(n)] == []
    assert [n for n in plain if is_copy_name(n)] == []


def test_a_conflict_row_never_offers_the_label_a_copy_already_has() -> None:
    """M5: of two byte copies (airplane, wrong; cat, right), the cat copy got the row "conflict cat → cat" whose
    relabel review refused. The copy that has the suggested label gets no row; the airplane copy's row says
    airplane → cat (or its label flag does, when it has one)."""
    import numpy as np
    import pandas as pd

    from dsbuild.issues.conflict import find_conflict_issues
    from dsbuild.model.oof import OOFResult

    members = pd.DataFrame({"image_id": ["a1", "c1"], "dup_group": ["g-a1", "g-a1"], "label": ["airplane", "cat"],
                            "status": ["ok", "duplicate"], "sha256": ["s", "s"]})
    oof = OOFResult(image_ids=("a1",), labels=("airplane",), classes=("airplane", "cat"),
                    pred_probs=np.array([[0.118, 0.882]]), fold=np.array([0]), trained_on=(frozenset(),),
                    method="kfold", fold_accuracy=(1.0,), duration_s=0.0)
    none = pd.DataFrame(columns=["image_id", "is_issue", "rank"])
    rows = find_conflict_issues(members, none, oof)
    assert list(zip(rows["image_id"], rows["given_label"], rows["suggested_label"])) == [("a1", "airplane", "cat")]
    flagged = pd.DataFrame({"image_id": ["a1"], "is_issue": [True], "rank": [27]})  # the label finder's flag
    assert find_conflict_issues(members, flagged, oof).empty  # not "cat → cat" on the copy that is right
    assert (rows["given_label"] != rows["suggested_label"]).all()


def test_a_relabel_row_to_the_label_an_image_has_is_applied_as_a_keep_not_a_refusal(tmp_path: Path, capsys) -> None:
    """M5: a decisions row "relabel → cat" on an image labelled cat refused the whole file ("already has label 'cat'
    — use keep"); every other decision in it was lost. It confirms the label: a keep, named in the summary."""
    labels = {f"IMG_{i:04d}.png": ("cat" if i < 4 else "dog") for i in range(8)}
    m = project(tmp_path, labels)
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    i = ids(m)
    dec = tmp_path / "dec.csv"
    dec.write_text(f"image_id,action,new_label,note\n{i['IMG_0001.png']},relabel,cat,looked twice\n"
                   f"{i['IMG_0005.png']},relabel,cat,\n")
    code, out, err = run_cli(capsys, m, "review", "photos", "--decisions", str(dec))
    assert code == 0, err
    assert "applied 2 decisions to 'photos' (keep 1, relabel 1)" in flat(out), out
    assert (f"1 relabel row named the label its image has already (line 2: image {i['IMG_0001.png']} has label 'cat'): "
            "applied as a keep") in flat(out + err), out + err
    assert sql(m, "select action, note from label_history where image_id = ?", [i["IMG_0001.png"]]) == [
        ("keep", "relabel to the label it has, applied as a keep; looked twice")]
    code, out, err = run_cli(capsys, m, "review", "photos", "--decisions", str(dec))  # run again: nothing new
    assert code == 0 and "2 already applied" in flat(out), out + err


def test_labels_that_differ_only_in_case_are_named_with_every_row_and_how_to_fix_them(tmp_path: Path, capsys) -> None:
    """M3: 'Cat' in 5 rows beside 'cat' blocked the build naming one line per spelling; the user learnt neither how
    many rows nor which. Now each spelling's count and lines (the first 10, then how many more) and the fix."""
    labels = {f"IMG_{i:04d}.png": ("cat" if i < 20 else "dog") for i in range(28)}
    for i in (3, 5, 7, 9, 11):
        labels[f"IMG_{i:04d}.png"] = "Cat"
    m = project(tmp_path, labels)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 2, out + err
    assert ("datasets.photos: class names 'cat' and 'Cat' are one name to a case-insensitive file system (macOS, "
            "Windows): they differ only in case ('cat': 15 rows of labels.csv, lines 2, 3, 4, 6, 8, 10, 12, 14, 15, 16, "
            "… (5 more); 'Cat': 5 rows of labels.csv, lines 5, 7, 9, 11, 13) — if they are one class, give every row of "
            "labels.csv one spelling (change the 5 rows of 'Cat' to 'cat') and build again — dsbuild does not merge "
            "spellings that differ in case, and the manifest has no setting that does; if they are two classes, rename "
            "one so that the names differ by more than case") in flat(err), err


def test_labels_corrected_in_the_csv_read_as_label_changes_not_rejections(tmp_path: Path, capsys) -> None:
    """M4: after correcting 2 labels in labels.csv the build said "rejected 2", "2 images set aside because their
    source left the manifest" and "under a renamed, merged or split class" — though no image was lost. It says the
    labels changed in labels.csv; a row really gone is still named as set aside."""
    labels = {f"IMG_{i:04d}.png": ("cat" if i < 4 else "dog") for i in range(8)}
    m = project(tmp_path, labels)
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    labels.update({"IMG_0000.png": "dog", "IMG_0005.png": "cat"})
    project(tmp_path, labels)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    text = flat(out)
    assert ("photos: 2 images given another label in labels.csv (images of class 'cat' now under 'dog'; images of "
            "class 'dog' now under 'cat'; the same files, their earlier rows kept in the catalog as 'source removed') "
            "kept their split") in text, out
    for alarm in ("renamed, merged or split", "set aside because", "source removed 2"):
        assert alarm not in text, out
    row = re.search(r"│ photos\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│", out)
    assert row is not None and row.group(4) == "0", out  # the table's rejected column
    assert sql(m, "select count(*) from images where status = 'ok'") == [(8,)]
    code, out, err = run_cli(capsys, m, "status")
    assert code == 0, err
    assert ("photos: 2 of the 2 rejected rows with reason 'source removed' are earlier rows of files still in the "
            "dataset under another label (a label changed in the source, or a class renamed, merged or split) — no "
            "image is missing for them") in flat(out), out

    del labels["IMG_0007.png"]  # a row taken out: that one is set aside, and said so
    labels["IMG_0001.png"] = "dog"
    project(tmp_path, labels)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert "1 image set aside because its source left the manifest" in flat(out), out
    assert "1 image given another label in labels.csv" in flat(out), out
    code, out, err = run_cli(capsys, m, "status")
    assert ("photos: 3 of the 4 rejected rows with reason 'source removed' are earlier rows of files still in the "
            "dataset under another label (a label changed in the source, or a class renamed, merged or split) — no "
            "image is missing for them; the other 1 left the manifest") in flat(out), out


def test_a_decisions_file_names_images_by_the_path_its_labels_csv_gives(tmp_path: Path, capsys, monkeypatch) -> None:
    """M6: a decisions row naming `images/IMG_0050.jpg` — the path as the user's labels.csv writes it — was refused
    ("no image of this dataset has path … — check the path or use image_id"). It names that image, as does the file's
    name alone when no other file has it; a path that names nothing says which forms are accepted, with an example."""
    labels = {f"IMG_{i:04d}.png": ("cat" if i < 4 else "dog") for i in range(8)}
    m = project(tmp_path, labels)
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    i = ids(m)
    elsewhere = tmp_path / "reviews"  # neither beside the CSV nor the working folder
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    dec = elsewhere / "dec.csv"
    dec.write_text("path,action,new_label\nimages/IMG_0000.png,relabel,dog\nIMG_0005.png,remove,\n")
    code, out, err = run_cli(capsys, m, "review", "photos", "--decisions", str(dec))
    assert code == 0, err
    assert sql(m, "select image_id, action from label_history order by event_id") == [
        (i["IMG_0000.png"], "relabel"), (i["IMG_0005.png"], "remove")]

    dec.write_text("path,action,new_label\nimages/IMG_9999.png,keep,\n")
    code, out, err = run_cli(capsys, m, "review", "photos", "--decisions", str(dec))
    assert code == 2
    first = min(i.values())  # the example: the dataset's first image by id
    name = next(k for k, v in i.items() if v == first)
    origin = tmp_path / "data" / "images" / name
    assert (f"line 2: no image of this dataset has path 'images/IMG_9999.png' — name an image by image_id ({first}), "
            f"or by path: as your labels CSV or folder gives it (images/{name}), the file's full path ({origin}), or "
            f"its name alone ({name}) when no other file has it") in flat(err), err


def test_accept_suggestions_after_the_csv_sync_does_not_overrule_the_person(tmp_path: Path, capsys) -> None:
    """H1, the consequence: after the reviewed labels were written back into labels.csv and built, a later
    `review --accept-suggestions` relabelled a person's correct relabel (IMG_0945 airplane → ship). The run here is
    recorded with the catalog's own writers (as tests/ui_data.py does): one confident suggestion against the image a
    person relabelled, one against an image nobody reviewed."""
    import pandas as pd

    from dsbuild.catalog import BuildLock
    from dsbuild.cycle import new_run_id

    labels = {f"IMG_{i:04d}.png": ("cat" if i < 4 else "dog") for i in range(8)}
    m = project(tmp_path, labels)
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    before = ids(m)
    dec = tmp_path / "decisions1.csv"
    dec.write_text(f"image_id,action,new_label\n{before['IMG_0000.png']},relabel,dog\n")
    assert run_cli(capsys, m, "review", "photos", "--decisions", str(dec))[0] == 0
    labels["IMG_0000.png"] = "dog"
    project(tmp_path, labels)
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    after = ids(m)
    person, nobody = after["IMG_0000.png"], after["IMG_0006.png"]

    catalog = load_manifest(m).catalog
    run_id = new_run_id("photos", "mislabels")
    with BuildLock(catalog), Catalog.open(catalog) as cat:
        cat.start_run(run_id=run_id, dataset="photos", kind="mislabels", arch="sklearn-logreg", params={"folds": 3})
        cat.insert_issue_rows(run_id, "photos", pd.DataFrame([
            {"image_id": i, "kind": "label", "given_label": "dog", "suggested_label": "cat", "label_quality": 0.01,
             "suggested_confidence": 0.97, "is_issue": True, "rank": k + 1, "outlier_score": 0.5}
            for k, i in enumerate((person, nobody))]))
        cat.finish_run(run_id, n_train=8, n_valid=0, accuracy=0.75, error_rate=0.25, duration_s=1.0,
                       confusion={"classes": ["cat", "dog"], "matrix": [[4, 0], [2, 2]]})
    code, out, err = run_cli(capsys, m, "review", "photos", "--accept-suggestions")
    assert code == 0, err
    assert "applied 1 decision to 'photos' (relabel 1)" in flat(out), out
    assert "skipped 1 image whose standing decision is a person's" in flat(out), out
    assert sql(m, "select label from images where image_id = ?", [person]) == [("dog",)]  # the person's label stands
    assert sql(m, "select label from images where image_id = ?", [nobody]) == [("cat",)]
