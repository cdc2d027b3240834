"""The reads of the review app (``dsbuild ui``): the review queue, image lookups by id, browse, runs, "more like this".

Every function takes an open :class:`~dsbuild.catalog.db.Catalog` (read-only is
enough) or the catalog's path (:func:`browse_images`, which runs the user's
``WHERE`` clause in the sandbox of :func:`~dsbuild.catalog.query.sandboxed_query`).
Values always go in as parameters; pages are cut in SQL (``LIMIT``/``OFFSET``),
so a page costs the same on a 10,000- or a 1,000,000-image catalog apart from the
scan.

The queue (:func:`queue_page`) lists, in this order (``tier``):

0. ``label``     the mislabel run's label issues (cleanlab), lowest ``label_quality`` first;
1. ``conflict``  the run's label conflicts (the same picture under another label);
2. other issue kinds a run stored (``outlier``, ...), lowest ``outlier_score`` first;
3. ``duplicate`` members of near-duplicate groups (two or more images) not listed above;
4. ``quality``   accepted images with quality flags (dark, blurry, ...) not listed above.

An image appears once, under its first tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas and the Catalog are only needed at run time
    import pandas

    from dsbuild.catalog.db import Catalog

QUEUE_KINDS = ("label", "conflict", "outlier", "duplicate", "quality")
"""Kinds of queue entries, in queue order (issue kinds other than label/conflict show as their own name)."""
DECIDED = ("relabel", "remove", "keep")
"""``last_review`` values that count as decided in the app (an ``undo`` leaves the image undecided again)."""

_FLAGS_CTE = """
WITH moved AS (SELECT unnest($moved_from::VARCHAR[]) AS old_id, unnest($moved_to::VARCHAR[]) AS new_id),
renamed AS (SELECT unnest($class_from::VARCHAR[]) AS old_label, unnest($class_to::VARCHAR[]) AS new_label),
flags AS (
    SELECT coalesce(m.new_id, r.image_id) AS image_id, r.kind, coalesce(g.new_label, r.given_label) AS given_label,
           coalesce(c.new_label, r.suggested_label) AS suggested_label, r.suggested_confidence, r.label_quality,
           r.outlier_score, r.rank, CASE r.kind WHEN 'label' THEN 0 WHEN 'conflict' THEN 1 ELSE 2 END AS tier
    FROM issue_rows r LEFT JOIN moved m ON m.old_id = r.image_id LEFT JOIN renamed c ON c.old_label = r.suggested_label
         LEFT JOIN renamed g ON g.old_label = r.given_label
    WHERE r.run_id = $run AND r.dataset = $ds AND r.is_issue
),
"""
"""The mislabel run's flags as they read today (a picture moved to its new item, a renamed class by its new name):
the queue and the more-like-this cards read them alike."""

_QUEUE_SQL = _FLAGS_CTE + """
dup_groups AS (
    SELECT dup_group FROM images WHERE dataset = $ds AND dup_group IS NOT NULL GROUP BY dup_group HAVING count(*) > 1
),
extra AS (
    SELECT image_id, 'duplicate' AS kind, NULL AS given_label, NULL AS suggested_label, NULL AS suggested_confidence,
           NULL AS label_quality, NULL AS outlier_score, NULL AS rank, 3 AS tier
    FROM images WHERE dataset = $ds AND dup_group IN (SELECT dup_group FROM dup_groups) AND status IN ('ok', 'duplicate')
    UNION ALL
    SELECT image_id, 'quality', NULL, NULL, NULL, NULL, NULL, NULL, 4
    FROM images WHERE dataset = $ds AND status = 'ok' AND len(coalesce(quality_issues, []::VARCHAR[])) > 0
),
entries AS (
    SELECT * FROM (
        SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY tier, rank NULLS LAST) AS n_entry
        FROM (SELECT * FROM flags UNION ALL SELECT * FROM extra))
    WHERE n_entry = 1
),
listed AS (
    SELECT e.tier, e.kind, e.image_id, e.given_label, e.suggested_label, e.suggested_confidence, e.label_quality,
           e.outlier_score, e.rank, im.label, im.original_label, im.split, im.status, im.origin, im.path,
           im.width, im.height, im.dup_group, im.quality_issues, im.last_review,
           coalesce(im.last_review IN ('relabel', 'remove', 'keep'), false) AS decided
    FROM entries e JOIN images im ON im.dataset = $ds AND im.image_id = e.image_id
    -- a flagged image a build set aside since the run (rejected, failed, its source removed) is no card: nothing
    -- to decide on it; one removed in review stays, decided (its undo is a key away)
    WHERE e.tier > 2 OR im.status IN ('ok', 'duplicate') OR im.reason = 'removed in review'
)
SELECT *, count(*) OVER () AS total FROM listed
WHERE ($kind IS NULL OR kind = $kind) AND ($label IS NULL OR label = $label) AND ($split IS NULL OR split = $split)
  AND ($decided IS NULL OR decided = $decided)
