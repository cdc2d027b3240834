"""Review of an ``imagefolder`` dataset, whose classes are its subfolders: the CLI, the review app and their class set.

Real parts only: real handwritten digits (scikit-learn's ``load_digits``) rendered into class folders,
built by dsbuild into a real DuckDB catalog; ``dsbuild review`` run in-process as a user runs it; the
real review app through Starlette's TestClient (HTTP over ASGI, the cookie and CSRF header the page
uses). Every outcome is read back from the catalog with SQL.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from helpers import run_cli
from model_data import render_digit

import dsbuild
from dsbuild.catalog import Catalog
from dsbuild.ui.app import UiConfig, create_app
from dsbuild.ui.security import csrf_for

TOKEN = "t0ken-for-imagefolder-tests_" + "y" * 20
PORT = 8766
BASE = f"http://127.0.0.1:{PORT}"
CSRF = {"X-CSRF-Token": csrf_for(TOKEN)}
DIGITS = {"zero": 0, "one": 1, "seven": 7}
PER_CLASS = 6
MANIFEST = """catalog = "catalog/dsbuild.duckdb"
[datasets.digits]
imagefolder = "photos"
[datasets.digits.verify]
min_side = 16
[datasets.digits.dedup]
threshold = 2
semantic = false
"""


def make_imagefolder(root: Path) -> Path:
    """``photos/<class>/`` with real digits, built; the manifest path."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for name, value in DIGITS.items():
        folder = root / "photos" / name
        folder.mkdir(parents=True)
        for i in rng.choice(np.flatnonzero(digits.target == value), size=PER_CLASS, replace=False):
            render_digit(digits.data[i], folder / f"d{i:04d}.png")
    manifest = root / "datasets.toml"
    manifest.write_text(MANIFEST)
    dsbuild.build(dsbuild.load_manifest(manifest), ["digits"], workers=1)
    return manifest


def sql(manifest: Path, query: str, params: list | None = None) -> list[tuple]:
    """Rows of a read-only query, read as another dsbuild reader does (it asks a running review app for the file)."""
    with Catalog.open_readonly(manifest.parent / "catalog" / "dsbuild.duckdb") as cat:
        return cat.con.execute(query, params or []).fetchall()


def first(manifest: Path, label: str, status: str = "ok") -> str:
    return sql(manifest, "SELECT image_id FROM images WHERE label = ? AND status = ? ORDER BY image_id LIMIT 1",
               [label, status])[0][0]


def state(manifest: Path, image_id: str) -> tuple[str, str]:
    return sql(manifest, "SELECT label, status FROM images WHERE image_id = ?", [image_id])[0]


def n_events(manifest: Path) -> int:
    return sql(manifest, "SELECT count(*) FROM label_events")[0][0]


def decisions_file(folder: Path, *rows: str) -> Path:
    path = folder / "d.csv"
    path.write_text("image_id,action,new_label,note\n" + "".join(r + "\n" for r in rows))
    return path


