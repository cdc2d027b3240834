"""Benchmark: the build's verify + hash stage vs imagehash on a full decode, per core and on all cores.

Data: ≥ 2,000 real-sized JPEGs (1024×768 up to 1600×1200) cut from the real photos
shipped offline (scikit-image's retina, hubble_deep_field, astronaut, coffee, chelsea,
rocket, immunohistochemistry, motorcycle; scikit-learn's china and flower;
matplotlib's grace_hopper): a random crop, scaled to a random real-camera size,
randomly mirrored, saved at JPEG quality 75–95. Written to a temporary folder.

Printed side by side, measured in the same run on the same files (interleaved file
by file, so a busy machine slows both alike):

* **baseline** — ``imagehash.phash(Image.open(f))``: a full decode, then the hash
  (what a user of imagehash writes; the issue measured ~6.4 ms/image here);
* **dsbuild** — :func:`dsbuild.verify.analyze.analyze_file`: read, sha256, sniff, the one
  decode (JPEG draft mode), pixel digest, :func:`dsbuild.verify.hashing.compute_hash` (phash)
  and :func:`dsbuild.verify.quality.scores` — i.e. everything the build does per image;
* the same stage split into its parts — with the L conversion shared by the hash and
  the blur score (``gray=``), and with other draft sides — to show where the time goes;

as CPU ms per image (process time: what one core spends, robust to other load on
the machine) and images/s per core, then both run on all cores (a process pool)
to show the scaling.

    .venv/bin/python bench/hashing.py             # 2,000 files (~2 min)
    .venv/bin/python bench/hashing.py --quick     # 300 files
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED = 42
SIZES = ((1024, 768), (1280, 960), (1600, 1200), (1200, 1600), (1280, 720), (1024, 1024))


def sources() -> list:
    import matplotlib.cbook
    import skimage.data as sk
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("retina", "hubble_deep_field", "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
            out.append(Image.fromarray(getattr(sk, name)()).convert("RGB"))
        out.append(Image.fromarray(sk.stereo_motorcycle()[0]))
    out.extend(Image.fromarray(a) for a in load_sample_images().images)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        out.append(Image.open(fh).convert("RGB"))
    return out


def make_files(folder: Path, n: int, seed: int = SEED) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    srcs = sources()
    paths = []
    for k in range(n):
        src = srcs[k % len(srcs)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = SIZES[int(rng.integers(0, len(SIZES)))]
        img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"img{k:05d}.jpg"
        img.save(path, "JPEG", quality=int(rng.integers(75, 96)))
        paths.append(path)
    return paths


def baseline(path: Path) -> str:
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.open(path)))


def dsbuild_stage(path: Path) -> str:
    from dsbuild.verify import analyze_file

    rec = analyze_file(path, verify=_VERIFY, dedup=_DEDUP)
    assert rec.ok, (path, rec.reason)
    return rec.phash


def _settings():
    from dsbuild.manifest import DedupSettings, VerifySettings

    return VerifySettings(), DedupSettings()


_VERIFY, _DEDUP = _settings()


def parts(path: Path, side: int | None) -> dict[str, float]:
    """CPU seconds of each part of the stage, with JPEG draft decoding to ``side`` (None: full)."""
    from dsbuild.verify import hashing, quality
    from dsbuild.verify.decode import decode, pixel_digest

    out = {}
    t = time.process_time()
    data = path.read_bytes()
    hashlib.sha256(data).hexdigest()
    out["read+sha256"] = time.process_time() - t
    t = time.process_time()
    img, info = decode(data, _VERIFY, analysis_side=side)
    out["decode"] = time.process_time() - t
    t = time.process_time()
    pixel_digest(img)
    out["pixel digest"] = time.process_time() - t
    t = time.process_time()
    gray = hashing.to_gray(img)  # one conversion, shared by the hash and the blur score
    out["gray"] = time.process_time() - t
    t = time.process_time()
    ph = hashing.compute_hash(img, gray=gray)
    out["phash"] = time.process_time() - t
    t = time.process_time()
    quality.scores(img, width=info["width"], height=info["height"], gray=gray)
    out["quality"] = time.process_time() - t
    return out, ph


def _run_all(fn, paths: list[Path]) -> list[str]:
    return [fn(p) for p in paths]


def pool_rate(fn, paths: list[Path], workers: int) -> float:
    chunks = [paths[i::workers * 4] for i in range(workers * 4)]
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_run_all, [fn] * workers, [c[:2] for c in chunks[:workers]]))  # start the workers
        t0 = time.perf_counter()
        list(ex.map(_run_all, [fn] * len(chunks), chunks))
        return len(paths) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 files instead of 2,000")
    ap.add_argument("-n", type=int, help="number of files")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    n = args.n or (300 if args.quick else 2000)

    from dsbuild.verify import hashing
    from dsbuild.verify.decode import ANALYSIS_SIDE

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = make_files(Path(tmp), n)
        total = sum(p.stat().st_size for p in paths)
        print(f"{n} JPEGs, 1024×768 … 1600×1200, {total / n / 1e3:.0f} kB on average (made in {time.perf_counter() - t0:.0f} s); "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
        for p in paths[:20]:  # warm the page cache and the imports
            baseline(p), dsbuild_stage(p)

        cpu_base, cpu_ds, same = [], [], 0
        for p in paths:  # interleaved: both see the same machine load
            t = time.process_time()
            a = baseline(p)
            cpu_base.append(time.process_time() - t)
            t = time.process_time()
            b = dsbuild_stage(p)
            cpu_ds.append(time.process_time() - t)
            same += a == b
        base_ms, ds_ms = 1e3 * np.mean(cpu_base), 1e3 * np.mean(cpu_ds)
        print("one core (CPU time per image):")
        print(f"  baseline  imagehash.phash(Image.open(f)), full decode  {base_ms:6.2f} ms   {1e3 / base_ms:6.0f} images/s")
        print(f"  dsbuild   analyze_file: verify + sha256 + pixel digest  {ds_ms:6.2f} ms   {1e3 / ds_ms:6.0f} images/s"
              f"   -> {base_ms / ds_ms:.2f}x per core")
        print(f"            + phash + quality scores (draft side {ANALYSIS_SIDE})")
        print(f"  phash equal to imagehash on the full decode: {same}/{n} "
              f"(dsbuild hashes the draft-reduced decode; differences are a few bits)")
        a = [hashing.hash_to_int(baseline(p)) for p in paths[:200]]
        b = [hashing.hash_to_int(dsbuild_stage(p)) for p in paths[:200]]
        d = np.array([(x ^ y).bit_count() for x, y in zip(a, b)])
        print(f"  Hamming distance draft vs full decode (200 files): median {np.median(d):.0f}, "
              f"p95 {np.percentile(d, 95):.0f}, max {d.max()}")

        print("\nwhere the time goes (CPU ms per image, 300 files; the gray image shared by phash and quality):")
        sample = paths[:300]
        full_hash = {}
        for side in dict.fromkeys((None, 256, ANALYSIS_SIDE, 96, 64)):
            acc, dist = {}, []
            for p in sample:
                times, ph = parts(p, side)
                for k, v in times.items():
                    acc[k] = acc.get(k, 0.0) + v
                if side is None:
                    full_hash[p] = hashing.hash_to_int(ph)
                else:
                    dist.append((hashing.hash_to_int(ph) ^ full_hash[p]).bit_count())
            label = "full decode" if side is None else f"draft side {side}"
            tot = sum(acc.values()) / len(sample) * 1e3
            note = f"; phash vs full decode: p95 {np.percentile(dist, 95):.0f} bits, max {max(dist)}" if dist else ""
            print(f"  {label:15s} " + "  ".join(f"{k} {v / len(sample) * 1e3:.2f}" for k, v in acc.items())
                  + f"   total {tot:.2f} ms ({base_ms / tot:.2f}x){note}")

        if args.workers > 1:
            print(f"\nall {args.workers} cores (process pool, wall clock; other users of the machine slow this):")
            for label, fn in (("baseline", baseline), ("dsbuild", dsbuild_stage)):
                one = pool_rate(fn, paths, 1)
                many = pool_rate(fn, paths, args.workers)
                print(f"  {label:9s} 1 worker {one:6.0f} images/s   {args.workers} workers {many:6.0f} images/s"
                      f"   scaling {many / one:.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
