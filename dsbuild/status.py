"""``dsbuild status``: what the catalog holds, per dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dsbuild.catalog import Catalog
from dsbuild.errors import DsbuildError
from dsbuild.render.values import counted
from dsbuild.split import leakage_note

_STATUS_ORDER = ("ok", "duplicate", "rejected", "failed")
NEAR_SHARE_WARNING = 0.2
"""``status`` warns when more than this share of a dataset's accepted images are near duplicates (the
default ``dedup.group_warning``; the build's warning uses the dataset's own setting)."""


@dataclass
class DatasetStatus:
    """``rows``: (label, counts in ``columns`` order); ``columns`` like ``train ok``, ``- rejected``."""

    name: str
    columns: list[str]
    rows: list[tuple[str, list[int]]]
    totals: list[int]
    rejects: list[tuple[str, str, int]]
    duplicates: dict[str, int]
    quality: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class CatalogStatus:
    datasets: list[DatasetStatus]
    last_build: str | None


def dataset_status(catalog_path: Path, dataset: str | None = None, *, manifest=None) -> CatalogStatus:
    """Counts per label × split × status, rejects by reason and duplicate/conflict counts.

    ``manifest`` (a :class:`~dsbuild.manifest.Manifest`): a ``dataset`` in neither the catalog nor the
    manifest is a typo (its error says so, with a did-you-mean), not a dataset to build.
    """
    with Catalog.open_readonly(catalog_path) as cat:
        names = cat.datasets_in_catalog()
        if dataset is not None:
            if dataset not in names:
                if manifest is not None and dataset not in manifest.datasets:
                    manifest.dataset(dataset)  # raises: no such dataset, did you mean …
                known = ", ".join(names) or "(none yet)"
                raise DsbuildError(f"dataset '{dataset}' is not in the catalog — built datasets: {known}; run `dsbuild build {dataset}`")
            names = [dataset]
        defined = manifest.datasets if manifest is not None else {}
        out = [_one(cat, name, defined.get(name)) for name in names]
        last = cat.last_build()
    line = None
    if last:
        build_id, datasets, started, finished, outcome, _ = last
        line = f"last build #{build_id} ({datasets}) started {started:%Y-%m-%d %H:%M:%S} UTC: {outcome}"
        if outcome == "interrupted":
            line += " — run `dsbuild build` again to resume"
        elif outcome == "running":  # no build holds the catalog (it could not be read then): its process is gone
            line += " — but no build holds the catalog: it was stopped before it finished; run `dsbuild build` again to resume"
    return CatalogStatus(datasets=out, last_build=line)


SOURCE_NOTES_SHOWN = 3
"""Lines of the sources' notes (rows of a labels CSV skipped, …) ``status`` repeats from the last build, then a count."""


