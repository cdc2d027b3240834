"""What a trained network says about images: softmax probabilities and mid-level features.

``get_probs`` gives the ``n × classes`` probabilities of a fastai learner (valid
transforms); ``get_stage_features`` gives spatial grids of the body's mid-level
stages (and the penultimate features) — the views the out-of-fold scorer
(:mod:`dsbuild.model.oof`) fits its heads on. An embedding-based finder would
add its extractor here. torch is imported inside the functions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbuild.errors import DsbuildError
from dsbuild.model.backbone import VIEWS, frozen_body  # noqa: F401  (public here too: the views and their network)


def get_probs(learn: Any, df: Any, *, loader: Any = None) -> Any:
    """Softmax probabilities (``len(df) × n_classes`` numpy float32) for ``df``'s images, valid transforms."""
    import numpy as np

    if len(df) == 0:
        return np.zeros((0, len(learn.dls.vocab)), dtype=np.float32)
    frame = df.assign(path=df["path"].astype(str))
    dl = learn.dls.test_dl(frame, bs=max(64, learn.dls.bs))
    with learn.no_bar(), learn.no_logging():
        probs, _ = learn.get_preds(dl=dl)
    return probs.float().numpy()


def stage_modules(learn: Any, size: int, reductions: tuple[int, ...] = (8, 16)) -> dict[int, str]:
    """Names of the body's last modules at the given spatial reductions (input side / map side).

    Found by one probe forward of a ``size``×``size`` input: for each reduction, the module
    that fires *last* with a 4-D output of that reduction (a container's hook fires after
    its children, so a whole stage wins over its parts). That is the richest map the body
    computes at that resolution before it strides down: ``5`` / ``6`` (layer2 / layer3) of
    a torchvision ResNet body; in a timm EfficientNet the first block of the next stage
    expands its input (1×1 conv + BN + activation) before its strided depthwise conv, so
    ``model.blocks.3.0.bn1`` / ``model.blocks.5.0.bn1`` (240 / 672 channels for lite0).
    Missing reductions are left out.
    """
    import torch

    body = learn.model[0]
    seen: dict[int, str] = {}
    hooks = []
    for name, module in body.named_modules():
        if name:
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, name=name: seen.__setitem__(size // out.shape[-1], name)
                if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 0 else None))
    was_training = body.training
    try:
        body.eval()
        with torch.no_grad():
            body(torch.zeros(1, 3, size, size, device=next(body.parameters()).device))
    finally:
        body.train(was_training)
        for h in hooks:
            h.remove()
    return {r: seen[r] for r in reductions if r in seen}


