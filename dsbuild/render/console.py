"""What the CLI shows on the console: rich progress bars and the summaries of build, status and model runs.

The library returns typed results (:class:`dsbuild.pipeline.BuildSummary`,
:class:`dsbuild.status.CatalogStatus`, :class:`dsbuild.cycle.RunReport`, ...);
these functions render them. rich is imported inside the functions.
"""

from __future__ import annotations

import sys


def make_console(stderr: bool = False):
    """A rich console on stdout (or stderr); 160 columns wide when the stream is not a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # A pipe or a log file has no width: don't squeeze tables into 80 columns there.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


class RichProgress:
    """Progress on stderr, one stage at a time, with ok/failed/rejected counts, items/s and elapsed time.

    On a terminal: rich progress bars. Elsewhere (a pipe, a log file, CI) a bar would only
    appear at the end, so each stage prints a line instead — every :data:`LINE_EVERY_S`
    seconds while it runs and once when it ends: ``name n/total counts rate elapsed``.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = make_console(stderr=True)

    def stage(self, name: str, total: int | None):
        from dsbuild.progress import StageProgress

        if self.quiet or total == 0:
            return StageProgress()
        if not self.console.is_terminal:
            return _LineStage(self.console, name, total)
        return _RichStage(self.console, name, total)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{text}[/dim]")


class _RichStage:
    """One stage's rich bar: description, bar, n/total, counts, rate, elapsed."""

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
        self.clock = RateClock()

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def ready(self, note: str | None = None) -> None:
        self.clock.ready()
        if note:
            self.progress.console.print(f"[dim]{note}[/dim]")

    def advance(self, n: int = 1, **counts: int) -> None:
        self.clock.advance(n)
        text = " ".join(f"{k} {v}" for k, v in counts.items())
        self.progress.update(self.task, advance=n, counts=text, rate=self.clock.rate())

    def skip(self, n: int = 1, **counts: int) -> None:
        self.clock.skip(n)
        text = " ".join(f"{k} {v}" for k, v in counts.items())
        self.progress.update(self.task, advance=n, counts=text, rate=self.clock.rate())


LINE_EVERY_S = 10.0  # without a terminal: a progress line at most this often while a stage runs


def rate_text(n: int, elapsed: float) -> str:
    """``n`` items in ``elapsed`` seconds as a progress line says it: ``"120/s"``, or ``"2.5 s each"`` below 1/s."""
    if n <= 0:
        return ""
    elapsed = max(elapsed, 1e-6)
    per_s = n / elapsed
    return f"{per_s:,.0f}/s" if per_s >= 1 else f"{elapsed / n:,.1f} s each"


class RateClock:
    """A stage's item count and clocks: the elapsed time since the stage began, and the per-item rate since its
    workers were :meth:`ready` — the start-up before (a Ray cluster starting takes seconds) is no per-item time.

    (Timing from the first result instead was tried: a Ray batch's records arrive at once, so a rate taken just
    after one is an item or a whole batch off; the workers' own warm-up stays in the rate and fades.)
    """

    def __init__(self) -> None:
        import time

        self.n = 0  # items done: worked on and skipped
        self.worked = 0  # of which worked on (the rate's items)
        self.t0 = time.monotonic()
        self.ready()

    def ready(self) -> None:
        """The workers can take work from now on."""
        import time

        self.t_ready, self.n_ready = time.monotonic(), self.worked

    def advance(self, n: int) -> None:
        self.n += n
        self.worked += n

    def skip(self, n: int) -> None:
        """``n`` items done without work (reused, cached): counted done, not in the rate."""
        self.n += n

    def elapsed(self) -> float:
        import time

        return time.monotonic() - self.t0

    def rate(self) -> str:
        import time

        return rate_text(self.worked - self.n_ready, time.monotonic() - self.t_ready)


