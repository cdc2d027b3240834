"""Review decisions → append-only label events.

A person (or a confidence threshold) decides, per flagged image, to ``relabel``
it, ``remove`` it, ``keep`` its label, or ``undo`` the last decision about it.
This module turns those decisions into **label events**: plain dicts that the
catalog appends to ``label_events`` (it never updates or deletes one). It holds
no database connection: :mod:`dsbuild.cycle` reads the catalog, gets the
decisions — :func:`parse_decisions` (a CSV file), :func:`decisions_from_suggestions`
(a confidence threshold) or :func:`check_decisions` (any iterable of
:class:`Decision`: the seam for a review app) — then :func:`plan_events`, and
appends what comes back in one transaction.

Decision files (``dsbuild review DATASET --decisions FILE.csv``)
----------------------------------------------------------------

A CSV file with a header row. Columns (names are case-insensitive; spaces and
dashes read as underscores; other columns are ignored):

``image_id`` or ``path``
    Which image. ``path`` may be the stored file (the ``images.path`` column),
    the origin file of a folder import, or the origin URL (compared as written);
    relative paths resolve against the CSV's folder and the current folder, and
    both sides are compared resolved. A path
    shared by several images (the same bytes under two labels) is ambiguous: use
    ``image_id`` — unless all but one of them were set aside by a build (``source
    removed``: after a class rename the old item and its successor share the
    stored file and the origin), then it names the one not set aside. When both
    columns are filled they must name the same image.
``action``
    ``relabel`` | ``remove`` | ``keep`` | ``undo`` (case-insensitive).
``new_label``
    Required for ``relabel`` (a class of the dataset; the current label makes the
    row a keep: :func:`same_label_keep`). With ``keep`` it may repeat the current label; with ``remove`` and
    ``undo`` it must be empty.
``note`` (optional)
    Free text, stored on the event.

Reading rules: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8");
the separator is ``,``, ``;`` or a tab, whichever splits the header into the
most fields (Excel writes ``;`` in many locales); blank lines are skipped;
repeated identical decisions for one image count once, different ones are an
error.

The CSV that ``dsbuild mislabels DATASET --format csv`` writes is a decisions
file too: add an ``action`` column and fill it where you decided. In such a
file (recognised by its ``suggested_label`` column) a row with an empty action
is skipped, ``relabel`` without ``new_label`` means "take the suggested label",
and the ``given_label`` column guards against stale reports: a row whose image
was relabelled since the report was made is an error, not a silent overwrite.

Validation is all or nothing: every problem of the file is collected with its
line number and reported in one :class:`~dsbuild.errors.DsbuildError`, and no
decision is applied unless the whole file is valid.

Running a file again
--------------------

A reviewer appends rows to a file and runs it again: a row whose decision
already stands is *already applied* — no event, counted, not an error. That
is a ``relabel`` to the current label when the latest relabel not undone set
it; a ``remove`` when the image's standing decision is that remove; a ``keep``
when the standing decision is a keep made after the latest mislabel run
started (a keep from before it is written again: it confirms the label against
the newer run, whose label quality it records). A relabel to the label the
image was *given* and still has, with no decision behind it, is a keep noted
:data:`SAME_LABEL_KEEP` (:func:`same_label_keep`; trial 11, M5 — it was an error, "use
keep to confirm it", which refused the whole file), in a file and in the review app
alike. An ``undo`` row of a file applies once: it is already applied when the image's latest
event from the same file (source ``review:<file name>``) is an undo, so running the file again does not
walk back through earlier decisions. Elsewhere (the review app, a list of decisions from Python) each undo
pops a decision. A file holds one decision per image: two rows for one image that differ are an error,
whose message says how to take a decision back (change its row to ``undo``).

Events
------

:func:`plan_events` returns one dict per decision with keys ``image_id``,
``action``, ``old_label``, ``new_label``, ``old_status``, ``new_status``,
``source``, ``at``, ``note``. The catalog's ``images`` view takes an image's
label and status from its latest event, so every event carries the complete
resulting state:

* ``relabel``: ``new_label`` = the new class; ``new_status`` = ``None``.
* ``remove``: ``new_label`` = the current label; ``new_status`` = ``"rejected"``
  (the view gives the reason ``removed in review``). Nothing is deleted.
* ``keep``: ``new_label`` = the current label; ``new_status`` = ``None``. The
  image counts as reviewed; the mislabel scorer flags it again only when a
  later model disagrees more strongly.
* ``undo``: reverts the image's last decision that is not undone yet (events
  form a stack per image: each non-undo event pushes, each undo pops), so
  repeated undos walk back through the history. ``new_label`` / ``new_status``
  are the state before the reverted event. A build's follow-up of a class change
  on top of the decision (:func:`follows_class`) is no decision: it is taken back
  with the decision under it, an undo event each (the first ones marked
  :data:`COMPANION`), and applied again when it still applies (:func:`_undo_events`).

``new_status = None`` means "no review override: the build's status stands",
so a later build that marks the image ``duplicate`` still wins over an old
relabel. ``old_status`` always records the status seen at decision time.

A build writes such events too: when a class is renamed, merged or split, the new item of the same file
takes the old item's standing decisions (:func:`carried_events`; source ``build:<build_id>``, noted
``carried over from <old image_id> (…)``), so an undo walks back through them as through any other.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterable, Mapping, Sequence

from dsbuild.errors import DsbuildError, closest, did_you_mean
from dsbuild.rows import LABEL_ISSUE_COLUMNS, REPORT_COLUMNS

if TYPE_CHECKING:  # pandas is imported lazily at run time
    import pandas

ACTIONS = ("relabel", "remove", "keep", "undo")
#: statuses whose images a reviewer may relabel, keep or remove (``undo`` works on any).
REVIEWABLE = ("ok", "duplicate")
REMOVED_STATUS = "rejected"
REMOVED_REASON = "removed in review"
MAX_LISTED = 20  # problems listed in one error; the rest are counted

_KNOWN_COLUMNS = ("image_id", "path", "action", "new_label", "note")
# Columns of the mislabel report CSV (dsbuild mislabels --format csv) and of the label_issues view.
_REPORT_COLUMNS = tuple(c for c in LABEL_ISSUE_COLUMNS + REPORT_COLUMNS if c not in _KNOWN_COLUMNS)
_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class Decision:
    """One reviewer decision about one image.

    ``action`` is one of :data:`ACTIONS`; ``new_label`` is set for ``relabel``
    only; ``note`` is free text stored on the event. ``line`` is the CSV line
    the decision came from (``None`` for decisions made by a threshold); it is
    used in error messages and ignored by equality. ``undoes`` (``undo`` only, optional): the
    event_id of the decision this undo means to revert (a review app's own decision); the undo is
    refused when another event came after it on the image.
    """

    image_id: str
    action: str
    new_label: str | None = None
    note: str | None = None
    line: int | None = field(default=None, compare=False)
    undoes: int | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        if (self.action == "relabel") != (self.new_label is not None):
            raise ValueError("new_label is required for relabel and only for relabel")
        if self.undoes is not None and self.action != "undo":
            raise ValueError("undoes is only for undo")


# --------------------------------------------------------------------------- problems


class _Problems:
    """Collects ``(line, message)`` problems and raises them as one DsbuildError."""

    def __init__(self) -> None:
        self.items: list[tuple[int | None, str, str]] = []

    def add(self, line: int | None, message: str, *, in_app: str | None = None) -> None:
        """A problem at ``line``; ``in_app``: how the review app says it (default ``message``)."""
        self.items.append((line, message, message if in_app is None else in_app))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str, *, plural: bool = False) -> None:
        """Raise the problems as one DsbuildError headed ``<what> has|have N problem(s)`` (``plural``: ``what`` is)."""
        if not self.items:
            return
        n = len(self.items)
        lines = [f"  line {ln}: {msg}" if ln is not None else f"  {msg}" for ln, msg, _ in self.items[:MAX_LISTED]]
        if n > MAX_LISTED:
            lines.append(f"  … and {n - MAX_LISTED} more")
        head = (f"{what} {'have' if plural else 'has'} {n} problem{'s' if n != 1 else ''}; nothing was applied — "
                f"fix {'them' if n != 1 else 'it'} and run again:")
        # The review app shows the problems after its own "not applied: ", each saying what to do in the app.
        in_app = [app for _, _, app in self.items[:MAX_LISTED]]
        if n > MAX_LISTED:
            in_app.append(f"… and {n - MAX_LISTED} more")
        raise DsbuildError("\n".join([head, *lines]), exit_code=2,
                           in_app=in_app[0] if n == 1 else f"{n} problems: " + "; ".join(in_app))


PATH_LIMIT = 240  # paths in messages: a real path is shown whole (a 60-character cut hid which file was meant)


def _short(value: str, limit: int = 60) -> str:
    """``value`` cut to ``limit`` characters (an ellipsis marks the cut): a pasted blob stays readable."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --------------------------------------------------------------------------- reading the file


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, optional BOM) or a DsbuildError saying why it is not a text CSV."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DsbuildError(f"cannot read decisions file {path}: {exc.strerror or exc} — check the path and permissions",
                           exit_code=2) from None
    if not data.strip():
        raise DsbuildError(f"decisions file {path} is empty — it needs a header (image_id,action,new_label,note) "
                           "and one row per decision", exit_code=2)
    save_as = "save it as 'CSV UTF-8' (comma- or semicolon-separated text)"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DsbuildError(f"decisions file {path} is UTF-16 text — {save_as}", exit_code=2)
    kinds = {b"PK\x03\x04": "a ZIP file (an .xlsx workbook?)", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
             b"%PDF": "a PDF", b"\xd0\xcf\x11\xe0": "an Excel 97 workbook", b"SQLite format": "a SQLite database",
             b"DUCK": "a DuckDB database"}
    for magic, kind in kinds.items():
        if data.startswith(magic) or (magic == b"DUCK" and data[8:12] == magic):
            raise DsbuildError(f"decisions file {path} is {kind}, not a CSV — {save_as}", exit_code=2)
    if b"\x00" in data[:65536]:
        raise DsbuildError(f"decisions file {path} is binary (it contains NUL bytes), not a CSV — {save_as}", exit_code=2)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DsbuildError(f"decisions file {path} is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}) — {save_as}",
                           exit_code=2) from None


