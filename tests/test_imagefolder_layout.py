"""How an ``imagefolder`` tree is read when it holds more than split or class folders (trial 5, finding 1).

The trees are what users bring: a folder fastai trained in (``models/``, ``export.pkl``, an unlabeled
``test/``), a zip unpacked on a Mac (``__MACOSX/``), a notebook's ``.ipynb_checkpoints/``, a ``labels.csv``
beside the class folders, an empty class folder — and a class that is literally called ``train``. Images are
real photos (``skimage.data`` quadrants written by PIL); builds run through the CLI into a real catalog.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from helpers import photo_quadrant, run_cli, sql

pytestmark = pytest.mark.usefixtures("wide_terminal")  # rich tables in captured output keep whole words

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "clock")


def save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def photos(folder: Path, name: str, ks: range) -> None:
    """Quadrants ``ks`` of photo ``name`` as PNGs in ``folder`` (distinct pictures, no near duplicates)."""
    for k in ks:
        save(photo_quadrant(name, k, 96), folder / f"{name}-{k}.png")


def manifest(tmp_path: Path, tree: str = "tree") -> Path:
    path = tmp_path / "datasets.toml"
    path.write_text(textwrap.dedent(f"""\
        [datasets.pets]
        imagefolder = "{tree}"
        [datasets.pets.dedup]
        semantic = false                  # the layout is the subject: no embedding model
        """))
    return path


def flat(text: str) -> str:
    return " ".join(text.split())


def flat_project(tmp_path: Path, rows: list[str], *, newline: str = "\n", extra: str = "") -> Path:
    """``rows`` as ``data/labels.csv`` (lines ended by ``newline``) and a manifest of the dataset ``flat`` over it,
    without embeddings (``extra``: more ``[datasets.flat.dedup]`` lines); the manifest's path."""
    (tmp_path / "data" / "labels.csv").write_text(newline.join(rows) + newline, encoding="utf-8", newline="")
    m = tmp_path / "datasets.toml"
    m.write_text('[datasets.flat]\nlabels_csv = "data/labels.csv"\n[datasets.flat.dedup]\nsemantic = false\n' + extra)
    return m


