"""Lining up two grey thumbnails (64 × 64, :func:`dsbuild.dedup.neardup.thumbnail`) and comparing their fine detail.

A copy keeps its picture's fine detail however it was re-encoded, resized, colour-shifted,
mirrored, rotated or cropped; two pictures that only share a layout (a stereo pair, the mirrored
quadrants of a round object) do not, though their hashes and embeddings may be as near as a copy's.
:func:`alignments` finds how one thumbnail sits on the other (a dihedral op, then a square crop box
anywhere, refined to ~½ px); :func:`detail_correlation` compares what is left of each after a
Gaussian blur is taken away. Used by :func:`dsbuild.dedup.neardup.near_links` for the
``detail_confirm`` check, measured by bench/dup_semantic.py.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DIHEDRAL_OPS = {"hflip": np.fliplr, "rot90": lambda a: np.rot90(a, 1), "rot180": lambda a: np.rot90(a, 2),
                "rot270": lambda a: np.rot90(a, 3)}
"""A square pixel array mirrored or turned (named as :data:`dsbuild.dedup.neardup.DIHEDRAL`): the ops of the
phash views, of the pixel confirmation and of :func:`alignments`."""


ALIGN_COARSE = (0.6, 0.7, 0.8, 0.9, 1.0)
"""Crop shares (of each side) tried first by :func:`alignments`, then refined."""
DETAIL_SIGMA = 3.0
"""Gaussian σ (px of the 64-px thumbnail) removed before the detail correlation: what is left is fine detail."""


FLAT_STD = 1e-3
"""Grey levels: a part whose std is below this is flat (float resampling leaves ~1e-5 of ripple on a flat image)."""


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    aa, bb = float((a * a).sum()), float((b * b).sum())
    floor = a.size * FLAT_STD ** 2
    return float((a * b).sum()) / float(np.sqrt(aa * bb)) if aa > floor and bb > floor else 0.0


ALIGN_SIDE = 16
"""Side (px) at which :func:`coarse_views` are compared: the coarse search, before the 64-px refinement."""
ALIGN_POSITIONS = 3
"""Crop positions per axis in the coarse search (start, middle, end of the free space): 9 boxes per share."""
SURE_ALIGNMENT = 0.95
"""A refined alignment correlating this well is kept without trying the next coarse start."""
_OPS = (np.asarray, *DIHEDRAL_OPS.values())


def _coarse_boxes(side: int) -> list[tuple[float, float, float]]:
    """The crop boxes ``(x, y, w)`` of :func:`coarse_views`: every :data:`ALIGN_COARSE` share at
    :data:`ALIGN_POSITIONS` × :data:`ALIGN_POSITIONS` positions (the whole thumbnail last)."""
    out = []
    for keep in ALIGN_COARSE:
        w = side * keep
        free = side - w
        steps = [free * k / (ALIGN_POSITIONS - 1) for k in range(ALIGN_POSITIONS)] if free > 0 else [0.0]
        out.extend((x, y, w) for y in steps for x in steps)
    return out


_WHOLE = len(_coarse_boxes(64)) - 1  # the row of coarse_views that is the thumbnail itself (no op, whole)


def coarse_views(t: np.ndarray) -> np.ndarray:
    """(5 × boxes, :data:`ALIGN_SIDE`²) float16: ``t`` turned by no op and each of :data:`DIHEDRAL_OPS`,
    cut to each of :func:`_coarse_boxes` (4 shares × 9 positions + the whole), box-filtered to
    :data:`ALIGN_SIDE` px (:func:`resample_weights`), centred and scaled to unit length (zero rows for a flat
    thumbnail) — one matrix product gives every correlation with another image's whole. Computed once per
    image: ~1 ms, 95 KB."""
    side = t.shape[0]
    wy, wx = _box_weights(side)
    turned = np.stack([np.asarray(op(t), dtype=np.float32) for op in _OPS])  # (ops, side, side)
    v = (wy[None] @ turned[:, None] @ wx.transpose(0, 2, 1)[None]).reshape(len(_OPS) * len(wy), -1)
    v = v - v.mean(axis=1, keepdims=True)
    n = np.sqrt((v * v).sum(axis=1, keepdims=True))
    v = np.where(n > np.sqrt(v.shape[1]) * FLAT_STD, v / np.where(n > 0, n, 1.0), 0.0)
    return v.astype(np.float16)


@lru_cache(maxsize=8)
def _box_weights(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, ALIGN_SIDE, side) row and column weights of :func:`coarse_views`' boxes."""
    boxes = _coarse_boxes(side)
    wy = np.stack([resample_weights(y, y + w, side, ALIGN_SIDE, "box") for x, y, w in boxes])
    wx = np.stack([resample_weights(x, x + w, side, ALIGN_SIDE, "box") for x, y, w in boxes])
    return wy, wx


