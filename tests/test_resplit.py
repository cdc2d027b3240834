"""Carving splits out of given ones, and changing split settings explicitly (``build --resplit``).

Real photos (crops of ``skimage.data``, :mod:`workflow_data`) in ImageFolder trees and class
folders, real DuckDB catalogs in tmp_path, the CLI in-process. Every error message's
suggested fix is applied as written (the manifest text and the command are taken from the
message) and shown to work.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from helpers import run_cli
from workflow_data import class_photos

from dsbuild.catalog import Catalog
from dsbuild.cycle import training_frame
from dsbuild.errors import ManifestError
from dsbuild.manifest import load_manifest, parse_manifest

pytestmark = pytest.mark.usefixtures("wide_terminal")

CLASSES = (("bridge", "astronaut", "plain"), ("tower", "coffee", "plain"), ("temple", "rocket", "plain"),
           ("castle", "chelsea", "plain"))
TRAIN, TEST = 10, 2
CARVE_LINE = 'carve = { from = "train", valid = 0.2 }'


def write_tree(root: Path, *, train: int = TRAIN, test: int = TEST, start: int = 0) -> None:
    """``root/train/<class>/`` and ``root/test/<class>/`` JPEGs (images ``start..``), plus one exact copy in train."""
    photos = class_photos(CLASSES, 16)
    for name, *_ in CLASSES:
        for split, lo, hi in (("train", start, start + train), ("test", 14, 14 + test)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(lo, hi):
                (folder / f"{name}-{k:02d}.jpg").write_bytes(photos[name][k])
    if start == 0:
        shutil.copyfile(root / "train" / "bridge" / "bridge-00.jpg", root / "train" / "bridge" / "bridge-00-copy.jpg")


def photo_folders(root: Path) -> None:
    """``root/<class>/<k>.jpg``: 10 photos of each class of :data:`CLASSES`."""
    photos = class_photos(CLASSES, 16)
    for name, *_ in CLASSES:
        (root / name).mkdir(parents=True)
        for k in range(10):
            (root / name / f"{k}.jpg").write_bytes(photos[name][k])


def manifest_at(folder: Path, body: str) -> Path:
    """``folder/datasets.toml`` with ``body``, dedup at its defaults (the crops of
    :func:`workflow_data.class_photos` share no detail: no near duplicates but the planted copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datasets.toml"
    path.write_text(body)
    return path


def images(manifest: Path, dataset: str) -> pd.DataFrame:
    with Catalog.open_readonly(load_manifest(manifest).catalog) as cat:
        return cat.images(dataset).set_index("origin", drop=False).sort_index()


def given_split(origin: str, tree: Path) -> str:
    return Path(origin).relative_to(tree).parts[0]


def command_in(message: str) -> list[str]:
    """The ``dsbuild ...`` command a message tells the user to run, as CLI arguments."""
    m = re.search(r"`dsbuild ([^`]+)`", message)
    assert m, message
    return shlex.split(m.group(1))


def train_refusal(manifest: Path, dataset: str) -> str:
    """The error the model commands give before any training (the catalog check they share)."""
    ds = load_manifest(manifest).dataset(dataset)
    with Catalog.open_readonly(load_manifest(manifest).catalog) as cat:
        try:
            training_frame(cat, dataset, split=ds.split)
        except Exception as exc:  # noqa: BLE001 - the message is what we check
            return str(exc)
    return ""


@pytest.fixture
def landmarks(tmp_path: Path) -> tuple[Path, Path]:
    tree = tmp_path / "landmarks"
    write_tree(tree)
    manifest = manifest_at(tmp_path, 'catalog = "cat/dsbuild.duckdb"\n[datasets.landmarks]\nimagefolder = "landmarks"\n')
    return manifest, tree


def test_given_train_and_test_get_a_carve_named_by_train_and_the_fix_works(landmarks, capsys) -> None:
    manifest, tree = landmarks
    code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "1")
    assert code == 0, err
    df = images(manifest, "landmarks")
    ok = df[df["status"] == "ok"]
    assert ok["split"].value_counts().to_dict() == {"train": 40, "test": 8}  # given splits, no valid

    code, out, err = run_cli(capsys, manifest, "train", "landmarks")
    assert code == 1
    assert err == (
        "Error: dataset 'landmarks' has no valid images: its folder gives test and train and no valid — carve one out "
        'of train: add carve = { from = "train", valid = 0.2 } to [datasets.landmarks.split], then run '
        "`dsbuild build landmarks --resplit`\n")
    snippet = re.search(r"add (carve = \{.*?\}) to \[(datasets\.landmarks\.split)\]", err)
    assert snippet and snippet.group(1) == CARVE_LINE
    manifest.write_text(manifest.read_text() + f"[{snippet.group(2)}]\n{snippet.group(1)}\n")

    # Without the flag the build refuses (the settings changed), naming the flag.
    code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "1")
    assert code == 2
    assert err == (
        "Error: the split settings of 'landmarks' (carve: none → valid 0.2 from train) changed since the last build, "
        "and images keep their splits — run `dsbuild build landmarks --resplit` to assign the splits again (runs "
        "trained before keep the old ones), or put the old settings back\n")
    assert images(manifest, "landmarks")["split"].equals(df["split"])  # nothing moved

    code, out, err = run_cli(capsys, manifest, *command_in(err), "-q", "--workers", "1")
    assert code == 0, err
    after = images(manifest, "landmarks")
    moved = after[after["split"] != df["split"]]
    assert set(moved["split"]) == {"valid"} and set(df.loc[moved.index, "split"]) == {"train"}
    assert f"--resplit: {len(moved)} images moved to another split (train → valid {len(moved)}); " \
           "runs before this build used the old splits" in " ".join(out.split())
    ok = after[after["status"] == "ok"]
    for label, grp in ok.groupby("label"):
        from_train = grp[[given_split(o, tree) == "train" for o in grp.index]]
        assert from_train["split"].value_counts().to_dict() == {"train": 8, "valid": 2}, label  # 20 % of 10
        assert set(grp[[given_split(o, tree) == "test" for o in grp.index]]["split"]) == {"test"}
    pair = after[after["origin"].str.contains("bridge-00")]
    assert len(pair) == 2 and pair["dup_group"].nunique() == 1 and pair["split"].nunique() == 1
    assert train_refusal(manifest, "landmarks") == ""  # what `dsbuild train` checked now passes

    # Built again with nothing changed: nothing moves, no refusal.
    code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "1")
    assert code == 0, err
    assert images(manifest, "landmarks")["split"].equals(after["split"])


