"""Fine-tune a fastai image classifier from a table of images; save it safely; predict.

The input is a pandas DataFrame with one row per image and the columns ``image_id``,
``path`` (a readable file), ``label`` and ``split`` (``train``/``valid``/``test``); the
catalog layer (:mod:`dsbuild.cycle`) builds it and records the returned
:class:`TrainResult` as a run. The model is the fastai book's chapter-2 recipe:
``RandomResizedCrop(size, min_scale=0.5)`` + ``aug_transforms()``, a pretrained body with
fastai's head, ``fine_tune`` (one frozen epoch, then the whole network).

Saved model (``out_dir``):

* ``model.pth`` — the network's ``state_dict`` (tensors only);
* ``model.json`` — arch, classes, image size, normalisation, settings: enough to rebuild
  the network without pretrained weights and load ``model.pth`` with
  ``torch.load(weights_only=True)``. :func:`predict` reads only these two files, so a
  model folder from elsewhere cannot run code on load;
* ``export.pkl`` — fastai's ``learn.export()`` for users who want ``load_learner``
  (a pickle: only load your own).

torch / fastai / timm are imported inside functions: ``import dsbuild.train`` is cheap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsbuild import weights as _weights  # noqa: F401  (its import silences timm/fastai deprecation noise)
from dsbuild.errors import DsbuildError

MODEL_FORMAT = "dsbuild-model/1"
SPLITS = ("train", "valid", "test")
OOF_METHODS = ("crossfit", "kfold", "frozen")


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How to train (manifest table ``[datasets.NAME.model]``). Every field has a default.

    arch: ``"resnet18"`` — a torchvision classification model name (resnet18/34/50, ...) or a
        timm name (``"efficientnet_lite0"``, whose ImageNet weights ship with a pip package
        and so work offline). ``"timm/NAME"`` forces timm.
    pretrained: ``True`` — start from ImageNet weights (see :mod:`dsbuild.weights`).
    weights: ``None`` — a local weights file (state dict) used instead of a download.
    size: ``224`` — square input size in pixels.
    epochs: ``4`` — epochs of whole-network fine-tuning (after ``freeze_epochs`` head-only ones).
    freeze_epochs: ``1`` — head-only epochs before unfreezing (fastai ``fine_tune``); pretrained only.
    batch_size: ``32``.
    lr: ``None`` — base learning rate; ``None`` runs fastai's ``lr_find`` and takes its valley.
    lr_mult: ``100`` — fastai ``fine_tune``'s discriminative ratio: the earliest layers train
        at ``lr / lr_mult``, the head at ``lr``. Lower it (e.g. 10) when the images look
        nothing like ImageNet photos (digits, scans), so the body can adapt.
    folds: ``5`` — K of the stratified K-fold used for out-of-sample mislabel scores.
    augment: ``True`` — ``RandomResizedCrop(size, min_scale=0.5)`` + ``aug_transforms()``;
        ``False`` → ``Resize(size)`` only.
    flip: ``True`` — horizontal flips in ``aug_transforms`` (turn off for text/digits,
        where a mirrored image is another thing).
    seed: ``42`` — seeds python/numpy/torch, the fold assignment and the batch order.
    num_workers: ``0`` — DataLoader worker processes (0 = load in the main process).
    device: ``"auto"`` — CUDA when present, else CPU; or ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    oof_method: ``"crossfit"`` — how :func:`dsbuild.mislabels.out_of_fold_probs` scores
        images out of sample: ``"crossfit"`` fine-tunes one network per group of the data
        (on the other groups' labels) and scores each group with per-fold logistic heads on
        three feature views — the fine-tuned body's spatial stage grids, its penultimate
        features, the ImageNet body's stage grids (cost ≈ G−1 trainings of the whole set);
        ``"kfold"`` fine-tunes one network per fold and scores with its softmax (cost ≈ K−1
        trainings); ``"frozen"`` fits per-fold heads on ImageNet stage grids (no fine-tuning).
    oof_groups: ``2`` — ``crossfit`` only: each of G groups is scored by a network fine-tuned on
        the other G−1 groups ((G−1)/G of the labels; cost ≈ G−1 trainings).
    oof_epochs: ``None`` — epochs for the out-of-fold networks; ``None`` → ``epochs``.
    oof_rounds: ``2`` — scoring rounds; each later round scores again without the images the
        previous round flagged in any training set. ``crossfit``/``frozen`` refit only their
        logistic heads (seconds); ``kfold`` fine-tunes all its networks again.
    """

    arch: str = "resnet18"
    pretrained: bool = True
    weights: Path | None = None
    size: int = 224
    epochs: int = 4
    freeze_epochs: int = 1
    batch_size: int = 32
    lr: float | None = None
    lr_mult: float = 100.0
    folds: int = 5
    augment: bool = True
    flip: bool = True
    seed: int = 42
    num_workers: int = 0
    device: str = "auto"
    oof_method: str = "crossfit"
    oof_groups: int = 2
    oof_epochs: int | None = None
    oof_rounds: int = 2

    def __post_init__(self) -> None:
        if self.weights is not None and not isinstance(self.weights, Path):
            object.__setattr__(self, "weights", Path(self.weights))
        checks = [
            (isinstance(self.arch, str) and self.arch.strip() != "", "arch must be a model name"),
            (isinstance(self.size, int) and 16 <= self.size <= 2048, f"size must be an integer 16..2048, got {self.size!r}"),
            (isinstance(self.epochs, int) and 0 <= self.epochs <= 1000, f"epochs must be an integer 0..1000, got {self.epochs!r}"),
            (isinstance(self.freeze_epochs, int) and self.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {self.freeze_epochs!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size!r}"),
            (self.lr is None or (isinstance(self.lr, (int, float)) and 0 < self.lr < 10), f"lr must be a positive number or unset, got {self.lr!r}"),
            (isinstance(self.lr_mult, (int, float)) and self.lr_mult >= 1, f"lr_mult must be >= 1, got {self.lr_mult!r}"),
            (isinstance(self.folds, int) and 2 <= self.folds <= 50, f"folds must be an integer 2..50, got {self.folds!r}"),
            (isinstance(self.num_workers, int) and self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers!r}"),
            (isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}"),
            (self.oof_method in OOF_METHODS, f"oof_method must be one of {', '.join(OOF_METHODS)}, got {self.oof_method!r}"),
            (self.oof_epochs is None or (isinstance(self.oof_epochs, int) and self.oof_epochs >= 0), f"oof_epochs must be >= 0, got {self.oof_epochs!r}"),
            (isinstance(self.oof_groups, int) and 2 <= self.oof_groups <= 10, f"oof_groups must be an integer 2..10, got {self.oof_groups!r}"),
            (isinstance(self.oof_rounds, int) and 1 <= self.oof_rounds <= 5, f"oof_rounds must be an integer 1..5, got {self.oof_rounds!r}"),
            (isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")),
             f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_json(self) -> dict[str, Any]:
        """Settings as JSON-able values (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


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
        probabilities from the in-memory learner (``n_valid × len(classes)`` numpy array).
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


# --------------------------------------------------------------------------- progress


class _Silent:
    """The progress protocol of :mod:`dsbuild.build` (``stage(name, total)`` + ``note(text)``), silent."""

    def stage(self, name: str, total: int | None) -> "_Silent":
        return self

    def note(self, text: str) -> None:
        pass

    def advance(self, n: int = 1, **counts: int) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(progress: Any) -> Any:
    return progress if progress is not None else _Silent()


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
        from dsbuild.verify import load_rgb

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
                loader: ImageLoader | None = None, device: Any = None, shuffle: bool = True) -> Any:
    """fastai DataLoaders: ``train_df`` rows train, ``valid_df`` rows validate (labels from ``label``)."""
    import pandas as pd
    from fastai.vision.all import CategoryBlock, ColReader, ColSplitter, DataBlock, ImageBlock

    from dsbuild.weights import IMAGENET_MEAN, IMAGENET_STD

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
        batch_tfms=batch_tfms(settings.augment, settings.flip, IMAGENET_MEAN, IMAGENET_STD),
    )
    return block.dataloaders(frame, bs=settings.batch_size, num_workers=settings.num_workers,
                             device=device, shuffle=shuffle)


# --------------------------------------------------------------------------- model


def build_model(arch: str, n_out: int, *, pretrained: bool, weights: Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, splitter, info)``: pretrained body + fastai head (``nn.Sequential(body, head)``).

    The body is cut from the torchvision/timm ImageNet model exactly as fastai's
    ``vision_learner`` would, but the weights come from :func:`dsbuild.weights.load_backbone`
    (local file, bundled efficientnet_lite0, or download). ``info`` goes into model.json.
    """
    import torch.nn as nn
    from fastai.callback.hook import num_features_model
    from fastai.vision.learner import TimmBody, add_head, create_body, default_split, model_meta

    from dsbuild.weights import load_backbone

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
    return model, splitter, {"library": backbone.library, "name": backbone.name, "pool": pool, "nf": nf}


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
    dls = dataloaders(train_df, valid_df, classes, settings, loader=loader, device=device)
    model, splitter, info = model_state or build_model(settings.arch, len(classes), pretrained=settings.pretrained,
                                                       weights=settings.weights)
    # Channels-last convolutions are ~2x faster on CPU (measured: efficientnet_lite0 at 64 px).
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=splitter, metrics=[error_rate, accuracy],
                    cbs=[ChannelsLast()])
    if settings.pretrained:
        learn.freeze()
    torch.manual_seed(settings.seed)
    return learn, info


def fit(learn: Any, settings: ModelSettings, *, epochs: int | None = None, progress: Any = None, name: str = "train") -> tuple[list[dict[str, Any]], float]:
    """Train ``learn`` the fastai way; return (per-epoch rows, base lr used). Quiet (no fastprogress output).

    Pretrained: ``fine_tune(epochs, lr, freeze_epochs)``; from scratch: ``fit_one_cycle(epochs, lr)``.
    ``settings.lr=None`` → ``lr_find()``'s valley.
    """
    from fastai.torch_core import set_seed

    epochs = settings.epochs if epochs is None else epochs
    rows: list[dict[str, Any]] = []
    total = epochs + (settings.freeze_epochs if settings.pretrained else 0)
    with _progress(progress).stage(name, total) as stage, learn.no_bar(), learn.no_logging():
        lr = settings.lr
        if lr is None:
            set_seed(settings.seed, reproducible=True)
            lr = float(learn.lr_find(show_plot=False).valley)
            _progress(progress).note(f"lr_find chose lr = {lr:.2e}")
        set_seed(settings.seed, reproducible=True)
        cb = _epoch_logger(rows, stage)
        if settings.pretrained and settings.freeze_epochs > 0:
            learn.fine_tune(epochs, base_lr=lr, freeze_epochs=settings.freeze_epochs, lr_mult=settings.lr_mult, cbs=[cb])
        elif settings.pretrained:
            # fine_tune's second phase alone (fastai cannot fit_one_cycle zero epochs).
            learn.unfreeze()
            learn.fit_one_cycle(epochs, slice(lr / 2 / settings.lr_mult, lr / 2), pct_start=0.3, div=5.0, cbs=[cb])
        else:
            learn.fit_one_cycle(epochs, lr, cbs=[cb])
    return rows, lr


def get_probs(learn: Any, df: Any, *, loader: ImageLoader | None = None) -> Any:
    """Softmax probabilities (``len(df) × n_classes`` numpy float32) for ``df``'s images, valid transforms."""
    import numpy as np

    if len(df) == 0:
        return np.zeros((0, len(learn.dls.vocab)), dtype=np.float32)
    frame = df.assign(path=df["path"].astype(str))
    dl = learn.dls.test_dl(frame, bs=max(64, learn.dls.bs))
    with learn.no_bar(), learn.no_logging():
        probs, _ = learn.get_preds(dl=dl)
    return probs.float().numpy()


def get_features(learn: Any, df: Any, *, layer: str = "penultimate") -> Any:
    """Activations for ``df``'s images (numpy float32, one row per image), valid transforms.

    ``layer="penultimate"``: the input of the head's last Linear (what the classifier
    separates); ``"pool"``: the pooled body output (fastai's concat pool, ``2 × nf`` wide).
    """
    import numpy as np
    import torch

    head = learn.model[1]
    if layer == "pool":
        module = next(m for m in head.modules() if type(m).__name__ == "Flatten")
        grab = lambda mod, inp, out: out  # noqa: E731
    else:
        module = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
        grab = lambda mod, inp, out: inp[0]  # noqa: E731
    chunks: list[Any] = []
    hook = module.register_forward_hook(lambda mod, inp, out: chunks.append(grab(mod, inp, out).detach().float().cpu()))
    try:
        get_probs(learn, df)
    finally:
        hook.remove()
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


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


# --------------------------------------------------------------------------- train


def train(df: Any, settings: ModelSettings, *, out_dir: Path, progress: Any = None) -> TrainResult:
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
    try:
        rows, lr = fit(learn, settings, progress=progress, name="train")
    except OSError as exc:
        raise DsbuildError(f"cannot read an image while training ({exc}) — run `dsbuild build` again to re-verify the images") from None
    probs = get_probs(learn, valid_df)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[str(v)] for v in valid_df["label"]], dtype=np.int64)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = {c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None) for i, c in enumerate(classes)}
    accuracy = float((pred == y).mean()) if len(y) else math.nan

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.pth"
    learn.model.to(memory_format=torch.contiguous_format)
    torch.save({k: v.contiguous() for k, v in learn.model.state_dict().items()}, model_path)
    params = settings.to_json() | {"lr": lr, "device": str(learn.dls.device)}
    from dsbuild.weights import IMAGENET_MEAN, IMAGENET_STD

    config = {
        "format": MODEL_FORMAT,
        "arch": settings.arch,
        "backbone": info,
        "classes": list(classes),
        "size": settings.size,
        "augment": settings.augment,
        "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "settings": params,
    }
    (out_dir / "model.json").write_text(json.dumps(config, indent=2) + "\n")
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ChannelsLast"])
    learn.export(out_dir / "export.pkl")
    return TrainResult(
        classes=classes, epochs=rows, error_rate=1.0 - accuracy, accuracy=accuracy,
        confusion=confusion.tolist(), per_class_accuracy=per_class, n_train=len(train_df), n_valid=len(valid_df),
        duration_s=round(time.perf_counter() - t0, 3), model_path=model_path, params=params,
        valid_image_ids=tuple(str(v) for v in valid_df["image_id"]), valid_probs=probs,
    )


