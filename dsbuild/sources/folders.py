"""The ``folders`` source: local class folders and ImageFolder trees.

Every file under a class's ``folders`` (recursively, hidden files skipped) is
one item of that class, its origin the file's own path there (a symlinked file is
read through its link but keeps the link's path; a symlinked folder is followed
once; broken links and loops are skipped and counted in the build's summary); an
``imagefolder`` tree gives its labels (and splits) by its subfolders. A file already catalogued with the same size and mtime, and
verified under the same settings by the same verifier revision, is skipped. The rest are verified by the
executor (:mod:`dsbuild.executor`) and reported to the build's sink.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dsbuild import formats
from dsbuild.errors import DsbuildError
from dsbuild.executor import VerifyJob, make_executor
from dsbuild.manifest import SKIPPED_FOLDER_NAMES, Dataset, not_utf8, shown
from dsbuild.rows import blob_row, image_id_for, item_row
from dsbuild.sources import SPLIT_NAMES, SourceRun, source_removed
from dsbuild.sources.labelcsv import read_labels_csv


@dataclass(frozen=True)
class FileSource:
    """One file of a dataset's folders: its label, path, size, mtime and the split its folder gave (if any)."""

    label: str
    path: Path
    size: int
    mtime_ns: int
    given_split: str | None = None


SPLIT_FOLDERS = SPLIT_NAMES
NOT_DATA = SKIPPED_FOLDER_NAMES
"""Folder names that never hold a dataset's images: macOS's zip metadata (``__MACOSX/``, its files are ``._name``
resource forks). Hidden folders (``.ipynb_checkpoints``, ``.git``) are skipped as every hidden name is."""


@dataclass(frozen=True)
class Layout:
    """How an ``imagefolder`` tree is read: ``folders`` as ``(split, label, folder)``; ``notes``: what was left out
    and why, and class folders that carry a split's name (for the build's summary); ``problem``: why the tree
    cannot be read as either layout (the build refuses it), or None."""

    folders: tuple[tuple[str | None, str, Path], ...] = ()
    notes: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def labels(self) -> list[str]:
        return sorted({label for _, label, _ in self.folders})


def _subfolders(folder: Path) -> list[Path]:
    """Non-hidden subfolders of ``folder`` (``__MACOSX`` left out), sorted by name."""
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and d.name not in NOT_DATA)
    except OSError:
        return []


def _files(folder: Path) -> list[Path]:
    """Non-hidden entries of ``folder`` that are not folders, sorted by name."""
    try:
        return sorted(f for f in folder.iterdir() if not f.name.startswith(".") and not f.is_dir())
    except OSError:
        return []


def _holds_images(folder: Path, *, limit: int = 200) -> bool:
    """Whether one of the first ``limit`` regular files under ``folder`` (recursively) is an image by its first bytes
    (:func:`dsbuild.formats.sniff`: content, never a file name); nothing is decoded."""
    for n, path in enumerate(walk(folder)):
        if n >= limit:
            return False
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue  # a FIFO would block an open
            with open(path, "rb") as fh:
                if formats.sniff(fh.read(formats.SNIFF_BYTES)).image:
                    return True
        except OSError:
            continue
    return False


