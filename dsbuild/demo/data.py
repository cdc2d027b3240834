"""The offline demo dataset: real handwritten digits with planted problems.

:func:`ensure_demo_data` renders scikit-learn's 1,797 real handwritten digits
(``load_digits``, shipped inside scikit-learn: no network) to 64×64 PNG files,
one folder per class, and plants what a web crawl would bring:

* a seeded fraction of **wrong labels** (files put in another class's folder),
  listed in ``TRUTH.csv`` so the model loop can show how many it finds;
* a few **bad files**: a truncated JPEG, a 1×1 image, an HTML page named
  ``.jpg``, and an **exact duplicate** of one digit under another label
  (a label conflict).

Generation is deterministic (seeded) and happens once; the folder is git-ignored.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEMO_VERSION = "3"
DEMO_SIZE = 64


def render_digit(pixels, size: int = DEMO_SIZE):
    """An 8×8 ``load_digits`` image (values 0–16) as a ``size``×``size`` grayscale PIL image, dark ink on white."""
    import numpy as np
    from PIL import Image

    arr = (255 - np.asarray(pixels, dtype=np.float64).reshape(8, 8) * (255.0 / 16.0)).clip(0, 255).astype("uint8")
    return Image.fromarray(arr, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def ensure_demo_data(root: Path, *, noise: float = 0.05, seed: int = 0, classes: tuple[str, ...] = DIGIT_NAMES) -> Path:
    """Create ``root/digits/<class>/*.png`` (+ planted problems) unless already there; return the folder."""
    import numpy as np
    from sklearn.datasets import load_digits

    folder = Path(root) / "digits"
    marker = folder / ".complete"
    if marker.exists() and marker.read_text().strip() == DEMO_VERSION:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    tmp = Path(root) / ".digits-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    digits = load_digits()
    wanted = [DIGIT_NAMES.index(c) for c in classes]
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(np.isin(digits.target, wanted))
    flip = set(rng.choice(idx, size=int(round(noise * len(idx))), replace=False).tolist())
    truth_rows = []
    for name in classes:
        (tmp / name).mkdir()
    for i in idx:
        true = DIGIT_NAMES[digits.target[i]]
        given = true
        if i in flip:
            others = [c for c in classes if c != true]
            given = others[int(rng.integers(len(others)))]
        file = tmp / given / f"digit-{i:04d}.png"
        render_digit(digits.data[i]).save(file, optimize=False)
        truth_rows.append({"file": f"{given}/{file.name}", "true_label": true, "given_label": given, "planted": given != true})

    _plant_bad_files(tmp, classes, digits, idx)
    with open(tmp / "TRUTH.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "true_label", "given_label", "planted"])
        writer.writeheader()
        writer.writerows(truth_rows)
    (tmp / ".complete").write_text(DEMO_VERSION)
    tmp.rename(folder)
    return folder


def _plant_bad_files(folder: Path, classes: tuple[str, ...], digits, idx) -> None:
    from PIL import Image

    first, second = classes[0], classes[1 % len(classes)]
    # A JPEG cut in half, as a dropped connection leaves it.
    buf = io.BytesIO()
    render_digit(digits.data[idx[0]], 256).convert("RGB").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    (folder / first / "bad-truncated.jpg").write_bytes(data[: len(data) // 2])
    # A 1×1 pixel (a tracking pixel).
    Image.new("RGB", (1, 1), (255, 255, 255)).save(folder / second / "bad-1x1.png")
    # An error page saved with an image name.
    (folder / first / "bad-error-page.jpg").write_bytes(
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
    )
    # The same file under two labels: a label conflict.
    src = sorted((folder / first).glob("digit-*.png"))[0]
    shutil.copyfile(src, folder / second / f"copy-of-{src.name}")


def read_truth(folder: Path) -> list[dict]:
    """Rows of ``TRUTH.csv``: file (class/name), true_label, given_label, planted (bool)."""
    with open(Path(folder) / "TRUTH.csv", newline="") as fh:
        return [{**r, "planted": r["planted"] == "True"} for r in csv.DictReader(fh)]
