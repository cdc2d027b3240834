"""HTML reports: the mislabel report and the duplicate groups page, from jinja2 templates.

* :func:`mislabel_html` — the mislabel report: thumbnails, given → suggested
  label, scores, origin links, sortable and filterable, with a decision
  builder that downloads a ``decisions.csv`` for ``dsbuild review``.
* :func:`duplicates_html` — near-duplicate groups side by side, label
  conflicts first.
* :func:`similar_html` — the images most similar to one (``dsbuild similar``).

The pages are ``templates/*.html.j2`` rendered with autoescape on: labels,
paths and URLs come from users and the web, and every value is escaped by
jinja2, never by hand. An origin becomes a link only when it is an
``http``/``https`` URL with a host (:func:`safe_link`). The pages are
self-contained: ``templates/report.css`` and ``templates/mislabels.js``
(package data) are inlined, thumbnails are base64 JPEG ``data:`` URIs
(≤128 px, EXIF orientation applied), nothing is fetched from the network, and
a Content-Security-Policy allows only ``data:`` images and this page's own
style and script (by hash). Every file is written atomically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dsbuild.render.figures import confusion_bytes
from dsbuild.render.thumbs import ThumbCache
from dsbuild.render.values import is_missing
from dsbuild.store import atomic_write

if TYPE_CHECKING:  # imported lazily at run time
    import jinja2
    import pandas

TEMPLATES = Path(__file__).parent / "templates"
"""The page templates (``*.html.j2``) and the inlined ``report.css`` / ``mislabels.js`` (package data)."""

KIND_TITLES = {
    "label": "cleanlab: the out-of-sample model disagrees with the given label",
    "conflict": "the same picture (near-duplicate group) carries another label",
    "outlier": "fits no class well (cleanlab's outlier score: low = unusual)",
    "ood": "fits no class well (out-of-distribution score; runs of an older dsbuild)",
}


@lru_cache(maxsize=1)
def environment() -> "jinja2.Environment":
    """The jinja2 environment of the reports: templates from :data:`TEMPLATES`, autoescape on, undefined is an error."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _page(template: str, *, title: str, script: str | None = None, **context: Any) -> str:
    """A complete page from ``template``; the CSP admits data: images and the inlined CSS and script only (by hash)."""
    css = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    js = (TEMPLATES / script).read_text(encoding="utf-8") if script else ""

    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"

    csp = (f"default-src 'none'; img-src data:; style-src {sha(css)}; "
           f"script-src {sha(js) if js else chr(39) + 'none' + chr(39)}; base-uri 'none'; form-action 'none'")
    return environment().get_template(template).render(title=title, csp=csp, css=css, script=js, **context)


def _text(value: Any) -> str:
    return "" if is_missing(value) else str(value)


def _link_parts(url: Any, text: str | None = None) -> tuple[str, str, bool] | None:
    """(url, label, is a link) of an origin: a link only for http(s) URLs with a host; None when empty."""
    if is_missing(url) or not str(url).strip():
        return None
    raw = str(url).strip()
    try:
        parts = urlsplit(raw)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    return raw, _shorten_url(raw) if text is None else text, ok


def safe_link(url: Any, *, text: str | None = None) -> str:
    """An ``<a>`` for http(s) URLs with a host; anything else (``javascript:``, ``data:``, paths) as escaped text."""
    parts = _link_parts(url, text)
    return "" if parts is None else str(environment().get_template("macros.html.j2").module.link(*parts))


