"""Near-duplicate search over perceptual hashes, and grouping.

:func:`find_pairs` returns every pair of hashes within a Hamming distance —
exactly the pairs brute force returns — without comparing all n²/2 pairs. It is
multi-index hashing (Norouzi et al., "Fast search in Hamming space with
multi-index hashing", CVPR 2012) with the flexible pigeonhole principle (Qin et
al., "GPH", ICDE 2018): the hash bits are cut into ``m`` blocks with radii
``r_k`` such that ``sum(r_k + 1) = t + 1``; two hashes within distance ``t``
then differ in at most ``r_k`` bits of some block ``k``. For each block, the
items are bucketed by their block value; each item probes the buckets of its
block value with every flip pattern of at most ``r_k`` bits, and every
candidate is verified with a full popcount. A pair found through block ``k`` is
kept only if no earlier block would have found it, so each pair comes out once.
The plan (``m`` and the radii, or plain brute force for small inputs) is chosen
from a cost model; see :func:`plan`.

Everything is vectorised numpy: probes go in batches of flip patterns; a
direct-address bucket table is used for blocks up to 22 bits, sorted keys with
``searchsorted`` above. Memory stays O(n + batch).

Pairs become groups with :func:`group` (connected components, i.e. union-find)
and each group keeps one representative with :func:`choose_representatives`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import comb

import numpy as np

DEFAULT_THRESHOLD = 10
"""Largest Hamming distance between 64-bit phashes that makes two images near duplicates.

Measured with bench/dup_quality.py on planted copies of real photos (1,258 files:
20 photos and 80 quadrants of them as hard negatives, each with 12 copies — JPEG
q 90…30, PNG↔JPEG, resize 50 %/150 %, 5 % crop, brightness ±20 %, watermark text —
plus solid and near-blank images; 7,488 true pairs, 783,165 negative pairs),
hashed through the build's own draft-mode decode:

=========  =========  ======  =========================================
threshold  precision  recall  note
=========  =========  ======  =========================================
6          1.000      0.915   5 % crops: 59 % found
8          1.000      0.954   5 % crops: 83 %, watermarks: 90 %
10         1.000      0.974   5 % crops: 90 %, watermarks: 94 % (0.979 after grouping)
12         1.000      0.985
14         0.981      0.992   first different pictures pair up
=========  =========  ======  =========================================

10 is the smallest threshold with recall ≥ 0.95 and a margin (8 scrapes by at
0.954), and it leaves 4 bits to the closest pair of different pictures. It is also
imagededup's default. phashes have 32 bits set, so their distances are even: 10 and
11 are the same setting. Cost: a million random hashes in 25–30 s at 10 (6–8 s at
8) on this shared 2-core machine (bench/near_dups.py).
"""

_DIRECT_BITS = 22  # direct-address bucket tables up to 2**22 buckets (4 MiB of flags + 32 MiB of starts)
_BATCH_ELEMS = 1 << 21  # probe elements per numpy batch: bounds peak memory to ~100 MiB
_EMPTY = np.zeros((0, 3), dtype=np.int64)


@dataclass(frozen=True)
class Block:
    """One block of the multi-index: bits ``[start, start + width)`` searched within ``radius`` flips."""

    start: int
    width: int
    radius: int

    @property
    def volume(self) -> int:
        """Flip patterns probed per item: the Hamming ball of radius ``radius`` in ``width`` bits."""
        return sum(comb(self.width, k) for k in range(self.radius + 1))


@dataclass(frozen=True)
class Plan:
    """How a search runs: brute force, or multi-index hashing over ``blocks``; ``cost`` is the model's estimate (ns)."""

    blocks: tuple[Block, ...]
    cost: float
    brute_force: bool = False


# Cost model constants, ns, measured on this machine with numpy 2.x (/tmp calibration
# runs of every plan at n = 2k…1M; bench/near_dups.py prints the plan taken). Only
# their ratios matter: they decide between plans, never whether the result is exact.
_NS_PROBE = 10.0  # one item × one flip pattern: xor, bucket-flag gather, nonzero
_NS_CANDIDATE = 15.0  # one candidate pair: gathers, xor, popcount, compare
_NS_BRUTE = 12.0  # one pair × one 64-bit word in the chunked brute force
_NS_SORT = 300.0  # one item per block: key extraction, argsort, bucket table
_NS_CALL = 50_000.0  # one numpy round (a batch of flip patterns): fixed overhead


