"""Split assignment: deterministic, stratified, stable, group-aware.

* **Deterministic**: units are taken in the order of ``sha256(seed:key)``,
  where ``key`` is the content hash (or the duplicate group), so the same images
  get the same splits on any machine.
* **Stratified**: per label, valid and test each take ``round(fraction × n)`` units
  (a half rounds down) and train the rest, so every class gets its train/valid/test
  fractions (up to one image); in a later build, each new unit of a label goes to the
  split furthest below its target share.
* **Nested**: a label's units are cut in hash order — valid the low end, test the
  high end, train the middle — so raising a fraction only adds units to that split
  and lowering it only takes units away (``--resplit`` from valid 0.2 to 0.3 keeps
  every valid image and moves the difference from train).
* **Stable**: a unit that already has a split keeps it, so adding images later
  never moves an existing image to another split; nor does verifying it again
  (:meth:`dsbuild.catalog.Catalog.upsert_items` keeps the split of an item written
  again with the same content). New units fill the splits' deficits (below), so
  their splits can differ from those a fresh build of the same files draws. Changing the *settings*
  (fractions, seed, carve) is another matter: the build refuses until it is
  run with ``--resplit``, which assigns every unit again from scratch
  (:func:`dataset_splits` with ``keep_existing=False``) and reports what moved.
* **Group-aware**: all members of a split unit (a duplicate group and its near
  links) share one split (the split of any member that already has one). Near
  duplicates found only after earlier builds drew them into different splits keep
  those splits (stability; :func:`dsbuild.dedup.grouping.regroup`) and are reported
  as leakage (:func:`leakage_note`) until ``--resplit``.

Given splits (an ImageFolder's ``train/``, ``valid/``, ``test/`` folders) are
kept as given; a :class:`Carve` re-splits ONE given split by fraction, e.g.
``carve = { from = "train", valid = 0.2 }`` turns 20 % of each class of the
given ``train`` folder into ``valid``, with the same properties.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from dsbuild.errors import Problem, check, did_you_mean

SPLITS = ("train", "valid", "test")
CARVE_KEYS = ("from", "valid", "test")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class Carve:
    """Splits carved out of a given split by fraction (``carve = { from = "train", valid = 0.2 }``).

    ``source`` (manifest key ``from``, default ``"train"``): the given split to cut;
    ``valid`` / ``test``: the share of each class of ``source`` that moves to that split
    (each in [0, 1), together below 1, at least one above 0; the split named by
    ``source`` cannot be carved out of itself). The rest stays in ``source``.
    Which images move follows the dataset's ``split.seed`` (:func:`split_order_key`).
    """

    source: str = "train"
    valid: float = 0.0
    test: float = 0.0

    def problems(self) -> list[Problem]:
        out = []
        if self.source not in SPLITS:
            out.append(Problem("carve.from", f"must be one of {', '.join(SPLITS)}, not {self.source!r}"))
        for name in ("valid", "test"):
            value = getattr(self, name)
            if not _is_number(value):
                out.append(Problem(f"carve.{name}", f"must be a number, not {value!r}"))
            elif not 0 <= value < 1:
                out.append(Problem(f"carve.{name}", f"must be at least 0 and below 1, not {value}"))
            elif name == self.source and value:
                out.append(Problem(f"carve.{name}", f"cannot carve {name} out of {name} — name another split "
                                                    "(from = \"train\")"))
        if out:
            return out
        if self.valid + self.test >= 1:
            out.append(Problem("carve", f"valid {self.valid} + test {self.test} must stay below 1 "
                                        f"(something must stay in {self.source})"))
        elif self.valid + self.test == 0:
            out.append(Problem("carve", "carves nothing — give valid (or test) a fraction, e.g. "
                                        f"carve = {{ from = \"{self.source}\", valid = 0.2 }}"))
        return out

    def targets(self) -> dict[str, float]:
        """Target share of each split among the carved images (``source`` keeps the rest)."""
        out = {self.source: round(1 - self.valid - self.test, 9)}
        for name in ("valid", "test"):
            if getattr(self, name) > 0:
                out[name] = getattr(self, name)
        return out

    def describe(self) -> str:
        parts = [f"{name} {getattr(self, name):g}" for name in ("valid", "test") if getattr(self, name)]
        return f"{' + '.join(parts)} from {self.source}"


def parse_carve(raw: Any) -> tuple[Carve | None, list[Problem]]:
    """A ``carve`` value as written in the manifest (a table) → (:class:`Carve`, problems)."""
    if raw is None or isinstance(raw, Carve):
        return raw, []
    if not isinstance(raw, Mapping):
        return None, [Problem("carve", f"must be a table such as {{ from = \"train\", valid = 0.2 }}, not {raw!r}")]
    problems = [Problem(f"carve.{k}", f"unknown key{did_you_mean(str(k), set(CARVE_KEYS))}")
                for k in raw if k not in CARVE_KEYS]
    if problems:  # a misspelt key would also read as "carves nothing": name the key alone
        return None, problems
    carve = Carve(source=raw.get("from", "train"), valid=raw.get("valid", 0.0), test=raw.get("test", 0.0))
    problems += carve.problems()
    return (None if problems else carve), problems


@dataclass(frozen=True, kw_only=True)
class SplitSettings:
    """Train/valid/test fractions and the seed of the split hash (manifest table ``[datasets.NAME.split]``).

    The fractions (defaults 0.8 / 0.2 / 0.0) must each be in [0, 1], with train > 0,
    and add up to 1 (within 1e-6); the manifest gives an omitted ``train`` the rest when it names ``valid`` or
    ``test`` (``valid = 0.3`` → train 0.7), else an omitted ``test`` the rest.
    They apply to images whose source gives no split. ``seed`` (default 42) orders new
    images (:func:`split_order_key`). ``carve`` (default none): a :class:`Carve` (or its
    manifest table ``{ from = "train", valid = 0.2 }``) cutting a given split.
    """

    train: float = 0.8
    valid: float = 0.2
    test: float = 0.0
    seed: int = 42
    carve: Carve | None = None

    def __post_init__(self) -> None:
        carve, carve_problems = parse_carve(self.carve)
        object.__setattr__(self, "carve", carve)
        check(self.problems() + carve_problems, table="split")

    def problems(self) -> list[Problem]:
        """Every bad value (empty when the settings are valid)."""
        out = []
        fracs = {name: getattr(self, name) for name in SPLITS}
        numbers = all(_is_number(v) for v in fracs.values())
        if not numbers:
            return [Problem(k, f"must be a number, not {v!r}") for k, v in fracs.items() if not _is_number(v)]
        for name, frac in fracs.items():
            if not 0 <= frac <= 1:
                out.append(Problem(name, f"must be between 0 and 1, not {frac}"))
        if self.train <= 0:
            out.append(Problem("train", "must be greater than 0"))
        total = self.train + self.valid + self.test
        if abs(total - 1) > 1e-6:
            rest = round(1 - self.valid - self.test, 6)
            fix = (f"set train = {rest} (what valid {self.valid} and test {self.test} leave), or leave train out of "
                   f"[split]: an omitted train takes the rest" if 0 < rest <= 1 else
                   f"valid {self.valid} + test {self.test} leave train no share: lower them to add up to less than 1")
            out.append(Problem("", f"fractions must add up to 1 (train {self.train} + valid {self.valid} + "
                                   f"test {self.test} = {round(total, 6)}) — {fix}"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            out.append(Problem("seed", f"must be an integer, not {self.seed!r}"))
        return out

    def targets(self) -> dict[str, float]:
        """Target share of each split with a fraction above 0."""
        return {s: getattr(self, s) for s in SPLITS if getattr(self, s) > 0}

    def record(self) -> str:
        """The settings that decide splits, as canonical JSON (the catalog keeps it to notice a change)."""
        carve = None if self.carve is None else {"from": self.carve.source, "valid": self.carve.valid,
                                                  "test": self.carve.test}
        return json.dumps({"train": round(self.train, 9), "valid": round(self.valid, 9), "test": round(self.test, 9),
                           "seed": self.seed, "carve": carve}, sort_keys=True)


def describe_change(old: str | None, new: SplitSettings) -> str:
    """What changed between a recorded :meth:`SplitSettings.record` and ``new``, e.g. ``valid 0.2 → 0.3``."""
    if old is None:
        return "carve: none → " + (new.carve.describe() if new.carve else "none")
    before, after = json.loads(old), json.loads(new.record())
    parts = []
    for key in ("train", "valid", "test", "seed"):
        if before.get(key) != after[key]:
            parts.append(f"{key} {before.get(key):g} → {after[key]:g}")
    if before.get("carve") != after["carve"]:
        def text(c):
            return "none" if not c else Carve(source=c["from"], valid=c["valid"], test=c["test"]).describe()
        parts.append(f"carve: {text(before.get('carve'))} → {text(after['carve'])}")
    return ", ".join(parts)


def leakage_note(leaks: int, kept: int = 0, pairs: int = 0, dataset: str = "DATASET") -> str | None:
    """The line of ``build`` and ``status`` on images of one picture in different splits, or None when there are none.

    ``leaks``: duplicate groups whose members lie in different splits; ``kept`` of them, and ``pairs`` near
    duplicates that no group joins (``items.leak_with``), are there because drawn splits are stable: earlier
    builds drew the images into different splits before a later one found them near each other, and no image
    moves (``build --resplit`` puts them in one split). The other groups came that way (an imagefolder's
    ``train/`` and ``valid/`` holding one picture).
    """
    if not leaks and not pairs:
        return None
    given = leaks - kept
    parts = []
    if given:
        groups = "1 duplicate group straddles" if given == 1 else f"{given} duplicate groups straddle"
        parts.append(f"{groups} splits (leakage in the splits the dataset came with)")
    drawn = []
    if kept:
        drawn.append("1 duplicate group straddles splits" if kept == 1 else f"{kept} duplicate groups straddle splits")
    if pairs:
        drawn.append("1 near-duplicate pair lies in different splits" if pairs == 1
                     else f"{pairs} near-duplicate pairs lie in different splits")
    if drawn:
        parts.append(f"{' and '.join(drawn)} (leakage: earlier builds drew them into different splits before they were "
                     f"found to be near duplicates, and images keep their splits — `dsbuild build {dataset} --resplit` "
                     "puts near duplicates in one split)")
    return "; ".join(parts) + " — `dsbuild query @split_leakage`"


def split_order_key(seed: int, key: str) -> str:
    """The position of a unit in the assignment order (a hex digest)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


