"""Build orchestration: sources → verify+hash → store → catalog → dedup → split.

``build`` is idempotent and resumable:

* every source (a file, a URL) is one ``items`` row keyed by (dataset, label,
  origin); a source already catalogued and unchanged is not processed again;
* accepted bytes are written to the content-addressed store (atomic rename)
  *before* the rows that point at them are committed, in batches, so a build
  killed at any moment leaves a catalog that only points at complete files, and
  the next build continues where it stopped;
* dedup and splits are recomputed from the catalog at the end of every build, with
  existing splits kept — unless nothing they are computed from changed since a regrouping
  that recorded its fingerprint (:mod:`dsbuild.dedup.reuse`): then the catalog already holds
  what a full regrouping would write, and the build says whose groups it kept. The split settings each dataset was split
  with are recorded (meta ``split:NAME``): when the manifest's fractions, seed or
  carve differ, the build refuses that dataset before any work (:func:`split_setting_changes`)
  until it is run with ``resplit=True`` (``--resplit``), which assigns every split
  again and reports how many images moved;
* a dataset that cannot be built — a problem :func:`preflight_problems` finds (a labels CSV without a label
  column, a missing folder, …) or changed split settings — does not stop the others: they are built, and
  ``build`` then raises :class:`PartialBuild` (its ``summary`` is what was built; exit code 2) naming each one
  not built and why. When none can be built the build refuses before taking the lock, as before;
* the settings that decided each outcome are recorded per dataset (:func:`settings_sections`), with dsbuild's
  verifier revision (:data:`dsbuild.verify.decode.VERIFIER_REVISION`): a changed setting has the outcomes it
  decided evaluated again; a changed revision (an upgrade) has every catalogued image verified again from the
  files on disk, nothing downloaded (:func:`verify_changes`, :func:`recheck_note`);
* an item whose source left the manifest is set aside (``source removed``); the same
  file under another class (a class renamed, merged or split) is a new item that takes
  the old one's split and standing review decisions (:mod:`dsbuild.carryover`).

A build takes the catalog's lock file first, so a second build fails fast.
Sources (:mod:`dsbuild.sources`: folders, then URL lists and search engines)
report what they find to ONE consumer, :class:`DatasetSink`, which writes the
rows in batches (:class:`RowWriter`) and counts the summary. Per-image work runs
through :mod:`dsbuild.executor`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dsbuild.carryover import carry_over
from dsbuild.catalog import BuildLock, Catalog, utcnow
from dsbuild.errors import DsbuildError, did_you_mean
from dsbuild.formats import not_regular
from dsbuild.executor import release_backends
from dsbuild.executor_settings import ExecutorSettings
from dsbuild.manifest import Dataset, Manifest, label_problem, name_clash, name_key, shown
from dsbuild.progress import LiveProgress, Progress, live_path
from dsbuild.sources import SOURCE_REMOVED, SourceRun, folders, source_removed, web
from dsbuild.sources.folders import class_name, imagefolder_layout
from dsbuild.sources.labelcsv import read_labels_csv
from dsbuild.sources.urls import read_url_list
from dsbuild.split import leakage_note
from dsbuild.status import empty_class_notes, ghost_label_notes, split_gaps
from dsbuild.store import sweep_temp_files

FLUSH_ROWS = 500  # rows per catalog transaction: what a killed build can lose and redo
FLUSH_SECONDS = 2.0


@dataclass
class DatasetSummary:
    """What a build did to one dataset (counts are of this build's work unless noted).

    ``new``: images this build catalogued (verified, or failed to download); ``resumed``: those interrupted builds
    catalogued that it grouped and split; ``ok``/``rejected``/``failed``/``new_duplicates``/``rejects``: of both, as
    they stand after it, so that ``ok + rejected + failed + new_duplicates == processed`` (:attr:`processed`).
    ``set_aside``: earlier rows this build marked ``source removed`` (files gone, or moved to another class) — not
    processed and not counted as rejected. ``duplicates``, ``dup_groups``, ``conflicts``, ``splits``: the whole
    dataset as it stands after the build."""

    dataset: str
    sources: int = 0
    new: int = 0
    skipped: int = 0
    ok: int = 0
    rejected: int = 0
    failed: int = 0
    duplicates: int = 0  # the dataset's, all builds
    new_duplicates: int = 0  # this build's images that are duplicates of another image (of this build or earlier)
    set_aside: int = 0  # earlier rows this build marked 'source removed': not processed, not rejected
    dup_groups: int = 0
    conflicts: int = 0
    near_pairs: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    changed: int = 0  # catalogued images whose status, split, duplicate group or conflict this build changed
    failed_now: int = 0  # images of the dataset whose download failed, as the catalog stands after this build
    resumed: int = 0  # images that interrupted builds catalogued and this one grouped and split (in ok … failed)
    grouping_reused: str = ""  # who computed the groups, splits and outlier scores this build kept ("build 3"), if it kept them
    source_notes: list[str] = field(default_factory=list)  # the sources' own lines (rows of a labels CSV skipped, …), also in notes

    @property
    def processed(self) -> int:
        """The row's ``processed``: what this build catalogued and what it finished of interrupted builds."""
        return self.new + self.resumed

    @property
    def up_to_date(self) -> bool:
        """True when this build processed no image and changed none: the dataset was already up to date."""
        return self.processed == 0 and self.changed == 0


@dataclass
class BuildSummary:
    build_id: int
    catalog: Path
    datasets: list[DatasetSummary]
    seconds: float
    not_built: dict[str, list[str]] = field(default_factory=dict)  # dataset → why it was not built


class PartialBuild(DsbuildError):
    """A build that built some of its datasets and refused others (``summary.not_built``: each one's problems, as
    the refusal of a build of it alone would list them). ``summary``: what was built; exit code 2."""

    def __init__(self, summary: BuildSummary) -> None:
        refused = summary.not_built
        n, total = len(refused), len(refused) + len(summary.datasets)
        lines = [p for ps in refused.values() for p in ps]
        super().__init__(f"{n} of {total} datasets not built ({', '.join(refused)}); the other"
                         f"{'s were' if total - n != 1 else ' was'} built — fix "
                         f"{'them' if len(lines) != 1 else 'it'} and run `dsbuild build {' '.join(refused)}`:\n  "
                         + "\n  ".join(lines), exit_code=2)
        self.summary = summary


# --------------------------------------------------------------------------- preflight


def preflight(manifest: Manifest, datasets: list[Dataset]) -> None:
    """Check everything that can be checked before taking the lock or writing anything; raise every problem."""
    problems = preflight_problems(manifest, datasets)
    if any(problems.values()):
        raise cannot_build(problems)


def cannot_build(refused: dict[str, list[str]]) -> DsbuildError:
    """The refusal of a build none of whose datasets can be built: every problem, dataset by dataset (exit code 2)."""
    return DsbuildError("cannot build:\n  " + "\n  ".join(p for ps in refused.values() for p in ps), exit_code=2)


def folder_problem(key: str, folder: Path) -> str | None:
    """Why ``folder`` (a manifest setting's, ``key``) cannot be read as a folder, or None when it can.

    The path is shown as the manifest made it and, when it holds ``..``/``.`` or a link, as it resolves
    (``/p/proj/../pet (= /p/pet)``); a missing folder gets a did-you-mean among the folders beside it
    (``../pet`` for ``../pets``) or, under ``demo_data``, the command that generates it.
    """
    if folder.is_dir():
        return None
    shown_path = str(folder)
    try:
        resolved = folder.resolve()
    except (OSError, RuntimeError):  # a link loop: shown as given
        resolved = folder
    if str(resolved) != shown_path:
        shown_path += f" (= {resolved})"
    if folder.exists():
        return f"{key}: {shown_path} is not a folder"
    hint = " — run `dsbuild demo` to generate it" if "demo_data" in folder.parts else ""
    if not hint and resolved.parent.is_dir():  # a typo of a folder beside it ("data/zer0", "../pet")
        try:
            beside = [p.name for p in resolved.parent.iterdir() if p.is_dir()]
        except OSError:
            beside = []
        hint = did_you_mean(resolved.name, beside)
    return f"{key}: {shown_path} does not exist{hint}"


def preflight_problems(manifest: Manifest, datasets: list[Dataset]) -> dict[str, list[str]]:
    """What :func:`preflight` checks, per dataset name (an empty list: nothing wrong). A URL list several datasets
    share is read once; its problem is each one's."""
    out: dict[str, list[str]] = {}
    url_lists: dict[Path, str | None] = {}  # URL list → its problem (None: fine)
    for ds in datasets:
        problems = out.setdefault(ds.name, [])
        names: list[tuple[str, str]] = [(c.name, f"datasets.{ds.name}.classes") for c in ds.classes]  # (name, where)
        csv_rows: dict[str, list[int]] = {}  # a labels CSV's label → the lines of its rows
        if ds.imagefolder is not None:
            key = f"datasets.{ds.name}.imagefolder"
            missing = folder_problem(key, ds.imagefolder)
            if missing:
                problems.append(missing)
            else:
                layout = imagefolder_layout(ds.imagefolder, ds.name)
                labels = layout.labels
                for _, label, folder in layout.folders:
                    if label not in {n for n, _ in names}:
                        names.append((label, f"folder {shown(str(folder))[1:-1]}"))
                if layout.problem:
                    problems.append(f"{key}: {layout.problem}")
                elif len({class_name(ds, label) for label in labels} | set(ds.labels)) < 2:
                    problems.append(f"{key}: {ds.imagefolder} needs one subfolder per label (at least two), "
                                    "or <split>/<label>/ subfolders")
                for label in labels:
                    why = label_problem(label)
                    if why:
                        problems.append(f"{key}: label folder {shown(label)} {why}")
        if ds.labels_csv is not None:
            key = f"datasets.{ds.name}.labels_csv"
            try:
                listed = read_labels_csv(ds.labels_csv, key=key, root=ds.labels_root)
            except DsbuildError as exc:
                problems.append(str(exc))
            else:
                lines = {}
                for row in listed.rows:
                    lines.setdefault(row.label, row.line)
                    csv_rows.setdefault(row.label, []).append(row.line)
                for label in sorted(listed.labels, key=lambda lab: (lines.get(lab, 0) or sys.maxsize, lab)):
                    if label not in {n for n, _ in names}:
                        names.append((label, f"{ds.labels_csv.name} line {lines[label]}" if label in lines
                                      else f"{ds.labels_csv.name}"))
                labels = sorted({class_name(ds, label) for label in listed.labels} | set(ds.labels))
                if len(labels) < 2:
                    problems.append(f"{key}: {ds.labels_csv} names {len(labels)} label{'s' if len(labels) != 1 else ''}"
                                    f"{' (' + shown(labels[0]) + ')' if labels else ''} — a dataset needs at least two "
                                    "classes")
                elif not listed.rows and listed.problems:
                    n = len(listed.problems)
                    problems.append(f"{key}: none of the {n} row{'s' if n != 1 else ''} of {ds.labels_csv} can be used "
                                    f"— the first: {listed.problems[0]}" + (f"; {listed.hint}" if listed.hint else ""))
            missing = folder_problem(f"datasets.{ds.name}.labels_root", ds.labels_root) if ds.labels_root else None
            if missing:
                problems.append(missing)
        for cls in ds.classes:
            for folder in cls.folders:
                missing = folder_problem(f"datasets.{ds.name}.classes.{cls.name}.folders", folder)
                if missing:
                    problems.append(missing)
            for url_file in cls.urls:
                if not url_file.is_file():
                    what = not_regular(url_file) if url_file.exists() else None
                    problems.append(f"datasets.{ds.name}.classes.{cls.name}.urls: {url_file} "
                                    + (f"is {what} — `urls` takes files of URLs" if what else "does not exist"))
                else:  # a CSV without a url column: before any folder is verified
                    if url_file not in url_lists:
                        try:
                            read_url_list(url_file)
                            url_lists[url_file] = None
                        except DsbuildError as exc:
                            url_lists[url_file] = str(exc)
                    if url_lists[url_file] is not None:
                        problems.append(f"datasets.{ds.name}.classes.{cls.name}.urls: {url_lists[url_file]}")
        problems.extend(name_clashes(ds, names, csv_rows=csv_rows))
        if any(c.queries or c.urls for c in ds.classes):
            problems.extend(web.check_web_settings(ds))
        problems.extend(model_problems(ds))
    return out


def _both(name: str) -> str:
    """A class name for a clash message: quoted, and spelled out in ASCII when it holds other characters (two
    Unicode forms of one name print alike)."""
    return shown(name) if name.isascii() else f"{shown(name)} ({ascii(name)})"


MAX_CLASH_LINES = 10  # a labels CSV's lines named per spelling in a clash message; the rest are counted


def name_clashes(ds: Dataset, names: list[tuple[str, str]], *, csv_rows: dict[str, list[int]] | None = None) -> list[str]:
    """Two class names of ``ds`` that are one name to a user or a file system (:func:`dsbuild.manifest.name_key`:
    NFC, case-folded), from every source together: ``names`` as (name, where it came from: the manifest's classes, a
    folder, a CSV line). A folder's or a CSV's spelling that is a manifest class in NFC is that class
    (:func:`dsbuild.sources.folders.class_name`), not a clash. ``csv_rows``: a labels CSV's label → the lines of its
    rows: a spelling from the CSV is named with its count of rows and their lines (the first
    :data:`MAX_CLASH_LINES`), and when every other spelling is the CSV's, the fix is to edit those rows (trial 11, M3:
    one line per spelling was named, and not how many rows were affected). Nothing is merged silently."""
    from dsbuild.render.values import counted

    csv_rows = csv_rows or {}
    csv_name = ds.labels_csv.name if ds.labels_csv is not None else "labels.csv"
    problems: list[str] = []
    groups: dict[str, dict[str, str]] = {}  # key → class name → where its first spelling came from
    for name, where in names:
        groups.setdefault(name_key(name), {}).setdefault(class_name(ds, name), where)

    def rows_of(name: str) -> str:
        lines = sorted(csv_rows[name])
        shown_lines = ", ".join(str(n) for n in lines[:MAX_CLASH_LINES])
        more = f", … ({len(lines) - MAX_CLASH_LINES} more)" if len(lines) > MAX_CLASH_LINES else ""
        return (f"{_both(name)}: {counted(len(lines), 'row')} of {csv_name}, line{'s' if len(lines) > 1 else ''} "
                f"{shown_lines}{more}")

    for spellings in groups.values():
        if len(spellings) < 2:
            continue
        (a, _), (b, _) = list(spellings.items())[:2]
        same_form = unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)
        todo = ("if they are one class, spell them alike (`convmv -f utf8 -t utf8 --nfc --notest -r DIR` rewrites "
                "folder names in NFC; a class of that name under [datasets." + ds.name + ".classes] takes them all); "
                "else rename them") if same_form else (
                "rename them so that the names differ by more than case, or spell them alike if they are one class")
        wheres = [rows_of(n) if n in csv_rows else where for n, where in spellings.items()]
        in_csv = [n for n in spellings if n in csv_rows]
        if in_csv and not same_form:
            # The spelling to keep: the manifest's class, else the one most rows use; the others are CSV rows to edit.
            keep = next((n for n in spellings if n in ds.labels), None) or max(
                in_csv, key=lambda n: (len(csv_rows[n]), n))
            edit = [n for n in spellings if n != keep]
            if all(n in csv_rows and n not in ds.labels for n in edit):
                change = "; ".join(f"the {counted(len(csv_rows[n]), 'row')} of {_both(n)}" for n in edit)
                todo = (f"if they are one class, give every row of {csv_name} one spelling (change {change} to "
                        f"{_both(keep)}) and build again — dsbuild does not merge spellings that differ in case, and "
                        f"the manifest has no setting that does; if they are two classes, rename one so that the "
                        "names differ by more than case")
        listed = [_both(n) for n in spellings]
        problems.append(f"datasets.{ds.name}: class names {', '.join(listed[:-1])} and {listed[-1]} are one name "
                        f"{name_clash(a, b)} ({'; '.join(wheres)}) — {todo}")
    return problems


