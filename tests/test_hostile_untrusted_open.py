"""Every path that opens an image file applies verification's sniffing and allow-list; Ghostscript never starts.

Kind of fault (issue 11, kind 9): ``dsbuild predict`` opened user files with
Pillow's open-anything and picked folder files by suffix, so an EPS named
``holiday.jpg`` started Ghostscript. The same held for thumbnails in HTML
pages and for export, which trust whatever file sits in the store. Each of
these paths must sniff the content, refuse formats outside the allow-list with
a per-file error, and never start an external interpreter.

Every test puts a stand-in ``gs`` first on ``PATH`` (it only records that it was
started) and runs dsbuild in a subprocess so Pillow looks Ghostscript up afresh.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hostile_kit import Project, encode, photo

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
       b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture()
def fake_gs(tmp_path) -> tuple[dict, Path]:
    """(environment with a stand-in gs first on PATH, the file it writes when started)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    marker = tmp_path / "GHOSTSCRIPT_WAS_STARTED"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 10.02.0; exit 0; fi\necho \"$@\" >> '{marker}'\nexit 1\n")
    gs.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}, marker


def _project(tmp_path: Path) -> Project:
    proj = Project(tmp_path / "proj")
    for cls, names in {"a": ["astronaut", "rocket", "camera"], "b": ["coffee", "chelsea", "coins"]}.items():
        for n in names:
            proj.add(cls, f"{n}.jpg", encode(photo(n, (64, 64)), "JPEG"))
            proj.add(cls, f"{n}_r.jpg", encode(photo(n, (64, 64)).rotate(90), "JPEG"))
    return proj


