"""Near duplicates from two signals — perceptual-hash views and embeddings — as links for the grouping.

Signals of one image (from the build's one decode, :func:`pixel_signals`; the embedding from
:mod:`dsbuild.model.features`):

* ``phash`` (the build's, in ``items``) and its **views**: the phash of the image's mirror and
  three rotations (the same 32×32 resize, transformed before the DCT) and of its central
  90/80/70 % crops (:data:`VIEW_NAMES`), 7 × 64 bits;
* the **effective side** (px): the detail the image really holds (:func:`effective_side`) —
  digits rendered at 48 px hold 8–12 px, a CIFAR photo upscaled to 256 px holds 32;
* the **embedding**: L2-normalised ImageNet features (cosine = dot product).

A pair is linked (:func:`near_links`) when either rule holds:

1. **hash, confirmed**: the phashes are within ``threshold`` bits, or a mirror/rotation view
   of one within ``view_threshold`` (crop view: ``crop_threshold``) bits of the other's phash
   — and, with embeddings and thumbnails:

   * when both images hold ≥ ``detail_confirm_side`` px of detail, they share their fine
     detail once lined up (:func:`dsbuild.dedup.align.detail_correlation` ≥ ``detail_confirm``):
     a copy — re-encoded, colour-shifted, mirrored, cropped anywhere — keeps it, wherever its
     embedding moved; a stereo pair or the mirrored quadrants of a round object share a
     layout, a hash and a near embedding, not their detail;
   * otherwise their cosine is at least :meth:`~dsbuild.dedup.settings.DedupSettings.confirm_for`
     the smaller effective side of the two (0.99 below 12 px, 0.97 below 24, 0.80 below 64,
     else 0.40 — the last two used only with the detail check off: low-information images
     collide in 64-bit hashes by chance — random digit pairs fall within 10 bits with
     probability 2.3e-3 — and need near-identical embeddings); or, failing that, both hold ≥
     ``pixel_confirm_side`` px of detail and their grey thumbnails, aligned by a view and
     compared at the detail the less detailed one holds, correlate at ``pixel_confirm`` or
     more (:func:`aligned_correlation`);
2. **embedding, verified**: cosine ≥ max(``similarity``, the same confirmation) among
   exact (faiss ``IndexFlatIP``, ≤ :data:`EXACT_MAX` rows) or HNSW neighbours, *and* their
   pixels line up: for images of ≥ ``detail_confirm_side`` px, the detail check above; for
   others, some window of one image's grey 64 × 64 thumbnail (scales 1.0–0.6, 5 × 5
   positions) hashes within :data:`WINDOW_THRESHOLD` bits of the other's whole thumbnail
   (:func:`window_match`) — so different pictures of the same texture or scene (cosine up
   to 0.97) stay apart. An image's nearest neighbour (:data:`DETAIL_RANKS`) is also checked from
   ``detail_similarity`` up when both hold ≥ ``detail_confirm_side`` px of detail (the detail check
   decides alone): an off-centre crop of a 32-px photo resized back keeps its detail, not its
   embedding (cosine 0.6–0.85) nor its hash (12–36 bits off every view).

Degenerate hashes (blank or solid images) are never evidence. Thresholds and their
precision/recall: bench/dup_semantic.py and the README. The links go to
:func:`dsbuild.dedup.grouping.regroup`, which groups around representatives (no chaining).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from dsbuild.dedup.align import DIHEDRAL_OPS, coarse_views, detail_correlation, resample_weights
from dsbuild.dedup.settings import DedupSettings

DIHEDRAL = ("hflip", "rot90", "rot180", "rot270")
CROPS = (0.9, 0.8, 0.7)
VIEW_NAMES = DIHEDRAL + tuple(f"crop{round(c * 100)}" for c in CROPS)
"""The phash views stored per blob (``blobs.phash_views``: their 16-hex hashes joined by commas, in this order)."""
EXACT_MAX = 50_000
"""Up to this many embeddings the neighbour search is exact (faiss ``IndexFlatIP``: deterministic); above it
faiss HNSW (M 32, efConstruction 64, efSearch ≥ 64, float16 vectors) — issue 17 FINDINGS Q4: 20k × 1280 exact 62 CPU s vs
HNSW 21 CPU s at recall@10 0.93 (the best of faiss, usearch and hnswlib at equal cost)."""
WINDOW_THRESHOLD = 6
"""Bits between a thumbnail window's phash and the other image's: the crop views' threshold."""
THUMB_SIDE = 64
WINDOW_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6)
WINDOW_STEPS = 5
_EMPTY = np.zeros((0, 2), dtype=np.int64)
NEIGHBOURS = 10
"""Nearest images per image in the ``neighbours`` view (and the first k of :func:`embedding_pairs`)."""
NEIGHBOUR_SPARE = 5
"""Nearest images stored beyond :data:`NEIGHBOURS` (the ``knn`` table): the view lists the accepted ones only,
so an image whose neighbours a review removes still shows 10 until the next build or ``embed``."""
HNSW_STORAGE = "float16"
"""How the HNSW index (above :data:`EXACT_MAX` rows) holds the vectors: faiss ``IndexHNSWSQ`` with ``QT_fp16``
(2,560 B per 1280-d row), or ``"float32"``: ``IndexHNSWFlat`` (5,120 B; the build before the evening of 2026-12-02, bench/knn_scale.py's
baseline row). Measured 2026-12-02 on bench/knn_scale.py's 100,000 rows (2 cores, load 1.5–2.0; the index and
one search alone, same data and queries): HNSWFlat
build 24.0–27.6 s + search (77 columns, efSearch 64) 23.7–24.1 s, recall@10 / @60 0.9903 / 0.9114; fp16
20.9 + 18.1 s, 0.9900 / 0.9112; bf16 22.1 + 20.2 s, 0.9891 / 0.9111; fp16 with M 24 38.3 s in all but recall@60
0.893. The graph search reads a few hundred vectors per query, scattered over 512 MB at float32: half the bytes
is the gain. The embeddings are cached as float16 already (:mod:`dsbuild.model.embeddings`)."""
OUTLIER_SPARE = 16
"""Columns the build's first search takes beyond ``outlier_k``: a row whose list holds more rows left out of the
outlier scores (its duplicates) than this is searched again, 2 × wider each time (:meth:`KnnSearch.within`).
bench/knn_scale.py at 100,000 (the directions proxy, one session, load ~2; build / search / outlier scores):
spare 3 and a 4 × wider re-search (before) 52.0 / 48.0 / 114.6 s = 214.6 s; spare 3, 2 × 54.3 / 49.1 / 51.8 s =
155.3 s; spare 8, 2 × 124.4 s; spare 16, 2 × 54.6 / 64.1 / 1.0 s = 120.0 s (1.79×), recall@60 0.911 → 0.921, the
outlier scores' rank correlation with exact search's 0.99286 → 0.99361."""


