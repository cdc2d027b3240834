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

from dsbuild.manifest import SplitSettings

SPLITS = ("train", "valid", "test")


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
