"""The rows dsbuild writes into the catalog, one definition per table: the column tuples and their builders.

* items, blobs, fetches — written by a build: every source (folders, URL lists,
  search engines) describes what it found with :func:`item_row`, :func:`blob_row`
  and :func:`fetch_row`, and the build's one writer (:class:`dsbuild.pipeline.RowWriter`)
  commits them in batches (a row is a plain dict keyed by column; hundreds per second).
* issue rows — one per image an issue finder scored (:func:`issue_frame`).
* label events — one per review decision (:func:`label_event_frame`).

The catalog (:mod:`dsbuild.catalog`) inserts exactly these columns and pads
nothing; a test checks them against the tables its migrations create. Which
columns the CLI and the review files show is :data:`LABEL_ISSUE_COLUMNS`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from dsbuild.verify.analyze import ImageRecord

ITEM_COLUMNS = ("given_split", "dataset", "image_id", "origin", "source", "engine", "query", "rank", "page_url",
                "class_label", "sha256", "status", "reason", "detail", "split", "dup_group", "dup_of", "dup_distance",
                "conflict", "phash", "src_size", "src_mtime_ns", "first_seen", "updated_at", "build_id", "format",
                "width", "height", "bytes", "warnings")
"""``items`` columns a build writes (the rest — quality flags, dataset-relative scores, ``leak_with`` — the regroup
step sets).
``format``/``width``/``height``/``bytes`` are what verification learned (a rejected file's only record of them;
``images`` takes the blob's for a stored one); ``warnings`` what decoders said without rejecting the file."""
BLOB_COLUMNS = ("sha256", "path", "bytes", "format", "width", "height", "mode", "frames", "pixel_sha", "q_dark",
                "q_light", "q_blurry", "q_low_information", "q_grayscale", "q_odd_aspect_ratio", "created_at",
                "phash_views", "eff_side")
"""``blobs`` columns; ``phash_views`` and ``eff_side`` (schema 5) are left empty by a build's writer and filled by
the near-duplicate signals stage (:mod:`dsbuild.dedup.signals`)."""
FETCH_COLUMNS = ("dataset", "url", "final_url", "engine", "query", "rank", "page_url", "label", "http_status", "bytes",
                 "content_type", "fetched_at", "outcome", "reason", "transient", "attempts", "elapsed_s", "sha256",
                 "build_id", "noai", "redirects")
ISSUE_COLUMNS = ("run_id", "dataset", "image_id", "kind", "given_label", "suggested_label", "label_quality",
                 "suggested_confidence", "ood_score", "is_issue", "rank", "outlier_score")
"""``issue_rows`` columns: one row per image a finder scored in a run. ``outlier_score`` is cleanlab's
(0–1, low = more unusual); ``ood_score`` = 1 − it, kept for old readers (deprecated)."""
LABEL_EVENT_COLUMNS = ("event_id", "dataset", "image_id", "changed_at", "source", "action", "old_label", "new_label",
                       "old_status", "new_status", "label_quality", "note")
LABEL_ISSUE_COLUMNS = ("dataset", "image_id", "path", "origin", "given_label", "suggested_label", "label_quality",
                       "rank", "run_id", "kind", "suggested_confidence", "ood_score", "current_label", "reviewed",
                       "outlier_score", "is_label_issue")
"""Columns of the ``label_issues`` / ``label_issues_all`` views, in order (schema 4 added the last two)."""
REPORT_COLUMNS = ("dataset", "image_id", "path", "origin", "given_label", "suggested_label", "label_quality", "rank",
                  "run_id", "kind", "suggested_confidence", "reviewed", "is_label_issue", "outlier_score")
"""What ``dsbuild mislabels --format csv|json`` writes: a report that is also a review decisions file. ``reviewed``: the
decision that stands on the image now (``relabelled by a person 2026-12-02``), empty when none
(:func:`dsbuild.cycle.with_reviewed`); ``is_label_issue`` and ``outlier_score``: cleanlab's names, as the
``label_issues`` view has them (trial 11, L5: an outlier row had no score to sort by)."""
REPORT_TABLE_COLUMNS = ("rank", "image_id", "given_label", "suggested_label", "label_quality", "suggested_confidence",
                        "kind", "reviewed", "origin")
"""What ``dsbuild mislabels`` shows on the terminal (``suggested_confidence``: what ``--min-confidence`` filters on)."""


def image_id_for(dataset: str, label: str, origin: str) -> str:
    """Stable id of a source: 16 hex digits of sha1(dataset, label, origin)."""
    return hashlib.sha1(f"{dataset}\0{label}\0{origin}".encode()).hexdigest()[:16]


def item_row(
    *, dataset: str, image_id: str, origin: str, source: str, label: str, rec: "ImageRecord | None",
    status: str | None = None, reason: str | None = None, detail: str | None = None,
    engine: str | None = None, query: str | None = None, rank: int | None = None, page_url: str | None = None,
    src_size: int | None = None, src_mtime_ns: int | None = None, given_split: str | None = None, build_id: int, now,
) -> dict:
    """An ``items`` row: one image source of a dataset. With ``rec`` its status/reason come from verification."""
    if rec is not None:
        status = "ok" if rec.ok else "rejected"
        reason, detail = rec.reason, rec.detail
    return {"given_split": given_split,
        "dataset": dataset, "image_id": image_id, "origin": origin, "source": source, "engine": engine,
        "query": query, "rank": rank, "page_url": page_url, "class_label": label,
        "sha256": rec.sha256 if rec else None, "status": status, "reason": reason, "detail": detail,
        "split": None, "dup_group": None, "dup_of": None, "dup_distance": None, "conflict": False,
        "phash": rec.phash if rec else None, "src_size": src_size, "src_mtime_ns": src_mtime_ns,
        "first_seen": now, "updated_at": now, "build_id": build_id,
        # what verification learned (for a rejected file the only record of it), and what decoders said
        "format": rec.format if rec else None, "width": rec.width if rec else None,
        "height": rec.height if rec else None, "bytes": (rec.bytes or None) if rec else None,
        "warnings": list(rec.warnings) if rec else [],
    }


def blob_row(rec: "ImageRecord", now) -> dict:
    """A ``blobs`` row: one stored content (sha256) with its size, format, dimensions and quality scores."""
    q = rec.quality or {}
    return {
        "sha256": rec.sha256, "path": rec.store_path, "bytes": rec.bytes, "format": rec.format,
        "width": rec.width, "height": rec.height, "mode": rec.mode, "frames": rec.frames,
        "pixel_sha": rec.pixel_sha,
        "q_dark": q.get("dark"), "q_light": q.get("light"), "q_blurry": q.get("blurry"),
        "q_low_information": q.get("low_information"), "q_grayscale": q.get("grayscale"),
        "q_odd_aspect_ratio": q.get("odd_aspect_ratio"), "created_at": now, "phash_views": None, "eff_side": None,
    }


def fetch_row(dataset: str, res: Any, link: Any, sha: str | None, build_id: int) -> dict:
    """A ``fetches`` row: one URL tried (``res``: a :class:`dsbuild.fetch.FetchResult`, ``link``: where it came from)."""
    return {
        "dataset": dataset, "url": res.url, "final_url": res.final_url, "engine": link.engine, "query": link.query,
        "rank": link.rank, "page_url": link.page_url, "label": link.label, "http_status": res.http_status,
        "bytes": res.bytes, "content_type": res.content_type, "fetched_at": res.fetched_at, "outcome": res.outcome,
        "reason": res.reason, "transient": bool(res.transient), "attempts": res.attempts, "elapsed_s": res.elapsed_s,
        "sha256": sha, "build_id": build_id, "noai": bool(getattr(res, "noai", False)),
        "redirects": getattr(res, "redirects", None),
    }


def issue_frame(rows: Any, *, run_id: str, dataset: str) -> Any:
    """The finders' issue rows as an ``issue_rows`` DataFrame: exactly :data:`ISSUE_COLUMNS`, missing ones empty.

    ``outlier_score`` and ``ood_score`` are each derived from the other when only one is given.
    """
    import pandas as pd

    frame = pd.DataFrame(rows).copy()
    frame["run_id"], frame["dataset"] = run_id, dataset
    if "outlier_score" not in frame and "ood_score" in frame:
        frame["outlier_score"] = 1.0 - pd.to_numeric(frame["ood_score"], errors="coerce")
    if "ood_score" not in frame and "outlier_score" in frame:
        frame["ood_score"] = 1.0 - pd.to_numeric(frame["outlier_score"], errors="coerce")
    for col in ISSUE_COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame[list(ISSUE_COLUMNS)]


def label_event_rows(events: list[dict], *, dataset: str, first_id: int) -> list[tuple]:
    """The rows of :func:`label_event_frame` as tuples in ``LABEL_EVENT_COLUMNS`` order (for a few events:
    an INSERT of parameters, without a DataFrame)."""
    out = []
    for k, ev in enumerate(events):
        row = {**ev, "changed_at": ev.get("at", ev.get("changed_at")), "event_id": first_id + k, "dataset": dataset}
        out.append(tuple(row.get(col) for col in LABEL_EVENT_COLUMNS))
    return out


def label_event_frame(events: list[dict], *, dataset: str, first_id: int) -> Any:
    """Review events (dicts from :func:`dsbuild.decisions.plan_events`; ``at`` → ``changed_at``) as ``label_events`` rows.

    Event ids count up from ``first_id``; columns missing from the events are empty.
    """
    import pandas as pd

    frame = pd.DataFrame(events).rename(columns={"at": "changed_at"})
    frame["event_id"] = range(first_id, first_id + len(frame))
    frame["dataset"] = dataset
    for col in LABEL_EVENT_COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame[list(LABEL_EVENT_COLUMNS)]