def alignments(ta: np.ndarray, tb: np.ndarray, *, views: tuple[np.ndarray, np.ndarray] | None = None,
               window: tuple[float, float, float] | None = None, starts: int = 2, coarse: bool = True):
    """Ways to line up two grey thumbnails, best guess first: yields ``(a, b)``, the parts of one turned by a
    dihedral op (:data:`DIHEDRAL_OPS` or none) and cut to a square box, and of the other, that cover
    each other, on one grid (float32).

    Coarse: every op × box of :func:`_coarse_boxes` (shares 0.6–1.0 at 3 × 3 positions), both
    ways, at :data:`ALIGN_SIDE` px (370 correlations from :func:`coarse_views`, passed as
    ``views`` when cached). Each of the ``starts`` best boxes is yielded as it is, then moved and
    resized at full size (:func:`refine_box`); the next start is tried only when the refined
    box correlates below :data:`SURE_ALIGNMENT`. ``window``: ``(x, y, w)``, a box of ``ta`` known
    to line up with ``tb`` (:func:`matched_windows`), tried last the same way; ``coarse=False``: the
    window alone (the coarse starts were tried before). A copy cropped to any share in ~0.55–1.0,
    anywhere, or two crops of one photo that overlap, line up to ~½ px.
    """
    tries = []
    if coarse:
        tries = _coarse_starts(ta, tb, views, starts)
    if window is not None:
        tries.append((ta, tb.astype(np.float32), tuple(float(c) for c in window)))
    for n, (xo, yf, box) in enumerate(tries):
        yield _cut(xo, yf, box)
        r, a, b = refine_box(xo, yf, box)
        yield a, b
        if r >= SURE_ALIGNMENT and coarse and n < starts:  # sure: skip the other coarse start (not a given window)
            tries[n + 1:starts] = []