def _one(cat: Catalog, name: str, ds=None) -> DatasetStatus:
    """``ds``: the dataset as the manifest defines it now (None: not in the manifest) — after a finished build, its
    classes with no accepted image get a row of zeros and a note, as in the build summary."""
    counts = cat.status_counts(name)
    splits = [s for s in ("train", "valid", "test") if s in set(counts["split"])]
    columns: list[tuple[str, str]] = [(s, "ok") for s in splits]
    # Verified but not split yet: a build stopped (Ctrl-C, a kill) after verifying, before dedup and splits.
    pending = int(counts[(counts["status"] == "ok") & (counts["split"] == "-")]["n"].sum())
    if pending:
        columns.append(("-", "ok"))
    columns += [("*", st) for st in _STATUS_ORDER[1:] if st in set(counts["status"])]
    table: dict[str, dict[tuple[str, str], int]] = {}
    for row in counts.itertuples(index=False):
        key = (row.split, row.status) if row.status == "ok" else ("*", row.status)
        table.setdefault(row.label, {})
        table[row.label][key] = table[row.label].get(key, 0) + int(row.n)
    # Only after a finished build: an interrupted one has not read every class's sources yet.
    finished = ds is not None and cat.last_build_outcome(name) == "ok" and not pending
    empty = empty_classes(cat, ds) if finished else {}
    for label in empty:  # a class with no image at all has no row of counts: a row of zeros shows it is there
        table.setdefault(label, {})
    rows = [(label, [table[label].get(c, 0) for c in columns]) for label in sorted(table)]
    totals = [sum(r[1][i] for r in rows) for i in range(len(columns))]
    rejects = [(r.status, r.reason, int(r.n)) for r in cat.reject_counts(name).itertuples(index=False)]
    dups = cat.duplicate_counts(name)
    notes = []
    if pending:
        notes.append(f"{name}: {pending:,} verified image{'s have' if pending != 1 else ' has'} no split yet — the last "
                     f"build of it stopped before near duplicates and splits; run `dsbuild build {name}` to finish")
    if dups["groups"]:
        notes.append(
            f"{name}: {counted(dups['duplicates'], 'duplicate')} in {counted(dups['groups'], 'group')}; "
            f"{counted(dups['conflicts'], 'label conflict')} (same picture, different labels) — "
            "`dsbuild query @label_conflicts`"
        )
    leaks = leakage_note(dups["leaks"], dups["leaks_kept"], dups["leak_pairs"], name)
    if leaks:
        notes.append(f"{name}: {leaks}")
    near, kept, outliers = cat.near_duplicate_share(name)
    if kept and near > NEAR_SHARE_WARNING * kept:
        notes.append(f"{name}: warning — {near} of {kept} accepted images ({near / kept:.0%}) are near duplicates, more "
                     f"than {NEAR_SHARE_WARNING:.0%}: look at the groups with `dsbuild status {name} --html dups.html` "
                     "or `dsbuild query @duplicates` before trusting them")
    if outliers:
        notes.append(f"{name}: {outliers} outlier{'s' if outliers != 1 else ''} (images unlike the rest, cleanlab outlier_score) — "
                     f"`dsbuild query \"SELECT * FROM images WHERE dataset = '{name}' AND is_outlier ORDER BY outlier_score\"`")
    said = cat.last_source_notes(name)
    if said and said[1]:
        build_id, lines = said
        shown = "; ".join(lines[:SOURCE_NOTES_SHOWN]) + (f"; … and {len(lines) - SOURCE_NOTES_SHOWN} more"
                                                         if len(lines) > SOURCE_NOTES_SHOWN else "")
        notes.append(f"{name}: reading its sources, build #{build_id} said: {shown} (`dsbuild build {name}` says it again)")
    flags = cat.quality_flag_counts(name)
    if flags:
        from dsbuild.verify.settings import QUALITY_FLAGS

        listed = ", ".join(f"{f} {flags[f]}" for f in QUALITY_FLAGS if f in flags)
        example = ", ".join(f'"{f}"' for f in QUALITY_FLAGS if f in flags)
        notes.append(f"{name}: quality flags on accepted images: {listed} — `dsbuild query @quality`; to reject "
                     f"images so flagged, add reject = [{example}] (the flags you want out) under "
                     f"[datasets.{name}.quality] in the manifest and run `dsbuild build {name}`")
    aside, superseded = cat.superseded_count(name)
    if superseded:  # trial 11, M4: labels edited in a labels CSV showed as "rejected 65 (source removed 65)"
        rest = aside - superseded
        left = f"; the other {rest} left the manifest" if rest else ""
        notes.append(f"{name}: {superseded} of the {counted(aside, 'rejected row')} with reason 'source removed' "
                     f"{'is the earlier row of a file' if superseded == 1 else 'are earlier rows of files'} still in "
                     "the dataset under another label (a label changed in the source, or a class renamed, merged or "
                     f"split) — no image is missing for {'it' if superseded == 1 else 'them'}{left}")
    notes += [f"{name}: {line}" for line in empty.values()]
    if ds is not None:
        notes += [f"{name}: {line}" for line in ghost_label_notes(cat, ds)]
    if finished:
        notes += [f"{name}: {line}" for line in split_gaps(cat, ds)]
    names = [("ok, split pending" if s == "-" else f"{s} ok") if st == "ok" else st for s, st in columns]
    return DatasetStatus(name=name, columns=names, rows=rows, totals=totals, rejects=rejects, duplicates=dups,
                         quality=flags, notes=notes)


def ghost_label_notes(cat: Catalog, ds) -> list[str]:
    """The line (none or one) of the build summary and ``status`` for accepted images of ``ds`` whose label is no
    longer a class (:func:`dsbuild.cycle.ghost_labels`; ``review`` words the same line for the images it undid)."""
    from dsbuild.cycle import ghost_label_line, ghost_labels

    line = ghost_label_line(ds.name, ghost_labels(cat, ds))
    return [line] if line else []


def split_gaps(cat: Catalog, ds) -> list[str]:
    """A line for each class of drawn splits left with no accepted image in a split its size calls for.

    A split's share of a class is :func:`dsbuild.split.nested_counts` of its accepted images (what a fresh split
    draws: ``round(fraction × n)``); a class with none where that count is ≥ 1 gets a line — e.g. its valid images
    were removed in review, or became duplicates of another class's copies, after the splits were drawn, and its
    valid error rate can no longer be measured. Datasets whose source gives the splits are the user's to arrange
    (``train`` says what it needs)."""
    from dsbuild.split import nested_counts

    if cat.given_splits(ds.name):
        return []
    targets = ds.split.targets()
    per: dict[str, dict[str, int]] = {}
    for r in cat.status_counts(ds.name).itertuples(index=False):
        if r.status == "ok" and r.split != "-":
            per.setdefault(str(r.label), {})[r.split] = per.get(str(r.label), {}).get(r.split, 0) + int(r.n)
    lines = []
    for label, splits in sorted(per.items()):
        n = sum(splits.values())
        want = nested_counts(n, targets, "train")
        for split in ("valid", "test"):
            if want.get(split, 0) >= 1 and not splits.get(split):
                where = ", ".join(f"{splits[s]} in {s}" for s in ("train", "valid", "test") if splits.get(s))
                lines.append(f"class '{label}' has no {split} image ({where}; a fresh split of its {n} would put "
                             f"{want[split]} in {split}): images were removed or became duplicates after its split "
                             f"was drawn, and its {split} error cannot be measured — `dsbuild build {ds.name} "
                             f"--resplit` draws the splits again (images may move)")
    return lines


