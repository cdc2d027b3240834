"""A real project for the review app's tests: digits built into a catalog, with a real mislabel run.

:func:`make_project` renders real handwritten digits (``load_digits``) into class
folders with some planted wrong labels, builds them with dsbuild (verify, dedup,
split, catalog), then records a mislabel run the way :func:`dsbuild.cycle.find_issues`
does — the catalog's ``start_run`` / ``insert_issue_rows`` / ``finish_run`` under the
writers' lock — with the real cleanlab finder (:func:`dsbuild.issues.run_finders`) on
real out-of-sample probabilities. The probabilities come from scikit-learn's
logistic regression on the stored images' pixels (3-fold ``cross_val_predict``):
seconds on a CPU, and independent of the fine-tuning recipe.

:func:`add_hostile_item` adds one more catalogued image whose label and origin URL
carry markup, as a row writer would write it, and flags it in the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from model_data import render_digit

CLASSES = {"zero": 0, "one": 1, "seven": 7}
PER_CLASS = 16
PLANTED = {"one": ("seven", 4), "zero": ("one", 2), "seven": ("one", 2)}
"""folder → (true digit class, how many): images of the true class put in the folder (wrong labels)."""
HOSTILE_LABEL = '<script>document.title="pwned-label"</script>'
HOSTILE_ORIGIN = 'https://example.org/<script>document.title="pwned-origin"</script>.jpg'

MANIFEST = """
catalog = "catalog/dsbuild.duckdb"

[datasets.digits.classes]
zero  = {{ folders = "data/zero" }}
one   = {{ folders = "data/one" }}
seven = {{ folders = "data/seven" }}

[datasets.digits.verify]
min_side = 16
max_bytes = {max_bytes}

[datasets.digits.dedup]
threshold = 2

[datasets.digits.split]
train = 0.75
valid = 0.25
seed = 1

[datasets.digits.model]
arch = "efficientnet_lite0"
size = 32
lr = 0.01
batch_size = 16
"""
MAX_BYTES = 300_000
"""The dataset's ``verify.max_bytes``: also the app's upload limit."""


def write_digit_folders(root: Path) -> None:
    """``root/data/<class>/d<index>.png``: :data:`PER_CLASS` real digits of each class of :data:`CLASSES`, plus the
    :data:`PLANTED` wrong labels (digits of another class in a folder)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
    used: set[int] = set()
    for name, value in CLASSES.items():
        members = [i for i in rng.permutation(np.flatnonzero(digits.target == value)) if i not in used][:PER_CLASS]
        used.update(members)
        for i in members:
            render_digit(digits.data[i], root / "data" / name / f"d{i:04d}.png")
    for folder, (true, n) in PLANTED.items():
        members = [i for i in rng.permutation(np.flatnonzero(digits.target == CLASSES[true])) if i not in used][:n]
        used.update(members)
        for i in members:
            render_digit(digits.data[i], root / "data" / folder / f"d{i:04d}.png")


def make_project(root: Path) -> Path:
    """Build the digits project under ``root`` and record a mislabel run; return the manifest path."""
    import dsbuild

    write_digit_folders(root)
    manifest = root / "datasets.toml"
    manifest.write_text(MANIFEST.format(max_bytes=MAX_BYTES))
    m = dsbuild.load_manifest(manifest)
    dsbuild.build(m, ["digits"], workers=1)
    record_mislabel_run(manifest)
    return manifest