# --------------------------------------------------------------------------- per-image signals


def _phashes(pixels: np.ndarray) -> np.ndarray:
    """(m,) uint64: the phash of each of ``pixels`` (m, 32, 32), in one batched DCT (imagehash's transform:
    the same floats as dsbuild.verify.hashing)."""
    import scipy.fftpack

    px = np.asarray(pixels, dtype=np.float64)
    low = scipy.fftpack.dct(scipy.fftpack.dct(px, axis=1), axis=2)[:, :8, :8].reshape(len(px), 64)
    return np.packbits(low > np.median(low, axis=1, keepdims=True), axis=1).view(">u8")[:, 0].astype(np.uint64)


def _phash_of(pixels: np.ndarray) -> int:
    return int(_phashes(np.asarray(pixels)[None])[0])


def phash_views(img: Any) -> dict[str, int]:
    """64-bit phash (int) of each view of a decoded PIL image: :data:`VIEW_NAMES` (and ``"full"``).

    ``"full"`` equals imagehash's phash of the image. A dihedral view transforms the 32 × 32
    LANCZOS grey resize before the DCT (= the phash of the mirrored/rotated image up to
    resampling rounding); a crop view is the phash of the central crop (too small a crop —
    under 4 px — repeats the full hash). ~1–2 ms per image.
    """
    from PIL import Image

    gray = img if img.mode == "L" else img.convert("L")
    full = np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS))
    out = {"full": _phash_of(full)}
    for name in DIHEDRAL:
        out[name] = _phash_of(np.ascontiguousarray(DIHEDRAL_OPS[name](full)))
    w, h = gray.size
    for keep in CROPS:
        dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
        name = f"crop{round(keep * 100)}"
        if w - 2 * dx < 4 or h - 2 * dy < 4:
            out[name] = out["full"]
            continue
        out[name] = _phash_of(np.asarray(gray.crop((dx, dy, w - dx, h - dy)).resize((32, 32), Image.Resampling.LANCZOS)))
    return out


