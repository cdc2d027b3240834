"""Train an image classifier from a table of images and save it safely.

The input is a pandas DataFrame with one row per image and the columns ``image_id``,
``path`` (a readable file), ``label`` and ``split`` (``train``/``valid``/``test``); the
catalog layer (:mod:`dsbuild.cycle`) builds it and records the returned
:class:`TrainResult` as a run. Two recipes (``ModelSettings.finetune``):

* default — :func:`train_head`: a logistic-regression head on the frozen ImageNet
  backbone's features, cached per image (:mod:`dsbuild.model.head`, :mod:`dsbuild.model.features`);
* ``finetune = true`` — :func:`finetune`, the fastai book's chapter-2 recipe:
  ``RandomResizedCrop(size, min_scale=0.5)`` + ``aug_transforms()``, a pretrained body with
  fastai's head, ``fine_tune`` (one frozen epoch, then the whole network), normalised with
  the backbone's own mean/std.

Saved model (``out_dir``):

* ``model.pth`` — the network's ``state_dict`` (tensors only);
* ``model.json`` — kind (``head``/``finetune``), arch, classes, image size, normalisation,
  settings: enough to rebuild the network without pretrained weights and load ``model.pth``
  with ``torch.load(weights_only=True)``. :func:`dsbuild.model.predict.predict` reads only
  these two files, so a model folder from elsewhere cannot run code on load;
* ``export.pkl`` (``finetune`` only) — fastai's ``learn.export()`` for users who want
  ``load_learner`` (a pickle: only load your own).

torch / fastai / timm are imported inside functions: ``import dsbuild.model.train`` is cheap.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dsbuild.model.weights  # noqa: F401  (importing it silences timm/fastai deprecation noise)
from dsbuild.errors import DsbuildError
from dsbuild.model.features import get_probs
from dsbuild.model.settings import ModelSettings
from dsbuild.progress import silent

MODEL_FORMAT = "dsbuild-model/1"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What one training produced.

    classes: class names, the order of every per-class list and matrix.
    epochs: one dict per epoch: ``epoch`` (1-based), ``phase`` (``frozen``/``unfrozen``),
        ``train_loss``, ``valid_loss``, ``error_rate``, ``accuracy``, ``seconds``.
    error_rate / accuracy: on the valid split after the last epoch.
    confusion: ``[actual][predicted]`` counts on the valid split (len(classes)² ints).
    per_class_accuracy: class → recall on the valid split (``None`` for a class with no valid image).
    n_train / n_valid: images trained on / validated on.
    duration_s: wall time of the whole call, including saving.
    model_path: ``out_dir/model.pth``; ``model.json`` and ``export.pkl`` lie beside it.
    params: settings actually used (``lr`` filled in when lr_find chose it, plus ``device``).
    valid_image_ids / valid_probs: the valid images in order and their softmax
        probabilities from the in-memory model (``n_valid × len(classes)`` numpy array).
    feature_s: seconds spent on the image features of a head (``train_head``: the backbone over the images not
        cached yet, the cache read for the rest), not in its epoch row's ``seconds``; also
        ``params["feature_seconds"]``.
        ``None`` for a fine-tune (it reads the images in its epochs).
    learned: :class:`dsbuild.model.trust.LearnCheck` of the valid predictions — did the model
        learn the labels (valid accuracy significantly above always answering the commonest
        label)? ``None`` when there is no valid image.
    """

    classes: tuple[str, ...]
    epochs: list[dict[str, Any]]
    error_rate: float
    accuracy: float
    confusion: list[list[int]]
    per_class_accuracy: dict[str, float | None]
    n_train: int
    n_valid: int
    duration_s: float
    model_path: Path
    params: dict[str, Any]
    valid_image_ids: tuple[str, ...] = ()
    valid_probs: Any = field(default=None, repr=False, compare=False)
    learned: Any = field(default=None, compare=False)
    feature_s: float | None = None