def _sniff_delimiter(header_line: str) -> str:
    """``,``, ``;`` or tab: whichever splits the header (outside quotes) into the most fields; ``,`` on a tie."""
    best, best_n = ",", 0
    for delim in _DELIMITERS:
        n = len(next(csv.reader([header_line], delimiter=delim)))
        if n > best_n:
            best, best_n = delim, n
    return best


def _norm_column(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


@dataclass(frozen=True)
class _Row:
    line: int
    values: dict[str, str]


def _read_rows(path: Path, problems: _Problems) -> tuple[list[str], list[_Row]]:
    """Header (normalised names) and non-blank rows with their first line number. Fatal problems raise."""
    text = _read_text(path)
    first = text.lstrip("\r\n").splitlines()[0]
    if first.lstrip().startswith(("[", "{")):
        raise DsbuildError(f"decisions file {path} looks like JSON — review reads CSV; write one with "
                           "`dsbuild mislabels DATASET --format csv --out flags.csv` and add an action column",
                           exit_code=2)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(first), strict=True)
    header: list[str] | None = None
    rows: list[_Row] = []
    consumed = 0
    try:
        for record in reader:
            start, consumed = consumed + 1, reader.line_num
            if not any(v.strip() for v in record):
                continue  # blank line
            if header is None:
                header = [_norm_column(c) for c in record]
                header_line = start
                dupes = sorted({c for c in header if c and header.count(c) > 1})
                if dupes:
                    problems.add(header_line, f"column {', '.join(dupes)} appears more than once in the header")
                continue
            if len(record) > len(header) and any(v.strip() for v in record[len(header):]):
                problems.add(start, f"{len(record)} fields but the header has {len(header)} "
                                    "(a value with the separator in it must be quoted)")
                continue
            rows.append(_Row(start, {c: (record[i].strip() if i < len(record) else "") for i, c in enumerate(header) if c}))
    except csv.Error as exc:
        # The rows read so far are still checked: their problems are listed with this one.
        problems.add(consumed + 1, f"malformed CSV ({exc}) — check the quotes on this line")
        if header is None:
            problems.raise_if_any(f"decisions file {path}")
    if header is None:
        raise DsbuildError(f"decisions file {path} is empty — it needs a header (image_id,action,new_label,note) "
                           "and one row per decision", exit_code=2)
    if "action" not in header and any(c in ACTIONS for c in header):
        # The first line is a decision (e.g. "5cea…,keep"): the file has no header row, and the rows read
        # against that line as a header say nothing useful.
        only = _Problems()
        only.add(header_line, f"no header row: the first line is a decision ({', '.join(c for c in header if c)}) "
                              "— add the line image_id,action,new_label,note above it (or path,action,new_label,note)")
        only.raise_if_any(f"decisions file {path}")
    missing = []
    if "action" not in header:
        missing.append("action")
    if "image_id" not in header and "path" not in header:
        missing.append("image_id (or path)")
    for col in missing:
        unknown = [c for c in header if c and c not in _KNOWN_COLUMNS + _REPORT_COLUMNS]
        close = closest(col.split(" ")[0], unknown)
        hint = f" (is '{close}' a misspelling of it?)" if close else ""
        problems.add(header_line, f"missing column {col}{hint}; the header is: {', '.join(header) or '(empty)'} "
                                  f"— expected image_id (or path), action, new_label, note")
    if missing:
        problems.raise_if_any(f"decisions file {path}")
    return header, rows


# --------------------------------------------------------------------------- image lookup


