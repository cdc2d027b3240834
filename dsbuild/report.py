"""Every output dsbuild renders: terminal tables, CSV, JSON, HTML reports and PNG figures.

* :func:`render_table` — the one renderer behind ``--format table|csv|json``
  and ``--out`` (query, status, mislabels, predict, …).
* :func:`mislabel_html` — the mislabel report: thumbnails, given → suggested
  label, scores, origin links, sortable and filterable, with a decision
  builder that downloads a ``decisions.csv`` for ``dsbuild review``.
* :func:`duplicates_html` — near-duplicate groups side by side, label
  conflicts first.
* :func:`confusion_png`, :func:`top_losses_png` — matplotlib figures (Agg
  canvas, no pyplot, so no global backend is touched).

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
import csv
import datetime as _dt
import hashlib
import html
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlsplit

from dsbuild.errors import DsbuildError

if TYPE_CHECKING:  # imported lazily at run time
    import pandas

FORMATS = ("table", "csv", "json")
THUMB_PX = 128


# --------------------------------------------------------------------------- files


def atomic_write(out: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``out`` through a temporary file in the same folder and a rename.

    Creates missing parent folders. A str is written as UTF-8. Raises
    DsbuildError when the folder cannot be written.
    """
    out = Path(out)
    if out.is_dir():
        raise DsbuildError(f"{out} is a folder — give a file name for the output")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise DsbuildError(f"cannot write {out}: {exc.strerror or exc} — choose another --out") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise DsbuildError(f"cannot write {out}: {exc.strerror or exc} — choose another --out") from None
        raise
    return out


# --------------------------------------------------------------------------- values


