"""Review decisions: decision files (good and bad), suggestions, label events and undo."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data as skdata

from dsbuild.errors import DsbuildError
from dsbuild.render.tables import render_table
from dsbuild.decisions import Decision, decisions_from_suggestions, parse_decisions, plan_events

LABELS = ["cat", "cup", "person", "rocket"]
ASTRO, COFFEE, CAT, ROCKET1, ROCKET2, FAILED, REMOVED = (
    "a57f0c1e9b2d4401", "c0ffee00c0ffee02", "ca7ca7ca7ca7ca03", "70c3e7000000aa04", "70c3e7000000bb05",
    "fa11ed0000000006", "5e3040e000000007",
)
AT = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos (skimage.data) as a content store plus the source folders they were imported from."""
    root = tmp_path_factory.mktemp("photos")
    for sub in ("store", "src/person", "src/cat"):
        (root / sub).mkdir(parents=True)
    shots = {"astro": skdata.astronaut(), "coffee": skdata.coffee(), "cat": skdata.chelsea(), "rocket": skdata.rocket(),
             "camera": skdata.camera()}
    for name, arr in shots.items():
        img = Image.fromarray(arr).resize((96, 96))
        img.save(root / "store" / f"{name}.jpg", quality=85)
    Image.open(root / "store" / "astro.jpg").save(root / "src/person/astronaut.jpg")
    Image.open(root / "store" / "cat.jpg").save(root / "src/cat/chelsea.png")
    return root


@pytest.fixture()
def images(photos: Path) -> pd.DataFrame:
    """Catalog rows (images view) of one dataset; the rocket's bytes are two images under two labels."""
    s = photos / "store"
    return pd.DataFrame([
        (ASTRO, str(s / "astro.jpg"), str(photos / "src/person/astronaut.jpg"), "person", "ok", None),
        (COFFEE, str(s / "coffee.jpg"), "https://example.org/coffee.jpg", "cup", "ok", None),
        (CAT, str(s / "cat.jpg"), str(photos / "src/cat/chelsea.png"), "cat", "duplicate", None),
        (ROCKET1, str(s / "rocket.jpg"), "https://a.example/rocket.jpg", "rocket", "ok", None),
        (ROCKET2, str(s / "rocket.jpg"), "https://b.example/rocket.jpg", "person", "ok", None),
        (FAILED, None, "https://c.example/broken.jpg", "cat", "failed", "http 404"),
        (REMOVED, str(s / "camera.jpg"), "https://d.example/camera.jpg", "cup", "rejected", "removed in review"),
    ], columns=["image_id", "path", "origin", "label", "status", "reason"])


def write(folder: Path, content: str | bytes, name: str = "decisions.csv") -> Path:
    path = folder / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def problems(path: Path, *lines: str) -> str:
    n = len(lines)
    head = (f"decisions file {path} has {n} problem{'s' if n != 1 else ''}; nothing was applied — "
            f"fix {'them' if n != 1 else 'it'} and run again:")
    return "\n".join([head, *(f"  {line}" for line in lines)])


SAVE_AS = "save it as 'CSV UTF-8' (comma- or semicolon-separated text)"
EMPTY = "is empty — it needs a header (image_id,action,new_label,note) and one row per decision"
H = "image_id,action,new_label,note\n"

