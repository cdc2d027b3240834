"""The planted near-duplicate sets: real photos, their hard copies, and hard negatives.

Used by bench/dup_semantic.py (issue 17; ported from its research prototype). All data is offline:
scikit-image's and scikit-learn's sample photos, matplotlib's grace_hopper, and the
CIFAR-10N development images (/work/shared/data/cifar10n-dev, 32×32 JPEG; benchmark
data only).

Every file is a :class:`Item`: its bytes as a file would hold them (PNG or JPEG), the
*picture* it shows and the *variant* (``orig`` or a transformation). Two files are a
true duplicate pair when they show the same picture. Pairs of pictures listed in
:attr:`PlantedSet.ignore` are neither positive nor negative (a pan window and the
photo it was cut from: whether that is a "duplicate" is a matter of taste).

Hard copies (:data:`HARD`): central crops keeping 90/80/70 % of width and height,
horizontal mirror, 90° rotation, grayscale, aspect squeeze to 80 % width, a strong
colour shift (warm filter: R ×1.25, B ×0.75, saturation ×1.4, contrast ×1.2), JPEG q 40,
downscale to 50 %, and an ~84 % crop slightly off centre resized back to the original size
(:func:`offcentre_crop_resized`: a 32-px photo's 27 × 26 px, as trial 5 found missed). Easy copies (:data:`EASY`): the 12 of bench/dup_quality.py.

Hard negatives (pictures of their own, with their own copies, unless said):

* ``quadrant``: the four non-overlapping quadrants of each photo ≥ 300 px (same scene,
  colours, texture);
* ``pan``: two windows of 60 % width of each photo ≥ 400 px, at x = 0 and x = 40 %
  (they overlap by 20 % of the photo: a camera pan); no copies, compared with each other;
* ``stereo``: scikit-image's stereo_motorcycle left and right views (two photos of one
  scene, a small parallax);
* ``burst``: 10 frames of a simulated pan over astronaut and over china (70 % × 80 %
  windows 3.3 % of the width apart: neighbours near-identical, the ends 30 % apart); no
  copies; burst pairs are *ignored* for precision/recall (taste) and used to check that
  grouping does not chain (every member within threshold of its representative);
* ``blank``: six solid colours and four near-blank noise images (no copies);
* ``cifar``: CIFAR-10 photos at native 32×32 (``cifar32``) and, other photos, bicubic
  upscaled to 256×256 (``cifar256``); each with copies; all other dev images are
  distractors (``cifar_distractor``: same classes, different photos).
"""

from __future__ import annotations

import csv
import io
import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

CIFAR_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10n-dev"
if not CIFAR_DEV.is_dir():
    CIFAR_DEV = Path("/work/shared/data/cifar10n-dev")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
          "retina", "coins", "moon", "brick", "grass", "gravel", "cell", "page", "clock")


@dataclass(frozen=True)
class Item:
    """One file of the set: ``picture`` it shows, ``variant`` (transformation), ``kind`` of picture, bytes, extension."""

    picture: str
    variant: str
    kind: str
    data: bytes
    ext: str


@dataclass
class PlantedSet:
    items: list[Item]
    ignore: set[tuple[str, str]] = field(default_factory=set)  # picture pairs (sorted) that are neither pos nor neg

    @property
    def pictures(self) -> np.ndarray:
        return np.array([it.picture for it in self.items])

    @property
    def variants(self) -> np.ndarray:
        return np.array([it.variant for it in self.items])

    @property
    def kinds(self) -> np.ndarray:
        return np.array([it.kind for it in self.items])