def split_widths(nbits: int, m: int) -> list[int]:
    """Widths of ``m`` blocks covering ``nbits`` bits, as equal as possible, widest first."""
    base, extra = divmod(nbits, m)
    return [base + 1] * extra + [base] * (m - extra)


def plan(nbits: int, threshold: int, n_probe: int, n_pairs: float, *, max_blocks: int | None = None) -> Plan:
    """Choose the cheapest exact search for ``n_pairs`` comparisons among ``nbits``-bit hashes.

    ``n_probe`` is the number of items that probe (n/2 per flip pattern in a
    self-join, the smaller side in a join of two sets); ``n_pairs`` is n(n-1)/2 or
    n_a·n_b. Multi-index plans with ``m`` blocks (``m`` ≤ ``threshold + 1``) give
    the widest blocks the largest radii, with ``sum(radius + 1) == threshold + 1``.
    """
    words = (nbits + 63) // 64
    best = Plan(blocks=(), cost=_NS_BRUTE * n_pairs * words, brute_force=True)
    max_blocks = max_blocks or max(8, nbits // 12)  # blocks narrower than ~12 bits filter too little
    for m in range(1, min(threshold + 1, max_blocks, nbits) + 1):
        widths = split_widths(nbits, m)
        if max(widths) > 64:
            continue
        base, extra = divmod(threshold + 1 - m, m)
        radii = [base + 1] * extra + [base] * (m - extra)  # widths are sorted widest first
        blocks, start = [], 0
        for w, r in zip(widths, radii):
            blocks.append(Block(start=start, width=w, radius=r))
            start += w
        cost = 0.0
        for b in blocks:
            probe = _NS_PROBE * (1.0 if b.width <= _DIRECT_BITS else 5.0)
            rounds = b.width + b.volume * max(n_probe, 1) / _BATCH_ELEMS
            cost += (_NS_SORT * 2 * max(n_probe, 1) + _NS_CALL * rounds
                     + b.volume * (probe * n_probe + _NS_CANDIDATE * n_pairs / 2.0**b.width))
        if cost < best.cost:
            best = Plan(blocks=tuple(blocks), cost=cost)
    return best


def _as_words(hashes) -> np.ndarray:
    arr = np.asarray(hashes)
    if arr.dtype != np.uint64:
        if arr.dtype.kind in "iu" and arr.size and (arr.min() < 0):
            raise ValueError("hashes must be non-negative 64-bit values (dtype uint64)")
        arr = arr.astype(np.uint64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"hashes must have shape (n,) or (n, words), not {arr.shape}")
    return np.ascontiguousarray(arr)


def _extract(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits ``[start, start+width)`` (bit 0 = most significant bit of word 0) as uint64 values."""
    w0, off = divmod(start, 64)
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    end = off + width
    if end <= 64:
        return (words[:, w0] >> np.uint64(64 - end)) & mask
    spill = end - 64  # the block straddles two words
    hi = words[:, w0] << np.uint64(spill)
    lo = words[:, w0 + 1] >> np.uint64(64 - spill)
    return (hi | lo) & mask


if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a hardware popcount per element
    _popcount = np.bitwise_count
else:  # pragma: no cover - numpy 1.x: byte lookup table
    _BYTE_POP = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)

    def _popcount(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.uint64)
        return _BYTE_POP[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _distance(words_a: np.ndarray, words_b: np.ndarray) -> np.ndarray:
    d = _popcount(words_a[:, 0] ^ words_b[:, 0]).astype(np.int64)
    for w in range(1, words_a.shape[1]):
        d += _popcount(words_a[:, w] ^ words_b[:, w])
    return d


def _flip_masks(width: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """All non-zero flip patterns of at most ``radius`` bits in ``width`` bits (uint64), and each one's highest bit."""
    out, high = [], []
    for k in range(1, radius + 1):
        for bits in itertools.combinations(range(width), k):
            out.append(sum(1 << b for b in bits))
            high.append(bits[-1])
    return np.array(out, dtype=np.uint64), np.array(high, dtype=np.int64)


class _Table:
    """Items of one side bucketed by one block's value.

    Blocks up to ``_DIRECT_BITS`` bits use a direct-address table (a byte per
    bucket saying "non-empty", so most probes touch only a few MiB, and bucket
    starts); wider blocks use sorted keys and ``searchsorted``. ``sorted_words``
    holds the items' hashes in bucket order, so verifying the candidates of one
    bucket reads contiguous memory.
    """

    def __init__(self, keys: np.ndarray, width: int, words: np.ndarray) -> None:
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]
        self.sorted_words = words[self.order]
        self.direct = width <= _DIRECT_BITS
        if self.direct:
            counts = np.bincount(keys.astype(np.intp), minlength=1 << width)
            # One bool per bucket: the probe's first gather touches 4 MiB at most, and
            # flatnonzero is 3-4x faster on bool than on integer arrays.
            self.nonempty = counts > 0
            self.starts = np.zeros((1 << width) + 1, dtype=np.int64)
            np.cumsum(counts, out=self.starts[1:])

    def run_end(self, keys: np.ndarray) -> np.ndarray:
        """Sorted position just past each key's bucket."""
        if self.direct:
            return self.starts[keys.astype(np.intp) + 1]
        return np.searchsorted(self.sorted, keys, side="right")

    def probe(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index into ``q``, first sorted position, count) for each query key whose bucket is non-empty."""
        if self.direct:
            nz = np.flatnonzero(self.nonempty[q])
            qn = q[nz]
            lo = self.starts[qn]
            return nz, lo, self.starts[qn + 1] - lo
        lo = np.searchsorted(self.sorted, q, side="left")
        cnt = np.searchsorted(self.sorted, q, side="right") - lo
        nz = np.flatnonzero(cnt)
        return nz, lo[nz], cnt[nz]


def _expand(src: np.ndarray, lo: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (src, [lo, lo+cnt)) emit (src, pos) for every pos in the range (cnt >= 0)."""
    total = int(cnt.sum())
    ends = np.cumsum(cnt)
    pos = np.arange(total, dtype=np.int64) - np.repeat(ends - cnt - lo, cnt)
    return np.repeat(src, cnt), pos


def _rounds(src: np.ndarray, lo: np.ndarray, cnt: np.ndarray):
    """Yield (src, pos) candidate arrays: the r-th member of every bucket with more than r members, r = 0, 1, ...

    Buckets are small (a fraction of an item on average), so round 0 — one
    candidate per non-empty bucket, no expansion — carries most of the work.
    """
    yield src, lo
    r = 1
    while True:
        more = np.flatnonzero(cnt > r)
        if len(more) == 0:
            return
        if r >= 8:  # a crowded bucket (many equal block values): expand it in one go
            s, p = _expand(src[more], lo[more] + r, cnt[more] - r)
            yield s, p
            return
        src, lo, cnt = src[more], lo[more], cnt[more]
        yield src, lo + r
        r += 1


class _PairVerifier:
    """Keeps candidate pairs within ``threshold`` not already found through an earlier block."""

    def __init__(self, keys_a, keys_b, blocks, threshold) -> None:
        self.keys_a, self.keys_b = keys_a, keys_b
        self.blocks, self.threshold = blocks, threshold
        self.out: list[np.ndarray] = []

    def add(self, k: int, a_words: np.ndarray, a_items: np.ndarray, src: np.ndarray, pos: np.ndarray, table: _Table) -> None:
        """Candidates ``(a_items[src], table item at sorted position pos)``; ``a_words`` are a's hashes, block ``k``."""
        if len(src) == 0:
            return
        d = _distance(a_words[src], table.sorted_words[pos])
        keep = np.flatnonzero(d <= self.threshold)
        if len(keep) == 0:
            return
        i, j, d = a_items[src[keep]], table.order[pos[keep]], d[keep]
        for e in range(k):  # found through block e already when within its radius there
            keep = _popcount(self.keys_a[e][i] ^ self.keys_b[e][j]) > self.blocks[e].radius
            i, j, d = i[keep], j[keep], d[keep]
        if len(i):
            self.out.append(np.column_stack([i, j, d]))

    def result(self) -> np.ndarray:
        return np.concatenate(self.out) if self.out else _EMPTY.copy()


def _keys(words: np.ndarray, blocks: tuple[Block, ...]) -> list[np.ndarray]:
    keys = [_extract(words, b.start, b.width) for b in blocks]
    # Direct-table keys are small: int64 indexes without conversion.
    return [k.astype(np.int64) if b.width <= _DIRECT_BITS else k for k, b in zip(keys, blocks)]


def _probe_batches(table: _Table, pkeys, pwords, pitems, masks: np.ndarray, k: int, ver: _PairVerifier) -> None:
    """Probe ``table`` with every item's key xor every mask, in batches.

    The probing items come sorted by key: ``key ^ mask`` then runs through the
    bucket table in long increasing stretches, so the random-looking gathers are
    mostly cache hits (this ordering alone halves the run time at a million items).
    """
    n_p = len(pkeys)
    if n_p == 0 or len(masks) == 0:
        return
    masks = masks.astype(pkeys.dtype)
    step = max(1, _BATCH_ELEMS // n_p)
    for s in range(0, len(masks), step):
        batch = masks[s : s + step]
        if len(batch) == 1:  # large inputs: one mask per round, no index arithmetic
            nz, lo, cnt = table.probe(pkeys ^ batch[0])
        else:
            nz, lo, cnt = table.probe((pkeys[None, :] ^ batch[:, None]).ravel())
            nz %= n_p
        for src, pos in _rounds(nz, lo, cnt):
            ver.add(k, pwords, pitems, src, pos, table)


def mih_self_pairs(words: np.ndarray, threshold: int, blocks: tuple[Block, ...]) -> np.ndarray:
    """Pairs ``(i, j, distance)``, ``i < j``, within ``threshold`` by multi-index hashing over ``blocks`` (unsorted).

    ``blocks`` must satisfy ``sum(radius + 1) == threshold + 1`` (see :func:`plan`); the
    result is exact for any such plan. :func:`find_pairs_words` picks the plan.
    """
    n = len(words)
    keys = _keys(words, blocks)
    ver = _PairVerifier(keys, keys, blocks, threshold)
    for k, b in enumerate(blocks):
        table = _Table(keys[k], b.width, words)
        sk = table.sorted
        # Flip pattern 0: pairs inside one bucket; each sorted position probes the rest of its run.
        after = np.arange(1, n + 1, dtype=np.int64)
        src, pos = _expand(after - 1, after, table.run_end(sk) - after)
        ver.add(k, table.sorted_words, table.order, src, pos, table)
        # Non-zero patterns v: key ^ v > key exactly when key's bit at v's highest set bit
        # is 0, so only those items probe and every unordered pair is met once.
        masks, high = _flip_masks(b.width, b.radius)
        for h in np.unique(high):
            p = np.flatnonzero(((sk >> sk.dtype.type(h)) & sk.dtype.type(1)) == 0)
            _probe_batches(table, sk[p], table.sorted_words[p], table.order[p], masks[high == h], k, ver)
    pairs = ver.result()
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        pairs = np.column_stack([np.minimum(i, j), np.maximum(i, j), pairs[:, 2]])
    return pairs


def _cross_mih(probe_words, table_words, threshold, blocks) -> np.ndarray:
    """Pairs (index into probe_words, index into table_words, distance)."""
    keys_p = _keys(probe_words, blocks)
    keys_t = _keys(table_words, blocks)
    ver = _PairVerifier(keys_p, keys_t, blocks, threshold)
    for k, b in enumerate(blocks):
        table = _Table(keys_t[k], b.width, table_words)
        porder = np.argsort(keys_p[k], kind="stable")
        masks = np.concatenate([np.zeros(1, np.uint64), _flip_masks(b.width, b.radius)[0]])
        _probe_batches(table, keys_p[k][porder], probe_words[porder], porder, masks, k, ver)
    return ver.result()


def _self_brute(words: np.ndarray, threshold: int) -> np.ndarray:
    n = len(words)
    out = []
    rows = max(1, _BATCH_ELEMS // max(n, 1))
    for a in range(0, n, rows):
        b = min(n, a + rows)
        d = np.zeros((b - a, n - a), dtype=np.int32)  # rows a..b against columns a..n: the upper triangle
        for w in range(words.shape[1]):
            d += _popcount(words[a:b, w][:, None] ^ words[None, a:, w])
        ii, jj = np.nonzero(d <= threshold)
        keep = jj > ii
        ii, jj = ii[keep], jj[keep]
        out.append(np.column_stack([ii + a, jj + a, d[ii, jj]]).astype(np.int64))
    return np.concatenate(out) if out else _EMPTY.copy()


def _cross_brute(a_words: np.ndarray, b_words: np.ndarray, threshold: int) -> np.ndarray:
    out = []
    rows = max(1, _BATCH_ELEMS // max(len(b_words), 1))
    for a in range(0, len(a_words), rows):
        b = min(len(a_words), a + rows)
        d = np.zeros((b - a, len(b_words)), dtype=np.int64)
        for w in range(a_words.shape[1]):
            d += _popcount(a_words[a:b, w][:, None] ^ b_words[None, :, w])
        ii, jj = np.nonzero(d <= threshold)
        out.append(np.column_stack([ii + a, jj, d[ii, jj]]))
    return np.concatenate(out).astype(np.int64) if out else _EMPTY.copy()


def _equal_pairs(words: np.ndarray) -> np.ndarray:
    n = len(words)
    order = np.lexsort(words.T[::-1])
    rows = words[order]
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (rows[1:] != rows[:-1]).any(axis=1)
    run_id = np.cumsum(new_run) - 1
    run_end = np.flatnonzero(np.append(new_run[1:], True)) + 1  # sorted position past each run
    after = np.arange(1, n + 1, dtype=np.int64)
    src, pos = _expand(after - 1, after, run_end[run_id] - after)
    i, j = order[src], order[pos]
    return np.column_stack([np.minimum(i, j), np.maximum(i, j), np.zeros(len(i), dtype=np.int64)])


def sort_pairs(pairs: np.ndarray) -> np.ndarray:
    """``(k, 3)`` pair rows as int64, sorted by ``(i, j)`` (the order every search returns)."""
    if len(pairs) == 0:
        return _EMPTY.copy()
    pairs = pairs.astype(np.int64, copy=False)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _check_threshold(threshold: int, nbits: int) -> int:
    t = int(threshold)
    if t != threshold or t < 0:
        raise ValueError(f"threshold must be a non-negative integer, not {threshold!r}")
    return min(t, nbits)


def find_pairs_words(words: np.ndarray, threshold: int = DEFAULT_THRESHOLD, *, nbits: int | None = None) -> np.ndarray:
    """All pairs of hashes within ``threshold``; hashes as a ``uint64`` array (n,) or (n, words).

    ``nbits`` is the number of meaningful bits, left-aligned (default: 64 × words).
    Returns a ``(k, 3)`` int64 array of rows ``(i, j, distance)`` with ``i < j``,
    sorted by ``(i, j)`` — the same set brute force returns.
    """
    words = _as_words(words)
    n, nw = words.shape
    nbits = nbits or 64 * nw
    t = _check_threshold(threshold, nbits)
    if n < 2:
        return _EMPTY.copy()
    if t == 0:  # exact equality, any width: sort the rows and pair up runs
        return sort_pairs(_equal_pairs(words))
    p = plan(nbits, t, n // 2, n * (n - 1) / 2)
    pairs = _self_brute(words, t) if p.brute_force else mih_self_pairs(words, t, p.blocks)
    return sort_pairs(pairs)


def find_pairs(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> np.ndarray:
    """All pairs of 64-bit hashes within Hamming distance ``threshold`` (default :data:`DEFAULT_THRESHOLD`).

    ``hashes``: ``uint64`` array of shape (n,), e.g. from
    :func:`dsbuild.verify.hashing.hashes_to_uint64`. Returns a ``(k, 3)`` int64 array of
    ``(i, j, distance)`` rows, ``i < j``, sorted; exactly the pairs with
    ``popcount(h[i] ^ h[j]) <= threshold``.
    """
    return find_pairs_words(hashes, threshold)


def find_pairs_hex(hexes, threshold: int = DEFAULT_THRESHOLD, *, hash_size: int | None = None) -> np.ndarray:
    """:func:`find_pairs` for imagehash hex strings of any ``hash_size`` (guessed from the length when None)."""
    from dsbuild.verify.hashing import hashes_to_words

    hexes = list(hexes)
    if not hexes:
        return _EMPTY.copy()
    if hash_size is None:
        hash_size = int(np.sqrt(len(hexes[0]) * 4))
    return find_pairs_words(hashes_to_words(hexes, hash_size), threshold, nbits=hash_size * hash_size)


def find_cross_pairs(a: np.ndarray, b: np.ndarray, threshold: int = DEFAULT_THRESHOLD, *, nbits: int | None = None) -> np.ndarray:
    """All pairs (i in ``a``, j in ``b``) within ``threshold``: ``(k, 3)`` int64 rows ``(i, j, distance)``, sorted.

    ``a`` and ``b``: ``uint64`` arrays of shape (n,) or (n, words). The bucket
    tables are built on the larger side and the smaller side probes them.
    """
    aw, bw = _as_words(a), _as_words(b)
    if len(aw) == 0 or len(bw) == 0:
        return _EMPTY.copy()
    if aw.shape[1] != bw.shape[1]:
        raise ValueError(f"hashes of different sizes: {aw.shape[1]} vs {bw.shape[1]} words")
    nbits = nbits or 64 * aw.shape[1]
    t = _check_threshold(threshold, nbits)
    swap = len(aw) > len(bw)
    small, large = (bw, aw) if swap else (aw, bw)
    p = plan(nbits, t, len(small), float(len(small)) * len(large))
    pairs = _cross_brute(small, large, t) if p.brute_force else _cross_mih(small, large, t, p.blocks)
    if swap:
        pairs = pairs[:, [1, 0, 2]]
    return sort_pairs(pairs)


def find_pairs_incremental(
    new: np.ndarray, old: np.ndarray, threshold: int = DEFAULT_THRESHOLD, *, nbits: int | None = None
) -> np.ndarray:
    """Pairs that involve at least one of ``new``, without redoing ``old`` × ``old``.

    Indices refer to the concatenation ``[old, new]``: old item ``i`` keeps index
    ``i`` and new item ``j`` gets ``len(old) + j``. Rows ``(i, j, distance)`` with
    ``i < j``, sorted; together with the pairs among ``old`` (from an earlier build)
    they equal :func:`find_pairs` on the concatenation.
    """
    nw, ow = _as_words(new), _as_words(old)
    n_old = len(ow)
    parts = []
    if len(nw) and n_old:
        cross = find_cross_pairs(ow, nw, threshold, nbits=nbits)
        cross[:, 1] += n_old
        parts.append(cross)
    if len(nw) >= 2:
        inner = find_pairs_words(nw, threshold, nbits=nbits)
        inner[:, :2] += n_old
        parts.append(inner)
    return sort_pairs(np.concatenate(parts)) if parts else _EMPTY.copy()


class UnionFind:
    """Disjoint sets over ``n`` items (path compression; the smaller root wins a union, so roots are group minima)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group labels (connected components of the pair graph) for ``n`` items, by :class:`UnionFind`.

    Returns an int64 array of shape (n,); each item's label is the smallest
    index in its group, so singletons are labelled by themselves and labels are
    stable under reordering of ``pairs``.
    """
    pairs = np.asarray(pairs)
    uf = UnionFind(n)
    for i, j in pairs[:, :2].tolist() if len(pairs) else ():
        uf.union(int(i), int(j))
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


def choose_representatives(groups: np.ndarray, width: np.ndarray, height: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Boolean mask (n,) of the one item each group keeps: largest ``width*height``, then smallest ``order``.

    ``order`` is when the item was first seen (any sortable numbers; ties fall
    back to the item's index). Items alone in their group are representatives.
    """
    groups = np.asarray(groups)
    n = len(groups)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    area = np.asarray(width, dtype=np.float64) * np.asarray(height, dtype=np.float64)
    area = np.nan_to_num(area, nan=-1.0)
    idx = np.arange(n)
    # lexsort: last key is primary — group, then largest area, then earliest, then index.
    sorter = np.lexsort((idx, np.asarray(order), -area, groups))
    g = groups[sorter]
    first = np.ones(n, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    keep[sorter[first]] = True
    return keep