class _ImageIndex:
    """image_id / resolved path / origin → catalog rows of one dataset."""

    def __init__(self, images: "pandas.DataFrame", *, base_dirs: Sequence[Path],
                 source_dirs: Sequence[Path] = ()) -> None:
        need = {"image_id", "path", "origin", "label", "status"}
        missing = need - set(images.columns)
        if missing:
            raise ValueError(f"images needs columns {sorted(need)}; missing {sorted(missing)}")
        from dsbuild.sources import SOURCE_REMOVED

        # ``source_dirs``: the folders the dataset's sources give paths in (a labels CSV's folder, an imagefolder,
        # class folders): a path as the user's own labels.csv writes it names its image (trial 11, M6).
        self.source_dirs = [Path(_resolved(Path(d))) for d in dict.fromkeys(source_dirs)]
        self.base_dirs = list(dict.fromkeys([*base_dirs, *self.source_dirs]))
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_path: dict[str, set[str]] = {}
        self.by_name: dict[str, set[str]] = {}  # a local origin's file name → items: a bare file name, when unique
        self.set_aside: set[str] = set()  # items a build set aside (source removed): a class renamed, a file gone
        columns = ["image_id", "path", "origin", "label", "status"] + (["reason"] if "reason" in images else [])
        for rec in images[columns].to_dict("records"):
            iid = str(rec["image_id"])
            self.by_id[iid] = rec
            if rec.get("reason") == SOURCE_REMOVED:
                self.set_aside.add(iid)
            for value in (rec["path"], rec["origin"]):
                if isinstance(value, str) and value:
                    key = value if "://" in value else _resolved(Path(value))
                    self.by_path.setdefault(key, set()).add(iid)
            origin = rec["origin"]
            if isinstance(origin, str) and origin and "://" not in origin:
                self.by_name.setdefault(Path(origin).name, set()).add(iid)

    def lookup_path(self, value: str) -> set[str]:
        if "://" in value:  # an origin URL, compared as written
            return set(self.by_path.get(value, set()))
        p = Path(value).expanduser()
        candidates = [p] if p.is_absolute() else [d / p for d in self.base_dirs]
        found: set[str] = set()
        for cand in candidates:
            found |= self.by_path.get(_resolved(cand), set())
        if not found and not p.is_absolute() and len(p.parts) == 1:  # a bare file name: the file of that name
            found = set(self.by_name.get(p.name, set()))
        return found

    def forms(self) -> str:
        """The ways a row may name an image, with this dataset's first image as the example (for a message)."""
        live = sorted(i for i in self.by_id if i not in self.set_aside) or sorted(self.by_id)
        if not live:
            return "by image_id, or by path: as your labels CSV or folder gives it, or the file's full path"
        rec = self.by_id[live[0]]
        origin = rec["origin"] if isinstance(rec["origin"], str) else ""
        if not origin or "://" in origin:
            return f"by image_id ({live[0]}), or by path: the origin URL ({origin}) or the stored file ({rec['path']})"
        relative = next((str(Path(origin).relative_to(d)) for d in self.source_dirs
                         if Path(origin).is_relative_to(d)), None)
        as_given = f"as your labels CSV or folder gives it ({relative}), " if relative else ""
        return (f"by image_id ({live[0]}), or by path: {as_given}the file's full path ({origin}), or its name alone "
                f"({Path(origin).name}) when no other file has it")


def _resolved(p: Path) -> str:
    try:
        return str(p.resolve())
    except (OSError, RuntimeError):  # a symlink loop: fall back to the absolute path
        return str(p.absolute())


# --------------------------------------------------------------------------- parse_decisions


SAME_LABEL_KEEP = "relabel to the label it has, applied as a keep"
"""The note of a relabel to the label its image already has, applied as a keep (:func:`same_label_keep`)."""


def same_label_keep(d: Decision, *, label: str | None, stack: Sequence[dict],
                    last_run_at: datetime | None) -> Decision:
    """``d`` as the review applies it: a relabel to the label its image has now (``label``) is a ``keep`` noted
    :data:`SAME_LABEL_KEEP` (before ``d.note``), which confirms the label — the one rule of a decisions file's row
    (:func:`parse_decisions`) and of a review app's key (trial 11, M5: one such row refused the whole file; the app
    refused the key, "press k"). Not when a relabel that stands set that label (``stack``: the image's decisions not
    undone, :func:`undo_stacks`; ``last_run_at`` as for :func:`plan_events`): the same relabel again is already
    applied, no event. Any other decision is returned as it is."""
    if d.action != "relabel" or label is None or d.new_label != label:
        return d
    if _already_applied("relabel", d.new_label, label, None, stack, last_run_at):
        return d
    return dataclasses.replace(d, action="keep", new_label=None,
                               note=f"{SAME_LABEL_KEEP}; {d.note}" if d.note else SAME_LABEL_KEEP)


