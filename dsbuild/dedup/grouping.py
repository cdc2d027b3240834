"""Duplicate groups and statuses of a dataset, recomputed from the catalog at each build.

Exact duplicates share bytes (sha256) or decoded pixels (pixel digest); near
duplicates have perceptual hashes within ``dedup.threshold`` (see
:mod:`dsbuild.dedup.search`). Groups form around representatives, never by chaining
(:func:`group_near_duplicates`): images are taken best first — largest
resolution, then the sharpest (a re-encode, a resize or a blend is softer than
its picture), then fewer near neighbours, then content hash, then (for
byte-identical copies) a name without a copy marker (:func:`is_copy_name`), the
label its source gave and the shorter path inside the class folder — and each
image not yet grouped represents a group of every ungrouped image within the
threshold *of it*. So every ``duplicate`` row lies within the
threshold of its representative (``dup_of``, ``dup_distance``). The choice is a
pure function of the files and settings: never of the order files were found
in, of the worker count, of earlier builds or of where the project lies on disk
(image ids hash the absolute path, so they never decide); the same files give
the same representatives in a first build and in a rebuild. An image removed in
review is in no group (its copies stand on their own). A group whose members
carry different labels is a **label conflict**: flagged (``conflict``), listed
by the ``conflicts`` view and the mislabel report, never dropped silently.
Splits are then assigned per *component* (groups joined by any near link,
:mod:`dsbuild.split`), so near duplicates never sit in different splits even
when they are in different groups — except where images already have drawn
splits that differ (a new image, or a new link, joins them later): they keep
them (stability), the link still groups them, and a group so spread over
splits is reported as leakage until ``build --resplit``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dsbuild.dedup.search import UnionFind
from dsbuild.manifest import Dataset

_CANDIDATE = ("ok", "duplicate")


@dataclass(frozen=True)
class GroupSummary:
    groups: int
    duplicates: int
    conflicts: int
    near_pairs: int


def quality_flags(items, dataset: Dataset, verified) -> tuple[np.ndarray, np.ndarray]:
    """CleanVision-style flags of every verified item, with the dataset's thresholds.

    ``items`` has the ``q_*`` score columns and ``width``/``height``; ``verified`` is a
    boolean mask of the rows that decoded. Returns ``(q_odd_size, flags)``: the
    dataset-relative size score (NaN where not verified) and, per row, the flag names
    joined by commas in :data:`dsbuild.verify.settings.QUALITY_FLAGS` order (``""``: none;
    None where not verified). A missing score never flags (as in CleanVision).
    """
    from dsbuild.verify.quality import flag_mask, odd_size_scores
    from dsbuild.verify.settings import QUALITY_FLAGS

    q = dataset.quality
    verified = np.asarray(verified, dtype=bool)
    odd = np.full(len(items), np.nan)
    if verified.any():
        w = items["width"].to_numpy(dtype=np.float64)[verified]
        h = items["height"].to_numpy(dtype=np.float64)[verified]
        odd[verified] = odd_size_scores(w, h, q.odd_size_iqr_factor)

    def col(name: str) -> np.ndarray:
        return items[name].to_numpy(dtype=np.float64, na_value=np.nan)

    # NaN is not an issue: a missing score never flags.
    hits = {name: flag_mask(name, odd if name == "odd_size" else col(f"q_{name}"), q) for name in QUALITY_FLAGS}
    flags = np.full(len(items), None, dtype=object)
    for i in np.flatnonzero(verified):
        flags[i] = ",".join(name for name in QUALITY_FLAGS if hits[name][i])
    return odd, flags


def _quality_reject(flags: np.ndarray, dataset: Dataset) -> np.ndarray:
    """reason 'quality: <flag>' for items with a flag the dataset rejects (the first, in flag order), else None."""
    reasons = np.full(len(flags), None, dtype=object)
    reject = set(dataset.quality.reject)
    if not reject:
        return reasons
    for i, text in enumerate(flags):
        # Rows that never decoded (rejected, failed) have no flags: None, or NaN once pandas has held the column.
        if isinstance(text, str) and text:
            hit = [f for f in text.split(",") if f in reject]
            if hit:
                reasons[i] = f"quality: {hit[0]}"
    return reasons


def _fixed_split(df, dataset: Dataset) -> np.ndarray:
    """Rows whose split their source gives and no setting re-draws: an imagefolder's ``train/``, ``valid/`` or
    ``test/``, except the split ``carve`` cuts (:func:`dsbuild.split.dataset_splits` keeps these as given)."""
    if "given_split" not in df:
        return np.zeros(len(df), dtype=bool)
    given = df["given_split"].to_numpy(dtype=object)
    carved = dataset.split.carve.source if dataset.split.carve else None
    return np.array([isinstance(g, str) and bool(g) and g != carved for g in given], dtype=bool)


def regroup(items, dataset: Dataset, *, near_pairs=None, keep_splits: bool = True):
    """Recompute status/reason/dup columns/split for every item of a dataset.

    ``keep_splits``: images keep the splits they have (stable); ``False`` assigns every
    split again from the settings (``build --resplit``).

    ``items``: DataFrame from :meth:`Catalog.dataset_items` (ordered by first_seen).
    ``near_pairs``: optional (k, 3) int array of (i, j, distance) row positions of
    near-duplicate pairs. Returns ``(updates DataFrame, GroupSummary)``.
    """
    import pandas as pd

    from dsbuild.split import dataset_splits

    df = items.reset_index(drop=True).copy()
    n = len(df)
    base_reason = df["reason"].where(~df["reason"].fillna("").str.startswith("quality:"), None)
    verified = df["status"].isin(_CANDIDATE) | df["reason"].fillna("").str.startswith("quality:")
    df["q_odd_size"], df["quality_flags"] = quality_flags(df, dataset, verified.to_numpy())
    qreason = _quality_reject(df["quality_flags"].to_numpy(), dataset)
    df["status"] = np.where(verified & pd.notna(qreason), "rejected", np.where(verified, "ok", df["status"]))
    df["reason"] = np.where(verified & pd.notna(qreason), qreason, np.where(verified, None, base_reason))
    cand = (df["status"] == "ok").to_numpy().copy()
    if "removed" in df:  # removed in review: not a member of any group, so its copies are not left out with it
        cand &= ~df["removed"].fillna(False).to_numpy(dtype=bool)

    uf = UnionFind(n)  # exact duplicates (same bytes or same decoded pixels): one unit, distance 0
    for col in ("sha256", "pixel_sha"):
        first: dict[str, int] = {}
        keys = df[col].to_numpy(dtype=object)
        for i in np.flatnonzero(cand):
            key = keys[i]
            if not isinstance(key, str):
                continue
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    exact = np.array([uf.find(i) for i in range(n)])

    df["pixels"] = (df["width"].fillna(0) * df["height"].fillna(0)).astype("int64")
    # Ties between pictures of the same size go by content hash; between byte-identical copies, a name without a
    # copy marker first (``IMG_1.jpg`` before ``IMG_1 (copy).jpg``: trial 11, L1 — the original was marked the
    # duplicate), then by the label their source gave and their place inside the source, shorter first (never by
    # image id: it hashes the absolute path).
    places = source_places(df["origin"], dataset) if "origin" in df else [""] * n
    key = pd.DataFrame({"sha": df["sha256"].fillna("").to_numpy(),
                        "copy": [is_copy_name(p) for p in places],
                        "label": df["class_label"].fillna("").to_numpy() if "class_label" in df else "",
                        "length": [len(p) for p in places],
                        "place": places,
                        "id": df["image_id"].to_numpy()})
    df["order"] = np.empty(n, dtype=np.int64)
    df.loc[key.sort_values(["sha", "copy", "label", "length", "place", "id"], kind="stable").index, "order"] = np.arange(n)

    links: list[tuple[int, int, int]] = []  # near links between exact units: they form the groups
    n_near = 0
    held: list[tuple[int, int]] = []  # near pairs (rows) whose split units stay apart: leakage kept for stability
    comp = UnionFind(n)  # split units: exact units joined by every near link (no near duplicates across splits)
    for i in range(n):
        if exact[i] != i:
            comp.union(int(exact[i]), i)
    if near_pairs is not None and len(near_pairs):
        # Stability wins over merging: a near-duplicate link never joins two groups that earlier builds
        # already drew into different splits (a new image can bridge them), since one side would have to move.
        # Only an image that could move counts: one whose split its folder gives (an imagefolder's train/ or
        # valid/, not the carved one) keeps it whatever it is joined to, so its links are never held apart
        # (trial 5: a given train/valid pair was grouped by a first build, ungrouped by the next).
        before = df["split"].to_numpy(dtype=object) if keep_splits else np.full(n, None, dtype=object)
        movable = ~_fixed_split(df, dataset)
        comp_split: dict[int, str] = {}
        for i in np.flatnonzero(cand & movable):
            if isinstance(before[i], str):
                comp_split.setdefault(comp.find(int(i)), before[i])
        # Links are taken closest first, then by content (``order``), never in row order: which link of a new
        # image that bridges two splits is held apart — so which split it takes — depends on the files alone,
        # not on image ids (they hash the absolute path) or on when the files were found.
        pairs = np.asarray(near_pairs, dtype=np.int64).reshape(-1, 3)
        ends = np.sort(df["order"].to_numpy()[pairs[:, :2]], axis=1)  # each pair's two images by content
        for i, j, d in pairs[np.lexsort((ends[:, 1], ends[:, 0], pairs[:, 2]))]:
            if not (cand[i] and cand[j]):
                continue
            ui, uj = int(exact[i]), int(exact[j])
            if ui == uj:
                continue
            ri, rj = comp.find(ui), comp.find(uj)
            if ri != rj:
                si, sj = comp_split.get(ri), comp_split.get(rj)
                if si is not None and sj is not None and si != sj:
                    # Held apart for the splits only: the link still groups (statuses, groups and representatives
                    # are those of a fresh build); the pair stays in two splits — leakage that build, status and
                    # @split_leakage report (below: ``leak_with``) until `--resplit` joins the splits.
                    held.append((int(i), int(j)))
                else:
                    comp.union(ri, rj)
                    if si or sj:
                        comp_split[comp.find(ri)] = si or sj
            links.append((ui, uj, int(d)))
            n_near += 1

    # The best image of each exact unit represents it; near duplicates are grouped around representatives.
    pixels, order = df["pixels"].to_numpy(), df["order"].to_numpy()
    units: dict[int, list[int]] = {}
    for i in np.flatnonzero(cand):
        units.setdefault(int(exact[i]), []).append(int(i))
    best = {u: min(m, key=lambda i: (-pixels[i], order[i])) for u, m in units.items()}
    sharp = df["q_blurry"].to_numpy(dtype=np.float64, na_value=np.nan) if "q_blurry" in df else np.full(n, np.nan)
    # No "seen in an earlier build": a representative must not depend on history (issue 12, bug 3). A rebuild
    # of the same files picks the same one anyway; a better picture added later may take over its group.
    leader_of, distance = group_near_duplicates(
        {u: (-int(pixels[b]), -round(float(sharp[b]), 6) if np.isfinite(sharp[b]) else 0.0, int(order[b]))
         for u, b in best.items()}, links)

    group_col = np.full(n, None, dtype=object)
    dup_of = np.full(n, None, dtype=object)
    dup_distance = np.full(n, None, dtype=object)
    conflict_col = np.zeros(n, dtype=bool)
    status = df["status"].to_numpy(dtype=object).copy()
    reason = df["reason"].to_numpy(dtype=object).copy()
    ids, shas, pixs = (df[c].to_numpy(dtype=object) for c in ("image_id", "sha256", "pixel_sha"))
    labels = df["label"].to_numpy(dtype=object)
    groups: dict[int, list[int]] = {}
    for u, m in units.items():
        groups.setdefault(leader_of.get(u, u), []).extend(m)
    n_dups = n_conflicts = n_groups = 0
    for lead, idx in groups.items():
        if len(idx) < 2:
            continue
        n_groups += 1
        rep = best[lead]
        # The conflicts view's rule (images removed in review are in no group: never counted).
        conflict = len({labels[i] for i in idx}) > 1
        n_conflicts += conflict
        group_col[idx] = "g-" + min(ids[i] for i in idx)
        conflict_col[idx] = conflict
        for i in idx:
            if i == rep:
                continue
            same = shas[i] == shas[rep] or (pixs[i] is not None and pixs[i] == pixs[rep])
            status[i] = "duplicate"
            reason[i] = "exact duplicate" if same else "near duplicate"
            dup_of[i] = ids[rep]
            dup_distance[i] = 0 if same else distance[int(exact[i])]
            n_dups += 1
    df["dup_group"], df["dup_of"], df["dup_distance"], df["conflict"] = group_col, dup_of, dup_distance, conflict_col
    df["status"], df["reason"] = status, reason

    # Splits: one per unit (:func:`dsbuild.split.dataset_splits`).
    # A group's key is its smallest content hash, not its id (image ids depend on where the files are),
    # so the same pictures get the same splits on any machine.
    # The split unit is the component (exact units joined by every near link): two groups whose members are
    # near each other never land in different splits, though neither is a duplicate of the other's representative.
    df["comp"] = [comp.find(i) if cand[i] else -1 - i for i in range(n)]
    comp_size = df.groupby("comp")["image_id"].transform("size")
    comp_sha = df.groupby("comp")["sha256"].transform("min").fillna("")
    df["unit"] = np.where(cand & (comp_size > 1).to_numpy(), "g-" + comp_sha, df["sha256"].fillna(df["image_id"]))
    df["in_split"] = df["status"].isin(["ok", "duplicate"])
    if "given_split" not in df:
        df["given_split"] = None
    # A dataset that arrived split (ImageFolder train/valid/...) keeps its splits, except a carved one.
    df["split"] = dataset_splits(df, dataset.split, keep_existing=keep_splits)

    df.loc[df["status"].isin(["ok", "duplicate"]), "detail"] = None
    # A held-apart pair that one group holds is that group's leak (@split_leakage lists the group); any other is
    # recorded on both images (``leak_with``) so that `status` and @split_leakage keep naming it.
    split = df["split"].to_numpy(dtype=object)
    leak_with: list[set[str]] = [set() for _ in range(n)]
    for i, j in held:
        if isinstance(group_col[i], str) and group_col[i] == group_col[j]:
            continue
        if isinstance(split[i], str) and isinstance(split[j], str) and split[i] != split[j]:
            leak_with[i].add(ids[j])
            leak_with[j].add(ids[i])
    df["leak_with"] = [",".join(sorted(w)) if w else None for w in leak_with]  # the catalog keeps a LIST
    out = df[["image_id", "status", "reason", "detail", "dup_group", "dup_of", "dup_distance", "conflict", "split",
              "quality_flags", "q_odd_size", "leak_with"]].copy()
    return out, GroupSummary(groups=n_groups, duplicates=n_dups, conflicts=int(n_conflicts), near_pairs=n_near)


def group_near_duplicates(priority: dict[int, tuple], links: list[tuple[int, int, int]]) -> tuple[dict[int, int], dict[int, int]]:
    """Groups around representatives: never a member farther than the threshold from its representative.

    ``priority``: node → sort key (smaller = a better representative); ``links``:
    ``(a, b, distance)`` for every pair of nodes that one similarity signal
    (a perceptual hash within ``threshold`` bits; any other signal, with its own
    threshold) calls near duplicates. Returns ``(leader_of, distance)``: each
    grouped node → the node that represents its group, and → its distance to it.

    Nodes are taken in representative order — the key given without its last
    element (:func:`regroup` gives: most pixels, the sharpest), then fewer near
    neighbours first, then the key's last element (content hash, source label,
    place in its folder: :func:`regroup`'s order); a node not yet grouped
    starts a group and takes in every node not yet grouped that is linked *to
    it*. There is no chaining: a node joins only a representative it is itself
    near to (unlike single linkage, where a run of in-between images joins
    pictures any distance apart). Deterministic for the same nodes and links,
    whatever order the links come in.
    """
    neighbours: dict[int, dict[int, int]] = {}
    for a, b, d in links:
        for x, y in ((a, b), (b, a)):
            near = neighbours.setdefault(x, {})
            near[y] = min(d, near.get(y, d))
    def rank(node: int) -> tuple:
        key = priority[node]
        return (*key[:-1], len(neighbours.get(node, ())), key[-1])

    leader_of: dict[int, int] = {}
    distance: dict[int, int] = {}
    for node in sorted(neighbours, key=rank):
        if node in leader_of:
            continue
        leader_of[node] = node
        for other, d in sorted(neighbours[node].items(), key=lambda kv: (kv[1], rank(kv[0]))):
            if other not in leader_of:
                leader_of[other] = node
                distance[other] = d
    return leader_of, distance


_COPY_NAME = re.compile(r"""(?ix)
    ^copy\s(?:\(\d+\)\s)?of\s            # Windows' older "Copy of x", "Copy (2) of x"
  | (?:\s*-\s*|[\s_.]+)copy(?:[\s_]*\(?\d+\)?)?$  # "x - Copy", "x - Copy (2)", "x copy", "x copy 2", "x_copy", "x.copy"
  | \s*\(copy\)$                       # "x (copy)"
  | \s*[(\[]\d+[)\]]$                  # "x (1)", "x(2)", "x [1]": a browser's or file manager's second download