def _coarse_starts(ta: np.ndarray, tb: np.ndarray, views: tuple[np.ndarray, np.ndarray] | None, starts: int
                   ) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """The ``starts`` best ``(thumbnail turned, other as float32, box)`` of the coarse search of :func:`alignments`."""
    va, vb = views if views is not None else (coarse_views(ta), coarse_views(tb))
    scores = np.concatenate([va.astype(np.float32) @ vb[_WHOLE].astype(np.float32),
                             vb.astype(np.float32) @ va[_WHOLE].astype(np.float32)])
    per = len(va)
    boxes = _coarse_boxes(ta.shape[0])
    tries = []
    for k in np.argsort(-scores, kind="stable")[:starts]:
        x, y = (ta, tb) if k < per else (tb, ta)
        k = int(k % per)
        tries.append((np.ascontiguousarray(_OPS[k // len(boxes)](x)), y.astype(np.float32), boxes[k % len(boxes)]))
    return tries


OVERHANG = 0.15
"""How far (share of its side) :func:`refine_box`'s box may reach past the thumbnail: two crops of one photo
that each keep a part the other lost (an off-centre crop beside a central one) are compared where they overlap."""


@lru_cache(maxsize=4096)  # refinement boxes lie on a lattice (coarse boxes + ½-px steps): most are seen again
def resample_weights(in0: float, in1: float, size: int, out: int, kernel: str = "lanczos") -> np.ndarray:
    """(out, size) float32: Pillow's resampling weights (its ``precompute_coeffs``: the kernel widened by the
    scale when shrinking, each row normalised) that take the segment [in0, in1] (px) of a ``size``-px axis
    onto ``out`` px; ``kernel`` "lanczos" (a = 3) or "box". ``W_y @ image @ W_x.T`` equals Pillow's
    mode-F ``resize(box=…)`` to ~1e-3 grey levels, at ~1/5 of its cost once the weights are cached (16 KB
    each for 64 px)."""
    scale = (in1 - in0) / out
    widen = max(scale, 1.0)
    support = (3.0 if kernel == "lanczos" else 0.5) * widen
    centre = in0 + (np.arange(out) + 0.5) * scale
    lo = np.maximum(np.trunc(centre - support + 0.5), 0.0)[:, None]
    hi = np.minimum(np.trunc(centre + support + 0.5), size)[:, None]
    x = np.arange(size)[None, :]
    u = (x - centre[:, None] + 0.5) / widen
    if kernel == "lanczos":
        w = np.sinc(u) * np.sinc(u / 3.0) * (np.abs(u) < 3.0)
    elif kernel == "box":
        w = ((u >= -0.5) & (u < 0.5)).astype(np.float64)
    else:
        raise ValueError(f"kernel must be 'lanczos' or 'box', not {kernel!r}")
    w = w * ((x >= lo) & (x < hi))
    total = w.sum(axis=1, keepdims=True)
    w = (w / np.where(total == 0, 1.0, total)).astype(np.float32)
    w.flags.writeable = False
    return w


def _resample(t: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The ``box`` ``(x0, y0, x1, y1)`` of the float32 image ``t`` resampled to ``size`` ``(w, h)`` (Lanczos)."""
    x0, y0, x1, y1 = box
    return resample_weights(y0, y1, t.shape[0], size[1]) @ t @ resample_weights(x0, x1, t.shape[1], size[0]).T


def _cut(t: np.ndarray, target: np.ndarray, box: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The square ``box`` = ``(x, y, w)`` of ``t`` (px, fractional allowed) laid over the whole of ``target``:
    the part of each that the other covers, resampled to one grid (:func:`resample_weights`), float32 — ``(a, b)``."""
    x, y, w = box
    t, target = t.astype(np.float32, copy=False), target.astype(np.float32, copy=False)
    side, tside = t.shape[0], target.shape[0]
    if x == 0 and y == 0 and w == side == tside:
        return t, target
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(side)), min(y + w, float(side))
    u0, v0, u1, v1 = ((x0 - x) / w * tside, (y0 - y) / w * tside, (x1 - x) / w * tside, (y1 - y) / w * tside)
    inside = x0 == x and y0 == y and x1 == x + w and y1 == y + w  # the box lies in t: it covers all of target
    size = (tside, tside) if inside else (max(8, round(u1 - u0)), max(8, round(v1 - v0)))
    a = _resample(t, (x0, y0, x1, y1), size)
    if inside:
        return a, target
    return a, _resample(target, (u0, v0, u1, v1), size)


REFINE_STEPS = (4.0, 2.0, 1.0, 0.5)
"""Steps (px of the 64-px thumbnail) of :func:`refine_box`'s search, coarse to fine."""


def refine_box(t: np.ndarray, target: np.ndarray, box: tuple[float, float, float], *, max_tries: int = 80
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """Move and resize the square ``box`` ``(x, y, w)`` of ``t`` (``w`` ≥ half its side, reaching past it by
    at most :data:`OVERHANG` of ``w``) to the best Pearson correlation with ``target`` where the two overlap
    (:func:`_cut`): coordinate ascent by :data:`REFINE_STEPS` over x, y and w (w about the box centre),
    at most ``max_tries`` cuts. ``(correlation, a, b)``: the overlapping parts, on one grid.
    A copy cropped anywhere within ~10 % of the starting box lines up to ~½ px."""
    side = float(t.shape[0])
    bx = tuple(float(c) for c in box)
    t, target = t.astype(np.float32, copy=False), target.astype(np.float32, copy=False)
    best_a, best_b = _cut(t, target, bx)
    best_r = _pearson(best_a, best_b)

    def fits(b: tuple[float, float, float]) -> bool:
        x, y, w = b
        o = OVERHANG * w
        return side / 2 <= w <= side * (1 + OVERHANG) and -o <= x and -o <= y and x + w <= side + o and y + w <= side + o

    tries = 0
    for step in REFINE_STEPS:
        moved = True
        while moved and tries < max_tries:
            moved = False
            x, y, w = bx
            for nb in ((x + step, y, w), (x - step, y, w), (x, y + step, w), (x, y - step, w),
                       (x - step / 2, y - step / 2, w + step), (x + step / 2, y + step / 2, w - step)):
                if not fits(nb):
                    continue
                tries += 1
                a, b = _cut(t, target, nb)
                r = _pearson(a, b)
                if r > best_r + 1e-6:
                    bx, best_r, best_a, best_b, moved = nb, r, a, b, True
                    break
    return best_r, best_a, best_b


def detail_correlation(ta: np.ndarray, tb: np.ndarray, sigma: float = DETAIL_SIGMA, *,
                       window: tuple[int, int, int] | None = None,
                       views: tuple[np.ndarray, np.ndarray] | None = None, enough: float | None = None,
                       coarse: bool = True) -> float:
    """Pearson correlation of the fine detail of two grey thumbnails lined up (:func:`alignments`; the best
    of those tried): each minus its Gaussian blur (``sigma`` px), over the whole overlap or, when that is lower,
    the median over its blocks (:func:`block_median`: a watermark spoils the whole, not most blocks). A copy — re-encoded, resized,
    colour-shifted, mirrored, rotated or cropped — keeps its detail (≥ 0.85 for 98 % of the hard
    set's copy pairs of ≥ 24 px, bench/dup_semantic.py); two pictures that share only their layout do
    not: scikit-image's stereo pair 0.57, the quadrants of its clock ≤ 0.69, fundus photo ≤ 0.79, brick
    wall ≤ 0.70, coins ≤ 0.36, gravel ≤ 0.11.
    0 for a flat thumbnail. ``window``: ``(x, y, w)``, a square of ``ta`` that lines up with the whole
    of ``tb`` (:func:`matched_windows`: an off-centre crop), tried as well; ``views``: both thumbnails'
    :func:`coarse_views`, when cached; ``enough``: stop at the first alignment that reaches it; ``coarse=False``:
    only the ``window`` (:func:`alignments`)."""
    from scipy.ndimage import gaussian_filter

    best = 0.0
    for a, b in alignments(ta, tb, views=views, window=window, coarse=coarse):
        da, db = a - gaussian_filter(a, sigma), b - gaussian_filter(b, sigma)
        best = max(best, _pearson(da, db))
        if best < (enough if enough is not None else 1.0):  # a caption or watermark over part of a copy
            best = max(best, block_median(da, db))
        if enough is not None and best >= enough:
            break
    return best


DETAIL_GRID = 4
"""Blocks per side of :func:`block_median`."""
DETAIL_MIN_BLOCKS = 8
"""Fewest blocks with detail on both sides for :func:`block_median` to speak (else 0)."""


def block_median(da: np.ndarray, db: np.ndarray, flat: float = 0.5) -> float:
    """Median over a :data:`DETAIL_GRID` × :data:`DETAIL_GRID` grid of the Pearson correlation of two lined-up
    detail images, over the blocks whose detail (std) exceeds ``flat`` on both sides; 0 with fewer than
    :data:`DETAIL_MIN_BLOCKS` such blocks. A watermark or caption over part of a copy spoils the whole
    image's correlation, not most blocks'."""
    h, w = da.shape
    bh, bw = h // DETAIL_GRID, w // DETAIL_GRID
    if bh < 4 or bw < 4:
        return 0.0
    g = DETAIL_GRID

    def blocks(d: np.ndarray) -> np.ndarray:  # (g², bh·bw): block y·g + x in row-major order
        return d[:g * bh, :g * bw].reshape(g, bh, g, bw).transpose(0, 2, 1, 3).reshape(g * g, bh * bw)

    a_, b_ = blocks(da), blocks(db)
    keep = (a_.std(axis=1) > flat) & (b_.std(axis=1) > flat)
    if int(keep.sum()) < DETAIL_MIN_BLOCKS:
        return 0.0
    a_ = a_[keep] - a_[keep].mean(axis=1, keepdims=True)
    b_ = b_[keep] - b_[keep].mean(axis=1, keepdims=True)
    d = np.sqrt((a_ * a_).sum(axis=1) * (b_ * b_).sum(axis=1))
    rs = np.divide((a_ * b_).sum(axis=1), d, out=np.zeros(len(d), dtype=np.float64), where=d > 0)
    return float(np.median(rs))


__all__ = ["ALIGN_COARSE", "DETAIL_SIGMA", "DIHEDRAL_OPS", "alignments", "block_median", "coarse_views", "detail_correlation",
           "refine_box", "resample_weights"]
