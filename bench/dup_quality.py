"""Benchmark: near-duplicate detection quality on planted copies of real photos.

Data (all offline, all real photographs): scikit-image's astronaut, coffee, chelsea,
rocket, camera, immunohistochemistry, hubble_deep_field, retina, coins, moon, brick,
grass, gravel, cell, page, clock, motorcycle_left; scikit-learn's china and flower;
matplotlib's grace_hopper. **Hard negatives**: each photo of at least 300 px a side is
also cut into four non-overlapping quadrants, each its own picture (same scene, same
colours, same texture: "different photos of similar content"), plus solid colours and
near-blank noise images.

Every picture (photo or quadrant) is saved as PNG, and beside it 12 planted copies:
JPEG at quality 90/70/50/30, PNG→JPEG (q 85) and JPEG→PNG (format change), resize to
50 % and 150 %, a 5 % crop (centred, keeping 95 % of width and height), brightness
×1.2 and ×0.8, a small watermark text in a corner. Ground truth: two files are a
duplicate pair when they come from the same picture.

Printed side by side, in the same run, over every pair of files:

* **dsbuild** — :func:`dsbuild.verify.decode.decode` (the build's one decode, JPEG draft mode)
  → :func:`dsbuild.verify.hashing.compute_hash` (phash) → degenerate hashes dropped →
  :func:`dsbuild.dedup.search.find_pairs`, at thresholds 0…16 (the sweep that sets
  ``DEFAULT_THRESHOLD``), pair precision/recall, directly and after grouping
  (:func:`dsbuild.dedup.search.group`: pairs in the same group);
* **imagededup** — ``PHash().encode_images`` + ``find_duplicates(max_distance_threshold=10)``
  (its default);
* **cleanvision** — ``Imagelab(...).find_issues({"near_duplicates": {}})``: identical phash.

    .venv/bin/python bench/dup_quality.py            # ~1,500 files
    .venv/bin/python bench/dup_quality.py --quick    # 6 photos, no quadrants
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsbuild.dedup import search as dedup  # noqa: E402
from dsbuild.verify import hashing  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
          "retina", "coins", "moon", "brick", "grass", "gravel", "cell", "page", "clock")
QUICK = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick")


def photos(quick: bool = False) -> dict[str, object]:
    """name → PIL image (RGB or L) of every real photo available offline."""
    import skimage.data as sk
    from PIL import Image

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in QUICK if quick else PHOTOS:
            out[name] = Image.fromarray(getattr(sk, name)())
        if quick:
            return out
        out["motorcycle_left"] = Image.fromarray(sk.stereo_motorcycle()[0])
        from sklearn.datasets import load_sample_images

        for fname, arr in zip(("china", "flower"), load_sample_images().images):
            out[fname] = Image.fromarray(arr)
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            out["grace_hopper"] = Image.open(fh).convert("RGB")
    return out


def quadrants(images: dict[str, object], min_side: int = 300) -> dict[str, object]:
    """Four non-overlapping quadrants of each image whose shorter side is at least ``min_side``."""
    out = {}
    for name, im in images.items():
        w, h = im.size
        if min(w, h) < min_side:
            continue
        for qx, qy in itertools.product((0, 1), (0, 1)):
            box = (qx * w // 2, qy * h // 2, (qx + 1) * w // 2, (qy + 1) * h // 2)
            out[f"{name}_q{qx}{qy}"] = im.crop(box)
    return out


def _encode(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _reopen(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _watermark(im):
    from PIL import ImageDraw, ImageFont

    im = im.copy()
    w, h = im.size
    size = max(10, h // 20)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(im)
    text = "© stockphotos"
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    pos = (w - (x1 - x0) - w // 40, h - (y1 - y0) - h // 25)
    fill, stroke = (255, 0) if im.mode == "L" else ((255, 255, 255), (0, 0, 0))
    draw.text(pos, text, font=font, fill=fill, stroke_width=1, stroke_fill=stroke)
    return im


def _brightness(im, factor: float):
    from PIL import ImageEnhance

    return ImageEnhance.Brightness(im).enhance(factor)


def _crop(im, keep: float = 0.95):
    w, h = im.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return im.crop((dx, dy, w - dx, h - dy))


def variants(im) -> dict[str, tuple[bytes, str]]:
    """The original (PNG) and its 12 planted copies: name → (file bytes, extension)."""
    from PIL import Image

    png = lambda x: (_encode(x, "PNG"), "png")  # noqa: E731
    jpg = lambda x, q: (_encode(x, "JPEG", quality=q), "jpg")  # noqa: E731
    w, h = im.size
    return {
        "orig": png(im),
        "jpeg90": jpg(im, 90),
        "jpeg70": jpg(im, 70),
        "jpeg50": jpg(im, 50),
        "jpeg30": jpg(im, 30),
        "png_to_jpeg": jpg(im, 85),
        "jpeg_to_png": png(_reopen(_encode(im, "JPEG", quality=85))),
        "resize50": png(im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)),
        "resize150": png(im.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC)),
        "crop5": png(_crop(im)),
        "bright120": png(_brightness(im, 1.2)),
        "bright80": png(_brightness(im, 0.8)),
        "watermark": jpg(_watermark(im), 90),
    }


def blanks(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """Solid colours and near-blank noise images: each its own picture (none are duplicates)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for k, colour in enumerate([(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 40), (20, 160, 90), (240, 240, 230)]):
        out[f"solid{k}"] = (_encode(Image.new("RGB", (320, 240), colour), "PNG"), "png")
    for k, (base, sigma) in enumerate([(30, 2), (128, 1), (245, 3), (200, 6)]):
        arr = np.clip(base + rng.normal(0, sigma, (240, 320, 3)), 0, 255).astype(np.uint8)
        out[f"blank{k}"] = (_encode(Image.fromarray(arr), "JPEG", quality=90), "jpg")
    return out