def get_stage_features(learn: Any, df: Any, *, size: int, reductions: tuple[int, ...] = (8, 16), max_dim: int = 2048,
                       penultimate: bool = False) -> dict[str, Any]:
    """Spatial mid-level features for ``df``'s images (valid transforms, ``size`` px), one array per stage.

    Each stage output at ``reductions`` (see :func:`stage_modules`) is average-pooled to a
    G×G grid, G the largest of 4, 2, 1 with ``channels × G² ≤ max_dim``, and flattened
    (numpy float32, one row per image; efficientnet_lite0 at 64 px: 240 × 2×2 and 672 × 1×1).
    A grid keeps *where* a pattern is, which a global pool throws away (a stroke at the
    top or the bottom makes a 7 or an L).
    ``penultimate=True`` adds ``"penultimate"``: the input of the head's last Linear.
    Keys: ``"r8"``, ``"r16"``, ... and ``"penultimate"``.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    names = stage_modules(learn, size, reductions)
    modules = dict(learn.model[0].named_modules())
    chunks: dict[str, list[Any]] = {f"r{r}": [] for r in names}
    hooks = []

    def grab(key: str):
        def hook(mod: Any, inp: Any, out: Any) -> None:
            ch = out.shape[1]
            g = next((g for g in (4, 2) if ch * g * g <= max_dim and min(out.shape[-2:]) >= g), 1)
            chunks[key].append(F.adaptive_avg_pool2d(out.detach().float(), g).flatten(1).cpu())
        return hook

    for r, name in names.items():
        hooks.append(modules[name].register_forward_hook(grab(f"r{r}")))
    if penultimate:
        last = [m for m in learn.model[1].modules() if isinstance(m, torch.nn.Linear)][-1]
        chunks["penultimate"] = []
        hooks.append(last.register_forward_hook(lambda mod, inp, out: chunks["penultimate"].append(inp[0].detach().float().cpu())))
    try:
        get_probs(learn, df)
    finally:
        for h in hooks:
            h.remove()
    return {k: (torch.cat(v).numpy() if v else np.zeros((0, 0), dtype=np.float32)) for k, v in chunks.items()}


# --------------------------------------------------------------------------- frozen backbone features, cached per blob
#
# One forward pass of a frozen ImageNet backbone per image gives every *view* the model
# stage needs; the rows are cached per image × :class:`FeatureSpec` under the key the
# embedding cache uses (:func:`dsbuild.model.embeddings.emb_key`: the blob's sha256 and the
# pixels verification reads from it, so a decoder change that reads other pixels from the same
# bytes computes the image's features again), and ``train``, ``mislabels`` and ``retrain``
# share one pass — the build's own when the spec is its embedding input (``resize = "squash"`` at
# ``[dedup] embed_size``: :meth:`dsbuild.model.embeddings.Embedder.embed_views`, :func:`write_rows`). Public API: :class:`FeatureSpec`, :func:`features`, :func:`feature_keys`,
# :func:`adopt_blob_keyed`, :func:`view_matrix`, :func:`native_size`; :class:`FrozenBody` and
# :func:`to_input` are the network and the preprocessing (shared with saved head models).

#: Named feature views a head can use: name → the VIEWS concatenated (in this order).
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "stages": ("s8_g2", "s16_g2", "s32_g1"),
    "pool": ("pool",),
    "stages+pool": ("pool", "s8_g2", "s16_g2", "s32_g1"),
}
FEATURE_FORMAT = "dsbuild-features/1"
RESIZE_MODES = ("crop", "squash")


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that changes an image's features, and so the cache key.

    arch: a dsbuild arch name (:func:`dsbuild.model.weights.resolve_arch`; the offline
        ``efficientnet_lite0/1/2`` run as timm ``tf_efficientnet_lite0/1/2``).
    size: square input side in px (:func:`to_input`).
    weights: a local weights file (``model.weights``) or None for the arch's pretrained weights.
    resize: ``"crop"`` — the image's short side resized to ``size`` (bicubic; tiny images are upscaled), then
        centre-cropped; ``"squash"`` — the whole picture resized to ``size`` × ``size`` (bilinear, aspect not kept):
        the build's embedding input (:meth:`dsbuild.model.embeddings.Embedder.to_input`), so the build's one pass
        per image also gives these rows (:func:`write_rows`) and ``train`` computes none for the images it embedded.
    """

    arch: str = "efficientnet_lite0"
    size: int = 224
    weights: str | None = None
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")

    def key(self) -> str:
        """Stable id and cache folder name, e.g. ``efficientnet_lite0-224-v1`` (``crop``: the name rows written before
        ``resize`` existed have) or ``efficientnet_lite0-160-squash-views-v1``."""
        import hashlib
        import re

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.arch.strip())
        tail = f"-w{hashlib.sha256(str(self.weights).encode()).hexdigest()[:10]}" if self.weights else ""
        mode = "" if self.resize == "crop" else f"-{self.resize}-views"  # not the embedding cache's folder name
        return f"{name}-{self.size}{mode}{tail}-v1"


def native_size(arch: str) -> int:
    """The input side (px) the backbone's ImageNet weights were trained at: timm ``pretrained_cfg``
    ``input_size`` (224 lite0, 240 lite1, 260 lite2), 224 for torchvision models.

    The default when ``model.size`` is unset: every image is resized to it, tiny images
    (CIFAR 32 px, digits 8–64 px) upscaled — ImageNet filters look for objects at ImageNet
    scale. Measured (issue 16, CIFAR linear probe with efficientnet_lite0): 0.71 at 128 px,
    0.79 at 224 px.
    """
    from dsbuild.model.weights import resolve_arch

    backbone = resolve_arch(arch)
    if backbone.library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(backbone.name)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        if size:
            return int(size[-1])
    return 224