class _LineStage:
    """One stage as plain lines (no terminal): ``name n/total counts rate elapsed``."""

    def __init__(self, console, name: str, total: int | None) -> None:
        import time

        self.console, self.name, self.total = console, name, total
        self.clock = RateClock()
        self._counts = ""
        self._last = time.monotonic()
        self._shown: tuple[int, str] | None = None  # what the last line said

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._shown != (self.clock.n, self._counts):  # the final line, unless the last one already said it
            self._line()

    def ready(self, note: str | None = None) -> None:
        import time

        self.clock.ready()
        self._last = time.monotonic()  # the first line comes LINE_EVERY_S after the start-up, not at once
        if note:
            self.console.print(note, markup=False, highlight=False, soft_wrap=True)

    def advance(self, n: int = 1, **counts: int) -> None:
        self.clock.advance(n)
        self._moved(counts)

    def skip(self, n: int = 1, **counts: int) -> None:
        self.clock.skip(n)
        self._moved(counts)

    def _moved(self, counts: dict) -> None:
        import time

        self._counts = " ".join(f"{k} {v}" for k, v in counts.items())
        if time.monotonic() - self._last >= LINE_EVERY_S:
            self._line()

    def _line(self) -> None:
        import time

        self._last = time.monotonic()
        n = self.clock.n
        self._shown = (n, self._counts)
        done = f"{n}/{self.total}" if self.total is not None else str(n)
        parts = [self.name, done, self._counts, self.clock.rate(), f"{self.clock.elapsed():.1f} s"]
        self.console.print(" ".join(p for p in parts if p), markup=False, highlight=False, soft_wrap=True)


BUILD_LEGEND = ("processed = ok + rejected + failed + duplicates: this build's images; "
                "conflicts, train, valid, test: the dataset now")


def print_build_summary(summary) -> None:
    """The build summary on stdout: a table row per dataset the build processed or changed, a line per dataset
    that was already up to date (:func:`up_to_date_line`), then the datasets' notes."""
    from rich.table import Table

    from dsbuild.render.tables import FittedTable

    title = f"build {summary.build_id} — {summary.seconds:.1f} s — {summary.catalog}"
    columns = ["dataset", "sources", "processed", "ok", "rejected", "failed", "duplicates", "conflicts", "train", "valid",
               "test"]
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col == "dataset" else "right")
    # processed … duplicates are this build's images (they add up to processed); conflicts and the splits are the
    # dataset's as it stands now — the legend under the table says so (trial 12 M2: a row mixing both did not add up).
    rows = [[d.dataset, str(d.sources), str(d.processed), str(d.ok), str(d.rejected), str(d.failed),
             str(getattr(d, "new_duplicates", d.duplicates)), str(d.conflicts), *(str(d.splits.get(s, 0)) for s in ("train", "valid", "test"))]
            for d in summary.datasets if not d.up_to_date]
    for row in rows:
        table.add_row(*row)
    console = make_console()
    if rows:
        console.print(FittedTable(table, columns, rows, title=title))  # one block per dataset when 11 columns do not fit
        console.print(BUILD_LEGEND, markup=False)  # wrapped to a terminal's width, as the notes are
    else:
        console.print(title, markup=False, soft_wrap=True)
    for d in summary.datasets:
        if d.up_to_date:
            console.print(up_to_date_line(d), markup=False, soft_wrap=True)
    for d in summary.datasets:
        notes = list(d.notes)
        if getattr(d, "grouping_reused", "") and not d.up_to_date:
            notes.insert(0, f"duplicate groups and splits as {d.grouping_reused} computed them (nothing they depend "
                            "on changed)")
        for note in notes:
            console.print(f"{d.dataset}: {note}", markup=False)  # notes hold paths and queries: "[" is no markup


