"""Issue 12, "the first hour of a new user": one regression test per bug, at the behaviour level.

Each test runs the CLI as a user does (in-process through ``dsbuild.cli.main``, or as a
subprocess where the process itself is the subject: signals, the current directory) on
real images in ``tmp_path`` with a real DuckDB catalog, and asserts the exact outcome:
exit code, message, catalog rows. Real parts only: photos from ``skimage.data``, the
handwritten digits of ``sklearn.datasets.load_digits``, a loopback HTTP server started by
the test, real fastai training on tiny data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import warnings
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import numpy as np
import pytest
from helpers import sql
from PIL import Image

from dsbuild.cli import main

QUALITY_FLAGS = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "odd_size")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich: no wrapped lines in captured output


@lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def crop(name: str, i: int, size: int = 64) -> Image.Image:
    """The ``i``-th of five different 200×200 crops of a real photo, resized to ``size``."""
    img = _photo(name)
    w, h = img.size
    y, x = (h - 200) * i // 4, (w - 200) * (4 - i) // 4
    return img.crop((x, y, x + 200, y + 200)).resize((size, size), Image.Resampling.LANCZOS)


def render_digit(pixels, path: Path) -> None:
    arr = (255 - np.asarray(pixels, dtype=np.float64).reshape(8, 8) * (255.0 / 16.0)).clip(0, 255).astype("uint8")
    Image.fromarray(arr, mode="L").resize((64, 64), Image.Resampling.BICUBIC).convert("RGB").save(path)


def cli(capsys: pytest.CaptureFixture[str], manifest: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["-m", str(manifest), *args])
    out, err = capsys.readouterr()
    return code, out, err


def rows_by_file(manifest: Path, dataset: str, columns: str) -> dict[str, tuple]:
    """``file name`` → the row of ``columns`` from the images view (file names are unique in these projects)."""
    rows = sql(manifest, f"SELECT origin, {columns} FROM images WHERE dataset = ? ORDER BY origin", [dataset])
    return {o.rsplit("/", 1)[-1]: tuple(r) for o, *r in rows}


def note_lines(out: str, dataset: str) -> list[str]:
    return [" ".join(line.split()) for line in out.splitlines() if line.startswith(f"{dataset}: ")]


class Server:
    """A loopback HTTP server serving ``files`` (path → bytes) as PNG; started and stopped by the test."""

    def __init__(self, files: dict[str, bytes]) -> None:
        files = dict(files)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- a small photo project

PHOTO_MANIFEST = """\
[datasets.pets]
{top}
[datasets.pets.classes]
cat = {{ folders = "photos/cat" }}
cup = {{ folders = "photos/cup", urls = "cup-urls.txt" }}

[datasets.pets.fetch]
retries = 0
connect_timeout = 2

{extra}
"""


def photo_project(root: Path, extra: str = "", *, top: str = "", url_lines: tuple[str, ...] = ()) -> Path:
    """cat: 5 crops of chelsea + an exact copy of one + a near-black photo + a text file named bad.jpg;
    cup: 5 crops of coffee + the URLs in ``url_lines``."""
    for label, name in (("cat", "chelsea"), ("cup", "coffee")):
        folder = root / "photos" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(5):
            crop(name, i).save(folder / f"{label}{i}.png")
    shutil.copyfile(root / "photos/cat/cat0.png", root / "photos/cat/cat0-copy.png")
    dark = (np.asarray(crop("astronaut", 2), dtype=np.float64) * 0.08).astype("uint8")
    Image.fromarray(dark).save(root / "photos/cat/night.png")
    (root / "photos/cat/bad.jpg").write_bytes(b"this is a text file, not a picture\n" * 4)
    (root / "cup-urls.txt").write_text("".join(line + "\n" for line in url_lines))
    manifest = root / "datasets.toml"
    manifest.write_text(PHOTO_MANIFEST.format(top=top, extra=extra))
    return manifest


# --------------------------------------------------------------------------- bug 1


@pytest.mark.parametrize("flag", QUALITY_FLAGS)
def test_bug01_quality_reject_with_rejected_failed_and_duplicate_neighbours(
        flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`[quality] reject = [flag]` with a non-image, a failed download and an exact copy in the dataset builds."""
    failed_url = f"http://127.0.0.1:{closed_port()}/gone.png"
    manifest = photo_project(tmp_path, f'[datasets.pets.quality]\nreject = ["{flag}"]\n',
                             top="allow_private_hosts = true", url_lines=(failed_url,))
    code, out, err = cli(capsys, manifest, "-q", "build")
    assert (code, err) == (0, "")
    rows = rows_by_file(manifest, "pets", "status, reason, quality_flags")
    assert rows["bad.jpg"][:2] == ("rejected", "not an image")
    assert rows["gone.png"][0] == "failed"
    assert sorted([rows["cat0.png"][0], rows["cat0-copy.png"][0]]) == ["duplicate", "ok"]
    assert len(rows) == 14
    # Every verified image carries its flags; exactly those with the rejecting flag are rejected for it.
    for name, (status, reason, flags) in rows.items():
        if name in ("bad.jpg", "gone.png"):
            assert flags is None, name
            continue
        has = flag in (flags or "").split(",")
        assert (status == "rejected" and reason == f"quality: {flag}") == has, (name, status, reason, flags)
    assert sql(manifest, "SELECT outcome FROM builds") == [("ok",)]


# --------------------------------------------------------------------------- bug 2

WEB_MANIFEST = """\
[datasets.web]
{top}
[datasets.web.classes]
a = {{ urls = "a.txt" }}
b = {{ folders = "b" }}

[datasets.web.fetch]
retries = 0
{fetch}
"""