# --------------------------------------------------------------------------- images


class ImageLoader:
    """Path → RGB PIL image, EXIF orientation applied, first frame, downsized for ``size``.

    Large photos are reduced (keeping aspect) so their short side is at most ``2 × size``:
    RandomResizedCrop then works on a small image, which keeps CPU epochs cheap and changes
    nothing visible at the network's resolution. Training and :func:`predict` share this.
    ``cache=True`` keeps decoded images in memory, up to ``cache_bytes`` (default 1 GiB;
    training reads each image every epoch and, for mislabel scores, in every fold).
    """

    def __init__(self, size: int, *, cache: bool = False, cache_bytes: int = 1 << 30, verify: Any = None) -> None:
        self.size = size
        self.verify = verify  # a VerifySettings: the allow-list and limits images are opened under (None: defaults)
        self.cache: dict[str, Any] | None = {} if cache else None
        self.cache_bytes = cache_bytes
        self._cached = 0

    def __call__(self, path: Any) -> Any:
        key = str(path)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        from dsbuild.verify.decode import load_rgb

        img = load_rgb(key, verify=getattr(self, "verify", None))
        limit = 2 * self.size
        if min(img.size) > limit:
            scale = limit / min(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample=3)
        nbytes = img.width * img.height * 3
        if self.cache is not None and self._cached + nbytes <= self.cache_bytes:
            self.cache[key] = img
            self._cached += nbytes
        return img

    def __getstate__(self) -> dict[str, Any]:
        # learn.export() pickles the pipeline; the cache of decoded images must not go with it.
        return {"size": self.size, "cache": None, "cache_bytes": self.cache_bytes, "_cached": 0, "verify": None}


class _RowX:
    """DataBlock ``get_x``: a DataFrame row → its image (picklable for ``learn.export``)."""

    def __init__(self, loader: ImageLoader) -> None:
        self.loader = loader

    def __call__(self, row: Any) -> Any:
        return self.loader(row["path"])


def item_tfms(size: int, augment: bool) -> list[Any]:
    """The seeds' item transform: ``RandomResizedCrop(size, min_scale=0.5)``; ``Resize(size)`` without augmentation."""
    from fastai.vision.all import RandomResizedCrop, Resize

    return [RandomResizedCrop(size, min_scale=0.5)] if augment else [Resize(size)]


def batch_tfms(augment: bool, flip: bool, mean: tuple[float, ...], std: tuple[float, ...]) -> list[Any]:
    """``aug_transforms()`` (train only) + ImageNet normalisation."""
    from fastai.vision.all import Normalize, aug_transforms

    tfms = list(aug_transforms(do_flip=flip)) if augment else []
    return tfms + [Normalize.from_stats(list(mean), list(std), cuda=False)]


def resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DsbuildError(f"model.device = {device!r} but no CUDA GPU is available — use device = \"auto\" or \"cpu\"")
    return torch.device(device)


def check_frame(df: Any, *, need_valid: bool = True) -> None:
    """Raise DsbuildError unless ``df`` has the columns and splits training needs."""
    missing = [c for c in ("image_id", "path", "label", "split") if c not in df.columns]
    if missing:
        raise DsbuildError(f"training table lacks column(s) {', '.join(missing)} — pass image_id, path, label, split")
    bad = sorted(set(df["split"].dropna()) - set(SPLITS))
    if bad:
        raise DsbuildError(f"unknown split value(s) {bad} — splits are train, valid, test")
    if df["label"].isna().any():
        raise DsbuildError("some images have no label — drop unlabelled rows before training")
    if (df["split"] == "train").sum() == 0:
        raise DsbuildError("no images in the train split — nothing to learn from")
    if need_valid and (df["split"] == "valid").sum() == 0:
        raise DsbuildError("no images in the valid split — give the dataset a valid fraction > 0 and rebuild")
    if df.loc[df["split"] == "train", "label"].nunique() < 2:
        raise DsbuildError("the train split has fewer than two labels — a classifier needs at least two")