ORDER BY tier, label_quality NULLS LAST, outlier_score NULLS LAST, rank NULLS LAST, dup_group NULLS LAST, image_id
LIMIT $limit OFFSET $offset
"""


def _run_params(run_id: str | None, dataset: str, moved: dict[str, str] | None,
                follow: dict[str, str] | None) -> dict[str, Any]:
    moved, follow = moved or {}, follow or {}
    return {"run": run_id or "", "ds": dataset, "moved_from": list(moved), "moved_to": list(moved.values()),
            "class_from": list(follow), "class_to": list(follow.values())}


def queue_page(cat: "Catalog", dataset: str, run_id: str | None, *, kind: str | None = None, label: str | None = None,
               split: str | None = None, decided: bool | None = None, offset: int = 0, limit: int = 60,
               moved: dict[str, str] | None = None, follow: dict[str, str] | None = None) -> tuple["pandas.DataFrame", int]:
    """One page of the review queue of ``dataset`` (see the module docstring for the order) and the filtered total.

    ``run_id``: the mislabel run whose flags lead the queue (None: only duplicates and
    quality flags). Filters (None = any): ``kind`` (one of :data:`QUEUE_KINDS` or a stored
    issue kind), ``label`` (the current label), ``split``, ``decided`` (the image's latest
    review event is one of :data:`DECIDED`). Columns: tier, kind, image_id, given_label,
    suggested_label, suggested_confidence (0–1), label_quality (0–1), outlier_score,
    rank, label (current), original_label, split, status, origin, path, width, height,
    dup_group, quality_issues, last_review, decided, total.
    ``moved`` (flagged image_id → the item its picture is now) and ``follow`` (a class the run scored that is gone →
    its successor): how the run's flags read today (:func:`dsbuild.cycle.run_flags_now`); a flagged image set
    aside since (not ok or duplicate, not removed in review) is left out.
    """
    params = {**_run_params(run_id, dataset, moved, follow), "kind": kind, "label": label, "split": split,
              "decided": decided, "limit": int(limit), "offset": int(offset)}
    df = cat.con.execute(_QUEUE_SQL, params).df()
    total = int(df["total"].iloc[0]) if len(df) else _queue_total(cat, params) if offset else 0
    return df, total


def _queue_total(cat: "Catalog", params: dict[str, Any]) -> int:
    """The filtered total when the page at ``offset`` is past the end (nothing came back to read it from)."""
    first = dict(params, offset=0, limit=1)
    df = cat.con.execute(_QUEUE_SQL, first).df()
    return int(df["total"].iloc[0]) if len(df) else 0


def queue_kind_counts(cat: "Catalog", dataset: str, run_id: str | None, *, moved: dict[str, str] | None = None,
                      follow: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """kind → (entries, decided entries) over the whole queue of ``dataset`` (no filters; ``moved``, ``follow``: as
    :func:`queue_page`)."""
    sql = _QUEUE_SQL.split("SELECT *, count(*) OVER () AS total FROM listed")[0]
    rows = cat.con.execute(sql + "SELECT kind, count(*), count(*) FILTER (WHERE decided) FROM listed GROUP BY kind",
                           _run_params(run_id, dataset, moved, follow)).fetchall()
    order = {k: i for i, k in enumerate(QUEUE_KINDS)}
    return {k: (int(n), int(d)) for k, n, d in sorted(rows, key=lambda r: (order.get(r[0], 2.5), r[0]))}


def dup_siblings(cat: "Catalog", dataset: str, groups: list[str]) -> "pandas.DataFrame":
    """Members of the duplicate groups ``groups``: dup_group, image_id, label, split, status (by group, image_id)."""
    if not groups:
        import pandas as pd

        return pd.DataFrame(columns=["dup_group", "image_id", "label", "split", "status"])
    return cat.df("SELECT dup_group, image_id, label, split, status FROM images WHERE dataset = ? "
                  "AND dup_group IN (SELECT unnest(?)) ORDER BY dup_group, image_id", [dataset, list(groups)])


def image_file(cat: "Catalog", dataset: str, image_id: str) -> tuple[str, str] | None:
    """``(stored path, sha256)`` of image ``image_id`` of ``dataset``, or None (unknown id, or no stored file)."""
    rows = cat.con.execute("SELECT path, sha256 FROM images WHERE dataset = ? AND image_id = ? AND path IS NOT NULL",
                           [dataset, image_id]).fetchall()
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def image_states(cat: "Catalog", dataset: str, image_ids: list[str]) -> "pandas.DataFrame":
    """Current state of ``image_ids``: image_id, label, status, last_review, decided (see :data:`DECIDED`)."""
    return cat.current_states(dataset, image_ids)[["image_id", "label", "status", "last_review", "decided"]]


def latest_event_ids(cat: "Catalog", dataset: str, image_ids: list[str]) -> dict[str, int]:
    """image_id → the event_id of its latest label event (any action), for those of ``image_ids`` that have one."""
    rows = cat.con.execute("SELECT image_id, max(event_id) FROM label_events WHERE dataset = ? "
                           "AND image_id IN (SELECT unnest(?)) GROUP BY image_id", [dataset, list(image_ids)]).fetchall()
    return {str(i): int(e) for i, e in rows}


def standing_events(cat: "Catalog", dataset: str, image_ids: list[str]) -> dict[str, dict]:
    """image_id → the decision an undo now would take back (action, old_label, new_label, source, event_id, …): its
    latest label event not undone, or, when that is a build's follow-up of a class change, the decision under it
    (:func:`dsbuild.decisions.undo_target`), for those of ``image_ids`` that have one."""
    from dsbuild.decisions import undo_stacks, undo_target

    history = cat.df("SELECT * FROM label_history WHERE dataset = ? AND image_id IN (SELECT unnest(?)) ORDER BY event_id",
                     [dataset, list(image_ids)])
    return {iid: stack[undo_target(stack)] for iid, stack in undo_stacks(history).items() if stack}


def label_events_of(cat: "Catalog", dataset: str, *, source: str | None = None) -> "pandas.DataFrame":
    """The ``label_history`` rows of ``dataset`` (all, or those of ``source``), oldest first."""
    sql = "SELECT * FROM label_history WHERE dataset = ?"
    params: list[Any] = [dataset]
    if source is not None:
        sql += " AND source = ?"
        params.append(source)
    return cat.df(sql + " ORDER BY event_id", params)


def facets(cat: "Catalog", dataset: str) -> dict[str, list[tuple[str, str, int]]]:
    """Values of ``label``, ``split`` and ``status`` in ``dataset`` (for the filters): per column, (the value as shown,
    the ``where`` clause that selects exactly its rows, count). A missing value shows as ``-`` and selects with
    ``IS NULL`` (``split = '-'`` matched nothing — trial 10)."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    for col in ("label", "split", "status"):
        rows = cat.con.execute(f"SELECT {col}, count(*) FROM images WHERE dataset = ? GROUP BY 1 ORDER BY 1 NULLS LAST",
                               [dataset]).fetchall()
        out[col] = [("-", f"{col} IS NULL", int(n)) if v is None else (str(v), f"{col} = {sql_string(str(v))}", int(n))
                    for v, n in rows]
    return out