def model_problems(ds: Dataset) -> list[str]:
    """``[model] arch`` looked up now (torchvision and timm names need those libraries, so the manifest's own check
    cannot): a typo fails before a build, not at ``train`` after it. The offline default needs no import."""
    from dsbuild.model.weights import resolve_arch

    try:
        resolve_arch(ds.model_settings.arch)
    except DsbuildError as exc:
        return [f"datasets.{ds.name}.model.arch: {exc}"]
    return []


# --------------------------------------------------------------------------- rows


def _settings_digest(ds: Dataset) -> str:
    data = {"verify": asdict(ds.verify), "hash": [ds.dedup.hash, ds.dedup.hash_size]}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: The settings that decide recorded per-image outcomes, by section: a build compares them with the
#: dataset's last build and evaluates again every outcome a changed section decided (sources: folder
#: files verified again, web outcomes per :data:`dsbuild.sources.web.RETRY_WHEN_CHANGED`; quality: every
#: verified image's quality reject; dedup: every accepted image's grouping), then says how many it re-tried.
#: The ``verify`` section also holds dsbuild's own verifier revision
#: (:data:`dsbuild.verify.decode.VERIFIER_REVISION`): when only that changed, every catalogued image is verified
#: again from the files on disk (:func:`verify_changes`), nothing downloaded again.
SETTINGS_SECTIONS = ("verify", "network", "noai", "max_bytes", "redirects", "quality", "dedup")


