"""The ``conflict`` issue finder: the same picture under different labels (a cross-label duplicate group)."""

from __future__ import annotations

from typing import Any


def find_conflict_issues(members: Any, found: Any, oof: Any = None) -> Any:
    """One ``conflict`` issue per image of a cross-label duplicate group (unless already flagged as a label issue).

    ``members``: the images of the dataset's conflicting groups (``image_id``,
    ``dup_group``, ``label``, optionally ``status`` and ``sha256``, which orders the
    rows; :meth:`dsbuild.catalog.Catalog.conflict_members`).
    ``found``: the issue rows found before (an image flagged there is not flagged
    again); ranks follow ``found``'s. ``oof``: the out-of-sample probabilities
    (:class:`~dsbuild.model.oof.OOFResult`) of the images a model may learn from.

    A group is one picture, so it gets one piece of advice, like every other flag
    from the out-of-fold probabilities: those of its scored members (the group's
    representative; averaged if several) give every member the same
    ``suggested_label`` (the best class) and ``suggested_confidence`` (its
    probability), and each member's ``label_quality`` is the probability of its own
    label (cleanlab's self-confidence). A member whose label is the suggestion is never
    offered its own label (trial 11, M5: a row "cat → cat" whose relabel review refused):
    it has no row: the copies under the other labels are the ones to look at (their rows
    here, or their label flags), and their rows name the suggestion. Without
    probabilities for the group (none of it scored) the suggestion and scores are
    missing: a person decides.
    """
    import numpy as np
    import pandas as pd

    if members.empty:
        return pd.DataFrame()
    flags = found
    flagged = set(flags.loc[flags.get("is_issue", True) == True, "image_id"]) if len(flags) else set()  # noqa: E712
    probs, index, classes = None, {}, []
    if oof is not None:
        probs = np.asarray(oof.probs, dtype=np.float64)
        probs = probs / probs.sum(1, keepdims=True)
        index = {str(i): k for k, i in enumerate(oof.image_ids)}
        classes = [str(c) for c in oof.classes]
    rows = []
    # Groups and their members in content order (group ids and image ids hash absolute paths): the rows and
    # their ranks come out the same wherever the project lies.
    content = members.assign(_sha=members["sha256"].fillna("") if "sha256" in members else "")
    content["_first"] = content.groupby("dup_group")["_sha"].transform("min")
    content = content.sort_values(["_first", "_sha", "label", "status", "image_id"], kind="stable")
    for group, grp in content.groupby("_first", sort=False):
        scored = [index[str(i)] for i in grp["image_id"] if str(i) in index]
        p = probs[scored].mean(0) if scored and probs is not None else None
        best = int(p.argmax()) if p is not None else None
        suggestion = classes[best] if best is not None else None
        for r in grp.itertuples(index=False):
            if r.image_id in flagged:
                continue
            agrees = suggestion is not None and str(r.label) == suggestion
            if agrees:  # a copy under another label (a group has two or more) is the one to relabel: its row says so
                continue
            own = classes.index(str(r.label)) if p is not None and str(r.label) in classes else None
            rows.append({"image_id": r.image_id, "given_label": r.label,
                         "suggested_label": suggestion,
                         "label_quality": float(p[own]) if own is not None else (0.0 if p is not None else None),
                         "suggested_confidence": float(p[best]) if best is not None else None,
                         "ood_score": None, "is_issue": True, "kind": "conflict"})
    out = pd.DataFrame(rows)
    if len(out):
        start = int(flags["rank"].max()) if len(flags) and flags["rank"].notna().any() else 0
        out["rank"] = range(start + 1, start + 1 + len(out))
    return out
