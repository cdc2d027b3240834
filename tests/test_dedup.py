"""Near-duplicate search: exactness vs brute force, incremental == full, grouping, representatives."""

from __future__ import annotations

import numpy as np
import pytest

from dsbuild.dedup import search as dedup

SEED = 42


def brute(values: np.ndarray, threshold: int) -> np.ndarray:
    """Reference: every pair i < j with popcount(h[i] ^ h[j]) <= threshold, by broadcasting."""
    d = np.bitwise_count(values[:, None] ^ values[None, :]).astype(np.int64)
    i, j = np.nonzero(np.triu(d <= threshold, 1))
    return np.column_stack([i, j, d[i, j]]).astype(np.int64).reshape(-1, 3)


def planted(n: int, rng: np.random.Generator, *, frac: float = 0.05, max_flips: int = 14) -> np.ndarray:
    """n random 64-bit hashes; a fraction overwritten by copies of others with 0..max_flips bits flipped."""
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    k = int(n * frac)
    src, dst = rng.integers(0, n, k), rng.integers(0, n, k)
    for s, d in zip(src, dst):
        flips = rng.choice(64, int(rng.integers(0, max_flips + 1)), replace=False)
        h[d] = h[s] ^ np.uint64(sum(1 << int(f) for f in flips))
    return h


def at_distance(rng: np.random.Generator, base: np.ndarray, dist: int) -> np.ndarray:
    out = base.copy()
    for idx in range(len(out)):
        flips = rng.choice(64, dist, replace=False)
        out[idx] ^= np.uint64(sum(1 << int(f) for f in flips))
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 150, 2500])
@pytest.mark.parametrize("threshold", [0, 1, 4, 6, 8, 10, 13])
def test_find_pairs_equals_brute_force(n, threshold):
    rng = np.random.default_rng(SEED + n + threshold)
    h = planted(n, rng) if n else np.zeros(0, dtype=np.uint64)
    got = dedup.find_pairs(h, threshold)
    assert got.dtype == np.int64 and got.shape[1] == 3
    np.testing.assert_array_equal(got, brute(h, threshold))


@pytest.mark.parametrize("threshold", [3, 6, 8, 10])
def test_edge_distance_equal_to_threshold_is_in_and_one_more_is_out(threshold):
    rng = np.random.default_rng(SEED)
    base = rng.integers(0, 2**64 - 1, 400, dtype=np.uint64, endpoint=True)
    inside = at_distance(rng, base[:200], threshold)
    outside = at_distance(rng, base[200:], threshold + 1)
    h = np.concatenate([base, inside, outside])
    got = dedup.find_pairs(h, threshold)
    np.testing.assert_array_equal(got, brute(h, threshold))
    found = {(int(i), int(j)) for i, j, _ in got}
    assert all((k, 400 + k) in found for k in range(200))
    assert not any((200 + k, 600 + k) in found for k in range(200))
    assert set(got[:, 2].tolist()) <= set(range(threshold + 1))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7])
def test_every_multi_index_plan_is_exact(m):
    """Whatever plan the cost model picks, the pair set is the brute-force one."""
    rng = np.random.default_rng(SEED + m)
    h = planted(3000, rng, frac=0.1)
    words = h[:, None]
    for threshold in range(m - 1, 11):
        widths = dedup.split_widths(64, m)
        base, extra = divmod(threshold + 1 - m, m)
        radii = [base + 1] * extra + [base] * (m - extra)
        blocks, start = [], 0
        for w, r in zip(widths, radii):
            blocks.append(dedup.Block(start=start, width=w, radius=r))
            start += w
        if sum(b.volume for b in blocks) > 6_000:  # the wide-block plans are slow in pure form; the model never picks them there
            continue
        got = dedup.sort_pairs(dedup.mih_self_pairs(words, threshold, tuple(blocks)))
        np.testing.assert_array_equal(got, brute(h, threshold), err_msg=f"m={m} t={threshold}")


def test_crowded_buckets_many_identical_hashes():
    rng = np.random.default_rng(SEED)
    h = rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True)
    h[100:160] = h[5]  # 61 identical hashes: 1830 pairs at distance 0
    h[200:230] = h[7] ^ np.uint64(0b111)  # 30 more at distance 3 from h[7]
    for threshold in (0, 3, 8):
        np.testing.assert_array_equal(dedup.find_pairs(h, threshold), brute(h, threshold))


