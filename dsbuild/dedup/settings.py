"""The dedup stage's settings: the manifest's ``[datasets.NAME.dedup]`` table."""

from __future__ import annotations

from dataclasses import dataclass

from dsbuild.errors import Problem, check, did_you_mean
from dsbuild.verify.settings import HASH_KINDS

HASH_SIZES = (4, 6, 8, 12, 16)
EMBED_ARCHS = ("efficientnet_lite0",)
"""Backbones whose ImageNet weights ship with a pip package, so embeddings work offline (:mod:`dsbuild.model.features`)."""


@dataclass(frozen=True, kw_only=True)
class DedupSettings:
    """Perceptual hashing, near-duplicate grouping and the embedding signals.

    ``hash`` (default ``"phash"``, one of :data:`~dsbuild.verify.settings.HASH_KINDS`)
    of ``hash_size``² bits (default 8: 64 bits). ``threshold`` is the largest Hamming
    distance between two hashes that makes them near duplicates (default 10,
    :data:`dsbuild.dedup.search.DEFAULT_THRESHOLD`, measured by bench/dup_quality.py;
    0 keeps exact duplicates only); ``near = false`` skips the near-duplicate search.
    ``cross_class`` says what to do with a group whose members carry different labels:
    ``"flag"`` marks it as a label conflict for review (nothing is dropped silently).

    Two signals (:mod:`dsbuild.dedup.neardup`, measured by bench/dup_semantic.py):

    * ``views`` (default true): the phash of each image's mirror, three rotations and
      central crops 90/80/70 % are compared with the other images' phash too; a
      mirror/rotation view within ``view_threshold`` bits (default 4) or a crop view within
      ``crop_threshold`` bits (default 6) makes a hash candidate (64-bit phash only);
    * ``semantic`` (default true): every accepted image gets an embedding
      (``embed_arch`` ImageNet features at ``embed_size`` px, cached per blob); a hash
      candidate is a near duplicate only when the embeddings' cosine is at least
      ``confirm[k]``, where ``k`` is the first ``confirm_sides[k]`` (px) above the
      *effective side* of the less detailed image of the pair (defaults
      ``[0.99, 0.97, 0.80, 0.40]`` for ``[12, 24, 64]`` px: small or simple images need
      near-identical embeddings — different digits rendered at 48 px reach cosine 0.97–0.99). Embedding neighbours with cosine ≥ ``similarity`` (default 0.85) whose
      pixels line up (a window of one hashes like the other) are near duplicates too.
      A hash candidate the embeddings do not confirm is still a near duplicate when both
      images hold at least ``pixel_confirm_side`` px of detail (default 16) and their grey
      thumbnails, one turned by a view (mirror, rotation, central crop) and both shrunk to
      the detail the less detailed one holds, correlate at ``pixel_confirm`` or more
      (Pearson, default 0.985): copies of 32-px photos (colour shift, grayscale, rotation)
      move their embeddings as far as two different thumbnails, but not their pixels.
      bench/dup_semantic.py: different digits (8–12 px of detail) correlate up to 0.99, so
      they are left out by the side; hard negatives of the planted set reach 0.974.
      Every link so found between two images that both hold at least
      ``detail_confirm_side`` px of detail (default 24) must also share their *fine
      detail*: once lined up (a mirror or rotation, then a crop of any share ~0.55–1.0,
      anywhere, or the overlap of two crops), the thumbnails less their Gaussian blur
      correlate at ``detail_confirm`` or more (Pearson, default 0.85; 0 turns the check
      off). Two pictures that share only their layout — a stereo pair, the mirrored quadrants
      of a round object — have near embeddings and near hashes but different detail
      (:func:`dsbuild.dedup.align.detail_correlation`). For such images the check decides
      alone: a hash candidate that shares its detail is a near duplicate whatever its
      embedding (a JPEG-worn copy of a 32-px photo), and an embedding neighbour needs no
      window check (crops combined with a mirror, off-centre crops); ``confirm`` and
      ``pixel_confirm`` then serve the less detailed images (bench/dup_semantic.py).
      ``detail_similarity`` (default 0.85: off): an image and its *nearest* embedding neighbour that both
      hold ≥ ``detail_confirm_side`` px of detail are detail-checked from this cosine up, below
      ``similarity``: a copy cropped off centre from a 32-px photo and resized back is missed by the
      hash views (central crops) by 12–36 bits and moves its embedding to cosine 0.6–0.85 from its
      original, while it keeps its fine detail (0.94–0.98); ``similarity`` or more: off. Off by
      default (bench/dup_semantic.py ``--detail-similarity``, 2026-12-01: at 0.6–0.7 the easy set's
      watermarked copies gain 10 false pairs and the links cost 12–29 ms per CIFAR image against 0.6).
      ``outlier_k`` (default 60) neighbours give cleanlab's ``outlier_score``.

    ``group_warning`` (default 0.2): the build and ``status`` warn when more than this share
    of a dataset's images are near duplicates.
    """

    hash: str = "phash"
    hash_size: int = 8
    threshold: int = 10
    near: bool = True
    cross_class: str = "flag"
    views: bool = True
    view_threshold: int = 4
    crop_threshold: int = 6
    semantic: bool = True
    embed_arch: str = "efficientnet_lite0"
    embed_size: int = 160
    confirm: tuple[float, ...] = (0.99, 0.97, 0.80, 0.40)
    confirm_sides: tuple[float, ...] = (12.0, 24.0, 64.0)
    similarity: float = 0.85
    detail_similarity: float = 0.85
    pixel_confirm: float = 0.985
    pixel_confirm_side: float = 16.0
    detail_confirm: float = 0.85
    detail_confirm_side: float = 24.0
    outlier_k: int = 60
    group_warning: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "confirm", tuple(self.confirm) if isinstance(self.confirm, list) else self.confirm)
        object.__setattr__(self, "confirm_sides",
                           tuple(self.confirm_sides) if isinstance(self.confirm_sides, list) else self.confirm_sides)
        check(self.problems(), table="dedup")

    def problems(self) -> list[Problem]:
        """Every bad value, in field order (empty when the settings are valid)."""
        out = []
        if self.hash not in HASH_KINDS:
            out.append(Problem("hash", f"unknown hash '{self.hash}'{did_you_mean(str(self.hash), HASH_KINDS)} — "
                                       f"known: {', '.join(HASH_KINDS)}"))
        if self.hash_size not in HASH_SIZES or isinstance(self.hash_size, bool):
            out.append(Problem("hash_size", f"must be one of {', '.join(map(str, HASH_SIZES))}, not {self.hash_size}"))
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or not 0 <= self.threshold <= 32:
            out.append(Problem("threshold", f"must be between 0 and 32, not {self.threshold}"))
        for name in ("near", "views", "semantic"):
            if not isinstance(getattr(self, name), bool):
                out.append(Problem(name, f"must be true or false, not {getattr(self, name)!r}"))
        if self.cross_class not in ("flag",):
            out.append(Problem("cross_class", f"must be 'flag', not {self.cross_class!r}"))
        for name in ("view_threshold", "crop_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 16:
                out.append(Problem(name, f"must be between 0 and 16 (bits), not {v}"))
        if self.embed_arch not in EMBED_ARCHS:
            out.append(Problem("embed_arch", f"unknown embedding backbone '{self.embed_arch}'"
                                             f"{did_you_mean(str(self.embed_arch), EMBED_ARCHS)} — known: "
                                             f"{', '.join(EMBED_ARCHS)}"))
        if isinstance(self.embed_size, bool) or not isinstance(self.embed_size, int) or not 64 <= self.embed_size <= 512:
            out.append(Problem("embed_size", f"must be between 64 and 512 (px), not {self.embed_size}"))
        conf, sides = self.confirm, self.confirm_sides
        if not isinstance(conf, tuple) or not conf or not all(_number(c) and -1 <= c <= 1 for c in conf):
            out.append(Problem("confirm", f"must be a list of cosines between -1 and 1, not {list(conf) if isinstance(conf, tuple) else conf!r}"))
        elif not isinstance(sides, tuple) or len(sides) != len(conf) - 1:
            out.append(Problem("confirm_sides", f"must have one entry fewer than confirm ({len(conf) - 1} side(s) in px "
                                                f"for {len(conf)} cosines), not {list(sides) if isinstance(sides, tuple) else sides!r}"))
        if isinstance(sides, tuple) and not (all(_number(s) and s > 0 for s in sides)
                                             and all(a < b for a, b in zip(sides, sides[1:]))):
            out.append(Problem("confirm_sides", f"must be increasing positive sides in px, not {list(sides)}"))
        if not _number(self.similarity) or not 0 < self.similarity <= 1:
            out.append(Problem("similarity", f"must be a cosine between 0 and 1, not {self.similarity}"))
        if not _number(self.detail_similarity) or not 0 < self.detail_similarity <= 1:
            out.append(Problem("detail_similarity", f"must be a cosine between 0 and 1, not {self.detail_similarity}"))
        if not _number(self.pixel_confirm) or not 0 < self.pixel_confirm <= 1:
            out.append(Problem("pixel_confirm", f"must be a correlation between 0 and 1, not {self.pixel_confirm}"))
        if not _number(self.pixel_confirm_side) or not self.pixel_confirm_side > 0:
            out.append(Problem("pixel_confirm_side", f"must be a positive side in px, not {self.pixel_confirm_side}"))
        if not _number(self.detail_confirm) or not 0 <= self.detail_confirm <= 1:
            out.append(Problem("detail_confirm",
                               f"must be a correlation between 0 and 1 (0: off), not {self.detail_confirm}"))
        if not _number(self.detail_confirm_side) or not self.detail_confirm_side > 0:
            out.append(Problem("detail_confirm_side", f"must be a positive side in px, not {self.detail_confirm_side}"))
        if isinstance(self.outlier_k, bool) or not isinstance(self.outlier_k, int) or not 1 <= self.outlier_k <= 1000:
            out.append(Problem("outlier_k", f"must be between 1 and 1000, not {self.outlier_k}"))
        if not _number(self.group_warning) or not 0 < self.group_warning <= 1:
            out.append(Problem("group_warning", f"must be a share between 0 and 1, not {self.group_warning}"))
        return out

    def confirm_for(self, side: float) -> float:
        """The cosine that confirms a hash candidate whose less detailed image has effective side ``side`` px."""
        for bound, cos in zip(self.confirm_sides, self.confirm):
            if side < bound:
                return cos
        return self.confirm[-1]


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
