"""The ``conflict`` issue finder: the same picture under different labels (a cross-label duplicate group)."""

from __future__ import annotations

from typing import Any


def find_conflict_issues(members: Any, found: Any) -> Any:
    """One ``conflict`` issue per image of a cross-label duplicate group (unless already flagged as a label issue).

    ``members``: the images of the dataset's conflicting groups (``image_id``,
    ``dup_group``, ``label``; :meth:`dsbuild.catalog.Catalog.conflict_members`).
    ``found``: the issue rows found before (an image flagged there is not flagged
    again). The suggestion is another label of the group; ranks follow ``found``'s.
    """
    import pandas as pd

    if members.empty:
        return pd.DataFrame()
    flags = found
    flagged = set(flags.loc[flags.get("is_issue", True) == True, "image_id"]) if len(flags) else set()  # noqa: E712
    rows = []
    for group, grp in members.groupby("dup_group"):
        labels = sorted(set(grp["label"]))
        for r in grp.itertuples(index=False):
            if r.image_id in flagged:
                continue
            others = [l for l in labels if l != r.label]
            rows.append({"image_id": r.image_id, "given_label": r.label, "suggested_label": others[0] if others else None,
                         "label_quality": None, "suggested_confidence": None, "ood_score": None,
                         "is_issue": True, "kind": "conflict"})
    out = pd.DataFrame(rows)
    if len(out):
        start = int(flags["rank"].max()) if len(flags) and flags["rank"].notna().any() else 0
        out["rank"] = range(start + 1, start + 1 + len(out))
    return out
