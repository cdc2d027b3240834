"""Split assignment: deterministic, stratified, stable, group-aware.

* **Deterministic**: new units are taken in the order of ``sha256(seed:key)``,
  where ``key`` is the content hash (or the duplicate group), so the same images
  get the same splits on any machine.
* **Stratified**: per label, each new unit goes to the split furthest below its
  target share, so every class gets its train/valid/test fractions (up to one
  image) however small it is.
* **Stable**: a unit that already has a split keeps it, so adding images later
  never moves an existing image to another split.
* **Group-aware**: all members of a duplicate group share one split (the split of
  any member that already has one), so a picture never leaks across splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dsbuild.errors import Problem, check

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, kw_only=True)
class SplitSettings:
    """Train/valid/test fractions and the seed of the split hash (manifest table ``[datasets.NAME.split]``).

    The fractions (defaults 0.8 / 0.2 / 0.0) must each be in [0, 1], with train > 0,
    and add up to 1 (within 1e-6); the manifest gives an omitted ``test`` the rest.
    ``seed`` (default 42) orders new images (:func:`split_order_key`).
    """

    train: float = 0.8
    valid: float = 0.2
    test: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        check(self.problems(), table="split")

    def problems(self) -> list[Problem]:
        """Every bad value (empty when the settings are valid)."""
        out = []
        fracs = {name: getattr(self, name) for name in SPLITS}
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fracs.values())
        if not numbers:
            return [Problem(k, f"must be a number, not {v!r}") for k, v in fracs.items()
                    if not isinstance(v, (int, float)) or isinstance(v, bool)]
        for name, frac in fracs.items():
            if not 0 <= frac <= 1:
                out.append(Problem(name, f"must be between 0 and 1, not {frac}"))
        if self.train <= 0:
            out.append(Problem("train", "must be greater than 0"))
        total = self.train + self.valid + self.test
        if abs(total - 1) > 1e-6:
            out.append(Problem("", f"fractions must add up to 1 (train {self.train} + valid {self.valid} + "
                                   f"test {self.test} = {round(total, 6)})"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            out.append(Problem("seed", f"must be an integer, not {self.seed!r}"))
        return out


def split_order_key(seed: int, key: str) -> str:
    """The position of a unit in the assignment order (a hex digest)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(units, settings: SplitSettings) -> dict[str, str]:
    """Give every unit without a split one; return ``{unit: split}`` for all units.

    ``units``: a DataFrame with columns ``unit`` (group key), ``label`` and
    ``split`` (existing split or None/NaN), one row per unit.
    """
    targets = {s: getattr(settings, s) for s in SPLITS if getattr(settings, s) > 0}
    out: dict[str, str] = {}
    for _, grp in units.groupby("label", sort=True):
        counts = {s: 0 for s in targets}
        fresh = []
        for unit, split in zip(grp["unit"], grp["split"]):
            if isinstance(split, str) and split:
                out[unit] = split
                if split in counts:
                    counts[split] += 1
            else:
                fresh.append(unit)
        fresh.sort(key=lambda u: split_order_key(settings.seed, u))
        total = sum(counts.values())
        for unit in fresh:
            total += 1
            # The split with the largest deficit against its target share; ties go to train first.
            best = max(targets, key=lambda s: (targets[s] * total - counts[s], targets[s]))
            counts[best] += 1
            out[unit] = best
    return out
