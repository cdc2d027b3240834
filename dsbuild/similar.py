"""``dsbuild similar``: the images of a dataset most like one image, by embedding cosine.

The query is an image of the dataset (its ``image_id``, or the path it was imported from)
or any image file, verified like a build's input (magic-byte sniffing, the allow-list,
size and pixel limits: :func:`dsbuild.verify.analyze_file`) and embedded with the dataset's
backbone. The dataset's embeddings come from the per-blob cache the build (``dedup.semantic``)
or ``dsbuild embed`` filled (:mod:`dsbuild.model.features`); the search is exact
(:func:`dsbuild.dedup.neardup.similar`). The review app's "more like this" calls
:func:`similar_images` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsbuild.catalog import Catalog
from dsbuild.errors import DsbuildError
from dsbuild.manifest import Manifest

SIMILAR_COLUMNS = ("rank", "image_id", "similarity", "label", "split", "status", "origin", "path")


def similar_images(manifest: Manifest, dataset: str, query: str, *, k: int = 20) -> Any:
    """The ``k`` accepted images of ``dataset`` most similar to ``query``: a DataFrame of :data:`SIMILAR_COLUMNS`.

    ``similarity`` is the cosine of the L2-normalised embeddings (1 = same features), best
    first; the query image itself is left out. Raises DsbuildError (with what to do) when
    the dataset is not built, has no embeddings yet, or ``query`` is neither one of its
    images nor an acceptable image file.
    """
    import numpy as np
    import pandas as pd

    from dsbuild.dedup.neardup import similar
    from dsbuild.dedup.signals import load_image, spec_of
    from dsbuild.model.embeddings import Embedder, FeatureCache, features_root

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DsbuildError(f"-k must be a whole number ≥ 1, not {k!r}", exit_code=2)
    ds = manifest.dataset(dataset)
    if not Path(manifest.catalog).exists():
        raise DsbuildError(f"no catalog at {manifest.catalog} — run `dsbuild build {dataset}` first")
    with Catalog.open_readonly(manifest.catalog) as cat:
        if dataset not in cat.datasets_in_catalog():
            raise DsbuildError(f"dataset '{dataset}' is not in the catalog — run `dsbuild build {dataset}`")
        images = cat.images(dataset, statuses=("ok", "duplicate"))
    cache = FeatureCache(features_root(manifest.catalog), spec_of(ds.dedup))
    images = images[images["sha256"].isin([s for s in images["sha256"] if s in cache])].reset_index(drop=True)
    if images.empty:
        raise DsbuildError(f"dataset '{dataset}' has no embeddings yet — run `dsbuild embed {dataset}` "
                           f"(or build it with dedup.semantic = true)")
    emb = cache.get(list(images["sha256"]))
    exclude = np.zeros(len(images), dtype=bool)
    hit = images.index[images["image_id"] == query]
    if not len(hit) and Path(query).exists():
        hit = images.index[images["origin"] == str(Path(query).resolve())]
    if len(hit):
        vec = emb[hit[0]]
        exclude[images["sha256"] == images.loc[hit[0], "sha256"]] = True
    elif Path(query).is_file():
        from dsbuild.verify import analyze_file

        rec = analyze_file(query, verify=ds.verify, dedup=ds.dedup)
        if not rec.ok:
            raise DsbuildError(f"{query} is not an image dsbuild accepts ({rec.reason}: {rec.detail}) — "
                               "give an image file or an image_id of the dataset", exit_code=2)
        try:
            img = load_image(query, ds.verify)
        except ValueError as exc:
            raise DsbuildError(f"{query} cannot be decoded ({exc}) — give another image", exit_code=2) from None
        vec = Embedder(spec_of(ds.dedup)).embed([img])[0]
    else:
        raise DsbuildError(f"'{query}' is neither an image_id of dataset '{dataset}' nor an image file — give a path, "
                           f"or an id from `dsbuild query \"SELECT image_id, origin FROM images WHERE dataset = '{dataset}'\"`",
                           exit_code=2)
    rows, sims = similar(emb, vec, k, exclude=exclude)
    out = images.iloc[rows].copy()
    out["rank"] = np.arange(1, len(rows) + 1)
    out["similarity"] = np.round(sims.astype(float), 4)
    for col in SIMILAR_COLUMNS:
        if col not in out:
            out[col] = None
    return pd.DataFrame(out[list(SIMILAR_COLUMNS)]).reset_index(drop=True)