def _files_text(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _names(folders: list[Path]) -> str:
    return ", ".join(f"{d.name}/" for d in folders)


def imagefolder_layout(root: Path, dataset: str = "NAME") -> Layout:
    """How the ImageFolder tree ``root`` is read: ``root/<split>/<label>/`` or ``root/<label>/``.

    Split folder names ``train``/``training``, ``valid``/``val``/``validation``, ``test``/``testing`` keep
    their split (a dataset that arrives already split is never re-split, and leakage between its splits is
    reported instead). The tree is split when a split folder holds class folders; then every other folder
    beside the split folders (fastai's ``models/``, a ``__MACOSX/``) is skipped and named in a note, and so
    is a split folder that holds images but no class folders (fastai's unlabeled ``test/``) — unless one of
    those other folders holds images: then the tree is neither layout and :attr:`Layout.problem` says what to
    do. Without a split folder of class folders, every subfolder is a class, and a class folder named like a
    split (``train/`` holding images) is named in a note. Hidden folders are skipped silently.
    """
    notes: list[str] = []
    try:
        macosx = [d for d in root.iterdir() if d.is_dir() and d.name in NOT_DATA]
    except OSError:
        macosx = []
    if macosx:
        notes.append("__MACOSX/ skipped — it holds macOS's zip metadata, not images")
    real_root = os.path.realpath(root)

    def no_loops(dirs: list[Path]) -> list[Path]:
        """``dirs`` without the symlinked folders that lead to the tree's root or above (``all -> .``), each named."""
        kept = []
        for d in dirs:
            real = os.path.realpath(d)
            if _contains(real, real_root):
                notes.append(f"{d.relative_to(root)}/ skipped: it is a symlink to {_printable(real)}, which holds the "
                             f"whole tree ({root.name}/) — read as a class it would hold every class's images again; "
                             "remove the link")
            else:
                kept.append(d)
        return kept

    subdirs = no_loops(_subfolders(root))
    named = [d for d in subdirs if d.name.lower() in SPLIT_FOLDERS]
    others = [d for d in subdirs if d.name.lower() not in SPLIT_FOLDERS]
    labelled = [d for d in named if _subfolders(d)]
    if not named:
        return Layout(tuple((None, d.name, d) for d in subdirs), tuple(notes))
    if not labelled:
        if not others:
            return Layout((), tuple(notes), problem=(
                f"{_names(named)} {'is a split folder' if len(named) == 1 else 'are split folders'} with no class "
                f"folders inside — put each class's images in <split>/<class>/ (e.g. {named[0].name}/cat/), or, if "
                f"{'it is a class' if len(named) == 1 else 'they are classes'}, list the classes under "
                f"[datasets.{dataset}.classes] with folders = [\"…\"] instead of imagefolder"))
        for d in named:
            notes.append(f"class '{d.name}' has the name of a split folder: {d.name}/ holds no class "
                         f"folders, so it is read as the class '{d.name}' (DIR/<class>/…) — if it is the "
                         f"{SPLIT_FOLDERS[d.name.lower()]} split, put its images in {d.name}/<class>/ folders")
        return Layout(tuple((None, d.name, d) for d in subdirs), tuple(notes))
    with_images = [d for d in others if _holds_images(d)]
    if with_images:
        return Layout((), tuple(notes), problem=(
            f"{root} holds split folders with class folders ({_names(labelled)}) and folders of images that are not "
            f"split folders ({_names(with_images)}): it is neither DIR/<split>/<class>/… nor DIR/<class>/… — if it is "
            f"split, move {_names(with_images)} into a split folder (as <split>/<class>/) or out of {root.name}/; if "
            f"{_names(labelled)} {'is a class' if len(labelled) == 1 else 'are classes'}, list the classes under "
            f"[datasets.{dataset}.classes] with folders = [\"…\"] instead of imagefolder"))
    if others:
        one = len(others) == 1
        notes.append(f"{_names(others)} {'is not a split folder' if one else 'are not split folders'} "
                     f"(train, valid, test): skipped — {'it holds' if one else 'they hold'} no images, and a tree "
                     f"with split folders is read as <split>/<class>/…")
    folders: list[tuple[str | None, str, Path]] = []
    for d in named:
        split = SPLIT_FOLDERS[d.name.lower()]
        files = _files(d)
        if d not in labelled:
            if files:
                notes.append(f"{d.name}/ holds {_files_text(len(files))} but no class folders (an "
                             f"unlabeled {split} set, as fastai's test/): skipped — only labelled images are imported; "
                             f"put them in {d.name}/<class>/ to import them as the {split} split")
            continue
        if files:
            notes.append(f"{d.name}/ holds {_files_text(len(files))} beside its class folders "
                         f"(e.g. {files[0].name}): skipped — only {d.name}/<class>/… is read")
        folders += [(split, c.name, c) for c in no_loops(_subfolders(d))]
    return Layout(tuple(folders), tuple(notes))


@dataclass
class Skipped:
    """What a folder scan left out and why (symlinks that lead nowhere, loops, folders it may not read, names that
    are not UTF-8): kind → (count, first example); the kinds in :data:`EACH` keep every example (up to
    :data:`SHOWN`), each named on its own line. The build's summary says so (:meth:`notes`)."""

    kinds: dict[str, tuple[int, str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    EACH = ("above", "not_utf8")
    SHOWN = 20

    def add(self, kind: str, example: str) -> None:
        n, first = self.kinds.get(kind, (0, example))
        self.kinds[kind] = (n + 1, first)
        if kind in self.EACH:
            self.examples.setdefault(kind, []).append(example)

    def notes(self) -> list[str]:
        """One line per kind, e.g. ``2 broken symlinks skipped (e.g. /src/cat/x.jpg → gone.jpg)``; one line per
        skipped link or file for the kinds in :data:`EACH`."""
        words = {"broken": ("broken symlink skipped", "broken symlinks skipped"),
                 "loop": ("symlinked folder skipped: it leads to a folder already read (a loop or a second link)",
                          "symlinked folders skipped: they lead to folders already read (loops or second links)"),
                 "unreadable": ("folder or file skipped: it cannot be read", "folders or files skipped: they cannot be read")}
        out = []
        for kind, (n, example) in self.kinds.items():
            if kind in self.EACH:
                shown_ = self.examples[kind][:self.SHOWN]
                out += shown_ + ([f"… and {n - len(shown_)} more"] if n > len(shown_) else [])
                continue
            one, many = words[kind]
            out.append(f"{n} {one if n == 1 else many} (e.g. {example})")
        return out


def _printable(path: Path | str) -> str:
    """A path for a message: as is when it is UTF-8, else with each byte that is not as ``\\xe9``."""
    text = str(path)
    return shown(text)[1:-1] if not_utf8(text) else text


def _not_utf8_note(path: Path, *, folder: bool) -> str:
    what = "folder" if folder else "file"
    return (f"{what} {_printable(path)} skipped{' with everything in it' if folder else ''}: its name is not valid "
            "UTF-8 (written in another encoding, e.g. Latin-1 by unzip of a zip made on Windows) — rename it in UTF-8 "
            f"(e.g. convmv -f latin1 -t utf8 --notest -r {_printable(path.parent)}) and build again")


def _contains(outer: str, inner: str) -> bool:
    """Whether the real path ``inner`` is ``outer`` or lies under it."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def walk(folder: Path, skipped: Skipped | None = None, *, others: tuple[str, ...] = ()) -> Iterator[Path]:
    """Files under ``folder``, recursively, skipping hidden files and folders; each path as listed (under ``folder``,
    a symlink not resolved).

    A symlinked file is listed (its content is read by verification, wherever it leads); a symlinked folder is
    followed, once, wherever it leads — unless it leads to ``folder`` itself or a folder above it (the tree's root,
    ``up -> ..``: reading it would read this folder's siblings, other classes and splits, again as this class), or
    into another source folder of the dataset (``others``, real paths: those files are that class's), or to a folder
    this walk has already read (a loop, or a second link to one folder). Each such link is skipped and counted in
    ``skipped`` — the ones above or into another class by name, with where they lead — as are broken links, folders
    that cannot be read, and files or folders whose names are not UTF-8. Real subfolders are read before symlinked
    ones, so that a file reached both ways is listed under its real path. Sorted within each folder.
    """
    skipped = skipped if skipped is not None else Skipped()
    try:
        st = os.stat(folder)
    except OSError:
        return
    top = os.path.realpath(folder)
    seen = {(st.st_dev, st.st_ino)}
    linked: list[Path] = []  # symlinked folders, read once every real folder has been

    def read(start: Path) -> Iterator[Path]:
        stack = [start]
        while stack:
            here = stack.pop()
            try:
                with os.scandir(here) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                skipped.add("unreadable", _printable(here))
                continue
            subdirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                try:
                    is_link = entry.is_symlink()
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    skipped.add("unreadable", _printable(path))
                    continue
                if is_link:
                    try:
                        target = os.stat(path)
                    except OSError:
                        skipped.add("broken", _link(path))
                        continue
                    is_dir = stat.S_ISDIR(target.st_mode)
                if not_utf8(entry.name):
                    skipped.add("not_utf8", _not_utf8_note(path, folder=is_dir))
                    continue
                if is_link and is_dir:
                    linked.append(path)
                elif is_dir:
                    subdirs.append(path)
                else:
                    yield path
            for sub in reversed(subdirs):  # popped in name order
                try:
                    sst = os.stat(sub)
                except OSError:
                    skipped.add("unreadable", _printable(sub))
                    continue
                if (sst.st_dev, sst.st_ino) in seen:  # reached again through a symlinked folder above
                    skipped.add("loop", _printable(sub))
                    continue
                seen.add((sst.st_dev, sst.st_ino))
                stack.append(sub)

    yield from read(folder)
    while linked:
        link = linked.pop(0)
        try:
            target = os.stat(link)
            real = os.path.realpath(link)
        except OSError:
            skipped.add("broken", _printable(link))
            continue
        if real != top and _contains(real, top):  # a link to the class folder itself is a loop, counted below
            skipped.add("above", f"symlinked folder {_link(link)} skipped: it leads to a folder that holds it "
                                 f"({_printable(real)}), a loop — following it would read other classes' or splits' "
                                 "images again under this class; remove the link")
            continue
        into = next((o for o in others if _contains(o, real) or _contains(real, o)), None)
        if into is not None:
            skipped.add("above", f"symlinked folder {_link(link)} skipped: it leads "
                                 f"{'into' if _contains(into, real) else 'to a folder holding'} another source folder "
                                 f"of this dataset ({_printable(into)}) — its images are that folder's class; remove "
                                 "the link, or copy the images here if they belong to this class too")
            continue
        if (target.st_dev, target.st_ino) in seen:
            skipped.add("loop", _link(link))
            continue
        seen.add((target.st_dev, target.st_ino))
        yield from read(link)


def _link(path: Path) -> str:
    try:
        return f"{_printable(path)} → {_printable(os.readlink(path))}"
    except OSError:
        return _printable(path)


def scan_folders(ds: Dataset, skipped: Skipped | None = None, notes: list[str] | None = None) -> list[FileSource]:
    """Every file of the dataset's labels CSV, class folders and imagefolder tree, with its label (and given split).

    A file's ``path`` is its own path in its class folder: the folder resolved, then the file's path under it
    as listed — a symlinked file keeps the link's path and name (its origin), not its target's, so that two
    classes linking one file are two sources. ``size``/``mtime_ns`` are the target's. What the walk skipped
    (broken links, loops) is counted in ``skipped`` (:func:`walk`); what the imagefolder's layout left out is
    said in ``notes`` (:func:`imagefolder_layout`).
    """
    folders: list[tuple[str | None, str, Path]] = [(None, c.name, f) for c in ds.classes for f in c.folders]
    if ds.imagefolder is not None:
        layout = imagefolder_layout(ds.imagefolder, ds.name)
        if layout.problem:  # the build's preflight refuses it first; this guards any other caller
            raise DsbuildError(f"datasets.{ds.name}.imagefolder: {layout.problem}", exit_code=2)
        folders += [(split, class_name(ds, label), folder) for split, label, folder in layout.folders]
        if notes is not None:
            notes.extend(layout.notes)
    out: list[FileSource] = []
    if ds.labels_csv is not None:
        listed = read_labels_csv(ds.labels_csv, key=f"datasets.{ds.name}.labels_csv", root=ds.labels_root)
        if notes is not None:
            notes.extend(listed.notes())
        for row in listed.rows:
            try:
                st = row.path.stat()
            except OSError:
                if skipped is not None:
                    skipped.add("unreadable", str(row.path))
                continue
            if not_utf8(str(row.path)):  # the CSV's folder (or a folder above it) named in another encoding
                if skipped is not None:
                    skipped.add("not_utf8", _not_utf8_note(row.path, folder=False))
                continue
            out.append(FileSource(class_name(ds, row.label), row.path, st.st_size, st.st_mtime_ns, row.split))
    reals = [os.path.realpath(f) for _, _, f in folders]
    for split, label, folder in folders:
        base = folder.resolve()
        if not_utf8(str(base)):  # a folder above it (or a link's target) named in another encoding
            if skipped is not None:
                skipped.add("not_utf8", _not_utf8_note(base, folder=True))
            continue
        real = os.path.realpath(folder)
        others = tuple(r for r in reals if r != real and not _contains(r, real))
        for path in walk(folder, skipped, others=others):
            try:
                st = path.stat()
            except OSError:
                if skipped is not None:
                    skipped.add("unreadable", _printable(path))
                continue
            out.append(FileSource(label, base / path.relative_to(folder), st.st_size, st.st_mtime_ns, split))
    return out


def class_name(ds: Dataset, label: str) -> str:
    """The class a folder's or a CSV's ``label`` is: the manifest's class of the same name in Unicode NFC when there is
    one (macOS writes a folder ``café`` decomposed, NFD; the manifest's ``café`` is NFC — one class, the manifest's
    spelling), else ``label`` as written. Two spellings of one name that no manifest class settles are refused before
    the build (:func:`dsbuild.pipeline.preflight`)."""
    if label in ds.labels:
        return label
    nfc = unicodedata.normalize("NFC", label)
    return next((name for name in ds.labels if unicodedata.normalize("NFC", name) == nfc), label)


def ingest(run: SourceRun, *, known: dict[str, Any], changed_settings: bool, now) -> set[str]:
    """Verify the dataset's new or changed files and report them to ``run.sink``; return the image ids of every
    file the folders hold today.

    ``known``: image_id → the catalog's row of every known item of the dataset
    (``src_size``, ``src_mtime_ns``, ``status``, ``reason``); ``changed_settings``: the
    verify/hash settings or dsbuild's verifier revision changed since the last build (every file is verified again). A file set aside
    when it left the folders (:data:`~dsbuild.sources.SOURCE_REMOVED`) is verified again when it is back.
    """
    ds, sink = run.dataset, run.sink
    skipped = Skipped()
    layout_notes: list[str] = []
    files = scan_folders(ds, skipped, layout_notes)
    for line in layout_notes + skipped.notes():
        sink.note(line)
    jobs: list[VerifyJob] = []
    meta: dict[str, FileSource] = {}
    skipped = 0
    retried: set[str] = set()  # unchanged files verified again because the settings changed
    current: set[str] = set()
    for src in files:
        origin = str(src.path)
        iid = image_id_for(ds.name, src.label, origin)
        current.add(iid)
        old = known.get(iid)
        # A labels CSV's split column can change while the file does not: the item is recorded again with it.
        unchanged = (old is not None and old.src_size == src.size and old.src_mtime_ns == src.mtime_ns
                     and (old.given_split if isinstance(old.given_split, str) else None) == src.given_split)
        if unchanged and not changed_settings and not (run.retry_failed and old.status == "failed") \
                and not source_removed(old):
            skipped += 1
            continue
        if unchanged and changed_settings:
            retried.add(iid)
        meta[iid] = src
        jobs.append(VerifyJob(iid, str(src.path), ds.verify, ds.dedup, run.store))
    sink.found(len(files), skipped=skipped)

    with run.progress.stage(f"{ds.name}: verify + hash", len(jobs)) as bar, \
            make_executor(len(jobs), workers=run.workers, settings=run.executor) as executor:
        bar.ready(executor.startup_note())  # the rate counts from here, not from Ray's start-up
        for job, rec in executor.map(jobs, ordered=not executor.remote):
            src = meta[job.key]
            sink.add(
                item=item_row(dataset=ds.name, image_id=job.key, origin=str(src.path), source="folder", label=src.label,
                              rec=rec, src_size=src.size, src_mtime_ns=src.mtime_ns, given_split=src.given_split,
                              build_id=run.build_id, now=now),
                blob=blob_row(rec, now) if rec.ok else None,
                retried=job.key in retried,
            )
            counts = sink.tally()
            bar.advance(1, ok=counts["ok"], rejected=counts["rejected"])
    return current