def dataloaders(train_df: Any, valid_df: Any, classes: tuple[str, ...], settings: ModelSettings, *,
                loader: ImageLoader | None = None, device: Any = None, shuffle: bool = True,
                normalize: tuple[Any, Any] | None = None) -> Any:
    """fastai DataLoaders: ``train_df`` rows train, ``valid_df`` rows validate (labels from ``label``).

    ``normalize``: ``(mean, std)`` the backbone's weights expect (:meth:`Backbone.normalize`);
    ``None`` → ImageNet mean/std.
    """
    import pandas as pd
    from fastai.vision.all import CategoryBlock, ColReader, ColSplitter, DataBlock, ImageBlock

    from dsbuild.model.weights import IMAGENET_MEAN, IMAGENET_STD

    mean, std = normalize or (IMAGENET_MEAN, IMAGENET_STD)

    frame = pd.concat([train_df.assign(_is_valid=False), valid_df.assign(_is_valid=True)], ignore_index=True)
    frame["path"] = frame["path"].astype(str)
    frame["label"] = frame["label"].astype(str)
    loader = loader or ImageLoader(settings.size)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=list(classes), sort=False)),
        get_x=_RowX(loader),
        get_y=ColReader("label"),
        splitter=ColSplitter("_is_valid"),
        item_tfms=item_tfms(settings.size, settings.augment),
        batch_tfms=batch_tfms(settings.augment, settings.flip, tuple(mean), tuple(std)),
    )
    return block.dataloaders(frame, bs=settings.batch_size, num_workers=settings.num_workers,
                             device=device, shuffle=shuffle)


# --------------------------------------------------------------------------- model