def record_mislabel_run(manifest_path: Path) -> str:
    """Score the digits out of sample (logistic regression, 3 folds) and store a mislabel run; return its id."""
    import dsbuild
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from dsbuild.catalog import BuildLock, Catalog
    from dsbuild.cycle import new_run_id, training_frame
    from dsbuild.issues import IssueContext, run_finders
    from dsbuild.model.oof import OOFResult

    m = dsbuild.load_manifest(manifest_path)
    run_id = new_run_id("digits", "mislabels")
    with BuildLock(m.catalog):
        with Catalog.open(m.catalog) as cat:
            df = training_frame(cat, "digits")
            members = cat.conflict_members("digits")
            cat.start_run(run_id=run_id, dataset="digits", kind="mislabels", arch="sklearn-logreg", params={"folds": 3})
        start = time.perf_counter()
        x = np.stack([np.asarray(Image.open(p).convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255.0
                      for p in df["path"]])
        classes = tuple(sorted(df["label"].unique()))
        y = np.array([classes.index(lab) for lab in df["label"]])
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
        fold = np.zeros(len(df), dtype=np.int64)
        for k, (_, test) in enumerate(folds.split(x, y)):
            fold[test] = k
        probs = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=folds, method="predict_proba")
        ids = tuple(df["image_id"].astype(str))
        trained_on = tuple(frozenset(i for i, f in zip(ids, fold) if f != k) for k in range(3))
        oof = OOFResult(image_ids=ids, labels=tuple(df["label"].astype(str)), classes=classes,
                        pred_probs=probs.astype(np.float32), fold=fold, trained_on=trained_on, method="kfold",
                        fold_accuracy=tuple(float((probs[fold == k].argmax(1) == y[fold == k]).mean()) for k in range(3)),
                        duration_s=time.perf_counter() - start)
        rows = run_finders(IssueContext(images=df, oof=oof, conflict_members=members))
        with Catalog.open(m.catalog) as cat:
            cat.insert_issue_rows(run_id, "digits", rows)
            accuracy = float((probs.argmax(1) == y).mean())
            cat.finish_run(run_id, n_train=len(df), n_valid=0, accuracy=accuracy, error_rate=1 - accuracy,
                           duration_s=oof.duration_s, confusion={"classes": list(classes), "matrix": _confusion(y, probs, len(classes))})
    return run_id


def _confusion(y: np.ndarray, probs: np.ndarray, k: int) -> list[list[int]]:
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, probs.argmax(1)), 1)
    return matrix.tolist()


def add_hostile_item(manifest_path: Path, image: Path) -> str:
    """Catalogue ``image`` once more under a label and an origin URL that carry ``<script>``; flag it in the latest run.

    Written with the build's row builders (:func:`dsbuild.rows.item_row`, ``blob_row``) and the
    catalog's ``upsert_items`` / ``insert_blobs`` / ``insert_issue_rows``: what a URL-list source
    would write for such a link. Returns the new image id.
    """
    import dsbuild
    import pandas as pd

    from dsbuild.catalog import BuildLock, Catalog, utcnow
    from dsbuild.rows import blob_row, image_id_for, item_row
    from dsbuild.verify import analyze_file

    m = dsbuild.load_manifest(manifest_path)
    ds = m.dataset("digits")
    rec = analyze_file(image, verify=ds.verify, dedup=ds.dedup, store_dir=m.catalog.parent / "store")
    assert rec.ok, rec
    image_id = image_id_for("digits", HOSTILE_LABEL, HOSTILE_ORIGIN)
    now = utcnow()
    with BuildLock(m.catalog), Catalog.open(m.catalog) as cat:
        row = item_row(dataset="digits", image_id=image_id, origin=HOSTILE_ORIGIN, source="urls", label=HOSTILE_LABEL,
                       rec=rec, engine="urls", query="links.txt", rank=1, build_id=1, now=now)
        row["split"] = "train"
        cat.insert_blobs(pd.DataFrame([blob_row(rec, now)]))
        cat.upsert_items(pd.DataFrame([row]))
        run_id = cat.latest_mislabel_run("digits")
        cat.insert_issue_rows(run_id, "digits", pd.DataFrame([{
            "image_id": image_id, "kind": "label", "given_label": HOSTILE_LABEL, "suggested_label": "one",
            "label_quality": 0.0001, "suggested_confidence": 0.99, "is_issue": True, "rank": 0, "outlier_score": 0.5}]))
    return image_id


def mark_fresh(manifest_path: Path, run_id: str) -> None:
    """Record on mislabel run ``run_id`` the digest of today's inputs (what :func:`dsbuild.cycle.find_issues` records),
    so that ``dsbuild mislabels`` shows that run instead of training a new one (:func:`dsbuild.cycle.fresh_mislabels`)."""
    import dsbuild
    from dsbuild.catalog import BuildLock, Catalog
    from dsbuild.cycle import _reviewed_keep, mislabel_inputs, model_settings

    m = dsbuild.load_manifest(manifest_path)
    ds = m.dataset("digits")
    with BuildLock(m.catalog), Catalog.open(m.catalog) as cat:
        digest = mislabel_inputs(cat.trainable_images("digits"), model_settings(ds), _reviewed_keep(cat, "digits"),
                                 cat.conflict_members("digits"))
        cat.con.execute("UPDATE model_runs SET inputs_digest = ? WHERE run_id = ?", [digest, run_id])