def up_to_date_line(d) -> str:
    """A dataset the build found nothing new in and changed nothing of (a
    :class:`dsbuild.pipeline.DatasetSummary` with ``up_to_date``), with the catalog's numbers, e.g.
    ``pets: up to date — 1,797 accepted images (train 1,438, valid 359), 1 duplicate; nothing new in 1,801 sources``,
    then how many of them failed to download and the option that fetches them again. A table row of zeros beside the split totals read as if the dataset were empty.
    Up to date means the groups and splits were not computed again either (:mod:`dsbuild.dedup.reuse`): the
    progress line says whose were kept; this line stays the catalog's numbers."""
    splits = ", ".join(f"{s} {d.splits[s]:,}" for s in ("train", "valid", "test") if d.splits.get(s))
    total = sum(d.splits.values())
    parts = [f"{total:,} accepted image{'' if total == 1 else 's'}" + (f" ({splits})" if splits else "")]
    if d.duplicates:
        parts.append(f"{d.duplicates:,} duplicate{'' if d.duplicates == 1 else 's'}")
    if d.conflicts:
        parts.append(f"{d.conflicts:,} label conflict{'' if d.conflicts == 1 else 's'}")
    line = f"{d.dataset}: up to date — {', '.join(parts)}; nothing new in {d.sources:,} source{'' if d.sources == 1 else 's'}"
    failed = getattr(d, "failed_now", 0)
    if failed:  # a failed download is not tried again by a plain build: say so, and how
        line += (f" ({failed:,} of them failed to download — `dsbuild build --retry-failed` fetches "
                 f"{'it' if failed == 1 else 'them'} again)")
    return line


def print_status(status) -> None:
    """``dsbuild status``: the last build line, then per dataset label × split × status and rejects by reason."""
    from rich.table import Table

    console = make_console()
    if status.last_build:
        console.print(status.last_build)
    for ds in status.datasets:
        title = f"{ds.name}: images by label × split × status"
        table = Table(title=title, title_justify="left", min_width=len(title))  # a narrow table wrapped its title
        table.add_column("label")
        for col in ds.columns:
            table.add_column(col, justify="right")
        for label, values in ds.rows:
            table.add_row(label, *(str(v) if v else "·" for v in values))
        table.add_row("[b]total[/b]", *(f"[b]{v}[/b]" for v in ds.totals))
        console.print(table)
        if ds.rejects:
            title = f"{ds.name}: rejected / failed by reason"
            rej = Table(title=title, title_justify="left", min_width=len(title))
            rej.add_column("status")
            rej.add_column("reason")
            rej.add_column("images", justify="right")
            for st, reason, n in ds.rejects:
                rej.add_row(st, reason or "", str(n))
            console.print(rej)
        for line in ds.notes:
            console.print(line, markup=False, highlight=False, soft_wrap=True)  # "[datasets.x.quality]" is no markup


def print_live_build(live: dict) -> None:
    """``dsbuild status`` while a build holds the catalog: its stages so far (:class:`dsbuild.progress.LiveProgress`)."""
    console = make_console()
    console.print(f"build #{live['build_id']} is running (PID {live['pid']}, executor {live['executor']}), "
                  f"started {live['started']}, last progress {live['updated']}", highlight=False)
    for st in live["stages"]:
        total = f" / {st['total']:,}" if st.get("total") is not None else ""
        counts = "  ".join(f"{k} {v:,}" for k, v in st.get("counts", {}).items())
        state = "done" if st.get("finished") else "running"
        console.print(f"  {st['name']}: {st['done']:,}{total}  {counts}  ({state})", highlight=False)
    console.print("the catalog's full status shows once the build ends (it holds the catalog while it writes)",
                  highlight=False)


