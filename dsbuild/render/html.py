"""HTML reports: the mislabel report and the duplicate groups page.

* :func:`mislabel_html` — the mislabel report: thumbnails, given → suggested
  label, scores, origin links, sortable and filterable, with a decision
  builder that downloads a ``decisions.csv`` for ``dsbuild review``.
* :func:`duplicates_html` — near-duplicate groups side by side, label
  conflicts first.

HTML pages are self-contained: CSS and JS are inline, thumbnails are base64
JPEG ``data:`` URIs (≤128 px, EXIF orientation applied), nothing is fetched
from the network. Labels, paths and URLs come from users and the web, so every
string goes through :func:`html.escape`; an origin becomes a link only when it
is an ``http``/``https`` URL, and a Content-Security-Policy that allows only
``data:`` images and this page's own script (by hash) backs that up.

Every file is written atomically (temporary file in the same folder, then
rename), so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dsbuild.render.figures import confusion_bytes
from dsbuild.render.thumbs import Thumb, ThumbCache
from dsbuild.render.values import is_missing
from dsbuild.store import atomic_write

if TYPE_CHECKING:  # imported lazily at run time
    import pandas


def _img_tag(thumb: Thumb | None, alt: str) -> str:
    if thumb is None:
        return '<span class="noimg">no image</span>'
    cls = ' class="px"' if thumb.upscaled else ""
    return (f'<img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" alt="{_e(alt)}"'
            f' loading="lazy"{cls}>')


# --------------------------------------------------------------------------- HTML helpers


def _e(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: safe inside attributes)."""
    return html.escape("" if is_missing(value) else str(value), quote=True)


def safe_link(url: Any, *, text: str | None = None) -> str:
    """An ``<a>`` for http(s) URLs with a host; anything else (``javascript:``, ``data:``, paths) as escaped text."""
    if is_missing(url) or not str(url).strip():
        return ""
    raw = str(url).strip()
    try:
        parts = urlsplit(raw)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    label = _e(_shorten_url(raw) if text is None else text)
    if not ok:
        return f'<span class="path" title="{_e(raw)}">{label}</span>'
    return f'<a href="{_e(raw)}" rel="noopener noreferrer nofollow" target="_blank" title="{_e(raw)}">{label}</a>'


def _shorten_url(raw: str, limit: int = 48) -> str:
    return raw if len(raw) <= limit else raw[: limit // 2 - 1] + "…" + raw[-(limit // 2):]


def _fmt(value: Any, spec: str) -> str:
    if is_missing(value):
        return "—"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return _e(value)


def _num_attr(value: Any) -> str:
    if is_missing(value):
        return ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(v) if math.isfinite(v) else ""


_CSS = """
:root{--fg:#1d2330;--muted:#667085;--bg:#fff;--line:#e4e7ec;--head:#f5f6f8;--label:#b42318;--conflict:#b54708;--ood:#5925dc;--ok:#027a48}
@media (prefers-color-scheme:dark){:root{--fg:#e6e8ee;--muted:#98a2b3;--bg:#14161b;--line:#2b303b;--head:#1d2129}}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg);margin:0 auto;padding:16px 24px;max-width:1400px}
h1{font-size:20px;margin:0 0 8px}h2{font-size:15px;margin:0 0 6px}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0 12px}
dl.summary dt{color:var(--muted)}dl.summary dd{margin:0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
details.howto{border:1px solid var(--line);border-radius:6px;padding:8px 12px;margin:12px 0}
details.howto summary{cursor:pointer;font-weight:600}
pre{background:var(--head);padding:8px;border-radius:4px;overflow:auto}
.controls{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin:12px 0}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:middle}
th{background:var(--head);position:sticky;top:0;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{display:block;border-radius:3px}img.px{image-rendering:pixelated}
.noimg{display:inline-block;width:64px;color:var(--muted);font-size:11px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff;white-space:nowrap}
.b-label{background:var(--label)}.b-conflict{background:var(--conflict)}.b-ood{background:var(--ood)}.b-rep{background:var(--ok)}.b-leak{background:var(--label)}
.given{text-decoration:line-through;color:var(--muted)}.sugg{font-weight:600}
.path{color:var(--muted);word-break:break-all}
.muted{color:var(--muted)}
figure.fig{margin:12px 0}figure.fig img{max-width:100%}
.group{border:1px solid var(--line);border-radius:6px;padding:8px 12px;margin:10px 0}
.group.conflict{border-color:var(--conflict);border-width:2px}
.members{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-end}
.members figure{margin:0;font-size:12px;max-width:150px}
.members figcaption{margin-top:3px;word-break:break-word}
#only:checked ~ main .group:not(.conflict){display:none}
textarea{width:100%;font:12px ui-monospace,monospace}
"""


def _page(title: str, body: str, *, script: str = "") -> str:
    """A complete HTML page; the CSP admits data: images, this CSS and this script only (by hash)."""

    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"

    csp = (f"default-src 'none'; img-src data:; style-src {sha(_CSS)}; "
           f"script-src {sha(script) if script else chr(39) + 'none' + chr(39)}; base-uri 'none'; form-action 'none'")
    script_tag = f"<script>{script}</script>" if script else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n"
        "<meta name=\"generator\" content=\"dsbuild\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style></head>\n<body>\n{body}\n{script_tag}\n</body></html>\n"
    )