def settings_sections(ds: Dataset) -> dict[str, str]:
    """The dataset's outcome-deciding settings as text, per section of :data:`SETTINGS_SECTIONS`
    (from the settings checked at manifest load: ``verify``, ``fetch_settings``, ``quality``); ``verify`` is the
    settings' digest with the verifier revision that applies them."""
    from dsbuild.verify.decode import VERIFIER_REVISION

    fetch = ds.fetch_settings
    parts = {
        "verify": {"settings": _settings_digest(ds), "revision": VERIFIER_REVISION},
        "network": [fetch.allow_private_hosts, sorted(map(str, fetch.allowed_networks))],
        "noai": fetch.respect_noai,
        "max_bytes": fetch.max_bytes,
        "redirects": fetch.max_redirects,
        "quality": asdict(ds.quality),
        "dedup": asdict(ds.dedup),
    }
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in parts.items()}


@dataclass(frozen=True)
class VerifyChanges:
    """How the dataset's verification differs from its last build's (:func:`verify_changes`).

    ``settings``: the ``[verify]`` settings or the hash changed (the user's doing: outcomes a setting decided are
    tried again, downloads included); ``revision``: the verifier revision the last build recorded (1 when it recorded
    none: an older dsbuild), None for a dataset never built; ``checks``: dsbuild's own checks changed since
    (:data:`dsbuild.verify.decode.VERIFIER_REVISION` differs from ``revision``): every catalogued image is verified
    again from the files on disk, nothing downloaded again.
    """

    settings: bool
    revision: int | None
    checks: bool


def verify_changes(digest: str, recorded_digest: str | None, previous: dict[str, str]) -> VerifyChanges:
    """What changed in verification since the dataset's last build: ``digest`` is today's :func:`_settings_digest`,
    ``recorded_digest`` the last build's (meta ``settings:NAME``), ``previous`` its recorded
    :func:`settings_sections` (empty before sections were recorded). A build that recorded the verify section as a
    digest alone (dsbuild before the revision was recorded), or only the digest, ran revision 1."""
    from dsbuild.verify.decode import VERIFIER_REVISION

    if recorded_digest is None and not previous:
        return VerifyChanges(settings=False, revision=None, checks=False)  # never built: nothing to verify again
    revision, section_digest = 1, None
    raw = previous.get("verify")
    if raw is not None:
        value = json.loads(raw)
        if isinstance(value, dict):
            revision, section_digest = int(value.get("revision") or 1), value.get("settings")
        elif isinstance(value, str):
            section_digest = value
    settings = recorded_digest not in (None, digest) or section_digest not in (None, digest)
    return VerifyChanges(settings=settings, revision=revision, checks=revision != VERIFIER_REVISION)


def _outcome(status: str | None, reason: str | None) -> str:
    return reason or status or "?" if status in ("rejected", "failed") else (status or "?")


def _moves(before: dict[str, tuple], after: dict[str, tuple], ids: list[str]) -> str:
    """``A → B k; …`` (most first) for the items of ``ids`` whose outcome changed, or ``no outcome changed``."""
    moves: dict[str, int] = {}
    for iid in ids:
        a, b = _outcome(*before[iid]), _outcome(*after.get(iid, (None, None)))
        if a != b:
            moves[f"{a} → {b}"] = moves.get(f"{a} → {b}", 0) + 1
    return "; ".join(f"{k} {n}" for k, n in sorted(moves.items(), key=lambda kv: (-kv[1], kv[0]))) or "no outcome changed"


def retry_note(before: dict[str, tuple], after: dict[str, tuple], retried: set[str]) -> str | None:
    """``settings changed — re-tried N earlier outcomes: A → B k; …`` for the items in ``retried``."""
    ids = [i for i in retried if i in before]
    if not ids:
        return None
    n = len(ids)
    return f"settings changed — re-tried {n} earlier outcome{'s' if n != 1 else ''}: {_moves(before, after, ids)}"


def recheck_note(before: dict[str, tuple], after: dict[str, tuple], retried: set[str], *, revision: int | None,
                 settings: bool = False, unchecked: dict[str, int] | None = None) -> str:
    """The one line of a build whose verifier revision differs from the dataset's last build's (dsbuild upgraded):
    ``dsbuild's image checks changed (verifier revision 1 → 2) — re-checked N catalogued images from the files on
    disk, nothing downloaded: M changed outcome (ok → corrupt 1; …)``; ``settings``: a setting changed too (its
    re-tried outcomes are counted with them); ``unchecked``: why → how many catalogued images could not be checked
    again from disk (they keep their outcome)."""
    from dsbuild.render.values import counted
    from dsbuild.verify.decode import VERIFIER_REVISION

    ids = [i for i in retried if i in before]
    moved = sum(_outcome(*before[i]) != _outcome(*after.get(i, (None, None))) for i in ids)
    what = "dsbuild's image checks and the dataset's settings changed" if settings else "dsbuild's image checks changed"
    line = (f"{what} (verifier revision {revision or 1} → {VERIFIER_REVISION}) — re-checked "
            f"{counted(len(ids), 'catalogued image', 'catalogued images')} from the files on disk"
            f"{'' if settings else ', nothing downloaded again'}: ")
    line += (f"{moved} changed outcome ({_moves(before, after, ids)})" if moved else "no outcome changed")
    for why, n in sorted((unchecked or {}).items()):
        line += f"; {counted(n, 'image', 'images')} not re-checked: {why}"
    return line


class RowWriter:
    """Buffers item/blob rows and commits them in batches (blobs first, then the items pointing at them)."""

    def __init__(self, cat: Catalog, *, refresh_blobs: bool = False) -> None:
        self.cat = cat
        self.refresh_blobs = refresh_blobs  # dsbuild's checks changed: known blobs take what verification read now
        self.items: list[dict] = []
        self.blobs: list[dict] = []
        self.fetches: list[dict] = []
        self._last = time.monotonic()

    def add(self, item: dict | None = None, blob: dict | None = None, fetch: dict | None = None) -> None:
        if item is not None:
            self.items.append(item)
        if blob is not None:
            self.blobs.append(blob)
        if fetch is not None:
            self.fetches.append(fetch)
        if len(self.items) + len(self.fetches) >= FLUSH_ROWS or time.monotonic() - self._last > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pandas as pd

        if self.blobs:
            blobs = pd.DataFrame(self.blobs)
            if self.refresh_blobs:
                self.cat.refresh_blobs(blobs)
            self.cat.insert_blobs(blobs)
        if self.fetches:
            self.cat.insert_fetches(pd.DataFrame(self.fetches))
        if self.items:
            self.cat.upsert_items(pd.DataFrame(self.items))
        self.items, self.blobs, self.fetches = [], [], []
        self._last = time.monotonic()


