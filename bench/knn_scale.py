"""Benchmark: the build's embedding neighbour graph at 10k … 100k images, its recall, beside the phash search.

Issue 17 asks for the whole neighbour graph of 100,000 embeddings in ≤ 60 s on 2 cores, the memory
per image, and a 1M figure, beside imagededup's PHash and dsbuild's phash search in the same run.

Data: real embeddings — the 5,000 CIFAR-10 dev photos (/work/shared/data/cifar10n-dev, benchmark
data only) through the build's embedder (tf_efficientnet_lite0 at 160 px, L2-normalised, cached in
``--cache``) — grown to N by jitter (:func:`grow`), ``--jitter``:

* ``directions`` (default): each synthetic vector is ``normalise(real_i + ε · (real_j − real_k))`` for three
  random real vectors (ε = :data:`EPS` = 0.65: median cosine 0.81 to its source, 5–95 % 0.77–0.85; measured
  on the 5,000), so the jitter lies along the directions in which real embeddings of different photos differ
  and the grown set keeps their decaying spectrum (a PCA to 256 dimensions keeps 81 % of the variance of the
  real vectors);
* ``isotropic`` (the bench before 2026-12-01): ``normalise(real_i + N(0, σ² I))``, σ = 0.02 per dimension
  (median cosine 0.81 to its source). Its noise is spread evenly over all 1,280 dimensions — no real set
  looks like that, and a PCA throws it away by construction, so it cannot judge a reduced search (recall@60
  0.26–0.44 there); kept to compare with older figures.

Timed, per N, in this process — the build's one search serving the near-duplicate pairs and the outlier
scores (:func:`dsbuild.dedup.neardup.knn_index`: exact ``IndexFlatIP`` up to ``EXACT_MAX`` rows, HNSW M 32,
efConstruction 64 above) — as: **build** (the index), **search** (every row's ``outlier_k`` + 4 nearest at
efSearch 64, and the wider searches of rows with many neighbours above the floor: what
:func:`~dsbuild.dedup.neardup.embedding_pairs` runs at the default ``similarity`` floor), **outlier scores**
(:func:`dsbuild.dedup.signals.outlier_scores`, cleanlab's ``OutOfDistribution``, k = ``outlier_k``, of the
representatives — one image of each pair left out — on neighbours from the same search,
:meth:`~dsbuild.dedup.neardup.KnnSearch.within`, which searches again the rows whose list lost too many), the
**total**, and the CPU seconds of it (both threads). Quality against exact full-dimension search of a fixed
sample of 2,000 rows (``IndexFlatIP``, not timed): **recall@10** and **recall@60** of their neighbour lists (self
left out), **pairs** ≥ the floor among them found, and **outlier ρ**: the Spearman correlation of their mean
cosine distance to the 60 nearest (cleanlab's score is a monotone function of it) with the exact one. The load
average is printed with each row: other jobs on the 2 cores stretch the wall time, HNSW more than BLAS (the CPU
seconds less so). Other index choices for the same search (IVF, a PCA-reduced search): bench/knn_methods.py.

Also per N: **phash pairs** — :func:`dsbuild.dedup.search.find_pairs` at the default threshold on N hashes
(bench/near_dups.py's random hashes with 1 % planted neighbours) — and **imagededup** ``PHash.find_duplicates``
on the same hashes up to ``--imagededup-max`` (quadratic: above it, an estimate from its cost per pair).
``--own-search``: also the outlier scores from a search of their own
(:class:`~dsbuild.dedup.neardup.NeighbourGraph`, the build before the search was shared).

Measured 2026-12-01, 100,000, ``directions`` jitter (one run, the other jobs on the 2 cores at load 3.3–5.3:
wall times ~3× an idle machine's): HNSW build 195.7 s, search 167.9 s, outlier scores 323.4 s, 687.2 s in all;
recall@10 0.9904, recall@60 0.9114, pairs 211/211, outlier ρ 0.99286 (5,825 pairs ≥ the floor in all). Against
the isotropic jitter (recall@60 0.979, outlier scores 1.3–1.7 s): HNSW finds the 60 nearest of this data less
well, and with ~6 % of the rows in a pair the outlier scores' lists lose rows to the representatives, so
:meth:`~dsbuild.dedup.neardup.KnnSearch.within` searches more of them again, 4 × wider (efSearch 256) — at 20,000
(exact search, load 4.8) 15.3 % of the representatives against 1.4 % with isotropic jitter (within 5.1 vs 1.1 s,
cleanlab's scoring 5.4 vs 3.9 s). Since then the first search takes :data:`~dsbuild.dedup.neardup.OUTLIER_SPARE`
(16) columns beyond ``outlier_k`` and a re-search is 2 × wider: 100,000 at load ~2, 214.6 s → 120.0 s (its
docstring has the runs).

Memory per image: the float32 vectors (what the search holds), the float16 cache on disk, and the
process's peak RSS over the run. The 1M line extrapolates each stage from the largest N (exact
search grows as N², HNSW as N log N).

    .venv/bin/python bench/knn_scale.py                       # N = 10k, 20k, 50k, 100k (~10 min on 2 cores)
    .venv/bin/python bench/knn_scale.py --sizes 100000        # the issue's figure (~3 min)
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

    from dsbuild.model.embeddings import Embedder, FeatureCache, FeatureSpec, emb_key
    from dsbuild.verify.decode import decode
    from dsbuild.verify.settings import VerifySettings

    files = sorted((ph.CIFAR_DEV / "images").rglob("*.jpg")) + sorted((ph.CIFAR_DEV / "images").rglob("*.png"))
    datas = [p.read_bytes() for p in files]
    shas = [emb_key(hashlib.sha256(d).hexdigest(), None) for d in datas]  # the cache's keys (blob and pixels)
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


EPS = 0.65
"""``directions`` jitter: ε of ``real_i + ε · (real_j − real_k)`` — median cosine 0.81 to the source on the 5,000
CIFAR embeddings (0.60: 0.83, 0.70: 0.79), as the isotropic jitter's σ 0.02 gives (0.81)."""
SIGMA = 0.02


