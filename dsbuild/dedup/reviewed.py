"""Duplicate groups after a review decision, at once (fresh-user trial 3, finding 5).

An image removed in review is in no duplicate group (:func:`dsbuild.dedup.grouping.regroup` leaves it out), but
only a build or ``embed`` used to regroup: removing a group's representative left its copies ``duplicate`` of a
rejected image — out of export and training until then. :func:`regroup_reviewed` regroups, right after the
events of a review, the groups its removes and undos touched:

* the groups of the images removed or brought back (their ``dup_group`` as the catalog has it);
* for an image brought back (an undo of its remove), the accepted images with its content (``sha256`` or
  decoded pixels) or a perceptual hash within ``dedup.threshold`` of its own, and their groups;

with :func:`~dsbuild.dedup.grouping.regroup`'s own rules (who represents a group, exact or near duplicate, the
conflict flag), among these images only: the members of one former group stay linked to each other (they are
near duplicates of one picture), and an image brought back is linked to those it matches by content or hash.
Splits, quality flags and anything else stay as they are. Near duplicates found only by the views or the
embeddings of ``dedup.views`` / ``dedup.semantic`` that were not in the image's group are joined by the next build
or ``embed``, as before.
"""

from __future__ import annotations

from typing import Iterable

from dsbuild.catalog import Catalog
from dsbuild.manifest import Dataset

_GROUP_COLUMNS = ("image_id", "status", "reason", "dup_group", "dup_of", "dup_distance", "conflict")


def regroup_reviewed(cat: Catalog, ds: Dataset, image_ids: Iterable[str]) -> int:
    """Regroup the duplicate groups that review decisions on ``image_ids`` (removes, undos) touched (module doc);
    write the changed group columns of ``ds``'s items; return how many items changed."""
    import numpy as np

    from dsbuild.dedup.grouping import regroup
    from dsbuild.verify import hashing

    wanted = set(map(str, image_ids))
    if not wanted:
        return 0
    # A review app removes one image per key press: one in no group and none brought back → nothing to read.
    state = cat.current_states(ds.name, sorted(wanted))
    if not state["status"].isin(["ok", "duplicate"]).any() and not cat.any_grouped(ds.name, wanted):
        return 0
    items = cat.dataset_items(ds.name).reset_index(drop=True)
    if items.empty:
        return 0
    live = (items["status"].isin(["ok", "duplicate"]) & ~items["removed"].fillna(False).astype(bool)).to_numpy()
    ids = items["image_id"].astype(str).to_numpy()
    touched = np.isin(ids, list(wanted))
    groups = set(items.loc[touched & items["dup_group"].notna().to_numpy(), "dup_group"])
    back = np.flatnonzero(touched & live)
    links: set[tuple[int, int]] = set()
    if len(back):
        sha = items["sha256"].to_numpy(dtype=object)
        pix = items["pixel_sha"].to_numpy(dtype=object)
        phash = items["phash"].to_numpy(dtype=object)
        near = ds.dedup.near and ds.dedup.threshold > 0
        for i in back:
            same = live & ((sha == sha[i]) | (isinstance(pix[i], str) and (pix == pix[i])))
            match = set(np.flatnonzero(same)) - {i}
            if near and isinstance(phash[i], str) and not hashing.is_degenerate(phash[i]):
                for j in np.flatnonzero(live):
                    d = _hamming(phash[i], phash[j])
                    if j != i and d is not None and d <= ds.dedup.threshold and not hashing.is_degenerate(phash[j]):
                        match.add(int(j))
            for j in match:
                links.add((min(int(i), int(j)), max(int(i), int(j))))
                if isinstance(items.at[j, "dup_group"], str):
                    groups.add(items.at[j, "dup_group"])
    rows = np.flatnonzero(touched | items["dup_group"].isin(groups).to_numpy() |
                          np.isin(np.arange(len(items)), [k for pair in links for k in pair]))
    if not groups and not links:
        return 0
    sub = items.iloc[rows].reset_index(drop=True)
    pos = {int(r): k for k, r in enumerate(rows)}
    member = sub["dup_group"].to_numpy(dtype=object)
    sub_live = live[rows]
    pairs = {(pos[a], pos[b]) for a, b in links}
    for g in groups:
        members = [k for k in range(len(sub)) if member[k] == g and sub_live[k]]
        pairs.update((a, b) for n, a in enumerate(members) for b in members[n + 1:])
    ph = sub["phash"].to_numpy(dtype=object)
    near_pairs = np.array([(a, b, d if (d := _hamming(ph[a], ph[b])) is not None else ds.dedup.threshold)
                           for a, b in sorted(pairs)], dtype=np.int64).reshape(-1, 3)
    updates, _ = regroup(sub, ds, near_pairs=near_pairs if len(near_pairs) else None, keep_splits=True)
    updates = updates.set_index("image_id")
    before = sub.set_index("image_id")
    out = updates.loc[:, ["status", "reason", "dup_group", "dup_of", "dup_distance", "conflict"]].copy()
    # Only the grouping changes here: an image whose status regroup would change otherwise (a quality setting
    # changed since the build) keeps its status and reason until the next build.
    grouped = out["status"].isin(["ok", "duplicate"]) & before["status"].reindex(out.index).isin(["ok", "duplicate"])
    out.loc[~grouped, "status"] = before.loc[out.index[~grouped], "status"]
    out.loc[~grouped, "reason"] = before.loc[out.index[~grouped], "reason"]
    return cat.update_groups(ds.name, out.reset_index()[list(_GROUP_COLUMNS)])


def _hamming(a, b) -> int | None:
    if not isinstance(a, str) or not isinstance(b, str) or len(a) != len(b):
        return None
    return bin(int(a, 16) ^ int(b, 16)).count("1")
