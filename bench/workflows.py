"""The four reference workflows offline, printing each command and its real output (the README's recipes).

    .venv/bin/python bench/workflows.py [--out DIR] [--only eyewear,landmarks]

eyewear, wonders and sharks-vs-dolphins are the SHIPPED datasets as declared (queries,
engine, filters, per_query), pointed at a loopback fake engine that answers in Bing's and
Google's real page formats with real photos (``tests/workflow_data.py``: crops of
``skimage.data``, an exact copy and a wrong label planted); landmarks is the README's
manifest on a 50-class ``train/`` + ``test/`` folder of the same kind of photos. The model
is the tests' tiny offline one (``OFFLINE``: efficientnet_lite0 at 32 px, one epoch), so
accuracies mean nothing here: what the README shows is what each command prints. Runs the
CLI in-process in a fresh folder (default: a temporary one); one torch/BLAS thread.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the fake engines and the photos

WEB = ("eyewear", "wonders", "sharks-vs-dolphins")
LANDMARKS = """\
[datasets.landmarks]
imagefolder = "landmarks"                 # landmarks/train/<class>/…, landmarks/test/<class>/…

[datasets.landmarks.split]
seed = 42
carve = { from = "train", valid = 0.2 }   # 20 % of each class of train/ becomes valid

[datasets.landmarks.model]
arch = "efficientnet_lite0"
size = 32
epochs = 1
lr = 0.01
folds = 2
"""


def run(manifest: Path, *args: str) -> int:
    """``dsbuild ARGS`` in-process; print the command and its output."""
    from dsbuild.cli import main

    print(f"$ dsbuild {' '.join(args)}")
    out, err = io.StringIO(), io.StringIO()
    t0 = time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["-m", str(manifest), *args])
    print(out.getvalue() + err.getvalue(), end="")
    print(f"    [exit {code}, {time.process_time() - t0:.1f} s CPU]\n", file=sys.stderr)
    return code


def web_workflows(folder: Path, names: list[str]) -> None:
    from fake_engines import FakeEngineServer
    from workflow_data import web_project

    import duckdb

    from dsbuild.manifest import load_manifest

    with FakeEngineServer() as server:
        manifest, plan = web_project(folder, server, names)
        run(manifest, "-q", "build", "--workers", "1")
        for name in names:
            print(f"# ---- {name}")
            run(manifest, "-q", "train", name)
            run(manifest, "-q", "mislabels", name)
            wrong, given, true = plan.wrong[name]
            with duckdb.connect(str(load_manifest(manifest).catalog), read_only=True) as con:
                (image_id,) = con.execute("select image_id from images where origin = ?", [wrong]).fetchone()
            decisions = folder / f"{name}-decisions.csv"
            with decisions.open("w", newline="") as f:
                csv.writer(f).writerows([["image_id", "action", "new_label"], [image_id, "relabel", true]])
            run(manifest, "review", name, "--decisions", str(decisions))
            run(manifest, "-q", "retrain", name)
            run(manifest, "predict", name, str(folder / f"{name}-new.jpg"))
        run(manifest, "query", "select dataset, query, wanted, links, outcome from searches order by all")


def landmarks(folder: Path) -> None:
    from workflow_data import class_photos, many_classes

    classes = many_classes(50)
    photos = class_photos(classes, 7)
    for name, *_ in classes:
        for split, ks in (("train", range(5)), ("test", range(5, 6))):
            (folder / "landmarks" / split / name).mkdir(parents=True)
            for k in ks:
                (folder / "landmarks" / split / name / f"{k}.jpg").write_bytes(photos[name][k])
    (folder / "new-photo.jpg").write_bytes(photos[classes[4][0]][6])
    manifest = folder / "datasets.toml"
    manifest.write_text(LANDMARKS.replace("[datasets.landmarks.split]\nseed = 42\ncarve", "[datasets.landmarks.split]\n#carve"))
    run(manifest, "-q", "build", "--workers", "1")
    run(manifest, "train", "landmarks")
    manifest.write_text(LANDMARKS)
    run(manifest, "-q", "build", "--workers", "1")
    run(manifest, "-q", "build", "--workers", "1", "--resplit")
    run(manifest, "-q", "train", "landmarks")
    run(manifest, "predict", "landmarks", str(folder / "new-photo.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder to work in (default: a temporary one, removed after)")
    parser.add_argument("--only", default="eyewear,wonders,sharks-vs-dolphins,landmarks")
    args = parser.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    os.environ.setdefault("COLUMNS", "110")
    only = args.only.split(",")
    folder = args.out or Path(tempfile.mkdtemp(prefix="dsbuild-workflows-"))
    try:
        with threadpool_limits(limits=1):
            web = [n for n in WEB if n in only]
            if web:
                (folder / "web").mkdir(parents=True, exist_ok=True)
                web_workflows(folder / "web", web)
            if "landmarks" in only:
                (folder / "landmarks").mkdir(parents=True, exist_ok=True)
                landmarks(folder / "landmarks")
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