def all_runs(cat: "Catalog", dataset: str) -> "pandas.DataFrame":
    """Every run of ``dataset`` (train, retrain, mislabels; any status), newest first, from the ``runs`` view."""
    return cat.df("SELECT run_id, kind, arch, status, started_at, finished_at, n_train, n_valid, error_rate, accuracy, "
                  "duration_s, parent_run, error FROM runs WHERE dataset = ? ORDER BY started_at DESC", [dataset])


def run_detail(cat: "Catalog", dataset: str, run_id: str) -> dict | None:
    """The ``runs`` row of ``run_id`` in ``dataset`` as a dict (JSON columns as text), or None."""
    df = cat.df("SELECT * FROM runs WHERE dataset = ? AND run_id = ?", [dataset, run_id])
    return None if df.empty else df.iloc[0].to_dict()


def latest_model_run(cat: "Catalog", dataset: str) -> dict | None:
    """The newest ok train/retrain run of ``dataset`` with a model file: run_id, model_path, kind, params (JSON
    text: the ``learn_check`` that :func:`dsbuild.cycle.did_not_learn_note` reads); or None."""
    rows = cat.con.execute("SELECT run_id, model_path, kind, params FROM model_runs WHERE dataset = ? AND kind IN ('train', 'retrain') "
                           "AND status = 'ok' AND model_path IS NOT NULL ORDER BY started_at DESC LIMIT 1",
                           [dataset]).fetchall()
    return {"run_id": rows[0][0], "model_path": rows[0][1], "kind": rows[0][2], "params": rows[0][3]} if rows else None


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def browse_sql(dataset: str, where: str | None, *, offset: int, limit: int) -> str:
    """The browse page's SELECT over the ``images`` view of ``dataset``, filtered by a user's ``where`` clause.

    The user's clause applies to the dataset's rows only (the dataset filter is an inner
    query) and runs in the read-only sandbox; ``offset``/``limit`` are integers.
    """
    cond = f"({where})" if where and where.strip() else "true"
    return (f"SELECT image_id, label, split, status, reason, width, height, origin, count(*) OVER () AS total "
            f"FROM (SELECT * FROM images WHERE dataset = {sql_string(dataset)}) AS images WHERE {cond} "
            f"ORDER BY label, split, status, image_id LIMIT {int(limit)} OFFSET {int(offset)}")