def parse_decisions(path: Path, *, images: "pandas.DataFrame", labels: Sequence[str],
                    dataset: str | None = None, history: "pandas.DataFrame | None" = None,
                    last_run_at: datetime | None = None, former: Collection[str] = (),
                    source: str | None = None, source_dirs: Sequence[Path] = ()) -> list[Decision]:
    """Read and validate a decisions CSV against the catalog; all or nothing.

    ``images``: the dataset's rows of the ``images`` view with columns
    ``image_id``, ``path``, ``origin``, ``label`` (current), ``status`` (extra
    columns are ignored). ``labels``: the dataset's class names (``former``: names that were classes
    and are none now, for the message that refuses them). ``dataset``:
    when given, a ``dataset`` column in the file (the mislabel report has one)
    must match it. ``history`` (the dataset's ``label_events``, as for
    :func:`plan_events`) and ``last_run_at`` (when the latest mislabel run
    started): with them a row whose decision already stands (a file run again)
    passes, and :func:`plan_events` turns it into no event — see "Running a
    file again" in the module docstring. With ``history``, what :func:`plan_events` would refuse (an undo with
    nothing to undo) is checked too; ``source``: the events' source as the caller will record them (default
    ``review:<file name>``), for a file's undo rows run again. ``source_dirs``: the folders the dataset's sources give
    paths in (:func:`dsbuild.cycle.source_dirs`): a ``path`` is looked up there too (as the user's labels CSV writes it),
    besides the decisions file's folder and the working folder; a bare file name names the one image of that name.

    A relabel row to the label its image has now (and no decision set it) is a ``keep``, noted
    :data:`SAME_LABEL_KEEP`: it confirms the label. Returns the decisions in file order, one per image (see the module
    docstring for the format). Raises one :class:`DsbuildError` (exit code 2)
    listing every problem with its line number — unknown or ambiguous image,
    unknown label or action, missing column,
    conflicting decisions for one image, stale report rows, an empty, binary
    or non-UTF-8 file — so that nothing is applied partially.
    """
    path = Path(path)
    problems = _Problems()
    header, rows = _read_rows(path, problems)
    index = _ImageIndex(images, base_dirs=[path.resolve().parent, Path.cwd()], source_dirs=source_dirs)
    label_set = list(dict.fromkeys(str(x) for x in labels))
    is_report = "suggested_label" in header
    stacks = undo_stacks(history)
    chosen: dict[str, Decision] = {}
    # What each image's first row says, as written, valid or not: a second row that differs is a conflict even
    # when either row has another problem too (fixing those first, then hearing of the conflict, was two rounds).
    claims: dict[str, _Claim] = {}
    for row in rows:
        v = row.values
        line = row.line
        action = v.get("action", "").lower()
        if not action and is_report:
            continue  # a report row nobody decided about
        before = len(problems.items)
        if not action:
            problems.add(line, f"action is empty — use one of {', '.join(ACTIONS)}")
        elif action not in ACTIONS:
            problems.add(line, f"unknown action '{_short(v['action'])}'{did_you_mean(action, ACTIONS)} "
                               f"— use one of {', '.join(ACTIONS)}")
        known_action = action in ACTIONS
        if dataset is not None and v.get("dataset") and v["dataset"] != dataset:
            problems.add(line, f"row is for dataset '{_short(v['dataset'])}', not '{dataset}' — review it with "
                               f"`dsbuild review {v['dataset']} ...` or delete the row")
            continue
        # Every check of a row runs (an unknown action does not hide an unknown image or label on the same line).
        image_id = _identify(v, index, line, problems)
        rec = index.by_id[image_id] if image_id is not None else None
        current = str(rec["label"]) if rec is not None else None
        status = str(rec["status"]) if rec is not None else None
        new_label = v.get("new_label") or None
        note = v.get("note") or None
        if action == "relabel" and new_label is None and is_report and v.get("suggested_label"):
            new_label = v["suggested_label"]
        if action == "keep" and new_label is not None and new_label == current:
            new_label = None  # a keep row may repeat the label it keeps
        # The file run again: this row's decision already stands. A relabel that stands explains why the label
        # differs from the report's given_label; a keep or remove does not (something else changed the label).
        done = known_action and rec is not None and _already_applied(action, new_label, current, status,
                                                                    stacks.get(image_id, []), last_run_at)
        given = v.get("given_label")
        stale = (rec is not None and bool(given) and action != "undo" and given != current
                 and not (done and action == "relabel"))
        if stale:
            problems.add(line, f"image {image_id} is labelled '{_short(current)}' now, not '{_short(given)}' as this row says "
                               "(its label changed since the report) — run `dsbuild mislabels` again or delete the row")
        if action == "relabel":
            if new_label is None:
                problems.add(line, f"relabel needs a new_label — one of {label_list(label_set)}")
            elif new_label not in label_set:
                problems.add(line, unknown_label(new_label, label_set, former))
            elif rec is not None and not stale:
                # A relabel to the label the image has confirms it: a keep. The review's summary names its line.
                kept = same_label_keep(Decision(image_id=str(image_id), action=action, new_label=new_label, note=note),
                                       label=current, stack=stacks.get(image_id, []), last_run_at=last_run_at)
                action, new_label, note = kept.action, kept.new_label, kept.note
        elif new_label is not None and known_action and not (action == "keep" and rec is None):
            extra = f" (keep leaves the label '{_short(current)}')" if action == "keep" else ""
            problems.add(line, f"new_label '{_short(new_label)}' is only used with relabel{extra} "
                               "— empty it or change the action to relabel")
        if known_action and action != "undo" and rec is not None and status not in REVIEWABLE and not done:
            problems.add(line, not_reviewable(image_id, status, _text(rec.get("reason"))))
        if image_id is None:
            continue
        claim = _Claim(line, action or "(no action)", new_label)
        earlier = claims.setdefault(image_id, claim)
        if earlier is not claim and (earlier.action, earlier.new_label) != (claim.action, claim.new_label):
            if "undo" in (earlier.action, claim.action):
                # An undo appended under the decision it means to take back: a file holds one decision per image.
                other = earlier if claim.action == "undo" else claim
                fix = (f"a file holds one decision per image: to take back line {other.line}'s decision, change "
                       f"its action to undo and delete this line (an undo row applies once, however often the file "
                       f"is run)" if claim.action == "undo" else
                       f"a file holds one decision per image: keep line {earlier.line}'s undo or this line's "
                       f"{claim.action}, not both")
            else:
                fix = "keep one"
            problems.add(line, f"conflicting decisions for image {image_id}: line {earlier.line} says "
                               f"{_describe(earlier)}, this line says {_describe(claim)} — {fix}")
        if len(problems.items) == before and image_id not in chosen:
            chosen[image_id] = Decision(image_id=image_id, action=action, new_label=new_label, note=note, line=line)
    if history is not None and chosen:
        # What applying the rows would find (an undo with nothing to undo) is a problem of the file too: listed
        # with the others, not after they are fixed.
        _plan(list(chosen.values()), current=images, history=history, source=source or f"review:{path.name}",
              at=datetime.now(), last_run_at=last_run_at, from_file=True, problems=problems)
    problems.items.sort(key=lambda item: -1 if item[0] is None else item[0])
    problems.raise_if_any(f"decisions file {path}")
    if not chosen:
        hint = ("fill the action column (relabel, remove, keep, undo) of the rows you decided about" if is_report
                else "add one row per decision")
        raise DsbuildError(f"decisions file {path} has no decisions — {hint}", exit_code=2)
    return list(chosen.values())


def _identify(v: dict[str, str], index: _ImageIndex, line: int, problems: _Problems) -> str | None:
    """The image a row names by ``image_id`` and/or ``path``; problems are recorded, None returned."""
    iid, path = v.get("image_id", ""), v.get("path", "")
    by_id = by_path = None
    if iid:
        if iid not in index.by_id:
            if _looks_like_path(iid):  # image ids are 16 hex digits: this is a path in the wrong column
                problems.add(line, f"unknown image_id '{_short(iid)}' — that is a path, not an image_id: put paths "
                                   "in a column named path (header: path,action,new_label,note) or give the image_id")
                return None
            problems.add(line, f"unknown image_id '{_short(iid)}' — not an image of this dataset "
                               "(see `dsbuild query \"select image_id, path, label from images\"`)")
            return None
        by_id = iid
    if path:
        found = index.lookup_path(path)
        if not found and by_id is None:
            problems.add(line, f"no image of this dataset has path '{_short(path, PATH_LIMIT)}' — name an image "
                               f"{index.forms()}")
            return None
        if len(found) > 1 and by_id is None and len(found - index.set_aside) == 1:
            # A class renamed (or merged, split) keeps the stored file: the item set aside and its successor share
            # the path. The one not set aside is the image meant.
            found = found - index.set_aside
        if len(found) > 1 and by_id is None:
            ids = sorted(found)
            problems.add(line, f"path '{_short(path, PATH_LIMIT)}' is {len(ids)} images ({', '.join(ids[:5])}"
                               f"{', …' if len(ids) > 5 else ''}) — use image_id"
                               f"{', or the path with its folders,' if len(Path(path).parts) == 1 else ''} to say which")
            return None
        if found and by_id is not None and by_id not in found:
            problems.add(line, f"image_id '{by_id}' and path '{_short(path, PATH_LIMIT)}' name different images — fix one of them")
            return None
        by_path = next(iter(found)) if len(found) == 1 else None
    if by_id is None and by_path is None:
        problems.add(line, "no image_id or path — every row must name its image")
        return None
    return by_id or by_path


def _looks_like_path(value: str) -> bool:
    """Whether a value can only be a path or URL (a folder separator, a scheme, or a file extension), never one
    of dsbuild's image ids (16 hex digits, :func:`dsbuild.rows.image_id_for`)."""
    return "/" in value or "\\" in value or "://" in value or bool(Path(value).suffix)


def label_list(labels: Sequence[str]) -> str:
    """The labels for a message: the first 20, then how many in all."""
    return ", ".join(labels[:20]) + (f", … ({len(labels)} labels)" if len(labels) > 20 else "")


@dataclass(frozen=True)
class _Claim:
    """What a row of a decisions file says about its image, as written (valid or not)."""

    line: int
    action: str
    new_label: str | None