# --------------------------------------------------------------------------- mislabel report


_MISLABEL_JS = r"""
(function(){
  var table = document.getElementById('issues'); if (!table) return;
  var tbody = table.tBodies[0];
  function key(td, num){
    var v = td.getAttribute('data-v'); if (v === null) v = td.textContent;
    if (!num) return v.toLowerCase();
    var f = parseFloat(v); return isNaN(f) ? null : f;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
    if (!th.hasAttribute('data-type')) return;
    th.addEventListener('click', function(){
      var asc = th.getAttribute('aria-sort') !== 'ascending', num = th.getAttribute('data-type') === 'num';
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function(h){ h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var rows = Array.prototype.slice.call(tbody.rows);
      rows.sort(function(a, b){
        var x = key(a.cells[i], num), y = key(b.cells[i], num);
        if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
        var c = num ? x - y : (x < y ? -1 : 1); return asc ? c : -c;
      });
      rows.forEach(function(r){ tbody.appendChild(r); });
    });
  });
  var filter = document.getElementById('filter'), kinds = document.querySelectorAll('input.kind'), shown = document.getElementById('shown');
  function apply(){
    var q = filter.value.toLowerCase(), on = {}, n = 0;
    Array.prototype.forEach.call(kinds, function(k){ on[k.value] = k.checked; });
    Array.prototype.forEach.call(tbody.rows, function(r){
      var vis = on[r.getAttribute('data-kind')] !== false && (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.hidden = !vis; if (vis) n++;
    });
    shown.textContent = n + ' shown';
  }
  filter.addEventListener('input', apply);
  Array.prototype.forEach.call(kinds, function(k){ k.addEventListener('change', apply); });
  function q(s){ s = String(s); return /[",;\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  var out = document.getElementById('decisions');
  function csv(){
    var lines = ['image_id,action,new_label,note'];
    Array.prototype.forEach.call(tbody.querySelectorAll('select.decision'), function(sel){
      if (!sel.value) return;
      var tr = sel.closest('tr'), label = sel.value === 'relabel' ? tr.getAttribute('data-suggested') : '';
      lines.push([q(tr.getAttribute('data-id')), sel.value, q(label), 'html report'].join(','));
    });
    out.value = lines.join('\n') + '\n';
    return lines.length - 1;
  }
  tbody.addEventListener('change', function(ev){ if (ev.target.classList.contains('decision')) csv(); });
  document.getElementById('download').addEventListener('click', function(){
    if (!csv()) { out.value = 'choose a decision in the last column first'; return; }
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([out.value], {type: 'text/csv'}));
    a.download = 'decisions.csv'; document.body.appendChild(a); a.click(); a.remove();
  });
  apply();
})();
"""