def to_input(image: Any, size: int, resize: str = "crop") -> Any:
    """One RGB PIL image → ``size``×``size``×3 uint8 numpy array: ``crop``: short side to ``size`` (bicubic), centre
    crop; ``squash``: the whole picture to ``size`` × ``size`` as the build's embedding sees it
    (:func:`dsbuild.model.embeddings.squash_input`)."""
    import numpy as np
    from PIL import Image

    if resize == "squash":
        from dsbuild.model.embeddings import squash_input

        return squash_input(image, size)

    w, h = image.size
    if (w, h) != (size, size):
        s = size / min(w, h)
        image = image.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _cache_dir(root: Path, spec: FeatureSpec) -> Path:
    return Path(root) / spec.key()


def _read_cache(folder: Path, shards: Sequence[Path] | None = None) -> dict[str, dict[str, Any]]:
    """key → view → float16 row, from every complete shard in ``folder`` (or ``shards``; a torn shard is skipped)."""
    import numpy as np

    rows: dict[str, dict[str, Any]] = {}
    for shard in sorted(folder.glob("part-*.npz")) if shards is None else shards:
        try:
            with np.load(shard, allow_pickle=False) as z:
                keys = [k for k in z.files if k != "sha256"]
                data = {k: z[k] for k in keys}
                for i, sha in enumerate(z["sha256"]):
                    rows[str(sha)] = {k: data[k][i] for k in keys}
        except (OSError, ValueError, KeyError):
            continue
    return rows


def _write_shard(folder: Path, shas: list[str], views: dict[str, Any]) -> None:
    """One shard, written to a temporary name and renamed (atomic: readers never see half a shard)."""
    import os
    import secrets

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "spec.json"
    if not meta.exists():
        tmp_meta = folder / f".spec-{secrets.token_hex(4)}.tmp"
        tmp_meta.write_text(json.dumps({"format": FEATURE_FORMAT, "views": list(views)}, indent=1) + "\n")
        os.replace(tmp_meta, meta)
    name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
    tmp = folder / f".{name}.tmp.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, sha256=np.array(shas), **{k: np.asarray(v, dtype=np.float16) for k, v in views.items()})
    os.replace(tmp, folder / f"{name}.npz")


def _shard_keys(shard: Path) -> list[str]:
    """The keys of one shard (its ``sha256`` array only; a torn shard has none)."""
    import numpy as np

    try:
        with np.load(shard, allow_pickle=False) as z:
            return [str(k) for k in z["sha256"]]
    except (OSError, ValueError, KeyError):
        return []


def adopt_blob_keyed(root: Path, current_pixels: Any) -> int:
    """Once, in every feature cache under ``root``: the rows a dsbuild before
    :func:`~dsbuild.model.embeddings.emb_key` keyed by their blob alone take the key of the pixels they were
    computed from, where ``current_pixels()`` (:meth:`dsbuild.catalog.Catalog.current_pixel_keys`) knows it
    (:func:`dsbuild.model.embeddings.adopted_rows`, as the embedding cache does); the others are dropped, computed
    again when needed. Written as one new shard per cache, then the old shards are deleted (a crash in between
    adopts again). Only the shards' keys are read unless some are blob-keyed; ``current_pixels`` is called only
    then. Returns how many rows were adopted."""
    import numpy as np

    from dsbuild.model.embeddings import adopted_rows, is_blob_key

    current = None
    n = 0
    for folder in sorted(p for p in Path(root).glob("*") if p.is_dir()) if Path(root).is_dir() else []:
        keys = {shard: _shard_keys(shard) for shard in sorted(folder.glob("part-*.npz"))}
        old = [shard for shard, k in keys.items() if any(is_blob_key(key) for key in k)]
        if not old:
            continue
        current = current_pixels() if current is None else current
        have = {key for shard, k in keys.items() if shard not in old for key in k}
        legacy = {key: row for key, row in _read_cache(folder, old).items() if is_blob_key(key)}
        adopted = adopted_rows(legacy, current, have)
        if adopted:
            rows = list(adopted.values())
            _write_shard(folder, list(adopted), {v: np.stack([r[v] for r in rows]) for v in rows[0]})
        for shard in old:
            shard.unlink(missing_ok=True)
        n += len(adopted)
    return n


