"""PNG figures: the confusion matrix, the top-losses grid and fastai's lr_find curve (matplotlib's Agg canvas,
no pyplot: no global backend)."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dsbuild.errors import DsbuildError
from dsbuild.render.thumbs import thumbnail
from dsbuild.render.values import is_missing, probability_text
from dsbuild.store import atomic_write

if TYPE_CHECKING:  # imported lazily at run time
    import pandas


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


def confusion_bytes(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    """The confusion-matrix figure of :func:`confusion_png` as PNG bytes."""
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


def lr_find_png(lrs: Sequence[float], losses: Sequence[float], valley: float, out: Path) -> Path:
    """Write fastai's lr_find plot to ``out``: smoothed training loss against the learning rate (log scale),
    with the chosen ``valley`` marked, as ``Recorder.plot_lr_find`` draws it (its last 5 steps left out,
    where the loss shoots up). About 600×400 px. Returns ``out``."""
    import numpy as np

    x, y = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(x) > 6:
        x, y = x[:-5], y[:-5]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(x, y)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    if len(x):
        k = int(np.argmin(np.abs(np.log(x) - math.log(valley)))) if valley > 0 else 0
        ax.plot([x[k]], [y[k]], "o", color="tab:orange", label=f"valley: lr = {valley:.2e}")
        ax.legend()
    ax.set_title("lr_find", fontsize=10)
    return atomic_write(Path(out), _png_bytes(fig))


def confusion_png(matrix: list[list[int]], classes: list[str], out: Path) -> Path:
    """Write a confusion-matrix PNG (rows: label, columns: prediction; colour: row share) to ``out``.

    ``matrix`` is ``len(classes)×len(classes)`` non-negative counts, ``[actual][predicted]``
    (as ``runs.confusion``). About 100 px per inch, 0.45 in per class (4–20 in a side);
    counts are written in the cells up to 30 classes. Returns ``out``.
    """
    return atomic_write(Path(out), confusion_bytes(matrix, classes))


def top_losses_png(rows: "pandas.DataFrame", out: Path, *, n: int = 16) -> Path:
    """Write :func:`top_losses_bytes` (the ``n`` most suspicious images) to ``out``; return ``out``."""
    return atomic_write(Path(out), top_losses_bytes(rows, n=n))


def top_losses_bytes(rows: "pandas.DataFrame", *, n: int = 16) -> bytes:
    """A grid of the ``n`` most suspicious images with captions (given → suggested, scores) as PNG bytes.

    ``rows``: columns ``path``, ``given_label``, ``suggested_label`` and ``loss``
    (higher = worse; sorted descending) or ``label_quality`` (lower = worse;
    sorted ascending); without either the row order is kept. A tile's caption gives
    the score and, when present, ``suggested_confidence`` ("p"), as probabilities that
    never round to a certainty they are not (``<0.0001``). Unreadable images are drawn
    as grey tiles. About 220×240 px per tile, ⌈√n⌉ columns.
    """
    import numpy as np

    if n < 1:
        raise DsbuildError(f"n must be at least 1, not {n}")
    need = {"path", "given_label", "suggested_label"}
    if need - set(rows.columns):
        raise ValueError(f"rows needs columns {sorted(need)} + loss or label_quality; missing {sorted(need - set(rows.columns))}")
    if "loss" in rows:
        df, score = rows.sort_values("loss", ascending=False, kind="stable"), "loss"
    elif "label_quality" in rows:
        df, score = rows.sort_values("label_quality", ascending=True, kind="stable"), "label_quality"
    else:
        df, score = rows, None
    df = df.head(n)
    k = max(1, len(df))
    cols = math.ceil(math.sqrt(k))
    nrows = math.ceil(k / cols)
    fig = _figure(2.2 * cols, 2.4 * nrows)
    if len(df) == 0:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no flagged images", ha="center", va="center")
        return _png_bytes(fig)
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
        ax.set_title(tile_caption(r, score), fontsize=9, parse_math=False)
    return _png_bytes(fig)


def tile_caption(row: dict[str, Any], score: str | None) -> str:
    """A top-losses tile's caption: ``given → suggested`` and, on a second line, the ``score`` column's value
    (``loss`` to three decimals; ``label_quality`` as ``quality`` in :func:`probability_text`, which never rounds
    a tiny quality to ``0.000``) and ``suggested_confidence`` as ``p``."""
    scores = []
    value = row.get(score) if score else None
    if not is_missing(value):
        scores.append(f"loss {float(value):.3f}" if score == "loss" else f"quality {probability_text(value)}")
    if not is_missing(row.get("suggested_confidence")):
        scores.append(f"p {probability_text(row.get('suggested_confidence'))}")
    return f"{_clip(row.get('given_label'))} → {_clip(row.get('suggested_label'))}" + (
        ("\n" + ", ".join(scores)) if scores else "")


def _clip(value: Any, limit: int = 18) -> str:
    s = "?" if is_missing(value) else str(value)
    return s if len(s) <= limit else s[: limit - 1] + "…"