class DatasetSink:
    """The one consumer of a dataset's sources (:class:`dsbuild.sources.Sink`): rows → writer, counts → summary."""

    def __init__(self, writer: RowWriter, summary: DatasetSummary) -> None:
        self.writer = writer
        self.summary = summary
        self.retried: set[str] = set()
        self.unchecked: dict[str, int] = {}

    def add(self, *, item: dict | None = None, blob: dict | None = None, fetch: dict | None = None,
            retried: bool = False) -> None:
        self.writer.add(item=item, blob=blob, fetch=fetch)
        if item is not None and retried:
            self.retried.add(item["image_id"])
        if item is not None:
            s = self.summary
            s.new += 1
            status, reason = item["status"], item["reason"]
            if status == "ok":
                s.ok += 1
            else:
                if status == "failed":
                    s.failed += 1
                else:
                    s.rejected += 1
                key = reason or "?"
                s.rejects[key] = s.rejects.get(key, 0) + 1

    def found(self, sources: int = 0, *, skipped: int = 0) -> None:
        self.summary.sources += sources
        self.summary.skipped += skipped

    def note(self, text: str) -> None:
        self.summary.notes.append(text)
        self.summary.source_notes.append(text)  # kept in the build's record: `status` shows them later (trial 11 L3)

    def not_rechecked(self, why: str) -> None:
        self.unchecked[why] = self.unchecked.get(why, 0) + 1

    def tally(self) -> dict[str, int]:
        return {"ok": self.summary.ok, "rejected": self.summary.rejected, "failed": self.summary.failed}

    def flush(self) -> None:
        self.writer.flush()


# --------------------------------------------------------------------------- the build


def build(
    manifest: Manifest,
    names: list[str] | None = None,
    *,
    retry_failed: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
    catalog_path: Path | None = None,
    executor: ExecutorSettings | None = None,
    backend: str | None = None,
    resplit: bool = False,
) -> BuildSummary:
    """Build the named datasets (all when ``names`` is empty); return a summary per dataset.

    ``workers``: processes for the per-image work (default: CPU count). ``executor`` replaces every
    dataset's ``[executor]`` settings (the CLI's ``--executor``/``--ray-address``); ``backend`` is
    short for ``executor=ExecutorSettings(backend=backend)`` (a :data:`dsbuild.executor.BACKENDS` name).
    ``resplit``: assign every image's split again from the manifest's split settings (needed after
    changing them; a note says how many images moved). A dataset that cannot be built (a problem
    :func:`preflight_problems` finds, or split settings changed since its last build while ``resplit`` is false) is
    left out: the others are built, then :class:`PartialBuild` is raised (``.summary``: what was built). Raises
    :class:`DsbuildError` before any work when none of the datasets can be built.
    """
    progress = progress or Progress()
    if backend is not None:
        if executor is not None and executor.backend != backend:
            raise DsbuildError(f"build(backend={backend!r}) contradicts executor={executor!r} — give one of them")
        executor = executor or ExecutorSettings(backend=backend)
    datasets = manifest.select(names)
    # A dataset that cannot be built (a broken labels CSV, a missing folder, …) does not stop the others: they are
    # built, and the build ends with PartialBuild naming it (exit code 2). When none can be built, nothing starts.
    refused = {name: ps for name, ps in preflight_problems(manifest, datasets).items() if ps}
    if len(refused) == len(datasets):
        raise cannot_build(refused)
    datasets = [d for d in datasets if d.name not in refused]
    for settings in {executor or d.executor for d in datasets}:
        if settings.backend == "ray" and settings.address not in (None, "auto"):
            from dsbuild.ray_backend import check_reachable

            check_reachable(settings.address)  # fail fast, before the lock, a search or a catalog write
    catalog_path = catalog_path or manifest.catalog
    lock = BuildLock(catalog_path, command="dsbuild build")
    lock.acquire()
    started = time.monotonic()
    try:
        cat = Catalog.open(catalog_path)
        try:
            changed = split_setting_changes(cat, datasets, resplit=resplit)
            if len(changed) == len(datasets) and not refused:
                raise DsbuildError(split_refusal(changed), exit_code=2)
            for name, change in changed:
                refused[name] = [split_refusal([(name, change)])]
            datasets = [d for d in datasets if d.name not in refused]
            if not datasets:
                raise cannot_build(refused)
            for name in refused:
                progress.note(f"{name}: not built — {len(refused[name])} problem"
                              f"{'s' if len(refused[name]) != 1 else ''}, listed at the end; the other datasets build")
            swept = sweep_temp_files(manifest.store)
            if swept:
                progress.note(f"removed {swept} partial files left by an interrupted build")
            build_id = cat.start_build([d.name for d in datasets])
            summaries: list[DatasetSummary] = []
            described = {(executor or d.executor).describe() for d in datasets}
            live = LiveProgress(progress, live_path(catalog_path), build_id=build_id,
                                executor=described.pop() if len(described) == 1 else "per dataset")
            try:
                for ds in datasets:
                    summaries.append(
                        build_dataset(cat, manifest, ds, build_id=build_id, retry_failed=retry_failed,
                                      progress=live, workers=workers, executor=executor, resplit=resplit)
                    )
            except KeyboardInterrupt:
                cat.finish_build(build_id, "interrupted", {"datasets": [asdict(s) for s in summaries]})
                raise DsbuildError("build interrupted — everything finished so far is saved; run the same command to resume", exit_code=130) from None
            except BaseException as exc:
                cat.finish_build(build_id, "failed", {"error": str(exc)})
                raise
            finally:
                live.close()
            cat.finish_build(build_id, "ok", {"datasets": [asdict(s) for s in summaries],
                                              **({"not_built": refused} if refused else {})})
            summary = BuildSummary(build_id=build_id, catalog=catalog_path, datasets=summaries,
                                   seconds=time.monotonic() - started, not_built=refused)
            if refused:
                raise PartialBuild(summary)
            return summary
        finally:
            cat.close()
    finally:
        release_backends()
        lock.release()


