"""The ``label`` issue finder: cleanlab's label quality on out-of-sample probabilities.

:func:`find_label_issues` takes the :class:`~dsbuild.model.oof.OOFResult` of
:func:`dsbuild.model.oof.out_of_fold_probs` and ranks the images whose given
label the probabilities contradict (``cleanlab.rank.get_label_quality_scores``; flags by
:func:`dsbuild.model.trust.flag_label_issues` or a ``cleanlab.filter.find_label_issues``
method), suggests the best out-of-sample
class, adds cleanlab's out-of-distribution score, and honours earlier ``keep``
reviews. cleanlab is imported inside the function.
"""

from __future__ import annotations

from typing import Any

from dsbuild.errors import DsbuildError
from dsbuild.model.oof import OOFResult


def find_label_issues(df: Any, oof: OOFResult, *, reviewed_keep: dict[str, float] | None = None,
                      keep_margin: float = 0.2, filter_by: str = "dsbuild") -> Any:
    """Rank likely label errors from out-of-sample probabilities.

    ``df``: the images (needs ``image_id``; its ``label`` column, when present, must match
    what ``oof`` was scored against, otherwise the labels changed since and the scores
    are stale). ``reviewed_keep``: image_id → label_quality when a person reviewed the
    image and kept its label; such an image is flagged again only when its new
    label_quality is below the old one minus ``keep_margin`` (default 0.2).
    ``filter_by``: ``"dsbuild"`` (default) — :func:`dsbuild.model.trust.flag_label_issues`:
    the out-of-fold prediction is another class and the label's out-of-fold probability is
    below 0.3 (chosen by bench/real_noise.py and bench/mislabels.py); or any method of
    cleanlab's ``find_label_issues`` (``prune_by_noise_rate``, ``both``, ...).

    Returns one row per image of ``oof`` (issues first, by rank) with columns:
    ``image_id``; ``kind`` (``"label"``); ``given_label``; ``suggested_label`` (best
    out-of-sample class; for a flagged image whose best class is its own label, the
    best other class); ``suggested_confidence`` (out-of-sample probability of the
    suggestion); ``label_quality`` (cleanlab self-confidence, 0–1, low = likely wrong);
    ``is_issue`` (cleanlab flags it and no keep review holds it back); ``suppressed``
    (cleanlab flags it but a keep review holds); ``ood_score`` (0–1, high = fits no class
    well: 1 − cleanlab's OutOfDistribution score on the probabilities); ``rank`` (1 = most
    likely wrong among issues; missing for non-issues).
    """
    import numpy as np
    import pandas as pd
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores

    if "label" in df.columns:
        current = dict(zip(df["image_id"].astype(str), df["label"].astype(str)))
        stale = [i for i, lab in zip(oof.image_ids, oof.labels) if i in current and current[i] != lab]
        if stale:
            raise DsbuildError(f"{len(stale)} image(s) changed label since they were scored (e.g. {stale[0]}) — score again")
    labels = oof.label_index()
    probs = np.asarray(oof.pred_probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    if filter_by == "dsbuild":
        from dsbuild.model.trust import flag_label_issues

        flagged = flag_label_issues(labels, probs)
    else:
        flagged = np.asarray(cl_find(labels=labels, pred_probs=probs, filter_by=filter_by))
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    ood = 1.0 - OutOfDistribution().fit_score(pred_probs=probs, labels=labels, verbose=False)
    best = probs.argmax(1)
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1.0
    suggested = np.where(flagged & (best == labels), other.argmax(1), best)
    keep = reviewed_keep or {}
    suppressed = np.array([
        bool(flag) and i in keep and not (q < float(keep[i]) - keep_margin)
        for i, flag, q in zip(oof.image_ids, flagged, quality)
    ])
    issue = flagged & ~suppressed
    out = pd.DataFrame({
        "image_id": list(oof.image_ids),
        "kind": "label",
        "given_label": list(oof.labels),
        "suggested_label": [oof.classes[j] for j in suggested],
        "suggested_confidence": probs[np.arange(len(labels)), suggested],
        "label_quality": quality,
        "is_issue": issue,
        "suppressed": suppressed,
        "ood_score": ood,
    })
    out = out.sort_values(["is_issue", "label_quality", "image_id"], ascending=[False, True, True], kind="stable")
    out["rank"] = pd.array([r + 1 if flag else None for r, flag in enumerate(out["is_issue"])], dtype="Int64")
    return out.reset_index(drop=True)
