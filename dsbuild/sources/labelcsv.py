"""The ``labels_csv`` source: local image files listed in a CSV with their labels (and splits).

The layout of an existing dataset besides class folders: a folder of images and a ``labels.csv`` such as
``file,label`` or fastai's ``fname,label`` / ``name,label``, with an optional ``split`` column
(``train``/``valid``/``test`` and the split folders' other names) or fastai's ``is_valid`` (true → valid,
false → train). Paths are relative to the CSV's folder (an absolute path is taken as written) and may not
leave the dataset's ``labels_root`` — by default the CSV's folder. Each listed file becomes a
:class:`~dsbuild.sources.folders.FileSource` and is verified exactly as a file of a class folder (sniffed,
allow-listed). A row that cannot be used (no such file, a path outside the folder, no label, an unknown
split) is skipped and named with its line number; a CSV without a file or a label column is refused. The
separator is the comma, or the one of ``;``, tab and ``|`` that the header row is split by when it gives a file
and a label column there and the comma does not (spreadsheets in many locales save ``;``). Each line is one row
(LF, CRLF or a bare CR ends it): a quote left open costs its own row, named, never the rows after it.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from dsbuild.errors import DsbuildError, closest
from dsbuild.formats import not_regular
from dsbuild.manifest import label_problem
from dsbuild.sources import SPLIT_NAMES

FILE_COLUMNS = ("file", "fname", "filename", "name", "path", "image")
LABEL_COLUMNS = ("label", "class")
IS_VALID = {"true": "valid", "1": "valid", "yes": "valid", "false": "train", "0": "train", "no": "train"}
SHOWN_PROBLEMS = 20  # per CSV; the rest are counted
DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class Row:
    """One usable row: its line number, the file's path (the CSV's folder resolved, then the path as written,
    normalised), its label and the split the CSV gives (or None)."""

    line: int
    path: Path
    label: str
    split: str | None


@dataclass
class LabelsCsv:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)  # every label the CSV names, a skipped row's too
    outside: list[Path] = field(default_factory=list)  # the files of the rows skipped as outside the root
    hint: str | None = None  # what to do about them (set labels_root), when there are such rows
    relabelled: list[str] = field(default_factory=list)  # rows giving a file listed before another label (both kept)

    def notes(self) -> list[str]:
        """The problems for the build's summary: the first :data:`SHOWN_PROBLEMS`, then how many more, the hint, and
        the files listed with more than one label (the first :data:`SHOWN_PROBLEMS` of them, then how many more)."""
        shown = self.problems[:SHOWN_PROBLEMS]
        more = len(self.problems) - len(shown)
        again = self.relabelled[:SHOWN_PROBLEMS]
        more_again = len(self.relabelled) - len(again)
        return (shown + ([f"… and {more} more rows skipped"] if more else []) + ([self.hint] if self.hint else [])
                + again + ([f"… and {more_again} more rows giving a listed file another label"] if more_again else []))


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _near_misses(header: list[str], wanted: list[tuple[str, ...]], *, taken: set[int | None]) -> list[tuple[str, str]]:
    """For each group of column names in ``wanted`` (a column the header lacks), the header cell that is a near miss
    of one of them (``labels``, ``lable``, ``img``) and that name, as ``(cell, name)``; cells at ``taken`` (columns
    in use) and cells already paired are not offered. A group with no near miss gives nothing."""
    out: list[tuple[str, str]] = []
    used = {i for i in taken if i is not None}
    for names in wanted:
        for i, cell in enumerate(header):
            if i in used or not cell:
                continue
            name = closest(cell, names)
            if name is not None:
                out.append((cell, name))
                used.add(i)
                break
    return out


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _cells(line: str, sep: str) -> list[str]:
    """The fields of one CSV line; raises csv.Error for a quote opened and not closed on it."""
    return next(csv.reader([line], delimiter=sep, strict=True), [])


def _delimiter(text: str) -> str:
    """The CSV's separator (module docstring): ``,`` unless another of :data:`DELIMITERS` alone splits the header
    row into a file and a label column."""
    head = text.split("\n", 1)[0].lower()

    def fits(sep: str) -> bool:
        cells = [c.strip().strip('"') for c in head.split(sep)]
        return _column(cells, FILE_COLUMNS) is not None and _column(cells, LABEL_COLUMNS) is not None

    if fits(","):
        return ","
    return next((sep for sep in DELIMITERS[1:] if fits(sep)), ",")


def read_labels_csv(path: Path, *, key: str = "labels_csv", root: Path | None = None) -> LabelsCsv:
    """The rows of the labels CSV at ``path``; raises DsbuildError (naming ``key``, the manifest's key) when it
    cannot be read or has no file or label column. A row's file is looked up (it must be a file under ``root``,
    the dataset's ``labels_root``; None: the CSV's folder — a symlink that leads out of it is outside) but not
    opened: verification opens it."""
    what = not_regular(path)
    if what is not None and not path.is_dir():  # a named pipe or a device: reading it may never end
        raise DsbuildError(f"{key}: {path} is {what} — give the CSV file that lists the images", exit_code=2)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DsbuildError(f"{key}: {path} does not exist", exit_code=2) from None
    except IsADirectoryError:
        raise DsbuildError(f"{key}: {path} is a folder — give the CSV file that lists the images "
                           "(or use imagefolder for a folder of class folders)", exit_code=2) from None
    except UnicodeDecodeError as err:
        raise DsbuildError(f"{key}: {path} is not UTF-8 text (byte {err.start}) — save it as UTF-8", exit_code=2) from None
    except OSError as err:
        raise DsbuildError(f"{key}: cannot read {path}: {err.strerror or err}", exit_code=2) from None
    sep = _delimiter(text)
    # One row per line, each read on its own (strict): a stray quote costs its own row, never the rows after it (a
    # reader over the whole text runs an unclosed quote to the end of the file). No file name or label a row may
    # hold has a line break in it.
    lines = _LINE_BREAK.split(text)
    if not text.strip():
        raise DsbuildError(f"{key}: {path} is empty — its first row must be a header such as file,label", exit_code=2)
    try:
        written = [c.strip() for c in _cells(lines[0], sep)]  # for messages: as the file has it
        header = [c.lower() for c in written]
    except csv.Error as err:
        raise DsbuildError(f"{key}: {path} line 1: not a valid CSV row ({err}) — check the quotes on this line",
                           exit_code=2) from None
    file_col, label_col = _column(header, FILE_COLUMNS), _column(header, LABEL_COLUMNS)
    split_col = header.index("split") if "split" in header else None
    valid_col = header.index("is_valid") if split_col is None and "is_valid" in header else None
    if file_col is None or label_col is None:
        missing = " and no ".join(f"{what} column ({', '.join(names)})" for what, names, col in
                               (("file", FILE_COLUMNS, file_col), ("label", LABEL_COLUMNS, label_col)) if col is None)
        renames = _near_misses(header, [names for names, col in ((FILE_COLUMNS, file_col), (LABEL_COLUMNS, label_col))
                                        if col is None], taken={file_col, label_col, split_col, valid_col})
        rename = (" — rename " + " and ".join(f"column '{written[header.index(cell)]}' to {name}"
                                              for cell, name in renames) + ";" if renames else " —")
        raise DsbuildError(f"{key}: {path} line 1: header {sep.join(written)!r} has no {missing}{rename} the first row "
                           "must be a header such as file,label (optional: split or is_valid; separated by commas, or "
                           "by ';', tabs or '|')", exit_code=2)
    base = path.parent.resolve()
    top = base if root is None else Path(os.path.abspath(root)).resolve()  # a symlinked data folder: its target
    out = LabelsCsv()
    name = path.name
    first: dict[tuple[str, str], int] = {}  # (path, label) → the line that listed it first
    label_of: dict[str, tuple[str, int]] = {}  # path → the first label it was given, and that line
    for line, text_line in enumerate(lines[1:], start=2):
        try:
            cells = _cells(text_line, sep)
        except csv.Error as err:
            out.problems.append(f"{name} line {line}: not a valid CSV row ({err}) — check the quotes on this line; "
                                "skipped")
            continue
        if not any(c.strip() for c in cells):
            continue
        cell = lambda col: cells[col].strip() if col is not None and col < len(cells) else ""  # noqa: E731
        written, label = cell(file_col), cell(label_col)
        if label and not label_problem(label):  # an unsafe label is refused below, and is no class
            out.labels.add(label)
        if not written:
            out.problems.append(f"{name} line {line}: no file — skipped")
            continue
        if not label:
            out.problems.append(f"{name} line {line}: {written!r} has no label — skipped")
            continue
        why = label_problem(label)
        if why:
            out.problems.append(f"{name} line {line}: label {label!r} {why} — skipped")
            continue
        split = None
        if split_col is not None and cell(split_col):
            split = SPLIT_NAMES.get(cell(split_col).lower())
            if split is None:
                out.problems.append(f"{name} line {line}: split {cell(split_col)!r} is not train, valid or test — "
                                    "skipped")
                continue
        elif valid_col is not None and cell(valid_col):
            split = IS_VALID.get(cell(valid_col).lower())
            if split is None:
                out.problems.append(f"{name} line {line}: is_valid {cell(valid_col)!r} is not true or false — skipped")
                continue
        file = Path(os.path.normpath(base / written.replace("\\", "/")))  # an absolute path stays as written
        if not file.exists():  # the name in the other Unicode form (a CSV written on a Mac: NFD; most tools: NFC)
            file = next((f for f in (Path(os.path.normpath(base / unicodedata.normalize(form, written).replace(
                "\\", "/"))) for form in ("NFC", "NFD")) if f != file and f.exists()), file)
        try:
            real = file.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            real = file
        if not real.is_relative_to(top):
            where = "the folder that holds " + name if root is None else "the dataset's labels_root"
            # a symlink (to a file, or a folder on the way) that leads out of the root is outside, like '../'
            leads = f" (it leads to {real})" if real != file else ""
            out.problems.append(f"{name} line {line}: {written!r} is outside {top}{leads} — skipped: a labels CSV's "
                                f"files stay in {where}")
            if not leads:
                out.outside.append(file)
            continue
        rel = real.relative_to(top).as_posix()
        if not file.exists():
            where = "" if os.path.isabs(written.replace("\\", "/")) else f" in {base}"
            out.problems.append(f"{name} line {line}: {written!r} does not exist{where} — skipped")
            continue
        if file.is_dir():
            out.problems.append(f"{name} line {line}: {written!r} is a folder, not a file — skipped")
            continue
        if (rel, label) in first:
            out.problems.append(f"{name} line {line}: {written!r} is listed again with label {label!r} (first on "
                                f"line {first[rel, label]}) — skipped")
            continue
        if rel in label_of and label_of[rel][0] != label:
            # One file, two labels: which is right is the user's call. Both rows are kept (nothing lost): the build
            # catalogues the file under each label and groups the two as exact duplicates with a label conflict (one
            # of them stays in training until a decision) — said here, by line, not only as a conflict count.
            was, at = label_of[rel]
            out.relabelled.append(f"{name} line {line}: {written!r} is listed again with another label, {label!r} "
                                  f"(line {at} gives {was!r}) — both kept, as a label conflict (`dsbuild mislabels` "
                                  "lists it): keep the one right row")
        label_of.setdefault(rel, (label, line))
        first[rel, label] = line
        out.rows.append(Row(line, file, label, split))
    if out.outside:
        n, there = len(out.outside), [f for f in out.outside if f.is_file()]
        rows = f"{name}: {n} row{'s' if n != 1 else ''} list{'' if n != 1 else 's'} files outside {top}"
        if there:
            common = Path(os.path.commonpath([str(f.parent) for f in there] + [str(top)]))
            out.hint = (f"{rows} — to build {'them' if len(there) != 1 else 'it'}, set labels_root = \"{common}\" on "
                        "the dataset (the folder its files must stay in)")
        else:  # labels_root cannot help: a CSV written on another machine, or its files moved
            out.hint = f"{rows}, and none of them exists here — give the CSV paths to files on this machine"
    return out