def build_dataset(
    cat: Catalog, manifest: Manifest, ds: Dataset, *, build_id: int, retry_failed: bool = False,
    progress: Progress, workers: int | None = None, executor: ExecutorSettings | None = None,
    resplit: bool = False,
) -> DatasetSummary:
    """Run every source of ``ds`` into the catalog, then regroup it; return what this build did."""
    t0 = time.monotonic()
    summary = DatasetSummary(dataset=ds.name)
    resumed = cat.interrupted_builds(ds.name, before=build_id)
    digest = _settings_digest(ds)
    sections = settings_sections(ds)
    previous = json.loads(cat.get_meta(f"settings-sections:{ds.name}") or "{}")
    verify = verify_changes(digest, cat.get_meta(f"settings:{ds.name}"), previous)
    changed_settings = verify.settings
    # "verify" (in ``changed``): the user's verify settings changed; dsbuild's own checks changing is ``verify.checks``.
    changed = frozenset(k for k, v in sections.items() if k != "verify" and k in previous and previous[k] != v)
    if changed_settings:
        changed |= {"verify"}
    if verify.checks:  # before the re-check gives any blob the pixels read now (see adopt_blob_keyed)
        from dsbuild.model.features import adopt_blob_keyed

        adopt_blob_keyed(features_root_of(cat), cat.current_pixel_keys)

    known = cat.known_items(ds.name)
    known_by_id = {row.image_id: row for row in known.itertuples(index=False)}
    before = {row.image_id: (row.status, row.reason) for row in known_by_id.values()}
    writer = RowWriter(cat, refresh_blobs=verify.checks)
    sink = DatasetSink(writer, summary)
    run = SourceRun(dataset=ds, build_id=build_id, store=manifest.store, sink=sink, progress=progress,
                    retry_failed=retry_failed, workers=workers, executor=executor or ds.executor, changed=changed,
                    checks_changed=verify.checks)

    # Local folders (every file verified again when the verify settings or dsbuild's checks changed).
    current = folders.ingest(run, known=known_by_id, changed_settings=changed_settings or verify.checks,
                             now=utcnow())
    writer.flush()

    # Web sources (queries, URL lists).
    if any(c.queries or c.urls for c in ds.classes):
        current |= web.ingest(cat, run)
        writer.flush()
    set_aside = removed_sources(ds, known_by_id, current)
    if set_aside:
        cat.set_aside_items(ds.name, set_aside, reason=SOURCE_REMOVED, build_id=build_id)
        summary.changed += len(set_aside)
    # A renamed, merged or split class: the same files under another class keep their split and review decisions.
    edited: frozenset[str] = frozenset()  # set aside for a label edited in the source: the file is still in
    if set_aside or any(source_removed(row) for row in known_by_id.values()):  # else nothing to succeed (a first build)
        labels_before = {row.class_label for row in known_by_id.values() if not source_removed(row)}
        carry = carry_over(cat, ds, successor_candidates(current, known_by_id), labels_before=labels_before,
                           build_id=build_id, at=utcnow())
        edited = carry.edited & set(set_aside)
        gone = {i: why for i, why in set_aside.items() if i not in edited}
        if gone:
            summary.notes.append(set_aside_note(gone))
        carried = carry.note(resplit=resplit)
        if carried:
            summary.notes.append(carried)

    regroup_dataset(cat, ds, summary=summary, progress=progress, resplit=resplit, threads=workers,
                    by=f"build {build_id}")
    cat.set_meta(f"split:{ds.name}", ds.split.record())
    retried = set(sink.retried)
    if "quality" in changed:  # every verified image's quality outcome was evaluated again by the regrouping
        retried |= {i for i, (st, reason) in before.items()
                    if st in ("ok", "duplicate") or str(reason or "").startswith("quality:")}
    if "dedup" in changed:  # every accepted image was grouped again (trial 6: a dedup change regrouped silently)
        retried |= {i for i, (st, _) in before.items() if st in ("ok", "duplicate")}
    if retried:
        after = {r.image_id: (r.status, r.reason) for r in cat.known_items(ds.name).itertuples(index=False)}
        if verify.checks:
            note = recheck_note(before, after, retried, revision=verify.revision, settings=bool(changed),
                                unchecked=sink.unchecked)
        else:
            note = retry_note(before, after, retried)
        if note:
            summary.notes.append(note)
    elif verify.checks and sink.unchecked:
        summary.notes.append(recheck_note(before, before, set(), revision=verify.revision, unchecked=sink.unchecked))
    summary.notes.extend(empty_class_notes(cat, ds))
    summary.notes.extend(ghost_label_notes(cat, ds))
    summary.notes.extend(split_gaps(cat, ds))
    # Dedup and quality checks have just turned some accepted images into duplicates or rejects:
    # the summary reports this build's images as the catalog now has them, not as they were fetched.
    # A build that resumes interrupted ones groups and splits their images too: its row counts them with its own,
    # so that processed and ok add up to the splits beside them (fresh-user trial 8: "processed 0, ok 0" beside 96
    # in train; then a note under "the counts above are what this build verified itself" beside the same splits).
    counts = cat.build_item_counts(ds.name, [build_id, *(b for b, _ in resumed)])
    if resumed:
        earlier = sum(n for _, _, n in cat.build_item_counts(ds.name, [b for b, _ in resumed]))
        if earlier:
            summary.notes.insert(0, resumed_note(resumed, earlier, summary.new))
            summary.resumed = earlier
    # Rows this build set aside ('source removed') are earlier images, not ones it processed: counted apart, never
    # as this build's rejections (trial 11 M4 "rejected 65"; trial 12 M2 "processed 50, ok 48, rejected 51").
    mine = [(status, reason, n) for status, reason, n in counts if reason != SOURCE_REMOVED]
    summary.set_aside = sum(n for _, reason, n in counts if reason == SOURCE_REMOVED)
    summary.ok = sum(n for status, _, n in mine if status == "ok")
    summary.rejected = sum(n for status, _, n in mine if status == "rejected")
    summary.failed = sum(n for status, _, n in mine if status == "failed")
    summary.new_duplicates = sum(n for status, _, n in mine if status == "duplicate")
    summary.rejects = {}
    for status, reason, n in mine:
        if status in ("rejected", "failed"):
            summary.rejects[reason or "?"] = summary.rejects.get(reason or "?", 0) + n
    cat.set_meta(f"settings:{ds.name}", digest)
    cat.set_meta(f"settings-sections:{ds.name}", json.dumps(sections, sort_keys=True))
    summary.seconds = time.monotonic() - t0
    return summary


def resumed_note(builds: list[tuple[int, str]], earlier: int, own: int) -> str:
    """The build summary's line for a build that finished the work of the interrupted ``builds`` ((build_id, outcome),
    oldest first): ``earlier`` images they catalogued, ``own`` this build verified itself; its row counts both."""
    from dsbuild.render.values import counted

    which = (f"build {builds[0][0]} ({builds[0][1]})" if len(builds) == 1
             else "builds " + ", ".join(f"{b} ({outcome})" for b, outcome in builds))
    they = "it" if len(builds) == 1 else "they"
    rest = (f" and the {own:,} this build verified ({earlier + own:,} in all)" if own
            else " (this build found nothing more to verify)")
    return (f"resumed {which}: the row's processed, ok, rejected and failed include the {counted(earlier, 'image')} "
            f"{they} verified before stopping{rest}, all grouped and split by this build")


def successor_candidates(current: set[str], known: dict) -> set[str]:
    """The items of ``current`` (supplied today) that may succeed a set-aside item (:mod:`dsbuild.carryover`):
    those this build created, those it brought back (set aside before), and accepted ones no build has split yet
    (created by a build killed before its regrouping: the next build carries over what that one could not)."""
    def pending(row) -> bool:
        return source_removed(row) or (row.status == "ok" and not isinstance(row.split, str))

    return {iid for iid in current if iid not in known or pending(known[iid])}


def removed_sources(ds: Dataset, known: dict, current: set[str]) -> dict[str, str]:
    """image_id → why, for every catalogued item of ``ds`` that no source of the manifest supplies today (not
    already set aside): its class, folder, query or URL was taken out of the manifest, or its file deleted."""
    labels = set(ds.labels)
    out = {}
    for iid, old in known.items():
        if iid in current or source_removed(old):
            continue
        label = old.class_label
        if old.source == "folder" and not os.path.exists(str(old.origin)):
            out[iid] = "the file is no longer there"
        elif label not in labels and (old.source != "folder" or (ds.imagefolder is None and ds.labels_csv is None)):
            out[iid] = f"class '{label}' is no longer in the manifest"
        elif old.source == "folder" and ds.labels_csv is not None \
                and str(old.origin).startswith(str(ds.labels_csv.parent.resolve()) + os.sep):
            out[iid] = f"no longer listed in {ds.labels_csv.name} with label '{label}'"
        elif old.source == "folder":
            out[iid] = f"its folder is no longer a source of class '{label}'"
        elif old.source == "urls":
            out[iid] = f"no longer in a URL list of class '{label}'"
        else:
            out[iid] = f"query {old.query!r} is no longer a source of class '{label}'"
    return out


def set_aside_note(details: dict[str, str]) -> str:
    """The build summary's line for the items :func:`removed_sources` set aside."""
    from dsbuild.render.values import counted

    by_why: dict[str, int] = {}
    for why in details.values():
        by_why[why] = by_why.get(why, 0) + 1
    top = sorted(by_why.items(), key=lambda kv: (-kv[1], kv[0]))
    whys = "; ".join(f"{n}: {why}" for why, n in top[:3]) + ("; …" if len(top) > 3 else "")
    one = len(details) == 1
    return (f"{counted(len(details), 'image', 'images')} set aside because {'its' if one else 'their'} source left the "
            f"manifest ({whys}) — status rejected, reason '{SOURCE_REMOVED}', not counted in the row's rejected; nothing is deleted, and "
            f"{'it comes back when its' if one else 'they come back when their'} source does")


def check_split_settings(cat: Catalog, datasets: list[Dataset], *, resplit: bool) -> None:
    """Refuse (one line naming ``--resplit``) when a dataset's split settings changed since its last build.

    Stable splits protect existing images when the *data* grows; a change of the
    *settings* (fractions, seed, carve) can only take effect by moving images, which
    ``--resplit`` does explicitly. A catalog without a record (built before records
    existed) counts as split without a carve.
    """
    from dsbuild.split import describe_change

    changed = split_setting_changes(cat, datasets, resplit=resplit)
    if changed:
        raise DsbuildError(split_refusal(changed), exit_code=2)


def split_setting_changes(cat: Catalog, datasets: list[Dataset], *, resplit: bool) -> list[tuple[str, str]]:
    """(name, the change in words) of each dataset whose split settings changed since its last build (none with
    ``resplit``): the build refuses them (:class:`PartialBuild`, or :func:`check_split_settings` for all)."""
    from dsbuild.split import describe_change

    if resplit:
        return []
    changed = []
    for ds in datasets:
        old = cat.get_meta(f"split:{ds.name}")
        if old is None:
            if ds.split.carve is None or not cat.has_splits(ds.name):
                continue  # a first build, or one from before the record: nothing carved yet, nothing to move
        elif old == ds.split.record():
            continue
        changed.append((ds.name, describe_change(old, ds.split)))
    return changed


