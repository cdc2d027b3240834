"""The near-duplicate signals of a dataset's images: phash views, effective side, embedding — computed once per blob.

:func:`dataset_signals` takes a dataset's rows (:meth:`dsbuild.catalog.Catalog.dataset_items`:
``sha256``, ``path`` in the store, ``phash_views``, ``eff_side``), decodes from the store
only the blobs that miss a signal — through :func:`dsbuild.verify.decode.decode`, the build's
sniffing, allow-list and pixel limits — and returns every row's signals with the new pixel
signals for the catalog to keep. Embeddings go to the per-blob
:class:`dsbuild.model.embeddings.FeatureCache` (computed once per blob and backbone), so a
rebuild decodes nothing new. :func:`outlier_scores` is cleanlab's OutOfDistribution on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsbuild.dedup.neardup import VIEW_NAMES, parse_views, pixel_signals, thumbnail
from dsbuild.dedup.settings import DedupSettings
from dsbuild.model.embeddings import emb_keys  # noqa: F401  (public here too: the embedding stage's keys)
from dsbuild.verify.settings import VerifySettings


@dataclass(frozen=True)
class Signals:
    """Per-row signals of a dataset (row order of the items frame given).

    views: (n, 7) uint64 (zero rows where unknown); eff_side: (n,) px (NaN where unknown);
    emb: (n, dim) float32 unit rows or None (``semantic = false``); has_emb: (n,) bool;
    new_blobs: DataFrame ``sha256, phash_views, eff_side`` of the blobs computed now;
    computed: blobs decoded now; failed: ``{sha256: why}`` of stored blobs that did not decode.
    """

    views: np.ndarray
    eff_side: np.ndarray
    emb: np.ndarray | None
    has_emb: np.ndarray
    new_blobs: Any
    computed: int
    failed: dict[str, str]


def spec_of(dedup: DedupSettings):
    """The :class:`~dsbuild.model.embeddings.FeatureSpec` of a dataset's embeddings."""
    from dsbuild.model.embeddings import FeatureSpec

    return FeatureSpec(arch=dedup.embed_arch, size=dedup.embed_size)


VIEWS_DECODE_FACTOR = 2
"""The embedding pass decodes a JPEG reduced by DCT scaling (draft) to a short side of at least this × the embedding
size (320 px at 160), not to the hash's :data:`~dsbuild.verify.decode.ANALYSIS_SIDE` (128): the training-feature views
of such a decode are a full decode's (what ``train`` and ``predict`` read, :func:`dsbuild.verify.decode.load_rgb`) to
cosine ≥ 0.9988 (min; p50 1.0000), where the 128 px decode gave 0.9768 (min; p1 0.9910) — 108 photo JPEGs, short
side 151–5320 px, median 601 (bench/onepass.py ``--draft``). So the build's one forward pass writes the training rows
of large JPEGs too, and ``train`` computes none for them (before: a full decode, 14.3 ms CPU there, and a forward pass
each). The phash views and effective side still come from the hash's 128 px decode (on a 320 px one they cost 34.8
instead of 11.6 CPU ms per 600–1100 px photo), so a reduced JPEG whose pixel signals are missing is decoded twice
(+3.9 CPU ms); the embedding is the 320 px decode's."""


def embed_decode_side(dedup: DedupSettings) -> int:
    """The short side (px) the embedding pass decodes JPEGs to at least: :data:`VIEWS_DECODE_FACTOR` × the embedding
    size, never below the hash's :data:`~dsbuild.verify.decode.ANALYSIS_SIDE`."""
    from dsbuild.verify.decode import ANALYSIS_SIDE

    return max(ANALYSIS_SIDE, VIEWS_DECODE_FACTOR * int(dedup.embed_size))


