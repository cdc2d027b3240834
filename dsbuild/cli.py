"""The ``dsbuild`` command line: argument parsing and printing only.

Each command loads its inputs, calls one library function and renders the
result. :class:`~dsbuild.errors.DsbuildError` is caught once in :func:`main`:
``Error: <message>`` on stderr, a non-zero exit code, and a traceback only with
``--debug``. Heavy libraries (torch, fastai) are imported only by the commands
that train or predict, so ``--help``, ``status`` and ``query`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from dsbuild import __version__
from dsbuild.errors import DsbuildError

OUTPUT_FORMATS = ("table", "csv", "json")


# --------------------------------------------------------------------------- helpers


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _load(args):
    from dsbuild.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    if args.catalog:
        import dataclasses

        catalog = Path(args.catalog).resolve()
        manifest = dataclasses.replace(manifest, catalog=catalog)
    return manifest


def _emit(df, args, *, title: str | None = None) -> None:
    """Render a DataFrame with the shared --format/--out options."""
    from dsbuild.report import render_table

    text = render_table(df, args.format, Path(args.out) if args.out else None, title=title)
    if args.out:
        _console(stderr=True).print(f"wrote {len(df)} rows to {args.out}")
    elif text is not None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


class RichProgress:
    """Rich progress bars on stderr, one per stage, with ok/failed/rejected counts and items/s."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = _console(stderr=True)

    def stage(self, name: str, total: int | None):
        from dsbuild.build import StageProgress

        if self.quiet or total == 0:
            return StageProgress()
        return _RichStage(self.console, name, total)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{text}[/dim]")


