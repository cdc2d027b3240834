"""What a rebuild with nothing new costs, before and after the grouping is reused (dsbuild.dedup.reuse).

    python bench/rebuild_cost.py                 # the offline demo (~1,800 digits) and 304 overlapping photo crops
    python bench/rebuild_cost.py --old bcb4979   # "before" is that commit's dsbuild (git archive; default bcb4979,
                                                 # the last without the reuse: main has it now)
    python bench/rebuild_cost.py --only crops --runs 2 --quick

Each dataset is built once by this checkout (the embeddings cached), then, in turn, ``--runs`` times: a build by the
old dsbuild (``PYTHONPATH`` = its ``git archive``), a build by this checkout — each ``python -m dsbuild build`` in a
child process, nothing new to do, interpreter start included. Printed per dataset: the median of each, their ratio,
the ``dedup + split`` stage line of each, whether this checkout said it reused the grouping, and whether the
catalog's grouping (statuses, groups, splits, flags, outlier scores, neighbours) was the same after every build —
the old dsbuild regroups in full each time, so the same state after its build and after ours means the reused
grouping is the one a full regrouping computes.

``crops``: 4 skimage photos, 76 crops each (55–90 % of the side, anywhere), JPEG at 256 px: crops of one photo
overlap, so most pairs are hash candidates that the detail check aligns (bench/dup_semantic.py has the
thresholds' precision/recall).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CROP_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
BEFORE_REUSE = "bcb4979"
"""The baseline: main before the grouping was reused (stop 31). After it landed, ``main`` would compare the reuse with
itself."""


def dsbuild(cwd: Path, *args: str, pythonpath: Path = REPO) -> tuple[float, str, str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "COLUMNS": "400"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dsbuild", *args], capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dsbuild {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout, proc.stderr


def stage(stderr: str, name: str) -> str:
    """The last progress line of the stage whose name contains ``name``."""
    lines = [" ".join(line.split()) for line in stderr.splitlines() if name in line]
    return lines[-1] if lines else "(no such stage)"


def make_crops(root: Path, n: int) -> None:
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(n):
        name = CROP_PHOTOS[k % len(CROP_PHOTOS)]
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        w, h = img.size
        share = rng.uniform(0.55, 0.9)
        cw, ch = round(w * share), round(h * share)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        folder = root / ("a" if k % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        img.crop((x, y, x + cw, y + ch)).resize((256, 256), Image.Resampling.LANCZOS).save(
            folder / f"{name}_{k:04d}.jpg", quality=90)


def state_digest(catalog: Path, dataset: str) -> str:
    """Digest of the dataset's grouping as the catalog holds it."""
    import duckdb

    con = duckdb.connect(str(catalog), read_only=True)
    try:
        items = con.execute(
            "SELECT image_id, status, reason, dup_group, dup_of, dup_distance, conflict, split, quality_flags, "
            "q_odd_size, leak_with, outlier_score, is_outlier FROM items WHERE dataset = ? ORDER BY image_id",
            [dataset]).fetchall()
        knn = con.execute("SELECT image_id, rank, neighbour_id, similarity FROM knn WHERE dataset = ? ORDER BY ALL",
                          [dataset]).fetchall()
    finally:
        con.close()
    return hashlib.sha1(repr((items, knn)).encode()).hexdigest()[:12]


def measure(label: str, cwd: Path, catalog: Path, dataset: str, old: Path, runs: int) -> None:
    t, out, err = dsbuild(cwd, "build", dataset)
    print(f"{label}: first build by this checkout {t:.1f} s ({stage(err, 'dedup + split')})", flush=True)
    times: dict[str, list[float]] = {"old": [], "new": []}
    lines: dict[str, str] = {}
    states = {state_digest(catalog, dataset)}
    reused = []
    up = []
    for _ in range(runs):
        for who, path in (("old", old), ("new", REPO)):
            t, out, err = dsbuild(cwd, "build", dataset, pythonpath=path)
            times[who].append(t)
            lines[who] = stage(err, "dedup + split")
            states.add(state_digest(catalog, dataset))
            up.append("up to date" in out)
            if who == "new":
                reused.append("computed them (nothing they depend on changed)" in out)
    before, after = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"{label}: no-op rebuild, median of {runs}: before {before:.2f} s, after {after:.2f} s — "
          f"{before / after:.1f}× faster ({before - after:.2f} s saved)")
    print(f"{label}:   before: {lines['old']}")
    print(f"{label}:   after:  {lines['new']}")
    print(f"{label}:   after said the grouping was reused: {sum(reused)} of {len(reused)}; every build up to date: "
          f"{all(up)}; the catalog's grouping the same after every build (old: full regroup): {len(states) == 1}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", metavar="REV", default=BEFORE_REUSE,
                    help=f"the commit whose dsbuild is 'before' (default {BEFORE_REUSE}, the last without the reuse)")
    ap.add_argument("--runs", type=int, default=3, help="no-op rebuilds of each (default 3)")
    ap.add_argument("--crops", type=int, default=304, help="crops in the crops dataset (default 304)")
    ap.add_argument("--only", choices=("demo", "crops"), help="one dataset only")
    ap.add_argument("--quick", action="store_true", help="1 run each, 120 crops")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary folder")
    args = ap.parse_args()
    runs, crops = (1, 120) if args.quick else (args.runs, args.crops)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rebuild-"))
    work.mkdir(parents=True, exist_ok=True)
    old = work / "old"
    if not old.exists():
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old, "dsbuild"], check=True,
                                 capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.old], capture_output=True,
                         text=True).stdout.strip()
    here = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    print(f"before: {args.old} ({rev}); after: this checkout ({here}); {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.only in (None, "demo"):
        demo = work / "demo"
        demo.mkdir(exist_ok=True)
        if not (demo / "datasets.toml").exists():
            dsbuild(demo, "init")
        measure("demo", demo, demo / "catalog" / "dsbuild.duckdb", "demo", old, runs)
    if args.only in (None, "crops"):
        root = work / "crops"
        if not root.exists():
            make_crops(root / "images", crops)
            (root / "datasets.toml").write_text('[datasets.crops]\nclasses = { a = { folders = "images/a" }, '
                                                'b = { folders = "images/b" } }\n')
        measure(f"crops ({crops})", root, root / "catalog" / "dsbuild.duckdb", "crops", old, runs)


if __name__ == "__main__":
    main()