""")


def is_copy_name(place: str) -> bool:
    """Whether the file name of ``place`` (a path or URL) carries a copy marker a file manager or browser adds
    (``IMG_1 (copy).jpg``, ``IMG_1 - Copy.jpg``, ``IMG_1 copy 2.jpg``, ``IMG_1_copy.jpg``, ``IMG_1(1).jpg``,
    ``Copy of IMG_1.jpg``): of byte-identical files, one without a marker represents the group."""
    name = str(place).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return bool(_COPY_NAME.search(stem))


def source_places(origins, dataset: Dataset) -> list[str]:
    """Where each source lies, independent of where the project lies: a file's path inside its class folder
    (or the dataset's imagefolder), prefixed with that folder's position in the manifest; a URL as it is."""
    import os
    from pathlib import Path

    roots = [f for c in dataset.classes for f in c.folders]
    if dataset.imagefolder is not None:
        roots.append(dataset.imagefolder)
    if dataset.labels_csv is not None:
        roots.append(dataset.labels_csv.parent)
    bases = [str(Path(r).resolve()).rstrip(os.sep) + os.sep for r in roots]  # origins are resolved paths
    out = []
    for origin in origins:
        place = origin if isinstance(origin, str) else ""
        if place and "://" not in place:
            for k, base in enumerate(bases):
                if place.startswith(base):
                    place = f"{k:04d}/{place[len(base):]}"
                    break
        out.append(place)
    return out


def _hamming(a, b) -> int | None:
    if not isinstance(a, str) or not isinstance(b, str) or len(a) != len(b):
        return None
    return bin(int(a, 16) ^ int(b, 16)).count("1")