def load_image(path: str, verify: VerifySettings, *, full: list[bool] | None = None,
               analysis_side: int | None = None) -> Any:
    """Decode a stored image under the dataset's verify settings; ValueError (with the reason) when it cannot be.
    ``analysis_side``: a JPEG is decoded reduced (draft) to at least this short side (None: the hash's
    :data:`~dsbuild.verify.decode.ANALYSIS_SIDE`). ``full``: a list the call appends True to when the image was decoded
    at its full size (not reduced by JPEG draft decoding), else False."""
    from dsbuild.verify.decode import ANALYSIS_SIDE, Rejected, decode

    try:
        size = Path(path).stat().st_size
        if size > verify.max_bytes:
            raise ValueError(f"too large: {size} bytes")
        with open(path, "rb") as fh:
            data = fh.read(verify.max_bytes + 1)
        img, info = decode(data, verify, analysis_side=ANALYSIS_SIDE if analysis_side is None else analysis_side)
        if full is not None:
            side = (info.get("width"), info.get("height"))
            full.append(None not in side and sorted(img.size) == sorted(side))
    except Rejected as rej:
        raise ValueError(f"{rej.reason}: {rej.detail}") from None
    except OSError as exc:
        raise ValueError(f"unreadable: {exc.strerror or exc}") from None
    return img


def open_cache(features_dir: Path, dedup: DedupSettings, current_pixels: Any = None, *, write: bool = True):
    """The embedding cache of ``dedup``'s spec under ``features_dir``, its rows written before they named their
    pixels adopted (:meth:`~dsbuild.model.embeddings.FeatureCache.adopt`) when ``current_pixels()`` (blob → the
    ``pixel_sha`` its signals were computed from: :meth:`dsbuild.catalog.Catalog.current_pixel_keys`) is given."""
    from dsbuild.model.embeddings import FeatureCache

    cache = FeatureCache(features_dir, spec_of(dedup))
    if cache.has_legacy and current_pixels is not None:
        cache.adopt(current_pixels(), write=write)
    return cache


FEATURE_ROWS_SHARD = 2048
"""Training rows the build's embedding pass keeps in memory before writing them as one shard (``feature_rows`` of
:func:`dataset_signals`): few files for ``train`` to open (~9 MB of float16 rows at lite0's widths). An interrupted
build loses at most these rows — ``train`` computes them, nothing is wrong."""