def carved_manifest(folder: Path, tree: Path, *, seed: int = 42) -> Path:
    return manifest_at(folder, f'catalog = "cat/dsbuild.duckdb"\n[datasets.landmarks]\nimagefolder = "{tree}"\n'
                               f"[datasets.landmarks.split]\nseed = {seed}\n{CARVE_LINE}\n")


def test_a_carve_is_deterministic_stratified_and_stable(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    write_tree(tree)
    first, second = carved_manifest(tmp_path / "a", tree), carved_manifest(tmp_path / "b", tree)
    for manifest in (first, second):
        code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "1")
        assert code == 0, err
    a, b = images(first, "landmarks"), images(second, "landmarks")
    assert a["split"].equals(b["split"])  # another catalog, the same splits
    assert (a[a["status"] == "ok"].groupby("label")["split"].value_counts().unstack().to_dict("list")
            == {"test": [2] * 4, "train": [8] * 4, "valid": [2] * 4})

    other_seed = carved_manifest(tmp_path / "c", tree, seed=7)
    assert run_cli(capsys, other_seed, "build", "-q", "--workers", "1")[0] == 0
    c = images(other_seed, "landmarks")
    assert not c["split"].equals(a["split"])  # the seed decides which images are carved

    # More photos in train/: no existing image moves, the new ones are carved too.
    write_tree(tree, train=5, test=0, start=TRAIN)
    code, out, err = run_cli(capsys, first, "build", "-q", "--workers", "1")
    assert code == 0, err
    grown = images(first, "landmarks")
    assert len(grown) == len(a) + 20
    assert grown.loc[a.index, "split"].equals(a["split"])
    new = grown.drop(index=a.index)
    assert set(new["split"]) == {"train", "valid"}
    # Counted over every file that takes a split (a duplicate goes where its representative goes).
    per_class = grown[grown["status"].isin(["ok", "duplicate"])].groupby("label")["split"].value_counts().unstack()
    assert list(per_class["valid"]) == [3] * 4  # 20 % of 15