@pytest.mark.parametrize("extra_args", [(), ("--retry-failed",)], ids=["build", "retry-failed"])
def test_bug02_allowing_private_hosts_retries_urls_refused_before(
        extra_args: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        (tmp_path / "b").mkdir(exist_ok=True)
        crop("coffee", i).save(tmp_path / "b" / f"b{i}.png")
    with Server({f"/a{i}.png": png_bytes(crop("chelsea", i)) for i in range(2)}) as server:
        (tmp_path / "a.txt").write_text(f"{server.url('/a0.png')}\n{server.url('/a1.png')}\n")
        manifest = tmp_path / "datasets.toml"
        manifest.write_text(WEB_MANIFEST.format(top="", fetch=""))
        code, out, err = cli(capsys, manifest, "-q", "build")
        assert code == 0, err
        assert sql(manifest, "SELECT status, reason, count(*) FROM images WHERE dataset = 'web' AND label = 'a' "
                             "GROUP BY ALL") == [("rejected", "private address", 2)]

        manifest.write_text(WEB_MANIFEST.format(top="allow_private_hosts = true", fetch=""))
        code, out, err = cli(capsys, manifest, "-q", "build", *extra_args)
        assert code == 0, err
    assert sql(manifest, "SELECT status, count(*) FROM images WHERE dataset = 'web' AND label = 'a' GROUP BY ALL") \
        == [("ok", 2)]
    assert "web: settings changed — re-tried 2 earlier outcomes: private address → ok 2" in note_lines(out, "web")


def test_bug02_raising_max_bytes_retries_urls_rejected_as_too_large(tmp_path: Path, capsys) -> None:
    (tmp_path / "b").mkdir()
    for i in range(3):
        crop("coffee", i).save(tmp_path / "b" / f"b{i}.png")
    big = png_bytes(crop("chelsea", 0, size=200))  # 4-5 times the size of a 64 px folder image
    with Server({"/big.png": big}) as server:
        (tmp_path / "a.txt").write_text(server.url("/big.png") + "\n")
        manifest = tmp_path / "datasets.toml"
        limit = f"[datasets.web.verify]\nmax_bytes = {len(big) // 2}\n"
        manifest.write_text(WEB_MANIFEST.format(top="allow_private_hosts = true", fetch="") + limit)
        assert cli(capsys, manifest, "-q", "build")[0] == 0
        assert sql(manifest, "SELECT status, reason FROM images WHERE label = 'a'") == [("rejected", "too large")]
        manifest.write_text(WEB_MANIFEST.format(top="allow_private_hosts = true", fetch=""))
        code, out, err = cli(capsys, manifest, "-q", "build")
        assert code == 0, err
    assert sql(manifest, "SELECT status, reason FROM images WHERE label = 'a'") == [("ok", None)]
    # The folder images were verified again too (their outcome depends on the same settings): 4 re-tried.
    assert "web: settings changed — re-tried 4 earlier outcomes: too large → ok 1" in note_lines(out, "web")


def test_bug02_lowering_min_side_accepts_images_rejected_as_too_small(tmp_path: Path, capsys) -> None:
    manifest = photo_project(tmp_path)
    crop("rocket", 1, size=24).save(tmp_path / "photos/cat/small.png")
    assert cli(capsys, manifest, "-q", "build")[0] == 0
    assert rows_by_file(manifest, "pets", "status, reason")["small.png"] == ("rejected", "too small")
    manifest.write_text(manifest.read_text() + "[datasets.pets.verify]\nmin_side = 16\n")
    code, out, err = cli(capsys, manifest, "-q", "build")
    assert code == 0, err
    assert rows_by_file(manifest, "pets", "status, reason")["small.png"] == ("ok", None)
    assert "pets: settings changed — re-tried 14 earlier outcomes: too small → ok 1" in note_lines(out, "pets")


def test_bug02_dropping_a_quality_reject_says_what_it_retried(tmp_path: Path, capsys) -> None:
    manifest = photo_project(tmp_path, '[datasets.pets.quality]\nreject = ["dark"]\n')
    assert cli(capsys, manifest, "-q", "build")[0] == 0
    assert rows_by_file(manifest, "pets", "status, reason")["night.png"] == ("rejected", "quality: dark")
    manifest.write_text(manifest.read_text().replace('reject = ["dark"]', "reject = []"))
    code, out, err = cli(capsys, manifest, "-q", "build")
    assert code == 0, err
    assert rows_by_file(manifest, "pets", "status, reason")["night.png"] == ("ok", None)
    # 12 images decoded (bad.jpg never did): each one's quality outcome was evaluated again.
    assert "pets: settings changed — re-tried 12 earlier outcomes: quality: dark → ok 1" in note_lines(out, "pets")


# --------------------------------------------------------------------------- bug 3

DIGITS_MANIFEST = """\
catalog = "catalog/dsbuild.duckdb"

[datasets.digits.classes]
{classes}

[datasets.digits.verify]
min_side = 16

[datasets.digits.dedup]
threshold = 2

[datasets.digits.split]
train = 0.75
valid = 0.25
seed = 1

[datasets.digits.model]
arch = "efficientnet_lite0"
size = 64
freeze_epochs = 0
lr = 0.01
lr_mult = 1.0
flip = false
augment = false
batch_size = 16
folds = 3
oof_rounds = 1
oof_method = "frozen"
"""


def digits_files(folder: Path, per_class: int = 20, *, reverse: bool = False) -> dict[str, list[Path]]:
    """Real digits 0, 1, 7 as ``folder/<name>/d<index>.png``, plus planted exact copies:
    four zeros copied under ``one`` (label conflicts) and one seven copied within its class (a sub-folder).
    ``reverse`` writes the files in the opposite order (another file-system order)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    plan: list[tuple[str, Path]] = []
    for name, value in (("zero", 0), ("one", 1), ("seven", 7)):
        for i in rng.choice(np.flatnonzero(digits.target == value), size=per_class, replace=False):
            plan.append((f"{i}", folder / name / f"d{i:04d}.png"))
    if reverse:
        plan.reverse()
    for i, path in plan:
        path.parent.mkdir(parents=True, exist_ok=True)
        render_digit(digits.data[int(i)], path)
    zeros = sorted((folder / "zero").glob("d*.png"))[:4]
    copies = [(z, folder / "one" / f"copy-of-{z.name}") for z in zeros]
    sevens = sorted((folder / "seven").glob("d*.png"))[:1]
    copies += [(s, folder / "seven" / "again" / f"again-{s.name}") for s in sevens]
    if reverse:
        copies.reverse()
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return {name: sorted((folder / name).rglob("*.png")) for name in ("zero", "one", "seven")}


def digits_project(root: Path, *, reverse: bool = False, extra: str = "") -> Path:
    digits_files(root / "data", reverse=reverse)
    classes = "\n".join(f'{n} = {{ folders = "data/{n}" }}' for n in ("zero", "one", "seven"))
    manifest = root / "datasets.toml"
    manifest.write_text(DIGITS_MANIFEST.format(classes=classes) + extra)
    return manifest


def catalog_by_relative_path(manifest: Path) -> dict[str, tuple]:
    """Per image (its path relative to the project): label, status, reason, split, conflict, and the
    relative path of its representative — everything a build decides, free of absolute paths and ids."""
    rows = sql(manifest, "SELECT image_id, origin, label, status, reason, split, conflict, dup_of FROM images "
                         "WHERE dataset = 'digits'")
    root = str(manifest.parent) + os.sep
    rel = {iid: origin.removeprefix(root) for iid, origin, *_ in rows}
    return {rel[iid]: (label, status, reason, split, conflict, rel.get(dup_of)) for iid, _, label, status, reason,
            split, conflict, dup_of in rows}


@pytest.mark.slow
def test_bug03_the_catalog_is_a_pure_function_of_inputs_and_settings(tmp_path: Path, capsys) -> None:
    """The same files in four places, written in two file-system orders, built with 1 or 2 workers:
    the same representatives (which copy of a conflict is kept), splits and out-of-fold flags."""
    manifests = []
    for k, (name, reverse, workers) in enumerate((("first", False, "1"), ("second-place", True, "2"),
                                                  ("x", False, "2"), ("another-machine", True, "1"))):
        manifest = digits_project(tmp_path / name, reverse=reverse)
        code, out, err = cli(capsys, manifest, "-q", "build", "--workers", workers)
        assert code == 0, err
        manifests.append(manifest)
    catalogs = [catalog_by_relative_path(m) for m in manifests]
    first = catalogs[0]
    assert len(first) == 65
    assert sum(1 for r in first.values() if r[2] == "exact duplicate") == 5
    assert sum(1 for r in first.values() if r[4]) == 8  # four conflict pairs
    for other in catalogs[1:]:
        assert other == first
    # Folds and every out-of-fold result: the same flags, label qualities and suggestions in two of the places.
    flags = []
    for manifest in manifests[:2]:
        code, out, err = cli(capsys, manifest, "-q", "mislabels", "digits", "--format", "json")
        assert code == 0, err
        root = str(manifest.parent) + os.sep
        flags.append(sorted((r["origin"].removeprefix(root), r["kind"], r["suggested_label"],
                             None if r["label_quality"] is None else round(r["label_quality"], 4))
                            for r in json.loads(out)))
    assert flags[0] == flags[1]


def test_bug03_a_representative_does_not_depend_on_which_build_found_it(tmp_path: Path, capsys) -> None:
    """Softened copies (same size, a few bits away) of real photos, found in the same build as their
    pictures, in a later one or in an earlier one: each pair has the same representative in all three
    (no "seen in an earlier build": which build found a file never decides), and the copy lies within the
    threshold of it (star grouping)."""
    from PIL import ImageFilter

    pictures = [(name, i) for name in ("chelsea", "coffee", "astronaut") for i in range(3)]

    def write(folder: Path, sharp: bool, soft: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, i in pictures:  # files already there are left as they are (an earlier build found them)
            img = crop(name, i, size=128)
            if sharp and not (folder / f"{name}{i}.png").exists():
                img.save(folder / f"{name}{i}.png")
            if soft and not (folder / f"{name}{i}-soft.png").exists():
                img.filter(ImageFilter.GaussianBlur(1.2)).save(folder / f"{name}{i}-soft.png")

    outcomes = []
    for place, steps in (("at-once", [(True, True)]), ("soft-first", [(False, True), (True, True)]),
                         ("sharp-first", [(True, False), (True, True)])):
        root = tmp_path / place
        manifest = root / "datasets.toml"
        for k, (sharp, soft) in enumerate(steps):
            write(root / "photos", sharp, soft)
            if k == 0:
                (root / "rockets").mkdir()
                for i in range(3):
                    crop("rocket", i, size=128).save(root / "rockets" / f"rocket{i}.png")
            manifest.write_text('[datasets.p.classes]\npic = { folders = "photos" }\nrocket = { folders = "rockets" }\n')
            code, out, err = cli(capsys, manifest, "-q", "build", "--workers", str(1 + k % 2))
            assert code == 0, err
        rows = rows_by_file(manifest, "p", "image_id, status, reason, dup_of, dup_distance")
        names = {r[0]: n for n, r in rows.items()}
        outcomes.append({n: (status, reason, names.get(dup_of), dist) for n, (_, status, reason, dup_of, dist)
                         in rows.items()})
    assert outcomes[0] == outcomes[1] == outcomes[2]
    for name, i in pictures:
        pair = {f"{name}{i}.png", f"{name}{i}-soft.png"}
        (rep,) = [n for n in pair if outcomes[0][n] == ("ok", None, None, None)]
        (dup,) = pair - {rep}
        status, reason, of, dist = outcomes[0][dup]
        assert (status, reason, of) == ("duplicate", "near duplicate", rep) and 0 <= dist <= 10


# --------------------------------------------------------------------------- model projects


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built digits project (zero/one/seven, 20 each, four zeros copied under one): its manifest."""
    manifest = digits_project(tmp_path_factory.mktemp("digits"))
    assert main(["-m", str(manifest), "-q", "build"]) == 0
    return manifest


def copy_project(manifest: Path, dest: Path) -> Path:
    shutil.copytree(manifest.parent, dest, symlinks=True)
    return dest / manifest.name


def finetuned(manifest_text: str) -> str:
    """The manifest with fastai fine-tuning (``finetune = true``) instead of the default head on frozen features."""
    return (manifest_text.replace("[datasets.digits.model]\n", "[datasets.digits.model]\nfinetune = true\n")
            .replace("size = 64\n", "size = 64\nepochs = 1\n"))  # epochs: fine-tuning only (a head has none)


# --------------------------------------------------------------------------- bug 4


@pytest.mark.slow
def test_bug04_train_epochs_zero_is_honoured(digits: Path, tmp_path: Path, capsys) -> None:
    manifest = copy_project(digits, tmp_path / "p")
    # The default recipe (a head on frozen features) has no epochs: --epochs is refused, naming the setting.
    code, out, err = cli(capsys, manifest, "train", "digits", "--epochs", "0")
    assert code == 2 and "--epochs applies to fine-tuning only" in err and "finetune = true" in err
    assert sql(manifest, "SELECT count(*) FROM runs") == [(0,)]
    # Fine-tuning: one head-only epoch, then --epochs 0 whole-network epochs: one epoch in all (the manifest
    # says 1 + 3).
    manifest.write_text(finetuned(manifest.read_text()).replace("epochs = 1\nfreeze_epochs = 0",
                                                                "epochs = 3\nfreeze_epochs = 1"))
    code, out, err = cli(capsys, manifest, "-q", "train", "digits", "--epochs", "0")
    # One head-only epoch on 45 digits may not beat chance: then the run is kept and the exit status says so (3).
    assert code == 0 or (code == 3 and "the model did not learn" in err), err
    ((epochs, params),) = sql(manifest, "SELECT epochs, params FROM runs WHERE kind = 'train'")
    assert [e["phase"] for e in json.loads(epochs)] == ["frozen"]
    assert json.loads(params)["epochs"] == 0
    # Nothing to train at all is refused, before any work.
    manifest.write_text(manifest.read_text().replace("freeze_epochs = 1", "freeze_epochs = 0"))
    code, out, err = cli(capsys, manifest, "train", "digits", "--epochs", "0")
    assert code == 2
    assert err == ("Error: --epochs 0 with datasets.digits.model.freeze_epochs = 0 leaves nothing to train — "
                   "give --epochs 1 or more\n")
    assert sql(manifest, "SELECT count(*) FROM runs") == [(1,)]


# --------------------------------------------------------------------------- bug 5


@pytest.mark.slow
@pytest.mark.timeout(1500)  # three lr_find searches (train's and each crossfit group's) on 2 shared cores
def test_bug05_model_commands_write_nothing_in_the_current_directory(digits: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """lr unset and lr_find = true (fastai's lr_find; on a CPU it runs only when asked) for train and mislabels
    (crossfit fine-tunes), run from an empty directory.

    retrain is train_dataset again (kind "retrain"), the same code path as train: not run a third time here.
    """
    # fastai's lr_find at 20 steps instead of its 100: the same search (LRFinder saves the model under
    # learn.path / model_dir before its first step, whatever the count; 20 steps of 4 are two passes over the
    # 45 training digits, as 100 are ten), a fifth of the compute — the three searches were most of this test.
    monkeypatch.setattr("dsbuild.model.train.LR_FIND_STEPS", 20)
    manifest = copy_project(digits, tmp_path / "p")
    text = finetuned(manifest.read_text()).replace("lr = 0.01\n", "lr_find = true\n").replace('oof_method = "frozen"', 'oof_method = "crossfit"\n'
                                                                                               "oof_groups = 2")
    # batch 4: lr_find takes its steps whatever the batch; small ones keep this test about the files, not compute
    manifest.write_text(text.replace("folds = 3", "folds = 2").replace("size = 64", "size = 32")
                        .replace("batch_size = 16", "batch_size = 4"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    # One fine-tune epoch on 45 digits may not beat chance (exit 3, the run and its model kept): either way
    # nothing is written in the current directory.
    assert main(["-m", str(manifest), "train", "digits"]) in (0, 3)
    assert sorted(p.name for p in cwd.iterdir()) == []
    # Without a terminal, long steps log a line each with the elapsed time; lr_find is one of them.
    err = capsys.readouterr().err.splitlines()
    assert any(re.fullmatch(r"train: lr_find \d+/\d+ .*\d+\.\d s", line) for line in err), err
    assert any(re.fullmatch(r"train: epochs 1/1 .*\d+\.\d s", line) for line in err), err
    # The run keeps fastai's lr_find plot beside its model.
    ((model_path,),) = sql(manifest, "SELECT model_path FROM runs WHERE kind = 'train'")
    with Image.open(Path(model_path).parent / "lr_find.png") as im:
        assert im.format == "PNG"
    assert main(["-q", "-m", str(manifest), "mislabels", "digits"]) == 0
    assert sorted(p.name for p in cwd.iterdir()) == []
    assert sql(manifest, "SELECT kind, status FROM runs ORDER BY started_at") == [("train", "ok"), ("mislabels", "ok")]


# --------------------------------------------------------------------------- bug 6


@pytest.mark.slow
def test_bug06_empty_and_all_rejected_classes_are_named_at_build_and_refused_at_train(tmp_path: Path, capsys) -> None:
    digits_files(tmp_path / "data")
    (tmp_path / "data" / "four").mkdir()  # an empty folder
    (tmp_path / "data" / "nine").mkdir()  # only a file that is not an image
    (tmp_path / "data" / "nine" / "scan.jpg").write_bytes(b"%PDF-1.4 not an image\n" * 8)
    names = ("zero", "one", "seven", "four", "nine")
    classes = "\n".join(f'{n} = {{ folders = "data/{n}" }}' for n in names)
    manifest = tmp_path / "datasets.toml"
    manifest.write_text(DIGITS_MANIFEST.format(classes=classes))
    code, out, err = cli(capsys, manifest, "-q", "build")
    assert code == 0, err
    notes = note_lines(out, "digits")
    assert "digits: class 'four' has no images (its sources are empty) — add images or remove the class" in notes
    assert "digits: class 'nine' has no accepted images (1 rejected: not an image) — add images or remove the class" in notes
    code, out, err = cli(capsys, manifest, "-q", "train", "digits")
    assert code == 1
    assert err == ("Error: dataset 'digits' has classes with too few accepted images to train: four 0, nine 0 "
                   "(each needs at least 1) — add images to them or remove them from the manifest, "
                   "then rebuild\n")
    assert sql(manifest, "SELECT count(*) FROM runs") == [(0,)]


# --------------------------------------------------------------------------- bug 7


def test_bug07_retrain_before_any_train_says_there_is_nothing_to_compare_with(digits: Path, tmp_path: Path, capsys) -> None:
    manifest = copy_project(digits, tmp_path / "p")
    code, out, err = cli(capsys, manifest, "-q", "retrain", "digits")
    assert code == 1
    assert err == ("Error: no earlier run of 'digits' to compare with — run `dsbuild train digits` first "
                   "(retrain trains again on the reviewed labels and compares with the last run)\n")
    assert sql(manifest, "SELECT count(*) FROM runs") == [(0,)]


# --------------------------------------------------------------------------- bugs 8 and 9


@pytest.fixture(scope="module")
def scored(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits project after train + mislabels (frozen out-of-fold heads: seconds)."""
    manifest = copy_project(digits, tmp_path_factory.mktemp("scored") / "p")
    assert main(["-m", str(manifest), "-q", "train", "digits"]) == 0
    assert main(["-m", str(manifest), "-q", "mislabels", "digits"]) == 0
    return manifest


@pytest.mark.slow
def test_a_mislabel_run_is_stale_once_the_pixels_it_scored_change(scored: Path, tmp_path: Path) -> None:
    """feat32: the features a run scored are keyed by blob *and* pixels, but whether the run was still current
    was decided from id, path, label and split — after a re-check that read other pixels from one file (a
    verifier upgrade writes ``blobs.pixel_sha``, as this does), ``mislabels`` showed the old run as current."""
    from dsbuild.cycle import fresh_mislabels
    from dsbuild.manifest import load_manifest

    manifest = copy_project(scored, tmp_path / "p")
    found = fresh_mislabels(load_manifest(manifest), "digits")
    ((run_id,),) = sql(manifest, "SELECT run_id FROM runs WHERE kind = 'mislabels'")
    assert found is not None and found[0] == run_id
    with duckdb.connect(str(manifest.parent / "catalog" / "dsbuild.duckdb")) as con:
        (sha,) = con.execute("SELECT sha256 FROM items WHERE dataset = 'digits' AND status = 'ok' "
                             "AND split IS NOT NULL ORDER BY sha256 LIMIT 1").fetchone()
        con.execute("UPDATE blobs SET pixel_sha = md5(pixel_sha) || md5(pixel_sha) WHERE sha256 = ?", [sha])
    assert fresh_mislabels(load_manifest(manifest), "digits") is None


@pytest.mark.slow
def test_bug08_conflict_suggestions_come_from_out_of_fold_probabilities(scored: Path) -> None:
    rows = sql(scored, "SELECT i.dup_group, l.image_id, l.kind, l.given_label, l.suggested_label, "
                       "l.suggested_confidence, l.label_quality FROM label_issues l JOIN images i USING (dataset, image_id) "
                       "WHERE i.conflict ORDER BY 1, 2")
    groups: dict[str, list[tuple]] = {}
    for group, *rest in rows:
        groups.setdefault(group, []).append(tuple(rest))
    # one row per planted pair: the member whose label differs from the pair's advice (trial 11 M5: a member already
    # filed under the advised class gets no row — "zero → zero" was no advice)
    assert len(groups) == 4 and sum(map(len, groups.values())) == 4, groups
    for members in groups.values():
        # One picture, one piece of advice: every member gets the picture's best out-of-fold class.
        assert {m[3] for m in members} == {"zero"}, members
        assert len({round(m[4], 6) for m in members}) == 1 and all(0 < m[4] <= 1 for m in members), members
        assert all(m[5] is not None for m in members), members
    # The members filed under 'one' are told 'zero'; those filed under 'zero' are left alone: no self-contradiction.
    assert {m[2] for ms in groups.values() for m in ms} == {"one"}


@pytest.mark.slow
def test_bug09_confusion_caption_says_out_of_fold_on_every_scored_image(scored: Path, tmp_path: Path, capsys) -> None:
    out_html = tmp_path / "r.html"
    code, out, err = cli(capsys, scored, "mislabels", "digits", "--format", "html", "--out", str(out_html))
    assert code == 0, err
    html = out_html.read_text()
    ((run_id, n),) = sql(scored, "SELECT run_id, n_train FROM runs WHERE kind = 'mislabels'")
    assert "on its valid split" not in html
    assert (f"confusion matrix of run {run_id}: out-of-fold predictions on all {n} scored images "
            "(rows: given label, columns: prediction)") in html


# --------------------------------------------------------------------------- bug 10


def _wait_for_run(manifest: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if sql(manifest, "SELECT count(*) FROM runs WHERE status = 'running'")[0][0]:
                return
        except duckdb.Error:  # a writer holds the file for a moment
            pass
        time.sleep(0.2)
    raise AssertionError("the run never started")


def _long_training(manifest: Path) -> None:
    """200 epochs of fine-tuning (epochs set without finetune = true were unused: the head recipe has none)."""
    manifest.write_text(finetuned(manifest.read_text()).replace("epochs = 1\n", "epochs = 200\n"))


@pytest.mark.slow
def test_bug10_sigterm_marks_the_running_run_interrupted(digits: Path, tmp_path: Path) -> None:
    manifest = copy_project(digits, tmp_path / "p")
    _long_training(manifest)
    proc = subprocess.Popen([sys.executable, "-m", "dsbuild", "-q", "-m", str(manifest), "train", "digits"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_run(manifest, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err == "Error: terminated (SIGTERM) — everything finished so far is kept; run the command again\n"
    assert sql(manifest, "SELECT kind, status FROM runs") == [("train", "interrupted")]


@pytest.mark.slow
def test_ctrl_c_during_a_fine_tuning_says_it_starts_again(digits: Path, tmp_path: Path) -> None:
    """Ctrl-C (a real SIGINT) during `train`: the run is marked interrupted and the message says what was kept and
    how to go on, as a build's does (it was "Error: interrupted")."""
    manifest = copy_project(digits, tmp_path / "p")
    _long_training(manifest)
    # SIGINT as a terminal delivers it: a test run started in the background (`pytest &`) ignores SIGINT, and a
    # Python started with SIGINT ignored keeps ignoring it.
    proc = subprocess.Popen([sys.executable, "-m", "dsbuild", "-q", "-m", str(manifest), "train", "digits"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_run(manifest, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    # One Ctrl-C is enough even when it lands while the run still imports torch: CPython drops a KeyboardInterrupt
    # raised inside importlib's weakref callback, and dsbuild sends such a swallowed stop again (test_cli's
    # test_a_stop_swallowed_by_a_callback_is_delivered_again; a second SIGINT was needed here once, at load 5).
    out, err = proc.communicate(timeout=120)
    ((run_id, status),) = sql(manifest, "SELECT run_id, status FROM runs")
    # 130, or an end by the SIGINT itself (-2; a shell shows 130 for both): once in a full `make test` run the
    # process ended by the signal after printing its message — cause not found yet (closing note, 2026-12-01).
    assert (proc.returncode in (130, -signal.SIGINT), status) == (True, "interrupted"), (proc.returncode, err)
    assert err == (f"Error: train interrupted — run {run_id} is recorded as interrupted and no model was saved; "
                   "`dsbuild train digits` starts again from the first epoch (fine-tuning keeps no checkpoint)\n")


@pytest.mark.slow
def test_bug10_a_killed_run_is_marked_interrupted_by_the_next_command(digits: Path, tmp_path: Path, capsys) -> None:
    manifest = copy_project(digits, tmp_path / "p")
    _long_training(manifest)
    proc = subprocess.Popen([sys.executable, "-m", "dsbuild", "-q", "-m", str(manifest), "train", "digits"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_run(manifest, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert sql(manifest, "SELECT status FROM runs") == [("running",)]
    code, out, err = cli(capsys, manifest, "-q", "build")
    assert code == 0, err
    assert sql(manifest, "SELECT kind, status FROM runs") == [("train", "interrupted")]


# --------------------------------------------------------------------------- bugs 11 and 12


def test_bug11_undoing_every_decision_leaves_the_image_unreviewed(tmp_path: Path, capsys) -> None:
    manifest = photo_project(tmp_path)
    assert cli(capsys, manifest, "-q", "build")[0] == 0
    ((iid,),) = sql(manifest, "SELECT image_id FROM images WHERE origin LIKE '%/cat1.png'")
    decisions = tmp_path / "d.csv"
    decisions.write_text(f"image_id,action,new_label\n{iid},relabel,cup\n")
    assert cli(capsys, manifest, "review", "pets", "--decisions", str(decisions))[0] == 0
    decisions.write_text(f"image_id,action\n{iid},remove\n")
    assert cli(capsys, manifest, "review", "pets", "--decisions", str(decisions))[0] == 0
    assert sql(manifest, "SELECT label, status, reviewed FROM images WHERE image_id = ?", [iid]) == [("cup", "rejected", True)]
    undo = tmp_path / "undo.csv"
    undo.write_text(f"image_id,action\n{iid},undo\n")
    assert cli(capsys, manifest, "review", "pets", "--decisions", str(undo))[0] == 0
    assert sql(manifest, "SELECT label, status, reviewed FROM images WHERE image_id = ?", [iid]) == [("cup", "ok", True)]
    # The same undo file again takes nothing more back (an undo row applies once per file) and says how to go on.
    code, out, err = cli(capsys, manifest, "review", "pets", "--decisions", str(undo))
    assert code == 0, err
    assert out == (f"applied 0 decisions to 'pets' (nothing to apply) from review:{undo.name}; skipped 1 image whose "
                   "undo this file applied on an earlier run (an undo row applies once per file; to undo further, use "
                   "another file or u in the review app)\n")
    undo = tmp_path / "undo-again.csv"
    undo.write_text(f"image_id,action\n{iid},undo\n")
    code, out, err = cli(capsys, manifest, "review", "pets", "--decisions", str(undo))
    assert code == 0, err
    assert out == f"applied 1 decision to 'pets' (undo 1) from review:{undo.name}\n"
    assert sql(manifest, "SELECT label, status, reviewed, last_review FROM images WHERE image_id = ?", [iid]) == [
        ("cat", "ok", False, None)]


def test_bug12_build_and_status_agree_on_conflicts_after_a_review_removes_a_member(tmp_path: Path, capsys) -> None:
    manifest = photo_project(tmp_path)
    shutil.copyfile(tmp_path / "photos/cat/cat2.png", tmp_path / "photos/cup/looks-like-a-cup.png")
    assert cli(capsys, manifest, "-q", "build")[0] == 0
    assert sql(manifest, "SELECT count(*) FROM conflicts") == [(1,)]
    ((iid,),) = sql(manifest, "SELECT image_id FROM images WHERE origin LIKE '%/looks-like-a-cup.png'")
    decisions = tmp_path / "d.csv"
    decisions.write_text(f"image_id,action\n{iid},remove\n")
    assert cli(capsys, manifest, "review", "pets", "--decisions", str(decisions))[0] == 0
    assert sql(manifest, "SELECT count(*) FROM conflicts") == [(0,)]  # review regrouped the pair at once
    code, out, err = cli(capsys, manifest, "build")
    assert code == 0, err
    # Nothing left for the build to change (trial 3, finding 5): its line says no conflict either.
    line = next(line for line in out.splitlines() if line.startswith("pets: up to date — "))
    assert "conflict" not in line, out
    (summary,) = sql(manifest, "SELECT summary FROM builds ORDER BY build_id DESC LIMIT 1")[0]
    assert json.loads(summary)["datasets"][0]["conflicts"] == 0
    code, out, err = cli(capsys, manifest, "status", "pets")
    assert code == 0, err
    assert "; 0 label conflicts (same picture, different labels)" in out
    assert sql(manifest, "SELECT count(*) FROM conflicts") == [(0,)]
    # The other member of the pair is an ordinary image again: accepted, in no group, no conflict.
    assert rows_by_file(manifest, "pets", "status, conflict")["cat2.png"] == ("ok", False)


# =========================================================================== friction


def _pty_run(argv: list[str], *, cwd: Path, columns: int, timeout: float = 300) -> tuple[int, str]:
    """Run ``python -m dsbuild argv`` with stdout and stderr on a pseudo-terminal ``columns`` wide; (rc, text)."""
    import pty
    import select

    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "dsbuild", *argv], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    rc = proc.wait(timeout=30)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    return rc, "\n".join(re.split(r"\r\n|\r|\n", text))  # progress bars redraw with \r: a line per drawing


def _tree(root: Path, *, skip: str) -> dict[str, bytes]:
    """Every file under ``root`` but the folder ``skip`` (the catalog): relative path → content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and skip not in p.relative_to(root).parts}


@pytest.mark.slow
def test_init_and_the_demo_outside_a_project_build_the_starter_as_written_at_every_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`dsbuild init` in a folder of one's own, and `dsbuild demo` anywhere else: the same starter, built once.

    The demo outside a project writes its starter with init's code into ./dsbuild-demo and builds it; the test
    checks the two starters are the same files and that `dsbuild build` (every dataset of the starter) builds
    the demo alone — so the demo's one build of the 1,801 digits stands for both (each used to build its own).
    """
    own, elsewhere = tmp_path / "own", tmp_path / "elsewhere"
    own.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(own)
    assert main(["init"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote datasets.toml and the demo's images (demo_data/digits, 1801 files)")
    # `dsbuild build` builds every dataset of the manifest: the starter's only one is the demo (the web example is
    # commented out), and it keeps dsbuild's defaults.
    starter = tomllib.loads((own / "datasets.toml").read_text())
    assert set(starter["datasets"]) == {"demo"}
    demo = starter["datasets"]["demo"]
    assert set(demo) == {"classes", "model"} and demo["model"] == {"arch": "efficientnet_lite0"}

    monkeypatch.chdir(elsewhere)
    code = main(["-q", "demo", "--build-only"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"no datasets.toml with a demo dataset here: the demo runs in {elsewhere / 'dsbuild-demo'}"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["dsbuild-demo"]
    project = elsewhere / "dsbuild-demo"
    mine, demos = _tree(own, skip="catalog"), _tree(project, skip="catalog")
    assert len(mine) > 1801 and mine.keys() == demos.keys()
    assert [name for name in mine if mine[name] != demos[name]] == []
    manifest = project / "datasets.toml"
    assert sql(manifest, "SELECT DISTINCT dataset FROM images") == [("demo",)]
    assert sql(manifest, "SELECT count(*) FROM images WHERE dataset = 'demo'") == [(1801,)]
    # The demo needs no tuning: the defaults spare the 64 px digits (issue 17: at the hash alone 1,183 of 1,797
    # real digits were "near duplicates") while the planted exact copy is still found.
    duplicates = sql(manifest, "SELECT count(*) FROM images WHERE dataset = 'demo' AND status = 'duplicate'")[0][0]
    assert 1 <= duplicates <= 18, duplicates  # ≤ 1 % of 1,801
    copy = sql(manifest, "SELECT status, reason, conflict FROM images WHERE dataset = 'demo' AND "
                         "dup_group = (SELECT dup_group FROM images WHERE origin LIKE '%/one/copy-of-digit-0000.png') "
                         "ORDER BY status")
    assert copy == [("duplicate", "exact duplicate", True), ("ok", None, True)], copy


def test_pyproject_license_is_an_spdx_expression() -> None:
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # the table form makes setuptools ≥ 77 print a page of deprecation warnings


@pytest.fixture(scope="module")
def piped_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """The photo project's first build and the no-op build after it, each a `dsbuild build` subprocess whose output is
    a pipe (no terminal): build name → its finished process. Both tests below only read them (they each ran the
    same first build of their own)."""
    root = tmp_path_factory.mktemp("piped")
    manifest = photo_project(root)
    env = {**os.environ, "COLUMNS": "200"}  # as wide_terminal sets it (a module fixture is set up before it)
    return {build: subprocess.run([sys.executable, "-m", "dsbuild", "-m", str(manifest), "build"], cwd=root,
                                  capture_output=True, text=True, timeout=300, env=env) for build in ("first", "no-op")}


def test_progress_without_a_terminal_is_one_line_per_step_with_elapsed_time(
        piped_builds: dict[str, subprocess.CompletedProcess]) -> None:
    proc = piped_builds["first"]
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(re.fullmatch(r"pets: verify \+ hash 13/13 .* \d+\.\d s", line) for line in lines), proc.stderr
    assert any(re.fullmatch(r"pets: dedup \+ split 13/13 .* \d+\.\d s", line) for line in lines), proc.stderr
    assert "━" not in proc.stderr  # no bars in a log file


def test_progress_without_a_terminal_ends_each_step_at_its_full_count(
        piped_builds: dict[str, subprocess.CompletedProcess]) -> None:
    """Through a pipe, each step's last line shows its full count and elapsed time: the near-duplicate signals
    step counted only the blobs it computed (11/12 with an exact copy, 0/12 when all were cached)."""
    for build in ("first", "no-op"):
        proc = piped_builds[build]
        assert proc.returncode == 0, proc.stderr
        last: dict[str, tuple[int, int]] = {}
        for line in proc.stderr.splitlines():
            if m := re.fullmatch(r"(pets: [a-z +-]+?) (\d+)/(\d+) .*\d+\.\d s", line):
                last[m[1]] = (int(m[2]), int(m[3]))
        assert last.get("pets: near-duplicate signals") == (12, 12), (build, proc.stderr)
        assert all(done == total for done, total in last.values()), (build, proc.stderr)
        signals = [line for line in proc.stderr.splitlines() if line.startswith("pets: near-duplicate signals")][-1]
        assert (" computed 11 reused 1 " if build == "first" else " computed 0 reused 12 ") in signals, signals


@pytest.fixture(scope="module")
def built_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photo project, built once: its manifest. For the tests that only read its catalog (query, status); each
    built a project of its own."""
    manifest = photo_project(tmp_path_factory.mktemp("photos"))
    assert main(["-m", str(manifest), "-q", "build"]) == 0
    return manifest


def test_csv_is_lf_everywhere(built_photos: Path, tmp_path: Path, capsys) -> None:
    manifest = built_photos
    code, out, err = cli(capsys, manifest, "query", "select label, count(*) as n from images group by all order by 1",
                         "--format", "csv")
    assert code == 0, err
    assert out == "label,n\ncat,8\ncup,5\n"
    assert cli(capsys, manifest, "query", "select 1 as x", "--format", "csv", "--out", str(tmp_path / "x.csv"))[0] == 0
    assert (tmp_path / "x.csv").read_bytes() == b"x\n1\n"


def test_query_refuses_several_statements(built_photos: Path, capsys) -> None:
    code, out, err = cli(capsys, built_photos, "query", "select 1; select 2")
    assert (code, out) == (2, "")
    assert err == "Error: 2 SQL statements given — query runs one statement at a time; run them one by one\n"


def test_status_of_a_dataset_not_in_the_manifest_says_so(built_photos: Path, capsys) -> None:
    manifest = built_photos
    code, out, err = cli(capsys, manifest, "status", "pest")
    assert (code, out) == (2, "")
    assert cli(capsys, manifest, "build", "pest")[:2] == (2, "")  # a typo in a command's argument: bad usage
    assert err == "Error: no dataset 'pest' in datasets.toml (did you mean 'pets'?) — known datasets: pets\n"


def test_probabilities_and_counts_read_as_words() -> None:
    """Terminal tables and captions never print 3.171e-12 or round a probability to a certainty it is not;
    counts take the noun's number ("1 image", "2 images")."""
    from dsbuild.render.figures import tile_caption
    from dsbuild.render.values import counted, probability_text, readable_probabilities
    import pandas as pd

    assert [probability_text(v) for v in (3.171e-12, 0.0, 0.25, 0.99996, 1.0, None, float("nan"))] == [
        "<0.0001", "0.0000", "0.2500", ">0.9999", "1.0000", None, None]
    assert [counted(1, "image"), counted(2, "image"), counted(0, "decision"), counted(1, "match", "matches")] == [
        "1 image", "2 images", "0 decisions", "1 match"]
    df = readable_probabilities(pd.DataFrame({"rank": [1], "label_quality": [3.171e-12],
                                              "suggested_confidence": [0.999999]}))
    assert df.to_dict("records") == [{"rank": 1, "label_quality": "<0.0001", "suggested_confidence": ">0.9999"}]
    row = {"given_label": "one", "suggested_label": "zero", "label_quality": 3.171e-12, "suggested_confidence": 0.97}
    assert tile_caption(row, "label_quality") == "one → zero\nquality <0.0001, p 0.9700"
    assert tile_caption({**row, "loss": 2.5}, "loss") == "one → zero\nloss 2.500, p 0.9700"


def test_a_text_file_is_not_an_image_from_a_folder_or_the_web(tmp_path: Path, capsys) -> None:
    (tmp_path / "b").mkdir()
    for i in range(3):
        crop("coffee", i).save(tmp_path / "b" / f"b{i}.png")
    (tmp_path / "b" / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>404</body></html>\n")
    with Server({"/page.jpg": b"<!DOCTYPE html><html><body>404</body></html>\n"}) as server:
        (tmp_path / "a.txt").write_text(server.url("/page.jpg") + "\n")
        manifest = tmp_path / "datasets.toml"
        manifest.write_text(WEB_MANIFEST.format(top="allow_private_hosts = true", fetch=""))
        assert cli(capsys, manifest, "-q", "build")[0] == 0
    assert sql(manifest, "SELECT source, status, reason FROM images WHERE status <> 'ok' ORDER BY source") == [
        ("folder", "rejected", "not an image"), ("urls", "rejected", "not an image")]


def test_a_refused_download_has_the_verify_stage_reason() -> None:
    from dsbuild.sources.web import item_reason, private_hosts_hint

    assert item_reason("not an image (text)", 200) == ("not an image", "content is text; http 200")
    assert item_reason("unsupported image (avif)", None) == ("unsupported format", "content is avif")
    assert item_reason("private address", None, url="http://10.0.0.7/a.jpg", dataset="web") == (
        "private address", f"10.0.0.7 is a private or loopback address — {private_hosts_hint('web')}")
    assert "allow_private_hosts = true in [datasets.web]" in private_hosts_hint("web")


def test_wide_tables_fit_the_terminal(tmp_path: Path) -> None:
    manifest = photo_project(tmp_path)
    rc, text = _pty_run(["-m", str(manifest), "build"], cwd=tmp_path, columns=80)
    assert rc == 0, text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    header = next(line for line in text.splitlines() if "dataset" in line)
    for word in ("dataset", "sources", "ok", "rejected", "duplicates", "conflicts", "train", "valid"):
        assert word in text, (word, text)
    assert "…" not in header
    rc, text = _pty_run(["-m", str(manifest), "query", "select * from images order by origin limit 2"],
                        cwd=tmp_path, columns=120)
    assert rc == 0, text
    lines = [line.rstrip() for line in text.splitlines()]
    assert all(len(line) <= 120 for line in lines), text
    # Too many columns for 120: one record per block, each column on a line with its full value.
    assert any(line.split() == ["image_id", line.split()[-1]] for line in lines), text
    assert any(line.startswith("origin") and line.endswith("bad.jpg") for line in lines), text


def test_status_html_cards_name_the_origin_file(built_photos: Path, tmp_path: Path, capsys) -> None:
    manifest = built_photos
    page = tmp_path / "dups.html"
    assert cli(capsys, manifest, "status", "pets", "--html", str(page))[0] == 0
    html = page.read_text()
    origin = str(manifest.parent / "photos" / "cat" / "cat0-copy.png")
    assert f'title="{origin}"' in html and ">cat0-copy.png<" in html


@pytest.mark.slow
def test_mislabels_reuses_its_run_while_nothing_changed_and_renders_readable_numbers(
        digits: Path, scored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    manifest = copy_project(scored, tmp_path / "p")
    # The copy reads the folders its catalog was built from, the digits project's (an image's id is its
    # absolute path: moved files are new images).
    text = manifest.read_text()
    for name in ("zero", "one", "seven"):
        text = text.replace(f'"data/{name}"', f'"{digits.parent / "data" / name}"')
    manifest.write_text(text)
    code, out, err = cli(capsys, manifest, "build")  # a no-op build
    assert code == 0 and "digits: up to date — " in out, err
    assert json.loads(sql(manifest, "SELECT summary FROM builds ORDER BY build_id DESC LIMIT 1")[0][0])["datasets"][0]["new"] == 0
    assert cli(capsys, manifest, "-q", "train", "digits")[0] == 0
    code, out, err = cli(capsys, manifest, "mislabels", "digits")
    assert code == 0, err
    ((run_id,),) = sql(manifest, "SELECT run_id FROM runs WHERE kind = 'mislabels'")
    shown, trust = err.splitlines()
    assert shown == f"showing mislabel run {run_id} (labels, images and settings unchanged since; --rerun to score again)"
    assert re.fullmatch(r"out-of-fold accuracy \d+\.\d% against the given labels; of \d+ flags? roughly \d+ .*", trust), trust
    header = next(line for line in out.splitlines() if "given_label" in line)
    assert "suggested_confidence" in header
    assert "e-" not in out
    # One default for the HTML report: the catalog's reports folder, with the files' mode from the umask.
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        code, out, err = cli(capsys, manifest, "mislabels", "digits", "--format", "html")
    finally:
        os.umask(old)
    assert code == 0, err
    reports = manifest.parent / "catalog" / "reports"
    assert sorted(p.name for p in reports.iterdir()) == ["digits-mislabels-confusion.png",
                                                         "digits-mislabels-top-losses.png", "digits-mislabels.html"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in reports.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    html = (reports / "digits-mislabels.html").read_text()
    assert html.count('alt="top losses') == 1 and html.count("data:image/png;base64,") == 2


@pytest.mark.slow
def test_predict_top_k_names_the_run_it_used(scored: Path, capsys) -> None:
    image = sorted((scored.parent / "data" / "seven").glob("d*.png"))[0]
    code, out, err = cli(capsys, scored, "predict", "digits", str(image), "--top", "3", "--format", "csv")
    assert code == 0, err
    ((run_id,),) = sql(scored, "SELECT run_id FROM runs WHERE kind = 'train'")
    assert err == f"model of run {run_id} (train)\n"
    lines = out.splitlines()
    assert lines[0] == "run_id,path,rank,label,probability"
    assert [line.split(",")[2] for line in lines[1:]] == ["1", "2", "3"]
    assert sorted(line.split(",")[3] for line in lines[1:]) == ["one", "seven", "zero"]
    probs = [float(line.split(",")[4]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4


@pytest.mark.slow
def test_train_prints_the_fastai_export_path(digits: Path, tmp_path: Path, capsys) -> None:
    manifest = copy_project(digits, tmp_path / "p")
    manifest.write_text(finetuned(manifest.read_text()))  # fastai's learner is the fine-tune recipe's
    code, out, err = cli(capsys, manifest, "-q", "train", "digits")
    assert code == 0 or (code == 3 and "the model did not learn" in err), err  # one epoch on 45 digits
    ((model_path,),) = sql(manifest, "SELECT model_path FROM runs")
    export = Path(model_path).parent / "export.pkl"
    assert export.is_file()
    assert f"fastai learner: {export} (load_learner)" in out.splitlines()


def test_a_stage_logged_without_a_terminal_ends_with_one_line_not_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage whose last step already printed its line (a step longer than LINE_EVERY_S) ends without a copy."""
    import io

    from rich.console import Console

    import dsbuild.render.console as rc

    out = io.StringIO()
    progress = rc.RichProgress()
    progress.console = Console(file=out, force_terminal=False, width=200)  # a log file, not a terminal
    monkeypatch.setattr(rc, "LINE_EVERY_S", 0.0)  # every step prints: the step that ends the stage did too
    with progress.stage("train: head", 1) as stage:
        stage.advance(1)
    assert len(out.getvalue().splitlines()) == 1 and out.getvalue().startswith("train: head 1/1 "), out.getvalue()
    out.truncate(0), out.seek(0)
    monkeypatch.setattr(rc, "LINE_EVERY_S", 3600.0)  # no step printed: the stage's end says where it got
    with progress.stage("mislabels: folds", 5) as stage:
        stage.advance(5)
    assert out.getvalue().splitlines()[0].startswith("mislabels: folds 5/5 ")
    assert len(out.getvalue().splitlines()) == 1


def test_a_stage_times_its_rate_from_when_its_workers_are_ready_and_says_the_start_up_once(capsys) -> None:
    """Real timings, the console a pipe (lines): 1.2 s of start-up (a Ray cluster starting), then 40 images in
    0.4 s. The rate is the images' (~100/s), not 40 / 1.6 s (25/s, which the first line of a Ray build showed);
    the elapsed time is the stage's; the start-up is its own line, once."""
    import re

    import dsbuild.render.console as rc

    progress = rc.RichProgress()
    with progress.stage("pets: verify + hash", 40) as stage:
        time.sleep(1.2)
        stage.ready("ray: cluster ready in 1.2 s")
        for _ in range(4):
            time.sleep(0.1)
            stage.advance(10, ok=10)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "ray: cluster ready in 1.2 s" and len(lines) == 2, lines
    m = re.fullmatch(r"pets: verify \+ hash 40/40 ok 10 (\d+)/s (\d+\.\d) s", lines[1])
    assert m and 70 <= int(m.group(1)) <= 101 and float(m.group(2)) >= 1.6, lines


def test_items_a_stage_reused_move_its_bar_but_not_its_rate(capsys) -> None:
    """Trial 9: a stage reused from an earlier build said "1,076,862/s" (every item "done" in a millisecond). Items a
    stage skips (reused, cached) count as done and stay out of the rate: a stage reused whole says no rate, and one
    that worked on some says their rate (real timings, the console a pipe)."""
    import re

    import dsbuild.render.console as rc

    progress = rc.RichProgress()
    with progress.stage("pets: dedup + split reused from build 3 (nothing it is computed from changed)", 500) as stage:
        stage.skip(500)
    with progress.stage("pets: near-duplicate signals", 1000) as stage:
        for _ in range(4):
            time.sleep(0.1)
            stage.advance(10, computed=10)
        stage.skip(960, computed=40, reused=960)
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"pets: dedup \+ split reused from build 3 \(nothing it is computed from changed\) 500/500 "
                        r"\d+\.\d s", lines[0]), lines
    m = re.fullmatch(r"pets: near-duplicate signals 1000/1000 computed 40 reused 960 (\d+)/s (\d+\.\d) s", lines[1])
    assert m and 70 <= int(m.group(1)) <= 101 and len(lines) == 2, lines  # 40 in 0.4 s, not 1,000 in 0.4 s


def test_a_rebuild_reuses_its_groups_and_says_so_without_a_rate(tmp_path: Path, capsys) -> None:
    """The build's own stages: a second build with nothing new reuses the signals and the groups, and their lines
    say reused, with no per-image rate."""
    from helpers import photo_quadrant

    for label, photo in (("cat", "chelsea"), ("dog", "astronaut")):
        (tmp_path / label).mkdir()
        for k in range(4):
            photo_quadrant(photo, k, 64).save(tmp_path / label / f"{k}.png")
    manifest = tmp_path / "datasets.toml"
    manifest.write_text('[datasets.pets]\nclasses = { cat = { folders = "cat" }, dog = { folders = "dog" } }\n'
                        '[datasets.pets.dedup]\nsemantic = false\nviews = true\n')
    assert main(["-m", str(manifest), "build", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["-m", str(manifest), "build", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    reused = [line for line in err.splitlines() if "reused" in line]
    assert len(reused) == 2, err
    assert re.fullmatch(r"pets: near-duplicate signals 8/8 computed 0 reused 8 \d+\.\d s", reused[0]), reused
    assert re.fullmatch(r"pets: dedup \+ split reused from build 1 \(nothing it is computed from changed\) 8/8 "
                        r"\d+\.\d s", reused[1]), reused