def _shorten_url(raw: str, limit: int = 48) -> str:
    return raw if len(raw) <= limit else raw[: limit // 2 - 1] + "…" + raw[-(limit // 2):]


def _fmt(value: Any, spec: str) -> str:
    if is_missing(value):
        return "—"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _num_attr(value: Any) -> str:
    if is_missing(value):
        return ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(v) if math.isfinite(v) else ""


# --------------------------------------------------------------------------- mislabel report


def _origin_name(origin: Any) -> tuple[str, str] | None:
    """A card's name for an image: its origin's file name and (on hover) the whole path or URL; None without one."""
    if is_missing(origin) or not str(origin):
        return None
    text = str(origin)
    return text.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or text, text


def mislabel_html(issues: "pandas.DataFrame", *, dataset: str, run: dict, out: Path,
                  top_losses: bytes | None = None) -> Path:
    """Write the mislabel report for ``issues`` to ``out`` (atomically); return ``out``.

    ``issues``: one row per flagged image, most likely wrong first. Required
    columns ``image_id``, ``given_label``, ``suggested_label``; used when present:
    ``path`` (thumbnail), ``origin`` (link when http/https, else shown as text),
    ``kind`` (``label`` | ``conflict`` | ``outlier``; default ``label``), ``rank``,
    ``label_quality`` (0–1), ``suggested_confidence`` (0–1), ``outlier_score``
    (0–1, cleanlab's: low = unusual; else 1 − ``ood_score``, the old name),
    ``current_label`` (shown when it differs from the given label: reviewed since).
    ``run``: ``run_id`` and optionally ``arch``, ``confusion`` (``[actual][predicted]``
    counts, a list or JSON text) with ``classes`` (embedded as a confusion-matrix
    figure) and any other scalar fields (shown in the summary). ``top_losses``: the
    top-losses grid (PNG bytes, :func:`dsbuild.render.figures.top_losses_bytes`),
    embedded beside the confusion matrix.
    """
    missing = {"image_id", "given_label", "suggested_label"} - set(issues.columns)
    if missing:
        raise ValueError(f"issues needs columns image_id, given_label, suggested_label; missing {sorted(missing)}")
    records = issues.to_dict("records")
    kinds = [str(r.get("kind")) if not is_missing(r.get("kind")) else "label" for r in records]
    counts = {k: kinds.count(k) for k in dict.fromkeys(["label", "conflict", "outlier", *kinds])}
    thumbs = ThumbCache()
    summary = [("dataset", dataset)] + [(key.replace("_", " "), _text(value)) for key, value in run.items()
                                        if key not in ("confusion", "classes") and not isinstance(value, (dict, list, tuple))]
    if "reviewed" in issues:
        done = [str(v) for v in issues["reviewed"] if isinstance(v, str) and v]
        summary.append(("already reviewed", f"{len(done)} of {len(records)} flagged images "
                        f"({sum(' by a person ' in v for v in done)} by a person)"))
    rows = []
    for i, (r, kind) in enumerate(zip(records, kinds)):
        iid, given, sugg = str(r["image_id"]), r.get("given_label"), r.get("suggested_label")
        current, rank, conf = r.get("current_label"), r.get("rank"), r.get("suggested_confidence")
        outlier = r.get("outlier_score")
        if is_missing(outlier) and not is_missing(r.get("ood_score")):
            outlier = 1.0 - float(r["ood_score"])
        rows.append({
            "kind": kind, "image_id": iid, "given": _text(given), "suggested": _text(sugg),
            "rank": _text(rank) or str(i + 1), "rank_v": _num_attr(rank) or repr(float(i + 1)),
            "thumb": thumbs.get(r.get("path")), "alt": f"{iid}: {given}",
            "now": _text(current) if not is_missing(current) and str(current) != str(given) else "",
            "reviewed": _text(r.get("reviewed")) if isinstance(r.get("reviewed"), str) else "",
            "quality": _fmt(r.get("label_quality"), ".3f"), "quality_v": _num_attr(r.get("label_quality")),
            "confidence": _fmt(conf, ".1%"), "confidence_v": _num_attr(conf),
            "outlier": _fmt(outlier, ".3f"), "outlier_v": _num_attr(outlier),
            "origin": _text(r.get("origin")), "link": _link_parts(r.get("origin")),
        })
    figure, scored = None, 0
    confusion, classes = run.get("confusion"), run.get("classes")
    if isinstance(confusion, str):
        try:
            confusion = json.loads(confusion)
        except ValueError:
            confusion = None
    if confusion and classes:
        figure = "data:image/png;base64," + base64.b64encode(confusion_bytes(confusion, list(classes))).decode("ascii")
        scored = sum(map(sum, confusion))
    losses = "data:image/png;base64," + base64.b64encode(top_losses).decode("ascii") if top_losses else None
    columns = [("#", "num"), ("image", ""), ("image_id", "text"), ("kind", "text"), ("given → suggested", "text"),
               ("label quality", "num"), ("confidence", "num"), ("outlier score", "num"), ("origin", "text"),
               ("decision", "")]
    page = _page("mislabels.html.j2", title=f"dsbuild mislabels — {dataset}", script="mislabels.js",
                 dataset=dataset, summary=summary, counts=counts, kind_titles=KIND_TITLES, rows=rows,
                 missing_thumbs=sum(r["thumb"] is None for r in rows), figure=figure, run_id=_text(run.get("run_id")),
                 scored=scored, top_losses=losses, columns=columns,
                 example=next((str(x) for x in issues["suggested_label"] if not is_missing(x)), "LABEL"))
    return atomic_write(Path(out), page)


# --------------------------------------------------------------------------- duplicate groups


def duplicates_html(groups: "pandas.DataFrame", *, dataset: str, out: Path, max_groups: int | None = 1000,
                    pairs: "pandas.DataFrame | None" = None) -> Path:
    """Write duplicate groups as thumbnails side by side to ``out`` (atomically); return ``out``.

    ``groups``: one row per member image with columns ``dup_group``,
    ``image_id``, ``path``, ``label``, ``split``, ``status``, ``width``,
    ``height``, ``distance_to_rep`` (Hamming distance to the representative;
    the catalog's ``dup_distance`` is accepted too) and ``is_representative``
    (bool; when absent, a member with an empty ``dup_of`` is the representative).
    Groups with more than one distinct label (label conflicts) come first and
    are marked; groups spread over several splits are marked as leaks. Then
    larger groups first. At most ``max_groups`` groups are drawn (None: all);
    the page says how many were left out.

    ``pairs`` (optional): near-duplicate pairs that lie in different splits without a group joining them
    (:meth:`~dsbuild.catalog.Catalog.leak_pair_members`: ``pair``, ``image_id``, ``path``, ``label``, ``split``,
    ``status``, ``width``, ``height``, ``origin``; one row per image), drawn after the groups, all of them.
    """
    import pandas as pd

    df = groups.copy()
    if "distance_to_rep" not in df and "dup_distance" in df:
        df["distance_to_rep"] = df["dup_distance"]
    if "is_representative" not in df and "dup_of" in df:
        df["is_representative"] = df["dup_of"].isna()
    need = {"dup_group", "image_id", "path", "label"}
    if need - set(df.columns):
        raise ValueError(f"groups needs columns {sorted(need)} (+ split, status, width, height, distance_to_rep, "
                         f"is_representative); missing {sorted(need - set(df.columns))}")
    for col in ("split", "status", "width", "height", "distance_to_rep", "is_representative"):
        if col not in df:
            df[col] = None
    df = df[df["dup_group"].notna()]
    thumbs = ThumbCache()
    cards = []
    for gid, grp in df.groupby("dup_group", sort=False):
        labels = sorted({str(x) for x in grp["label"] if not is_missing(x)})
        splits = sorted({str(x) for x in grp["split"] if not is_missing(x)})
        rep = grp["is_representative"].fillna(False).astype(bool)
        dist = pd.to_numeric(grp["distance_to_rep"], errors="coerce").fillna(-1)
        grp = grp.assign(_rep=~rep, _d=dist).sort_values(["_rep", "_d", "image_id"], kind="stable")
        cards.append((len(labels) > 1, len(splits) > 1, len(grp), str(gid), gid, grp, labels, splits))
    cards.sort(key=lambda c: (not c[0], -c[2], c[3]))
    shown = cards if max_groups is None else cards[:max_groups]

    def member(r: dict) -> dict:
        size_txt = (f"{int(r['width'])}×{int(r['height'])}" if not is_missing(r.get("width"))
                    and not is_missing(r.get("height")) else "")
        return {
            "thumb": thumbs.get(r.get("path")), "alt": f"{r['image_id']}: {r['label']}", "label": _text(r["label"]),
            "image_id": _text(r["image_id"]), "origin": _origin_name(r.get("origin")),
            "details": " · ".join(x for x in (_text(r.get("split")), _text(r.get("status")), size_txt) if x),
            "representative": bool(r.get("is_representative")) and not is_missing(r.get("is_representative")),
            "distance": _fmt(r.get("distance_to_rep"), ".0f") if not is_missing(r.get("distance_to_rep")) else "",
        }

    page_groups = [{"id": _text(gid), "size": size, "conflict": conflict, "leak": leak, "labels": labels,
                    "splits": splits, "members": [member(r) for r in grp.to_dict("records")]}
                   for conflict, leak, size, _, gid, grp, labels, splits in shown]
    page_pairs = []
    if pairs is not None and len(pairs):
        for pid, two in pairs.groupby("pair", sort=True):
            labels = sorted({str(x) for x in two["label"] if not is_missing(x)})
            page_pairs.append({"id": _text(pid), "conflict": len(labels) > 1, "labels": labels,
                               "splits": sorted({str(x) for x in two["split"] if not is_missing(x)}),
                               "members": [member(r) for r in two.to_dict("records")]})
    page = _page("duplicates.html.j2", title=f"dsbuild duplicates — {dataset}", dataset=dataset,
                 n_groups=len(cards), n_images=len(df), n_conflicts=sum(c[0] for c in cards),
                 n_leaks=sum(c[1] for c in cards), shown=len(shown), groups=page_groups, pairs=page_pairs)
    return atomic_write(Path(out), page)


def similar_html(rows: "pandas.DataFrame", *, dataset: str, query: str, out: Path) -> Path:
    """Write ``dsbuild similar``'s rows (:data:`dsbuild.similar.SIMILAR_COLUMNS`) as thumbnails to ``out`` (atomically)."""
    thumbs = ThumbCache()
    members = [{
        "thumb": thumbs.get(r.get("path")), "alt": f"{r['image_id']}: {r['label']}", "rank": int(r["rank"]),
        "label": _text(r["label"]), "image_id": _text(r["image_id"]), "similarity": _fmt(r.get("similarity"), ".3f"),
        "details": " · ".join(x for x in (_text(r.get("split")), _text(r.get("status"))) if x),
    } for r in rows.to_dict("records")]
    page = _page("similar.html.j2", title=f"dsbuild similar — {dataset}", dataset=dataset, query=query,
                 n=len(members), members=members)
    return atomic_write(Path(out), page)
