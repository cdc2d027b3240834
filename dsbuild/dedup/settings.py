"""The dedup stage's settings: the manifest's ``[datasets.NAME.dedup]`` table."""

from __future__ import annotations

from dataclasses import dataclass

from dsbuild.errors import Problem, check, did_you_mean
from dsbuild.verify.settings import HASH_KINDS

HASH_SIZES = (4, 6, 8, 12, 16)


@dataclass(frozen=True, kw_only=True)
class DedupSettings:
    """Perceptual hashing and near-duplicate grouping.

    ``hash`` (default ``"phash"``, one of :data:`~dsbuild.verify.settings.HASH_KINDS`)
    of ``hash_size``² bits (default 8: 64 bits). ``threshold`` is the largest Hamming
    distance between two hashes that makes them near duplicates (default 10,
    :data:`dsbuild.dedup.search.DEFAULT_THRESHOLD`, measured by bench/dup_quality.py;
    0 keeps exact duplicates only); ``near = false`` skips the near-duplicate search.
    ``cross_class`` says what to do with a group whose members carry different labels:
    ``"flag"`` marks it as a label conflict for review (nothing is dropped silently).
    """

    hash: str = "phash"
    hash_size: int = 8
    threshold: int = 10
    near: bool = True
    cross_class: str = "flag"

    def __post_init__(self) -> None:
        check(self.problems(), table="dedup")

    def problems(self) -> list[Problem]:
        """Every bad value, in field order (empty when the settings are valid)."""
        out = []
        if self.hash not in HASH_KINDS:
            out.append(Problem("hash", f"unknown hash '{self.hash}'{did_you_mean(str(self.hash), HASH_KINDS)} — "
                                       f"known: {', '.join(HASH_KINDS)}"))
        if self.hash_size not in HASH_SIZES or isinstance(self.hash_size, bool):
            out.append(Problem("hash_size", f"must be one of {', '.join(map(str, HASH_SIZES))}, not {self.hash_size}"))
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or not 0 <= self.threshold <= 32:
            out.append(Problem("threshold", f"must be between 0 and 32, not {self.threshold}"))
        if not isinstance(self.near, bool):
            out.append(Problem("near", f"must be true or false, not {self.near!r}"))
        if self.cross_class not in ("flag",):
            out.append(Problem("cross_class", f"must be 'flag', not {self.cross_class!r}"))
        return out