def grow(real: np.ndarray, n: int, seed: int = 0, sigma: float = SIGMA, *, model: str = "directions",
         eps: float = EPS) -> np.ndarray:
    """``n`` unit rows (n, dim) float32: the ``real`` rows and synthetic ones made from them (module docstring,
    ``model`` ``directions`` or ``isotropic``); a fixed-seed sample of ``real`` when n ≤ len(real)."""
    rng = np.random.default_rng(seed)
    if n <= len(real):
        return real[rng.choice(len(real), n, replace=False)].copy()
    m, d = n - len(real), real.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    out[: len(real)] = real
    src = rng.integers(0, len(real), m)
    if model == "directions":
        j, k = rng.integers(0, len(real), m), rng.integers(0, len(real), m)
        for a in range(0, m, 8192):  # a chunk at a time: three (m, dim) temporaries would be 1.5 GB at 100k
            b = min(m, a + 8192)
            out[len(real) + a:len(real) + b] = real[src[a:b]] + eps * (real[j[a:b]] - real[k[a:b]])
    elif model == "isotropic":
        out[len(real):] = real[src] + rng.normal(0, sigma, (m, d)).astype(np.float32)
    else:
        raise ValueError(f"jitter model must be 'directions' or 'isotropic', not {model!r}")
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


K = DEFAULT.outlier_k + neardup.OUTLIER_SPARE + 1  # the build's first search: outlier_k + OUTLIER_SPARE columns and self
SAMPLE = 2_000


BEFORE = "float32"
"""The HNSW index's vectors in the build before the evening of 2026-12-02 (:data:`dsbuild.dedup.neardup.HNSW_STORAGE`): ``IndexHNSWFlat``,
float32 — the baseline row (``--no-before``: none). Before that morning the first search also took only
``outlier_k`` + 3 columns and re-searched 4 × wider (214.6 → 120.0 s at 100,000: the module docstring)."""