def print_run(report) -> None:
    """A training run: its per-epoch table and the valid error rate."""
    from rich.table import Table

    r = report.result
    console = make_console()
    console.print(f"{report.kind} {report.run_id}: {r.params.get('arch', '')} — {r.n_train} train / {r.n_valid} valid images")
    table = Table()
    for col in ("epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "seconds"):
        table.add_column(col, justify="right")
    for e in r.epochs:
        table.add_row(*(f"{e.get(c):.4f}" if isinstance(e.get(c), float) and c != "seconds" else
                        (f"{e.get(c):.1f}" if c == "seconds" else str(e.get(c))) for c in
                        ("epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "seconds")))
    console.print(table)
    feature_s = getattr(r, "feature_s", None)
    # A head's image features are no epoch's time (its row says what the head took): said on their own.
    took = (f"in {r.duration_s:.0f} s, of which {feature_s:.0f} s image features"
            if feature_s is not None and feature_s >= 0.5 else f"in {r.duration_s:.0f} s")
    console.print(f"error rate {r.error_rate:.2%} (accuracy {r.accuracy:.2%}) {took}; model: {r.model_path}",
                  markup=False, soft_wrap=True)
    export = r.model_path.parent / "export.pkl"
    if export.is_file():  # for fastai users: learn = load_learner(path); learn.predict(img)
        console.print(f"fastai learner: {export} (load_learner)", markup=False, soft_wrap=True)


def print_comparison(c) -> None:
    """Before/after accuracy per label of a retrain, on the same valid images that neither model trained on
    (:class:`dsbuild.cycle.Comparison`): which were left out and why, or why nothing could be compared."""
    from rich.table import Table

    console = make_console()
    if c.refused:
        console.print(c.refused, markup=False, soft_wrap=True)
        return
    if c.classes_followed:
        console.print(c.classes_followed, markup=False, soft_wrap=True)
    if c.classes_differ:
        console.print(c.classes_differ, markup=False, soft_wrap=True)
    if c.left_out:
        console.print(c.left_out, markup=False, soft_wrap=True)
    # On a line of its own: as a table title it would wrap to the (narrow) table's width.
    console.print(f"before {c.before_run} → after {c.after_run}, on the same {c.n_valid} valid images (current labels)")
    table = Table()
    for col in ("label", "images", "accuracy before", "accuracy after", "change"):
        table.add_column(col, justify="left" if col == "label" else "right")
    weak = False
    for row in c.per_class:
        delta = row["after_acc"] - row["before_acc"]
        # A change that rests on few images (not evidence by itself: exact McNemar p ≥ 0.05) is marked.
        mark = "" if delta == 0 or row.get("p_value") is None or row["p_value"] < 0.05 else " *"
        weak = weak or bool(mark)
        table.add_row(row["label"], str(row["n"]), f"{row['before_acc']:.1%}", f"{row['after_acc']:.1%}", f"{delta:+.1%}{mark}")
    table.add_row("[b]error rate[/b]", str(c.n_valid), f"{c.before_error:.2%}", f"{c.after_error:.2%}",
                  f"{c.after_error - c.before_error:+.2%}")
    console.print(table)
    for line in comparison_notes(c, weak=weak):
        console.print(line, markup=False, soft_wrap=True)


def comparison_notes(c, *, weak: bool = False) -> list[str]:
    """What a retrain's before/after rests on (:class:`dsbuild.cycle.Comparison`): how sure its difference is, and
    where its reference labels came from. ``weak``: the table marked a class's change with ``*``."""
    if c.p_value is None:
        return []
    verdict = ("not evidence of a change either way" if c.p_value >= 0.05
               else ("evidence of a gain" if c.better > c.worse else "evidence of a loss"))
    lines = [f"the two models disagree on {c.better + c.worse} of {c.n_valid} images: {c.better} now right, {c.worse} "
             f"now wrong; exact McNemar p = {c.p_value:.2f}: {verdict}"]
    if weak:
        lines.append("* rests on few images: not evidence of a change in that class by itself (exact McNemar p ≥ 0.05)")
    parts = []
    if c.n_suggested:
        parts.append(f"{c.n_suggested} of the {c.n_valid} labels compared were written by an accepted suggestion "
                     "(a model's, not a person's)")
    if c.n_flagged:
        parts.append(f"{c.n_flagged} are flagged by the latest mislabel run and not reviewed")
    if parts:
        lines.append("; ".join(parts) + ": the error rates are against these labels, not against the truth")
    if getattr(c, "c_changed", None):
        was, now = c.c_changed
        lines.append(f"the head's L2 setting C was chosen again on the current labels ({was:g} → {now:g}, by inner "
                     "cross-validation): the difference is the labels' and this choice's together")
    return lines
