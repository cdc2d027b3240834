"""Shared helpers for the model tests: tiny real datasets of handwritten digits.

``load_digits`` ships 1,797 real 8×8 handwritten digits inside scikit-learn (no
network). :func:`digit_table` renders a stratified, seeded subset to 64×64 RGB PNG
files (upscaled with Pillow, grayscale → RGB) and returns the training table that
:func:`dsbuild.model.train.train` and :func:`dsbuild.model.oof.out_of_fold_probs` take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Fine-tuning settings (``finetune = true``) small enough for 2 shared CPU cores: the offline
#: efficientnet_lite0 at 64 px, no frozen epoch, no flips (a mirrored digit is another glyph), no
#: discriminative lr (digits are far from ImageNet, the body must adapt), small batches.
FAST = dict(arch="efficientnet_lite0", finetune=True, oof_method="crossfit", size=64, freeze_epochs=0, lr=1e-2,
            lr_mult=1.0, flip=False, batch_size=16)
#: The default recipe (a head on frozen features) with only the offline arch set, as a new user would.
DEFAULTS = dict(arch="efficientnet_lite0")


def render_digit(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    arr = (255 - np.asarray(pixels, dtype=np.float64).reshape(8, 8) * (255.0 / 16.0)).clip(0, 255).astype("uint8")
    Image.fromarray(arr, mode="L").resize((64, 64), Image.Resampling.BICUBIC).convert("RGB").save(path)


def digit_table(root: Path, per_class: int, *, classes: tuple[int, ...] = tuple(range(10)), seed: int = 0,
                valid: float = 0.2, test: float = 0.0) -> pd.DataFrame:
    """``per_class`` real digits of each of ``classes`` (default 0–9) as PNGs under ``root``.

    Columns: image_id, path, label (the true digit as a string), split (train/valid/test,
    stratified by class and seeded).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in classes:
        members = rng.choice(np.flatnonzero(digits.target == c), size=per_class, replace=False)
        n_valid, n_test = int(round(valid * per_class)), int(round(test * per_class))
        for j, i in enumerate(members):
            path = root / f"digit-{i:04d}.png"
            if not path.exists():
                render_digit(digits.data[i], path)
            split = "valid" if j < n_valid else "test" if j < n_valid + n_test else "train"
            rows.append({"image_id": f"img{i:04d}", "path": str(path), "label": str(c), "split": split})
    return pd.DataFrame(rows)


def plant_flips(df: pd.DataFrame, n: int, *, seed: int = 0) -> tuple[pd.DataFrame, set[str]]:
    """Copy of ``df`` with ``n`` labels moved to another (random) class; returns (noisy df, flipped image_ids)."""
    rng = np.random.default_rng(seed)
    noisy = df.copy()
    classes = sorted(df["label"].unique())
    idx = rng.choice(len(df), size=n, replace=False)
    for i in idx:
        true = noisy.at[i, "label"]
        noisy.at[i, "label"] = str(rng.choice([c for c in classes if c != true]))
    return noisy, set(noisy.loc[idx, "image_id"])