def test_build_refuses_eps_under_any_name_without_ghostscript(tmp_path, fake_gs) -> None:
    env, marker = fake_gs
    proj = _project(tmp_path)
    proj.add("a", "holiday.jpg", EPS)
    proj.add("b", "scan.png", EPS)
    proj.set("dedup", near=False, semantic=False)  # verify and export are the subject: no embedding model to load
    result = proj.run("build", env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    rows = proj.by_name()
    for name in ("holiday.jpg", "scan.png"):
        assert (rows[name]["status"], rows[name]["reason"], rows[name]["format"]) == ("rejected", "unsupported format", "EPS")


def _tamper(proj: Project) -> dict:
    """Overwrite one accepted image's store file with an EPS (a store edited by hand, or by something hostile)."""
    row = proj.rows("SELECT image_id, path FROM images WHERE status = 'ok' ORDER BY image_id LIMIT 1")[0]
    Path(row["path"]).unlink()  # the store file may be a hard link of an export: replace, don't write through
    Path(row["path"]).write_bytes(EPS)
    return row


def test_export_never_copies_a_store_file_that_is_not_its_verified_image(tmp_path, fake_gs) -> None:
    env, marker = fake_gs
    proj = _project(tmp_path)
    proj.set("dedup", near=False, semantic=False)  # verify and export are the subject: no embedding model to load
    assert proj.run("build", env=env).returncode == 0
    bad = _tamper(proj)
    out = tmp_path / "export"
    result = proj.run("export", proj.dataset, "--to", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    exported = {f.stem for f in out.rglob("*.jpg")}
    assert bad["image_id"] not in exported and len(exported) == 11
    said = " ".join((result.stdout + result.stderr).split())
    assert bad["image_id"] in said and "EPS" in said, said


def test_html_thumbnails_never_start_ghostscript(tmp_path, fake_gs) -> None:
    env, marker = fake_gs
    proj = _project(tmp_path)
    proj.add("a", "astronaut_copy.jpg", (proj.root / "images" / "a" / "astronaut.jpg").read_bytes())
    proj.add("b", "astronaut_copy.jpg", (proj.root / "images" / "a" / "astronaut.jpg").read_bytes())
    proj.set("dedup", semantic=False)  # exact copies group without embeddings: no embedding model to load
    assert proj.run("build", env=env).returncode == 0
    row = proj.rows("SELECT path FROM images WHERE dup_group IS NOT NULL AND status = 'ok' LIMIT 1")[0]
    Path(row["path"]).unlink()
    Path(row["path"]).write_bytes(EPS)
    page = tmp_path / "dups.html"
    result = proj.run("status", proj.dataset, "--html", str(page), env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert page.exists() and "Traceback" not in result.stderr


@pytest.mark.slow
def test_predict_sniffs_every_file_and_refuses_what_the_allow_list_refuses(tmp_path, fake_gs) -> None:
    """The predict that reads the folder of hostile files is the subprocess with the stand-in gs; the build and the
    training before it (only JPEG photos: nothing for Ghostscript) and the predict of two files given by name (a
    pipe and a device, never opened) run in-process — three fewer starts of torch, most of this test's time."""
    env, marker = fake_gs
    proj = _project(tmp_path)
    # Each photo and its rotation are one near-duplicate group (issue 17's rotated views): 3 images a class, so
    # 2 folds; a network from scratch is a fine-tune (a head needs pretrained features).
    proj.set("model", pretrained=False, finetune=True, size=32, epochs=1, freeze_epochs=0, lr=0.01, batch_size=4,
             device="cpu", folds=2)
    code, out, err = proj.build()
    assert code == 0, err
    code, out, err = proj.cli("train", proj.dataset)
    assert code == 0, err
    new = tmp_path / "new"
    new.mkdir()
    (new / "holiday.jpg").write_bytes(EPS)
    (new / "photo.jpg").write_bytes(encode(photo("coffee", (64, 64)).rotate(180), "JPEG"))
    (new / "no_suffix").write_bytes(encode(photo("rocket", (64, 64)).rotate(180), "PNG"))
    (new / "photo.tga").write_bytes(encode(photo("camera", (64, 64)), "TGA"))
    (new / "notes.txt").write_text("shopping list\n")
    (new / "bomb.png").write_bytes(encode(photo("coins", (200, 200)), "PNG"))
    os.mkfifo(new / "pipe.jpg")  # variant hunt finding 9: a named pipe in the folder got no row at all
    (new / "zero.jpg").symlink_to("/dev/zero")
    proj.set("verify", max_pixels=10_000)  # predict applies the dataset's verify settings too
    proj.write_manifest()
    result = proj.run("predict", proj.dataset, str(new), "--format", "json", env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert set(rows) == {"holiday.jpg", "photo.jpg", "no_suffix", "photo.tga", "notes.txt", "bomb.png", "pipe.jpg",
                         "zero.jpg"}
    assert rows["pipe.jpg"]["error"] == "not a file: a named pipe (FIFO), not a regular file"
    assert rows["zero.jpg"]["error"] == "not a file: a character device, not a regular file"
    assert rows["holiday.jpg"]["error"].startswith("unsupported format: EPS is not in the allowed formats")
    assert rows["photo.tga"]["error"].startswith("unsupported format: TGA is not in the allowed formats")
    assert rows["notes.txt"]["error"] == "not an image: content is text"
    assert rows["bomb.png"]["error"].startswith("decompression bomb: 200×200 = 40000 pixels exceeds max_pixels 10000")
    for name in ("photo.jpg", "no_suffix"):
        assert rows[name]["error"] is None and rows[name]["label"] in ("a", "b"), rows[name]
    # Given by name, they are error rows too (they said "does not exist")
    code, out, err = proj.cli("predict", proj.dataset, str(new / "pipe.jpg"), "/dev/zero", "--format", "json")
    assert code == 0, err
    assert [(r["path"], r["error"]) for r in json.loads(out)] == [
        (str(new / "pipe.jpg"), "not a file: a named pipe (FIFO), not a regular file"),
        ("/dev/zero", "not a file: a character device, not a regular file")]


def test_a_decisions_file_that_is_a_named_pipe_says_so(tmp_path) -> None:
    """`review --decisions` on a named pipe said "does not exist"; it is never opened (it would wait for a writer)."""
    proj = _project(tmp_path)
    proj.set("dedup", near=False, semantic=False)
    code, out, err = proj.build()
    assert code == 0, err
    fifo = tmp_path / "decisions.csv"
    os.mkfifo(fifo)
    code, out, err = proj.cli("review", proj.dataset, "--decisions", str(fifo))
    assert (code, err) == (2, f"Error: decisions file {fifo} is a named pipe (FIFO), not a regular file — give the CSV "
                              "file of decisions\n")
    code, out, err = proj.cli("review", proj.dataset, "--decisions", str(tmp_path / "gone.csv"))
    assert (code, err) == (2, f"Error: decisions file {tmp_path / 'gone.csv'} does not exist\n")