def _describe(d: "Decision | _Claim") -> str:
    return f"relabel → '{d.new_label}'" if d.action == "relabel" else d.action


def unknown_label(label: str, labels: Sequence[str], former: Collection[str] = (), *, in_app: bool = False) -> str:
    """Why a relabel to ``label`` is refused: not one of ``labels`` (the dataset's classes now); ``former``:
    names that were classes once (a class folder renamed or removed), said as such. ``in_app``: what to do
    in the review app (its keys are the labels the page was loaded with)."""
    what = (f"label '{_short(label)}' is not a class of this dataset any more (renamed or removed)" if label in former
            else f"unknown label '{_short(label)}'")
    todo = "labels of this dataset"
    if in_app:
        todo = ("reload the page for the current labels" if label in former
                else "pick one of the labels of this dataset")
    return f"{what}{did_you_mean(label, list(labels))} — {todo}: {label_list(list(labels))}"


def check_decisions(decisions: Iterable[Decision], *, labels: Sequence[str], former: Collection[str] = ()) -> list[Decision]:
    """``decisions`` (any iterable of :class:`Decision`, e.g. from a review app) as a list, checked like a file's rows.

    Every item must be a :class:`Decision` and a relabel must name one of ``labels`` (``former``: as for
    :func:`parse_decisions`);
    :func:`plan_events` checks the rest against the catalog (unknown image, status, no-op
    relabel, two decisions for one image). Raises one DsbuildError listing every problem.
    """
    problems = _Problems()
    out = []
    label_set = list(dict.fromkeys(str(x) for x in labels))
    decisions = list(decisions)
    for k, d in enumerate(decisions, start=1):
        if not isinstance(d, Decision):
            problems.add(None, f"decision {k} is a {type(d).__name__}, not a dsbuild.decisions.Decision")
            continue
        if d.action == "relabel" and d.new_label not in label_set:
            problems.add(None, f"decision {k} (image {d.image_id}): {unknown_label(str(d.new_label), label_set, former)}",
                         in_app=f"image {d.image_id}: {unknown_label(str(d.new_label), label_set, former, in_app=True)}")
            continue
        out.append(d)
    n = len(decisions)
    problems.raise_if_any("the decision" if n == 1 else f"the {n} decisions", plural=n != 1)
    return out


# --------------------------------------------------------------------------- suggestions


def decisions_from_suggestions(issues: "pandas.DataFrame", *, min_confidence: float,
                               reviewed: Collection[str] = ()) -> list[Decision]:
    """Relabel decisions for confident suggestions of a mislabel run: :func:`suggested_decisions`'s decisions."""
    return suggested_decisions(issues, min_confidence=min_confidence, reviewed=reviewed)[0]


def suggested_decisions(issues: "pandas.DataFrame", *, min_confidence: float,
                        reviewed: Collection[str] = ()) -> tuple[list[Decision], list[str]]:
    """Relabel decisions for confident suggestions of a mislabel run, and the images skipped as reviewed since.

    ``issues`` has columns ``image_id``, ``given_label``, ``suggested_label``,
    ``suggested_confidence`` (out-of-sample probability of the suggested class,
    0–1) and optionally ``label_quality``, ``kind`` and ``current_label`` (as the
    ``label_issues`` view has). A row is *confident* when
    ``suggested_confidence >= min_confidence``, the suggestion differs from the
    given label and ``kind`` is ``label`` (conflicts and out-of-distribution flags
    need a person); rows without a confidence are not. ``reviewed``: ids of the
    images someone decided about after the run (any label event since the run
    started: keep, remove, relabel, undo — a person's word, or an earlier accept,
    is not overruled by the run it answered). A confident row is skipped when its
    image is in ``reviewed`` or its ``current_label`` differs from ``given_label``
    (relabelled since the run).

    Returns ``(decisions, skipped)``: ``relabel → suggested_label`` per remaining
    image (the most confident suggestion where an image has several), most
    confident first, noted ``suggestion p=…``; and the sorted ids of the skipped
    images. ``min_confidence`` must be in (0, 1].
    """
    import pandas as pd

    try:
        threshold = float(min_confidence)
    except (TypeError, ValueError):
        threshold = math.nan
    if not (0.0 < threshold <= 1.0):
        raise DsbuildError(f"--min-confidence must be in (0, 1], not {min_confidence!r} — e.g. 0.9", exit_code=2)
    need = {"image_id", "given_label", "suggested_label", "suggested_confidence"}
    missing = need - set(issues.columns)
    if missing:
        raise ValueError(f"issues needs columns {sorted(need)}; missing {sorted(missing)}")
    df = issues.copy()
    conf = pd.to_numeric(df["suggested_confidence"], errors="coerce")
    keep = conf.notna() & (conf >= threshold) & df["suggested_label"].notna()
    keep &= df["suggested_label"].astype(str) != df["given_label"].astype(str)
    if "kind" in df:
        keep &= df["kind"].fillna("label").astype(str) == "label"
    since = df["image_id"].astype(str).isin({str(i) for i in reviewed})
    if "current_label" in df:
        since |= df["current_label"].notna() & (df["current_label"].astype(str) != df["given_label"].astype(str))
    skipped = sorted(set(df.loc[keep & since, "image_id"].astype(str)))
    keep &= ~since
    df = df[keep].assign(_conf=conf[keep]).sort_values(["_conf", "image_id"], ascending=[False, True], kind="stable")
    df = df.drop_duplicates("image_id", keep="first")
    out = []
    for rec in df.to_dict("records"):
        note = f"suggestion p={rec['_conf']:.3f}"
        quality = rec.get("label_quality")
        if quality is not None and not pd.isna(quality):
            note += f", label quality {float(quality):.3f}"
        out.append(Decision(image_id=str(rec["image_id"]), action="relabel", new_label=str(rec["suggested_label"]), note=note))
    return out, skipped


# --------------------------------------------------------------------------- events


_HISTORY_COLUMNS = ("image_id", "action", "old_label", "new_label", "old_status", "new_status")


def plan_events(decisions: Sequence[Decision], *, current: "pandas.DataFrame", history: "pandas.DataFrame | None" = None,
                source: str, at: datetime, last_run_at: datetime | None = None, from_file: bool = False) -> list[dict]:
    """Label events for ``decisions`` (one per decision, in order, but none for one that already stands); all or nothing.

    ``current``: the dataset's ``images`` rows with ``image_id``, ``label``
    (current) and ``status`` (current). ``history``: the dataset's earlier
    ``label_events`` with ``image_id``, ``action``, ``old_label``, ``new_label``,
    ``old_status``, ``new_status`` and, if present, ``event_id`` (their order;
    otherwise the row order is used) and, if present, ``changed_at``; needed for
    ``undo`` and to see a decision that already stands. ``last_run_at``: when the
    latest mislabel run started (``None``: no run). ``source`` (e.g.
    ``review:decisions.csv``) and ``at`` are stamped on every event.

    A decision that already stands gives no event ("already applied": a decisions
    file run again, see the module docstring); the caller counts them as
    ``len(decisions) - len(events)``. ``from_file``: the decisions are a file's rows (``source`` names
    the file), which may be run again: an undo whose image's latest event from ``source`` is an undo
    already stands (``history`` needs a ``source`` column for it).

    Returns dicts with keys ``image_id``, ``action``, ``old_label``,
    ``new_label``, ``old_status``, ``new_status``, ``source``, ``at``, ``note``
    (semantics in the module docstring). Raises one DsbuildError listing every
    decision that cannot apply (unknown image, nothing to undo, relabel to the
    current label, review of a rejected/failed image).
    """
    problems = _Problems()
    events = _plan(decisions, current=current, history=history, source=source, at=at, last_run_at=last_run_at,
                   from_file=from_file, problems=problems)
    problems.raise_if_any("the review")
    return events