def test_changed_fractions_are_refused_then_resplit_moves_and_reports(tmp_path: Path, capsys) -> None:
    photo_folders(tmp_path / "photos")
    head = 'catalog = "cat/dsbuild.duckdb"\n[datasets.places.classes]\n' + "".join(
        f'{name} = {{ folders = "photos/{name}" }}\n' for name, *_ in CLASSES)
    manifest = manifest_at(tmp_path, head + "[datasets.places.split]\ntrain = 0.8\nvalid = 0.2\n")
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    before = images(manifest, "places")
    assert before["split"].value_counts().to_dict() == {"train": 32, "valid": 8}

    manifest_at(tmp_path, head + "[datasets.places.split]\ntrain = 0.6\nvalid = 0.4\nseed = 3\n")
    code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "1")
    assert code == 2
    assert err == (
        "Error: the split settings of 'places' (train 0.8 → 0.6, valid 0.2 → 0.4, seed 42 → 3) changed since the last "
        "build, and images keep their splits — run `dsbuild build places --resplit` to assign the splits again (runs "
        "trained before keep the old ones), or put the old settings back\n")
    code, out, err = run_cli(capsys, manifest, *command_in(err), "-q", "--workers", "1")
    assert code == 0, err
    after = images(manifest, "places")
    assert after["split"].value_counts().to_dict() == {"train": 24, "valid": 16}
    moves = (before["split"] + " → " + after["split"])[before["split"] != after["split"]].value_counts()
    detail = ", ".join(f"{k} {v}" for k, v in sorted(moves.items()))
    assert f"--resplit: {moves.sum()} images moved to another split ({detail})" in " ".join(out.split())

    # The same settings in a fresh catalog give the same splits: --resplit is deterministic.
    fresh = manifest_at(tmp_path / "fresh", manifest.read_text().replace('"photos/', f'"{tmp_path}/photos/'))
    assert run_cli(capsys, fresh, "build", "-q", "--workers", "1")[0] == 0
    pd.testing.assert_series_equal(images(fresh, "places")["split"], after["split"])


def test_valid_zero_names_the_setting_and_the_fix_works(tmp_path: Path, capsys) -> None:
    photos = class_photos(CLASSES[:2], 16)
    for name, *_ in CLASSES[:2]:
        (tmp_path / "photos" / name).mkdir(parents=True)
        for k in range(6):
            (tmp_path / "photos" / name / f"{k}.jpg").write_bytes(photos[name][k])
    classes = 'bridge = { folders = "photos/bridge" }\ntower = { folders = "photos/tower" }\n'
    manifest = manifest_at(tmp_path, f'[datasets.p.classes]\n{classes}[datasets.p.split]\ntrain = 1.0\nvalid = 0.0\n')
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    code, out, err = run_cli(capsys, manifest, "mislabels", "p")
    assert code == 1
    assert err == ("Error: dataset 'p' has no valid images — set valid = 0.2 (and train = 0.8) in [datasets.p.split], "
                   "then run `dsbuild build p --resplit`\n")
    manifest_at(manifest.parent, f"[datasets.p.classes]\n{classes}[datasets.p.split]\ntrain = 0.8\nvalid = 0.2\n")
    assert run_cli(capsys, manifest, *command_in(err), "-q", "--workers", "1")[0] == 0
    assert train_refusal(manifest, "p") == ""