def graph(emb: np.ndarray, spare: int = neardup.OUTLIER_SPARE, grow: int = 2) -> dict:
    """The build's one search of ``emb`` (:func:`~dsbuild.dedup.neardup.embedding_pairs`, ``outlier_k`` + ``spare``
    columns) and the outlier scores from it (re-searches ``grow`` × wider), timed by stage (:func:`~dsbuild.dedup.neardup.knn_index` and :func:`~dsbuild.dedup.neardup.knn`
    wrapped in a clock while it runs)."""
    t = {"build": 0.0, "search": 0.0}
    knn_index, knn = neardup.knn_index, neardup.knn

    def timed(stage, fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                t[stage] += time.perf_counter() - t0
        return run

    neardup.knn_index = timed("build", knn_index)
    neardup.knn = timed("search", knn)
    try:
        first: list = []
        c0, t0 = time.process_time(), time.perf_counter()
        pairs, _ = neardup.embedding_pairs(emb, DEFAULT.similarity, first=first, first_k=DEFAULT.outlier_k + spare)
        t["pairs"] = time.perf_counter() - t0
        sims, ids, index = first[0]
        # the build's order: outlier scores of the representatives (one image of each pair left out), their
        # neighbours taken from the search above (KnnSearch.within)
        reps = np.setdiff1d(np.arange(len(emb)), pairs[:, 1])
        searched = t["search"]
        t0 = time.perf_counter()
        found = neardup.KnnSearch(emb=emb, rows=np.arange(len(emb)), ids=ids, sims=sims, index=index)
        scores, _ = outlier_scores(emb[reps], DEFAULT.outlier_k, neighbours=found.within(reps, DEFAULT.outlier_k, grow=grow))
        t["outliers"] = time.perf_counter() - t0
        t["cpu"] = time.process_time() - c0
        t["search"] = searched  # within() may search again: counted with the outlier scores
    finally:
        neardup.knn_index, neardup.knn = knn_index, knn
    t["total"] = t["pairs"] + t["outliers"]
    return {"t": t, "pairs": pairs, "ids": ids, "sims": sims, "reps": reps, "scores": scores}


def quality(g: dict, q: np.ndarray, truth: tuple[np.ndarray, np.ndarray]) -> dict:
    """Recall@10 / @60, pairs ≥ the floor found, outlier ρ of the rows ``q`` against exact ``truth`` (sims, ids)."""
    from scipy.stats import spearmanr

    def others(ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        keep = (ids != q[:, None]) & (ids >= 0)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)

    gs, gi = truth
    ids, sims = g["ids"][q], g["sims"][q]
    out = {}
    for k in (10, DEFAULT.outlier_k):
        a, _ = others(ids, sims, k)
        e, _ = others(gi, gs, k)
        out[k] = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, e)]))
    qi = np.repeat(q, gi.shape[1])
    keep = (np.round(gs.ravel(), 4) >= DEFAULT.similarity) & (gi.ravel() >= 0) & (qi != gi.ravel())
    want = set(zip(np.minimum(qi, gi.ravel())[keep].tolist(), np.maximum(qi, gi.ravel())[keep].tolist()))
    have = set(map(tuple, g["pairs"].tolist()))
    out["pairs"] = (len(want & have), len(want))
    _, ds = others(ids, sims, DEFAULT.outlier_k)
    _, es = others(gi, gs, DEFAULT.outlier_k)
    out["rho"] = float(spearmanr((1 - ds).mean(1), (1 - es).mean(1)).correlation)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,20000,50000,100000")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/dsbuild-bench-features"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jitter", choices=("directions", "isotropic"), default="directions",
                    help="how the real embeddings are grown to N (module docstring)")
    ap.add_argument("--imagededup-max", type=int, default=20_000)
    ap.add_argument("--no-before", action="store_true",
                    help="skip the baseline row above EXACT_MAX: the HNSW index with float32 vectors (BEFORE)")
    ap.add_argument("--own-search", action="store_true",
                    help="also the outlier scores from a search of their own (the build before the shared search)")
    args = ap.parse_args(argv)
    import cleanlab.outlier  # noqa: F401 (imported before the clock starts)
    import faiss
    import scipy.stats  # noqa: F401
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    real = real_embeddings(args.cache, args.threads)
    print(f"dsbuild bench/knn_scale.py — {os.cpu_count()} CPUs, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}; {len(real):,} real embeddings × {real.shape[1]} (efficientnet_lite0 @ 160 px) "
          f"grown by {args.jitter} jitter; neighbour floor {DEFAULT.similarity}; exact search up to "
          f"{neardup.EXACT_MAX:,} rows, HNSW above; quality on {SAMPLE:,} rows against exact search")
    print(f"\n{'N':>9} {'search':<22} | {'build':>7} {'search':>7} {'outliers':>8} {'total':>7} {'CPU':>8} {'ratio':>6} | "
          f"{'recall@10':>9} {'recall@60':>9} {'pairs':>9} {'outlier ρ':>9} | {'load':>4} | {'peak RSS':>8}")
    rows, per_pair = [], None
    for n in sizes:
        emb = grow(real, n, model=args.jitter)
        q = np.sort(np.random.default_rng(1).choice(n, min(n, SAMPLE), replace=False))
        flat = faiss.IndexFlatIP(emb.shape[1])
        flat.add(emb)
        truth = flat.search(emb[q], K)
        del flat
        g = graph(emb)
        qual = quality(g, q, truth)
        t = g["t"]
        name = "exact" if n <= neardup.EXACT_MAX else "HNSW"
        print(f"{n:>9,} {name:<22} | {t['build']:>5.1f} s {t['search']:>5.1f} s {t['outliers']:>6.1f} s "
              f"{t['total']:>5.1f} s {t['cpu']:>6.0f} s {'':>6} | {qual[10]:>9.4f} {qual[DEFAULT.outlier_k]:>9.4f} "
              f"{qual['pairs'][0]:>4}/{qual['pairs'][1]:<4} {qual['rho']:>9.5f} | {os.getloadavg()[0]:>4.1f} | "
              f"{rss_mb():>5,.0f} MB", flush=True)
        rows.append((n, g["t"]["pairs"], g["t"]["outliers"]))
        if not args.no_before and n > neardup.EXACT_MAX:
            storage, neardup.HNSW_STORAGE = neardup.HNSW_STORAGE, BEFORE
            try:
                b = graph(emb)
            finally:
                neardup.HNSW_STORAGE = storage
            bq, bt = quality(b, q, truth), b["t"]
            label = f"before (HNSW {BEFORE})"  # ratio: its total ÷ the row above
            print(f"{'':>9} {label:<22} | {bt['build']:>5.1f} s {bt['search']:>5.1f} s {bt['outliers']:>6.1f} s "
                  f"{bt['total']:>5.1f} s {bt['cpu']:>6.0f} s {bt['total'] / t['total']:>5.2f}× | {bq[10]:>9.4f} "
                  f"{bq[DEFAULT.outlier_k]:>9.4f} {bq['pairs'][0]:>4}/{bq['pairs'][1]:<4} {bq['rho']:>9.5f} | "
                  f"{os.getloadavg()[0]:>4.1f} | {rss_mb():>5,.0f} MB", flush=True)
            del b
        if args.own_search:
            t0 = time.perf_counter()
            alone, _ = outlier_scores(emb[g["reps"]], DEFAULT.outlier_k)
            t_alone = time.perf_counter() - t0
            agree = scipy.stats.spearmanr(alone, g["scores"]).correlation
            print(f"{'':>9} {'own outlier search':<22} | {'':>17} {t_alone:>6.1f} s {g['t']['pairs'] + t_alone:>5.1f} s "
                  f"{'':>8} {(g['t']['pairs'] + t_alone) / g['t']['total']:>5.2f}× | scores rank alike: {agree:.5f}", flush=True)
        h = make_hashes(n)
        t0 = time.perf_counter()
        search.find_pairs(h, DEFAULT.threshold)
        t_ph = time.perf_counter() - t0
        if n <= args.imagededup_max:
            t0 = time.perf_counter()
            imagededup_pairs(h, DEFAULT.threshold)
            t_id = time.perf_counter() - t0
            per_pair = t_id / (n * (n - 1) / 2)
            idd = f"{t_id:.1f} s"
        else:
            idd = f"~{per_pair * n * (n - 1) / 2:,.0f} s est." if per_pair else "-"
        print(f"{'':>9} {'phash pairs':<22} | {t_ph:.2f} s; imagededup PHash {idd}", flush=True)
        del emb
    if rows:
        n2, p2, o2 = rows[-1]
        big = 1_000_000
        hnsw = n2 > neardup.EXACT_MAX
        # both searches are faiss's: exact (∝ N²) up to EXACT_MAX rows, HNSW (∝ N log N) above
        grow_by = (big * math.log(big)) / (n2 * math.log(n2)) if hnsw else (big / n2) ** 2
        p_est, o_est = p2 * grow_by, o2 * grow_by
        print(f"{'1M (est.)':>9} {'':<22} | pairs {p_est:,.0f} s, outlier scores {o_est:,.0f} s, "
              f"{p_est + o_est:,.0f} s in all (from {n2:,}: ∝ {'N log N (HNSW)' if hnsw else 'N² (exact)'})")
    dim = real.shape[1]
    print(f"\nmemory per image: {dim * 4:,} B float32 vectors in the exact search (up to {neardup.EXACT_MAX:,}), "
          f"{dim * 2:,} B float16 in the HNSW index above it (+ its graph, ~{32 * 2 * 4:,} B: M 32 links at layer 0), "
          f"{dim * 2:,} B float16 in the cache (features/ beside the catalog); 1M images: "
          f"{dim * 2 / 1e3:,.1f} GB of vectors in RAM, {dim * 2 / 1e3:,.1f} GB on disk. "
          f"Target (issue 17): the 100,000 graph ≤ 60 s on 2 cores.")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