def effective_side(img: Any, tol: float = 0.08, factors: tuple[int, ...] = (2, 3, 4, 6, 8)) -> float:
    """Short side (px) of the detail an image holds: its short side ÷ the largest upscale factor it survives.

    For each factor f the grey image is box-downscaled by f and upscaled back, bicubic and
    nearest-neighbour (pixel-art and blocky upscales); when the smaller mean absolute difference
    is below ``tol`` × the image's mean absolute deviation, the image holds no more than the
    f-times smaller one. Measured (issue 17 FINDINGS Q2 and tests/test_semantic_dedup.py):
    load_digits rendered at 48 px (bicubic or nearest) → 8–16; CIFAR-10 at 32 px and upscaled
    to 128–256 → 16–64 (median 32); photos 50–870. ~1–2 ms on a 128-px decode.
    """
    from PIL import Image

    g = img if img.mode == "L" else img.convert("L")
    w, h = g.size
    a = np.asarray(g, dtype=np.float32)
    spread = float(np.abs(a - a.mean()).mean()) + 1e-3
    best = 1
    for f in factors:
        if min(w, h) // f < 4:
            break
        small = g.resize((max(1, w // f), max(1, h // f)), Image.Resampling.BOX)
        err = min(float(np.abs(a - np.asarray(small.resize((w, h), m), dtype=np.float32)).mean())
                  for m in (Image.Resampling.BICUBIC, Image.Resampling.NEAREST))
        if err / spread < tol:
            best = f
    return min(w, h) / best


def pixel_signals(img: Any) -> tuple[str, float]:
    """``(phash_views, eff_side)`` of a decoded image as stored in ``blobs``: the views' hex joined by commas."""
    views = phash_views(img)
    return ",".join(f"{views[n]:016x}" for n in VIEW_NAMES), effective_side(img)


def parse_views(texts: Any) -> np.ndarray:
    """``blobs.phash_views`` texts (n,) → ``(n, len(VIEW_NAMES))`` uint64; a missing or bad text gives a zero row."""
    out = np.zeros((len(texts), len(VIEW_NAMES)), dtype=np.uint64)
    for r, text in enumerate(texts):
        if isinstance(text, str):
            parts = text.split(",")
            if len(parts) == len(VIEW_NAMES):
                try:
                    out[r] = [int(p, 16) for p in parts]
                except ValueError:
                    pass
    return out


def thumbnail(img: Any, side: int = THUMB_SIDE) -> np.ndarray:
    """Grey thumbnail (side, side) uint8 of a decoded image, squashed, LANCZOS (as phash resizes)."""
    from PIL import Image

    g = img if img.mode == "L" else img.convert("L")
    return np.asarray(g.resize((side, side), Image.Resampling.LANCZOS), dtype=np.uint8)


# --------------------------------------------------------------------------- the two rules


@dataclass
class KnnSearch:
    """One faiss search of the embedded rows, kept so that a later stage (the outlier scores) need not search again.

    ``emb``: (n, dim) every item's embedding; ``rows``: (r,) sorted item rows searched; ``ids`` /
    ``sims``: (r, K) each searched row's nearest rows (item rows, −1: none; self included), best first;
    ``index``: the faiss index over ``emb[rows]`` (:func:`knn_index`), for rows that need more columns.
    """

    emb: np.ndarray
    rows: np.ndarray
    ids: np.ndarray
    sims: np.ndarray
    index: Any

    def within(self, subset: np.ndarray, k: int, *, grow: int = 2) -> tuple[np.ndarray, np.ndarray] | None:
        """``(distances, indices)``, each (len(subset), min(k, len(subset) − 1)): every ``subset`` row's nearest
        other ``subset`` rows by cosine distance (1 − cosine, float64), indices as positions in ``subset``
        (sorted item rows) — what :class:`NeighbourGraph` takes. Rows whose K columns hold too few
        ``subset`` rows are searched again, ``grow`` × wider each time, on the same index. None when ``subset`` reaches
        outside the searched rows."""
        subset = np.asarray(subset, dtype=np.int64)
        k = int(min(k, len(subset) - 1))
        if len(subset) < 2 or not np.isin(subset, self.rows).all():
            return None
        where = np.full(max(int(self.rows.max()), int(subset.max())) + 1, -1, dtype=np.int64)
        where[subset] = np.arange(len(subset))
        q = np.searchsorted(self.rows, subset)
        ids, sims = self.ids[q], self.sims[q]
        out_ids = np.full((len(subset), k), -1, dtype=np.int64)
        out_dist = np.zeros((len(subset), k), dtype=np.float64)
        todo = np.arange(len(subset))
        width = ids.shape[1]
        while True:
            pos = np.where(ids >= 0, where[np.clip(ids, 0, None)], -1)
            keep = (pos >= 0) & (pos != todo[:, None])
            enough = keep.sum(axis=1) >= k
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            done = enough | (width >= len(self.rows))
            out_ids[todo[done]] = np.take_along_axis(pos, order, axis=1)[done]
            out_dist[todo[done]] = np.clip(1.0 - np.take_along_axis(sims, order, axis=1)[done], 0.0, 2.0)
            todo = todo[~done]
            if not len(todo):
                return out_dist, out_ids
            width = min(grow * width, len(self.rows))
            sims, found = knn(self.emb[self.rows[q[todo]]], width, index=self.index, ef=64)
            ids = np.where(found >= 0, self.rows[np.clip(found, 0, None)], -1)


@dataclass(frozen=True)
class Links:
    """Near-duplicate links between rows, ``i < j``, sorted: arrays of shape (m,).

    ``distance``: the smallest phash distance over the views, bits (64 when a hash is degenerate).
    ``similarity``: cosine of the embeddings (NaN without embeddings).
    ``by_hash`` / ``by_embedding``: which rule linked the pair (both may hold).
    """

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray
    similarity: np.ndarray
    by_hash: np.ndarray
    by_embedding: np.ndarray
    neighbours: tuple[np.ndarray, np.ndarray] | None = None
    """``(ids, sims)``, each (n, k): every embedded row's nearest other rows (−1: none), from the same search."""
    search: KnnSearch | None = None
    """That search, wider (``outlier_k`` + :data:`OUTLIER_SPARE` + 1 columns, self included), for the outlier scores
    to reuse."""

    def __len__(self) -> int:
        return len(self.i)

    def rows(self) -> np.ndarray:
        """``(m, 3)`` int64 ``(i, j, distance)``: what :func:`dsbuild.dedup.grouping.regroup` takes as ``near_pairs``."""
        return np.column_stack([self.i, self.j, self.distance]).astype(np.int64) if len(self.i) else np.zeros((0, 3), np.int64)


def _canonical(pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return _EMPTY.copy()
    p = np.asarray(pairs, dtype=np.int64)[:, :2]
    p = np.column_stack([p.min(1), p.max(1)])
    return np.unique(p[p[:, 0] != p[:, 1]], axis=0)


def hash_candidates(full: np.ndarray, views: np.ndarray | None, usable: np.ndarray, settings: DedupSettings) -> np.ndarray:
    """Pairs (i, j) whose phashes are within ``threshold``, or a view of one within its threshold of the other's phash.

    ``full``: (n,) uint64 phashes; ``views``: (n, 7) uint64 (:func:`parse_views`) or None;
    ``usable``: (n,) bool — rows with a non-degenerate hash and (for views) stored views.
    Exact multi-index search (:mod:`dsbuild.dedup.search`).
    """
    from dsbuild.dedup.search import find_cross_pairs, find_pairs

    idx = np.flatnonzero(usable)
    parts = [_EMPTY]
    f = np.asarray(full, dtype=np.uint64)[idx]
    found = find_pairs(f, settings.threshold)
    if len(found):
        parts.append(np.column_stack([idx[found[:, 0]], idx[found[:, 1]]]))
    if views is not None and settings.views:
        for k, name in enumerate(VIEW_NAMES):
            # The dataset's ``threshold`` bounds every hash signal: a user who lowers it gets no looser view links.
            t = min(settings.crop_threshold if name.startswith("crop") else settings.view_threshold, settings.threshold)
            cross = find_cross_pairs(np.ascontiguousarray(views[idx, k]), f, t)
            if len(cross):
                parts.append(np.column_stack([idx[cross[:, 0]], idx[cross[:, 1]]]))
    return _canonical(np.concatenate(parts))


def pair_similarity(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine of each pair's unit embeddings: (m,) float32."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.einsum("ij,ij->i", emb[pairs[:, 0]], emb[pairs[:, 1]]).astype(np.float32)


def knn_index(emb: np.ndarray, *, exact_max: int = EXACT_MAX) -> Any:
    """A faiss inner-product index over the rows of ``emb`` (n, dim): ``IndexFlatIP`` (exact) up to
    ``exact_max`` rows, ``IndexHNSWSQ`` (M 32, efConstruction 64, vectors stored as float16: :data:`HNSW_STORAGE`)
    above. Build it once and pass it to every :func:`knn` over the same rows (an HNSW build of 100,000 × 1280
    takes ~21 s on 2 cores). The similarities an HNSW search returns are those of the float16 vectors (within
    ~1e-3 of float32's); :func:`embedding_pairs` computes its pairs' own in float32."""
    import faiss

    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = x.shape
    if n > exact_max:
        # the vectors held as float16 (faiss's scalar quantizer, decoded to float32 per distance): half the memory
        # traffic of IndexHNSWFlat, same neighbours — HNSW_STORAGE has the measurements
        if HNSW_STORAGE == "float16":
            index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
            index.train(x[:1])  # fp16 needs no training statistics; the call only marks the index trained
        else:
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
    else:
        index = faiss.IndexFlatIP(d)
    index.add(x)
    return index


def knn(emb: np.ndarray, k: int, *, queries: np.ndarray | None = None, exact_max: int = EXACT_MAX,
        index: Any = None, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar indexed rows (inner product) of each query row: ``(sims, ids)``, each (q, min(k,
    indexed rows)), self included; missing neighbours are id −1.

    ``index``: :func:`knn_index` of ``emb`` (built here when None), or of other rows: then ``emb`` holds the
    query vectors themselves (ids are rows of the index). ``queries``: rows of ``emb`` to search for (None: all).
    HNSW searches with efSearch max(k, ``ef``) (default ``ef`` max(64, 2k); the cost grows with it, not with k).
    """
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if index is None:
        index = knn_index(x, exact_max=exact_max)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(k, ef if ef is not None else max(64, 2 * k))
    q = x if queries is None else x[queries]
    return index.search(q, min(k, index.ntotal))


class NeighbourGraph:
    """The ``k`` nearest other rows of every row of ``emb`` by cosine, from :func:`knn` (faiss: exact up to
    :data:`EXACT_MAX` rows, HNSW above), with the face of a fitted scikit-learn ``NearestNeighbors`` that
    cleanlab's ``OutOfDistribution`` takes as its ``knn`` parameter: ``n_neighbors``, ``metric`` and
    ``kneighbors()`` → ``(distances, indices)``, each (n, k), cosine distance (1 − cosine), nearest first,
    the row itself left out (as ``NearestNeighbors.kneighbors(None)`` leaves it out).

    cleanlab's own search (scikit-learn, brute force) takes 464 s for 100,000 × 1280 on 2 cores where this
    takes ~65 s (bench/knn_scale.py; ~1 s reusing the build's search, :meth:`KnnSearch.within`); the scores it gives are cleanlab's, from these distances.
    """

    metric = "cosine"

    def __init__(self, emb: np.ndarray, k: int, *, neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``neighbours``: ``(distances, indices)`` already found (:meth:`KnnSearch.within`: the build's one
        search, reused), each (n, min(k, n − 1)); searched here when None."""
        n = len(emb)
        self.n_neighbors = int(min(k, n - 1))
        self.exact = n <= EXACT_MAX
        if neighbours is not None:
            self._dist, self._ids = (np.asarray(a) for a in neighbours)
            if self._ids.shape != (n, self.n_neighbors):
                raise ValueError(f"neighbours must be ({n}, {self.n_neighbors}), not {self._ids.shape}")
            return
        x = np.asarray(emb, dtype=np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        # efSearch 64, not 2k: measured on 100,000 real-derived embeddings (k = 60), recall@61 0.979 vs 0.994 and
        # the outlier scores' rank correlation with exact search 0.9996 vs 0.9997, at half the search time (38 vs 72 s)
        sims, ids = knn(x, self.n_neighbors + 1, exact_max=EXACT_MAX, ef=64)
        rows = np.arange(n)[:, None]
        keep = ids != rows  # the row itself (wherever a tie put it), and ...
        keep &= ids >= 0
        # ... one column too many where the search did not return the row itself (HNSW, or exact ties)
        order = np.argsort(~keep, axis=1, kind="stable")[:, : self.n_neighbors]
        self._ids = np.take_along_axis(ids, order, axis=1)
        self._dist = np.clip(1.0 - np.take_along_axis(sims, order, axis=1), 0.0, 2.0).astype(np.float64)

    def kneighbors(self, X: Any = None) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803 (scikit-learn's name)
        """Distances and indices of every fitted row's neighbours (``X`` is the fitted set: ignored)."""
        return self._dist, self._ids


def embedding_pairs(emb: np.ndarray, floor: float, k: int = 10, *, max_k: int = 1024,
                    exact_max: int = EXACT_MAX, first: list | None = None, first_k: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every pair with cosine ≥ ``floor`` among the nearest neighbours: ``(pairs (m, 2), sims (m,))``.

    Rows whose k-th neighbour is still ≥ ``floor`` are searched again with 4k (up to
    ``max_k``), so with exact search this is a range search: no pair above the floor is lost
    to a small k. ``first``: a list that receives the first search's ``(sims, ids, index)``
    (max(k, ``first_k``) + 1 columns, self included, and the faiss index, for later searches of the same
    rows: :class:`KnnSearch`). The first search's HNSW efSearch stays that of k (its cost grows with
    efSearch, hardly with the columns returned: 100,000 rows, 61 columns at efSearch 64 in 38 s, recall 0.98).
    """
    n = len(emb)
    if n < 2:
        return _EMPTY.copy(), np.zeros(0, dtype=np.float32)
    kk, rows, found = min(max(k, first_k) + 1, n), np.arange(n), []
    index = knn_index(emb, exact_max=exact_max)  # once: the wider searches below reuse it
    ef = max(64, 2 * (k + 1))
    while True:
        sims, ids = knn(emb, kk, queries=rows, index=index, ef=ef)
        ef = None
        if first is not None and not first:
            first.append((sims, ids, index))
        qi = np.repeat(rows, ids.shape[1])
        keep = (np.round(sims.ravel(), 4) >= floor) & (ids.ravel() >= 0)
        found.append(np.column_stack([qi[keep], ids.ravel()[keep]]))
        full = np.round(sims[:, -1], 4) >= floor
        if kk >= min(n, max_k) or not full.any():
            break
        rows, kk = rows[full], min(4 * kk, n, max_k)
    pairs = _canonical(np.concatenate(found))
    return pairs, pair_similarity(emb, pairs)


def _window_boxes(side: int) -> list[tuple[int, int, int]]:
    """``(x, y, w)`` of the square windows of a ``side``-px thumbnail: :data:`WINDOW_SCALES` × a
    :data:`WINDOW_STEPS` × :data:`WINDOW_STEPS` grid of positions (one position at full size)."""
    out = []
    for s in WINDOW_SCALES:
        w = max(8, round(side * s))
        free = side - w
        pos = sorted({round(free * k / (WINDOW_STEPS - 1)) for k in range(WINDOW_STEPS)}) if free > 0 else [0]
        out.extend((x, y, w) for y in pos for x in pos)
    return out


def _window_hashes(thumb: np.ndarray) -> np.ndarray:
    """(windows,) uint64: the phash of each :func:`_window_boxes` window of ``thumb``, cut out and resampled
    to 32 px (Lanczos, :func:`dsbuild.dedup.align.resample_weights`, rounded to 8 bits as an image would be),
    in one batched DCT (:func:`_phashes`). Row 0 is the whole thumbnail."""
    wy, wx = _window_weights(thumb.shape[0])
    return _phashes(np.clip(np.rint(wy @ thumb.astype(np.float32) @ wx.transpose(0, 2, 1)), 0, 255))


@lru_cache(maxsize=8)
def _window_weights(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows, 32, side) row and column weights that cut each :func:`_window_boxes` window and resample it to
    32 px (the cut edge clamps the kernel, as a crop then a resize does)."""
    wy, wx = [], []
    for x, y, w in _window_boxes(side):
        for start, rows in ((y, wy), (x, wx)):
            m = np.zeros((32, side), dtype=np.float32)
            m[:, start:start + w] = resample_weights(0.0, float(w), w, 32)
            rows.append(m)
    return np.stack(wy), np.stack(wx)


def matched_windows(thumb: Callable[[int], np.ndarray | None], pairs: np.ndarray,
                    threshold: int = WINDOW_THRESHOLD) -> list[tuple[int, int, int, int] | None]:
    """For each pair (i, j): the window of one thumbnail that hashes within ``threshold`` bits of the other's
    whole thumbnail, as ``(row, x, y, w)`` (``row`` the image it was cut from; the closest window), or None.

    ``thumb(i)`` returns image ``i``'s :func:`thumbnail` (None when it cannot be read: no match).
    A copy cropped anywhere to ≥ 60 % of each side matches; two pictures of one texture or
    scene do not. Mirrored windows are *not* tried: the two halves of a symmetric object (a
    clock face) are each other's mirror at this resolution, and plain mirror copies are found
    by the hash views. ~5–10 ms per new image (window hashes cached per call).
    """
    wins: dict[int, np.ndarray | None] = {}
    whole: dict[int, np.ndarray | None] = {}

    def get(i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if i not in wins:
            t = thumb(i)
            if t is None:
                wins[i] = whole[i] = None
            else:
                wins[i] = _window_hashes(t)
                whole[i] = wins[i][:1]  # window 0: the whole thumbnail
        return wins[i], whole[i]

    out: list[tuple[int, int, int, int] | None] = []
    for i, j in np.asarray(pairs, dtype=np.int64):
        best: tuple[int, tuple[int, int, int, int]] | None = None
        for a, b in ((int(i), int(j)), (int(j), int(i))):
            wa, _ = get(a)
            _, tb = get(b)
            if wa is None or tb is None:
                continue
            d = np.bitwise_count(wa ^ tb[0])
            k = int(d.argmin())
            if int(d[k]) <= threshold and (best is None or int(d[k]) < best[0]):
                side = thumb(a).shape[0]
                best = (int(d[k]), (a, *_window_boxes(side)[k]))
        out.append(None if best is None else best[1])
    return out


def window_match(thumb: Callable[[int], np.ndarray | None], pairs: np.ndarray, threshold: int = WINDOW_THRESHOLD) -> np.ndarray:
    """(m,) bool: for each pair (i, j), some window of one thumbnail is within ``threshold`` bits of the other's
    whole thumbnail phash (:func:`matched_windows`)."""
    return np.array([w is not None for w in matched_windows(thumb, pairs, threshold)], dtype=bool)


def _thumb_views(t: np.ndarray) -> list[np.ndarray]:
    """``t`` (side, side) and its :data:`VIEW_NAMES` views (mirror, rotations, central crops) at the same size."""
    from PIL import Image

    side = t.shape[0]
    im = Image.fromarray(t, mode="L")
    out = [t, *(DIHEDRAL_OPS[name](t) for name in DIHEDRAL)]
    for c in CROPS:
        d = round(side * (1 - c) / 2)
        out.append(np.asarray(im.crop((d, d, side - d, side - d)).resize((side, side), Image.Resampling.LANCZOS)))
    return out


def _centred(t: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    v = np.asarray(Image.fromarray(np.ascontiguousarray(t), mode="L").resize((side, side), Image.Resampling.LANCZOS),
                   dtype=np.float32)
    return v - v.mean()


def _centred_views(t: np.ndarray, side: int) -> tuple[list[np.ndarray], list[float]]:
    """``t``'s :func:`_thumb_views` at ``side`` px, each minus its mean, and their L2 norms."""
    views = [_centred(v, side) for v in _thumb_views(t)]
    return views, [float(np.sqrt((v * v).sum())) for v in views]


def _best_correlation(a: tuple[list[np.ndarray], list[float]], b: tuple[list[np.ndarray], list[float]]) -> float:
    """The largest correlation of one image's views with the other's first (unturned) view, both ways."""
    (va, na), (vb, nb) = a, b
    best = 0.0
    for views, norms, other, on in ((va, na, vb[0], nb[0]), (vb, nb, va[0], na[0])):
        for v, n in zip(views, norms):
            d = n * on
            if d > 0:
                best = max(best, float((v * other).sum()) / d)
    return best


def _detail_side(detail: float) -> int:
    return int(min(THUMB_SIDE, max(8, round(detail))))


def aligned_correlation(ta: np.ndarray, tb: np.ndarray, detail: float = THUMB_SIDE) -> float:
    """The largest Pearson correlation of one grey thumbnail's views (:func:`_thumb_views`) with the other
    thumbnail, both ways, compared at ``detail`` px (the effective side of the less detailed image,
    8–64): 1.0 for a copy turned, mirrored or centrally cropped like a view; ≈0.99 for a colour-shifted,
    grayscale, re-encoded or halved copy (bench/dup_semantic.py); 0 for a flat thumbnail."""
    side = _detail_side(detail)
    return _best_correlation(_centred_views(ta, side), _centred_views(tb, side))


def detail_confirmed(thumb: Callable[[int], np.ndarray | None], pairs: np.ndarray, threshold: float,
                     windows: list[tuple[int, int, int, int] | None] | None = None, *,
                     views: Callable[[int], np.ndarray | None] | None = None, coarse: bool = True) -> np.ndarray:
    """(m,) bool: each pair's :func:`detail_correlation` is at least ``threshold`` (unreadable thumbnails: False).

    ``windows``: per pair, a window ``(row, x, y, w)`` of one image that lines up with the other
    (:func:`matched_windows`) or None; ``coarse=False``: those windows alone (pairs already tried by
    the coarse search). ``views(i)``: image ``i``'s :func:`coarse_views` (:func:`cached_views`; one
    made here when not given).
    """
    views = views or cached_views(thumb)
    ok = np.zeros(len(pairs), dtype=bool)
    for r, (i, j) in enumerate(np.asarray(pairs, dtype=np.int64)):
        i, j = int(i), int(j)
        w = windows[r] if windows is not None else None
        if w is not None and w[0] == j:  # the window was cut from the second image: put it first
            i, j = j, i
        a, b = thumb(i), thumb(j)
        va, vb = (views(i), views(j)) if coarse else (None, None)
        ok[r] = a is not None and b is not None and detail_correlation(
            a, b, window=None if w is None else w[1:], views=(va, vb), enough=threshold, coarse=coarse) >= threshold
    return ok


def cached_views(thumb: Callable[[int], np.ndarray | None]) -> Callable[[int], np.ndarray | None]:
    """``views(i)``: :func:`coarse_views` of ``thumb(i)`` (None when unreadable), kept for the last 4,096
    images (95 KB each: ~0.4 GB at most)."""
    from functools import lru_cache

    @lru_cache(maxsize=4096)
    def views(i: int) -> np.ndarray | None:
        t = thumb(i)
        return None if t is None else coarse_views(t)

    return views


def pixel_confirmed(thumb: Callable[[int], np.ndarray | None], pairs: np.ndarray, detail: np.ndarray,
                    threshold: float) -> np.ndarray:
    """(m,) bool: each pair's :func:`aligned_correlation` at its ``detail`` (px) is at least ``threshold``
    (unreadable thumbnails: False).

    An image's views at a side are made once per call (kept for the last 2,048 image × side: at most
    ~270 MB at 64 px, ~4 MB at the 8–16 px of small images), not once per pair: a digit in 4 candidate
    pairs was resized 4 × 22 times.
    """
    from functools import lru_cache

    @lru_cache(maxsize=2048)
    def views(i: int, side: int) -> tuple[list[np.ndarray], list[float]] | None:
        t = thumb(i)
        return None if t is None else _centred_views(t, side)

    ok = np.zeros(len(pairs), dtype=bool)
    for r, (i, j) in enumerate(np.asarray(pairs, dtype=np.int64)):
        side = _detail_side(float(detail[r]))
        a, b = views(int(i), side), views(int(j), side)
        ok[r] = a is not None and b is not None and _best_correlation(a, b) >= threshold
    return ok


def near_links(full: np.ndarray, usable: np.ndarray, settings: DedupSettings, *, views: np.ndarray | None = None,
               eff_side: np.ndarray | None = None, emb: np.ndarray | None = None, has_emb: np.ndarray | None = None,
               thumb: Callable[[int], np.ndarray | None] | None = None, key: np.ndarray | None = None) -> Links:
    """Confirmed near-duplicate links of n images by the two rules of the module docstring.

    ``full``: (n,) uint64 phashes; ``usable``: (n,) bool, rows whose hash is evidence (not
    degenerate); ``views``: (n, 7) uint64 or None; ``eff_side``: (n,) px (NaN: unknown, counted
    as detailed); ``emb``: (n, dim) unit rows or None (no embeddings: rule 1 without
    confirmation, no rule 2); ``has_emb``: (n,) bool, rows with a real embedding (others are
    never confirmed by embedding nor searched); ``thumb``: thumbnail loader for rule 1's pixel
    confirmation and rule 2's window check (None: both off); ``key``: (n,) a sortable key of each row's
    content (the blob's sha256): the pixel checks are not symmetric (one image's box is refined on the
    other), so each pair is checked lower key first — the same links whatever order the rows come in (a
    resumed build sees its images in another order than a fresh one).
    """
    n = len(full)
    cand = hash_candidates(full, views, usable, settings)
    by_emb = _EMPTY
    neighbours = search = None
    if emb is not None:
        has = np.ones(n, dtype=bool) if has_emb is None else np.asarray(has_emb, dtype=bool)
        side = np.nan_to_num(np.asarray(eff_side if eff_side is not None else np.full(n, np.nan), dtype=np.float64),
                             nan=np.inf)
        need = np.array([settings.confirm_for(s) for s in side])
        if len(cand):
            # Images detailed enough for the detail check: it alone decides (a layout shared is not a copy; a copy
            # keeps its detail, wherever its embedding moved). Others: the embeddings, then aligned pixels.
            checked = _detailed(cand, side, settings) if thumb is not None else np.zeros(len(cand), dtype=bool)
            sims = pair_similarity(emb, cand)
            ok = has[cand[:, 0]] & has[cand[:, 1]] & (np.round(sims, 4) >= np.maximum(need[cand[:, 0]], need[cand[:, 1]]))
            if thumb is not None:  # not confirmed by the embeddings: detailed enough images whose pixels line up
                detail = np.minimum(side[cand[:, 0]], side[cand[:, 1]])
                pixels = ~ok & ~checked & (detail >= settings.pixel_confirm_side)
                if pixels.any():
                    ok[pixels] = pixel_confirmed(thumb, cand[pixels], detail[pixels], settings.pixel_confirm)
            if checked.any():
                ok[checked] = _share_detail(thumb, _oriented(cand[checked], key), settings.detail_confirm)
            cand = cand[ok]
        if thumb is not None and has.sum() >= 2:
            rows = np.flatnonzero(has)
            first: list = []
            # as wide as the outlier scores need, and OUTLIER_SPARE more (a row whose list holds more duplicates
            # left out of the scores is searched again)
            kp, ks = embedding_pairs(emb[rows], settings.similarity, NEIGHBOURS, first=first,
                                     first_k=max(settings.outlier_k + OUTLIER_SPARE, NEIGHBOURS + NEIGHBOUR_SPARE))
            if first:
                sims, ids, index = first[0]
                width = NEIGHBOURS + NEIGHBOUR_SPARE + 1
                neighbours = _neighbour_rows((sims[:, :width], ids[:, :width]), rows, n)
                search = KnnSearch(emb=emb, rows=rows, ids=np.where(ids >= 0, rows[np.clip(ids, 0, None)], -1),
                                   sims=sims, index=index)
            if len(kp):
                kp = rows[kp]
                keep = np.round(ks, 4) >= np.maximum(need[kp[:, 0]], need[kp[:, 1]])
                kp = kp[keep]
            if first and settings.detail_similarity < settings.similarity:
                kp = _canonical(np.concatenate([kp.reshape(-1, 2), _near_detailed(first[0][:2], rows, side, settings)]))
            if len(kp):
                by_emb = _canonical(_pixels_line_up(_oriented(kp, key), side, thumb, settings))
    pairs = _canonical(np.concatenate([cand, by_emb]))
    f = np.asarray(full, dtype=np.uint64)
    dist = np.bitwise_count(f[pairs[:, 0]] ^ f[pairs[:, 1]]).astype(np.int64)
    if views is not None and settings.views and len(pairs):
        for k in range(views.shape[1]):
            for x, y in ((0, 1), (1, 0)):
                dist = np.minimum(dist, np.bitwise_count(views[pairs[:, x], k] ^ f[pairs[:, y]]).astype(np.int64))
    if len(pairs):
        dist = np.where(usable[pairs[:, 0]] & usable[pairs[:, 1]], dist, 64)

    def member(sub: np.ndarray) -> np.ndarray:
        if len(sub) == 0 or len(pairs) == 0:
            return np.zeros(len(pairs), dtype=bool)
        return np.isin(pairs[:, 0] * n + pairs[:, 1], sub[:, 0] * n + sub[:, 1])

    sim = pair_similarity(emb, pairs) if emb is not None else np.full(len(pairs), np.nan, dtype=np.float32)
    return Links(i=pairs[:, 0], j=pairs[:, 1], distance=dist, similarity=sim, by_hash=member(cand),
                 by_embedding=member(by_emb), neighbours=neighbours, search=search)


DETAIL_RANKS = 1
"""The nearest neighbour of an image (rank 1) is detail-checked from ``detail_similarity`` up."""


def _near_detailed(found: tuple[np.ndarray, np.ndarray], rows: np.ndarray, side: np.ndarray,
                   settings: DedupSettings) -> np.ndarray:
    """Pairs (item rows) of each searched row and its :data:`DETAIL_RANKS` nearest others whose cosine is at least
    ``detail_similarity`` and that both hold ≥ ``detail_confirm_side`` px of detail (the detail check decides)."""
    if settings.detail_confirm <= 0:
        return _EMPTY.copy()
    sims, ids = found
    q = np.repeat(np.arange(len(ids)), ids.shape[1]).reshape(ids.shape)
    rank = np.cumsum((ids >= 0) & (ids != q), axis=1)  # 1 for the nearest other row
    keep = (ids >= 0) & (ids != q) & (rank <= DETAIL_RANKS) & (np.round(sims, 4) >= settings.detail_similarity)
    a, b = rows[q[keep]], rows[ids[keep]]
    ok = np.minimum(side[a], side[b]) >= settings.detail_confirm_side
    return np.column_stack([a[ok], b[ok]]).astype(np.int64)


def _detailed(pairs: np.ndarray, side: np.ndarray, settings: DedupSettings) -> np.ndarray:
    """(m,) bool: both images of the pair hold ≥ ``detail_confirm_side`` px of detail and the check is on."""
    if settings.detail_confirm <= 0 or len(pairs) == 0:
        return np.zeros(len(pairs), dtype=bool)
    return np.minimum(side[pairs[:, 0]], side[pairs[:, 1]]) >= settings.detail_confirm_side


def _oriented(pairs: np.ndarray, key: np.ndarray | None) -> np.ndarray:
    """``pairs`` (m, 2), each turned so that its lower ``key`` comes first (ties and ``key`` None: as given)."""
    if key is None or len(pairs) == 0:
        return pairs
    swap = key[pairs[:, 0]] > key[pairs[:, 1]]
    return np.where(swap[:, None], pairs[:, ::-1], pairs)


def _share_detail(thumb: Callable[[int], np.ndarray | None], pairs: np.ndarray, threshold: float) -> np.ndarray:
    """(m,) bool: :func:`detail_confirmed` lined up by a view; pairs that fail are tried again lined up by the
    window of one that hashes like the other (:func:`matched_windows`: a crop the views did not guess)."""
    views = cached_views(thumb)
    ok = detail_confirmed(thumb, pairs, threshold, views=views)
    retry = np.flatnonzero(~ok)
    if len(retry):
        found = matched_windows(thumb, pairs[retry])
        has = np.array([w is not None for w in found], dtype=bool)
        if has.any():
            ok[retry[has]] = detail_confirmed(thumb, pairs[retry[has]], threshold, [w for w in found if w is not None],
                                              views=views, coarse=False)
    return ok


def _pixels_line_up(pairs: np.ndarray, side: np.ndarray, thumb: Callable[[int], np.ndarray | None],
                    settings: DedupSettings) -> np.ndarray:
    """Embedding neighbours whose pixels line up: detailed pairs share their fine detail lined up by a view
    and a crop box (:func:`dsbuild.dedup.align.alignments`) or by the window of one that hashes like the other; other pairs need
    that window (:func:`matched_windows`)."""
    if len(pairs) == 0:
        return pairs
    checked = _detailed(pairs, side, settings)
    ok = np.zeros(len(pairs), dtype=bool)
    if checked.any():
        ok[checked] = _share_detail(thumb, pairs[checked], settings.detail_confirm)
    if (~checked).any():
        ok[~checked] = window_match(thumb, pairs[~checked])
    return pairs[ok]


def nearest_neighbours(emb: np.ndarray, has: np.ndarray, k: int = NEIGHBOURS + NEIGHBOUR_SPARE
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's ``k`` nearest other rows among those with ``has`` (n,) bool, by cosine of ``emb`` (n, dim) unit
    rows: ``(ids, sims)`` (n, k) in rows of ``emb`` (−1 / NaN where none), as :class:`Links` ``neighbours`` — the
    ``neighbours`` view's rows when no near-duplicate search ran (``dedup.semantic = false``); None for < 2 rows."""
    rows = np.flatnonzero(np.asarray(has, dtype=bool))
    if len(rows) < 2:
        return None
    sims, ids = knn(emb[rows], k + 1, ef=max(64, 2 * (k + 1)))
    return _neighbour_rows((sims, ids), rows, len(emb))


def _neighbour_rows(found: tuple[np.ndarray, np.ndarray], rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A kNN result over ``emb[rows]`` (self included) → ``(ids, sims)`` (n, k) in item rows, self left out."""
    sims, ids = found
    k = max(ids.shape[1] - 1, 0)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_sims = np.full((n, k), np.nan, dtype=np.float32)
    for q, r in enumerate(rows):
        keep = (ids[q] >= 0) & (ids[q] != q)
        nb, sv = rows[ids[q][keep]][:k], sims[q][keep][:k]
        out_ids[r, :len(nb)], out_sims[r, :len(nb)] = nb, sv
    return out_ids, out_sims


def similar(emb: np.ndarray, query: np.ndarray, k: int = 20, *, exclude: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``emb`` (n, dim) most similar to ``query`` (dim,): ``(rows, cosines)``, best first.

    Exact: one matrix-vector product (100k × 1280 in ~20 ms). ``exclude``: (n,) bool rows to
    leave out (the query image itself). Ties go to the lower row.
    """
    s = np.asarray(emb, dtype=np.float32) @ np.asarray(query, dtype=np.float32)
    if exclude is not None:
        s[np.asarray(exclude, dtype=bool)] = -np.inf
    k = min(int(k), int(np.isfinite(s).sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    top = np.argpartition(-s, k - 1)[:k]
    top = top[np.lexsort((top, -s[top]))]
    return top, s[top]
