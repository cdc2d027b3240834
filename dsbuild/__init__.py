"""dsbuild: declarative image-classification datasets, built clean and kept clean.

Architecture — one package per pipeline stage, a library with a thin CLI on top
(the data flows down this table):

==================  =====================================================================
manifest.py         ``datasets.toml`` → frozen dataclasses; every error names its key path
sources/            where images come from: folders, URL lists, search engines (``engines/``);
                    every source reports to ONE consumer in build.py
fetch.py            concurrent, safe downloader (limits, deadlines, retries); netguard.py: SSRF guard
executor.py         per-image jobs run in batches with crash isolation (local pool; Ray later)
formats.py          the one format table: magic bytes → format, family → extension; open_image (every untrusted open)
verify/             one decode per image: limits, format allow-list, reasons; structure before pixels
                    (containers.py), every decoder message kept per image (decoders.py); hashes, quality
store.py            content-addressed image store (sha256 → file), atomic writes
rows.py             the catalog rows the build writes (items, blobs, fetches)
dedup/              near-duplicate search (sub-quadratic) and grouping; split.py: stable splits
build.py            orchestration: idempotent, resumable, batched commits, lock
catalog/            the only package that speaks SQL: schema, Catalog, lock, sandboxed query
status.py           read-side summaries; export/: exporters (imagefolder, csv)
model/              fastai fine-tuning, features, out-of-fold probabilities, predict
issues/             issue finders (label via cleanlab, conflict), Datalab-shaped registry
cycle.py            the model loop over the catalog: train, find issues, review, retrain
review.py           decisions → append-only label events
render/             tables, console summaries, HTML reports, figures
demo/               the offline showcase; cli.py: argument parsing and rendering only
==================  =====================================================================

Per-image work (verify, hash, score) is a pure function of a frozen job
(:class:`dsbuild.executor.VerifyJob`) run by an executor over batches, so it
can run on another backend (Ray, Dask) unchanged.
"""

__version__ = "0.1.0"