def planted_set(quick: bool = False) -> list[tuple[str, str, bytes, str]]:
    """(picture, variant, bytes, extension) for every file of the benchmark set."""
    pics = photos(quick)
    if not quick:
        pics.update(quadrants(pics))
    rows = []
    for name, im in pics.items():
        for var, (data, ext) in variants(im).items():
            rows.append((name, var, data, ext))
    for name, (data, ext) in blanks().items():
        rows.append((name, "orig", data, ext))
    return rows


def truth_pairs(pictures: list[str]) -> set[tuple[int, int]]:
    by = {}
    for i, p in enumerate(pictures):
        by.setdefault(p, []).append(i)
    return {(a, b) for members in by.values() for a, b in itertools.combinations(members, 2)}


def pr(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> tuple[float, float, int]:
    tp = len(found & truth)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(truth) if truth else 1.0
    return precision, recall, len(found) - tp


def grouped_pairs(n: int, pairs: np.ndarray) -> set[tuple[int, int]]:
    labels = dedup.group(n, pairs)
    by = {}
    for i, g in enumerate(labels):
        by.setdefault(int(g), []).append(i)
    return {(a, b) for m in by.values() if len(m) > 1 for a, b in itertools.combinations(m, 2)}


def dsbuild_hashes(rows) -> tuple[list[str], float]:
    from dsbuild.manifest import VerifySettings
    from dsbuild.verify.decode import decode

    settings = VerifySettings()
    t0 = time.perf_counter()
    out = []
    for _, _, data, _ in rows:
        img, _info = decode(data, settings)
        out.append(hashing.compute_hash(img))
    return out, time.perf_counter() - t0


@contextlib.contextmanager
def _quiet():
    """Baselines log every stage and draw progress bars; keep the table readable."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def run_imagededup(folder: Path, names: list[str], threshold: int = 10) -> tuple[set[tuple[int, int]], float]:
    from imagededup.methods import PHash

    index = {n: i for i, n in enumerate(names)}
    t0 = time.perf_counter()
    with _quiet():
        ph = PHash(verbose=False)
        enc = ph.encode_images(image_dir=str(folder))
        dups = ph.find_duplicates(encoding_map=enc, max_distance_threshold=threshold)
    dt = time.perf_counter() - t0
    found = set()
    for a, bs in dups.items():
        for b in bs:
            i, j = index[a], index[b]
            found.add((min(i, j), max(i, j)))
    return found, dt


def run_cleanvision(folder: Path, names: list[str]) -> tuple[set[tuple[int, int]], float]:
    from cleanvision import Imagelab

    index = {n: i for i, n in enumerate(names)}
    t0 = time.perf_counter()
    with _quiet():
        lab = Imagelab(data_path=str(folder))
        lab.find_issues({"near_duplicates": {}, "exact_duplicates": {}})
    dt = time.perf_counter() - t0
    found = set()
    for key in ("near_duplicates", "exact_duplicates"):
        for s in lab.info[key]["sets"]:
            ids = sorted(index[Path(p).name] for p in s)
            found.update(itertools.combinations(ids, 2))
    return found, dt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 photos, no quadrants")
    ap.add_argument("--no-baselines", action="store_true", help="skip imagededup and cleanvision")
    args = ap.parse_args(argv)

    rows = planted_set(args.quick)
    pictures = [r[0] for r in rows]
    truth = truth_pairs(pictures)
    n = len(rows)
    print(f"planted set: {n} files, {len(set(pictures))} pictures, {len(truth)} true pairs, "
          f"{n * (n - 1) // 2 - len(truth)} negative pairs")

    hexes, secs = dsbuild_hashes(rows)
    degenerate = np.array([hashing.is_degenerate(h) for h in hexes])
    deg_names = sorted({pictures[i] for i in np.flatnonzero(degenerate)})
    print(f"dsbuild decode+phash: {secs:.2f} s ({secs / n * 1e3:.2f} ms/file); "
          f"degenerate: {int(degenerate.sum())} files {deg_names}")
    keep = np.flatnonzero(~degenerate)
    values = hashing.hashes_to_uint64([hexes[i] for i in keep])

    # Distances of true pairs per transformation (vs the original), to see what a threshold misses.
    variant = [r[1] for r in rows]
    orig_of = {p: i for i, (p, v) in enumerate(zip(pictures, variant)) if v == "orig"}
    by_var: dict[str, list[int]] = {}
    for i, (p, v) in enumerate(zip(pictures, variant)):
        if v != "orig" and not degenerate[i]:
            d = (hashing.hash_to_int(hexes[i]) ^ hashing.hash_to_int(hexes[orig_of[p]])).bit_count()
            by_var.setdefault(v, []).append(d)
    print("\nphash distance to the original, per planted copy (dsbuild decode):")
    for v, ds in by_var.items():
        ds = np.array(ds)
        print(f"  {v:12s} median {np.median(ds):4.1f}  p95 {np.percentile(ds, 95):4.1f}  max {ds.max():3d}  "
              + "  ".join(f"≤{t}: {np.mean(ds <= t):.2f}" for t in (6, 8, 10, 12)))

    print("\ndsbuild sweep (pairs among non-degenerate hashes; degenerate files count as missed):")
    print(f"  {'thr':>3} {'P direct':>9} {'R direct':>9} {'FP':>5}   {'P grouped':>9} {'R grouped':>9} {'FP':>5}")
    for t in range(0, 17):
        p = dedup.find_pairs(values, t)
        found = {(int(keep[a]), int(keep[b])) for a, b, _ in p}
        pd_, rd, fpd = pr(found, truth)
        gp = {(int(keep[a]), int(keep[b])) for a, b in grouped_pairs(len(keep), p)}
        pg, rg, fpg = pr(gp, truth)
        mark = "  <- DEFAULT_THRESHOLD" if t == dedup.DEFAULT_THRESHOLD else ""
        print(f"  {t:3d} {pd_:9.3f} {rd:9.3f} {fpd:5d}   {pg:9.3f} {rg:9.3f} {fpg:5d}{mark}")

    # The closest pairs of *different* pictures: how much room the default leaves.
    loose = dedup.find_pairs(values, 20)
    neg = [(int(d), pictures[keep[a]], variant[keep[a]], pictures[keep[b]], variant[keep[b]])
           for a, b, d in loose if (int(keep[a]), int(keep[b])) not in truth]
    neg.sort()
    print(f"\nclosest pairs of different pictures (of {n * (n - 1) // 2 - len(truth)}):")
    for row in neg[:6]:
        print(f"  distance {row[0]:2d}: {row[1]}/{row[2]}  vs  {row[3]}/{row[4]}")

    if args.no_baselines:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = []
        for k, (pic, var, data, ext) in enumerate(rows):
            name = f"{k:05d}_{pic}_{var}.{ext}"
            (folder / name).write_bytes(data)
            names.append(name)
        print("\nbaselines on the same files (pairs):")
        t = dedup.DEFAULT_THRESHOLD
        found = {(int(keep[a]), int(keep[b])) for a, b, _ in dedup.find_pairs(values, t)}
        p_, r_, fp_ = pr(found, truth)
        print(f"  {'dsbuild phash ≤ ' + str(t):34s} P {p_:.3f}  R {r_:.3f}  FP {fp_:4d}  ({secs:.1f} s hash + search)")
        try:
            found, dt = run_imagededup(folder, names)
            p_, r_, fp_ = pr(found, truth)
            print(f"  {'imagededup PHash ≤ 10 (default)':34s} P {p_:.3f}  R {r_:.3f}  FP {fp_:4d}  ({dt:.1f} s)")
        except Exception as exc:  # a baseline that cannot run is reported, not fatal
            print(f"  imagededup: could not run: {type(exc).__name__}: {exc}")
        try:
            found, dt = run_cleanvision(folder, names)
            p_, r_, fp_ = pr(found, truth)
            print(f"  {'cleanvision (identical phash)':34s} P {p_:.3f}  R {r_:.3f}  FP {fp_:4d}  ({dt:.1f} s)")
        except Exception as exc:
            print(f"  cleanvision: could not run: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
