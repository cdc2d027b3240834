"""The one table renderer behind ``--format table|csv|json`` and ``--out`` (query, status, mislabels, predict, …)."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbuild.errors import DsbuildError
from dsbuild.render.values import is_missing, plain
from dsbuild.store import atomic_write

if TYPE_CHECKING:  # imported lazily at run time
    import pandas

FORMATS = ("table", "csv", "json")


def _csv_cell(value: Any) -> str:
    v = plain(value)
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
    v = plain(value)
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
    * ``csv``: RFC 4180 quoting with LF line ends (as pandas and DuckDB write; the same in every CSV dsbuild
      writes), a header row, minimal quoting; missing
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
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_csv_cell(v) for v in rec] for rec in records)
        text = buf.getvalue()
    elif fmt == "json":
        rows = [json.dumps(dict(zip(columns, (plain(v) for v in rec))), ensure_ascii=False, allow_nan=False)
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


class FittedTable:
    """A rich table that fits the width it is printed at: as a table when its columns fit, else (more
    than :data:`VERTICAL_ABOVE` columns) as one block per row, each column on a line of its own
    (``name  value``, long values folded), as ``psql``'s expanded display does. A squeezed table
    would wrap its headers into ``dat… sour…`` and its cells into 4-character columns.

    ``columns``: the header names; ``rows``: the rows' cell texts (str or rich Text).
    """

    VERTICAL_ABOVE = 3

    def __init__(self, table: Any, columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
        self.table, self.columns, self.rows, self.title = table, columns, rows, title

    def fits(self, console: Any, width: int) -> bool:
        from rich.measure import Measurement

        if len(self.columns) <= self.VERTICAL_ABOVE:
            return True
        # Measured unconstrained (a measurement is clamped to the width it is given): what the table needs.
        options = console.options.update_width(100_000)
        return Measurement.get(console, options, self.table).maximum <= width

    def __rich_console__(self, console: Any, options: Any):
        if self.fits(console, options.max_width):
            yield self.table
            return
        from rich.rule import Rule
        from rich.table import Table
        from rich.text import Text

        if self.title:
            yield Text(self.title)
        for i, row in enumerate(self.rows, 1):
            yield Rule(f"row {i}", align="left", characters="-")
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold", no_wrap=True)
            grid.add_column(overflow="fold")
            for name, cell in zip(self.columns, row):
                grid.add_row(name, cell)
            yield grid
        if not self.rows:
            yield Text("(no rows)")


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
    cells = [[Text(_table_cell(v), style="dim" if is_missing(v) else "") for v in rec] for rec in records]
    for row in cells:
        table.add_row(*row)
    return FittedTable(table, columns, cells, title)


def _table_text(table: Any, *, color: bool, width: int | None) -> str:
    from rich.console import Console

    buf = io.StringIO()
    if width is None:
        # As wide as the table needs: nothing wraps when the text goes to a file or a pipe.
        probe = Console(file=io.StringIO(), width=100_000)
        width = max(20, probe.measure(getattr(table, "table", table)).maximum)
    console = Console(file=buf, width=width, force_terminal=color, color_system="auto" if color else None,
                      highlight=False, soft_wrap=False, emoji=False, markup=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