def split_refusal(changed: list[tuple[str, str]]) -> str:
    """The refusal of :func:`split_setting_changes`'s datasets, with the command that splits them again."""
    what = "; ".join(f"'{name}' ({change})" for name, change in changed)
    names = " ".join(name for name, _ in changed)
    return (f"the split settings of {what} changed since the last build, and images keep their splits — run "
            f"`dsbuild build {names} --resplit` to assign the splits again (runs trained before keep the old "
            "ones), or put the old settings back")


def regroup_dataset(cat: Catalog, ds: Dataset, *, summary: DatasetSummary, progress: Progress,
                    resplit: bool = False, features_dir: Path | None = None, threads: int | None = None,
                    embed: bool | None = None, by: str = "dsbuild embed") -> None:
    """Recompute duplicate groups, conflicts, splits and outlier scores of ``ds`` from the catalog.

    ``resplit``: assign every split again (a note in ``summary`` says how many images moved).
    With ``dedup.views``/``dedup.semantic`` the near-duplicate signals missing from the catalog and
    the embedding cache (``features_dir``, default beside the catalog) are computed first
    (:mod:`dsbuild.dedup.signals`; torch runs ``threads`` threads). ``embed`` (default
    ``dedup.semantic``) computes missing embeddings; cached ones give outlier scores either way,
    and confirm near duplicates only with ``dedup.semantic``.

    When nothing the grouping is computed from changed since a regrouping that recorded its fingerprint
    (:mod:`dsbuild.dedup.reuse`), the groups, splits, neighbours and outlier scores the catalog holds are what a
    full regrouping would write: they are kept, and ``summary.grouping_reused`` names who computed them (``by``
    names this regrouping when it records: "build 3", "dsbuild embed").
    """
    import numpy as np

    from dsbuild.dedup import reuse
    from dsbuild.dedup.grouping import GroupSummary, regroup

    items = cat.dataset_items(ds.name)
    sig = None
    embed = ds.dedup.semantic if embed is None else embed
    if _wants_signals(ds) or embed:
        from dsbuild.dedup.signals import dataset_signals

        rows = np.flatnonzero(_verified(items).to_numpy())
        with progress.stage(f"{ds.name}: near-duplicate signals", len(rows)) as bar:
            computed = 0

            def advance(n: int = 1) -> None:
                nonlocal computed
                computed += n
                bar.advance(n, computed=computed)

            sig = dataset_signals(items, rows, ds.dedup, ds.verify, features_dir=features_dir or features_root_of(cat),
                                  embed=embed, threads=threads, progress=advance, store=cat.set_blob_signals,
                                  current_pixels=cat.current_pixel_keys, feature_rows=_training_rows_spec(ds))
            if computed < len(rows):
                # The stage counts images; dataset_signals reports the blobs it computed. The rest (signals
                # already stored or cached, or an exact copy's) are done too: the last line says N/N, not 3/105.
                bar.skip(len(rows) - computed, computed=computed, reused=len(rows) - computed)  # no work: no rate
            cat.set_blob_signals(sig.new_blobs)
        if sig.failed:
            summary.notes.append(f"{len(sig.failed)} stored image(s) could not be decoded for near-duplicate signals "
                                 f"(e.g. {next(iter(sig.failed.values()))}) — they are compared by their hash only")
    # Neighbours and outlier scores come together, from the embeddings in the cache (a build with dedup.semantic,
    # or `dsbuild embed`, made them; a build with semantic = false computes none but uses those there): both
    # stored for the images that have one, both empty when none has.
    scored = sig if sig is not None else cached_signals(items, ds, features_dir or features_root_of(cat),
                                                        current_pixels=cat.current_pixel_keys)
    linked = ds.dedup.near and ds.dedup.threshold > 0
    mode = "none" if not linked else "signals" if sig is not None and _wants_signals(ds) else "phash"
    arrays = {"views": scored.views, "eff_side": scored.eff_side, "emb": scored.emb, "has_emb": scored.has_emb}
    fp = reuse.fingerprint(cat, ds, items, arrays=arrays, mode=mode)
    kept = None if resplit else reuse.reusable(cat, ds.name, fp)
    if kept is not None:
        with progress.stage(f"{ds.name}: dedup + split reused from {kept.by} (nothing it is computed from changed)",
                            len(items)) as bar:
            bar.skip(len(items))  # nothing computed: the line says reused, and no rate
        updates = items[["image_id", "status", "reason", "split"]]
        gs = GroupSummary(groups=kept.groups, duplicates=kept.duplicates, conflicts=kept.conflicts,
                          near_pairs=kept.near_pairs)
        summary.grouping_reused = kept.by
        links = near = None
    else:
        with progress.stage(f"{ds.name}: dedup + split", len(items)) as bar:
            near = links = None
            if linked:
                if sig is not None and _wants_signals(ds):
                    links = near_links_for(items, ds, sig)
                    near = links.rows() if links is not None and len(links) else None
                else:
                    near = near_pairs_for(items, ds)
            updates, gs = regroup(items, ds, near_pairs=near, keep_splits=not resplit)
            summary.changed += cat.update_dedup_and_splits(ds.name, updates)
            bar.advance(len(items))
    summary.duplicates, summary.dup_groups, summary.near_pairs = gs.duplicates, gs.groups, gs.near_pairs
    # Conflicts as `status` and the `conflicts` view count them (current labels, reviews applied): one definition.
    dups = cat.duplicate_counts(ds.name)
    summary.conflicts = dups["conflicts"]
    leaks = leakage_note(dups["leaks"], dups["leaks_kept"], dups["leak_pairs"], ds.name)  # the line `status` shows too
    if leaks:
        summary.notes.append(leaks)
    # Accepted images as `status` counts them: an image removed in review is `ok` in its row, rejected in the view.
    removed = set(items.loc[items["removed"].fillna(False).astype(bool), "image_id"])
    counts = updates[updates["split"].notna() & (updates["status"] == "ok")
                     & ~updates["image_id"].isin(removed)]["split"].value_counts()
    summary.splits = {k: int(v) for k, v in counts.items()}
    summary.failed_now = int((items["status"] == "failed").sum())
    note = group_warning(updates, ds)
    if note:
        summary.notes.append(note)
    if kept is not None:
        return
    _store_neighbours(cat, ds, items, updates, links, scored)
    if scored.emb is not None and scored.has_emb.any():
        _store_outliers(cat, ds, items, updates, scored, links)
    else:
        import pandas as pd

        cat.set_outliers(ds.name, pd.DataFrame({"image_id": [], "outlier_score": [], "is_outlier": []}))
    if resplit:
        runs = cat.runs(ds.name)
        last = runs.iloc[-1].to_dict() if len(runs) else None
        summary.notes.append(resplit_note(items, updates, runs=len(runs), last_run=last))
    else:
        moved = moved_split_note(items, updates, runs=len(cat.runs(ds.name)))
        if moved:
            summary.notes.append(moved)
    _record_fixed_point(cat, ds, items, updates, near, arrays=arrays, mode=mode, by=by)


def _record_fixed_point(cat: Catalog, ds: Dataset, items, updates, near, *, arrays: dict, mode: str, by: str) -> None:
    """Record the fingerprint of the catalog as this regrouping left it when regrouping it again changes nothing
    (:mod:`dsbuild.dedup.reuse`); else forget any recorded one. ``near``: the near links this regrouping used."""
    from dsbuild.dedup import reuse
    from dsbuild.dedup.grouping import regroup

    after = cat.dataset_items(ds.name)
    if not reuse.same_link_inputs(items, after, _verified(items).to_numpy(), _verified(after).to_numpy()):
        reuse.forget(cat, ds.name)
        return
    again, gs = regroup(after, ds, near_pairs=near, keep_splits=True)
    if not reuse.same_writes(updates, again):
        reuse.forget(cat, ds.name)
        return
    reuse.record(cat, ds.name, reuse.fingerprint(cat, ds, after, arrays=arrays, mode=mode), gs, by=by)


def _trained_on(run: dict | None) -> set[str] | None:
    """The image ids ``run`` (a ``model_runs`` row) trained on, or None without a run or its record (schema < 6)."""
    value = None if run is None else run.get("train_ids")
    if value is None or (isinstance(value, float) and value != value):
        return None
    return {str(i) for i in (json.loads(value) if isinstance(value, str) else value)}