def _plan(decisions: Sequence[Decision], *, current: "pandas.DataFrame", history: "pandas.DataFrame | None",
          source: str, at: datetime, last_run_at: datetime | None, from_file: bool, problems: _Problems) -> list[dict]:
    """:func:`plan_events`'s events; the decisions that cannot apply are added to ``problems``."""
    need = {"image_id", "label", "status"}
    if need - set(current.columns):
        raise ValueError(f"current needs columns {sorted(need)}; missing {sorted(need - set(current.columns))}")
    cols = ["image_id", "label", "status", *(["reason"] if "reason" in current.columns else [])]
    state = {str(r["image_id"]): r for r in current[cols].to_dict("records")}
    stacks = undo_stacks(history)
    own = _latest_action_by_image(history, source) if from_file else {}
    events: list[dict] = []
    seen: set[str] = set()
    for d in decisions:
        where = d.line
        rec = state.get(d.image_id)
        if rec is None:
            problems.add(where, f"unknown image {d.image_id}",
                         in_app=f"image {d.image_id} is not an image of this dataset in the catalog now (a build since "
                                "this page was loaded?) — reload the page")
            continue
        if d.image_id in seen:
            problems.add(where, f"a second decision for image {d.image_id} in one review — give one decision per image",
                         in_app=f"two decisions for image {d.image_id} in one request — send one decision per image")
            continue
        seen.add(d.image_id)
        label, status = _text(rec["label"]), _text(rec["status"])
        if _already_applied(d.action, d.new_label, label, status, stacks.get(d.image_id, []), last_run_at):
            continue
        if d.action == "undo" and own.get(d.image_id) == "undo":
            continue  # this file's undo ran already: running the file again must not walk back further
        event = {"image_id": d.image_id, "action": d.action, "old_label": label, "new_label": label,
                 "old_status": status, "new_status": None, "source": source, "at": at, "note": d.note}
        if d.action == "undo":
            stack = stacks.get(d.image_id, [])
            if not stack:
                problems.add(where, f"nothing to undo for image {d.image_id} — it has no review decision left",
                             in_app=f"nothing to undo for image {d.image_id} — it has no review decision left (undone "
                                    "elsewhere since?); reload the page to see its state")
                continue
            k = undo_target(stack)
            undone = stack[k]
            if d.undoes is not None and d.undoes not in {e.get("event_id") for e in stack[k:]}:
                problems.add(where, _changed_since(d.image_id, d.undoes, history))
                continue
            events.extend(_undo_events(stack, k, event, d.note))
            continue
        elif status not in REVIEWABLE:
            problems.add(where, not_reviewable(d.image_id, status, _text(rec.get("reason"))),
                         in_app=not_reviewable(d.image_id, status, _text(rec.get("reason")), in_app=True))
            continue
        elif d.action == "relabel":
            if d.new_label == label:  # the review turns it into a keep first (same_label_keep)
                problems.add(where, f"image {d.image_id} already has label '{label}' — use keep to confirm it")
                continue
            event["new_label"] = d.new_label
        elif d.action == "remove":
            event["new_status"] = REMOVED_STATUS
            event["note"] = d.note or REMOVED_REASON
        events.append(event)
    return events


COMPANION = "companion"
"""Key of an event :func:`plan_events` writes with an undo, not for a decision of its own (:func:`_undo_events`): an
undo of a build's follow-up of a class change, or that follow-up applied again. Callers count decisions without them."""


def _undo_events(stack: Sequence[dict], k: int, event: dict, note: str | None) -> list[dict]:
    """The events of an undo of ``stack[k]`` (:func:`undo_target`), ``event``: the undo's base (image, current label
    and status, source, at). Every event from the top of the stack down to ``stack[k]`` is popped by an undo of its
    own (each undo pops one: the ``images`` and ``review_state`` views and :func:`undo_stacks` count them so), the
    builds' follow-ups above it first; then each follow-up is applied again when it still applies (it renamed the
    label the image has after the undo: a keep undone over a relabel to a class since renamed leaves the renamed
    class). So the image ends where the decision found it, with every class change since applied; the label never
    passes through a class that is gone. Each event's ``old_label`` / ``old_status`` is the previous one's result."""
    out: list[dict] = []
    label, status = event["old_label"], event["old_status"]
    for i in range(len(stack) - 1, k - 1, -1):
        popped = stack[i]
        below = stack[i - 1] if i > 0 else None
        what = (f"undo of event {popped['event_id']} ({_describe_event(popped)})" if popped.get("event_id") is not None
                else f"undo of {_describe_event(popped)}")
        if i > k:
            what += ", a build's follow-up of a class change, with the decision under it"
        elif note:
            what = f"{what}; {note}"
        ev = {**event, "old_label": label, "old_status": status,
              "new_label": popped["old_label"] if popped["old_label"] is not None else label,
              "new_status": below["new_status"] if below is not None else None, "note": what}
        if i > k:
            ev[COMPANION] = True
        out.append(ev)
        label, status = ev["new_label"], ev["new_status"]
    for f in stack[k + 1:]:
        if f["old_label"] == label and f["new_label"] is not None:
            out.append({**event, "action": "relabel", "old_label": label, "new_label": f["new_label"],
                        "old_status": status, "new_status": status, "source": f.get("source") or event["source"],
                        "note": f.get("note"), COMPANION: True})
            label = f["new_label"]
    return out


@dataclass(frozen=True)
class Successor:
    """An item of a build that succeeds an item set aside before, under another class: the same file (origin
    and content). ``image_id`` / ``label`` / ``status``: the new item, its given label and its status now;
    ``old_id`` / ``old_label``: the item set aside and the label its source gave; ``why``: the class change in
    words (e.g. ``class 'cat' renamed 'kitty'``)."""

    image_id: str
    label: str
    status: str | None
    old_id: str
    old_label: str
    why: str


@dataclass(frozen=True)
class Carried:
    """What :func:`carried_events` did: ``events`` to append; ``carried``: decisions in effect on the new items
    (an event each); ``lost``: label no longer a class → decisions that could not be carried (a relabel to it, and a
    keep that confirmed it); ``agreed``: images relabelled in review whose source now gives that label (their relabel
    is carried as a keep)."""

    events: list[dict]
    carried: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    agreed: int = 0