def dataset_signals(items: Any, rows: np.ndarray, dedup: DedupSettings, verify: VerifySettings, *,
                    features_dir: Path, embed: bool | None = None, threads: int | None = None,
                    progress: Any = None, store: Any = None, current_pixels: Any = None,
                    feature_rows: Any = None) -> Signals:
    """Signals of ``items`` rows ``rows`` (positions; others stay empty), computing what is missing.

    Pixel signals are computed for rows whose blob has none stored; embeddings for blobs
    missing from the cache when ``embed`` (default ``dedup.semantic``). Embeddings already
    cached are returned either way (``emb`` is None only when there is no cache at all).
    ``progress(n)`` is called as blobs are done. ``store(frame)`` (``sha256, phash_views, eff_side``) is
    given the pixel signals computed with each chunk of embeddings as it is saved, so that an interrupted
    run keeps both (the returned ``new_blobs`` still holds them all). Embeddings are cached by blob *and* pixels
    (:func:`emb_keys`): a blob whose pixels a re-check read otherwise is embedded again. ``current_pixels``: see
    :func:`open_cache`. ``feature_rows``: a :class:`dsbuild.model.features.FeatureSpec` (``squash`` at the embedding's
    backbone and size: :func:`dsbuild.model.train.build_feature_spec`) whose training rows the same forward passes
    write to its cache under ``features_dir`` — for every image: a large JPEG is decoded reduced to at least
    :func:`embed_decode_side` for the pass (:data:`VIEWS_DECODE_FACTOR`). Raises DsbuildError when the embedding backbone
    cannot be loaded.
    """
    embed = dedup.semantic if embed is None else embed
    import pandas as pd

    n = len(items)
    shas = items["sha256"].to_numpy(dtype=object)
    keys = emb_keys(items)
    paths = items["path"].to_numpy(dtype=object)
    stored_views = items["phash_views"].to_numpy(dtype=object)
    stored_side = items["eff_side"].to_numpy(dtype=np.float64, na_value=np.nan)
    rows = [int(r) for r in rows if isinstance(shas[r], str) and isinstance(paths[r], str)]
    need_pixels = {shas[r]: paths[r] for r in rows if not isinstance(stored_views[r], str) or not np.isfinite(stored_side[r])}
    new: dict[str, tuple[str, float]] = {}
    failed: dict[str, str] = {}

    def on_image(key: str, img: Any) -> None:
        sha = key.split(":", 1)[0]
        if sha in need_pixels and sha not in new:
            new[sha] = pixel_signals(img)

    from dsbuild.model.embeddings import embed_blobs

    cache = open_cache(features_dir, dedup, current_pixels)
    stored: set[str] = set()

    def on_chunk() -> None:
        fresh = [(sha, *new[sha]) for sha in new if sha not in stored]
        if store is not None and fresh:
            store(pd.DataFrame(fresh, columns=["sha256", "phash_views", "eff_side"]))
        stored.update(sha for sha, *_ in fresh)

    if embed:
        on_views = None
        pending: list[tuple[list[str], dict[str, Any]]] = []

        def flush_rows() -> None:
            from dsbuild.model.features import write_rows

            if pending:
                write_rows(features_dir, feature_rows, [k for done, _ in pending for k in done],
                           {v: np.concatenate([views[v] for _, views in pending]) for v in pending[0][1]})
                pending.clear()

        if feature_rows is not None:
            def on_views(done: list[str], views: dict[str, Any]) -> None:
                pending.append((list(done), views))
                if sum(len(d) for d, _ in pending) >= FEATURE_ROWS_SHARD:
                    flush_rows()

        at_least = embed_decode_side(dedup)

        def embed_input(path: str, key: str) -> Any:
            """The image the pass embeds (a large JPEG decoded to ≥ ``at_least``), its pixel signals computed first
            from the hash's decode when they are missing (:data:`VIEWS_DECODE_FACTOR`)."""
            if key.split(":", 1)[0] in need_pixels:
                whole: list[bool] = []
                img = load_image(path, verify, full=whole)
                on_image(key, img)
                if whole[0]:
                    return img
            return load_image(path, verify, analysis_side=at_least)

        todo = [(keys[r], (lambda p=paths[r], k=keys[r]: embed_input(p, k))) for r in rows]
        failed.update({key.split(":", 1)[0]: why for key, why in embed_blobs(
            todo, cache, threads=threads, progress=progress, on_chunk=on_chunk, on_views=on_views).items()})
        flush_rows()
    for sha, path in need_pixels.items():
        if sha in new or sha in failed:
            continue
        try:
            new[sha] = pixel_signals(load_image(path, verify))
        except ValueError as exc:
            failed[sha] = str(exc)
        if progress is not None:
            progress(1)
    if not embed and not len(cache):
        cache = None
    views_text = stored_views.copy()
    side = stored_side.copy()
    for r in rows:
        if shas[r] in new:
            views_text[r], side[r] = new[shas[r]]
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    views = parse_views(np.where(keep, views_text, None))
    side = np.where(keep, side, np.nan)
    emb, has = None, np.zeros(n, dtype=bool)
    if cache is not None:
        has[rows] = [keys[r] in cache for r in rows]
        dim = next((len(cache.get([keys[r]])[0]) for r in rows if has[r]), 0)
        emb = np.zeros((n, dim), dtype=np.float32)
        idx = np.flatnonzero(has)
        if len(idx):
            emb[idx] = cache.get(list(keys[idx]))
    frame = pd.DataFrame([(s, v, e) for s, (v, e) in new.items()], columns=["sha256", "phash_views", "eff_side"])
    return Signals(views=views, eff_side=side, emb=emb, has_emb=has, new_blobs=frame,
                   computed=len(set(new) | (set(failed))), failed=failed)


def thumb_loader(items: Any, verify: VerifySettings):
    """``thumb(row)`` → the row's 64 × 64 grey thumbnail, decoded from the store on first use (None if it cannot be)."""
    paths = items["path"].to_numpy(dtype=object)
    seen: dict[int, Any] = {}

    def thumb(r: int):
        if r not in seen:
            try:
                seen[r] = thumbnail(load_image(paths[r], verify)) if isinstance(paths[r], str) else None
            except ValueError:
                seen[r] = None
        return seen[r]

    return thumb