def split_moves(items, updates) -> dict[str, int]:
    """``{"valid → train": n, ...}``: images (ok or duplicate) that had a split before a regrouping (``items``, the
    catalog's rows) and have another after it (``updates``)."""
    before = dict(zip(items["image_id"], items["split"]))
    moves: dict[str, int] = {}
    for image_id, split, status in zip(updates["image_id"], updates["split"], updates["status"]):
        old = before.get(image_id)
        if status in ("ok", "duplicate") and isinstance(old, str) and isinstance(split, str) and old != split:
            moves[f"{old} → {split}"] = moves.get(f"{old} → {split}", 0) + 1
    return moves


def moved_split_note(items, updates, *, runs: int) -> str | None:
    """What a build without ``--resplit`` moved to another split, or None when no image moved. Splits are stable,
    so only an image's source moves it: the split its folder or labels CSV gives changed (a file moved from
    ``train/`` to ``valid/``, a split column edited, ``imagefolder`` pointed at the tree above the class
    folders), or a copy with a given split joined its group (copies share a split)."""
    moves = split_moves(items, updates)
    moved = sum(moves.values())
    if not moved:
        return None
    detail = ", ".join(f"{k} {v}" for k, v in sorted(moves.items()))
    note = (f"{moved} image{'s' if moved != 1 else ''} moved to another split ({detail}): the split "
            f"{'its source gives' if moved == 1 else 'their sources give'} changed (a split folder, a labels CSV's "
            "split column) or a copy with a given split joined "
            f"{'its group' if moved == 1 else 'their groups'}")
    if runs:
        note += f"; the {runs} model run{'s' if runs != 1 else ''} before this build used the old splits"
    return note


def resplit_note(items, updates, *, runs: int, last_run: dict | None = None) -> str:
    """What ``--resplit`` did: how many images (ok or duplicate, split before and after) moved, and where; with
    ``last_run`` (the dataset's last ``model_runs`` row) recording its training images, how many of the accepted
    valid images it trained on (``retrain`` leaves those out of its comparison)."""
    moves = split_moves(items, updates)
    moved = sum(moves.values())
    if not moved:
        return "--resplit: splits assigned again from the settings; no image moved"
    detail = ", ".join(f"{k} {v}" for k, v in sorted(moves.items()))
    earlier = (f"; the {runs} model run{'s' if runs != 1 else ''} before this build used the old splits — train again"
               if runs else "; runs before this build used the old splits")
    trained = _trained_on(last_run)
    if trained is not None:
        removed = set(items.loc[items["removed"].fillna(False).astype(bool), "image_id"])
        valid = [i for i, split, status in zip(updates["image_id"], updates["split"], updates["status"])
                 if split == "valid" and status == "ok" and i not in removed]
        seen = sum(i in trained for i in valid)
        earlier += (f"; {seen} of the {len(valid)} valid images {'was' if seen == 1 else 'were'} in the training set "
                    f"of the last run ({last_run['run_id']})")
    return f"--resplit: {moved} image{'s' if moved != 1 else ''} moved to another split ({detail}){earlier}"


def embed(manifest: Manifest, names: list[str] | None = None, *, progress: Progress | None = None,
          workers: int | None = None) -> list[DatasetSummary]:
    """Compute the missing near-duplicate signals and embeddings of built datasets, then regroup them.

    What ``dsbuild embed`` runs: the same stage a build with ``dedup.semantic = true`` runs after
    verification, for datasets already in the catalog (whatever their ``semantic`` setting: the
    embeddings then serve ``similar``, the ``neighbours`` view and the outlier scores). Interrupted, it keeps
    every chunk of embeddings finished (:data:`dsbuild.model.embeddings.EMBED_CHUNK`). Takes the catalog lock.
    """
    from dsbuild.model.embeddings import EMBED_CHUNK

    progress = progress or Progress()
    datasets = manifest.select(names)
    if not Path(manifest.catalog).exists():
        raise DsbuildError(f"no catalog at {manifest.catalog} — run `dsbuild build` first")
    lock = BuildLock(manifest.catalog, command="dsbuild embed")
    lock.acquire()
    try:
        with Catalog.open(manifest.catalog) as cat:
            built = set(cat.datasets_in_catalog())
            missing = [d.name for d in datasets if d.name not in built]
            if missing:
                raise DsbuildError(f"dataset(s) {', '.join(missing)} not in the catalog — run `dsbuild build {missing[0]}` first")
            out = []
            for ds in datasets:
                t0 = time.monotonic()
                summary = DatasetSummary(dataset=ds.name)
                try:
                    regroup_dataset(cat, ds, summary=summary, progress=progress, threads=workers, embed=True)
                except KeyboardInterrupt:
                    rest = [d.name for d in datasets[len(out):]]
                    try:
                        embedded, total = embedding_counts(cat, ds)
                    except Exception:  # the catalog or the cache unreadable now: say what is sure
                        raise DsbuildError(f"embed interrupted — the embeddings of {ds.name} finished before the "
                                           f"stop are kept (they are saved every {EMBED_CHUNK} images); "
                                           f"`dsbuild embed {' '.join(rest)}` goes on from them",
                                           exit_code=130) from None
                    raise DsbuildError(embed_interrupted(ds.name, rest, embedded, total, chunk=EMBED_CHUNK),
                                       exit_code=130) from None
                summary.seconds = time.monotonic() - t0
                summary.notes[:0] = embed_notes(cat, ds)
                out.append(summary)
            return out
    finally:
        lock.release()


def embedding_counts(cat: Catalog, ds: Dataset) -> tuple[int, int]:
    """``(embedded, total)``: how many of ``ds``'s verified images (those the near-duplicate stage counts) have an
    embedding in the cache now, and how many there are."""
    from dsbuild.dedup.signals import emb_keys, open_cache

    items = cat.dataset_items(ds.name)
    keys = emb_keys(items[_verified(items)])
    cache = open_cache(features_root_of(cat), ds.dedup, cat.current_pixel_keys, write=False)
    return sum(1 for k in keys if isinstance(k, str) and k in cache), len(keys)


def embed_interrupted(dataset: str, rest: list[str], embedded: int, total: int, *, chunk: int) -> str:
    """What ``dsbuild embed`` says when Ctrl-C (or SIGTERM) stops it in ``dataset``: how many of its ``total``
    images have their embedding saved (``embedded``, counted in the cache after the stop; they are saved every
    ``chunk`` images) and what the next run (``dsbuild embed`` ``rest``: this dataset and those not reached) does."""
    again = f"`dsbuild embed {' '.join(rest)}`"
    if embedded == 0:
        return (f"embed interrupted before the first {min(chunk, total)} images of {dataset} were embedded — no "
                f"embedding was saved yet (they are saved every {chunk} images), so the next {again} starts from "
                f"the beginning")
    if embedded >= total:
        return (f"embed interrupted after all {total} images of {dataset} were embedded — the embeddings are saved; "
                f"the next {again} reuses them and only regroups the dataset")
    return (f"embed interrupted — {embedded} of {total} images of {dataset} have their embedding saved (they are "
            f"saved every {chunk} images); the next {again} goes on with the other {total - embedded}")


def embed_notes(cat: Catalog, ds: Dataset) -> list[str]:
    """What ``dsbuild embed`` left for ``ds``'s accepted images: how many have neighbours and an outlier score,
    and with ``dedup.semantic = false`` what the embeddings serve and what a build does with them."""
    accepted, with_neighbours, scored = cat.neighbour_coverage(ds.name)
    notes = [f"neighbours of {with_neighbours} of {accepted} accepted images stored (the `neighbours` view, `@similar`), "
             f"outlier scores of {scored} (duplicates get none)"]
    if not ds.dedup.semantic:
        notes.append(f"dedup.semantic = false: the embeddings serve `similar`, the `neighbours` view and the outlier "
                     f"scores, not the near-duplicate search; a build keeps them for the images embedded and embeds "
                     f"no new one — run `dsbuild embed {ds.name}` again after adding images")
    return notes


def _training_rows_spec(ds: Dataset) -> object:
    """The training :class:`~dsbuild.model.features.FeatureSpec` whose rows the build's embedding pass also writes: the
    one ``train`` resolves for ``ds`` (:func:`dsbuild.model.train.with_size`) when it is the embedding input
    (:func:`dsbuild.model.train.build_feature_spec`); else None (the trainer computes its own)."""
    from dsbuild.model.train import build_feature_spec, feature_spec, with_size

    spec = build_feature_spec(ds.dedup)
    if spec is None or ds.model_settings.size is not None or ds.model_settings.resize is not None:
        return None
    return spec if feature_spec(with_size(ds.model_settings, ds.dedup)) == spec else None