def carried_events(successors: Sequence[Successor], *, history: "pandas.DataFrame | None", labels: Collection[str],
                   source: str, at: datetime, follow: Mapping[str, str] | None = None) -> Carried:
    """Label events giving each successor the review decisions that stand on the item it succeeds.

    ``history``: the ``label_events`` rows of the old items (columns as for :func:`plan_events`, with
    ``event_id``; ``label_quality`` and ``note`` are carried when present). ``labels``: the classes of the
    dataset now. Per successor, from the old item's decisions not undone:

    * a relabel in effect (the old item's label is not the one its source gave) to a label of ``labels``
      (or to a class that is gone into one of them, renamed or merged: ``follow``, old → new class) becomes a
      ``relabel`` from the new given label; to the new given label itself (the source now agrees with the
      reviewer), a ``keep`` noted so, which keeps the image decided by the reviewer (counted in ``agreed``); to a
      label that is no longer a class, nothing: counted in ``lost``;
    * a standing ``remove`` becomes a ``remove`` (the image stays out of training), a standing ``keep``
      a ``keep`` (not when it confirmed a relabel that could not be carried: counted in ``lost``); a
      relabel back to the given label, which confirmed it, a ``keep``.

    Events are shaped as :func:`plan_events`'s, noted ``carried over from <old id> (<why>)`` (plus the
    original note), with the old event's ``label_quality``. Nothing is read or written here.
    """
    stacks = undo_stacks(history)
    latest: dict[str, dict] = {}
    if history is not None and len(history):
        hist = history.sort_values("event_id", kind="stable")
        for rec in hist[["image_id", "new_label", "new_status"]].to_dict("records"):
            latest[str(rec["image_id"])] = rec
    labels = set(labels)
    events: list[dict] = []
    lost: dict[str, int] = {}
    n_carried = n_agreed = 0
    for s in successors:
        stack = stacks.get(s.old_id, [])
        if not stack:
            continue
        net_label = _text(latest[s.old_id]["new_label"])
        label = s.label
        relabels = [e for e in stack if e["action"] == "relabel"]
        relabelled = bool(relabels) and net_label is not None and net_label != s.old_label
        if relabelled and net_label not in labels and follow and net_label in follow:
            net_label = follow[net_label]
        dead = agreed = False
        if relabelled:
            if net_label == label:
                # The source now gives the label the reviewer chose (the reviewed labels written back into a labels
                # CSV): no relabel is needed, but the decision is still the reviewer's — carried as a keep below, so
                # that the image stays decided by whoever decided it (trial 11, H1: it was counted, not written).
                agreed = True
            elif net_label in labels:
                events.append(_carried_event(s, "relabel", label, net_label, relabels[-1], source=source, at=at))
                label = net_label
                n_carried += 1
            else:
                lost[net_label] = lost.get(net_label, 0) + 1
                dead = True
        top = stack[-1]
        if top["action"] == "remove":
            events.append(_carried_event(s, "remove", label, label, top, source=source, at=at,
                                         new_status=REMOVED_STATUS))
            n_carried += 1
        elif top["action"] == "keep" or (top["action"] == "relabel" and (agreed or not relabelled)):
            if dead:
                lost[net_label] = lost.get(net_label, 0) + 1  # the keep confirmed a label that is gone
            else:
                agrees = f"{AGREED_NOTE} ('{label}')" if agreed else None
                events.append(_carried_event(s, "keep", label, label, top, source=source, at=at, also=agrees))
                n_carried += 1
        if agreed:
            n_agreed += 1
    return Carried(events=events, carried=n_carried, lost=lost, agreed=n_agreed)


def _carried_event(s: Successor, action: str, old_label: str, new_label: str, old: dict, *, source: str,
                   at: datetime, new_status: str | None = None, also: str | None = None) -> dict:
    """One event of :func:`carried_events`: ``old`` (a decision of the old item) carried to ``s``; ``also``: words
    added to the note after the class change (why a relabel became a keep)."""
    why = f"{s.why}; {also}" if also else s.why
    note = f"carried over from {s.old_id} ({why})" + (f"; {old['note']}" if old.get("note") else "")
    return {"image_id": s.image_id, "action": action, "old_label": old_label, "new_label": new_label,
            "old_status": s.status, "new_status": new_status, "source": source, "at": at, "note": note,
            "label_quality": old.get("label_quality")}


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _latest_action_by_image(history: "pandas.DataFrame | None", source: str) -> dict[str, str]:
    """Per image, the action of its latest event with this ``source`` (events from other sources ignored)."""
    if history is None or len(history) == 0 or "source" not in history.columns:
        return {}
    hist = history.sort_values("event_id", kind="stable") if "event_id" in history.columns else history
    mine = hist[hist["source"].astype(str) == source]
    return {str(i): str(a) for i, a in zip(mine["image_id"], mine["action"])}  # later rows overwrite earlier


def undo_stacks(history: "pandas.DataFrame | None") -> dict[str, list[dict]]:
    """Per image, the events not undone yet, oldest first (each undo pops the latest)."""
    if history is None or len(history) == 0:
        return {}
    missing = set(_HISTORY_COLUMNS) - set(history.columns)
    if missing:
        raise ValueError(f"history needs columns {list(_HISTORY_COLUMNS)}; missing {sorted(missing)}")
    hist = history.sort_values("event_id", kind="stable") if "event_id" in history.columns else history
    cols = [*_HISTORY_COLUMNS,
            *(c for c in ("event_id", "changed_at", "label_quality", "note", "source") if c in hist.columns)]

    def record(raw: dict) -> dict[str, Any]:
        rec: dict[str, Any] = {k: _text(raw[k]) for k in _HISTORY_COLUMNS}
        for k in ("note", "source"):
            if k in raw:
                rec[k] = _text(raw[k])
        if "label_quality" in raw:
            rec["label_quality"] = None if _text(raw["label_quality"]) is None else float(raw["label_quality"])
        if "event_id" in raw:
            rec["event_id"] = None if _text(raw["event_id"]) is None else int(raw["event_id"])
        if "changed_at" in raw:  # a timestamp, kept as one (compared with the mislabel run's start)
            rec["changed_at"] = None if _text(raw["changed_at"]) is None else raw["changed_at"]
        return rec

    return _stacked(record(raw) for raw in hist[cols].to_dict("records"))


def follows_class(event: dict) -> bool:
    """Whether ``event`` (a record of :func:`undo_stacks`) is a build's relabel that followed a class renamed or
    merged (``class 'car' renamed 'motor car'``, :func:`dsbuild.carryover.follow_classes`): no decision of its own,
    but the consequence of the relabel under it. A build's carried decision (noted ``carried over from …``) is not
    one: it stands for the decision it carries."""
    source = event.get("source") or ""
    return (event.get("action") == "relabel" and source.startswith(BUILD_SOURCE)
            and not CARRIED_NOTE.match(event.get("note") or ""))


def undo_target(stack: Sequence[dict]) -> int:
    """The index in ``stack`` (an image's events not undone, oldest first: :func:`undo_stacks`) of the decision an
    undo takes back: the top one, unless the top is a build's follow-up of a class change (:func:`follows_class`),
    then the decision under the follow-ups (an undo takes back what a person or a file decided, not the build's
    renaming of it). -1 for an empty stack."""
    k = len(stack) - 1
    while k > 0 and follows_class(stack[k]):
        k -= 1
    return k


def _stacked(records) -> dict[str, list[dict]]:
    """Per image_id, the events of ``records`` (oldest first) not undone: each ``undo`` pops the latest."""
    stacks: dict[str, list[dict]] = {}
    for rec in records:
        stack = stacks.setdefault(str(rec["image_id"]), [])
        if rec["action"] == "undo":
            if stack:
                stack.pop()
        else:
            stack.append(rec)
    return stacks