_KIND_TITLES = {
    "label": "cleanlab: the out-of-sample model disagrees with the given label",
    "conflict": "the same picture (near-duplicate group) carries another label",
    "ood": "fits no class well (out-of-distribution score)",
}


def _origin_name(origin: Any, image_id: Any) -> str:
    """A card's name for an image: its origin's file name (the whole path or URL on hover), else its id."""
    if is_missing(origin) or not str(origin):
        return f'<span class="mono">{_e(image_id)}</span>'
    text = str(origin)
    name = text.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or text
    return f'<span class="mono" title="{_e(text)}">{_e(name)}</span>'


def mislabel_html(issues: "pandas.DataFrame", *, dataset: str, run: dict, out: Path,
                  top_losses: bytes | None = None) -> Path:
    """Write the mislabel report for ``issues`` to ``out`` (atomically); return ``out``.

    ``issues``: one row per flagged image, most likely wrong first. Required
    columns ``image_id``, ``given_label``, ``suggested_label``; used when present:
    ``path`` (thumbnail), ``origin`` (link when http/https, else shown as text),
    ``kind`` (``label`` | ``conflict`` | ``ood``; default ``label``), ``rank``,
    ``label_quality`` (0–1), ``suggested_confidence`` (0–1), ``ood_score`` (0–1),
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
    rows = issues.to_dict("records")
    kinds = [str(r.get("kind")) if not is_missing(r.get("kind")) else "label" for r in rows]
    counts = {k: kinds.count(k) for k in dict.fromkeys(["label", "conflict", "ood", *kinds])}
    thumbs = ThumbCache()

    summary = [("dataset", _e(dataset))]
    for key, value in run.items():
        if key in ("confusion", "classes") or isinstance(value, (dict, list, tuple)):
            continue
        summary.append((key.replace("_", " "), _e(value)))
    summary.append(("flagged", f"{len(rows)} images — " + ", ".join(
        f'<span class="badge b-{_e(k)}" title="{_e(_KIND_TITLES.get(k, k))}">{_e(k)}</span> {n}' for k, n in counts.items())))
    missing_thumbs = 0

    body_rows = []
    for i, (r, kind) in enumerate(zip(rows, kinds)):
        thumb = thumbs.get(r.get("path"))
        missing_thumbs += thumb is None
        iid = str(r["image_id"])
        given, sugg = r.get("given_label"), r.get("suggested_label")
        current = r.get("current_label")
        now = ""
        if not is_missing(current) and str(current) != str(given):
            now = f'<br><span class="muted">now: {_e(current)}</span>'
        rank = r.get("rank")
        rank_v = _num_attr(rank) or repr(float(i + 1))
        conf = r.get("suggested_confidence")
        options = '<option value="">—</option>'
        if not is_missing(sugg):
            options += f'<option value="relabel">relabel → {_e(sugg)}</option>'
        options += '<option value="remove">remove</option><option value="keep">keep</option>'
        body_rows.append(
            f'<tr data-kind="{_e(kind)}" data-id="{_e(iid)}" data-suggested="{_e(sugg)}">'
            f'<td class="num" data-v="{rank_v}">{_e(rank) if not is_missing(rank) else i + 1}</td>'
            f'<td data-v="{i}">{_img_tag(thumb, f"{iid}: {given}")}</td>'
            f'<td class="mono">{_e(iid)}</td>'
            f'<td><span class="badge b-{_e(kind)}" title="{_e(_KIND_TITLES.get(kind, kind))}">{_e(kind)}</span></td>'
            f'<td data-v="{_e(given)} → {_e(sugg)}"><span class="given">{_e(given)}</span> → '
            f'<span class="sugg">{_e(sugg) if not is_missing(sugg) else "?"}</span>{now}</td>'
            f'<td class="num" data-v="{_num_attr(r.get("label_quality"))}">{_fmt(r.get("label_quality"), ".3f")}</td>'
            f'<td class="num" data-v="{_num_attr(conf)}">{_fmt(conf, ".1%")}</td>'
            f'<td class="num" data-v="{_num_attr(r.get("ood_score"))}">{_fmt(r.get("ood_score"), ".3f")}</td>'
            f'<td data-v="{_e(r.get("origin"))}">{safe_link(r.get("origin"))}</td>'
            f'<td><select class="decision" aria-label="decision for {_e(iid)}">{options}</select></td>'
            "</tr>"
        )
    if missing_thumbs:
        summary.append(("thumbnails", f"{missing_thumbs} image(s) could not be read"))

    figure = ""
    confusion, classes = run.get("confusion"), run.get("classes")
    if isinstance(confusion, str):
        try:
            confusion = json.loads(confusion)
        except ValueError:
            confusion = None
    if confusion and classes:
        png = confusion_bytes(confusion, list(classes))
        scored = sum(map(sum, confusion))
        figure = (f'<figure class="fig"><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
                  f'alt="confusion matrix"><figcaption class="muted">confusion matrix of run {_e(run.get("run_id"))}: '
                  f"out-of-fold predictions on all {scored} scored images (rows: given label, columns: prediction)"
                  "</figcaption></figure>")
    if top_losses:
        figure += (f'<figure class="fig"><img src="data:image/png;base64,{base64.b64encode(top_losses).decode("ascii")}" '
                   'alt="top losses: the flagged images with the lowest label quality"><figcaption class="muted">'
                   "top losses: the flagged images with the lowest label quality (given → suggested label, "
                   "label quality, p = out-of-fold probability of the suggestion)</figcaption></figure>")

    head = "".join(
        f"<th{' data-type=' + chr(34) + t + chr(34) if t else ''}>{name}</th>"
        for name, t in [("#", "num"), ("image", ""), ("image_id", "text"), ("kind", "text"),
                        ("given → suggested", "text"), ("label quality", "num"), ("confidence", "num"),
                        ("OOD score", "num"), ("origin", "text"), ("decision", "")])
    kind_boxes = " ".join(
        f'<label><input type="checkbox" class="kind" value="{_e(k)}" checked> {_e(k)} ({n})</label>' for k, n in counts.items())
    ds = _e(dataset)
    example = next((str(x) for x in issues["suggested_label"] if not is_missing(x)), "LABEL")
    body = f"""<header><h1>Likely label problems in <q>{ds}</q></h1>
