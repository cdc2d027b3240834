"""The ``outlier`` issue finder: images unlike the rest of the dataset, from their embeddings.

The build scores every accepted image (:func:`dsbuild.dedup.signals.outlier_scores`:
cleanlab's ``OutOfDistribution`` on the frozen ImageNet embeddings — ``outlier_score`` in
(0, 1], low = more unusual — and cleanlab Datalab's IQR rule for the flag) and keeps the
scores in the catalog (``images.outlier_score``, ``images.is_outlier``). This finder turns
the flagged ones into issue rows of kind ``outlier`` for the mislabel report and review.
"""

from __future__ import annotations

from typing import Any


def find_outlier_issues(scored: Any, images: Any, found: Any = None) -> Any:
    """Issue rows (kind ``outlier``) for the flagged images among ``images``, most unusual first.

    ``scored``: ``image_id``, ``outlier_score``, ``is_outlier`` (the catalog's, from the last
    build); ``images``: the labelled images of the run (``image_id``, ``label``). Rows:
    ``image_id``, ``kind``, ``given_label``, ``outlier_score``, ``is_issue`` (True), ``rank``
    (after the ranks of ``found``, the rows of the finders before; most unusual first). Empty when the build computed no scores (``dedup.semantic = false``).
    """
    import pandas as pd

    cols = ["image_id", "kind", "given_label", "outlier_score", "is_issue", "rank"]
    if scored is None or len(scored) == 0 or len(images) == 0:
        return pd.DataFrame(columns=cols)
    labels = dict(zip(images["image_id"], images["label"]))
    flagged = scored[scored["is_outlier"].fillna(False).astype(bool) & scored["image_id"].isin(labels)]
    flagged = flagged.sort_values(["outlier_score", "image_id"], kind="stable")
    start = int(found["rank"].max()) if found is not None and len(found) and "rank" in found and found["rank"].notna().any() else 0
    return pd.DataFrame({
        "image_id": flagged["image_id"].to_numpy(),
        "kind": "outlier",
        "given_label": [labels[i] for i in flagged["image_id"]],
        "outlier_score": flagged["outlier_score"].to_numpy(dtype=float),
        "is_issue": True,
        "rank": pd.array(range(start + 1, start + len(flagged) + 1), dtype="Int64"),
    }, columns=cols)