# (case id, file content, expected message; {p} is the file's path)
BAD_FILES = [
    ("empty", b"", f"decisions file {{p}} {EMPTY}"),
    ("blank", b"\n \r\n", f"decisions file {{p}} {EMPTY}"),
    ("nul-bytes", b"image_id,action\x00\x01\x02", f"decisions file {{p}} is binary (it contains NUL bytes), not a CSV — {SAVE_AS}"),
    ("png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, f"decisions file {{p}} is a PNG image, not a CSV — {SAVE_AS}"),
    ("xlsx", b"PK\x03\x04" + b"\x14" * 20, f"decisions file {{p}} is a ZIP file (an .xlsx workbook?), not a CSV — {SAVE_AS}"),
    ("utf16", "image_id,action\n".encode("utf-16"), f"decisions file {{p}} is UTF-16 text — {SAVE_AS}"),
    ("latin1", (H + f"{ASTRO},relabel,cat,café\n").encode("latin-1"),
     f"decisions file {{p}} is not UTF-8 (byte 0xe9 on line 2) — {SAVE_AS}"),
    ("json", b'[{"image_id": "x", "action": "keep"}]',
     "decisions file {p} looks like JSON — review reads CSV; write one with "
     "`dsbuild mislabels DATASET --format csv --out flags.csv` and add an action column"),
    ("no-action-column", "image_id,new_label\nx,cat\n", problems(
        Path("{p}"), "line 1: missing column action; the header is: image_id, new_label "
                     "— expected image_id (or path), action, new_label, note")),
    ("misspelt-columns", "imageid,actoin\nx,keep\n", problems(
        Path("{p}"),
        "line 1: missing column action (is 'actoin' a misspelling of it?); the header is: imageid, actoin "
        "— expected image_id (or path), action, new_label, note",
        "line 1: missing column image_id (or path) (is 'imageid' a misspelling of it?); the header is: imageid, actoin "
        "— expected image_id (or path), action, new_label, note")),
    ("no-header-row", f"{ASTRO},keep\n{COFFEE},relabel,cat\n", problems(
        Path("{p}"), f"line 1: no header row: the first line is a decision ({ASTRO.lower()}, keep) — add the line "
                     "image_id,action,new_label,note above it (or path,action,new_label,note)")),
    ("header-only", H, "decisions file {p} has no decisions — add one row per decision"),
    ("bad-quotes", H + f'{ASTRO},relabel,"cat"x,note\n', problems(
        Path("{p}"), "line 2: malformed CSV (',' expected after '\"') — check the quotes on this line")),
    ("unknown-image-and-label", H + f"deadbeefdeadbeef,keep,,\n{ASTRO},relabel,Cat,\n{COFFEE},relabel,persn,\n"
                                    f"{CAT},relabel,dog,\n", problems(
        Path("{p}"),
        "line 2: unknown image_id 'deadbeefdeadbeef' — not an image of this dataset "
        "(see `dsbuild query \"select image_id, path, label from images\"`)",
        "line 3: unknown label 'Cat' (did you mean 'cat'?) — labels of this dataset: cat, cup, person, rocket",
        "line 4: unknown label 'persn' (did you mean 'person'?) — labels of this dataset: cat, cup, person, rocket",
        "line 5: unknown label 'dog' — labels of this dataset: cat, cup, person, rocket")),
    ("actions", H + f"{ASTRO},delete,,\n{COFFEE},relable,cat,\n{CAT},,,\n", problems(
        Path("{p}"),
        "line 2: unknown action 'delete' — use one of relabel, remove, keep, undo",
        "line 3: unknown action 'relable' (did you mean 'relabel'?) — use one of relabel, remove, keep, undo",
        "line 4: action is empty — use one of relabel, remove, keep, undo")),
    ("new-label-rules", H + f"{ASTRO},relabel,,\n{COFFEE},relabel,cup,\n{CAT},remove,cat,\n{ROCKET1},keep,cat,\n"
                            f"{ROCKET2},undo,cat,\n", problems(
        Path("{p}"),
        "line 2: relabel needs a new_label — one of cat, cup, person, rocket",
        "line 4: new_label 'cat' is only used with relabel — empty it or change the action to relabel",
        "line 5: new_label 'cat' is only used with relabel (keep leaves the label 'rocket') "
        "— empty it or change the action to relabel",
        "line 6: new_label 'cat' is only used with relabel — empty it or change the action to relabel")),
    ("conflicting-duplicates", H + f"{ASTRO},relabel,cat,\n{COFFEE},keep,,\n{ASTRO},remove,,\n{ASTRO},relabel,cat,again\n",
     problems(Path("{p}"), f"line 4: conflicting decisions for image {ASTRO}: line 2 says relabel → 'cat', "
                           "this line says remove — keep one")),
    ("paths", "path,action\n{root}/store/rocket.jpg,keep\nstore/nothing.jpg,keep\n,keep\n", problems(
        Path("{p}"),
        f"line 2: path '{{root}}/store/rocket.jpg' is 2 images ({ROCKET1}, {ROCKET2}) — use image_id to say which",
        f"line 3: no image of this dataset has path 'store/nothing.jpg' — name an image by image_id ({REMOVED}), or by "
        "path: the origin URL (https://d.example/camera.jpg) or the stored file ({root}/store/camera.jpg)",
        "line 4: no image_id or path — every row must name its image")),
    ("path-in-the-image-id-column", H + "/srv/shots/astro.jpg,keep,,\nstore/coffee.jpg,keep,,\n", problems(
        Path("{p}"),
        "line 2: unknown image_id '/srv/shots/astro.jpg' — that is a path, not an image_id: put paths in a column "
        "named path (header: path,action,new_label,note) or give the image_id",
        "line 3: unknown image_id 'store/coffee.jpg' — that is a path, not an image_id: put paths in a column "
        "named path (header: path,action,new_label,note) or give the image_id")),
    ("id-and-path-disagree", f"image_id,path,action\n{ASTRO},{{root}}/store/coffee.jpg,keep\n", problems(
        Path("{p}"), f"line 2: image_id '{ASTRO}' and path '{{root}}/store/coffee.jpg' name different images — fix one of them")),
    ("not-reviewable", H + f"{FAILED},keep,,\n{REMOVED},relabel,cat,\n", problems(
        Path("{p}"),
        f"line 2: image {FAILED} has status 'failed' (http 404) — only ok or duplicate images can be relabelled, kept "
        "or removed",
        f"line 3: image {REMOVED} has status 'rejected' (removed in review) — only ok or duplicate images can be "
        "relabelled, kept or removed; undo brings it back")),
    ("ragged", H + f"{ASTRO},relabel,cat,a note, with a comma\n", problems(
        Path("{p}"), "line 2: 5 fields but the header has 4 (a value with the separator in it must be quoted)")),
    # Every problem of the file at once: all checks of a row run (an unknown action does not hide an unknown
    # image), and two rows for one image that differ are a conflict even when either row has another problem
    # (trial 9: the conflicts were reported only after the other problems were fixed).
    ("every-problem-at-once", H + f"deadbeefdeadbeef,delete,,\n{ASTRO},relabel,Cat,\n{ASTRO},relabel,kitten,\n"
                                  f"{COFFEE},remove,,\n{COFFEE},delete,,\n{ROCKET1},keep,,\n{ROCKET1},keep,,\n", problems(
        Path("{p}"),
        "line 2: unknown action 'delete' — use one of relabel, remove, keep, undo",
        "line 2: unknown image_id 'deadbeefdeadbeef' — not an image of this dataset "
        "(see `dsbuild query \"select image_id, path, label from images\"`)",
        "line 3: unknown label 'Cat' (did you mean 'cat'?) — labels of this dataset: cat, cup, person, rocket",
        "line 4: unknown label 'kitten' — labels of this dataset: cat, cup, person, rocket",
        f"line 4: conflicting decisions for image {ASTRO}: line 3 says relabel → 'Cat', this line says "
        "relabel → 'kitten' — keep one",
        "line 6: unknown action 'delete' — use one of relabel, remove, keep, undo",
        f"line 6: conflicting decisions for image {COFFEE}: line 5 says remove, this line says delete — keep one")),
    ("bad-quotes-after-a-bad-row", H + f'{COFFEE},relabel,kat,\n{ASTRO},relabel,"cat"x,note\n', problems(
        Path("{p}"),
        "line 2: unknown label 'kat' (did you mean 'cat'?) — labels of this dataset: cat, cup, person, rocket",
        "line 3: malformed CSV (',' expected after '\"') — check the quotes on this line")),
    ("multiline-note-then-error", H + f'{ASTRO},relabel,cat,"first line\nsecond line"\n{COFFEE},relabel,kat,\n', problems(
        Path("{p}"), "line 4: unknown label 'kat' (did you mean 'cat'?) — labels of this dataset: cat, cup, person, rocket")),
]


@pytest.mark.parametrize("content,expected", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_decision_files(tmp_path, photos, images, content, expected):
    if isinstance(content, str):
        content = content.replace("{root}", str(photos))
    path = write(photos if "{root}" in expected else tmp_path, content)
    try:
        with pytest.raises(DsbuildError) as err:
            parse_decisions(path, images=images, labels=LABELS)
    finally:
        if path.parent == photos:
            path.unlink()
    assert str(err.value) == expected.replace("{p}", str(path)).replace("{root}", str(photos))
    assert err.value.exit_code == 2


def test_what_applying_would_refuse_is_listed_with_the_files_other_problems(tmp_path, images):
    # An undo with nothing to undo is found when the decisions are planned against the history: parse_decisions
    # (given the history, as review does) lists it with the row problems, not in a second round after them.
    history = pd.DataFrame(columns=["image_id", "action", "old_label", "new_label", "old_status", "new_status",
                                    "source", "changed_at", "event_id"])
    path = write(tmp_path, H + f"{ASTRO},undo,,\n{COFFEE},relabel,kat,\n{CAT},keep,,\n")
    with pytest.raises(DsbuildError) as err:
        parse_decisions(path, images=images, labels=LABELS, history=history)
    assert str(err.value) == problems(
        path,
        f"line 2: nothing to undo for image {ASTRO} — it has no review decision left",
        "line 3: unknown label 'kat' (did you mean 'cat'?) — labels of this dataset: cat, cup, person, rocket")
    fixed = write(tmp_path, H + f"{CAT},keep,,\n", "fixed.csv")
    assert [d.image_id for d in parse_decisions(fixed, images=images, labels=LABELS, history=history)] == [CAT]


def test_problem_list_is_capped(tmp_path, images):
    rows = "".join(f"nope{i:012d},keep,,\n" for i in range(25))
    path = write(tmp_path, H + rows)
    with pytest.raises(DsbuildError) as err:
        parse_decisions(path, images=images, labels=LABELS)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"decisions file {path} has 25 problems; nothing was applied")
    assert len(lines) == 1 + 20 + 1
    assert lines[1].startswith("  line 2: unknown image_id 'nope000000000000'")
    assert lines[20].startswith("  line 21: unknown image_id 'nope000000000019'")
    assert lines[-1] == "  … and 5 more"


def test_dataset_column_must_match(tmp_path, images):
    path = write(tmp_path, f"dataset,image_id,action\nother,{ASTRO},keep\ndemo,{COFFEE},keep\n")
    with pytest.raises(DsbuildError) as err:
        parse_decisions(path, images=images, labels=LABELS, dataset="demo")
    assert str(err.value) == problems(path, "line 2: row is for dataset 'other', not 'demo' — review it with "
                                            "`dsbuild review other ...` or delete the row")


# --------------------------------------------------------------------------- good files


def test_decisions_by_image_id(tmp_path, images):
    path = write(tmp_path, H + f"{ASTRO},relabel,cat,looks like a cat\n{COFFEE},remove,,\n\n{CAT},keep,cat,\n"
                               f"{REMOVED},undo,,\n{ASTRO},relabel,cat,same decision twice counts once\n")
    got = parse_decisions(path, images=images, labels=LABELS)
    assert got == [
        Decision(ASTRO, "relabel", "cat", "looks like a cat"),
        Decision(COFFEE, "remove"),
        Decision(CAT, "keep"),
        Decision(REMOVED, "undo"),
    ]
    assert [d.line for d in got] == [2, 3, 5, 6]


def test_decisions_by_path_stored_or_origin(tmp_path, photos, images):
    sub = photos / "reviews"
    sub.mkdir(exist_ok=True)
    path = write(sub, "path,action,new_label\n"
                      f"{photos}/store/coffee.jpg,relabel,cat\n"        # the stored file, absolute
                      "../src/cat/chelsea.png,relabel,person\n"          # the origin, relative to the CSV's folder
                      f"{photos}/store/../src/person/astronaut.jpg,keep,\n"  # the origin, unnormalised
                      "https://a.example/rocket.jpg,remove,\n")  # an origin URL names one image, though its bytes are two
    got = parse_decisions(path, images=images, labels=LABELS)
    assert got == [Decision(COFFEE, "relabel", "cat"), Decision(CAT, "relabel", "person"), Decision(ASTRO, "keep"),
                   Decision(ROCKET1, "remove")]


def test_excel_csv_with_bom_semicolons_crlf_and_loose_headers(tmp_path, images):
    text = f"Image ID;Action;New Label;Note\r\n{ASTRO};Relabel;cat;\"a; b\"\r\n{COFFEE}; KEEP ;;\r\n"
    path = write(tmp_path, b"\xef\xbb\xbf" + text.encode("utf-8"))
    got = parse_decisions(path, images=images, labels=LABELS)
    assert got == [Decision(ASTRO, "relabel", "cat", "a; b"), Decision(COFFEE, "keep")]


def _issues(images: pd.DataFrame) -> pd.DataFrame:
    """A mislabel run's rows, as ``dsbuild mislabels --format csv`` writes them."""
    rows = images[images["image_id"].isin([ASTRO, COFFEE, CAT, ROCKET1])].copy()
    rows = rows.rename(columns={"label": "given_label"}).drop(columns=["status"])
    rows.insert(0, "dataset", "demo")
    rows["suggested_label"] = ["cat", "person", "rocket", "cup"]
    rows["label_quality"] = [0.02, 0.11, 0.3, 0.45]
    rows["rank"] = [1, 2, 3, 4]
    rows["run_id"] = "demo-mislabels-20240501-120000-ab12"
    rows["kind"] = ["label", "label", "conflict", "label"]
    rows["suggested_confidence"] = [0.97, 0.61, np.nan, 0.52]
    return rows.reset_index(drop=True)


def test_the_mislabels_csv_with_an_action_column_is_a_decisions_file(tmp_path, images):
    report = tmp_path / "flags.csv"
    render_table(_issues(images), "csv", report)
    edited = pd.read_csv(report, dtype=str, keep_default_na=False)
    edited["action"] = ["relabel", "", "keep", "relabel"]
    edited["new_label"] = ["", "", "", "person"]  # a reviewer may override the suggestion
    edited.to_csv(report, index=False)
    got = parse_decisions(report, images=images, labels=LABELS, dataset="demo")
    assert got == [Decision(ASTRO, "relabel", "cat"), Decision(CAT, "keep"), Decision(ROCKET1, "relabel", "person")]


def test_a_stale_report_row_is_refused(tmp_path, images):
    report = tmp_path / "flags.csv"
    render_table(_issues(images), "csv", report)
    edited = pd.read_csv(report, dtype=str, keep_default_na=False)
    edited["action"] = ["relabel", "", "", ""]
    edited.to_csv(report, index=False)
    relabelled = images.assign(label=np.where(images["image_id"] == ASTRO, "cat", images["label"]))
    with pytest.raises(DsbuildError) as err:
        parse_decisions(report, images=relabelled, labels=LABELS)
    assert str(err.value) == problems(
        report, f"line 2: image {ASTRO} is labelled 'cat' now, not 'person' as this row says (its label changed since "
                "the report) — run `dsbuild mislabels` again or delete the row")


def test_a_report_with_no_decision_filled_in(tmp_path, images):
    report = tmp_path / "flags.csv"
    render_table(_issues(images).assign(action=""), "csv", report)
    with pytest.raises(DsbuildError) as err:
        parse_decisions(report, images=images, labels=LABELS)
    assert str(err.value) == (f"decisions file {report} has no decisions — fill the action column "
                              "(relabel, remove, keep, undo) of the rows you decided about")


# --------------------------------------------------------------------------- suggestions


def test_suggestions_above_the_threshold_become_relabels():
    issues = pd.DataFrame({
        "image_id": ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i1"],
        "given_label": ["cat", "cat", "cup", "cup", "rocket", "person", "cat", "cat"],
        "suggested_label": ["cup", "cup", "cup", "cat", "cat", "cat", "cup", "person"],
        "label_quality": [0.01, 0.2, 0.3, 0.05, 0.1, 0.02, 0.04, 0.01],
        "suggested_confidence": [0.95, 0.9, 0.99, 0.89999, np.nan, 0.97, 0.98, 0.96],
        "kind": ["label", "label", "label", "label", "label", "conflict", "label", "label"],
        "current_label": ["cat", "cat", "cup", "cup", "rocket", "person", "cup", "cat"],
    })
    got = decisions_from_suggestions(issues, min_confidence=0.9)
    # i3: suggestion = given; i4: below; i5: no confidence; i6: a conflict (a person decides);
    # i7: relabelled since the run; i1 twice: the more confident suggestion wins.
    assert [(d.image_id, d.new_label) for d in got] == [("i1", "person"), ("i2", "cup")]
    assert got[0] == Decision("i1", "relabel", "person", "suggestion p=0.960, label quality 0.010")
    assert decisions_from_suggestions(issues, min_confidence=1.0) == []


@pytest.mark.parametrize("bad", [0, -0.5, 1.01, float("nan"), "high"])
def test_min_confidence_must_be_in_zero_one(bad):
    issues = pd.DataFrame(columns=["image_id", "given_label", "suggested_label", "suggested_confidence"])
    with pytest.raises(DsbuildError) as err:
        decisions_from_suggestions(issues, min_confidence=bad)
    assert str(err.value) == f"--min-confidence must be in (0, 1], not {bad!r} — e.g. 0.9"


# --------------------------------------------------------------------------- events and undo


def apply_view_rule(base: pd.DataFrame, history: list[dict]) -> dict[str, tuple[str, str]]:
    """image_id → (label, status) as the catalog's ``images`` view computes it: the latest event wins;
    its new_status overrides the build's status of an ok/duplicate image when it is set."""
    state = {r.image_id: (r.label, r.status) for r in base.itertuples()}
    latest = {ev["image_id"]: ev for ev in history}
    for iid, ev in latest.items():
        label, status = state[iid]
        new_status = ev["new_status"] if ev["new_status"] is not None and status in ("ok", "duplicate") else status
        state[iid] = (ev["new_label"] if ev["new_label"] is not None else label, new_status)
    return state


class Ledger:
    """A dataset's build state plus its append-only events, read back the way the catalog reads them."""

    def __init__(self, base: pd.DataFrame) -> None:
        self.base = base[["image_id", "label", "status"]].copy()
        self.events: list[dict] = []

    def current(self) -> pd.DataFrame:
        state = apply_view_rule(self.base, self.events)
        return pd.DataFrame([(i, lab, st) for i, (lab, st) in state.items()], columns=["image_id", "label", "status"])

    def history(self) -> pd.DataFrame:
        df = pd.DataFrame(self.events, columns=["event_id", "image_id", "action", "old_label", "new_label",
                                                "old_status", "new_status", "source", "at", "note"])
        return df.assign(changed_at=df["at"])  # the catalog's name for it

    def review(self, *decisions: Decision, source: str = "review:test.csv", at: datetime = AT,
               last_run_at: datetime | None = None) -> list[dict]:
        planned = plan_events(list(decisions), current=self.current(), history=self.history(), source=source, at=at,
                              last_run_at=last_run_at)
        for ev in planned:
            self.events.append({"event_id": len(self.events) + 1, **ev})
        return planned

    def state(self, image_id: str) -> tuple[str, str]:
        return apply_view_rule(self.base, self.events)[image_id]


def test_events_record_previous_and_new_state(images):
    ledger = Ledger(images)
    events = ledger.review(Decision(ASTRO, "relabel", "cat", "wrong"), Decision(COFFEE, "remove"), Decision(CAT, "keep"))
    common = {"source": "review:test.csv", "at": AT}
    assert events == [
        {"image_id": ASTRO, "action": "relabel", "old_label": "person", "new_label": "cat", "old_status": "ok",
         "new_status": None, "note": "wrong", **common},
        {"image_id": COFFEE, "action": "remove", "old_label": "cup", "new_label": "cup", "old_status": "ok",
         "new_status": "rejected", "note": "removed in review", **common},
        {"image_id": CAT, "action": "keep", "old_label": "cat", "new_label": "cat", "old_status": "duplicate",
         "new_status": None, "note": None, **common},
    ]
    assert ledger.state(ASTRO) == ("cat", "ok")
    assert ledger.state(COFFEE) == ("cup", "rejected")
    assert ledger.state(CAT) == ("cat", "duplicate")  # keep changes nothing but marks the image reviewed


def test_undo_walks_back_through_the_history(images):
    ledger = Ledger(images)
    ledger.review(Decision(ASTRO, "relabel", "cat"))
    ledger.review(Decision(ASTRO, "relabel", "rocket"))
    ledger.review(Decision(ASTRO, "remove"))
    assert ledger.state(ASTRO) == ("rocket", "rejected")
    with pytest.raises(DsbuildError) as err:  # a removed image is only brought back by undo
        ledger.review(Decision(ASTRO, "relabel", "cup"))
    assert "has status 'rejected'" in str(err.value)

    (undo1,) = ledger.review(Decision(ASTRO, "undo", note="removed by mistake"))
    assert undo1["note"] == "undo of event 3 (remove); removed by mistake"
    assert ledger.state(ASTRO) == ("rocket", "ok")
    (undo2,) = ledger.review(Decision(ASTRO, "undo"))
    assert (undo2["old_label"], undo2["new_label"], undo2["note"]) == ("rocket", "cat", "undo of event 2 (relabel cat → rocket)")
    assert ledger.state(ASTRO) == ("cat", "ok")
    ledger.review(Decision(ASTRO, "relabel", "cup"))  # a new decision after undos stacks on what is left
    ledger.review(Decision(ASTRO, "undo"))
    assert ledger.state(ASTRO) == ("cat", "ok")
    ledger.review(Decision(ASTRO, "undo"))
    assert ledger.state(ASTRO) == ("person", "ok")
    with pytest.raises(DsbuildError) as err:
        ledger.review(Decision(ASTRO, "undo"))
    assert str(err.value) == ("the review has 1 problem; nothing was applied — fix it and run again:\n"
                              f"  nothing to undo for image {ASTRO} — it has no review decision left")
    assert len(ledger.events) == 8  # append-only: every decision and every undo is still there


def test_the_apps_undo_of_its_relabel_takes_the_builds_follow_up_with_it(images):
    """Trial 10, M2, as the review app sends it: the page's undo names its own relabel (``undoes``); a build since
    followed that relabel to the renamed class (an event of source ``build:<id>`` on top of it). The undo was refused
    ("event 2 came after it"), and one without ``undoes`` took back the follow-up alone (a label that is gone).
    Both take back the relabel with its follow-up, in two undo events that chain (the first a companion)."""
    ledger = Ledger(images)
    ledger.review(Decision(ASTRO, "relabel", "cat"), source="ui")
    ledger.events.append({"event_id": 2, "image_id": ASTRO, "action": "relabel", "old_label": "cat", "new_label": "kitty",
                          "old_status": "ok", "new_status": None, "source": "build:7", "at": AT,
                          "note": "class 'cat' renamed 'kitty'"})
    assert ledger.state(ASTRO) == ("kitty", "ok")
    first, second = ledger.review(Decision(ASTRO, "undo", undoes=1), source="ui")
    from dsbuild.decisions import COMPANION

    assert (first["old_label"], first["new_label"], first[COMPANION]) == ("kitty", "cat", True)
    assert first["note"] == ("undo of event 2 (relabel cat → kitty), a build's follow-up of a class change, with the "
                             "decision under it")
    assert (second["old_label"], second["new_label"], second["note"]) == ("cat", "person",
                                                                          "undo of event 1 (relabel person → cat)")
    assert COMPANION not in second and ledger.state(ASTRO) == ("person", "ok")
    with pytest.raises(DsbuildError, match="nothing to undo"):
        ledger.review(Decision(ASTRO, "undo"), source="ui")


def test_undo_of_a_removal_gives_the_status_back_to_the_build(images):
    ledger = Ledger(images)
    ledger.review(Decision(CAT, "remove"))
    assert ledger.state(CAT) == ("cat", "rejected")
    (ev,) = ledger.review(Decision(CAT, "undo"))
    assert (ev["old_status"], ev["new_status"]) == ("rejected", None)
    assert ledger.state(CAT) == ("cat", "duplicate")


def test_a_decision_that_already_stands_gives_no_event(images):
    ledger = Ledger(images)
    first = (Decision(ASTRO, "relabel", "cat"), Decision(COFFEE, "remove"), Decision(CAT, "keep"))
    assert len(ledger.review(*first)) == 3
    # The same decisions again (a decisions file run again): nothing to write, nothing refused.
    assert ledger.review(*first) == []
    # A keep made before the latest mislabel run started confirms the label against that run: a new event.
    later = datetime(2024, 5, 2, tzinfo=timezone.utc)
    (ev,) = ledger.review(Decision(CAT, "keep"), Decision(ASTRO, "relabel", "cat"), last_run_at=later,
                          at=datetime(2024, 5, 3, tzinfo=timezone.utc))
    assert (ev["image_id"], ev["action"]) == (CAT, "keep")
    assert ledger.review(Decision(CAT, "keep"), last_run_at=later) == []  # that keep is after the run
    # Not already applied: a relabel to the label the image was given (no decision set it), and a relabel back
    # to the given label after an undo of the relabel that had set it.
    with pytest.raises(DsbuildError, match=f"image {ROCKET1} already has label 'rocket' — use keep"):
        ledger.review(Decision(ROCKET1, "relabel", "rocket"))
    ledger.review(Decision(ASTRO, "undo"))
    with pytest.raises(DsbuildError, match=f"image {ASTRO} already has label 'person' — use keep"):
        ledger.review(Decision(ASTRO, "relabel", "person"))
    assert len(ledger.events) == 5


def test_plan_events_is_all_or_nothing(images):
    ledger = Ledger(images)
    decisions = [Decision(ASTRO, "relabel", "cat", line=2), Decision(COFFEE, "undo", line=3),
                 Decision("nope", "keep", line=4), Decision(FAILED, "keep", line=5), Decision(CAT, "relabel", "cat", line=6)]
    with pytest.raises(DsbuildError) as err:
        ledger.review(*decisions)
    assert str(err.value) == "\n".join([
        "the review has 4 problems; nothing was applied — fix them and run again:",
        f"  line 3: nothing to undo for image {COFFEE} — it has no review decision left",
        "  line 4: unknown image nope",
        f"  line 5: image {FAILED} has status 'failed' — only ok or duplicate images can be relabelled, kept or removed",
        f"  line 6: image {CAT} already has label 'cat' — use keep to confirm it",
    ])
    assert ledger.events == []


def test_decision_is_validated():
    with pytest.raises(ValueError):
        Decision("x", "delete")
    with pytest.raises(ValueError):
        Decision("x", "relabel")
    with pytest.raises(ValueError):
        Decision("x", "keep", "cat")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Decision("x", "keep").action = "remove"  # type: ignore[misc]


def test_events_through_the_real_catalog(tmp_path, images):
    """The planned events, appended by the catalog, give the labels and statuses the images view shows."""
    from dsbuild.catalog import Catalog, utcnow

    now = utcnow()
    base = images[images["status"].isin(["ok", "duplicate"])]
    items = pd.DataFrame({
        "dataset": "demo", "image_id": base["image_id"], "origin": base["origin"], "source": "folder",
        "class_label": base["label"], "sha256": [f"sha{i}" for i in range(len(base))], "status": base["status"],
        "split": "train", "first_seen": now, "updated_at": now,
    })
    blobs = pd.DataFrame({"sha256": items["sha256"], "path": base["path"], "created_at": now})

    def view(cat) -> pd.DataFrame:
        return cat.df("SELECT image_id, path, origin, label, status, reason, reviewed FROM images "
                      "WHERE dataset = 'demo' ORDER BY image_id")

    def history(cat) -> pd.DataFrame:
        return cat.label_history("demo")

    with Catalog.open(tmp_path / "catalog.duckdb") as cat:
        cat.upsert_items(items)
        cat.insert_blobs(blobs)
        csv = write(tmp_path, H + f"{ASTRO},relabel,cat,\n{COFFEE},remove,,\n{CAT},keep,,\n")
        decisions = parse_decisions(csv, images=view(cat), labels=LABELS)
        cat.append_label_events("demo", plan_events(decisions, current=view(cat), history=history(cat),
                                                    source="review:decisions.csv", at=utcnow()))
        after = view(cat).set_index("image_id")
        assert after.loc[ASTRO, "label"] == "cat" and after.loc[ASTRO, "status"] == "ok"
        assert (after.loc[COFFEE, "status"], after.loc[COFFEE, "reason"]) == ("rejected", "removed in review")
        assert after.loc[CAT, "status"] == "duplicate" and bool(after.loc[CAT, "reviewed"])
        assert not bool(after.loc[ROCKET1, "reviewed"])

        undo = parse_decisions(write(tmp_path, H + f"{ASTRO},undo,,\n{COFFEE},undo,,\n", "undo.csv"),
                               images=view(cat), labels=LABELS)
        cat.append_label_events("demo", plan_events(undo, current=view(cat), history=history(cat),
                                                    source="review:undo.csv", at=utcnow()))
        back = view(cat).set_index("image_id")
        assert back.loc[ASTRO, "label"] == "person"
        assert back.loc[COFFEE, "status"] == "ok" and back.loc[COFFEE, "label"] == "cup"
        assert len(history(cat)) == 5


def test_the_readme_decisions_example_is_a_valid_file(tmp_path):
    """The README's decisions file, as written there, is read as the decisions it shows (issue: no header)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Review decisions: `dsbuild review`", 1)[1]
    example = re.search(r"```\n(.*?)```", section, re.S).group(1)
    ids = [line.split(",", 1)[0] for line in example.splitlines()[1:]]
    images = pd.DataFrame({"image_id": ids, "path": None, "origin": [f"https://example.org/{i}.jpg" for i in ids],
                           "label": ["sunglasses", "none", "glasses"], "status": "ok"})
    got = parse_decisions(write(tmp_path, example), images=images, labels=["glasses", "none", "sunglasses", "VR"])
    assert [(d.action, d.new_label, d.note) for d in got] == [
        ("relabel", "glasses", "frames, not tinted"), ("keep", None, None), ("remove", None, "a drawing")]