def features_root_of(cat: Catalog) -> Path:
    """Where the catalog's embedding caches live (``<catalog dir>/features``)."""
    from dsbuild.model.embeddings import features_root

    return features_root(cat.path)


def _wants_signals(ds: Dataset) -> bool:
    d = ds.dedup
    return d.near and d.threshold > 0 and (d.views or d.semantic) and d.hash == "phash" and d.hash_size == 8


def _verified(items):
    return items["status"].isin(["ok", "duplicate"]) | items["reason"].fillna("").str.startswith("quality:")


def group_warning(updates, ds: Dataset) -> str | None:
    """The safety net: a note when more than ``dedup.group_warning`` of the accepted images are near duplicates."""
    kept = updates["status"].isin(["ok", "duplicate"])
    near = (updates["reason"] == "near duplicate") & kept
    total = int(kept.sum())
    if not total or near.sum() <= ds.dedup.group_warning * total:
        return None
    return (f"{int(near.sum())} of {total} images ({near.sum() / total:.0%}) are near duplicates, more than "
            f"dedup.group_warning ({ds.dedup.group_warning:.0%}) — look at them with `dsbuild status {ds.name} "
            f"--html dups.html` or `dsbuild query @duplicates` before trusting them")


def _store_outliers(cat: Catalog, ds: Dataset, items, updates, sig, links=None) -> None:
    """cleanlab outlier scores of the accepted representatives (status ok, not removed in review) with an embedding,
    into the catalog; their neighbours come from the near-duplicate search of ``links`` when it covered them."""
    import numpy as np
    import pandas as pd

    from dsbuild.dedup.signals import outlier_scores

    status = updates.set_index("image_id")["status"].reindex(items["image_id"]).to_numpy()
    removed = items["removed"].fillna(False).to_numpy(dtype=bool)  # in review: not an accepted image
    rows = np.flatnonzero((status == "ok") & ~removed & sig.has_emb)
    search = links.search if links is not None else None
    neighbours = search.within(rows, ds.dedup.outlier_k) if search is not None and search.emb is sig.emb else None
    scores, flag = outlier_scores(sig.emb[rows], ds.dedup.outlier_k, neighbours=neighbours,
                                  labels=items["label"].astype(str).to_numpy()[rows])
    frame = pd.DataFrame({"image_id": items["image_id"].to_numpy()[rows], "outlier_score": scores,
                          "is_outlier": flag})
    cat.set_outliers(ds.name, frame[np.isfinite(scores)])


def _store_neighbours(cat: Catalog, ds: Dataset, items, updates, links, sig=None) -> None:
    """Each accepted image's nearest images (the ``knn`` table behind the ``neighbours`` view): from the build's
    neighbour search, else searched here among the images with a cached embedding (``sig``), else none.

    Accepted here is the build's status (ok or duplicate); the view leaves out what review removed since, so an
    undo brings an image back without a build."""
    import numpy as np
    import pandas as pd

    from dsbuild.dedup.neardup import nearest_neighbours

    frame = pd.DataFrame({"image_id": [], "rank": [], "neighbour_id": [], "similarity": []})
    status = updates.set_index("image_id")["status"].reindex(items["image_id"]).to_numpy()
    kept = np.isin(status, ["ok", "duplicate"])
    found = links.neighbours if links is not None else None
    if found is None and sig is not None and sig.emb is not None:
        found = nearest_neighbours(sig.emb, sig.has_emb & kept)
    if found is not None:
        ids, sims = found
        image_ids = items["image_id"].to_numpy()
        q, r = np.nonzero((ids >= 0) & kept[:, None] & kept[np.clip(ids, 0, None)])
        frame = pd.DataFrame({"image_id": image_ids[q], "rank": r + 1, "neighbour_id": image_ids[ids[q, r]],
                              "similarity": np.round(sims[q, r].astype(float), 4)})
        frame["rank"] = frame.groupby("image_id").cumcount() + 1
    cat.set_neighbours(ds.name, frame)


def cached_signals(items, ds: Dataset, features_dir: Path, *, current_pixels=None):
    """:class:`dsbuild.dedup.signals.Signals` holding only the embeddings already cached for ``items``' verified
    rows, of the pixels read now (nothing decoded or computed): what a build that needs no other signal still
    stores neighbours and outlier scores from. ``current_pixels``: see :func:`dsbuild.dedup.signals.open_cache`."""
    import numpy as np
    import pandas as pd

    from dsbuild.dedup.signals import Signals, emb_keys, open_cache, spec_of

    n = len(items)
    emb, has = None, np.zeros(n, dtype=bool)
    if (Path(features_dir) / spec_of(ds.dedup).key()).is_dir():
        cache = open_cache(Path(features_dir), ds.dedup, current_pixels)
        keys = emb_keys(items)
        has = _verified(items).to_numpy() & np.array([isinstance(k, str) and k in cache for k in keys], dtype=bool)
        idx = np.flatnonzero(has)
        if len(idx):
            rows = cache.get(list(keys[idx]))
            emb = np.zeros((n, rows.shape[1]), dtype=np.float32)
            emb[idx] = rows
    return Signals(views=np.zeros((n, 7), dtype=np.uint64), eff_side=np.full(n, np.nan), emb=emb, has_emb=has,
                   new_blobs=pd.DataFrame(columns=["sha256", "phash_views", "eff_side"]), computed=0, failed={})


def near_links_for(items, ds: Dataset, signals):
    """:class:`dsbuild.dedup.neardup.Links` among ``items``' verified images by the two-signal rule, or None."""
    import numpy as np

    from dsbuild.dedup.neardup import near_links
    from dsbuild.dedup.signals import thumb_loader
    from dsbuild.verify import hashing

    pos = np.flatnonzero(_verified(items).to_numpy() & items["phash"].notna().to_numpy())
    if len(pos) < 2:
        return None
    hexes = items["phash"].to_numpy()[pos]
    n = len(items)
    full = np.zeros(n, dtype=np.uint64)
    full[pos] = [hashing.hash_to_int(h) for h in hexes]
    usable = np.zeros(n, dtype=bool)
    usable[pos] = [not hashing.is_degenerate(h) for h in hexes]
    views = signals.views if ds.dedup.views else None
    if views is not None:  # views of a blob that could not be decoded again: its hash alone
        views = np.where((views == 0).all(axis=1, keepdims=True), full[:, None], views)
    emb = signals.emb if ds.dedup.semantic else None
    has = signals.has_emb.copy()
    has[np.setdiff1d(np.arange(n), pos)] = False
    key = np.unique(items["sha256"].fillna("").astype(str).to_numpy(), return_inverse=True)[1]  # content, not row order
    return near_links(full, usable, ds.dedup, views=views, eff_side=signals.eff_side, emb=emb, has_emb=has,
                      thumb=thumb_loader(items, ds.verify) if emb is not None else None, key=key)


def near_pairs_for(items, ds: Dataset):
    """Near-duplicate pairs ``(i, j, distance)`` (row positions in ``items``) among verified images, by perceptual hash."""
    import numpy as np

    from dsbuild.dedup import search as dedup
    from dsbuild.verify import hashing

    ok = _verified(items)
    pos = np.flatnonzero(ok.to_numpy() & items["phash"].notna().to_numpy())
    if len(pos) < 2:
        return None
    hexes = items["phash"].to_numpy()[pos]
    keep = np.array([not hashing.is_degenerate(h) for h in hexes], dtype=bool)
    pos, hexes = pos[keep], hexes[keep]
    if len(pos) < 2:
        return None
    if ds.dedup.hash_size == 8:
        values = np.array([hashing.hash_to_int(h) for h in hexes], dtype=np.uint64)
        pairs = dedup.find_pairs(values, ds.dedup.threshold)
    else:
        pairs = dedup.find_pairs_hex(list(hexes), ds.dedup.threshold)
    if len(pairs) == 0:
        return None
    pairs = np.asarray(pairs)
    return np.column_stack([pos[pairs[:, 0]], pos[pairs[:, 1]], pairs[:, 2]])
