"""dsbuild: declarative image-classification datasets, built clean and kept clean.

Architecture — one module per stage, a library with a thin CLI on top:

==================  =====================================================================
manifest.py         ``datasets.toml`` → frozen dataclasses; every error names its key path
engines/            link discovery: bing (bing-image-downloader), icrawler engines, URL lists
fetch.py            concurrent, safe downloader (limits, deadlines, retries, SSRF guard)
crawl.py            queries/URL lists → fetch → verify → store → catalog rows (provenance)
formats.py          the one format table: magic bytes → format, family → extension; open_image for every untrusted open
containers.py       structure before pixels: PNG chunks/checksums, GIF frames, TIFF directories (nothing decoded)
decoders.py         the one decode: every frame's size, every decoder message kept per image, metadata never costs pixels
verify.py           one full decode per image: limits, bomb guard, format allow-list, reasons (via decoders.py)
hashing.py          perceptual hashes on the already-decoded image (vectorised)
quality.py          CleanVision-style quality scores (dark, light, blurry, ...)
store.py            content-addressed image store (sha256 → file), atomic writes
dedup.py            exact near-duplicate search (sub-quadratic) and grouping
groups.py           duplicate groups, label conflicts, statuses of a dataset
split.py            deterministic, stratified, stable, group-aware splits
build.py            orchestration: idempotent, resumable, batched commits, lock
catalog.py          the only module that speaks SQL: schema, migrations, views, sandboxed query
status.py/export.py read-side summaries and exports
train.py            fastai fine-tuning from catalog rows; weights.py resolves weights offline
mislabels.py        out-of-fold probabilities + cleanlab label issues
review.py           decisions → append-only label events; report.py renders tables/HTML/PNG
cli.py              argument parsing and printing only
==================  =====================================================================

Per-image work (fetch, verify, hash, score) is a pure function of its inputs run
by an executor over batches, so it can later run on Ray or Dask unchanged.
"""

__version__ = "0.1.0"
