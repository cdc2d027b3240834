"""Benchmark: the build's embedding neighbour graph at 10k … 100k images, beside the phash search.

Issue 17 asks for the whole neighbour graph of 100,000 embeddings in ≤ 60 s on 2 cores, the memory
per image, and a 1M figure, beside imagededup's PHash and dsbuild's phash search in the same run.

Data: real embeddings — the 5,000 CIFAR-10 dev photos (/work/shared/data/cifar10n-dev, benchmark
data only) through the build's embedder (tf_efficientnet_lite0 at 160 px, L2-normalised, cached in
``--cache``) — grown to N by jitter: each synthetic vector is a random real one plus Gaussian noise
(σ = 0.02 per dimension, cosine ≈ 0.8 to its source), renormalised, so the set keeps the real
vectors' clustering instead of being uniform noise. Timed, per N, in this process:

* **neighbour pairs** — :func:`dsbuild.dedup.neardup.embedding_pairs` at the default
  ``similarity`` floor, k = 10 (what the build runs: faiss ``IndexFlatIP`` up to 50,000 rows,
  HNSW above);
* **outlier scores** — :func:`dsbuild.dedup.signals.outlier_scores` (cleanlab's
  ``OutOfDistribution``, k = ``outlier_k``) of the representatives (one image of each pair left out), on the
  neighbours of the search above (:meth:`~dsbuild.dedup.neardup.KnnSearch.within`: what the build does);
  "graph total" is both. **Before** (same run): the same scores from a search of their own
  (:class:`~dsbuild.dedup.neardup.NeighbourGraph`, a second HNSW build and search), the total, and the ratio;
  "rank agr." is the rank correlation of the two sets of scores;
* **phash pairs** — :func:`dsbuild.dedup.search.find_pairs` at the default threshold on N hashes
  (bench/near_dups.py's random hashes with 1 % planted neighbours);
* **imagededup** ``PHash.find_duplicates`` on the same hashes up to ``--imagededup-max`` (quadratic:
  above it, an estimate from its cost per pair).

Memory per image: the float32 vectors (what the search holds), the float16 cache on disk, and the
process's peak RSS over the run. The 1M line extrapolates each stage from the largest N (exact
search grows as N², HNSW as N log N).

    .venv/bin/python bench/knn_scale.py                       # N = 10k, 20k, 50k, 100k (~10 min on 2 cores)
    .venv/bin/python bench/knn_scale.py --sizes 2000,10000    # quick
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from near_dups import imagededup_pairs, make_hashes  # noqa: E402

from dsbuild.dedup import neardup, search  # noqa: E402
from dsbuild.dedup.settings import DedupSettings  # noqa: E402
from dsbuild.dedup.signals import outlier_scores  # noqa: E402

DEFAULT = DedupSettings()


def real_embeddings(cache_dir: Path, threads: int) -> np.ndarray:
    """The CIFAR dev photos' embeddings (n, 1280) float32, computed once into ``cache_dir``."""
    import planted_hard as ph

    from dsbuild.model.embeddings import Embedder, FeatureCache, FeatureSpec
    from dsbuild.verify.decode import decode
    from dsbuild.verify.settings import VerifySettings

    files = sorted((ph.CIFAR_DEV / "images").rglob("*.jpg")) + sorted((ph.CIFAR_DEV / "images").rglob("*.png"))
    datas = [p.read_bytes() for p in files]
    shas = [hashlib.sha256(d).hexdigest() for d in datas]
    spec = FeatureSpec(arch=DEFAULT.embed_arch, size=DEFAULT.embed_size)
    cache = FeatureCache(cache_dir, spec)
    todo = sorted({s for s in shas if s not in cache})
    if todo:
        embedder = Embedder(spec, threads=threads)
        by_sha = dict(zip(shas, datas))
        for k in range(0, len(todo), 256):
            chunk = todo[k:k + 256]
            imgs = [decode(by_sha[s], VerifySettings())[0] for s in chunk]
            cache.put(chunk, np.concatenate([embedder.embed(imgs[i:i + 32]) for i in range(0, len(imgs), 32)]))
    return np.asarray(cache.get(shas), dtype=np.float32)


