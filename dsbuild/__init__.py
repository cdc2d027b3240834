"""dsbuild: declarative image-classification datasets, built clean and kept clean.

The public API, in the order of the loop (everything else is reachable through
the packages below; ``import dsbuild`` itself imports almost nothing)::

    import dsbuild

    manifest = dsbuild.load_manifest("datasets.toml")        # every section checked here
    summary = dsbuild.build(manifest, ["demo"])                # crawl/import → verify → dedup → split
    with dsbuild.Catalog.open_readonly(manifest.catalog) as cat:
        images = cat.images("demo", statuses=("ok",))          # a pandas DataFrame
    report = dsbuild.train(manifest, "demo")                   # a head on frozen features, a recorded run
    run_id, issues = dsbuild.find_issues(manifest, "demo")     # out-of-fold probabilities + cleanlab
    dsbuild.review(manifest, "demo", accept_suggestions=True, min_confidence=0.99)
    dsbuild.export(manifest, "demo", "out/demo")               # out/demo/<split>/<label>/...

Errors the user can act on are :class:`DsbuildError` (its text says what to do).

Architecture — one package per pipeline stage, a library with a thin CLI on top
(the data flows down this table):

==================  =====================================================================
manifest.py         ``datasets.toml`` → each stage's frozen settings; errors name the key path
sources/            where images come from: folders, URL lists, search engines (``engines/``);
                    every source reports to ONE consumer (pipeline.py's ``DatasetSink``)
fetch.py            concurrent, safe downloader; fetch_settings.py: its settings; netguard.py: SSRF guard
executor.py         per-image jobs in worker processes: crash isolation, per-image time limit and stderr
                    (backends: local pool; ray_backend.py: Ray Core tasks on a cluster, loaded only when
                    used); executor_settings.py: the ``[executor]`` settings; progress.py: progress sinks
formats.py          the one format table: magic bytes → format, family → extension; open_image (every untrusted open)
verify/             one decode per image: limits, format allow-list, reasons; structure before pixels
                    (containers.py), every decoder message kept per image (decoders.py); hashes, quality
store.py            content-addressed image store (sha256 → file); the one atomic write
rows.py             the catalog rows dsbuild writes, one definition per table
dedup/              near-duplicate search (sub-quadratic) and grouping; split.py: stable splits
pipeline.py         the build: idempotent, resumable, batched commits, lock; carryover.py: images of a
                    renamed, merged or split class keep their split and review decisions
catalog/            the only package that speaks SQL: schema, Catalog, lock, sandboxed query
status.py           read-side summaries; exporters/: a registry of exporters (imagefolder, csv)
model/              frozen features (cached per blob) + heads, fastai fine-tuning, out-of-fold probabilities, trust, predict
issues/             a registry of issue finders (label via cleanlab, conflict), Datalab-shaped
cycle.py            the model loop over the catalog: train, find issues, review, retrain
decisions.py        review decisions (CSV, suggestions, Decision objects) → label events
render/             tables, console summaries, HTML reports (jinja2 templates), figures
demo/               the offline showcase; cli.py: argument parsing and rendering only
==================  =====================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbuild.errors import DsbuildError

if TYPE_CHECKING:  # pragma: no cover
    from dsbuild.catalog import Catalog
    from dsbuild.manifest import Manifest

__version__ = "0.1.0"
__all__ = ["Catalog", "DsbuildError", "build", "export", "find_issues", "load_manifest", "review", "train"]


def load_manifest(path: str | Path | None = None) -> "Manifest":
    """Read and check the manifest at ``path`` (default ``./datasets.toml``); every section becomes its stage's settings.

    Raises :class:`DsbuildError` (a ``ManifestError``, exit code 2) listing every problem with its dotted key path.
    """
    from dsbuild.manifest import load_manifest as load

    return load(path)


def build(manifest: "Manifest", datasets: list[str] | None = None, **options: Any):
    """Build ``datasets`` (default: all) into the catalog: sources → verify + hash → store → dedup → split.

    Idempotent and resumable; ``options``: ``retry_failed``, ``workers``, ``progress``,
    ``catalog_path``, ``executor`` (an :class:`dsbuild.executor_settings.ExecutorSettings` for every dataset,
    e.g. ``ExecutorSettings(backend="ray", address="auto")``; default: each dataset's ``[executor]``) or
    ``backend`` (short for ``executor=ExecutorSettings(backend=...)``, a :data:`dsbuild.executor.BACKENDS` name).
    Returns a :class:`dsbuild.pipeline.BuildSummary` (one summary per dataset). A dataset that cannot be built
    does not stop the others: they are built, then :class:`dsbuild.pipeline.PartialBuild` is raised (its ``summary``
    is what was built).
    """
    from dsbuild.pipeline import build as run

    return run(manifest, datasets, **options)


def train(manifest: "Manifest", dataset: str, *, progress: Any = None, **overrides: Any):
    """Train the dataset's model (``[model]`` settings; ``overrides`` e.g. ``finetune=True``) on its current labels.

    Records a run in the catalog; returns a :class:`dsbuild.cycle.RunReport` (``report.learned`` is
    False, and ``report.warning()`` says why, when the model did not learn).
    """
    from dsbuild.cycle import train_dataset

    return train_dataset(manifest, dataset, progress=progress, **overrides)


def find_issues(manifest: "Manifest", dataset: str, *, progress: Any = None):
    """Score every labelled image out of fold and run the issue finders (label via cleanlab, conflict).

    Records a ``mislabels`` run; returns ``(run_id, issues)``, the flagged rows as a DataFrame
    with the ``label_issues`` columns, most likely wrong first.
    """
    from dsbuild.cycle import find_issues as find

    return find(manifest, dataset, progress=progress)


def review(manifest: "Manifest", dataset: str, *, decisions: Any = None, accept_suggestions: bool = False,
           min_confidence: float = 0.9, overrule_people: bool = False):
    """Apply review decisions as append-only label events, all or nothing.

    ``decisions``: a decisions CSV path, or any iterable of :class:`dsbuild.decisions.Decision`;
    or ``accept_suggestions=True`` to relabel the latest run's suggestions at ``min_confidence``
    or above (images whose standing decision is a person's are skipped unless ``overrule_people``). Returns a :class:`dsbuild.cycle.ReviewSummary`.
    """
    from dsbuild.cycle import review_dataset

    return review_dataset(manifest, dataset, decisions=decisions, accept_suggestions=accept_suggestions,
                          min_confidence=min_confidence, overrule_people=overrule_people)


def export(manifest: "Manifest", dataset: str, out: str | Path, *, fmt: str = "imagefolder"):
    """Write the dataset's accepted images with their current labels to ``out`` in format ``fmt``.

    ``fmt``: a name of :data:`dsbuild.exporters.EXPORTERS` (``imagefolder``, ``csv``). Into a previous export
    folder, only what the same dataset's export in the same format wrote is replaced; nothing else in it is
    deleted (``summary.notes()`` names what was left untouched).
    Returns a :class:`dsbuild.exporters.ExportSummary`.
    """
    from dsbuild.exporters import export_dataset

    manifest.dataset(dataset)
    return export_dataset(manifest.catalog, dataset, Path(out), fmt=fmt, manifest=manifest)


def __getattr__(name: str) -> Any:
    """``dsbuild.Catalog``, imported on first use."""
    if name == "Catalog":
        from dsbuild.catalog import Catalog

        return Catalog
    raise AttributeError(f"module 'dsbuild' has no attribute {name!r}")