def write_rows(cache_dir: Path, spec: FeatureSpec, keys: Sequence[str], views: dict[str, Any]) -> None:
    """Store rows computed elsewhere (the build's embedding pass: :meth:`dsbuild.model.embeddings.Embedder.embed_views`)
    in ``spec``'s cache under ``cache_dir``: one shard, as :func:`features` writes them. The caller vouches that
    they are what :func:`features` would compute for those keys."""
    if len(keys):
        _write_shard(_cache_dir(cache_dir, spec), [str(k) for k in keys], views)


def feature_keys(frame: Any) -> list[str] | None:
    """The cache keys of ``frame``'s images (:func:`dsbuild.model.embeddings.emb_keys`: its ``sha256`` and, from the
    catalog, ``pixel_sha``) when every row has its blob's sha256; else None (:func:`features` hashes the files)."""
    from dsbuild.model.embeddings import emb_keys

    if "sha256" not in frame.columns or not frame["sha256"].notna().all():
        return None
    return [str(k) for k in emb_keys(frame)]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the blob key of dsbuild's store)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def features(paths: Sequence[str | Path], spec: FeatureSpec, cache_dir: Path | None, *,
             keys: Sequence[str] | None = None, progress: Any = None, batch_size: int = 32,
             chunk: int = 256) -> dict[str, Any]:
    """Frozen-backbone features of the images ``paths`` (one row each, input order): view → ``n × width`` float32.

    ``cache_dir``: the feature cache root (``<catalog folder>/features``); rows are kept per
    key under ``cache_dir/<spec.key()>/part-*.npz`` (float16; the keys in the ``sha256``
    array + one array per view, written atomically) and only images not cached yet are decoded
    and run through the backbone. ``None`` → no cache. ``keys``: the images' cache keys when
    known (:func:`feature_keys`: blob and pixels, from the catalog); otherwise the files are
    hashed (``<sha256>:bytes``). Images are opened with :func:`dsbuild.verify.decode.load_rgb`
    (verified images only reach here). Raises DsbuildError when an image cannot be read.
    Views: :data:`VIEWS`.
    """
    import numpy as np
    import torch

    from dsbuild.model.embeddings import emb_key
    from dsbuild.progress import silent

    paths = [str(p) for p in paths]
    keys = [str(k) for k in keys] if keys is not None else [emb_key(sha256_file(p), None) for p in paths]
    folder = _cache_dir(cache_dir, spec) if cache_dir is not None else None
    rows = _read_cache(folder) if folder is not None and folder.is_dir() else {}
    todo: dict[str, str] = {}
    for key, path in zip(keys, paths):
        if key not in rows and key not in todo:
            todo[key] = path
    if todo:
        from dsbuild.formats import Refused
        from dsbuild.verify.decode import load_rgb

        body, _ = frozen_body(spec.arch, spec.size, weights=spec.weights)
        order = list(todo)
        with silent(progress).stage(f"features ({spec.key()})", len(order)) as stage:
            for start in range(0, len(order), chunk):
                part = order[start:start + chunk]
                try:
                    images = [to_input(load_rgb(todo[k]), spec.size, spec.resize) for k in part]
                except (OSError, Refused) as exc:
                    raise DsbuildError(f"cannot read an image for features ({exc}) — run `dsbuild build` again to "
                                       "re-verify the images") from None
                out: dict[str, list[Any]] = {}
                with torch.inference_mode():
                    for b in range(0, len(images), batch_size):
                        x = torch.from_numpy(np.stack(images[b:b + batch_size])).permute(0, 3, 1, 2).float()
                        for view, value in body(x).items():
                            out.setdefault(view, []).append(value.numpy())
                        stage.advance(min(batch_size, len(images) - b))
                views = {k: np.concatenate(v) for k, v in out.items()}
                if folder is not None:
                    _write_shard(folder, part, views)
                for i, k in enumerate(part):
                    rows[k] = {v: views[v][i].astype(np.float16) for v in views}
    names = list(rows[keys[0]]) if keys else list(VIEWS)
    return {v: np.stack([rows[k][v] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32)
            for v in names}


def view_matrix(feats: dict[str, Any], view_set: str) -> Any:
    """The columns of :data:`VIEW_SETS` ``[view_set]`` concatenated (``n × d`` float32); views the backbone lacks are skipped."""
    import numpy as np

    parts = [feats[v] for v in VIEW_SETS[view_set] if v in feats]
    if not parts:
        raise DsbuildError(f"feature view {view_set!r} is not available for this backbone")
    return np.concatenate(parts, axis=1)
