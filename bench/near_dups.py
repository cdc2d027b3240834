"""Benchmark: exact near-duplicate search over 64-bit hashes, at 10k, 100k and 1M.

Data: N uniformly random 64-bit hashes (seeded); 1 % of them are replaced by copies
of other hashes with 0–6 random bits flipped (the planted neighbours). Uniform
random bits are the worst case for a multi-index search (no clustering to exploit).

Printed side by side, in the same run:

* **dsbuild** :func:`dsbuild.dedup.search.find_pairs` at threshold 8 (imagededup's
  comparison setting) and at ``DEFAULT_THRESHOLD``: seconds, pairs found, the plan
  it took;
* **brute force** (numpy, chunked popcount of every pair) at 10k and 20k: seconds,
  and whether its pair set equals dsbuild's;
* **imagededup** ``PHash().find_duplicates(encoding_map=..., max_distance_threshold=8)``
  (its default ``brute_force_cython`` search, all cores) up to 20k (it is quadratic:
  above that the line shows an estimate from its 20k time): seconds, and whether its
  pairs equal dsbuild's;
* the speed-up of dsbuild over each.

    .venv/bin/python bench/near_dups.py            # N = 10k, 20k, 100k, 1M (~3 min on 2 busy cores)
    .venv/bin/python bench/near_dups.py --quick    # N = 2k, 10k
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsbuild.dedup import search as dedup  # noqa: E402

SEED = 42


def make_hashes(n: int, seed: int = SEED, frac: float = 0.01, max_flips: int = 6) -> np.ndarray:
    """``n`` random uint64 hashes; ``frac`` of them are copies of others with 0..max_flips bits flipped."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    k = int(n * frac)
    src = rng.choice(n, k, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), k, replace=False)
    flips = np.zeros(k, dtype=np.uint64)
    nflips = rng.integers(0, max_flips + 1, k)
    for a in range(k):
        for bit in rng.choice(64, nflips[a], replace=False):
            flips[a] |= np.uint64(1) << np.uint64(bit)
    h[dst] = h[src] ^ flips
    return h


def brute_force(h: np.ndarray, threshold: int) -> np.ndarray:
    """Every pair i < j with popcount(h[i] ^ h[j]) <= threshold: (k, 3) rows, sorted."""
    n = len(h)
    out = []
    rows = max(1, (1 << 22) // n)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        d = np.bitwise_count(h[a:b, None] ^ h[None, a:])
        i, j = np.nonzero(d <= threshold)
        keep = j > i
        i, j = i[keep], j[keep]
        out.append(np.column_stack([i + a, j + a, d[i, j]]).astype(np.int64))
    pairs = np.concatenate(out) if out else np.zeros((0, 3), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def imagededup_pairs(h: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    from imagededup.methods import PHash

    enc = {str(i): format(int(v), "016x") for i, v in enumerate(h)}
    logging.disable(logging.INFO)  # imagededup logs every stage at INFO through its own handlers
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            dups = PHash(verbose=False).find_duplicates(encoding_map=enc, max_distance_threshold=threshold,
                                                        num_dist_workers=os.cpu_count() or 1)
    finally:
        logging.disable(logging.NOTSET)
    return {(min(int(a), int(b)), max(int(a), int(b))) for a, bs in dups.items() for b in bs}


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in pairs[:, :2]}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 2k and 10k only")
    ap.add_argument("--sizes", help="comma-separated N (overrides the defaults)")
    ap.add_argument("--imagededup-max", type=int, default=20_000,
                    help="run imagededup up to this N; above it, print an estimate from its quadratic cost")
    ap.add_argument("--no-imagededup", action="store_true")
    args = ap.parse_args(argv)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [2_000, 10_000] if args.quick else [10_000, 20_000, 100_000, 1_000_000]
    t_cmp, t_def = 8, dedup.DEFAULT_THRESHOLD
    print(f"random 64-bit hashes, 1% planted neighbours at distance 0-6; {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f}); numpy {np.__version__}\n")
    print(f"{'N':>9} | {'dsbuild t=8':>12} {'pairs':>7} | {f'dsbuild t={t_def}':>12} {'pairs':>7} | "
          f"{'brute t=8':>10} {'same':>5} | {'imagededup t=8':>14} {'same':>5} | speed-up vs imagededup / brute")
    per_pair = None  # imagededup seconds per pair at the largest size it ran, for the estimates above it
    for n in sizes:
        h = make_hashes(n)
        ours, s8 = timed(dedup.find_pairs, h, t_cmp)
        ours_def, sdef = timed(dedup.find_pairs, h, t_def)
        plan = dedup.plan(64, t_def, n // 2, n * (n - 1) / 2)
        row = f"{n:>9,} | {s8:>10.2f} s {len(ours):>7,} | {sdef:>10.2f} s {len(ours_def):>7,} | "
        sb = None
        if n <= 20_000:
            ref, sb = timed(brute_force, h, t_cmp)
            ref_def = brute_force(h, t_def)
            same = np.array_equal(ref, ours) and np.array_equal(ref_def, ours_def)
            row += f"{sb:>8.2f} s {str(same):>5} | "
        else:
            row += f"{'-':>10} {'-':>5} | "
        si = None
        est = per_pair * n * (n - 1) / 2 if per_pair else 0.0
        if not args.no_imagededup and n <= args.imagededup_max:
            try:
                theirs, si = timed(imagededup_pairs, h, t_cmp)
                per_pair = si / (n * (n - 1) / 2)
                row += f"{si:>12.2f} s {str(theirs == as_set(ours)):>5} | "
            except Exception as exc:  # a baseline that cannot run is reported, not fatal
                row += f"{'error':>14} {'-':>5} | "
                print(f"imagededup failed: {type(exc).__name__}: {exc}")
        else:
            note = f"~{est:,.0f} s est." if per_pair else "skipped"
            row += f"{note:>14} {'-':>5} | "
        speed = []
        if si:
            speed.append(f"{si / max(s8, 1e-9):,.0f}x")
        elif per_pair:
            speed.append(f"~{est / max(s8, 1e-9):,.0f}x (est.)")
        if sb:
            speed.append(f"{sb / max(s8, 1e-9):,.0f}x")
        row += " / ".join(speed)
        print(row, flush=True)
        print(f"{'':>9}   plan at t={t_def}: " + ("brute force" if plan.brute_force else
              ", ".join(f"{b.width} bits r={b.radius}" for b in plan.blocks)), flush=True)


if __name__ == "__main__":
    main()