def rename_class(manifest: Path, old: str, new: str) -> None:
    """Rename a class the only way an imagefolder dataset has: its folder; then `dsbuild build` in another process
    (as a user does while the review app runs: the app gives the catalog up when the build asks)."""
    (manifest.parent / "photos" / old).rename(manifest.parent / "photos" / new)
    done = subprocess.run([sys.executable, "-m", "dsbuild", "-m", str(manifest), "build", "digits", "-q", "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "p")


def app_client(manifest: Path):
    app = create_app(UiConfig(manifest=dsbuild.load_manifest(manifest), dataset="digits", host="127.0.0.1", port=PORT,
                              token=TOKEN))
    client = TestClient(app, base_url=BASE)
    assert client.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303
    return app, client


def decide(client: TestClient, *decisions: dict):
    return client.post("/api/decide", json={"decisions": list(decisions)}, headers=CSRF)


def keymap(client: TestClient) -> dict[str, str]:
    return dict(re.findall(r'<li data-key="([^"]+)" data-label="([^"]+)">', client.get("/").text))


# --------------------------------------------------------------------------- the CLI


def test_cli_relabel_to_a_class_folder_applies(project: Path, tmp_path: Path, capsys) -> None:
    """Finding 2 of trial 3: every relabel was refused, "unknown label 'seven' — labels of this dataset: " (no list)."""
    target = first(project, "one")
    code, out, err = run_cli(capsys, project, "review", "digits", "--decisions",
                             str(decisions_file(tmp_path, f"{target},relabel,seven,")))
    assert code == 0, err
    assert out.strip() == "applied 1 decision to 'digits' (relabel 1) from review:d.csv"
    assert state(project, target) == ("seven", "ok")
    # a label that is no folder is refused with the folders' names
    other = first(project, "zero")
    code, out, err = run_cli(capsys, project, "review", "digits", "--decisions",
                             str(decisions_file(tmp_path, f"{other},relabel,eight,")))
    assert code == 2
    assert (f"line 2: unknown label 'eight' — labels of this dataset: one, seven, zero") in err, err


def test_cli_relabel_on_an_imagefolder_with_classes_added_by_the_manifest(tmp_path: Path, capsys) -> None:
    """README: an imagefolder's subfolders are classes, and "classes given as well add their sources": both are
    classes a relabel may name (the manifest's alone were taken for all of them)."""
    from sklearn.datasets import load_digits

    root = tmp_path / "p"
    digits = load_digits()
    for name, value in {**DIGITS, "eight": 8, "nine": 9}.items():
        folder = root / ("extra" if name in ("eight", "nine") else "photos") / name
        folder.mkdir(parents=True)
        for i in np.flatnonzero(digits.target == value)[:4]:
            render_digit(digits.data[i], folder / f"d{i:04d}.png")
    manifest = root / "datasets.toml"
    manifest.write_text(MANIFEST + '[datasets.digits.classes]\neight = { folders = "extra/eight" }\n'
                                   'nine = { folders = "extra/nine" }\n')
    dsbuild.build(dsbuild.load_manifest(manifest), ["digits"], workers=1)
    one, eight = first(manifest, "one"), first(manifest, "eight")
    code, out, err = run_cli(capsys, manifest, "review", "digits", "--decisions",
                             str(decisions_file(tmp_path, f"{one},relabel,seven,", f"{eight},relabel,zero,")))
    assert code == 0, err
    assert out.strip() == "applied 2 decisions to 'digits' (relabel 2) from review:d.csv"
    assert (state(manifest, one), state(manifest, eight)) == (("seven", "ok"), ("zero", "ok"))
    code, out, err = run_cli(capsys, manifest, "review", "digits", "--decisions",
                             str(decisions_file(tmp_path, f"{one},relabel,two,")))
    assert code == 2 and "line 2: unknown label 'two' — labels of this dataset: eight, nine, one, seven, zero" in err, err


def test_cli_refuses_a_relabel_to_a_class_whose_folder_was_renamed(project: Path, tmp_path: Path, capsys) -> None:
    """Finding 3 of trial 3, the CLI side: after `mv photos/seven photos/sept` no image may be relabelled `seven`."""
    rename_class(project, "seven", "sept")
    target = first(project, "one")
    before = n_events(project)
    code, out, err = run_cli(capsys, project, "review", "digits", "--decisions",
                             str(decisions_file(tmp_path, f"{target},relabel,seven,")))
    assert code == 2
    assert err.strip().splitlines()[-1].strip() == (
        "line 2: label 'seven' is not a class of this dataset any more (renamed or removed) — labels of this dataset: "
        "one, sept, zero"), err
    assert n_events(project) == before and state(project, target) == ("one", "ok")
    code, out, err = run_cli(capsys, project, "review", "digits", "--decisions",
                             str(decisions_file(tmp_path, f"{target},relabel,sept,")))
    assert code == 0, err
    assert state(project, target) == ("sept", "ok")


def test_cli_refusal_of_a_source_removed_image_names_the_reason(project: Path, tmp_path: Path, capsys) -> None:
    """Trial 3, section 11: the refusal said "(an image removed in review comes back with undo)" for an image whose
    source file is gone, which undo cannot bring back."""
    gone = first(project, "seven")
    rename_class(project, "seven", "sept")
    assert sql(project, "SELECT status, reason FROM images WHERE image_id = ?", [gone]) == [("rejected", "source removed")]
    code, out, err = run_cli(capsys, project, "review", "digits", "--decisions",
                             str(decisions_file(tmp_path, f"{gone},keep,,")))
    assert code == 2
    assert err.strip().splitlines()[-1].strip() == (
        f"line 2: image {gone} has status 'rejected' (source removed) — only ok or duplicate images can be "
        "relabelled, kept or removed"), err


# --------------------------------------------------------------------------- the review app


def test_app_has_a_key_per_class_folder_and_refuses_a_gone_class(project: Path) -> None:
    """Finding 3 of trial 3: no 1…9 keys on an imagefolder dataset, and /api/decide took a relabel to a class
    whose folder was renamed (a "ghost class" in retrain, export and status)."""
    app, client = app_client(project)
    try:
        assert keymap(client) == {"1": "one", "2": "seven", "3": "zero"}
        rename_class(project, "seven", "sept")
        assert keymap(client) == {"1": "one", "2": "sept", "3": "zero"}  # the page follows a build while it runs
        target = first(project, "one")
        before = n_events(project)
        r = decide(client, {"image_id": target, "action": "relabel", "new_label": "seven"})
        assert r.status_code == 409
        # The app's words: its keys are the labels the page was loaded with, so reload (not "fix it and run again").
        assert r.json()["error"] == (f"image {target}: label 'seven' is not a class of this dataset any more (renamed "
                                     "or removed) — reload the page for the current labels: one, sept, zero")
        assert n_events(project) == before
        assert sql(project, "SELECT count(*) FROM images WHERE label = 'seven' AND status = 'ok'") == [(0,)]
        r = decide(client, {"image_id": target, "action": "relabel", "new_label": "sept"})
        assert r.status_code == 200 and r.json()["states"][0]["label"] == "sept"
    finally:
        app.held.close()


def test_app_refusal_of_a_source_removed_image_and_a_keep_that_changes_nothing(project: Path) -> None:
    """Trial 3, section 11: a source-removed image's refusal spoke of undo, and a keep of an image that already had a
    standing keep answered "applied": 1 while it wrote nothing."""
    app, client = app_client(project)
    try:
        kept, other = sql(project, "SELECT image_id FROM images WHERE label = 'seven' ORDER BY image_id LIMIT 2")
        kept, other = kept[0], other[0]
        r = decide(client, {"image_id": kept, "action": "keep"})
        assert r.status_code == 200 and r.json()["applied"] == 1
        rename_class(project, "seven", "sept")
        before = n_events(project)
        r = decide(client, {"image_id": other, "action": "keep"})
        assert r.status_code == 409
        assert r.json()["error"] == (f"image {other} has status 'rejected' (source removed) — only ok or duplicate "
                                     "images can be relabelled, kept or removed; it changed since this page was "
                                     "loaded — reload the page to see its state")
        r = decide(client, {"image_id": kept, "action": "keep"})
        assert r.status_code == 200
        body = r.json()
        assert (body["applied"], body["already_applied"]) == (0, 1)
        assert body["states"][0]["event_id"] is None
        assert body["states"][0]["state"] == "kept as seven (status rejected)"
        assert n_events(project) == before
    finally:
        app.held.close()