<dl class="summary">{''.join(f'<dt>{_e(k)}</dt><dd>{v}</dd>' for k, v in summary)}</dl></header>
<details class="howto"><summary>How to review</summary>
<p>Look at each image and decide: <b>relabel</b> (the label is wrong), <b>remove</b> (the image does not belong
in the dataset; it is marked rejected, nothing is deleted), <b>keep</b> (the label is right; it is not flagged again
unless a later model disagrees more strongly) or <b>undo</b> (take back your last decision on that image).
Lower <i>label quality</i> means more likely wrong; <i>confidence</i> is the out-of-sample probability of the
suggested label.</p>
<p>Either pick decisions in the last column and press <i>Download decisions.csv</i>, or write the CSV yourself —
a header and one row per image (<code>image_id</code> or <code>path</code>; <code>new_label</code> only for relabel):</p>
<pre>image_id,action,new_label,note
3f2a9c0d1e4b5a67,relabel,{_e(example)},the given label is wrong
9b8c7d6e5f4a3b21,remove,,does not belong in the dataset
0a1b2c3d4e5f6a7b,keep,,</pre>
<p>You can also edit the report's CSV (<code>dsbuild mislabels {ds} --format csv --out flags.csv</code>): add an
<code>action</code> column and fill it where you decided (<code>relabel</code> takes the suggested label). Then:</p>
<pre>dsbuild review {ds} --decisions decisions.csv
dsbuild review {ds} --accept-suggestions --min-confidence 0.9   # or accept confident suggestions
dsbuild retrain {ds}</pre>
<p>The whole file is checked first: if any row is wrong nothing is applied. Every decision is an event in
<code>label_history</code> and can be undone.</p></details>
{figure}
<div class="controls"><input type="search" id="filter" placeholder="filter rows…" aria-label="filter rows">
{kind_boxes} <span id="shown" class="muted"></span>
<button type="button" id="download">Download decisions.csv</button></div>
<table id="issues" class="sortable"><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body_rows)}
</tbody></table>
<p class="muted">decisions.csv preview (also for copy and paste):</p>
<textarea id="decisions" rows="4" readonly>image_id,action,new_label,note</textarea>"""
    return atomic_write(Path(out), _page(f"dsbuild mislabels — {dataset}", body, script=_MISLABEL_JS))


# --------------------------------------------------------------------------- duplicate groups


def duplicates_html(groups: "pandas.DataFrame", *, dataset: str, out: Path, max_groups: int | None = 1000) -> Path:
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
    n_groups, n_conflicts = len(cards), sum(c[0] for c in cards)
    n_leaks = sum(c[1] for c in cards)
    shown = cards if max_groups is None else cards[:max_groups]

    html_cards = []
    for conflict, leak, size, _, gid, grp, labels, splits in shown:
        badges = ""
        if conflict:
            badges += f' <span class="badge b-conflict">label conflict: {" ≠ ".join(_e(l) for l in labels)}</span>'
        if leak:
            badges += f' <span class="badge b-leak">spans splits: {", ".join(_e(s) for s in splits)}</span>'
        members = []
        for r in grp.to_dict("records"):
            thumb = thumbs.get(r.get("path"))
            size_txt = (f"{int(r['width'])}×{int(r['height'])}" if not is_missing(r.get("width"))
                        and not is_missing(r.get("height")) else "")
            rep_txt = ('<span class="badge b-rep">representative</span>' if bool(r.get("is_representative"))
                       and not is_missing(r.get("is_representative")) else
                       (f"distance {_fmt(r.get('distance_to_rep'), '.0f')}" if not is_missing(r.get("distance_to_rep")) else ""))
            details = " · ".join(x for x in (_e(r.get("split")), _e(r.get("status")), size_txt) if x)
            members.append(
                f'<figure>{_img_tag(thumb, str(r["image_id"]) + ": " + str(r["label"]))}'
                f'<figcaption><b>{_e(r["label"])}</b><br>{_origin_name(r.get("origin"), r["image_id"])}<br>'
                f'<span class="muted">{details}</span><br>{rep_txt}</figcaption></figure>')
        html_cards.append(
            f'<section class="group{" conflict" if conflict else ""}{" leak" if leak else ""}" data-group="{_e(gid)}">'
            f"<h2>group {_e(gid)} — {size} images{badges}</h2>"
            f'<div class="members">{"".join(members)}</div></section>')
    more = (f'<p class="muted">showing {len(shown)} of {n_groups} groups (conflicts first); the rest: '
            f"<code>dsbuild query @duplicates</code></p>" if len(shown) < n_groups else "")
    ds = _e(dataset)
    body = f"""<header><h1>Near-duplicate groups in <q>{ds}</q></h1>
<dl class="summary"><dt>groups</dt><dd>{n_groups}</dd><dt>images in groups</dt><dd>{len(df)}</dd>
<dt>label conflicts</dt><dd>{n_conflicts} (the same picture under several labels — decide with
<code>dsbuild review {ds} --decisions FILE.csv</code>)</dd><dt>groups spanning splits</dt><dd>{n_leaks}</dd></dl></header>
<input type="checkbox" id="only"><label for="only"> show label conflicts only</label>
<main>
{more}
{chr(10).join(html_cards) if html_cards else '<p class="muted">no duplicate groups</p>'}
</main>"""
    return atomic_write(Path(out), _page(f"dsbuild duplicates — {dataset}", body))