def test_classes_too_small_for_a_valid_image_say_add_images_and_that_works(tmp_path: Path, capsys) -> None:
    photos = class_photos(CLASSES[:2], 16)
    for name, *_ in CLASSES[:2]:
        (tmp_path / "photos" / name).mkdir(parents=True)
        for k in range(2):
            (tmp_path / "photos" / name / f"{k}.jpg").write_bytes(photos[name][k])
    manifest = manifest_at(tmp_path, '[datasets.p.classes]\nbridge = { folders = "photos/bridge" }\n'
                                     'tower = { folders = "photos/tower" }\n')
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    message = train_refusal(manifest, "p")
    assert message == ("dataset 'p' has no valid images: its largest class has 2 image(s), too few to set one aside — "
                       "add images (a class gets its first valid image at 3 with valid = 0.2), then run "
                       "`dsbuild build p`")
    for name, *_ in CLASSES[:2]:
        (tmp_path / "photos" / name / "2.jpg").write_bytes(photos[name][2])
    assert run_cli(capsys, manifest, *command_in(message), "-q", "--workers", "1")[0] == 0
    assert train_refusal(manifest, "p") == ""


def test_a_carve_on_a_catalog_without_a_split_record_is_a_change(landmarks, capsys) -> None:
    """A catalog built before split records existed never carved: adding a carve needs --resplit."""
    manifest, _ = landmarks
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    with duckdb.connect(str(load_manifest(manifest).catalog)) as con:
        con.execute("DELETE FROM meta WHERE key = 'split:landmarks'")
    manifest.write_text(manifest.read_text() + f"[datasets.landmarks.split]\n{CARVE_LINE}\n")
    code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "1")
    assert code == 2 and "(carve: none → valid 0.2 from train)" in err and "--resplit" in err
    assert run_cli(capsys, manifest, *command_in(err), "-q", "--workers", "1")[0] == 0
    assert set(images(manifest, "landmarks")["split"]) == {"train", "valid", "test"}


@pytest.mark.parametrize(("carve", "problem"), [
    ('{ from = "train", vaild = 0.2 }', "datasets.d.split.carve.vaild: unknown key (did you mean 'valid'?)"),
    ('{ from = "trian", valid = 0.2 }', "datasets.d.split.carve.from: must be one of train, valid, test, not 'trian'"),
    ('{ from = "train", valid = 1.2 }', "datasets.d.split.carve.valid: must be at least 0 and below 1, not 1.2"),
    ('{ from = "train", valid = 0.6, test = 0.4 }',
     "datasets.d.split.carve: valid 0.6 + test 0.4 must stay below 1 (something must stay in train)"),
    ('{ from = "valid", valid = 0.5 }',
     "datasets.d.split.carve.valid: cannot carve valid out of valid — name another split (from = \"train\")"),
    ('{ from = "train" }',
     'datasets.d.split.carve: carves nothing — give valid (or test) a fraction, e.g. carve = { from = "train", valid = 0.2 }'),
    ('"valid"', "datasets.d.split.carve: must be a table such as { from = \"train\", valid = 0.2 }, not 'valid'"),
])  # fmt: skip
def test_bad_carves_are_named_by_key(tmp_path: Path, carve: str, problem: str) -> None:
    text = f'[datasets.d]\nimagefolder = "tree"\n[datasets.d.split]\ncarve = {carve}\n'
    with pytest.raises(ManifestError) as err:
        parse_manifest(text, tmp_path / "datasets.toml")
    assert str(err.value) == f"datasets.toml: 1 problem:\n  {problem}"


