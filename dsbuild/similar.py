"""``dsbuild similar``: the images of a dataset most like one image, by embedding cosine.

The query is an accepted image of the dataset (its ``image_id``, a unique start of one, or the
path it was imported from; an image removed in review or set aside is refused with why and what
to do) or any image file, verified like a build's input (magic-byte sniffing, the allow-list,
size and pixel limits: :func:`dsbuild.verify.analyze_file`) and embedded with the dataset's
backbone. The dataset's embeddings come from the per-blob cache the build (``dedup.semantic``)
or ``dsbuild embed`` filled (:mod:`dsbuild.model.features`); the search is exact
(:func:`dsbuild.dedup.neardup.similar`). The review app's "more like this" calls
:func:`similar_images` too.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from dsbuild.catalog import Catalog
from dsbuild.errors import DsbuildError
from dsbuild.formats import not_regular
from dsbuild.manifest import Manifest

SIMILAR_COLUMNS = ("rank", "image_id", "similarity", "label", "split", "status", "origin", "path")
ACCEPTED = ("ok", "duplicate")
"""The statuses ``similar`` searches (review applied): the images a build or review has not set aside —
the ``neighbours`` view filters the same way."""
MIN_PREFIX = 4
"""The fewest hex characters ``similar`` takes as the start of an image_id."""
SHOWN_CANDIDATES = 10


def similar_images(manifest: Manifest, dataset: str, query: str, *, k: int = 20, id_only: bool = False) -> Any:
    """The ``k`` accepted images of ``dataset`` most similar to ``query``: a DataFrame of :data:`SIMILAR_COLUMNS`
    (``attrs["query_id"]``: the image_id ``query`` named — whole when it gave the start of one — or None for a file).

    ``similarity`` is the cosine of the L2-normalised embeddings (1 = same features), best
    first; the query image itself is left out. ``id_only``: ``query`` must be an image_id of the
    dataset, whole — never a path or the start of an id (the review app: a value from a browser
    names no file). Raises DsbuildError (with what to do) when the dataset is not built, has no
    embeddings yet, or ``query`` is neither one of its images nor an acceptable image file.
    """
    import numpy as np
    import pandas as pd

    from dsbuild.dedup.neardup import similar
    from dsbuild.dedup.signals import embed_decode_side, load_image, spec_of
    from dsbuild.model.embeddings import Embedder, emb_key, features_root

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DsbuildError(f"-k must be a whole number ≥ 1, not {k!r}", exit_code=2)
    ds = manifest.dataset(dataset)
    if not Path(manifest.catalog).exists():
        raise DsbuildError(f"no catalog at {manifest.catalog} — run `dsbuild build {dataset}` first")
    with Catalog.open_readonly(manifest.catalog) as cat:
        if dataset not in cat.datasets_in_catalog():
            raise DsbuildError(f"dataset '{dataset}' is not in the catalog — run `dsbuild build {dataset}`")
        every = cat.images(dataset)
        pixels = cat.blob_pixel_keys()
        cache, key = _feature_cache(features_root(manifest.catalog), spec_of(ds.dedup))
        if cache.has_legacy:  # rows of a dsbuild before they named their pixels: adopted here for this read only
            cache.adopt(cat.current_pixel_keys(), write=False)
    # An embedding is of the pixels read now (emb_key): one of pixels a re-check no longer reads is no embedding.
    every = every.assign(emb_key=[emb_key(s, pixels.get(s)) if isinstance(s, str) else None for s in every["sha256"]])
    accepted = every["status"].isin(ACCEPTED).to_numpy()
    images = every[accepted & every["emb_key"].map(lambda k: isinstance(k, str) and k in cache).to_numpy()]
    images = images.reset_index(drop=True)
    if images.empty:
        raise DsbuildError(f"dataset '{dataset}' has no embeddings yet — run `dsbuild embed {dataset}` "
                           f"(or build it with dedup.semantic = true)")
    emb = _rows_of(cache, key, tuple(images["emb_key"]))
    exclude = np.zeros(len(images), dtype=bool)
    if id_only:
        exact = every[every["image_id"] == query]
        if exact.empty:
            raise DsbuildError(f"no image {query} in dataset '{dataset}' — a build may have replaced it; go back to the "
                               "queue", exit_code=2)
        row = exact.iloc[0]
    else:
        row = _image_of(every, query, dataset)
    if row is not None and row["status"] not in ACCEPTED:
        removed = row["reason"] == "removed in review"
        raise DsbuildError(_set_aside_message(row, dataset), exit_code=2, in_app=(
            f"image {row['image_id']} was {'removed in review' if removed else 'set aside by a build'} (status "
            f"{row['status']}) — more like this searches the accepted images (ok, duplicate)"
            + ("; undo the remove (u on the page where you removed it, or `dsbuild review`) to search from it"
               if removed else "")))
    if row is not None:
        hit = images.index[images["image_id"] == row["image_id"]]
        if not len(hit):
            raise DsbuildError(f"image {row['image_id']} of dataset '{dataset}' has no embedding yet — run "
                               f"`dsbuild embed {dataset}`", exit_code=2)
        vec = emb[hit[0]]
        exclude[hit[0]] = True  # the image itself; an exact copy of it (another image_id) is listed, as in `neighbours`
    else:
        from dsbuild.verify import analyze_file

        rec = analyze_file(query, verify=ds.verify, dedup=ds.dedup)
        if not rec.ok:
            raise DsbuildError(f"{query} is not an image dsbuild accepts ({rec.reason}: {rec.detail}) — "
                               "give an image file or an image_id of the dataset", exit_code=2)
        try:
            img = load_image(query, ds.verify, analysis_side=embed_decode_side(ds.dedup))  # as the build embeds
        except ValueError as exc:
            raise DsbuildError(f"{query} cannot be decoded ({exc}) — give another image", exit_code=2) from None
        vec = Embedder(spec_of(ds.dedup)).embed([img])[0]
    rows, sims = similar(emb, vec, k, exclude=exclude)
    out = images.iloc[rows].copy()
    out["rank"] = np.arange(1, len(rows) + 1)
    out["similarity"] = np.round(sims.astype(float), 4)
    for col in SIMILAR_COLUMNS:
        if col not in out:
            out[col] = None
    found = pd.DataFrame(out[list(SIMILAR_COLUMNS)]).reset_index(drop=True)
    found.attrs["query_id"] = None if row is None else str(row["image_id"])  # the whole id a start of one resolved to
    return found


_MEMO: dict[str, tuple[Any, Any]] = {}
_MEMO_LOCK = threading.Lock()


def _feature_cache(root: Path, spec: Any) -> tuple[Any, Any]:
    """The :class:`~dsbuild.model.embeddings.FeatureCache` of ``spec`` under ``root`` and the key it was read at.

    A process that asks again (the review app: each "more like this" page) gets the cache it read last while
    the cache's shard files are the same ones (name, size, mtime): reading the shards is most of a call's time
    (~0.24 s per 5,700 rows on 2 cores, linear in the rows). ``embed`` or a build that adds or merges shards
    changes the key, and the next call reads the cache again.
    """
    from dsbuild.model.embeddings import FeatureCache

    folder = Path(root) / spec.key()
    try:
        key = (str(folder), tuple(sorted((p.name, st.st_size, st.st_mtime_ns)
                                         for p in folder.glob("part-*.parquet") for st in [p.stat()])))
    except OSError:  # a shard merged away while listed: read afresh, remember nothing
        return FeatureCache(root, spec), None
    with _MEMO_LOCK:
        hit = _MEMO.get("cache")
        if hit is not None and hit[0] == key:
            return hit[1], key
    cache = FeatureCache(root, spec)
    with _MEMO_LOCK:
        _MEMO["cache"] = (key, cache)
    return cache, key


def _rows_of(cache: Any, key: Any, shas: tuple[str, ...]) -> Any:
    """``cache.get(shas)`` — ``(len(shas), dim)`` float32 — kept for the next call with the same cache and blobs
    (a review decision that removes or brings back an image changes ``shas``, and the rows are gathered again)."""
    memo_key = (key, shas)
    with _MEMO_LOCK:
        hit = _MEMO.get("rows")
        if key is not None and hit is not None and hit[0] == memo_key:
            return hit[1]
    rows = cache.get(list(shas))
    if key is not None:
        with _MEMO_LOCK:
            _MEMO["rows"] = (memo_key, rows)
    return rows


def _image_of(every: Any, query: str, dataset: str) -> Any:
    """The row of ``every`` (all images of the dataset, any status) that ``query`` names, or None for a file
    that is not one of them. ``query``: an image_id, a unique start of one (≥ :data:`MIN_PREFIX` hex
    characters), or the file an accepted image was imported from (a file of an image set aside is searched as
    a file). Raises DsbuildError for an ambiguous start, or for a query that is neither an id nor a file."""
    exact = every[every["image_id"] == query]
    if len(exact):
        return exact.iloc[0]
    path = Path(query)
    if path.exists():
        if path.is_file():
            same = every[(every["origin"] == str(path.resolve())) & every["status"].isin(ACCEPTED)]
            return same.iloc[0] if len(same) else None
        # A folder, a named pipe, a device (or a symlink to one): never opened (a FIFO would wait for a writer).
        what = "a folder" if path.is_dir() else (not_regular(path) or "not a regular file")
        raise DsbuildError(f"{query} is {what} — give one image file or an image_id of dataset '{dataset}'",
                           exit_code=2)
    text = query.strip().lower()
    if len(text) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in text):
        starts = every[every["image_id"].str.startswith(text)]
        if len(starts) == 1:
            return starts.iloc[0]
        if len(starts) > 1:
            starts = starts.sort_values("image_id")
            shown = ", ".join(f"{r.image_id} ({r.label}, {r.status})" for r in starts.head(SHOWN_CANDIDATES).itertuples())
            more = f" and {len(starts) - SHOWN_CANDIDATES} more" if len(starts) > SHOWN_CANDIDATES else ""
            raise DsbuildError(f"'{query}' is the start of {len(starts)} image_ids of dataset '{dataset}': {shown}{more} "
                               "— give more of the id", exit_code=2)
    raise DsbuildError(f"'{query}' is neither an image_id (or the start of one) of dataset '{dataset}' nor an image "
                       f"file — give a path, or an id from `dsbuild query \"SELECT image_id, origin FROM images "
                       f"WHERE dataset = '{dataset}'\"`", exit_code=2)


def _set_aside_message(row: Any, dataset: str) -> str:
    """Why ``similar`` does not search from an image that review removed or a build set aside, and what to do."""
    image_id, status, reason = row["image_id"], row["status"], row["reason"]
    why = f"status {status}" + (f": {reason}" if isinstance(reason, str) and reason else "")
    origin, stored = row["origin"], row["path"]
    file = origin if isinstance(origin, str) and Path(origin).is_file() else stored if isinstance(stored, str) else None
    use_file = f"pass its file: `dsbuild similar {dataset} {file}`" if file else "it has no stored file to pass instead"
    if reason == "removed in review":
        return (f"image {image_id} of dataset '{dataset}' was removed in review (status {status}) — `similar` searches the "
                f"accepted images (ok, duplicate); undo the remove (the row `{image_id},undo,,` in `dsbuild review "
                f"{dataset} --decisions FILE.csv`) or {use_file}")
    return (f"image {image_id} of dataset '{dataset}' is set aside ({why}) — `similar` searches the accepted "
            f"images (ok, duplicate); {use_file}")