class _RichStage:
    def __init__(self, console, name: str, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(name, total=total, counts="", rate="")
        self._n = 0
        import time

        self._t0 = time.monotonic()

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def advance(self, n: int = 1, **counts: int) -> None:
        import time

        self._n += n
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        text = " ".join(f"{k} {v}" for k, v in counts.items())
        self.progress.update(self.task, advance=n, counts=text, rate=f"{self._n / elapsed:,.0f}/s")


# --------------------------------------------------------------------------- commands


def cmd_init(args) -> int:
    from dsbuild.init import write_starter

    path = write_starter(Path(args.manifest), force=args.force)
    print(f"wrote {path} — edit it, then run `dsbuild build` (or `dsbuild demo` for the offline showcase)")
    return 0


def cmd_build(args) -> int:
    from dsbuild.build import build

    manifest = _load(args)
    summary = build(manifest, args.datasets, retry_failed=args.retry_failed, progress=RichProgress(args.quiet),
                    workers=args.workers)
    _print_build_summary(summary)
    return 0


def _print_build_summary(summary) -> None:
    from rich.table import Table

    table = Table(title=f"build {summary.build_id} — {summary.seconds:.1f} s — {summary.catalog}", title_justify="left")
    for col in ("dataset", "sources", "processed", "ok", "rejected", "failed", "duplicates", "conflicts", "train", "valid", "test"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for d in summary.datasets:
        table.add_row(d.dataset, str(d.sources), str(d.new), str(d.ok), str(d.rejected), str(d.failed),
                      str(d.duplicates), str(d.conflicts), *(str(d.splits.get(s, 0)) for s in ("train", "valid", "test")))
    console = _console()
    console.print(table)
    for d in summary.datasets:
        for note in d.notes:
            console.print(f"{d.dataset}: {note}")


def cmd_status(args) -> int:
    from dsbuild.status import dataset_status

    manifest = _load(args)
    status = dataset_status(manifest.catalog, args.dataset)
    _print_status(status)
    return 0


def _print_status(status) -> None:
    from rich.table import Table

    console = _console()
    if status.last_build:
        console.print(status.last_build)
    for ds in status.datasets:
        table = Table(title=f"{ds.name}: images by label × split × status", title_justify="left")
        table.add_column("label")
        for col in ds.columns:
            table.add_column(col, justify="right")
        for label, values in ds.rows:
            table.add_row(label, *(str(v) if v else "·" for v in values))
        table.add_row("[b]total[/b]", *(f"[b]{v}[/b]" for v in ds.totals))
        console.print(table)
        if ds.rejects:
            rej = Table(title=f"{ds.name}: rejected / failed by reason", title_justify="left")
            rej.add_column("status")
            rej.add_column("reason")
            rej.add_column("images", justify="right")
            for st, reason, n in ds.rejects:
                rej.add_row(st, reason or "", str(n))
            console.print(rej)
        for line in ds.notes:
            console.print(line)


def cmd_query(args) -> int:
    from dsbuild.catalog import list_named_queries, resolve_named_query, sandboxed_query

    manifest = _load(args)
    if args.list:
        import pandas as pd

        rows = [{"name": "@" + k, "description": v} for k, v in list_named_queries(manifest.root).items()]
        _emit(pd.DataFrame(rows, columns=["name", "description"]), args)
        return 0
    if not args.sql:
        raise DsbuildError("give SQL or @name — e.g. dsbuild query \"select label, count(*) from images group by all\"", exit_code=2)
    sql = args.sql
    if sql.startswith("@"):
        sql = resolve_named_query(sql[1:], manifest.root)
    df = sandboxed_query(manifest.catalog, sql, timeout=args.timeout)
    _emit(df, args)
    return 0


def cmd_export(args) -> int:
    from dsbuild.export import export_dataset

    manifest = _load(args)
    manifest.dataset(args.dataset)
    summary = export_dataset(manifest.catalog, args.dataset, Path(args.to), fmt=args.format)
    splits = ", ".join(f"{k} {v}" for k, v in sorted(summary.per_split.items()))
    print(f"exported {summary.images} images of '{summary.dataset}' to {summary.out} ({summary.format}; {splits})")
    return 0


def cmd_demo(args) -> int:
    from dsbuild.showcase import run_demo

    manifest = _load(args)
    run_demo(manifest, progress=RichProgress(args.quiet), console=_console(), quick=args.quick, build_only=args.build_only)
    return 0


# --------------------------------------------------------------------------- parser


def _shared_parents() -> dict[str, argparse.ArgumentParser]:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-m", "--manifest", default="datasets.toml", metavar="PATH",
                        help="the manifest (default: ./datasets.toml)")
    common.add_argument("--catalog", metavar="PATH", help="use this catalog file instead of the manifest's")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--format", choices=OUTPUT_FORMATS, default="table", help="output format (default: table)")
    output.add_argument("--out", metavar="FILE", help="write to FILE instead of the terminal")
    return {"common": common, "output": output}


COMMANDS: dict[str, tuple[str, Callable]] = {}


def build_parser() -> argparse.ArgumentParser:
    parents = _shared_parents()
    common, output = parents["common"], parents["output"]
    parser = argparse.ArgumentParser(
        prog="dsbuild",
        description="Build clean image-classification datasets from a manifest (datasets.toml): "
        "crawl, verify, dedup, split, catalog (DuckDB), train, find mislabels, review, retrain.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"dsbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable, help: str, extra: list | None = None):
        p = sub.add_parser(name, help=help, description=help, parents=[common, *(extra or [])])
        p.set_defaults(func=func)
        COMMANDS[name] = (help, func)
        return p

    p = add("init", cmd_init, "write a commented starter datasets.toml")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")

    p = add("build", cmd_build, "crawl/import → verify → dedup → split → catalog")
    p.add_argument("datasets", nargs="*", metavar="DATASET", help="datasets to build (default: all)")
    p.add_argument("--retry-failed", action="store_true", help="retry downloads that failed for transient reasons")
    p.add_argument("--workers", type=int, default=None, help="worker processes for verification (default: CPU count)")

    p = add("status", cmd_status, "counts per class × split × status, and rejects by reason")
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="one dataset (default: all in the catalog)")

    p = add("query", cmd_query, "read-only SQL on the catalog (or @name for catalog/queries/name.sql)", [output])
    p.add_argument("sql", nargs="?", metavar="SQL|@name", help="a SELECT, or @name of a named query")
    p.add_argument("--list", action="store_true", help="list the named queries")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="stop the query after S seconds (default 60)")

    p = add("export", cmd_export, "export accepted images as an ImageFolder tree or a CSV index")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--to", required=True, metavar="DIR", help="output folder (new, empty, or a previous export)")
    p.add_argument("--format", choices=("imagefolder", "csv"), default="imagefolder", help="default: imagefolder")

    p = add("demo", cmd_demo, "the offline end-to-end showcase (digits with planted problems)")
    p.add_argument("--quick", action="store_true", help="smaller model settings for a fast run")
    p.add_argument("--build-only", action="store_true", help="stop after the build and summary")

    _add_model_commands(add, output)
    return parser


def _add_model_commands(add, output) -> None:
    """The model loop's commands (train, mislabels, review, retrain, predict), when available."""
    try:
        from dsbuild import modelcli
    except ImportError:
        return
    modelcli.register(add, output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DsbuildError as exc:
        if args.debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("Error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
