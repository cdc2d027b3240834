"""Cell values as every renderer shows them: what counts as missing, and plain JSON-ready values."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``"1 image"``, ``"2 images"``: ``n`` and the noun in the right number (``plural``: default ``singular + "s"``)."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def probability_text(value: Any) -> str | None:
    """A probability (0–1) for a terminal table: four decimals, never rounded to a certainty it is not
    (``<0.0001`` rather than ``0`` or ``3.171e-12``, ``>0.9999`` rather than ``1``); None when missing."""
    if is_missing(value):
        return None
    v = float(value)
    if 0 < v < 0.0001:
        return "<0.0001"
    if 0.9999 < v < 1:
        return ">0.9999"
    return f"{v:.4f}"


PROBABILITY_COLUMNS = ("label_quality", "suggested_confidence", "ood_score", "probability")


def readable_probabilities(df: Any) -> Any:
    """A copy of the DataFrame ``df`` for a terminal table: its :data:`PROBABILITY_COLUMNS` as
    :func:`probability_text`."""
    df = df.copy()
    for col in PROBABILITY_COLUMNS:
        if col in df:
            df[col] = [probability_text(v) for v in df[col]]
    return df


def is_missing(value: Any) -> bool:
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


def plain(value: Any) -> Any:
    """A JSON-ready Python value: None for NaN/NA/NaT/±inf, ISO text for datetimes, lists for arrays."""
    import numpy as np

    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if is_missing(value):
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
            return plain(value.item())
        except (TypeError, ValueError):
            pass
    try:
        from decimal import Decimal

        if isinstance(value, Decimal):
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    return str(value)