def test_a_carve_of_test_out_of_train_and_valid_kept_as_given(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    write_tree(tree)
    for name, *_ in CLASSES:  # the given test/ folder becomes valid/: carve test out of train instead
        (tree / "test" / name).rename(tree / "test" / f"_{name}")
    (tree / "test").rename(tree / "valid")
    for name, *_ in CLASSES:
        (tree / "valid" / f"_{name}").rename(tree / "valid" / name)
    manifest = manifest_at(tmp_path, f'[datasets.d]\nimagefolder = "tree"\n[datasets.d.split]\n'
                                     'carve = { from = "train", test = 0.3 }\n')
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    df = images(manifest, "d")
    ok = df[df["status"] == "ok"]
    assert set(ok[[given_split(o, tree) == "valid" for o in ok.index]]["split"]) == {"valid"}
    assert ok.groupby("label")["split"].value_counts().unstack().to_dict("list") == {
        "test": [3] * 4, "train": [7] * 4, "valid": [2] * 4}


# --------------------------------------------------------------------------- nested: a fraction raised only adds


def _resplit(capsys, manifest: Path, head: str, split: str) -> str:
    """``manifest`` rewritten with the ``[split]`` table ``split``, then ``build --resplit``: its output, flat."""
    manifest.write_text(head + split)
    code, out, err = run_cli(capsys, manifest, "build", "--resplit", "-q", "--workers", "1")
    assert code == 0, err
    return " ".join(out.split())


def _ids(df: pd.DataFrame, split: str) -> set[str]:
    return set(df.loc[df["split"] == split, "image_id"])


def test_raising_a_fraction_keeps_that_split_and_moves_only_the_difference(tmp_path: Path, capsys) -> None:
    """Trial 4: valid 0.2 → 0.3 with --resplit replaced the whole valid split (24 valid images, then 36 others),
    so every new valid image had been trained on. Nested now: a raised fraction keeps its images and takes the
    difference from train; lowered, it gives back only the difference; back to the old settings, the old splits."""
    photo_folders(tmp_path / "photos")
    head = 'catalog = "cat/dsbuild.duckdb"\n[datasets.places]\nimagefolder = "photos"\n'
    manifest = manifest_at(tmp_path, head + "[datasets.places.split]\ntrain = 0.8\nvalid = 0.2\n")
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    first = images(manifest, "places")
    assert first.groupby("label")["split"].value_counts().unstack().to_dict("list") == {
        "train": [8] * 4, "valid": [2] * 4}

    out = _resplit(capsys, manifest, head, "[datasets.places.split]\ntrain = 0.7\nvalid = 0.3\n")
    assert ("places: --resplit: 4 images moved to another split (train → valid 4); runs before this build used "
            "the old splits") in out
    wider = images(manifest, "places")
    assert _ids(first, "valid") < _ids(wider, "valid")  # the 8 stay, one per class joins
    assert wider.groupby("label")["split"].value_counts().unstack().to_dict("list") == {
        "train": [7] * 4, "valid": [3] * 4}

    # A test split carved from the other end: valid keeps every image, test takes only train images.
    out = _resplit(capsys, manifest, head, "[datasets.places.split]\ntrain = 0.5\nvalid = 0.3\ntest = 0.2\n")
    assert "places: --resplit: 8 images moved to another split (train → test 8)" in out
    tested = images(manifest, "places")
    assert _ids(tested, "valid") == _ids(wider, "valid")
    out = _resplit(capsys, manifest, head, "[datasets.places.split]\ntrain = 0.6\nvalid = 0.3\ntest = 0.1\n")
    assert "places: --resplit: 4 images moved to another split (test → train 4)" in out
    assert _ids(images(manifest, "places"), "test") < _ids(tested, "test")

    # Lowered back: only the difference returns to train, and the first build's splits come back whole.
    out = _resplit(capsys, manifest, head, "[datasets.places.split]\ntrain = 0.8\nvalid = 0.2\n")
    assert "places: --resplit: 8 images moved to another split (test → train 4, valid → train 4)" in out
    pd.testing.assert_series_equal(images(manifest, "places")["split"], first["split"])


def test_raising_a_carve_keeps_the_carved_images(tmp_path: Path, capsys) -> None:
    """Trial 4, with carve: valid 0.2 → 0.3 of a given train/ moved all 20 valid images out. Now the carved
    valid images stay (the planted copy with its original), and one more per class joins them."""
    tree = tmp_path / "tree"
    write_tree(tree)
    head = f'catalog = "cat/dsbuild.duckdb"\n[datasets.landmarks]\nimagefolder = "{tree}"\n'
    manifest = manifest_at(tmp_path, head + f"[datasets.landmarks.split]\n{CARVE_LINE}\n")
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    before = images(manifest, "landmarks")
    out = _resplit(capsys, manifest, head, '[datasets.landmarks.split]\ncarve = { from = "train", valid = 0.3 }\n')
    after = images(manifest, "landmarks")
    moved = after[after["split"] != before["split"]]
    assert set(before.loc[moved.index, "split"]) == {"train"} and set(moved["split"]) == {"valid"}
    assert f"landmarks: --resplit: {len(moved)} images moved to another split (train → valid {len(moved)})" in out
    assert _ids(before, "valid") < _ids(after, "valid")
    ok = after[after["status"] == "ok"]
    assert ok.groupby("label")["split"].value_counts().unstack().to_dict("list") == {
        "test": [2] * 4, "train": [7] * 4, "valid": [3] * 4}  # 30 % of 10 carved per class, test/ as given


def test_changed_split_settings_of_one_dataset_do_not_stop_the_others(tmp_path: Path, capsys) -> None:
    # As a broken labels CSV (trial 9 L7): the dataset refused is named at the end (exit code 2), the others build.
    photo_folders(tmp_path / "photos")
    classes = "".join(f'{name} = {{ folders = "photos/{name}" }}\n' for name, *_ in CLASSES)
    head = f'[datasets.places.classes]\n{classes}[datasets.sites.classes]\n{classes}'
    manifest = manifest_at(tmp_path, head + "[datasets.places.split]\ntrain = 0.8\nvalid = 0.2\n")
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    before = images(manifest, "places")
    manifest_at(tmp_path, head + "[datasets.places.split]\ntrain = 0.6\nvalid = 0.4\n"
                "[datasets.sites.split]\nseed = 42\n")
    (tmp_path / "photos" / "bridge" / "new.jpg").write_bytes((tmp_path / "photos" / "tower" / "0.jpg").read_bytes())
    code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "1")
    assert code == 2, err
    assert err.endswith(
        "Error: 1 of 2 datasets not built (places); the other was built — fix it and run `dsbuild build places`:\n"
        "  the split settings of 'places' (train 0.8 → 0.6, valid 0.2 → 0.4) changed since the last build, and images "
        "keep their splits — run `dsbuild build places --resplit` to assign the splits again (runs trained before keep "
        "the old ones), or put the old settings back\n"), err
    assert len(images(manifest, "sites")) == 41  # the new file: built
    pd.testing.assert_frame_equal(images(manifest, "places"), before)  # untouched: not built
    code, out, err = run_cli(capsys, manifest, "build", "places", "--resplit", "-q", "--workers", "1")
    assert code == 0, err
    assert len(images(manifest, "places")) == 41