# --------------------------------------------------------------------------- predict


def load_model(model_dir: Path, *, device: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Rebuild the network from ``model.json`` and load ``model.pth`` with ``weights_only=True``."""
    import torch

    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "model.json", model_dir / "model.pth"
    if not config_path.is_file() or not weights_path.is_file():
        raise DsbuildError(f"no saved model in {model_dir} (model.json + model.pth) — run `dsbuild train` first")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise DsbuildError(f"cannot read {config_path} ({exc}) — train the model again") from None
    if config.get("format") != MODEL_FORMAT:
        raise DsbuildError(f"{config_path} is not a {MODEL_FORMAT} model — train the model again")
    backbone = config["backbone"]
    arch = ("timm/" + backbone["name"]) if backbone["library"] == "timm" else backbone["name"]
    model, _, _ = build_model(arch, len(config["classes"]), pretrained=False)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DsbuildError(f"{weights_path} does not match {config_path} ({str(exc).splitlines()[0]}) — train the model again") from None
    model.eval().to(resolve_device(device))
    return model, config




def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder → every file in it (recursively, sorted, hidden ones skipped), whatever its name.

    The content decides what a file is (:func:`dsbuild.formats.open_image`), never its suffix: a file that is
    not an allowed image gets an error row. Missing paths stay (→ error rows).
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()
                              and not any(part.startswith(".") for part in f.relative_to(p).parts)))
        else:
            out.append(p)
    return out


def predict(model_dir: Path, paths: list[Path], *, batch_size: int = 64, device: str = "auto", verify: Any = None) -> Any:
    """Label + probability for each image, from ``model_dir``'s ``model.pth`` + ``model.json`` only.

    ``paths``: image files and/or folders (a folder stands for its image files, recursively).
    Returns a DataFrame with one row per image, in order: ``path``, ``label`` (best
    class), ``probability`` (its softmax probability), ``error`` (missing, or why the image
    could not be read — then label and probabilities are missing), and ``prob_<class>`` per class.
    Preprocessing is the training pipeline's validation path (same loader, item transform
    in valid mode, ImageNet normalisation), so predictions equal the in-memory learner's.
    Every file is opened as verification opens it (:func:`dsbuild.formats.open_image` under
    ``verify``, a VerifySettings; default limits when None): a file outside the allow-list
    gets an error row such as ``unsupported format: EPS is not in the allowed formats (…)``.
    """
    import numpy as np
    import pandas as pd
    import torch
    from fastai.data.core import TfmdDL, TfmdLists
    from fastai.vision.all import IntToFloatTensor, Normalize, PILImage, ToTensor

    model, config = load_model(model_dir, device=device)
    classes = list(config["classes"])
    dev = next(model.parameters()).device
    from dsbuild.formats import Refused

    loader = ImageLoader(int(config["size"]), cache=True, cache_bytes=256 << 20, verify=verify)
    paths = expand_paths(paths)
    readable, errors = [], {}
    for i, p in enumerate(paths):
        try:
            loader(p)
            readable.append(i)
        except Refused as exc:  # sniffed and refused before any decoder ran
            errors[i] = str(exc)[:300]
        except Exception as exc:  # noqa: BLE001 - one bad image is a row with a reason, not a failure
            errors[i] = f"unreadable image: {type(exc).__name__}: {exc}"[:300]
    probs = np.full((len(paths), len(classes)), np.nan, dtype=np.float32)
    if readable:
        norm = config["normalize"]
        items = TfmdLists([str(paths[i]) for i in readable], [loader, PILImage.create], split_idx=1)
        dl = TfmdDL(items, bs=batch_size, shuffle=False, device=dev,
                    after_item=[*item_tfms(int(config["size"]), bool(config["augment"])), ToTensor()],
                    after_batch=[IntToFloatTensor(), Normalize.from_stats(norm["mean"], norm["std"], cuda=False)])
        out = []
        with torch.no_grad():
            for batch in dl:
                xb = batch[0] if isinstance(batch, (tuple, list)) else batch
                out.append(torch.softmax(model(xb.to(dev)).float(), dim=1).cpu())
        probs[readable] = torch.cat(out).numpy()
    best = np.nan_to_num(probs, nan=-1.0).argmax(1)
    frame = pd.DataFrame({
        "path": [str(p) for p in paths],
        "label": [None if i in errors else classes[best[i]] for i in range(len(paths))],
        "probability": [None if i in errors else float(probs[i, best[i]]) for i in range(len(paths))],
        "error": [errors.get(i) for i in range(len(paths))],
    })
    for j, c in enumerate(classes):
        frame[f"prob_{c}"] = probs[:, j]
    return frame