def _already_applied(action: str, new_label: str | None, label: str | None, status: str | None, stack: list[dict],
                     last_run_at: datetime | None) -> bool:
    """Whether ``action`` (→ ``new_label``) is the image's decision that stands now, so applying it again changes nothing.

    ``label`` / ``status``: the image's current ones; ``stack``: its decisions not undone, oldest first
    (:func:`undo_stacks`, with ``changed_at``). Already applied are: a ``relabel`` to the current label
    when the latest standing relabel set that label (a relabel to the label the image was *given*, never
    changed, is not: that is the mistake "use keep" catches); a ``remove`` of an image whose standing
    decision is that remove; a ``keep`` on top of the stack made after the latest mislabel run started
    (a keep before it confirms the label against a run that had not scored it yet: a new event, with the
    new run's label quality).
    """
    if not stack or action == "undo":
        return False
    top = stack[-1]
    if action == "relabel":
        last = next((e for e in reversed(stack) if e["action"] == "relabel"), None)
        return last is not None and new_label is not None and last["new_label"] == new_label == label
    if action == "remove":
        return top["action"] == "remove" and status == REMOVED_STATUS
    if action == "keep":
        if top["action"] != "keep":
            return False
        made = top.get("changed_at")
        return last_run_at is None or (made is not None and made >= last_run_at)
    return False


def not_reviewable(image_id: str, status: str | None, reason: str | None, *, in_app: bool = False) -> str:
    """Why image ``image_id`` (``status``, ``reason``) cannot be relabelled, kept or removed; undo says how
    only where it helps (an image removed in review). ``in_app``: the review app's words (its page showed the
    image as reviewable, so its state changed since the page was loaded)."""
    why = f" ({reason})" if reason else ""
    back = "; undo brings it back" if reason == REMOVED_REASON else ""
    if in_app:
        back = ("; press u to undo the remove if you made it on this page, else reload the page to see its state"
                if reason == REMOVED_REASON else "; it changed since this page was loaded — reload the page to see its state")
    return f"image {image_id} has status '{status}'{why} — only ok or duplicate images can be relabelled, kept or removed{back}"


def _changed_since(image_id: str, undoes: int, history: "pandas.DataFrame | None") -> str:
    """Why an undo of event ``undoes`` is refused: the image's latest event is another one (who made it, when)."""
    latest = None
    if history is not None and len(history) and "event_id" in history.columns:
        mine = history[history["image_id"].astype(str) == image_id].sort_values("event_id", kind="stable")
        if len(mine):
            latest = mine.iloc[-1].to_dict()
    if latest is None:
        return f"nothing to undo for image {image_id} — it has no review decision left"
    what = str(latest["action"])
    if what == "relabel":
        what = f"relabel {latest['old_label']} → {latest['new_label']}"
    source = _text(latest.get("source"))
    at = latest.get("changed_at")
    when = f" at {at:%Y-%m-%d %H:%M:%S} UTC" if isinstance(at, datetime) else ""
    by = f" by {source}" if source else ""
    return (f"image {image_id} changed since event {undoes}, the decision to undo: event {int(latest['event_id'])} "
            f"({what}{by}{when}) came after it — nothing was undone; look at the image again and decide anew")


def _describe_event(ev: dict) -> str:
    if ev["action"] == "relabel":
        return f"relabel {ev['old_label']} → {ev['new_label']}"
    return str(ev["action"])


# --------------------------------------------------------------------------- who decided

SUGGESTION_SOURCE = "review:suggestions"
"""The ``label_events.source`` prefix of ``review --accept-suggestions`` (``review:suggestions@0.9``): a machine's decision."""

BUILD_SOURCE = "build:"
"""The ``label_events.source`` prefix of a build's carry-over (``build:<id>``): it carries a decision, it makes none."""

AGREED_NOTE = "the source now gives the label chosen in review"
"""In the note of a keep a build carried over for a relabel whose label the image's source now gives (:func:`carried_events`)."""

CARRIED_NOTE = re.compile(r"^carried over from (\S+) \(")
"""The note of a decision a build carried over (:func:`carried_events`); group 1: the item it was carried from."""

_PAST = {"relabel": "relabelled", "keep": "kept", "remove": "removed"}


@dataclass(frozen=True)
class Standing:
    """The review decision that stands on an image (the top of its undo stack), traced through a build's carry-over
    to the event that made it: ``action`` (relabel, keep, remove; a relabel under a later keep reads as the keep),
    ``source`` of the deciding event, ``at`` when it was made, ``by_person``: made by a person (a decisions file,
    the review app, ``review:api``), not by ``--accept-suggestions``."""

    action: str
    source: str
    at: Any
    by_person: bool

    def words(self) -> str:
        """``relabelled by a person 2026-12-02`` / ``kept by suggestions@0.9 2026-12-02`` (the report's ``reviewed``)."""
        who = "a person" if self.by_person else self.source.removeprefix("review:")
        day = str(self.at)[:10] if self.at is not None else ""
        return f"{_PAST.get(self.action, self.action)} by {who} {day}".rstrip()


def standing_decisions(history: "pandas.DataFrame | None") -> dict[str, Standing]:
    """image_id → the :class:`Standing` decision of every image of ``history`` (``label_events`` rows of a dataset,
    with ``source`` and ``note``; include the items set aside by builds, whose decisions were carried) that has one.

    Sources: ``review:suggestions@X`` is a machine's; a build's event (``build:<id>``) is not a decision: one
    noted ``carried over from <old id> (…)`` stands for the old item's standing decision (followed, a class renamed
    twice goes back twice), any other (a relabel following a renamed class) for the decision under it on the same
    image; every other source (``review:<file>``, ``review:api``, ``ui``) is a person's.
    """
    if history is None or len(history) == 0:
        return {}
    hist = history.sort_values("event_id", kind="stable") if "event_id" in history.columns else history
    stacks = _stacked(hist[["image_id", "action", "source", "note", "changed_at"]].to_dict("records"))
    out: dict[str, Standing] = {}

    def trace(image_id: str, depth: int, seen: frozenset) -> Standing | None:
        stack = stacks.get(image_id) or []
        for i in range(len(stack) - 1, -1, -1):
            ev = stack[i]
            source = str(ev["source"])
            if not source.startswith(BUILD_SOURCE):
                return Standing(str(ev["action"]), source, ev["changed_at"], not source.startswith(SUGGESTION_SOURCE))
            m = CARRIED_NOTE.match(_text(ev["note"]) or "")
            if m:
                old = m.group(1)
                if old in seen or depth > 50:
                    return None
                return trace(old, depth + 1, seen | {old})
            # a relabel following a renamed class: the decision under it on this image
        return None

    for image_id, stack in stacks.items():
        found = trace(image_id, 0, frozenset({image_id})) if stack else None
        if found is not None:  # the action that stands is the top one's (a carried keep over a carried relabel) —
            # unless that keep only records that the source now gives the label a relabel chose: still the relabel
            top = stack[-1]
            agreed = AGREED_NOTE in (_text(top.get("note")) or "") and str(top["source"]).startswith(BUILD_SOURCE)
            out[image_id] = found if agreed else dataclasses.replace(found, action=str(stack[-1]["action"]))
    return out