def grow(real: np.ndarray, n: int, seed: int = 0, sigma: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if n <= len(real):
        return real[rng.choice(len(real), n, replace=False)].copy()
    extra = real[rng.integers(0, len(real), n - len(real))] + rng.normal(0, sigma, (n - len(real), real.shape[1])).astype(np.float32)
    out = np.concatenate([real, extra]).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,20000,50000,100000")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/dsbuild-bench-features"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--imagededup-max", type=int, default=20_000)
    ap.add_argument("--no-outliers", action="store_true", help="skip cleanlab's outlier search (quadratic)")
    args = ap.parse_args(argv)
    import cleanlab.outlier  # noqa: F401 (imported before the clock starts)
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    real = real_embeddings(args.cache, args.threads)
    print(f"dsbuild bench/knn_scale.py — {os.cpu_count()} CPUs, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}; {len(real):,} real embeddings × {real.shape[1]} (efficientnet_lite0 @ 160 px); "
          f"neighbour floor {DEFAULT.similarity}, exact search up to {neardup.EXACT_MAX:,} rows, HNSW above")
    print(f"\n{'N':>9} | {'neighbour pairs':>16} {'pairs':>8} | {'outlier scores':>15} | {'graph total':>12} | "
          f"{'before: outliers, total, ratio':>31} | {'rank agr.':>9} | {'phash pairs':>12} | {'imagededup PHash':>17} | "
          f"{'peak RSS':>9}")
    rows, per_pair = [], None
    for n in sizes:
        emb = grow(real, n)
        t0 = time.perf_counter()
        first: list = []
        pairs, _ = neardup.embedding_pairs(emb, DEFAULT.similarity, first=first, first_k=DEFAULT.outlier_k + 3)
        t_pairs = time.perf_counter() - t0
        t_out = t_alone = math.nan
        if not args.no_outliers:
            # the build's order: outlier scores of the representatives (one image of each near-duplicate pair
            # left out), their neighbours taken from the search above (KnnSearch.within) ...
            reps = np.setdiff1d(np.arange(n), pairs[:, 1])
            t0 = time.perf_counter()
            sims, ids, index = first[0]
            graph = neardup.KnnSearch(emb=emb, rows=np.arange(n), ids=ids, sims=sims, index=index)
            shared, _ = outlier_scores(emb[reps], DEFAULT.outlier_k, neighbours=graph.within(reps, DEFAULT.outlier_k))
            t_out = time.perf_counter() - t0
            # ... beside the baseline: a search of their own (the build before the search was shared)
            t0 = time.perf_counter()
            alone, _ = outlier_scores(emb[reps], DEFAULT.outlier_k)
            t_alone = time.perf_counter() - t0
            agree = np.corrcoef(np.argsort(np.argsort(shared)), np.argsort(np.argsort(alone)))[0, 1]
        h = make_hashes(n)
        t0 = time.perf_counter()
        search.find_pairs(h, DEFAULT.threshold)
        t_ph = time.perf_counter() - t0
        if n <= args.imagededup_max:
            t0 = time.perf_counter()
            imagededup_pairs(h, DEFAULT.threshold)
            t_id = time.perf_counter() - t0
            per_pair = t_id / (n * (n - 1) / 2)
            idd = f"{t_id:>15.1f} s"
        else:
            idd = f"~{per_pair * n * (n - 1) / 2:>12,.0f} s est." if per_pair else f"{'-':>17}"
        total = t_pairs + (0 if math.isnan(t_out) else t_out)
        before = t_pairs + (0 if math.isnan(t_alone) else t_alone)
        rows.append((n, t_pairs, t_out))
        print(f"{n:>9,} | {t_pairs:>14.1f} s {len(pairs):>8,} | {t_out:>13.1f} s | {total:>10.1f} s | "
              f"{t_alone:>11.1f} s {before:>8.1f} s  {before / total:>5.1f}× | "
              f"{'-' if math.isnan(t_alone) else f'{agree:.4f}':>9} | {t_ph:>10.2f} s | "
              f"{idd} | {rss_mb():>6,.0f} MB", flush=True)
        del emb
    if rows:
        n2, p2, o2 = rows[-1]
        big = 1_000_000
        hnsw = n2 > neardup.EXACT_MAX
        # both searches are faiss's: exact (∝ N²) up to EXACT_MAX rows, HNSW (∝ N log N) above
        grow_by = (big * math.log(big)) / (n2 * math.log(n2)) if hnsw else (big / n2) ** 2
        p_est, o_est = p2 * grow_by, o2 * grow_by
        print(f"{'1M (est.)':>9} | {p_est:>14,.0f} s {'':>8} | {o_est:>13,.0f} s | {p_est + o_est:>10,.0f} s |"
              f" {'':>12} | {'':>17} |  (from {n2:,}: ∝ {'N log N (HNSW)' if hnsw else 'N² (exact)'})")
    dim = real.shape[1]
    print(f"\nmemory per image: {dim * 4:,} B float32 vectors in the search, {dim * 2:,} B float16 in the cache "
          f"(features/ beside the catalog); 1M images: {dim * 4 / 1e3:,.1f} GB in RAM, {dim * 2 / 1e3:,.1f} GB on disk. "
          f"Target (issue 17): the 100,000 graph ≤ 60 s on 2 cores.")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