def test_a_renamed_class_under_resplit_is_not_said_to_keep_its_split(tmp_path: Path, capsys) -> None:
    """Trial 4 (rename_plus_resplit.sh): a class folder renamed and a [split] change in one `build --resplit`
    said the renamed images 'kept their split', then moved some of them. The note now says --resplit assigns
    their splits again; the review decision is still carried."""
    photo_folders(tmp_path / "photos")
    head = 'catalog = "cat/dsbuild.duckdb"\n[datasets.places]\nimagefolder = "photos"\n'
    manifest = manifest_at(tmp_path, head)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    removed = images(manifest, "places").loc[str(tmp_path / "photos" / "bridge" / "0.jpg"), "image_id"]
    decisions = tmp_path / "d.csv"
    decisions.write_text(f"image_id,action\n{removed},remove\n")
    assert run_cli(capsys, manifest, "review", "places", "--decisions", str(decisions))[0] == 0
    (tmp_path / "photos" / "bridge").rename(tmp_path / "photos" / "span")
    out = _resplit(capsys, manifest, head, "[datasets.places.split]\nseed = 7\n")
    assert ("places: 10 images under a renamed, merged or split class (class folder 'bridge' renamed 'span') kept 1 "
            "review decision; --resplit assigns their splits again from the settings, as every image's") in out
    assert "kept their split" not in out