def build_model(arch: str, n_out: int, *, pretrained: bool, weights: Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, splitter, info)``: pretrained body + fastai head (``nn.Sequential(body, head)``).

    The body is cut from the torchvision/timm ImageNet model exactly as fastai's
    ``vision_learner`` would, but the weights come from :func:`dsbuild.model.weights.load_backbone`
    (local file, bundled efficientnet_lite0, or download). ``info`` goes into model.json.
    """
    import torch.nn as nn
    from fastai.callback.hook import num_features_model
    from fastai.vision.learner import TimmBody, add_head, create_body, default_split, model_meta

    from dsbuild.model.weights import load_backbone

    backbone, full = load_backbone(arch, pretrained=pretrained, weights=weights)
    if backbone.library == "timm":
        full.reset_classifier(0)
        body = TimmBody(full, pretrained)
        nf = full.num_features
        pool = body.needs_pool
        splitter = default_split
    else:
        import torchvision

        meta = model_meta.get(getattr(torchvision.models, backbone.name, None), {})
        body = create_body(full, 3, pretrained, meta.get("cut"))
        nf = num_features_model(nn.Sequential(*body.children()))
        pool = True
        splitter = meta.get("split", default_split)
    model = add_head(body, nf, n_out, pool=pool)
    mean, std = backbone.normalize(full)
    return model, splitter, {"library": backbone.library, "name": backbone.name, "pool": pool, "nf": nf,
                             "normalize": {"mean": list(mean), "std": list(std)}}


def _epoch_logger(rows: list[dict[str, Any]], progress_stage: Any) -> Any:
    from fastai.callback.core import Callback
    from fastai.learner import Recorder

    class EpochLog(Callback):
        order = Recorder.order + 1  # after the Recorder has written this epoch's log

        def before_fit(self) -> None:
            self.phase = "frozen" if self.learn.opt is not None and _is_frozen(self.learn) else "unfrozen"

        def before_epoch(self) -> None:
            self.t0 = time.perf_counter()

        def after_epoch(self) -> None:
            names = list(self.learn.recorder.metric_names)
            values = dict(zip(names, self.learn.recorder.log))
            row = {"epoch": len(rows) + 1, "phase": self.phase}
            for key in ("train_loss", "valid_loss", "error_rate", "accuracy"):
                value = values.get(key)
                row[key] = None if value is None else float(value)
            row["seconds"] = round(time.perf_counter() - self.t0, 3)
            rows.append(row)
            progress_stage.advance(1)

    return EpochLog()


def _is_frozen(learn: Any) -> bool:
    groups = learn.opt.param_lists
    return len(groups) > 1 and not any(p.requires_grad for p in groups[0] if p.ndim > 1)


def make_learner(train_df: Any, valid_df: Any, classes: tuple[str, ...], settings: ModelSettings, *,
                 loader: ImageLoader | None = None, model_state: tuple[Any, Any, dict[str, Any]] | None = None) -> tuple[Any, dict[str, Any]]:
    """A fastai ``Learner`` (cross-entropy, error_rate + accuracy, channels-last) and the model info.

    Seeds everything from ``settings.seed`` first, so two calls give identical learners.
    ``model_state`` reuses an already built ``(model, splitter, info)``.
    """
    import torch
    from fastai.callback.channelslast import ChannelsLast
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy, error_rate
    from fastai.torch_core import set_seed

    device = resolve_device(settings.device)
    set_seed(settings.seed, reproducible=True)
    model, splitter, info = model_state or build_model(settings.arch, len(classes), pretrained=settings.pretrained,
                                                       weights=settings.weights)
    set_seed(settings.seed, reproducible=True)
    norm = info.get("normalize")
    dls = dataloaders(train_df, valid_df, classes, settings, loader=loader, device=device,
                      normalize=(norm["mean"], norm["std"]) if norm else None)
    # Channels-last convolutions are ~2x faster on CPU (measured: efficientnet_lite0 at 64 px).
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=splitter, metrics=[error_rate, accuracy],
                    cbs=[ChannelsLast()])
    if settings.pretrained:
        learn.freeze()
    torch.manual_seed(settings.seed)
    return learn, info


def _batch_ticker(progress_stage: Any) -> Any:
    """A callback that advances ``progress_stage`` once per training batch (lr_find's steps)."""
    from fastai.callback.core import Callback

    class BatchTick(Callback):
        def after_batch(self) -> None:
            if self.training:
                progress_stage.advance(1)

    return BatchTick()


LR_FIND_STEPS = 100  # fastai's lr_find default: at most this many batches, fewer when the loss diverges
DEFAULT_LR = 2e-3
"""The base lr without ``lr_find`` for a pretrained network: fastai ``fine_tune``'s default ``base_lr``."""
DEFAULT_SCRATCH_LR = 1e-3
"""The lr without ``lr_find`` from random weights: fastai's ``defaults.lr`` (``fit_one_cycle``'s ``lr_max``)."""


def runs_lr_find(settings: ModelSettings, device: Any) -> bool:
    """Whether :func:`fit` chooses the lr with ``lr_find``: never when ``lr`` is set; else ``settings.lr_find``,
    and when that is unset, on a GPU (cuda, mps) yes, on a CPU no (its 100 batches are most of a short CPU
    fine-tune: fastai's default lr is used)."""
    if settings.lr is not None:
        return False
    if settings.lr_find is not None:
        return settings.lr_find
    return getattr(device, "type", str(device)) != "cpu"


def default_lr_note(settings: ModelSettings, lr: float, batches_per_epoch: int) -> str:
    """What :func:`fit` says when an unset lr is fastai's default, not lr_find's: the value, why, how to change it."""
    what = "fine_tune's" if settings.pretrained else "fit_one_cycle's"
    why = ("lr_find = false" if settings.lr_find is False else
           f"lr_find skipped on a CPU: its {LR_FIND_STEPS} training batches would take as long as "
           f"{LR_FIND_STEPS / max(1, batches_per_epoch):.0f} epochs here")
    return f"lr = {lr:g}, fastai {what} default ({why}) — set lr in [model], or lr_find = true to search for one"


def _lr_find(learn: Any, settings: ModelSettings, *, progress: Any, name: str, curve: dict[str, Any] | None) -> float:
    """fastai's ``lr_find`` valley, run in a temporary folder and shown as a progress stage.

    fastai saves the model under ``learn.path / learn.model_dir`` while it searches and
    leaves that folder behind (``./models`` by default): it gets a temporary folder, so
    nothing is written outside the run's own folder. ``curve``, when given, receives
    ``lrs``, ``losses`` (the smoothed training losses fastai plots) and ``valley``.
    """
    import tempfile

    from fastai.torch_core import set_seed

    set_seed(settings.seed, reproducible=True)
    saved = learn.path, learn.model_dir
    with tempfile.TemporaryDirectory(prefix="dsbuild-lr-find-") as tmp, \
            silent(progress).stage(f"{name}: lr_find", LR_FIND_STEPS) as stage:
        learn.path, learn.model_dir = Path(tmp), "models"
        try:
            with learn.added_cbs([_batch_ticker(stage)]):
                lr = float(learn.lr_find(num_it=LR_FIND_STEPS, show_plot=False).valley)
        finally:
            learn.path, learn.model_dir = saved
    if curve is not None:
        curve.update(lrs=[float(x) for x in learn.recorder.lrs], losses=[float(x) for x in learn.recorder.losses],
                     valley=lr)
    return lr


def fit(learn: Any, settings: ModelSettings, *, epochs: int | None = None, progress: Any = None, name: str = "train",
        curve: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], float]:
    """Train ``learn`` the fastai way; return (per-epoch rows, base lr used). Quiet (no fastprogress output).

    Pretrained: ``fine_tune(epochs, lr, freeze_epochs)`` (``epochs = 0``: its head-only
    phase alone); from scratch: ``fit_one_cycle(epochs, lr)``. ``settings.lr=None`` →
    ``lr_find()``'s valley where it runs (:func:`runs_lr_find`: on a GPU, or when asked; ``curve`` receives its
    curve, see :func:`_lr_find`), else fastai's default (:data:`DEFAULT_LR`, :data:`DEFAULT_SCRATCH_LR`). Progress
    stages ``<name>: lr_find`` (batches) and ``<name>: epochs``. No epoch at all
    (``epochs = 0`` and no head-only epoch) trains nothing and returns no rows.
    """
    from fastai.torch_core import set_seed

    epochs = settings.epochs if epochs is None else epochs
    rows: list[dict[str, Any]] = []
    frozen = settings.freeze_epochs if settings.pretrained else 0
    if epochs + frozen == 0:
        return rows, float(settings.lr or 0.0)
    with learn.no_bar(), learn.no_logging():
        lr = settings.lr
        if lr is None and runs_lr_find(settings, learn.dls.device):
            lr = _lr_find(learn, settings, progress=progress, name=name, curve=curve)
            silent(progress).note(f"lr_find chose lr = {lr:.2e}")
        elif lr is None:
            lr = DEFAULT_LR if settings.pretrained else DEFAULT_SCRATCH_LR
            silent(progress).note(default_lr_note(settings, lr, len(learn.dls.train)))
        with silent(progress).stage(f"{name}: epochs", epochs + frozen) as stage:
            set_seed(settings.seed, reproducible=True)
            cb = _epoch_logger(rows, stage)
            if settings.pretrained and frozen > 0 and epochs > 0:
                learn.fine_tune(epochs, base_lr=lr, freeze_epochs=frozen, lr_mult=settings.lr_mult, cbs=[cb])
            elif settings.pretrained and frozen > 0:
                # fine_tune's first (head-only) phase alone: fastai cannot fit_one_cycle zero epochs.
                learn.freeze()
                learn.fit_one_cycle(frozen, slice(lr), pct_start=0.99, cbs=[cb])
            elif settings.pretrained:
                # fine_tune's second phase alone.
                learn.unfreeze()
                learn.fit_one_cycle(epochs, slice(lr / 2 / settings.lr_mult, lr / 2), pct_start=0.3, div=5.0, cbs=[cb])
            else:
                learn.fit_one_cycle(epochs, lr, cbs=[cb])
    return rows, lr


