"""Hostile names in an imported dataset (hunt 3b): symlinks back to the tree's root, file and folder names that are
not UTF-8, one class name spelled two ways (Unicode NFC/NFD, case), names an export cannot write or an import would
skip, and one manifest class added to an imagefolder or a labels_csv.

Real trees made at test time (real photos, real symlinks, real non-UTF-8 names written as bytes), real builds through
the CLI, real DuckDB catalogs, real exports.
"""

from __future__ import annotations

import os
import sys
import textwrap
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from helpers import photo_quadrant, run_cli, sql

pytestmark = pytest.mark.usefixtures("wide_terminal")

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
_made = [0]


@pytest.fixture(autouse=True)
def _fresh_pictures() -> None:
    _made[0] = 0  # each test's pictures are distinct (24 of them: 6 photos × 4 quarters)


def picture(path: Path | bytes) -> None:
    """A distinct real photo (a quadrant of a skimage photo, no near duplicate of another) as a PNG at ``path``
    (bytes: a name that need not be UTF-8)."""
    n, _made[0] = _made[0], _made[0] + 1
    assert n < 24, "a test makes at most 24 distinct pictures"
    name = ("astronaut", "coffee", "chelsea", "rocket", "camera", "clock")[n % 6]
    img: Image.Image = photo_quadrant(name, n // 6, 64)
    raw = os.fsencode(path)
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    with open(raw, "wb") as fh:
        img.save(fh, "PNG")


def manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "datasets.toml"
    path.write_text(textwrap.dedent(body) + "[datasets.t.dedup]\nsemantic = false\n", encoding="utf-8")
    return path


def flat(text: str) -> str:
    return " ".join(text.split())


def labels(m: Path) -> dict[str, str]:
    """origin (below the manifest's folder) → label, of the dataset's accepted images."""
    root = str(m.parent.resolve()) + "/"
    return {o.removeprefix(root): lab for o, lab in sql(m, "SELECT origin, label FROM images WHERE status = 'ok'")}


# --------------------------------------------------------------------------- 1. symlinks back to the root


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_a_symlink_to_the_root_or_above_is_a_loop_skipped_and_named(tmp_path: Path, capsys) -> None:
    """``ant/up -> ..`` (flat tree), ``train/cat/up -> ../..`` (split tree), ``all -> .`` (a class folder that is
    the root): none reads another class's or split's images again under this class; each link is named with where
    it leads. A link to a folder outside the tree is followed, as a link to a file outside is (one policy)."""
    flat_ = tmp_path / "flat"
    for rel in ("zebra/z1.png", "zebra/z2.png", "ant/a1.png"):
        picture(flat_ / rel)
    os.symlink("..", flat_ / "ant" / "up")
    os.symlink(".", flat_ / "all")
    outside = tmp_path / "elsewhere"
    picture(outside / "far.png")
    picture(tmp_path / "lone.png")
    os.symlink(outside, flat_ / "zebra" / "more")
    os.symlink(tmp_path / "lone.png", flat_ / "zebra" / "lone.png")
    m = manifest(tmp_path, '[datasets.t]\nimagefolder = "flat"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 0, out + err
    assert labels(m) == {"flat/ant/a1.png": "ant", "flat/zebra/z1.png": "zebra", "flat/zebra/z2.png": "zebra",
                         "flat/zebra/more/far.png": "zebra", "flat/zebra/lone.png": "zebra"}
    said = flat(out + err)
    assert (f"t: symlinked folder {flat_ / 'ant' / 'up'} → .. skipped: it leads to a folder that holds it "
            f"({flat_.resolve()}), a loop — following it would read other classes' or splits' images again under "
            "this class; remove the link") in said, said
    assert (f"t: all/ skipped: it is a symlink to {flat_.resolve()}, which holds the whole tree (flat/) — read as a "
            "class it would hold every class's images again; remove the link") in said, said

    split = tmp_path / "s" / "split"
    for rel in ("train/zebra/z1.png", "train/cat/c1.png", "valid/cat/c2.png", "valid/zebra/z3.png"):
        picture(split / rel)
    os.symlink("../..", split / "train" / "cat" / "up")
    os.symlink("../../valid/zebra", split / "train" / "cat" / "side")  # into another class's folder
    m2 = manifest(tmp_path / "s", '[datasets.t]\nimagefolder = "split"\n')
    code, out, err = run_cli(capsys, m2, "build")
    assert code == 0, out + err
    assert sql(m2, "SELECT label, split, status FROM images ORDER BY origin") == [
        ("cat", "train", "ok"), ("zebra", "train", "ok"), ("cat", "valid", "ok"), ("zebra", "valid", "ok")]
    said = flat(out + err)
    assert (f"t: symlinked folder {split / 'train' / 'cat' / 'up'} → ../.. skipped: it leads to a folder that holds "
            f"it ({split.resolve()}), a loop") in said, said
    assert (f"t: symlinked folder {split / 'train' / 'cat' / 'side'} → ../../valid/zebra skipped: it leads into "
            f"another source folder of this dataset ({(split / 'valid' / 'zebra').resolve()}) — its images are that "
            "folder's class; remove the link, or copy the images here if they belong to this class too") in said, said


# --------------------------------------------------------------------------- 2. names that are not UTF-8


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="a file system that keeps any bytes in a name")
def test_a_file_or_folder_named_in_latin1_is_skipped_and_named_the_rest_built_and_exported(tmp_path: Path,
                                                                                         capsys) -> None:
    data = tmp_path / "data"
    picture(data / "dog" / "b.png")
    picture(data / "cat" / "a.png")
    picture(os.fsencode(data / "cat") + b"/caf\xe9.png")
    picture(os.fsencode(data / "cat") + b"/sub\xe9/x.png")
    m = manifest(tmp_path, '[datasets.t]\nimagefolder = "data"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 0, out + err
    assert labels(m) == {"data/cat/a.png": "cat", "data/dog/b.png": "dog"}
    said = flat(out + err)
    cat = data / "cat"
    for what, name, more in (("file", "caf\\xe9.png", ""), ("folder", "sub\\xe9", " with everything in it")):
        assert (f"t: {what} {cat}/{name} skipped{more}: its name is not valid UTF-8 (written in another encoding, "
                "e.g. Latin-1 by unzip of a zip made on Windows) — rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 "
                f"--notest -r {cat}) and build again") in said, said
    code, out, err = run_cli(capsys, m, "export", "t", "--to", str(tmp_path / "out"))
    assert code == 0, out + err
    assert sorted(p.parent.name for p in (tmp_path / "out").rglob("*.png")) == ["cat", "dog"]


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="a file system that keeps any bytes in a name")
def test_a_class_folder_named_in_latin1_is_refused_before_the_build(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    picture(data / "dog" / "b.png")
    picture(data / "cat" / "a.png")
    picture(os.fsencode(data) + b"/caf\xe9/x.png")
    m = manifest(tmp_path, "[datasets.t]\nimagefolder = \"data\"\n")
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    assert ("datasets.t.imagefolder: label folder 'caf\\xe9' is not valid UTF-8 (a name written in another encoding, "
            "e.g. Latin-1 from a zip made on Windows) — rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 --notest "
            "NAME)") in flat(err), err
    assert "Traceback" not in out + err
    assert not list(tmp_path.rglob("*.duckdb"))
    # Built without it, then back: status lists no class for a folder the build refuses (nor says to fill it).
    bad, away = os.fsencode(data) + b"/caf\xe9", os.fsencode(tmp_path) + b"/away"
    os.rename(bad, away)
    code, out, err = run_cli(capsys, m, "build")
    assert code == 0, out + err
    os.rename(away, bad)
    code, out, err = run_cli(capsys, m, "status")
    assert code == 0, out + err
    assert "caf" not in out + err and "has no images" not in out + err, out + err


# --------------------------------------------------------------------------- 3. one name, two spellings


def test_one_class_name_in_two_unicode_forms_is_refused_naming_both_and_where(tmp_path: Path, capsys) -> None:
    picture(tmp_path / "if" / NFC / "a.png")
    picture(tmp_path / "if" / NFD / "b.png")
    picture(tmp_path / "if" / "tea" / "c.png")
    m = manifest(tmp_path, '[datasets.t]\nimagefolder = "if"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    folder = tmp_path / "if"
    assert (f"datasets.t: class names '{NFD}' ('cafe\\u0301') and '{NFC}' ('caf\\xe9') are one name written in two "
            "Unicode forms (composed NFC and decomposed NFD, as macOS writes folder names): they look the same "
            f"(folder {folder / NFD}; folder {folder / NFC}) — if they are one class, spell them alike (`convmv -f "
            "utf8 -t utf8 --nfc --notest -r DIR` rewrites folder names in NFC; a class of that name under "
            "[datasets.t.classes] takes them all); else rename them") in flat(err), err
    assert not (tmp_path / "catalog").exists()

    lc = tmp_path / "c" / "lc"
    for n in "abc":
        picture(lc / f"{n}.png")
    (lc / "labels.csv").write_text(f"file,label\na.png,{NFC}\nb.png,{NFD}\nc.png,tea\n", encoding="utf-8")
    m = manifest(tmp_path / "c", '[datasets.t]\nlabels_csv = "lc/labels.csv"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    assert (f"datasets.t: class names '{NFC}' ('caf\\xe9') and '{NFD}' ('cafe\\u0301') are one name written in two "
            "Unicode forms (composed NFC and decomposed NFD, as macOS writes folder names): they look the same "
            f"('{NFC}' ('caf\\xe9'): 1 row of labels.csv, line 2; '{NFD}' ('cafe\\u0301'): 1 row of labels.csv, line 3)"
            ) in flat(err), err


def test_a_macos_nfd_folder_of_a_manifest_class_is_that_class(tmp_path: Path, capsys) -> None:
    """The documented choice: a folder's (or CSV's) name that is a manifest class in NFC is that class, in the
    manifest's spelling — macOS writes ``café/`` decomposed; the manifest's ``café`` is composed."""
    picture(tmp_path / "if" / NFD / "a.png")
    picture(tmp_path / "if" / "tea" / "b.png")
    picture(tmp_path / "more" / "c.png")
    m = manifest(tmp_path, f'[datasets.t]\nimagefolder = "if"\n[datasets.t.classes]\n"{NFC}" = {{ folders = "more" }}\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 0, out + err
    assert labels(m) == {f"if/{NFD}/a.png": NFC, "if/tea/b.png": "tea", "more/c.png": NFC}
    code, out, err = run_cli(capsys, m, "status")
    assert code == 0, out + err
    assert flat(out).count("café") == 1, out


def test_class_names_that_differ_only_in_case_are_refused_across_every_source(tmp_path: Path, capsys) -> None:
    picture(tmp_path / "if" / "Cat" / "a.png")
    picture(tmp_path / "if" / "cat" / "b.png")
    picture(tmp_path / "extra" / "c.png")
    picture(tmp_path / "extra2" / "d.png")
    m = manifest(tmp_path, '[datasets.t]\nimagefolder = "if"\n[datasets.t.classes]\n'
                           'CAT = { folders = "extra" }\nowl = { folders = "extra2" }\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    folder = tmp_path / "if"
    assert ("datasets.t: class names 'CAT', 'Cat' and 'cat' are one name to a case-insensitive file system (macOS, "
            f"Windows): they differ only in case (datasets.t.classes; folder {folder / 'Cat'}; folder "
            f"{folder / 'cat'}) — rename them so that the names differ by more than case, or spell them alike if they "
            "are one class") in flat(err), err

    lc = tmp_path / "c" / "lc"
    for n in "abc":
        picture(lc / f"{n}.png")
    (lc / "labels.csv").write_text("file,label\na.png,Dog\nb.png,dog\nc.png,bird\n")
    m = manifest(tmp_path / "c", '[datasets.t]\nlabels_csv = "lc/labels.csv"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    assert ("datasets.t: class names 'Dog' and 'dog' are one name to a case-insensitive file system (macOS, "
            "Windows): they differ only in case ('Dog': 1 row of labels.csv, line 2; 'dog': 1 row of labels.csv, line 3) "
            "— if they are one class, give every row of labels.csv one spelling (change the 1 row of 'Dog' to 'dog')") \
        in flat(err), err


# --------------------------------------------------------------------------- 4. names export or import cannot keep


UNSAFE = [
    ("__MACOSX", "'__MACOSX' is macOS's zip-metadata folder name, which an imagefolder import skips — rename it"),
    ("猫" * 90, f"'{'猫' * 90}' is 270 bytes in UTF-8 — a folder name may have at most 255 bytes; shorten it"),
    ("CONIN$", "'CONIN$' is a reserved device name on Windows"),
    ("conout$.txt", "'conout$.txt' is a reserved device name on Windows"),
    ("COM¹", "'COM¹' is a reserved device name on Windows"),
    ("cat\u200b", "'cat\\u200b' contains invisible or control characters ('\\u200b') — it would print like another "
                  "name; remove them"),
    ("do\ng", "'do\\ng' contains characters unsafe in folder names ('\\n')"),
]


# (A line break cannot reach a label from a labels CSV: each line is one row, and a quote left open on it costs that
# row — tests/test_imagefolder_layout.py.)
@pytest.mark.parametrize("label, why", UNSAFE[:-1], ids=["macosx", "bytes", "conin", "conout", "com1sup", "zwsp"])
def test_a_label_export_cannot_write_or_import_would_skip_is_refused_and_no_class(tmp_path: Path, capsys,
                                                                                label: str, why: str) -> None:
    data = tmp_path / "data"
    for n in "abcd":
        picture(data / f"{n}.png")
    quoted = '"' + label + '"' if "\n" in label else label
    (data / "labels.csv").write_text(f"file,label\na.png,{quoted}\nb.png,dog\nc.png,cat\nd.png,cat\n",
                                     encoding="utf-8")
    m = manifest(tmp_path, '[datasets.t]\nlabels_csv = "data/labels.csv"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 0, out + err
    said = flat(out + err)
    line = 3 if "\n" in label else 2
    # (a 270-byte label is wider than the terminal: rich breaks it inside the word, so compare without spaces)
    assert "".join(f"t: labels.csv line {line}: label {why} — skipped".split()) in "".join(said.split()), said
    assert "has no images" not in said, said  # the refused label is no class
    assert sorted(set(labels(m).values())) == ["cat", "dog"]
    code, out, err = run_cli(capsys, m, "status")
    assert code == 0 and "has no images" not in out, out
    code, out, err = run_cli(capsys, m, "export", "t", "--to", str(tmp_path / "out"))
    assert code == 0, out + err
    assert sorted({p.parent.name for p in (tmp_path / "out").rglob("*.png")}) == ["cat", "dog"]


@pytest.mark.parametrize("label, why", UNSAFE[:5], ids=["macosx", "bytes", "conin", "conout", "com1sup"])
def test_the_same_names_are_refused_as_manifest_classes_and_as_folders(tmp_path: Path, capsys, label: str,
                                                                       why: str) -> None:
    picture(tmp_path / "x" / "a.png")
    picture(tmp_path / "y" / "b.png")
    m = manifest(tmp_path, f'[datasets.t.classes]\n"{label}" = {{ folders = "x" }}\nok = {{ folders = "y" }}\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    key = label if label.isascii() and label.replace("_", "").isalnum() else f'"{label}"'
    assert f"datasets.t.classes.{key}: class name {why}" in flat(err), err

    if label == "__MACOSX" or len(label.encode()) > 255:
        return  # an imagefolder never reads a __MACOSX folder as a class; a 270-byte folder name cannot be made
    picture(tmp_path / "f" / "data" / label / "a.png")
    picture(tmp_path / "f" / "data" / "ok" / "b.png")
    m = manifest(tmp_path / "f", '[datasets.t]\nimagefolder = "data"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    assert f"datasets.t.imagefolder: label folder {why}" in flat(err), err


# --------------------------------------------------------------------------- 5. two classes from every source


@pytest.mark.parametrize("source", ["imagefolder", "labels_csv"])
def test_one_manifest_class_adds_to_an_imagefolder_or_a_labels_csv(tmp_path: Path, capsys, source: str) -> None:
    picture(tmp_path / "data" / "cat" / "a.png")
    picture(tmp_path / "data" / "dog" / "b.png")
    picture(tmp_path / "more_cats" / "c.png")
    (tmp_path / "data" / "labels.csv").write_text("file,label\ncat/a.png,cat\ndog/b.png,dog\n")
    src = 'imagefolder = "data"' if source == "imagefolder" else 'labels_csv = "data/labels.csv"'
    m = manifest(tmp_path, f'[datasets.t]\n{src}\n[datasets.t.classes]\ncat = {{ folders = "more_cats" }}\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 0, out + err
    assert labels(m) == {"data/cat/a.png": "cat", "data/dog/b.png": "dog", "more_cats/c.png": "cat"}


def test_one_folder_and_one_manifest_class_make_two_classes_one_alone_is_refused(tmp_path: Path, capsys) -> None:
    picture(tmp_path / "data" / "cat" / "a.png")
    picture(tmp_path / "owls" / "b.png")
    m = manifest(tmp_path, '[datasets.t]\nimagefolder = "data"\n[datasets.t.classes]\nowl = { folders = "owls" }\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 0, out + err
    assert labels(m) == {"data/cat/a.png": "cat", "owls/b.png": "owl"}
    m = manifest(tmp_path, '[datasets.t]\nimagefolder = "data"\n[datasets.t.classes]\ncat = { folders = "owls" }\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out + err
    assert (f"datasets.t.imagefolder: {tmp_path / 'data'} needs one subfolder per label (at least two), or "
            "<split>/<label>/ subfolders") in flat(err), err