def test_split_tree_with_fastai_leftovers_keeps_its_splits_and_names_what_it_skipped(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    photos(tree / "train" / "cat", "chelsea", range(0, 3))
    photos(tree / "train" / "dog", "astronaut", range(0, 3))
    photos(tree / "valid" / "cat", "coffee", range(0, 2))
    photos(tree / "valid" / "dog", "rocket", range(0, 2))
    (tree / "train" / "horse").mkdir()                                     # an empty class folder
    (tree / "train" / "labels.csv").write_text("file,label\n")             # a file beside the class folders
    photos(tree / "test", "camera", range(0, 2))                           # fastai's unlabeled test set
    (tree / "models").mkdir()
    (tree / "models" / "model.pth").write_bytes(b"\x80\x02weights" * 100)  # learn.save()
    (tree / "export.pkl").write_bytes(b"\x80\x04pickle")                   # learn.export(): a file, not a folder
    photos(tree / "__MACOSX" / "train", "clock", range(0, 1))              # a zip unpacked on a Mac
    photos(tree / ".ipynb_checkpoints", "clock", range(1, 2))
    m = manifest(tmp_path)

    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    said = flat(out)
    assert ("pets: models/ is not a split folder (train, valid, test): skipped — it holds no images, and a tree "
            "with split folders is read as <split>/<class>/…") in said, out
    assert ("pets: test/ holds 2 files but no class folders (an unlabeled test set, as fastai's test/): skipped — "
            "only labelled images are imported; put them in test/<class>/ to import them as the test split") in said
    assert ("pets: train/ holds 1 file beside its class folders (e.g. labels.csv): skipped — only train/<class>/… "
            "is read") in said
    assert "pets: __MACOSX/ skipped — it holds macOS's zip metadata, not images" in said
    # The empty class folder is named (trial 5: README's "names every class left with no accepted image").
    assert ("pets: class 'horse' has no images (its sources are empty) — add images or remove the class") in said

    rows = sql(m, "select label, split, status, count(*) from images where dataset = 'pets' group by all order by all")
    assert rows == [("cat", "train", "ok", 3), ("cat", "valid", "ok", 2),
                    ("dog", "train", "ok", 3), ("dog", "valid", "ok", 2)]  # never labels 'train', 'valid', 'models'


def test_a_class_named_train_in_a_class_tree_is_a_class_and_the_build_says_so(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    photos(tree / "bus", "rocket", range(0, 2))
    photos(tree / "car", "camera", range(0, 2))
    photos(tree / "train", "clock", range(0, 2))  # a class of vehicles, images directly inside
    m = manifest(tmp_path)

    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert ("pets: class 'train' has the name of a split folder: train/ holds no class folders, so it is read as "
            "the class 'train' (DIR/<class>/…) — if it is the train split, put its images in train/<class>/ "
            "folders") in flat(out), out
    labels = sql(m, "select distinct label from images where dataset = 'pets' and status = 'ok' order by 1")
    assert labels == [("bus",), ("car",), ("train",)]


def test_split_folders_beside_folders_of_images_are_refused_with_what_to_do(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    photos(tree / "train" / "steam", "clock", range(0, 2))  # a class 'train' with subfolders, or a split?
    photos(tree / "train" / "electric", "camera", range(0, 2))
    photos(tree / "bus", "rocket", range(0, 2))
    photos(tree / "car", "coffee", range(0, 2))
    m = manifest(tmp_path)

    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 2, out
    assert (f"datasets.pets.imagefolder: {tree} holds split folders with class folders (train/) and folders of "
            f"images that are not split folders (bus/, car/): it is neither DIR/<split>/<class>/… nor "
            f"DIR/<class>/… — if it is split, move bus/, car/ into a split folder (as <split>/<class>/) or out of "
            f"tree/; if train/ is a class, list the classes under [datasets.pets.classes] with folders = [\"…\"] "
            f"instead of imagefolder") in flat(err), err
    assert not (tmp_path / "catalog" / "dsbuild.duckdb").exists()  # refused before anything is written


def test_split_folders_without_class_folders_are_refused(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    photos(tree / "train", "clock", range(0, 2))
    photos(tree / "valid", "camera", range(0, 2))
    m = manifest(tmp_path)

    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 2, out
    assert ("datasets.pets.imagefolder: train/, valid/ are split folders with no class folders inside — put each "
            "class's images in <split>/<class>/ (e.g. train/cat/), or, if they are classes, list the classes under "
            "[datasets.pets.classes] with folders = [\"…\"] instead of imagefolder") in flat(err), err


def test_an_empty_class_folder_is_named_by_the_build(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    photos(tree / "cat", "chelsea", range(0, 2))
    photos(tree / "dog", "astronaut", range(0, 2))
    (tree / "horse").mkdir()
    (tree / "horse" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: skipped, the folder holds no image
    m = manifest(tmp_path)

    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert "pets: class 'horse' has no images (its sources are empty) — add images or remove the class" in flat(out), out
    # status says it too (trial 5: only the build did), with the class's row of zeros in the table
    code, out, err = run_cli(capsys, m, "status", "pets")
    assert code == 0, err
    assert "pets: class 'horse' has no images (its sources are empty) — add images or remove the class" in flat(out), out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in out.splitlines()
            if line.count("│") > 2}
    assert (rows["horse"], rows["cat"], rows["total"]) == (["·"], ["2"], ["4"]), out


# --------------------------------------------------------------------------- a flat folder and a labels CSV


def test_labels_csv_imports_local_files_with_their_splits_and_names_each_bad_row(tmp_path: Path, capsys) -> None:
    flat_dir = tmp_path / "data"
    photos(flat_dir / "imgs", "chelsea", range(0, 4))
    photos(flat_dir / "imgs", "astronaut", range(0, 4))
    (flat_dir / "imgs" / "fake.jpg").write_text("not a picture at all\n")
    photos(tmp_path, "clock", range(0, 1))  # beside the CSV's folder: a row may not reach it
    rows = ["fname,label,is_valid"]
    rows += [f"imgs/chelsea-{k}.png,cat,{k == 3}" for k in range(4)]
    rows += [f"imgs/astronaut-{k}.png,dog,{'True' if k == 3 else 'False'}" for k in range(4)]
    rows += ["imgs/fake.jpg,cat,False", "imgs/gone.png,dog,False", "../clock-0.png,dog,False",
             "imgs/chelsea-0.png,cat,maybe", "imgs/chelsea-1.png,,False"]
    m = flat_project(tmp_path, rows)

    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    said = flat(out)
    base = flat_dir.resolve()
    for line in (f"labels.csv line 11: 'imgs/gone.png' does not exist in {base} — skipped",
                 f"labels.csv line 12: '../clock-0.png' is outside {base} — skipped: a labels CSV's files stay in "
                 "the folder that holds labels.csv",
                 f"labels.csv: 1 row lists files outside {base} — to build it, set labels_root = \"{tmp_path.resolve()}\" "
                 "on the dataset (the folder its files must stay in)",
                 "labels.csv line 13: is_valid 'maybe' is not true or false — skipped",
                 "labels.csv line 14: 'imgs/chelsea-1.png' has no label — skipped"):
        assert f"flat: {line}" in said, (line, out)
    got = sql(m, "select label, split, status, count(*) from images where dataset = 'flat' group by all order by all")
    assert got == [("cat", "train", "ok", 3), ("cat", "valid", "ok", 1),
                   ("cat", None, "rejected", 1),  # fake.jpg: opened through the same sniffing as every file
                   ("dog", "train", "ok", 3), ("dog", "valid", "ok", 1)]
    (origin,) = sql(m, "select origin from images where dataset = 'flat' and status = 'rejected'")[0]
    assert origin == str(base / "imgs" / "fake.jpg")
    # `status` later says the build skipped rows (trial 11 L3: only the build did): the first three, and a count
    (build_id,) = sql(m, "select max(build_id) from builds")[0]
    code, out, err = run_cli(capsys, m, "status", "flat")
    assert code == 0, err
    assert (f"flat: reading its sources, build #{build_id} said: labels.csv line 11: 'imgs/gone.png' does not exist in "
            f"{base} — skipped; labels.csv line 12: '../clock-0.png' is outside {base} — skipped: a labels CSV's files "
            "stay in the folder that holds labels.csv; labels.csv line 13: is_valid 'maybe' is not true or false — "
            "skipped; … and 2 more (`dsbuild build flat` says it again)") in flat(out), out


def test_a_file_a_labels_csv_lists_with_two_labels_is_named_by_line_and_both_rows_are_kept(tmp_path: Path, capsys) -> None:
    """Trial 9: a file listed twice with two labels was catalogued twice in silence (only `conflicts 1` said so), and
    one of the two labels was trained on; the same file listed twice with one label was named."""
    photos(tmp_path / "data" / "imgs", "chelsea", range(0, 3))
    photos(tmp_path / "data" / "imgs", "astronaut", range(0, 3))
    rows = ["file,label"] + [f"imgs/chelsea-{k}.png,cat" for k in range(3)] + [f"imgs/astronaut-{k}.png,dog" for k in range(3)]
    rows += ["imgs/chelsea-2.png,dog", "imgs/chelsea-2.png,cat"]  # line 8: another label; line 9: the same again
    m = flat_project(tmp_path, rows)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    said = flat(out)
    assert ("flat: labels.csv line 8: 'imgs/chelsea-2.png' is listed again with another label, 'dog' (line 4 gives "
            "'cat') — both kept, as a label conflict (`dsbuild mislabels` lists it): keep the one right row") in said, out
    assert ("flat: labels.csv line 9: 'imgs/chelsea-2.png' is listed again with label 'cat' (first on line 4) — "
            "skipped") in said, out
    got = sql(m, "select label, status, conflict from images where dataset = 'flat' and origin like '%chelsea-2.png' "
                 "order by label")
    assert [(label, conflict) for label, _, conflict in got] == [("cat", True), ("dog", True)], got


def test_labels_csv_takes_absolute_paths_inside_its_folder_and_a_semicolon_separator(tmp_path: Path, capsys) -> None:
    """Trial 7: an absolute path to a file beside the CSV was skipped as "outside" it; a CSV saved with ';' (a
    spreadsheet's separator in many locales) was refused for want of a file column."""
    flat_dir = tmp_path / "data"
    photos(flat_dir / "imgs", "chelsea", range(0, 3))
    photos(flat_dir / "imgs", "astronaut", range(0, 3))
    rows = ["File;Label"] + [f"{flat_dir.resolve() / 'imgs' / f'chelsea-{k}.png'};cat" for k in range(3)]
    rows += [f"imgs\\astronaut-{k}.png;dog" for k in range(3)]
    m = flat_project(tmp_path, rows)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert "skipped" not in out, out
    assert sql(m, "select label, status, count(*) from images where dataset = 'flat' group by all order by all") == [
        ("cat", "ok", 3), ("dog", "ok", 3)]


@pytest.mark.parametrize("bad", ['imgs/chelsea-2.png,"cat', '"imgs/chelsea-2.png,cat'])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_stray_quote_in_a_labels_csv_costs_its_own_row_only(tmp_path: Path, capsys, bad: str, newline: str) -> None:
    """Variant hunt 3: one unclosed quote (a typo, or a label such as 6" ruler written unquoted) ran to the end of the
    file — every later row was lost, and the one problem named the last line and held the rest of the CSV."""
    flat_dir = tmp_path / "data"
    photos(flat_dir / "imgs", "chelsea", range(0, 4))
    photos(flat_dir / "imgs", "astronaut", range(0, 4))
    rows = ["file,label", "imgs/chelsea-0.png,cat", "imgs/chelsea-1.png,cat", bad, "imgs/chelsea-3.png,cat"]
    rows += [f"imgs/astronaut-{k}.png,dog" for k in range(4)]
    m = flat_project(tmp_path, rows, newline=newline)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    problems = [line for line in out.splitlines() if "labels.csv line" in line]
    assert [flat(line) for line in problems] == [
        "flat: labels.csv line 4: not a valid CSV row (unexpected end of data) — check the quotes on this line; "
        "skipped"], out
    assert sql(m, "select label, count(*) from images where dataset = 'flat' and status = 'ok' group by all "
                  "order by all") == [("cat", 3), ("dog", 4)]


def test_a_labels_csv_names_a_file_in_either_unicode_form(tmp_path: Path, capsys) -> None:
    """Variant hunt 3 (L4): a CSV naming café.png composed (NFC) while the file on disk is decomposed (NFD: a Mac's
    file names) said "does not exist" — it is the same file to the person who wrote the CSV."""
    import unicodedata

    flat_dir = tmp_path / "data"
    photos(flat_dir / "imgs", "chelsea", range(0, 2))
    photos(flat_dir / "imgs", "astronaut", range(0, 2))
    nfc, nfd = "café.png", unicodedata.normalize("NFD", "café.png")
    save(photo_quadrant("coffee", 0, 96), flat_dir / "imgs" / nfd)
    save(photo_quadrant("rocket", 0, 96), flat_dir / "imgs" / unicodedata.normalize("NFC", "thé.png"))
    rows = ["file,label", "imgs/chelsea-0.png,cat", "imgs/chelsea-1.png,cat", "imgs/astronaut-0.png,dog",
            "imgs/astronaut-1.png,dog", f"imgs/{nfc},cat", f"imgs/{unicodedata.normalize('NFD', 'thé.png')},dog"]
    m = flat_project(tmp_path, rows)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert "does not exist" not in out, out
    got = sql(m, "select label, status, count(*) from images where dataset = 'flat' group by all order by all")
    assert got == [("cat", "ok", 3), ("dog", "ok", 3)]


def test_a_split_edited_in_a_labels_csv_moves_the_image(tmp_path: Path, capsys) -> None:
    """Variant hunt 3: a changed split column was ignored (the files were unchanged, so not read again) — the build
    said "up to date", `--resplit` moved nothing, and an image the CSV now puts in test stayed in train."""
    flat_dir = tmp_path / "data"
    photos(flat_dir / "imgs", "chelsea", range(0, 4))
    photos(flat_dir / "imgs", "astronaut", range(0, 4))
    splits = {"chelsea-0": "valid", "chelsea-1": "train", "astronaut-0": "valid"}

    def write() -> Path:
        rows = ["file,label,split"] + [f"imgs/{n}-{k}.png,{'cat' if n == 'chelsea' else 'dog'},"
                                       f"{splits.get(f'{n}-{k}', 'train')}" for n in ("chelsea", "astronaut")
                                       for k in range(4)]
        return flat_project(tmp_path, rows)

    m = write()
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    where = "select split from images where origin like ?"
    assert [sql(m, where, [f"%/{n}.png"])[0][0] for n in ("chelsea-0", "chelsea-1")] == ["valid", "train"]
    splits.update({"chelsea-0": "train", "chelsea-1": "test"})
    write()
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert "up to date" not in out, out
    assert [sql(m, where, [f"%/{n}.png"])[0][0] for n in ("chelsea-0", "chelsea-1", "astronaut-0")] == [
        "train", "test", "valid"]
    assert sql(m, "select count(*) from images where dataset = 'flat' and status = 'ok'") == [(8,)]


def test_a_class_renamed_in_a_labels_csv_whose_split_changed_too_is_not_said_to_keep_it(tmp_path: Path,
                                                                                           capsys) -> None:
    """Lead, msgs4 item 3: the CSV renamed class 'cat' to 'kitty' and moved two of its images to another split in the
    same edit; the build said all 4 "kept their split" while those two moved (the CSV's split wins). It counts the 2
    that kept it and says the other 2 moved because the CSV says so."""
    flat_dir = tmp_path / "data"
    photos(flat_dir / "imgs", "chelsea", range(0, 4))
    photos(flat_dir / "imgs", "astronaut", range(0, 4))
    splits = {"chelsea-0": "valid", "astronaut-0": "valid"}
    label = {"chelsea": "cat", "astronaut": "dog"}

    def write() -> Path:
        return flat_project(tmp_path, ["file,label,split"] + [
            f"imgs/{n}-{k}.png,{label[n]},{splits.get(f'{n}-{k}', 'train')}" for n in label for k in range(4)])

    m = write()
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    label["chelsea"] = "kitty"
    splits.update({"chelsea-0": "train", "chelsea-1": "test"})
    write()
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    where = "select label, split from images where origin like ? and reason is distinct from 'source removed'"
    assert [sql(m, where, [f"%/chelsea-{k}.png"])[0] for k in range(4)] == [
        ("kitty", "train"), ("kitty", "test"), ("kitty", "train"), ("kitty", "train")]
    assert ("flat: 4 images under a renamed, merged or split class (class 'cat' renamed 'kitty'): 2 kept their split, 2 "
            "moved to the split that the labels CSV's split column now names") in flat(out), out


def test_a_class_folder_renamed_with_a_file_moved_to_another_split_folder_is_not_said_to_keep_it(
        tmp_path: Path, capsys) -> None:
    """The same in a split tree: cat/ renamed kitty/ in train/ and valid/, one of its files moved from train/ to
    valid/ in the same go — it is said to have moved with its file, the other 4 to have kept their split."""
    tree = tmp_path / "tree"
    photos(tree / "train" / "cat", "chelsea", range(0, 3))
    photos(tree / "valid" / "cat", "coffee", range(0, 2))
    photos(tree / "train" / "dog", "astronaut", range(0, 3))
    photos(tree / "valid" / "dog", "rocket", range(0, 2))
    m = manifest(tmp_path)
    assert run_cli(capsys, m, "-q", "build", "--workers", "1")[0] == 0
    for split in ("train", "valid"):
        (tree / split / "cat").rename(tree / split / "kitty")
    (tree / "train" / "kitty" / "chelsea-0.png").rename(tree / "valid" / "kitty" / "chelsea-0.png")
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert sql(m, "select label, split from images where origin like '%/chelsea-0.png' and reason is distinct from "
                  "'source removed'") == [("kitty", "valid")]
    assert ("pets: 5 images under a renamed, merged or split class (class folder 'cat' renamed 'kitty'): 4 kept their "
            "split, 1 moved with its file to another split folder") in flat(out), out


def test_a_csv_export_builds_again_as_a_labels_csv_once_labels_root_holds_its_files(tmp_path: Path, capsys) -> None:
    """Trial 7: `export --format csv` lists the catalog's stored files by absolute path; built as a labels_csv, every
    row was skipped as outside the CSV's folder and the build said "up to date — 0 accepted images". Now the build
    is refused before it starts, naming the setting that takes them (labels_root), and with it every image comes
    back with its label and split."""
    flat_dir = tmp_path / "data"
    photos(flat_dir, "chelsea", range(0, 4))
    photos(flat_dir, "astronaut", range(0, 4))
    rows = ["file,label"] + [f"chelsea-{k}.png,cat" for k in range(4)] + [f"astronaut-{k}.png,dog" for k in range(4)]
    m = flat_project(tmp_path, rows)
    assert run_cli(capsys, m, "build", "--workers", "1")[0] == 0
    code, out, err = run_cli(capsys, m, "export", "flat", "--format", "csv", "--to", str(tmp_path / "exp" / "flat.csv"))
    assert code == 0, err
    again = tmp_path / "again"
    again.mkdir()
    m2 = again / "datasets.toml"
    text = '[datasets.copy]\nlabels_csv = "../exp/flat.csv"\n[datasets.copy.dedup]\nsemantic = false\n'
    m2.write_text(text)
    code, out, err = run_cli(capsys, m2, "build", "--workers", "1")
    assert code == 2, out
    exp = (tmp_path / "exp").resolve()
    stored = [str(Path(p).parent) for (p,) in sql(m, "select path from images where dataset = 'flat'")]
    root = Path(os.path.commonpath([*stored, str(exp)]))
    said = flat(err)
    assert (f"datasets.copy.labels_csv: none of the 8 rows of {again / '../exp/flat.csv'} can be used — the first: "
            f"flat.csv line 2: ") in said, err
    assert (f"— skipped: a labels CSV's files stay in the folder that holds flat.csv; flat.csv: 8 rows list files "
            f"outside {exp} — to build them, set labels_root = \"{root}\" on the dataset (the folder its files must "
            "stay in)") in said, err
    assert sql(m2, "select count(*) from builds") == [(0,)] if (again / "catalog").exists() else True
    m2.write_text(text.replace('"\n[', f'"\nlabels_root = "{root}"\n[', 1))
    code, out, err = run_cli(capsys, m2, "build", "--workers", "1")
    assert code == 0, err
    before = sql(m, "select sha256, label, split from images where dataset = 'flat' order by 1")
    assert sql(m2, "select sha256, label, split from images where dataset = 'copy' and status = 'ok' order by 1") == before
    assert len(before) == 8


def test_labels_root_may_be_a_symlinked_data_folder_and_advice_names_only_what_can_help(tmp_path: Path,
                                                                                      capsys) -> None:
    """A probe of stop 30: `labels_root = "imgs"` where imgs is a symlink to the data disk refused every row (the
    rows resolve to the target, the root did not); a CSV of files that exist nowhere here was told to set
    labels_root = "/", which cannot help."""
    real = tmp_path / "disk" / "real"
    photos(real, "chelsea", range(0, 2))
    photos(real, "astronaut", range(0, 2))
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "imgs").symlink_to(real, target_is_directory=True)
    rows = ["file,label"] + [f"{proj / 'imgs' / f'chelsea-{k}.png'},cat" for k in range(2)]
    rows += [f"{proj / 'imgs' / f'astronaut-{k}.png'},dog" for k in range(2)]
    (proj / "labels.csv").write_text("\n".join(rows) + "\n")
    m = proj / "datasets.toml"
    m.write_text('[datasets.flat]\nlabels_csv = "labels.csv"\nlabels_root = "imgs"\n'
                 '[datasets.flat.dedup]\nsemantic = false\n')
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert "skipped" not in out, out
    assert sql(m, "select label, count(*) from images where dataset = 'flat' and status = 'ok' group by all "
                  "order by all") == [("cat", 2), ("dog", 2)]

    gone = ["file,label", "/nowhere/on/this/machine/a.png,cat", "/nowhere/else/b.png,dog"]
    (proj / "other.csv").write_text("\n".join(gone) + "\n")
    m.write_text('[datasets.away]\nlabels_csv = "other.csv"\n')
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 2, out
    assert (f"other.csv: 2 rows list files outside {proj.resolve()}, and none of them exists here — give the CSV "
            "paths to files on this machine") in flat(err), err
    assert "labels_root =" not in err, err


@pytest.mark.parametrize("root, why", [("missing", "does not exist"), ("labels.csv", "is not a folder")])
def test_labels_root_that_is_no_folder_is_refused_before_the_build(tmp_path: Path, capsys, root: str, why: str) -> None:
    photos(tmp_path, "chelsea", range(0, 1))
    photos(tmp_path, "astronaut", range(0, 1))
    (tmp_path / "labels.csv").write_text("file,label\nchelsea-0.png,cat\nastronaut-0.png,dog\n")
    m = tmp_path / "datasets.toml"
    m.write_text(f'[datasets.flat]\nlabels_csv = "labels.csv"\nlabels_root = "{root}"\n')
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 2, out
    assert "Traceback" not in err
    assert f"datasets.flat.labels_root: {tmp_path / root} {why}" in flat(err), err
    assert not (tmp_path / "catalog" / "store").exists()


def test_labels_root_without_labels_csv_is_refused(tmp_path: Path, capsys) -> None:
    m = tmp_path / "datasets.toml"
    m.write_text('[datasets.pets]\nimagefolder = "tree"\nlabels_root = "tree"\n')
    code, out, err = run_cli(capsys, m, "status")
    assert code == 2, out
    assert ("datasets.pets.labels_root: is the folder a labels_csv's files stay in — set labels_csv too, or remove "
            "it") in flat(err), err


def test_labels_csv_a_symlink_out_of_the_folder_is_refused_like_dot_dot(tmp_path: Path, capsys) -> None:
    """Variant hunt finding 9: '../x.png' was refused as leaving the CSV's folder while a symlink in the folder
    pointing out of it was accepted. Both are refused, after resolving; a symlink that stays inside is read."""
    flat_dir = tmp_path / "data"
    photos(flat_dir / "imgs", "chelsea", range(0, 3))
    photos(flat_dir / "imgs", "astronaut", range(0, 3))
    photos(tmp_path / "elsewhere", "clock", range(0, 2))
    (flat_dir / "imgs" / "out.png").symlink_to(tmp_path / "elsewhere" / "clock-0.png")
    (flat_dir / "imgs" / "in.png").symlink_to(flat_dir / "imgs" / "chelsea-2.png")
    (flat_dir / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    rows = ["file,label", "imgs/chelsea-0.png,cat", "imgs/chelsea-1.png,cat", "imgs/astronaut-0.png,dog",
            "imgs/astronaut-1.png,dog", "imgs/astronaut-2.png,dog", "imgs/out.png,dog", "more/clock-1.png,dog",
            "imgs/in.png,cat"]
    m = flat_project(tmp_path, rows, extra="near = false\n")

    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    said = flat(out)
    base = flat_dir.resolve()
    elsewhere = (tmp_path / "elsewhere").resolve()
    for line in (f"labels.csv line 7: 'imgs/out.png' is outside {base} (it leads to {elsewhere / 'clock-0.png'}) — "
                 "skipped: a labels CSV's files stay in the folder that holds labels.csv",
                 f"labels.csv line 8: 'more/clock-1.png' is outside {base} (it leads to {elsewhere / 'clock-1.png'}) — "
                 "skipped: a labels CSV's files stay in the folder that holds labels.csv"):
        assert f"flat: {line}" in said, (line, out)
    got = sql(m, "select label, count(*) from images where dataset = 'flat' and status = 'ok' group by all order by all")
    assert got == [("cat", 3), ("dog", 3)]  # in.png, a symlink inside the folder, is read
    assert not sql(m, "select origin from images where origin like '%clock%'")


def test_labels_csv_that_is_a_named_pipe_is_refused_without_waiting_on_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    (tmp_path / "datasets.toml").write_text('[datasets.flat]\nlabels_csv = "labels.csv"\n')
    # A child process with a timeout: a regression would block reading the pipe, not hang the test run.
    done = subprocess.run([sys.executable, "-m", "dsbuild", "-m", str(tmp_path / "datasets.toml"), "build"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert (f"datasets.flat.labels_csv: {fifo} is a named pipe (FIFO), not a regular file — give the CSV file that "
            "lists the images") in flat(done.stderr), done.stderr


def test_labels_csv_without_a_file_column_is_refused_by_name(tmp_path: Path, capsys) -> None:
    (tmp_path / "labels.csv").write_text("img,label\na.png,cat\nb.png,dog\n")
    m = tmp_path / "datasets.toml"
    m.write_text('[datasets.flat]\nlabels_csv = "labels.csv"\n')
    code, out, err = run_cli(capsys, m, "build")
    assert code == 2, out
    assert (f"datasets.flat.labels_csv: {tmp_path / 'labels.csv'} line 1: header 'img,label' has no file column "
            "(file, fname, filename, name, path, image) — rename column 'img' to image; the first row must be a header "
            "such as file,label (optional: split or is_valid; separated by commas, or by ';', tabs or '|')") in flat(err), err


HEADER_RULE = ("the first row must be a header such as file,label (optional: split or is_valid; separated by commas, "
               "or by ';', tabs or '|')")
FILE_COLS = "file column (file, fname, filename, name, path, image)"


@pytest.mark.parametrize("header, says", [
    # Trial 9: 'File,Labels' said which column was missing, not that 'Labels' was nearly it.
    ("File,Labels", "header 'File,Labels' has no label column (label, class) — rename column 'Labels' to label; "),
    ("flie,lable,split", f"header 'flie,lable,split' has no {FILE_COLS} and no label column (label, class) — rename "
                         "column 'flie' to file and column 'lable' to label; "),
    ("file,classes", "header 'file,classes' has no label column (label, class) — rename column 'classes' to class; "),
    ("filenames,label", f"header 'filenames,label' has no {FILE_COLS} — rename column 'filenames' to filename; "),
    # Nothing close: the rule alone, as before; a column in use (split) is never offered.
    ("picture,tag", f"header 'picture,tag' has no {FILE_COLS} and no label column (label, class) — "),
    ("file,split", "header 'file,split' has no label column (label, class) — "),
])
def test_a_labels_csv_header_near_miss_names_the_column_expected(tmp_path: Path, header: str, says: str) -> None:
    from dsbuild.errors import DsbuildError
    from dsbuild.sources.labelcsv import read_labels_csv

    path = tmp_path / "labels.csv"
    path.write_text(f"{header}\na.png,cat,train\n")
    with pytest.raises(DsbuildError) as err:
        read_labels_csv(path, key="datasets.flat.labels_csv")
    assert str(err.value) == f"datasets.flat.labels_csv: {path} line 1: {says}{HEADER_RULE}"
    assert err.value.exit_code == 2


def test_one_broken_labels_csv_does_not_stop_the_other_datasets(tmp_path: Path, capsys) -> None:
    # Trial 9 L7: `dsbuild build` with a manifest of two datasets, one of whose CSV says `labels`, refused both.
    for name, photo in (("cat", "chelsea"), ("dog", "astronaut")):
        photos(tmp_path / "data", photo, range(0, 3))
    rows = "".join(f"{p}-{k}.png,{label}\n" for label, p in (("cat", "chelsea"), ("dog", "astronaut")) for k in range(3))
    (tmp_path / "data" / "good.csv").write_text("file,label\n" + rows)
    (tmp_path / "data" / "bad.csv").write_text("file,labels\n" + rows)
    m = tmp_path / "datasets.toml"
    m.write_text('[datasets.good]\nlabels_csv = "data/good.csv"\n[datasets.good.dedup]\nsemantic = false\n'
                 '[datasets.bad]\nlabels_csv = "data/bad.csv"\n[datasets.bad.dedup]\nsemantic = false\n')
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 2, err
    bad = tmp_path / "data" / "bad.csv"
    assert err.endswith(
        "Error: 1 of 2 datasets not built (bad); the other was built — fix it and run `dsbuild build bad`:\n"
        f"  datasets.bad.labels_csv: {bad} line 1: header 'file,labels' has no label column (label, class) — rename "
        "column 'labels' to label; the first row must be a header such as file,label (optional: split or is_valid; "
        "separated by commas, or by ';', tabs or '|')\n"), err
    assert "bad: not built — 1 problem, listed at the end; the other datasets build" in err
    assert "Traceback" not in out + err
    assert "good" in out and "bad" not in out  # the summary table: the dataset built
    assert sql(m, "select dataset, status, count(*) from images group by all order by all") == [("good", "ok", 6)]
    assert sql(m, "select outcome, json_keys(summary) from builds") == [("ok", ["datasets", "not_built"])]
    # Fixed as the message says: the build that was refused builds, the one built before is up to date.
    bad.write_text("file,label\n" + rows)
    code, out, err = run_cli(capsys, m, "build", *command_in_text(err), "--workers", "1")
    assert code == 0, err
    assert sql(m, "select dataset, status, count(*) from images group by all order by all") == [
        ("bad", "ok", 6), ("good", "ok", 6)]
    # Every dataset broken: refused before anything starts, as a build of one broken dataset always was.
    bad.write_text("file,labels\n" + rows)
    (tmp_path / "data" / "good.csv").write_text("flie,label\n" + rows)
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 2 and err.startswith("Error: cannot build:\n  datasets.good.labels_csv: "), err
    assert sql(m, "select count(*) from builds") == [(2,)]


def command_in_text(message: str) -> list[str]:
    """The dataset names of the ``dsbuild build ...`` command a message tells the user to run."""
    import re

    m = re.search(r"`dsbuild build ([^`]+)`", message)
    assert m, message
    return m.group(1).split()


def test_a_url_list_of_local_files_says_to_use_labels_csv(tmp_path: Path, capsys) -> None:
    (tmp_path / "labels.csv").write_text("file,label\nimg1.jpg,cat\nimg2.jpg,dog\n")
    m = tmp_path / "datasets.toml"
    m.write_text('[datasets.flat.classes]\ncat = { urls = "labels.csv" }\ndog = { urls = "labels.csv" }\n')
    code, out, err = run_cli(capsys, m, "build", "-q")
    assert code == 2, out  # refused before the build starts (trial 5: after every folder had been verified)
    assert (f"datasets.flat.classes.cat.urls: URL list {tmp_path / 'labels.csv'} line 1: CSV header 'file,label' has no 'url' column — it lists "
            "local files (file column): give it as labels_csv = \"…/labels.csv\" in the dataset's table instead of "
            "urls (file paths relative to the CSV's folder, one label column, optional split or is_valid)") \
        in flat(err), err


def test_pointing_imagefolder_at_the_tree_above_train_says_which_images_moved_split(tmp_path: Path, capsys) -> None:
    """Fresh-user trial 10 (L8): `imagefolder = "pets/train"` (a class-folder tree: dsbuild draws its own 80/20
    split), then the path fixed to `pets` (train/ and valid/ give the splits): the images the first build had
    drawn into valid became train without a word. Splits are stable, so the build says what moved and why."""
    tree = tmp_path / "tree"
    photos(tree / "train" / "cat", "chelsea", range(0, 4))
    photos(tree / "train" / "cat", "coffee", range(0, 4))
    photos(tree / "train" / "dog", "astronaut", range(0, 4))
    photos(tree / "train" / "dog", "rocket", range(0, 4))
    photos(tree / "valid" / "cat", "camera", range(0, 2))
    photos(tree / "valid" / "dog", "clock", range(0, 2))
    m = manifest(tmp_path, "tree/train")
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    drawn = dict(sql(m, "SELECT split, count(*) FROM images WHERE status = 'ok' GROUP BY 1"))
    assert drawn["valid"] > 0 and "moved to another split" not in flat(out), (drawn, out)
    m.write_text(m.read_text().replace('"tree/train"', '"tree"'))
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0, err
    assert sql(m, "SELECT split, count(*) FROM images WHERE status = 'ok' GROUP BY 1 ORDER BY 1") == [
        ("train", 16), ("valid", 4)]
    n = drawn["valid"]
    assert (f"{n} images moved to another split (valid → train {n}): the split their sources give changed (a split "
            "folder, a labels CSV's split column) or a copy with a given split joined their groups") in flat(out), out
    # Nothing moves on the next build: no note.
    code, out, err = run_cli(capsys, m, "build", "--workers", "1")
    assert code == 0 and "moved to another split" not in flat(out), out