# Where each split sits in a stratum's hash order (:func:`nested_layout`): valid at the low end, test at the
# high end, train in the middle.
LAYOUT = ("valid", "train", "test")


def nested_counts(n: int, targets: Mapping[str, float], rest: str) -> dict[str, int]:
    """How many of ``n`` units each split of ``targets`` takes: ``round(fraction × n)`` (a half rounds down) for
    each split but ``rest``, which takes what is left. A split's count depends on its own fraction alone, so
    raising it never lowers the count (the nesting of :func:`assign_splits`)."""
    counts = {s: max(0, math.ceil(round(f * n, 9) - 0.5)) for s, f in targets.items() if s != rest}
    counts[rest] = n - sum(counts.values())
    return counts


def nested_layout(order: list[str], counts: Mapping[str, int]) -> dict[str, str]:
    """``order`` (units in hash order) cut into consecutive runs of ``counts``, in the order of :data:`LAYOUT`."""
    out: dict[str, str] = {}
    at = 0
    for split in LAYOUT:
        for unit in order[at:at + counts.get(split, 0)]:
            out[unit] = split
        at += counts.get(split, 0)
    return out


def assign_splits(units, settings: SplitSettings | Carve, *, seed: int | None = None) -> dict[str, str]:
    """Give every unit without a split one; return ``{unit: split}`` for all units.

    ``units``: a DataFrame with columns ``unit`` (group key), ``label`` and
    ``split`` (existing split or None/NaN), one row per unit. ``settings``: the
    fractions (:class:`SplitSettings`) or a :class:`Carve` (then ``seed`` is the
    dataset's split seed).

    A label none of whose units has a split (a first build, a new class, ``--resplit``) is **nested**: its
    units in hash order are cut into valid (the low end, :func:`nested_counts` of them), train (the middle)
    and test (the high end). A split's count grows with its fraction and the order does not depend on the
    fractions, so raising valid from 0.2 to 0.3 keeps every valid unit and moves only the difference from
    train, and lowering it moves only the difference back. A label with split units already (a later build
    adding images) gives each new unit, in hash order, to the split furthest below its target share.
    """
    targets = settings.targets()
    rest = "train" if isinstance(settings, SplitSettings) else settings.source
    seed = settings.seed if isinstance(settings, SplitSettings) else seed
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
        fresh.sort(key=lambda u: split_order_key(seed, u))
        if len(fresh) == len(grp):
            out.update(nested_layout(fresh, nested_counts(len(fresh), targets, rest)))
            continue
        total = sum(counts.values())
        for unit in fresh:
            total += 1
            # The split with the largest deficit against its target share; ties go to train first.
            best = max(targets, key=lambda s: (targets[s] * total - counts[s], targets[s]))
            counts[best] += 1
            out[unit] = best
    return out