@pytest.mark.parametrize("hash_size", [4, 6, 12, 16])
def test_find_pairs_hex_other_sizes(hash_size):
    rng = np.random.default_rng(SEED + hash_size)
    nbits = hash_size * hash_size
    n = 600
    vals = [int.from_bytes(rng.bytes((nbits + 7) // 8), "big") >> ((nbits + 7) // 8 * 8 - nbits) for _ in range(n)]
    for _ in range(120):
        src = vals[int(rng.integers(0, n))]
        flips = rng.choice(nbits, int(rng.integers(0, min(nbits, 12))), replace=False)
        vals[int(rng.integers(0, n))] = src ^ sum(1 << int(f) for f in flips)
    hexes = [format(v, f"0{(nbits + 3) // 4}x") for v in vals]
    for threshold in (0, 2, 5, 9):
        expected = [(i, j, (vals[i] ^ vals[j]).bit_count()) for i in range(n) for j in range(i + 1, n)
                    if (vals[i] ^ vals[j]).bit_count() <= threshold]
        got = dedup.find_pairs_hex(hexes, threshold)
        np.testing.assert_array_equal(got, np.array(expected, dtype=np.int64).reshape(-1, 3))


@pytest.mark.parametrize("n_old,n_new", [(0, 50), (50, 0), (2000, 300), (300, 2000), (5000, 1)])
def test_incremental_equals_full_minus_old_pairs(n_old, n_new):
    rng = np.random.default_rng(SEED + n_old + n_new)
    h = planted(n_old + n_new, rng, frac=0.1)
    old, new = h[:n_old], h[n_old:]
    for threshold in (0, 6, 10):
        full = dedup.find_pairs(h, threshold)
        expected = full[full[:, 1] >= n_old]  # pairs touching at least one new item
        got = dedup.find_pairs_incremental(new, old, threshold)
        np.testing.assert_array_equal(got, expected)
        old_pairs = dedup.find_pairs(old, threshold)
        np.testing.assert_array_equal(dedup.sort_pairs(np.concatenate([old_pairs, got])), full)


def test_cross_pairs_both_orientations():
    rng = np.random.default_rng(SEED)
    a = planted(700, rng)
    b = at_distance(rng, a[:400], 5)
    got = dedup.find_cross_pairs(a, b, 6)
    d = np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)
    i, j = np.nonzero(d <= 6)
    np.testing.assert_array_equal(got, np.column_stack([i, j, d[i, j]]))
    swapped = dedup.find_cross_pairs(b, a, 6)
    np.testing.assert_array_equal(dedup.sort_pairs(swapped[:, [1, 0, 2]]), got)


def test_bad_threshold():
    with pytest.raises(ValueError, match="non-negative integer"):
        dedup.find_pairs(np.zeros(3, dtype=np.uint64), -1)
    with pytest.raises(ValueError, match="non-negative integer"):
        dedup.find_pairs(np.zeros(3, dtype=np.uint64), 2.5)


def test_plan_prefers_brute_force_when_tiny_and_blocks_when_large():
    assert dedup.plan(64, 8, 50, 100 * 99 / 2).brute_force
    big = dedup.plan(64, 8, 500_000, 1e6 * (1e6 - 1) / 2)
    assert not big.brute_force
    assert sum(b.radius + 1 for b in big.blocks) == 9
    assert sum(b.width for b in big.blocks) == 64


def test_group_is_connected_components_labelled_by_smallest_member():
    pairs = np.array([[3, 7, 2], [7, 9, 4], [1, 2, 0], [5, 5, 0]])
    labels = dedup.group(10, pairs)
    assert labels.tolist() == [0, 1, 1, 3, 4, 5, 6, 3, 8, 3]
    shuffled = pairs[::-1][:, [1, 0, 2]]
    assert dedup.group(10, shuffled).tolist() == labels.tolist()
    assert dedup.group(4, np.zeros((0, 3), dtype=np.int64)).tolist() == [0, 1, 2, 3]
    assert dedup.group(0, np.zeros((0, 3), dtype=np.int64)).tolist() == []


def test_group_chains_transitively():
    n = 1000
    chain = np.array([[k, k + 1, 1] for k in range(0, n - 1, 1)])
    assert set(dedup.group(n, chain).tolist()) == {0}


def test_choose_representatives_largest_then_earliest():
    groups = np.array([0, 0, 0, 3, 3, 5, 6, 6])
    width = np.array([100, 200, 200, 50, 50, 10, 80, 40])
    height = np.array([100, 100, 100, 50, 50, 10, 10, 20])  # 6 and 7 have equal area (800)
    order = np.array([5, 9, 4, 2, 1, 0, 3, 3])
    keep = dedup.choose_representatives(groups, width, height, order)
    # group 0: items 1 and 2 share the largest area, 2 was seen first; group 3: same size, 4 first;
    # group 6: same area, same order -> the smaller index.
    assert keep.tolist() == [False, False, True, False, True, True, True, False]
    assert keep.sum() == len(set(groups.tolist()))