def _is_missing(value: Any) -> bool:
    """True for None, NaN, pandas NA and NaT (scalars only; a list is never missing)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return False
    import pandas as pd

    try:
        res = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return res is True or (type(res).__name__ == "bool_" and bool(res))


def _plain(value: Any) -> Any:
    """A JSON-ready Python value: None for NaN/NA/NaT/±inf, ISO text for datetimes, lists for arrays."""
    import numpy as np

    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if _is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        import pandas as pd

        return pd.Timestamp(value).isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):  # other numpy scalars, Decimal-like
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    try:
        from decimal import Decimal

        if isinstance(value, Decimal):
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def _csv_cell(value: Any) -> str:
    v = _plain(value)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same float
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _table_cell(value: Any) -> str:
    v = _plain(value)
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v)) if abs(v) >= 1e4 else f"{v:g}"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, list):
        return ", ".join(_table_cell(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(value, _dt.datetime) or type(value).__name__ == "datetime64":
        return v.replace("T", " ")
    return str(v)


# --------------------------------------------------------------------------- render_table


class RenderedTable(str):
    """The plain text of a rendered table that also prints as the rich table itself.

    ``sys.stdout.write(text)`` writes the text; ``console.print(text)`` renders the
    :class:`rich.table.Table` (colours, the console's width, no markup parsing of cells).
    """

    table: Any

    def __new__(cls, text: str, table: Any) -> "RenderedTable":
        obj = super().__new__(cls, text)
        obj.table = table
        return obj

    def __rich__(self) -> Any:
        return self.table


def render_table(df: "pandas.DataFrame", fmt: str, out: Path | None = None, *, title: str | None = None) -> str | None:
    """Render ``df`` as ``fmt`` (``table`` | ``csv`` | ``json``); write it to ``out`` or return it.

    * ``table``: a rich table. With ``out=None`` returns a :class:`RenderedTable`
      — its text (ANSI colours only when stdout is a terminal, sized to the
      terminal, else plain and unwrapped) for ``sys.stdout.write``, and the
      table itself for ``rich.Console.print``. Cell text is never read as rich
      markup. ``title`` is printed above the table (table format only).
    * ``csv``: RFC 4180 (header row, CRLF line ends, minimal quoting); missing
      values empty, floats in shortest round-trip form, booleans ``true``/
      ``false``, datetimes ISO 8601, lists/structs as JSON.
    * ``json``: a list of records (one per line), NaN/NA/NaT/±inf → ``null``,
      datetimes ISO 8601, non-ASCII kept.

    With ``out`` set the output is written atomically (UTF-8) and None returned;
    otherwise the text is returned for the caller to print.
    """
    if fmt not in FORMATS:
        raise DsbuildError(f"unknown format '{fmt}' — use one of {', '.join(FORMATS)}", exit_code=2)
    columns = [str(c) for c in df.columns]
    records = list(df.itertuples(index=False, name=None))
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(columns)
        writer.writerows([_csv_cell(v) for v in rec] for rec in records)
        text = buf.getvalue()
    elif fmt == "json":
        rows = [json.dumps(dict(zip(columns, (_plain(v) for v in rec))), ensure_ascii=False, allow_nan=False)
                for rec in records]
        text = "[\n" + ",\n".join(rows) + "\n]\n" if rows else "[]\n"
    else:
        table = _rich_table(df, columns, records, title)
        if out is not None:
            text = _table_text(table, color=False, width=None)
        else:
            tty = sys.stdout.isatty()
            return RenderedTable(_table_text(table, color=tty, width=None if not tty else _terminal_width()), table)
    if out is None:
        return text
    atomic_write(Path(out), text)
    return None


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def _rich_table(df: "pandas.DataFrame", columns: list[str], records: list[tuple], title: str | None):
    import pandas as pd
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title) if title else None, title_justify="left", header_style="bold",
                  caption="(no rows)" if not records else None)
    for col, dtype in zip(columns, df.dtypes):
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        table.add_column(Text(col), justify="right" if numeric else "left", overflow="fold")
    for rec in records:
        table.add_row(*(Text(_table_cell(v), style="dim" if _is_missing(v) else "") for v in rec))
    return table


def _table_text(table: Any, *, color: bool, width: int | None) -> str:
    from rich.console import Console

    buf = io.StringIO()
    if width is None:
        # As wide as the table needs: nothing wraps when the text goes to a file or a pipe.
        probe = Console(file=io.StringIO(), width=100_000)
        width = max(20, probe.measure(table).maximum)
    console = Console(file=buf, width=width, force_terminal=color, color_system="auto" if color else None,
                      highlight=False, soft_wrap=False, emoji=False, markup=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


# --------------------------------------------------------------------------- thumbnails


@dataclass(frozen=True)
class Thumb:
    """A JPEG thumbnail as a data URI and the size to show it at (fits a 128 px box; small images upscaled)."""

    uri: str
    width: int
    height: int
    upscaled: bool


def thumbnail(path: str | Path | None, *, size: int = THUMB_PX, quality: int = 80) -> Thumb | None:
    """A ≤``size`` px JPEG thumbnail of the image at ``path`` (EXIF orientation applied, alpha on white).

    Returns None when the file is missing, unreadable, not an allowed image
    format by its content (:func:`dsbuild.formats.open_image`) or over the
    decompression-bomb limit — a per-image outcome, never an exception. JPEGs
    are decoded at reduced scale (draft mode).
    """
    if path is None or _is_missing(path) or not str(path):
        return None
    import warnings

    from PIL import Image, ImageOps

    from dsbuild.formats import open_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # The sniffing and allow-list of verification: a store file replaced by an EPS never reaches Ghostscript.
            with open_image(path) as im:
                im.draft("RGB", (size, size))
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    im = Image.new("RGB", rgba.size, (255, 255, 255))
                    im.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    im = im.convert("RGB")
                im.thumbnail((size, size), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=quality, optimize=True)
                w, h = im.size
    except Exception:  # noqa: BLE001 - any decode failure is this image's outcome
        return None
    scale = min(size / w, size / h) if max(w, h) < size // 2 else 1.0
    return Thumb(uri="data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                 width=max(1, round(w * scale)), height=max(1, round(h * scale)), upscaled=scale > 1.0)


class _ThumbCache:
    def __init__(self) -> None:
        self.cache: dict[str, Thumb | None] = {}

    def get(self, path: Any) -> Thumb | None:
        key = "" if _is_missing(path) else str(path)
        if key not in self.cache:
            self.cache[key] = thumbnail(key or None)
        return self.cache[key]


def _img_tag(thumb: Thumb | None, alt: str) -> str:
    if thumb is None:
        return '<span class="noimg">no image</span>'
    cls = ' class="px"' if thumb.upscaled else ""
    return (f'<img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" alt="{_e(alt)}"'
            f' loading="lazy"{cls}>')


# --------------------------------------------------------------------------- HTML helpers


def _e(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: safe inside attributes)."""
    return html.escape("" if _is_missing(value) else str(value), quote=True)


def safe_link(url: Any, *, text: str | None = None) -> str:
    """An ``<a>`` for http(s) URLs with a host; anything else (``javascript:``, ``data:``, paths) as escaped text."""
    if _is_missing(url) or not str(url).strip():
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
    if _is_missing(value):
        return "—"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return _e(value)


def _num_attr(value: Any) -> str:
    if _is_missing(value):
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
    out.value = lines.join('\r\n') + '\r\n';
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


def mislabel_html(issues: "pandas.DataFrame", *, dataset: str, run: dict, out: Path) -> Path:
    """Write the mislabel report for ``issues`` to ``out`` (atomically); return ``out``.

    ``issues``: one row per flagged image, most likely wrong first. Required
    columns ``image_id``, ``given_label``, ``suggested_label``; used when present:
    ``path`` (thumbnail), ``origin`` (link when http/https, else shown as text),
    ``kind`` (``label`` | ``conflict`` | ``ood``; default ``label``), ``rank``,
    ``label_quality`` (0–1), ``suggested_confidence`` (0–1), ``ood_score`` (0–1),
    ``current_label`` (shown when it differs from the given label: reviewed since).
    ``run``: ``run_id`` and optionally ``arch``, ``confusion`` (``[actual][predicted]``
    counts, a list or JSON text) with ``classes`` (embedded as a confusion-matrix
    figure) and any other scalar fields (shown in the summary).
    """
    missing = {"image_id", "given_label", "suggested_label"} - set(issues.columns)
    if missing:
        raise ValueError(f"issues needs columns image_id, given_label, suggested_label; missing {sorted(missing)}")
    rows = issues.to_dict("records")
    kinds = [str(r.get("kind")) if not _is_missing(r.get("kind")) else "label" for r in rows]
    counts = {k: kinds.count(k) for k in dict.fromkeys(["label", "conflict", "ood", *kinds])}
    thumbs = _ThumbCache()

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
        if not _is_missing(current) and str(current) != str(given):
            now = f'<br><span class="muted">now: {_e(current)}</span>'
        rank = r.get("rank")
        rank_v = _num_attr(rank) or repr(float(i + 1))
        conf = r.get("suggested_confidence")
        options = '<option value="">—</option>'
        if not _is_missing(sugg):
            options += f'<option value="relabel">relabel → {_e(sugg)}</option>'
        options += '<option value="remove">remove</option><option value="keep">keep</option>'
        body_rows.append(
            f'<tr data-kind="{_e(kind)}" data-id="{_e(iid)}" data-suggested="{_e(sugg)}">'
            f'<td class="num" data-v="{rank_v}">{_e(rank) if not _is_missing(rank) else i + 1}</td>'
            f'<td data-v="{i}">{_img_tag(thumb, f"{iid}: {given}")}</td>'
            f'<td class="mono">{_e(iid)}</td>'
            f'<td><span class="badge b-{_e(kind)}" title="{_e(_KIND_TITLES.get(kind, kind))}">{_e(kind)}</span></td>'
            f'<td data-v="{_e(given)} → {_e(sugg)}"><span class="given">{_e(given)}</span> → '
            f'<span class="sugg">{_e(sugg) if not _is_missing(sugg) else "?"}</span>{now}</td>'
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
        png = _confusion_bytes(confusion, list(classes))
        figure = (f'<figure class="fig"><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
                  f'alt="confusion matrix"><figcaption class="muted">confusion matrix of run {_e(run.get("run_id"))} '
                  "on its valid split (rows: label, columns: prediction)</figcaption></figure>")

    head = "".join(
        f"<th{' data-type=' + chr(34) + t + chr(34) if t else ''}>{name}</th>"
        for name, t in [("#", "num"), ("image", ""), ("image_id", "text"), ("kind", "text"),
                        ("given → suggested", "text"), ("label quality", "num"), ("confidence", "num"),
                        ("OOD score", "num"), ("origin", "text"), ("decision", "")])
    kind_boxes = " ".join(
        f'<label><input type="checkbox" class="kind" value="{_e(k)}" checked> {_e(k)} ({n})</label>' for k, n in counts.items())
    ds = _e(dataset)
    example = next((str(x) for x in issues["suggested_label"] if not _is_missing(x)), "LABEL")
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
    thumbs = _ThumbCache()
    cards = []
    for gid, grp in df.groupby("dup_group", sort=False):
        labels = sorted({str(x) for x in grp["label"] if not _is_missing(x)})
        splits = sorted({str(x) for x in grp["split"] if not _is_missing(x)})
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
            size_txt = (f"{int(r['width'])}×{int(r['height'])}" if not _is_missing(r.get("width"))
                        and not _is_missing(r.get("height")) else "")
            rep_txt = ('<span class="badge b-rep">representative</span>' if bool(r.get("is_representative"))
                       and not _is_missing(r.get("is_representative")) else
                       (f"distance {_fmt(r.get('distance_to_rep'), '.0f')}" if not _is_missing(r.get("distance_to_rep")) else ""))
            details = " · ".join(x for x in (_e(r.get("split")), _e(r.get("status")), size_txt) if x)
            members.append(
                f'<figure>{_img_tag(thumb, str(r["image_id"]) + ": " + str(r["label"]))}'
                f'<figcaption><b>{_e(r["label"])}</b><br><span class="mono">{_e(r["image_id"])}</span><br>'
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


# --------------------------------------------------------------------------- figures


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _check_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str]):
    import numpy as np

    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise DsbuildError("the confusion matrix must be a square list of lists of counts") from None
    n = len(classes)
    if m.ndim != 2 or m.shape != (n, n):
        raise DsbuildError(f"the confusion matrix is {'×'.join(map(str, m.shape))} but there are {n} classes — "
                           "it must be len(classes)×len(classes)")
    if n == 0 or not np.isfinite(m).all() or (m < 0).any():
        raise DsbuildError("the confusion matrix must hold non-negative counts for at least one class")
    return m


def _confusion_bytes(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    import numpy as np

    m = _check_matrix(matrix, classes)
    n = len(classes)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    longest = max(len(str(c)) for c in classes)
    side = min(20.0, max(3.5, 0.45 * n + 0.07 * min(longest, 24) + 1.5))
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [str(c) if len(str(c)) <= 24 else str(c)[:23] + "…" for c in classes]
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor", parse_math=False)
    ax.set_yticks(range(n), labels=names, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    total = m.sum()
    acc = float(np.trace(m) / total) if total else float("nan")
    ax.set_title(f"confusion matrix — accuracy {acc:.1%} on {int(total)} images", fontsize=10)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the label's images")
    return _png_bytes(fig)


def confusion_png(matrix: list[list[int]], classes: list[str], out: Path) -> Path:
    """Write a confusion-matrix PNG (rows: label, columns: prediction; colour: row share) to ``out``.

    ``matrix`` is ``len(classes)×len(classes)`` non-negative counts, ``[actual][predicted]``
    (as ``runs.confusion``). About 100 px per inch, 0.45 in per class (4–20 in a side);
    counts are written in the cells up to 30 classes. Returns ``out``.
    """
    return atomic_write(Path(out), _confusion_bytes(matrix, classes))


def top_losses_png(rows: "pandas.DataFrame", out: Path, *, n: int = 16) -> Path:
    """Write a grid of the ``n`` most suspicious images with captions (given → suggested, score) to ``out``.

    ``rows``: columns ``path``, ``given_label``, ``suggested_label`` and ``loss``
    (higher = worse; sorted descending) or ``label_quality`` (lower = worse;
    sorted ascending); without either the row order is kept. Unreadable images
    are drawn as grey tiles. About 220×240 px per tile, ⌈√n⌉ columns. Returns ``out``.
    """
    import numpy as np
    import pandas as pd

    if n < 1:
        raise DsbuildError(f"n must be at least 1, not {n}")
    need = {"path", "given_label", "suggested_label"}
    if need - set(rows.columns):
        raise ValueError(f"rows needs columns {sorted(need)} + loss or label_quality; missing {sorted(need - set(rows.columns))}")
    if "loss" in rows:
        df, score, name = rows.sort_values("loss", ascending=False, kind="stable"), "loss", "loss"
    elif "label_quality" in rows:
        df, score, name = rows.sort_values("label_quality", ascending=True, kind="stable"), "label_quality", "quality"
    else:
        df, score, name = rows, None, ""
    df = df.head(n)
    k = max(1, len(df))
    cols = math.ceil(math.sqrt(k))
    nrows = math.ceil(k / cols)
    fig = _figure(2.2 * cols, 2.4 * nrows)
    if len(df) == 0:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no flagged images", ha="center", va="center")
        return atomic_write(Path(out), _png_bytes(fig))
    from PIL import Image

    for idx, r in enumerate(df.to_dict("records")):
        ax = fig.add_subplot(nrows, cols, idx + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        thumb = thumbnail(r.get("path"), size=256)
        if thumb is None:
            ax.imshow(np.full((8, 8, 3), 200, dtype=np.uint8))
            ax.text(3.5, 3.5, "unreadable", ha="center", va="center", fontsize=8)
        else:
            data = base64.b64decode(thumb.uri.split(",", 1)[1])
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"))
            ax.imshow(arr, interpolation="nearest" if max(arr.shape[:2]) < 64 else "antialiased")
        given = _clip(r.get("given_label"))
        sugg = _clip(r.get("suggested_label"))
        value = r.get(score) if score else None
        caption = f"{given} → {sugg}" + (f"\n{name} {float(value):.3f}" if value is not None and not pd.isna(value) else "")
        ax.set_title(caption, fontsize=9, parse_math=False)
    return atomic_write(Path(out), _png_bytes(fig))


def _clip(value: Any, limit: int = 18) -> str:
    s = "?" if _is_missing(value) else str(value)
    return s if len(s) <= limit else s[: limit - 1] + "…"