# --------------------------------------------------------------------------- train


def with_size(settings: ModelSettings, dedup: Any = None) -> ModelSettings:
    """``settings`` with ``size`` and ``resize`` filled in. Unset (both) for a head on the pretrained backbone's frozen
    features, and ``dedup`` (the dataset's :class:`~dsbuild.dedup.settings.DedupSettings`) embeds with the same
    backbone: the build's embedding input (``dedup.embed_size``, ``squash``), whose rows the build's pass writes
    (:func:`build_feature_spec`). Else ``size`` unset → the backbone's own ImageNet resolution
    (:func:`dsbuild.model.features.native_size`) and ``resize`` unset → ``crop``."""
    import dataclasses

    if settings.size is None and settings.resize is None and dedup is not None:
        spec = build_feature_spec(dedup)
        if spec is not None and not settings.finetune and settings.oof_method == "frozen" and settings.pretrained \
                and settings.weights is None and settings.arch.strip() == spec.arch:
            return dataclasses.replace(settings, size=spec.size, resize=spec.resize)
    if settings.size is None:
        from dsbuild.model.features import native_size

        settings = dataclasses.replace(settings, size=native_size(settings.arch))
    if settings.resize is None:
        settings = dataclasses.replace(settings, resize="crop")
    return settings


def build_feature_spec(dedup: Any) -> Any:
    """The training :class:`~dsbuild.model.features.FeatureSpec` whose rows a build's embedding pass gives with its
    embeddings (one forward pass for both: :meth:`dsbuild.model.embeddings.Embedder.embed_views`): the embedding's
    backbone and size, ``squash``. None when ``dedup`` computes no embeddings (``semantic = false``)."""
    from dsbuild.model.features import FeatureSpec

    if not dedup.semantic:
        return None
    return FeatureSpec(arch=dedup.embed_arch, size=int(dedup.embed_size), resize="squash")