def empty_class_notes(cat: Catalog, ds) -> list[str]:
    """The build summary's lines for :func:`empty_classes`."""
    return list(empty_classes(cat, ds).values())


def empty_classes(cat: Catalog, ds) -> dict[str, str]:
    """Each class of the manifest's dataset ``ds`` (and each class folder of its imagefolder, an empty one too, and
    each label of its labels CSV) with no accepted image, with the line that says why: a model would silently learn
    without it."""
    from dsbuild.manifest import label_problem
    from dsbuild.sources.folders import class_name, imagefolder_layout
    from dsbuild.sources.labelcsv import read_labels_csv

    by_label: dict[str, dict[str, int]] = {}
    for r in cat.status_counts(ds.name).itertuples(index=False):
        per = by_label.setdefault(str(r.label), {})
        per[r.status] = per.get(r.status, 0) + int(r.n)
    notes: dict[str, str] = {}
    reasons = cat.label_reject_counts(ds.name)
    queries = {c.name: c.queries for c in ds.classes}
    empty = cat.empty_searches(ds.name) if any(queries.values()) else set()
    labels = list(ds.labels)
    if ds.imagefolder is not None and ds.imagefolder.is_dir():  # its class folders, an empty one included
        labels += [label for label in dict.fromkeys(class_name(ds, label) for label in
                                                    imagefolder_layout(ds.imagefolder, ds.name).labels)
                   if label not in labels and not label_problem(label)]  # a refused folder name is no class
    if ds.labels_csv is not None and ds.labels_csv.is_file():  # every label it names, one whose rows were skipped too
        labels += sorted({class_name(ds, label) for label in
                          read_labels_csv(ds.labels_csv, root=ds.labels_root).labels} - set(labels))
    for label in labels:
        per = by_label.get(label, {})
        if per.get("ok", 0):
            continue
        if not per:
            notes[label] = _no_images_note(label, [q for q in queries.get(label, ()) if (label, ds.engine, q) in empty])
            continue
        words = {"rejected": ("rejected", "rejected"), "failed": ("failed", "failed"),
                 "duplicate": ("duplicate", "duplicates")}
        bad = ", ".join(counted(per[s], *words[s]) for s in ("rejected", "failed") if per.get(s))
        bad, hint = _main_reason(bad, reasons.get(label, []), ds.name)
        parts = ", ".join(p for p in (bad, per.get("duplicate") and counted(per["duplicate"], *words["duplicate"])) if p)
        notes[label] = f"class '{label}' has no accepted images ({parts}) — {hint or 'add images or remove the class'}"
    return notes


def _no_images_note(label: str, empty_queries: list[str]) -> str:
    """The line for a class with no image at all; ``empty_queries``: its queries whose last search found no results
    (an engine that was empty or answered a page that read as empty: searching again may find them)."""
    if not empty_queries:
        return f"class '{label}' has no images (its sources are empty) — add images or remove the class"
    shown = ", ".join(repr(q) for q in empty_queries[:3]) + (", …" if len(empty_queries) > 3 else "")
    one = len(empty_queries) == 1
    return (f"class '{label}' has no images: the search for {shown} found no results — "
            f"`dsbuild build --retry-failed` searches {'it' if one else 'them'} again "
            f"(else change the {'query' if one else 'queries'}, add images or remove the class)")


def _main_reason(parts: str, reasons: list[tuple[str | None, int]], dataset: str) -> tuple[str, str | None]:
    """An empty class's counts with the reason most of its rejections share (``40 rejected: private address``), and
    the hint for it (None: the generic one)."""
    total = sum(n for _, n in reasons)
    if not reasons or reasons[0][1] * 2 <= total:
        return parts, None
    reason, n = reasons[0]
    parts += f": {reason}" if n == total else f"; {n} of them: {reason}"
    if reason == "private address":
        from dsbuild.sources import web

        return parts, web.private_hosts_hint(dataset)
    return parts, None


def running_build(catalog_path: Path) -> dict | None:
    """What the build now writing ``catalog_path`` has done so far (its live progress file), or None when no
    build of this machine is running. See :class:`dsbuild.progress.LiveProgress` for the fields."""
    from dsbuild.progress import read_live

    return read_live(catalog_path)


def duplicates_page(catalog_path: Path, dataset: str, out: Path) -> tuple[Path, int]:
    """Write the HTML page of ``dataset``'s duplicate groups (label conflicts first, thumbnails side by side), then
    its near-duplicate pairs left in different splits.

    Returns ``(out, number of groups)``.
    """
    from dsbuild.render.html import duplicates_html

    with Catalog.open_readonly(catalog_path) as cat:
        if dataset not in cat.datasets_in_catalog():
            raise DsbuildError(f"dataset '{dataset}' is not in the catalog — run `dsbuild build {dataset}`")
        members = cat.duplicate_members(dataset)
        pairs = cat.leak_pair_members(dataset)
    duplicates_html(members, dataset=dataset, out=out, max_groups=None, pairs=pairs)
    return out, int(members["dup_group"].nunique())
