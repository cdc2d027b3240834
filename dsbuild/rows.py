"""Catalog rows as the build writes them: items, blobs, fetches.

Every source (folders, URL lists, search engines) describes what it found with
these builders, and the build's one writer (:class:`dsbuild.build.RowWriter`)
commits them in batches. A row is a plain dict keyed by the catalog column
name (:mod:`dsbuild.catalog.schema` holds the tables).
"""

from __future__ import annotations

import hashlib
from typing import Any

from dsbuild.verify.analyze import ImageRecord


def image_id_for(dataset: str, label: str, origin: str) -> str:
    """Stable id of a source: 16 hex digits of sha1(dataset, label, origin)."""
    return hashlib.sha1(f"{dataset}\0{label}\0{origin}".encode()).hexdigest()[:16]


def item_row(
    *, dataset: str, image_id: str, origin: str, source: str, label: str, rec: ImageRecord | None,
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


def blob_row(rec: ImageRecord, now) -> dict:
    """A ``blobs`` row: one stored content (sha256) with its size, format, dimensions and quality scores."""
    q = rec.quality or {}
    return {
        "sha256": rec.sha256, "path": rec.store_path, "bytes": rec.bytes, "format": rec.format,
        "width": rec.width, "height": rec.height, "mode": rec.mode, "frames": rec.frames,
        "pixel_sha": rec.pixel_sha,
        "q_dark": q.get("dark"), "q_light": q.get("light"), "q_blurry": q.get("blurry"),
        "q_low_information": q.get("low_information"), "q_grayscale": q.get("grayscale"),
        "q_odd_aspect_ratio": q.get("odd_aspect_ratio"), "created_at": now,
    }


def fetch_row(dataset: str, res: Any, link: Any, sha: str | None, build_id: int) -> dict:
    """A ``fetches`` row: one URL tried (``res``: a :class:`dsbuild.fetch.FetchResult`, ``link``: where it came from)."""
    return {
        "dataset": dataset, "url": res.url, "final_url": res.final_url, "engine": link.engine, "query": link.query,
        "rank": link.rank, "page_url": link.page_url, "label": link.label, "http_status": res.http_status,
        "bytes": res.bytes, "content_type": res.content_type, "fetched_at": res.fetched_at, "outcome": res.outcome,
        "reason": res.reason, "transient": bool(res.transient), "attempts": res.attempts, "elapsed_s": res.elapsed_s,
        "sha256": sha, "build_id": build_id,
    }