def train(df: Any, settings: ModelSettings, *, out_dir: Path, progress: Any = None,
          cache_dir: Path | None = None) -> TrainResult:
    """Train on ``df``'s train rows, validate on its valid rows, save to ``out_dir``.

    ``settings.finetune`` false (default): a logistic head on cached frozen features
    (:func:`train_head`); true: fastai fine-tuning (:func:`finetune`). ``cache_dir``: the
    feature cache root (``None``: no cache). ``df`` may carry ``sha256`` (the blob key).
    The result's ``learned`` says whether the model learned anything (the caller warns).
    """
    settings = with_size(settings)
    if settings.finetune:
        return finetune(df, settings, out_dir=out_dir, progress=progress)
    return train_head(df, settings, out_dir=out_dir, progress=progress, cache_dir=cache_dir)


def _valid_figures(classes: tuple[str, ...], valid_df: Any, probs: Any) -> tuple[Any, list[list[int]], dict[str, Any], float, Any]:
    """``(y, confusion, per-class recall, accuracy, LearnCheck | None)`` of valid probabilities."""
    import numpy as np

    from dsbuild.model.trust import learn_check

    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[str(v)] for v in valid_df["label"]], dtype=np.int64)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = {c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None) for i, c in enumerate(classes)}
    accuracy = float((pred == y).mean()) if len(y) else math.nan
    check = learn_check(y, np.asarray(probs, dtype=np.float64)) if len(y) else None
    return y, confusion.tolist(), per_class, accuracy, check


