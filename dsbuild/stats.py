"""Small statistics shared by the commands: how sure a before/after difference is."""

from __future__ import annotations

import math


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value for paired right/wrong outcomes: ``worse`` images the second model gets wrong
    and the first right, ``better`` the other way (binomial, p = ½, on the discordant pairs; McNemar 1947)."""
    n = worse + better
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(worse, better) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