def _units(rows, existing) -> Any:
    """One row per unit of ``rows`` with its label (an ``ok`` member's first) and ``existing`` split (or None)."""
    import pandas as pd

    # A unit may hold several groups: its label is that of its ok member of the smallest content hash, so the
    # label (and the stratification) does not depend on image ids or where the files are. An image removed in
    # review is no such member: a copy of it that stays decides (else the two copies, of one content hash,
    # would tie and the row order — image ids, so the folder — would).
    keys = ["_rep", "sha256"] if "sha256" in rows else ["_rep"]
    removed = rows["removed"].fillna(False).to_numpy(dtype=bool) if "removed" in rows else False
    ordered = rows.assign(_rep=(rows["status"] != "ok").to_numpy() | removed).sort_values(keys, kind="stable")
    units = ordered.drop_duplicates("unit")[["unit", "label"]].reset_index(drop=True)
    units["split"] = units["unit"].map(existing) if existing is not None else None
    return units if len(units) else pd.DataFrame({"unit": [], "label": [], "split": []})


def _mode(series) -> Any:
    return series.dropna().groupby(level=0).agg(lambda s: s.mode().iloc[0])


def dataset_splits(df, settings: SplitSettings, *, keep_existing: bool = True):
    """The split of every row of a dataset's items (None for rows that take no split).

    ``df`` columns: ``unit`` (duplicate group or content key), ``label``, ``status``,
    ``split`` (the catalog's current split), ``given_split`` (what an ImageFolder tree
    gave, else None), ``in_split`` (bool: the row takes a split: ok or duplicate).
    Rows with a given split keep it, except those of ``settings.carve.source``, which are
    carved by :func:`assign_splits` with the carve's targets; the other rows get the
    fractions. A unit keeps its current split when ``keep_existing`` (stability); with
    ``keep_existing=False`` every unit is assigned again from scratch (``--resplit``).
    A unit without a given split whose group has given members follows their split.
    Returns a numpy object array aligned with ``df``.
    """
    import numpy as np

    given = df["given_split"] if "given_split" in df else None
    in_split = df["in_split"].to_numpy(dtype=bool)
    has_given = given.notna().to_numpy() if given is not None else np.zeros(len(df), dtype=bool)
    carve = settings.carve
    out = np.full(len(df), None, dtype=object)

    # 1. Given splits as given; the carved one re-split by the carve's fractions.
    carved = has_given & in_split & (given.to_numpy(dtype=object) == carve.source) if carve else np.zeros(len(df), bool)
    fixed = has_given & in_split & ~carved
    out[fixed] = given.to_numpy(dtype=object)[fixed]
    if carved.any():
        rows = df[carved]
        existing = _mode(rows.set_index("unit")["split"]) if keep_existing else None
        mapping = assign_splits(_units(rows, existing), carve, seed=settings.seed)
        out[carved] = rows["unit"].map(mapping).to_numpy(dtype=object)

    # 2. The rest by the fractions; a group with given members follows them.
    free = in_split & ~has_given
    if free.any():
        rows = df[free]
        existing = _mode(rows.set_index("unit")["split"]) if keep_existing else None
        decided = df[fixed | carved].assign(_split=out[fixed | carved])
        followed = _mode(decided.set_index("unit")["_split"]) if len(decided) else None
        if followed is not None and len(followed):
            existing = followed if existing is None else existing.combine_first(followed)
        mapping = assign_splits(_units(rows, existing), settings)
        out[free] = rows["unit"].map(mapping).to_numpy(dtype=object)
    return out