def feature_spec(settings: ModelSettings) -> Any:
    """The :class:`~dsbuild.model.features.FeatureSpec` of ``settings`` (size must be resolved: :func:`with_size`)."""
    from dsbuild.model.features import FeatureSpec

    return FeatureSpec(arch=settings.arch, size=int(settings.size), resize=settings.resize or "crop",
                       weights=str(settings.weights) if settings.weights is not None and settings.pretrained else None)


def train_head(df: Any, settings: ModelSettings, *, out_dir: Path, progress: Any = None,
               cache_dir: Path | None = None) -> TrainResult:
    """A logistic-regression head on the frozen backbone's cached features; saved as one network.

    Features: :func:`dsbuild.model.features.features` (``settings.view``); the head's L2
    setting by 3-fold inner cross-validation on the train rows (:func:`dsbuild.model.head.choose_c`).
    Saved: ``model.pth`` (state dict of backbone + one ``nn.Linear``, the standardisation
    folded in) and ``model.json`` (``kind: head``). ``epochs`` holds one row (phase ``head``)
    with the train/valid log-loss. Needs ``settings.pretrained`` (random features teach nothing).
    """
    import numpy as np
    import torch

    from dsbuild.model.features import VIEW_SETS, feature_keys, features, frozen_body, view_matrix
    from dsbuild.model.head import choose_c, fit_head, head_classifier

    t0 = time.perf_counter()
    check_frame(df)
    if not settings.pretrained:
        raise DsbuildError("model.pretrained = false needs model.finetune = true — a head on random features learns nothing")
    used = df[df["split"].isin(["train", "valid"])].reset_index(drop=True)
    train_df = used[used["split"] == "train"].reset_index(drop=True)
    valid_df = used[used["split"] == "valid"].reset_index(drop=True)
    classes = tuple(sorted(set(train_df["label"].astype(str)) | set(valid_df["label"].astype(str))))
    index = {c: i for i, c in enumerate(classes)}
    spec = feature_spec(settings)
    # The image features (the backbone over every image not cached yet: most of a first train) are timed on their
    # own: the head's row and stage say what the head took (trial 9: "epoch 1" of a head said 218.6 s, 214 of them
    # features), the run records both.
    t_feat = time.perf_counter()
    feats = features(used["path"].astype(str).tolist(), spec, cache_dir, keys=feature_keys(used), progress=progress)
    feature_s = round(time.perf_counter() - t_feat, 3)
    t_head = time.perf_counter()
    with silent(progress).stage("train: head", 1) as stage:
        X = view_matrix(feats, settings.view)
        is_train = (used["split"] == "train").to_numpy()
        y_train = np.array([index[str(v)] for v in train_df["label"]], dtype=np.int64)
        C, losses = choose_c(X[is_train], y_train, len(classes), seed=settings.seed)
        head = fit_head(X[is_train], y_train, len(classes), C, seed=settings.seed)
        probs = head.predict_proba(X[~is_train]).astype(np.float32)
        stage.advance(1)
    y, confusion, per_class, accuracy, check = _valid_figures(classes, valid_df, probs)
    p_train = head.predict_proba(X[is_train])
    train_loss = float(-np.log(np.clip(p_train[np.arange(len(y_train)), y_train], 1e-12, 1)).mean())
    valid_loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)).mean()) if len(y) else None
    rows = [{"epoch": 1, "phase": "head", "train_loss": train_loss, "valid_loss": valid_loss,
             "error_rate": 1.0 - accuracy, "accuracy": accuracy, "seconds": round(time.perf_counter() - t_head, 3)}]

    body, info = frozen_body(settings.arch, int(settings.size), weights=spec.weights)
    views = [v for v in VIEW_SETS[settings.view] if v in feats]
    model = head_classifier(body, views, head, len(classes), X.shape[1])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.pth"
    model.to(memory_format=torch.contiguous_format)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, model_path)
    params = settings.to_json() | {"C": C, "device": "cpu", "features": spec.key(), "n_features": int(X.shape[1]),
                                   "feature_seconds": feature_s,
                                   "inner_cv_log_loss": {str(k): round(v, 5) for k, v in losses.items()}}
    config = {
        "format": MODEL_FORMAT,
        "kind": "head",
        "arch": settings.arch,
        "backbone": info,
        "views": views,
        "n_features": int(X.shape[1]),
        "classes": list(classes),
        "size": int(settings.size),
        "normalize": info["normalize"],
        "settings": params,
    }
    (out_dir / "model.json").write_text(json.dumps(config, indent=2) + "\n")
    return TrainResult(
        classes=classes, epochs=rows, error_rate=1.0 - accuracy, accuracy=accuracy,
        confusion=confusion, per_class_accuracy=per_class, n_train=len(train_df), n_valid=len(valid_df),
        duration_s=round(time.perf_counter() - t0, 3), model_path=model_path, params=params,
        valid_image_ids=tuple(str(v) for v in valid_df["image_id"]), valid_probs=probs, learned=check,
        feature_s=feature_s,
    )


