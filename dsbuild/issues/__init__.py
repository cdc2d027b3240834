"""issues/: a registry of issue finders, in the shape of cleanlab's Datalab.

Each finder looks at the dataset from one angle and returns issue rows (one per
image it scored: ``image_id``, ``kind``, ``is_issue``, its scores, ``rank``);
:func:`run_finders` runs the finders in registry order, each seeing the rows
found before it, and returns them together. The model loop
(:func:`dsbuild.cycle.find_issues`) gathers the :class:`IssueContext` from
the catalog and the out-of-fold scorer, and stores the rows of a run.

==============  ==================================================================
``label``       cleanlab on out-of-sample probabilities (:mod:`.label`)
``conflict``    the same picture under different labels, advised by its out-of-fold probabilities (:mod:`.conflict`)
``outlier``     images unlike the rest: the build's embedding outlier scores (:mod:`.outlier`)
==============  ==================================================================

A new finder (outlier, near-duplicate, quality, embeddings) is a function
``finder(ctx: IssueContext, found: DataFrame) -> DataFrame`` added to
:data:`ISSUE_FINDERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsbuild.errors import DsbuildError, did_you_mean
from dsbuild.issues.conflict import find_conflict_issues
from dsbuild.issues.label import find_label_issues
from dsbuild.issues.outlier import find_outlier_issues


@dataclass(frozen=True, kw_only=True)
class IssueContext:
    """What the finders look at.

    images: the labelled images (``image_id``, ``path``, ``label``, ``split``).
    oof: out-of-sample probabilities of those images (:class:`~dsbuild.model.oof.OOFResult`), or None.
    reviewed_keep: image_id → label quality when a reviewer last kept the image's label.
    conflict_members: images of the dataset's cross-label duplicate groups.
    outliers: the build's embedding outlier scores (``image_id``, ``outlier_score``, ``is_outlier``), or None.
    """

    images: Any
    oof: Any = None
    reviewed_keep: dict[str, float] = field(default_factory=dict)
    conflict_members: Any = None
    outliers: Any = None


def _label(ctx: IssueContext, found: Any) -> Any:
    if ctx.oof is None:
        raise DsbuildError("the label issue finder needs out-of-sample probabilities — score the images first")
    rows = find_label_issues(ctx.images, ctx.oof, reviewed_keep=ctx.reviewed_keep).copy()
    rows["kind"] = rows.get("kind", "label")
    return rows


def _conflict(ctx: IssueContext, found: Any) -> Any:
    import pandas as pd

    members = ctx.conflict_members if ctx.conflict_members is not None else pd.DataFrame()
    return find_conflict_issues(members, found, ctx.oof)


def _outlier(ctx: IssueContext, found: Any) -> Any:
    return find_outlier_issues(ctx.outliers, ctx.images, found)


ISSUE_FINDERS: dict[str, Callable[[IssueContext, Any], Any]] = {"label": _label, "conflict": _conflict,
                                                                 "outlier": _outlier}
"""Issue finders by kind, in the order they run: ``finder(ctx, found_so_far) -> issue rows``."""


def run_finders(ctx: IssueContext, kinds: Sequence[str] | None = None) -> Any:
    """Run the finders ``kinds`` (default: all, in registry order); return their issue rows together."""
    import pandas as pd

    rows = pd.DataFrame()
    for kind in kinds or list(ISSUE_FINDERS):
        finder = ISSUE_FINDERS.get(kind)
        if finder is None:
            raise DsbuildError(f"unknown issue kind {kind!r}{did_you_mean(kind, ISSUE_FINDERS)} — "
                               f"known: {', '.join(ISSUE_FINDERS)}")
        found = finder(ctx, rows)
        if len(found):
            rows = pd.concat([rows, found], ignore_index=True) if len(rows) else found
    return rows