def browse_images(path: Path, dataset: str, where: str | None, *, offset: int = 0, limit: int = 120,
                  timeout: float = 10.0) -> "pandas.DataFrame":
    """A page of ``dataset``'s images matching a user's SQL ``where`` clause, run in the read-only sandbox.

    Columns: image_id, label, split, status, reason, width, height, origin, total.
    Raises DsbuildError with DuckDB's message when the clause is not valid SQL.
    """
    from dsbuild.catalog.query import sandboxed_query

    return sandboxed_query(path, browse_sql(dataset, where, offset=offset, limit=limit), timeout=timeout)


_CARDS_SQL = _FLAGS_CTE + """
wanted AS (SELECT unnest($ids) AS image_id, generate_subscripts($ids, 1) AS pos),
first_flag AS (
    SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY tier, rank NULLS LAST) AS n_flag FROM flags)
    WHERE n_flag = 1
)
SELECT w.pos, coalesce(f.kind, '') AS kind, im.image_id, f.suggested_label, f.suggested_confidence, f.label_quality,
       im.label, im.original_label, im.split, im.status, im.origin, im.path, im.dup_group, im.quality_issues,
       im.last_review, coalesce(im.last_review IN ('relabel', 'remove', 'keep'), false) AS decided
FROM wanted w JOIN images im ON im.dataset = $ds AND im.image_id = w.image_id
LEFT JOIN first_flag f ON f.image_id = w.image_id
ORDER BY w.pos
"""


def image_cards(cat: "Catalog", dataset: str, run_id: str | None, image_ids: list[str], *,
                moved: dict[str, str] | None = None, follow: dict[str, str] | None = None) -> "pandas.DataFrame":
    """The review cards of ``image_ids`` of ``dataset``, in that order (ids not in the dataset left out): the
    queue's columns (:func:`queue_page`) that a card shows — kind ('' when the mislabel run ``run_id`` did not
    flag the image; its first flag by queue order otherwise), image_id, suggested_label, suggested_confidence,
    label_quality, label, original_label, split, status, origin, path, dup_group, quality_issues, last_review,
    decided — plus pos (the index in ``image_ids``). ``moved`` / ``follow``: as for :func:`queue_page`. The app's
    "more like this" page."""
    return cat.con.execute(_CARDS_SQL, {**_run_params(run_id, dataset, moved, follow), "ids": list(image_ids)}).df()