def finetune(df: Any, settings: ModelSettings, *, out_dir: Path, progress: Any = None) -> TrainResult:
    """Fine-tune on ``df``'s train rows, validate on its valid rows, save to ``out_dir``.

    ``df``: columns ``image_id``, ``path``, ``label``, ``split`` (test rows are ignored).
    Classes are the sorted labels of the train + valid rows. Deterministic for a given
    ``settings.seed`` on the same machine and thread count. Raises DsbuildError for an
    unusable table or unavailable weights; unreadable images are an error too (the
    catalog only passes verified images).
    """
    import numpy as np
    import torch

    t0 = time.perf_counter()
    check_frame(df)
    train_df = df[df["split"] == "train"].reset_index(drop=True)
    valid_df = df[df["split"] == "valid"].reset_index(drop=True)
    classes = tuple(sorted(set(train_df["label"].astype(str)) | set(valid_df["label"].astype(str))))
    loader = ImageLoader(settings.size, cache=True)
    learn, info = make_learner(train_df, valid_df, classes, settings, loader=loader)
    curve: dict[str, Any] = {}
    try:
        rows, lr = fit(learn, settings, progress=progress, name="train", curve=curve)
    except OSError as exc:
        raise DsbuildError(f"cannot read an image while training ({exc}) — run `dsbuild build` again to re-verify the images") from None
    probs = get_probs(learn, valid_df)
    y, confusion, per_class, accuracy, check = _valid_figures(classes, valid_df, probs)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.pth"
    learn.model.to(memory_format=torch.contiguous_format)
    torch.save({k: v.contiguous() for k, v in learn.model.state_dict().items()}, model_path)
    params = settings.to_json() | {"lr": lr, "device": str(learn.dls.device)}

    config = {
        "format": MODEL_FORMAT,
        "kind": "finetune",
        "arch": settings.arch,
        "backbone": info,
        "classes": list(classes),
        "size": settings.size,
        "augment": settings.augment,
        "normalize": info["normalize"],
        "settings": params,
    }
    (out_dir / "model.json").write_text(json.dumps(config, indent=2) + "\n")
    if curve:
        from dsbuild.render.figures import lr_find_png

        lr_find_png(curve["lrs"], curve["losses"], curve["valley"], out_dir / "lr_find.png")
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ChannelsLast"])
    learn.export(out_dir / "export.pkl")
    return TrainResult(
        classes=classes, epochs=rows, error_rate=1.0 - accuracy, accuracy=accuracy,
        confusion=confusion, per_class_accuracy=per_class, n_train=len(train_df), n_valid=len(valid_df),
        duration_s=round(time.perf_counter() - t0, 3), model_path=model_path, params=params,
        valid_image_ids=tuple(str(v) for v in valid_df["image_id"]), valid_probs=probs, learned=check,
    )