OUTLIER_MIN_CLASS = 20
"""The fewest images of a class whose outliers are judged against its own distances (:func:`outlier_scores`);
a smaller class is judged with the whole dataset (quartiles of a handful of images say little)."""

OUTLIER_THRESHOLD = 0.37037
"""cleanlab Datalab's default for feature-based outliers: an image is flagged when its mean distance to its
k nearest neighbours exceeds Q3 + (1 / 0.37037 − 1) × IQR of those distances (``OutlierIssueManager``)."""


def outlier_scores(emb: np.ndarray, k: int = 60, *, neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                   labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's ``outlier_score`` (n,) in (0, 1], low = more unusual, and Datalab's outlier flag (n,) bool.

    ``emb``: (n, dim) unit rows (near-duplicate copies removed first: an image with copies has
    close neighbours and looks normal). The score is ``exp(−d)`` with ``d`` the mean cosine
    distance to the ``min(k, n − 1)`` nearest neighbours (``cleanlab.outlier.OutOfDistribution``,
    Kuan & Mueller 2022, given the neighbours of :class:`~dsbuild.dedup.neardup.NeighbourGraph` — faiss,
    not its own scikit-learn search: 100,000 images in ~65 s, not 464 s, bench/knn_scale.py); the flag is Datalab's IQR rule (:data:`OUTLIER_THRESHOLD`). Needs n ≥ 3
    (else all NaN / False). Blind spot (measured): low-information images (digits) among photos
    sit in the dense middle of ImageNet feature space and score as normal. ``neighbours``: each row's
    ``min(k, n − 1)`` nearest other rows already found, ``(cosine distances, row indices)``
    (:meth:`dsbuild.dedup.neardup.KnnSearch.within`: the build's near-duplicate search, reused — at 100,000
    images that saves an HNSW build and a search, bench/knn_scale.py); searched here when None.

    ``labels`` (n,): each row's class. Then the IQR rule is applied within each class of at least
    :data:`OUTLIER_MIN_CLASS` images (the smaller ones: over the whole dataset): a class's images are compared with
    its own, so a class more varied than the rest (25 photos beside three digit classes: all 25 were flagged, fresh-user
    trial 8) is not an outlier as a whole, while a picture that fits its class no better than the others do still is.
    The score itself is the same either way (one graph over every class: an image unlike anything scores low).
    """
    import warnings

    n = len(emb)
    if n < 3:
        return np.full(n, np.nan), np.zeros(n, dtype=bool)
    from cleanlab.outlier import OutOfDistribution

    from dsbuild.dedup.neardup import NeighbourGraph

    graph = NeighbourGraph(emb, k, neighbours=neighbours)  # faiss, not cleanlab's brute-force search (bench/knn_scale.py)
    ood = OutOfDistribution({"k": graph.n_neighbors, "knn": graph})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = np.asarray(ood.fit_score(features=np.ascontiguousarray(emb, dtype=np.float32), verbose=False),
                            dtype=np.float64)
    d = -np.log(np.clip(scores, 1e-12, None))
    flag = _iqr_flag(d)
    if labels is not None:
        labels = np.asarray(labels)
        for label in np.unique(labels):
            members = labels == label
            if members.sum() >= OUTLIER_MIN_CLASS:
                flag[members] = _iqr_flag(d[members])
    return scores, flag


def _iqr_flag(d: np.ndarray) -> np.ndarray:
    """Datalab's rule on distances ``d``: above Q3 + (1 / :data:`OUTLIER_THRESHOLD` − 1) × IQR."""
    q1, q3 = np.percentile(d, [25, 75])
    return d > q3 + (1 / OUTLIER_THRESHOLD - 1) * (q3 - q1)


__all__ = ["Signals", "VIEW_NAMES", "dataset_signals", "emb_keys", "load_image", "open_cache", "outlier_scores",
           "spec_of", "thumb_loader"]