def _enc(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png(im) -> tuple[bytes, str]:
    return _enc(im, "PNG"), "png"


def _jpg(im, q: int = 90) -> tuple[bytes, str]:
    return _enc(im.convert("RGB") if im.mode not in ("RGB", "L") else im, "JPEG", quality=q), "jpg"


def central_crop(im, keep: float):
    """The centre of ``im`` keeping ``keep`` of its width and of its height."""
    w, h = im.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return im.crop((dx, dy, w - dx, h - dy))


def colour_shift(im):
    """A strong warm filter: R ×1.25, B ×0.75, then saturation ×1.4 and contrast ×1.2 (RGB images; L → RGB first)."""
    from PIL import Image, ImageEnhance

    arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    arr = np.clip(arr * np.array([1.25, 1.0, 0.75], dtype=np.float32), 0, 255).astype(np.uint8)
    out = ImageEnhance.Color(Image.fromarray(arr)).enhance(1.4)
    return ImageEnhance.Contrast(out).enhance(1.2)


def _resize(im, scale: float):
    from PIL import Image

    w, h = im.size
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def _squeeze(im, fx: float = 0.8):
    from PIL import Image

    w, h = im.size
    return im.resize((max(1, round(w * fx)), h), Image.Resampling.BICUBIC)


def _watermark(im):
    from PIL import ImageDraw, ImageFont

    im = im.copy()
    w, h = im.size
    font = ImageFont.load_default(size=max(10, h // 20))
    draw = ImageDraw.Draw(im)
    text = "© stockphotos"
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    pos = (w - (x1 - x0) - w // 40, h - (y1 - y0) - h // 25)
    fill, stroke = (255, 0) if im.mode == "L" else ((255, 255, 255), (0, 0, 0))
    draw.text(pos, text, font=font, fill=fill, stroke_width=1, stroke_fill=stroke)
    return im


def _reopen(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _hard() -> dict[str, Callable]:
    from PIL import Image

    return {
        "crop90": lambda im: _png(central_crop(im, 0.90)),
        "crop80": lambda im: _png(central_crop(im, 0.80)),
        "crop70": lambda im: _png(central_crop(im, 0.70)),
        "hflip": lambda im: _png(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "rot90": lambda im: _png(im.transpose(Image.Transpose.ROTATE_90)),
        "gray": lambda im: _png(im.convert("L")),
        "squeeze80": lambda im: _png(_squeeze(im)),
        "colour": lambda im: _png(colour_shift(im)),
        "jpeg40": lambda im: _jpg(im, 40),
        "resize50": lambda im: _png(_resize(im, 0.5)),
        "crop84_off_resized": lambda im: _jpg(offcentre_crop_resized(im), 95),
    }


def offcentre_crop(im, keep: float, shift: float):
    """A crop keeping ``keep`` of width and height, its centre moved right and down by ``shift`` of the size."""
    w, h = im.size
    cw, ch = round(w * keep), round(h * keep)
    x0 = min(w - cw, max(0, round((w - cw) / 2 + shift * w)))
    y0 = min(h - ch, max(0, round((h - ch) / 2 + shift * h)))
    return im.crop((x0, y0, x0 + cw, y0 + ch))


def offcentre_crop_resized(im):
    """The trial's crop (trial5 finding 3): 3/32 of the width off the left, 2/32 off the right, 3/32 of the height
    off the top and bottom — 27 × 26 px of a 32-px photo, slightly off centre and ~84 % of each side — resized back
    to the original size (bicubic, the aspect changed by 4 %)."""
    from PIL import Image

    w, h = im.size
    box = (round(w * 3 / 32), round(h * 3 / 32), w - round(w * 2 / 32), h - round(h * 3 / 32))
    return im.crop(box).resize((w, h), Image.Resampling.BICUBIC)


def _extra() -> dict[str, Callable]:
    """Copies between the crop views' grid points, off-centre, and combined with other changes."""
    from PIL import Image

    return {
        "crop85": lambda im: _png(central_crop(im, 0.85)),
        "crop75": lambda im: _png(central_crop(im, 0.75)),
        "crop80_off": lambda im: _png(offcentre_crop(im, 0.80, 0.07)),
        "crop85_flip_jpeg": lambda im: _jpg(central_crop(im, 0.85).transpose(Image.Transpose.FLIP_LEFT_RIGHT), 60),
    }


def _easy() -> dict[str, Callable]:
    from PIL import Image, ImageEnhance

    return {
        "jpeg90": lambda im: _jpg(im, 90),
        "jpeg70": lambda im: _jpg(im, 70),
        "jpeg50": lambda im: _jpg(im, 50),
        "jpeg30": lambda im: _jpg(im, 30),
        "png_to_jpeg": lambda im: _jpg(im, 85),
        "jpeg_to_png": lambda im: _png(_reopen(_enc(im.convert("RGB") if im.mode not in ("RGB", "L") else im, "JPEG", quality=85))),
        "resize50": lambda im: _png(_resize(im, 0.5)),
        "resize150": lambda im: _png(im.resize((im.size[0] * 3 // 2, im.size[1] * 3 // 2), Image.Resampling.BICUBIC)),
        "crop5": lambda im: _png(central_crop(im, 0.95)),
        "bright120": lambda im: _png(ImageEnhance.Brightness(im).enhance(1.2)),
        "bright80": lambda im: _png(ImageEnhance.Brightness(im).enhance(0.8)),
        "watermark": lambda im: _jpg(_watermark(im), 90),
    }


HARD = ("crop90", "crop80", "crop70", "hflip", "rot90", "gray", "squeeze80", "colour", "jpeg40", "resize50",
        "crop84_off_resized")
EASY = ("jpeg90", "jpeg70", "jpeg50", "jpeg30", "png_to_jpeg", "jpeg_to_png", "resize50", "resize150", "crop5",
        "bright120", "bright80", "watermark")


def photos() -> dict[str, object]:
    """name → PIL image of the 20 real photos of bench/dup_quality.py (RGB or L)."""
    import skimage.data as sk
    from PIL import Image

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PHOTOS:
            out[name] = Image.fromarray(getattr(sk, name)())
        out["motorcycle_left"] = Image.fromarray(sk.stereo_motorcycle()[0])
        from sklearn.datasets import load_sample_images

        for fname, arr in zip(("china", "flower"), load_sample_images().images):
            out[fname] = Image.fromarray(arr)
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            out["grace_hopper"] = Image.open(fh).convert("RGB")
    return out


def quadrants(images: dict[str, object], min_side: int = 300) -> dict[str, object]:
    out = {}
    for name, im in images.items():
        w, h = im.size
        if min(w, h) < min_side:
            continue
        for qx, qy in itertools.product((0, 1), (0, 1)):
            out[f"{name}_q{qx}{qy}"] = im.crop((qx * w // 2, qy * h // 2, (qx + 1) * w // 2, (qy + 1) * h // 2))
    return out


def blanks(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """Solid colours and near-blank noise images (bench/dup_quality.py's): each its own picture."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for k, colour in enumerate([(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 40), (20, 160, 90), (240, 240, 230)]):
        out[f"solid{k}"] = (_enc(Image.new("RGB", (320, 240), colour), "PNG"), "png")
    for k, (base, sigma) in enumerate([(30, 2), (128, 1), (245, 3), (200, 6)]):
        arr = np.clip(base + rng.normal(0, sigma, (240, 320, 3)), 0, 255).astype(np.uint8)
        out[f"blank{k}"] = (_enc(Image.fromarray(arr), "JPEG", quality=90), "jpg")
    return out


def cifar_dev(limit: int | None = None) -> list[tuple[str, str, bytes]]:
    """(file stem, clean label, JPEG bytes) of the CIFAR-10N dev images in labels.csv order."""
    rows = []
    with open(CIFAR_DEV / "labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append((Path(r["file"]).stem, r["clean_label"], (CIFAR_DEV / r["file"]).read_bytes()))
            if limit and len(rows) >= limit:
                break
    return rows


def planted_set(*, transforms: str = "hard", n_cifar32: int = 150, n_cifar256: int = 100,
                n_distractors: int = 1000, quick: bool = False, seed: int = 0) -> PlantedSet:
    """Build the planted set; ``transforms`` is ``"hard"`` or ``"easy"``.

    ``n_distractors``: CIFAR dev images added as single originals (no copies), beside the
    ``n_cifar32 + n_cifar256`` planted ones (all distinct photos, chosen with ``seed``).
    """
    import skimage.data as sk
    from PIL import Image

    tf = {"hard": _hard, "easy": _easy, "extra": _extra}[transforms]()
    items: list[Item] = []
    ignore: set[tuple[str, str]] = set()

    def add(name: str, kind: str, im, copies: bool = True) -> None:
        data, ext = _png(im)
        if transforms != "extra":  # "extra": only the copies (appended to a hard set that has the originals)
            items.append(Item(name, "orig", kind, data, ext))
        if copies:
            for var, fn in tf.items():
                d, e = fn(im)
                items.append(Item(name, var, kind, d, e))

    pics = photos()
    if quick:
        pics = {k: pics[k] for k in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick")}
    for name, im in pics.items():
        add(name, "photo", im)
    for name, im in quadrants(pics).items():
        add(name, "quadrant", im)
    for name, im in pics.items():
        w, h = im.size
        if min(w, h) < 400:
            continue
        for k, x0 in enumerate((0.0, 0.4)):
            pname = f"{name}_pan{k}"
            add(pname, "pan", im.crop((round(w * x0), 0, round(w * (x0 + 0.6)), h)), copies=False)
            ignore.add(tuple(sorted((pname, name))))
            for q in ("q00", "q01", "q10", "q11"):  # a pan window contains half of two quadrants
                ignore.add(tuple(sorted((pname, f"{name}_{q}"))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        right = Image.fromarray(sk.stereo_motorcycle()[1])
    add("motorcycle_right", "stereo", right)
    if "motorcycle_left" in pics:
        for q in ("q00", "q01", "q10", "q11"):  # the right view's quadrants are not planted: left's quadrants vs right whole
            ignore.add(tuple(sorted(("motorcycle_right", f"motorcycle_left_{q}"))))
    for src in ("astronaut", "china"):
        if src not in pics:
            continue
        im = pics[src]
        w, h = im.size
        frames = [f"{src}_burst{f}" for f in range(10)]
        for f, fname in enumerate(frames):  # a pan in 10 frames: 70 % wide windows, 3.3 % of the width apart
            x0 = round(w * 0.3 * f / 9)
            add(fname, "burst", im.crop((x0, round(h * 0.1), x0 + round(w * 0.7), round(h * 0.9))), copies=False)
        for a, b in itertools.combinations(frames, 2):  # frames of one burst: neither positive nor negative
            ignore.add(tuple(sorted((a, b))))
        for other in [src] + [f"{src}_{q}" for q in ("q00", "q01", "q10", "q11")] + [f"{src}_pan0", f"{src}_pan1"]:
            for fname in frames:
                ignore.add(tuple(sorted((fname, other))))

    for name, (data, ext) in (blanks(seed).items() if transforms != "extra" else ()):
        items.append(Item(name, "orig", "blank", data, ext))

    rng = np.random.default_rng(seed)
    dev = cifar_dev()
    order = rng.permutation(len(dev))
    n32, n256 = (20, 10) if quick else (n_cifar32, n_cifar256)
    nd = 100 if quick else n_distractors
    for k, idx in enumerate(order[: n32 + n256 + nd]):
        stem, label, data = dev[idx]
        im = _reopen(data).convert("RGB")
        if k < n32:
            add(f"cifar32_{stem}", "cifar32", im)
        elif k < n32 + n256:
            add(f"cifar256_{stem}", "cifar256", im.resize((256, 256), Image.Resampling.BICUBIC))
        elif transforms != "extra":
            items.append(Item(f"cifar_{stem}", "orig", "cifar_distractor", data, "jpg"))
    return PlantedSet(items=items, ignore=ignore)


def decode_all(items: list[Item]) -> list[object]:
    """Every item decoded as the build does it (:func:`dsbuild.verify.decode.decode`, JPEG draft to ≥ 128 px side);
    ``min_side`` lowered to 1 so that the 16–22 px copies of CIFAR photos exist (a default build rejects < 32 px)."""
    from dsbuild.verify.decode import decode
    from dsbuild.verify.settings import VerifySettings

    settings = VerifySettings(min_side=1)
    return [decode(it.data, settings)[0] for it in items]


def truth(ps: PlantedSet) -> tuple[np.ndarray, np.ndarray]:
    """Dense (n, n) bool matrices ``pos`` (same picture, i ≠ j) and ``care`` (pair counted at all)."""
    pics = ps.pictures
    pos = pics[:, None] == pics[None, :]
    np.fill_diagonal(pos, False)
    care = np.ones_like(pos)
    np.fill_diagonal(care, False)
    if ps.ignore:
        index: dict[str, list[int]] = {}
        for i, p in enumerate(pics):
            index.setdefault(p, []).append(i)
        for a, b in ps.ignore:
            ia, ib = index.get(a, []), index.get(b, [])
            if ia and ib:
                care[np.ix_(ia, ib)] = False
                care[np.ix_(ib, ia)] = False
    return pos, care
