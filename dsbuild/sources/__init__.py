"""sources/: where a dataset's images come from, all reporting to ONE consumer.

==================  =============================================================
folders.py          local folders and ImageFolder trees → verified items
labelcsv.py         a CSV of local files, labels (and splits) → the files folders.py verifies
urls.py             URL list files, :class:`~dsbuild.sources.urls.Link`, URL normalisation
engines/            search engines that discover links (types, http, base, bing, icrawler)
web.py              queries and URL lists → download (:mod:`dsbuild.fetch`) → verify → items
==================  =============================================================

Every source gets a :class:`SourceRun` (the dataset, the build, the store, the
executor settings, progress) and reports what it found to the run's
:class:`Sink` — the build's one consumer (:class:`dsbuild.pipeline.DatasetSink`),
which writes the rows in batches and counts the build summary. A new source
is a function ``ingest(..., run: SourceRun)`` that calls ``run.sink`` and returns the image ids its
sources supply today: the build sets every other item of the dataset aside (:data:`SOURCE_REMOVED`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dsbuild.executor_settings import ExecutorSettings

if TYPE_CHECKING:  # pragma: no cover
    from dsbuild.manifest import Dataset
    from dsbuild.progress import Progress


SPLIT_NAMES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
               "test": "test", "testing": "test"}
"""A split folder's name (an ``imagefolder``'s ``train/``) or a labels CSV's ``split`` value → the split it gives."""

SOURCE_REMOVED = "source removed"
"""The ``reason`` of an item whose source the manifest no longer lists (a class, folder, query or URL taken out,
or a file deleted from a folder): status ``rejected``, its row, blob and review history kept; it comes back
(verified again) when its source does."""


def source_removed(old) -> bool:
    """The catalogued item ``old`` (a row with ``reason``) was set aside because its source left the manifest."""
    return getattr(old, "reason", None) == SOURCE_REMOVED


class Sink(Protocol):
    """What a source reports to; the build implements it once (:class:`dsbuild.pipeline.DatasetSink`)."""

    def add(self, *, item: dict | None = None, blob: dict | None = None, fetch: dict | None = None,
            retried: bool = False) -> None:
        """Rows to write (:mod:`dsbuild.rows`). An ``item`` is one source this build processed, counted by its status;
        ``retried``: an item catalogued before, processed again because a setting that decided its outcome changed."""

    def found(self, sources: int = 0, *, skipped: int = 0) -> None:
        """``sources`` image sources seen; ``skipped`` of them already catalogued and unchanged."""

    def note(self, text: str) -> None:
        """A line for the build summary (a blocked query, a bad line of a URL list, ...)."""

    def not_rechecked(self, why: str) -> None:
        """A catalogued image the build could not verify again from disk after dsbuild's checks changed (``why``:
        e.g. no stored copy of a rejected download); it keeps its outcome, and the build's line counts it."""

    def tally(self) -> dict[str, int]:
        """Items counted so far by status: ``ok``, ``rejected``, ``failed`` (for progress bars)."""

    def flush(self) -> None:
        """Commit the rows reported so far (the sink also commits on its own, in batches)."""


@dataclass(frozen=True, kw_only=True)
class SourceRun:
    """What a source needs from the build it runs in.

    ``store``: the content-addressed store; ``workers``/``executor``: how
    :mod:`dsbuild.executor` runs the per-image work (worker processes; the
    backend's settings); ``retry_failed``: fetch every failed download again and search again every query that found no results;
    ``changed``: the settings sections that changed since the dataset's last build
    (:data:`dsbuild.pipeline.SETTINGS_SECTIONS`): the recorded outcomes they decided
    are evaluated again. ``checks_changed``: dsbuild's verifier revision
    (:data:`dsbuild.verify.decode.VERIFIER_REVISION`) differs from the last build's: every catalogued image is
    verified again from the files on disk (a folder's file, a download's stored copy), nothing downloaded again.
    """

    dataset: "Dataset"
    build_id: int
    store: Path
    sink: Sink
    progress: "Progress"
    retry_failed: bool = False
    workers: int | None = None
    executor: ExecutorSettings = ExecutorSettings()
    changed: frozenset[str] = frozenset()
    checks_changed: bool = False
