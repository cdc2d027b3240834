"""The ``.dsbuild-export`` marker of an export folder: which entries each export in the folder wrote.

An export folder can hold several exports (``pets.csv`` and ``more.csv``; an ImageFolder tree and its
dataset's CSV) and files dsbuild did not write (fastai's ``models/`` and ``export.pkl``, notes). The marker
is JSON::

    {"dsbuild_export": 2, "exports": [{"dataset": "pets", "format": "imagefolder",
      "entries": ["labels.csv", "train", "valid"], "files": ["labels.csv", "train/cat/….jpg", …]}]}

``entries`` are the top-level names the export owns, ``files`` every file it wrote (relative, ``/``-separated).
A re-export of the same dataset and format replaces exactly its ``entries``, and only when every file under
them is one of its ``files``; everything else in the folder is left alone.

Earlier dsbuild versions wrote a marker holding only the dataset name (and replaced the whole folder). Such a
marker is read conservatively (:func:`read`): the old export owns only what that format always writes — an
ImageFolder's ``labels.csv`` (with the exporter's header and relative paths) and the split folders it names,
whose files are the ones it lists; or ``<dataset>.csv`` with the CSV exporter's header. Nothing else is its own.
"""

from __future__ import annotations

import csv as csvmod
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dsbuild.errors import DsbuildError
from dsbuild.exporters.csv import SUFFIX, is_export

MARKER = ".dsbuild-export"
VERSION = 2
WORK_PREFIX = ".dsbuild-export-"
"""Names of the work folders an export makes inside an existing export folder (never counted as the user's)."""


def work_name(kind: str, prefix: str = WORK_PREFIX) -> str:
    """A work entry's name: ``<prefix><kind>-<pid>-<random>`` — the process that owns it is in its name, so that
    a later export can tell an entry left by a killed export (:func:`is_stale`) from one another export is using."""
    return f"{prefix}{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def is_stale(name: str, prefix: str = WORK_PREFIX) -> bool:
    """Whether the work entry ``name`` (:func:`work_name`) belongs to no running process of this machine: its
    owner was killed (SIGKILL, a power cut) before it could clean up. A name without a process id
    (``<kind>-<8 hex>``) was written by an earlier dsbuild, whose export has ended; a name of any other shape is
    not dsbuild's and never stale."""
    parts = name[len(prefix):].split("-")
    if not (len(parts) in (2, 3) and len(parts[-1]) == 8 and all(c in "0123456789abcdef" for c in parts[-1])):
        return False  # not a name dsbuild makes: never touched
    if len(parts) == 2:
        return True
    if not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


@dataclass(frozen=True)
class Record:
    """One export in a folder: its dataset, format, the top-level ``entries`` it owns and every file it wrote."""

    dataset: str
    format: str
    entries: tuple[str, ...]
    files: frozenset[str] = field(repr=False)
    legacy: bool = False  # read from a marker of an earlier dsbuild (the dataset name only)

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.format)

    def merged(self, other: Record) -> Record:
        """A record owning both ``self``'s and ``other``'s entries and files (the marker while a swap is under way)."""
        return Record(self.dataset, self.format, tuple(sorted({*self.entries, *other.entries})),
                      self.files | other.files)


def scan(folder: Path, dataset: str, fmt: str) -> Record:
    """The record of a freshly written export tree ``folder``: its top-level names and every file under it."""
    entries = tuple(sorted(p.name for p in folder.iterdir() if p.name != MARKER))
    return Record(dataset, fmt, entries, frozenset(files_under(folder, entries)))


def files_under(folder: Path, entries: Iterable[str]) -> list[str]:
    """Every file (or link, or anything not a folder) at or under ``folder/<entry>``, relative, ``/``-separated."""
    found = []
    for name in entries:
        top = folder / name
        if top.is_symlink() or not top.is_dir():
            if top.is_symlink() or top.exists():
                found.append(name)
            continue
        for dirpath, dirnames, filenames in os.walk(top):  # links to folders are listed, not followed
            rel = Path(dirpath).relative_to(folder)
            found.extend((rel / f).as_posix() for f in filenames)
            found.extend((rel / d).as_posix() for d in dirnames if (Path(dirpath) / d).is_symlink())
    return sorted(found)


def foreign_files(folder: Path, record: Record) -> list[str]:
    """The files under ``record``'s entries in ``folder`` that ``record`` did not write (never to be deleted)."""
    return [f for f in files_under(folder, record.entries) if f not in record.files]


def read(folder: Path) -> list[Record]:
    """The exports recorded in ``folder``'s marker ([] when there is none).

    Raises DsbuildError when the marker cannot be read: what the folder holds is then unknown, and nothing in it
    may be replaced.
    """
    path = folder / MARKER
    if not path.exists() and not path.is_symlink():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _unreadable(folder, str(getattr(exc, "strerror", None) or exc)) from None
    if not text.lstrip().startswith("{"):
        return _legacy(folder, text.strip())
    try:
        data = json.loads(text)
        if data.get("dsbuild_export") != VERSION:
            raise ValueError(f"version {data.get('dsbuild_export')!r}, this dsbuild reads {VERSION}")
        records = [Record(str(r["dataset"]), str(r["format"]), tuple(str(e) for e in r["entries"]),
                          frozenset(str(f) for f in r["files"])) for r in data["exports"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _unreadable(folder, f"not a dsbuild export marker: {exc}") from None
    for rec in records:
        if any(not _plain_name(e) for e in rec.entries):
            raise _unreadable(folder, f"the {rec.format} export of '{rec.dataset}' names an entry outside the folder")
    return records


def write(folder: Path, records: Iterable[Record]) -> None:
    """Write ``records`` as ``folder``'s marker, through a temp file and a rename (never a half marker)."""
    data = {"dsbuild_export": VERSION, "exports": [
        {"dataset": r.dataset, "format": r.format, "entries": list(r.entries), "files": sorted(r.files)}
        for r in sorted(records, key=lambda r: r.key)]}
    tmp = folder / work_name("marker")
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, folder / MARKER)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unreadable(folder: Path, why: str) -> DsbuildError:
    return DsbuildError(f"{folder / MARKER} cannot be read ({why}), so which files in {folder} an export wrote is "
                        f"unknown — nothing was changed; export to a new folder")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..", MARKER) and "/" not in name and "\\" not in name


def _legacy(folder: Path, dataset: str) -> list[Record]:
    """The exports an earlier dsbuild's marker (``dataset`` only) can be shown to own (see module doc)."""
    records = []
    index = folder / "labels.csv"
    if index.is_file() and not index.is_symlink() and is_export(index):
        with open(index, newline="", encoding="utf-8", errors="replace") as fh:
            rows = list(csvmod.DictReader(fh))
        paths = {r["path"] for r in rows if r.get("path")}
        splits = sorted({r["split"] for r in rows if _plain_name(r.get("split") or "")})
        if paths and all(not Path(p).is_absolute() and p.split("/", 1)[0] in splits for p in paths):
            entries = ("labels.csv", *(s for s in splits if (folder / s).is_dir() and not (folder / s).is_symlink()))
            records.append(Record(dataset, "imagefolder", tuple(sorted(entries)), frozenset({"labels.csv", *paths}),
                                  legacy=True))
    own = folder / f"{dataset}{SUFFIX}"
    if _plain_name(own.name) and own.is_file() and not own.is_symlink() and is_export(own) and \
            not any(own.name in r.entries for r in records):
        records.append(Record(dataset, "csv", (own.name,), frozenset({own.name}), legacy=True))
    return records
