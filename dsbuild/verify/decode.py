"""Decoding: every image is decoded once, fully, under limits, or rejected with a reason.

:func:`decode` is :func:`dsbuild.verify.decoders.decode_checked`: the content
names the format (:mod:`dsbuild.formats`, the one table), the structure is read
before the pixels (:mod:`dsbuild.verify.containers`: chunk checksums, every
frame's declared size), every decoder message is kept with its file, metadata
never costs the picture; a bad file raises :class:`Rejected` with a short
reason (one of :data:`REASONS`). :mod:`dsbuild.verify.analyze` builds the
per-image record on top of it.

The one decode is shared by verification, pixel hashing, perceptual hashing
and quality scores. JPEGs are decoded with DCT scaling (Pillow's draft mode,
bit for bit) to at least ``ANALYSIS_SIDE`` pixels: the whole entropy-coded
stream is still read, so truncation and corruption are still detected, but
the IDCT and colour conversion run on a fraction of the pixels.
"""

from __future__ import annotations

import hashlib
import os

from dsbuild.verify.decoders import Rejected, decode_checked, normalise, pixel_limit  # noqa: F401 - Rejected: public here
from dsbuild.verify.settings import VerifySettings

# Reasons are short, stable categories (GROUP BY friendly); details go to ``detail``.
REASONS = (
    "empty file",
    "too large",
    "not an image",
    "unsupported format",
    "decompression bomb",
    "corrupt",
    "truncated",
    "too small",
    "odd aspect ratio",
    "unreadable",
    "not a file",
    "timeout",
)

#: The verifier's revision: which images dsbuild's own checks accept or reject, and how it reads their pixels.
#: RAISE IT (by one) with every change to a check that can turn an image's outcome (ok ↔ a reason, one reason for
#: another) or the pixels it reads (hashes, quality scores, the exact-duplicate key) — not for messages, speed or
#: refactoring. A build records it with the dataset's verify settings (:func:`dsbuild.pipeline.settings_sections`);
#: the first build after it changed verifies every catalogued image again from the files on disk (folder files from
#: their folder, downloads from the store: nothing is downloaded again) and says how many outcomes changed. A
#: catalog whose last build recorded no revision was verified by revision 1.
#:
#: 1: every release before the record (no revision recorded).
#: 2: junk inside JPEG scan data is corrupt; a PNG zlib stream ending before its rows is truncated; progressive
#:    and sequential JPEG scans must code every coefficient (truncated); every later frame of a GIF, TIFF or MPO is
#:    decoded (strict libjpeg for MPO); metadata-only faults are repaired (stripped copy kept) instead of rejected;
#:    16-bit greyscale is scaled by the depth its data uses; a palette index past the palette is corrupt (first
#:    frames); APNG frame data (fdAT) and frame count, animated WebP frames, TIFF deflate strips (Adler-32), TIFF
#:    tile/strip sizes (bombs) and directories/offsets past the end (truncated), and BMP RLE streams are checked.
#: 3: a palette index past the palette is corrupt in later frames too (every later GIF frame decoded, APNG frames
#:    of a palette PNG, under the later-frame caps).
VERIFIER_REVISION = 3

ANALYSIS_SIDE = 128
"""Smallest side that JPEG draft decoding keeps; enough for 32×32 hashes and 64 px blur scores.

Measured by ``bench/hashing.py`` on 1024×768…1600×1200 photos: phash vs a full decode p95 2 bits
(the same at 256), and 1.4 ms less per image than at 256."""


def decode(data: bytes, settings: VerifySettings, *, analysis_side: int | None = ANALYSIS_SIDE):
    """Decode ``data`` under ``settings``; return ``(image, info)`` or raise :class:`Rejected`.

    ``image`` is normalised (see :func:`normalise`), possibly reduced by JPEG draft
    mode to at least ``analysis_side`` pixels on its shorter side (None: full size).
    ``info`` has format (the family: MPO is JPEG), width and height (as displayed,
    at full size), mode (original), frames, warnings. The rules are
    :func:`dsbuild.verify.decoders.decode_checked`'s.
    """
    return decode_checked(data, settings, analysis_side=analysis_side)


def pixel_digest(img) -> str:
    """sha256 of the decoded pixels (mode, size, raw bytes): equal for the same picture in any lossless encoding."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def load_rgb(path: str | os.PathLike, *, verify: VerifySettings | None = None):
    """Open an image for training/prediction: EXIF orientation applied, RGB, first frame.

    Through :func:`dsbuild.formats.open_image`: the content is sniffed and must
    be an allowed format (``verify.formats``, default every family) within
    ``verify.max_pixels``/``max_bytes``; anything else raises
    :class:`dsbuild.formats.Refused` before a decoder sees it (an EPS named
    ``.jpg`` never reaches Ghostscript).

    A file whose reader refuses it is decoded as verification decodes it
    (:func:`decode`, full size): one whose only fault is metadata (a short
    JFIF segment, a wrong-length pHYs chunk) gives its picture, as the build
    kept it; anything else raises :class:`dsbuild.formats.Refused` with verification's reason and detail (the
    build's words for the same file). High-bit-depth images
    are scaled as verification scales them (:func:`normalise`).
    """
    from dsbuild.formats import Refused, open_image

    v = verify or VerifySettings()
    try:
        with pixel_limit(v.max_pixels), open_image(path, allowed=v.formats, max_pixels=v.max_pixels,
                                                    max_bytes=v.max_bytes) as img:
            img.load()
            out = normalise(img)
    except Refused as exc:
        if exc.reason != "corrupt":  # sniffed and refused, or over a limit: no decoder may see it
            raise
        out = _decoded_anyway(path, v, exc)
    except (OSError, ValueError, SyntaxError) as exc:
        out = _decoded_anyway(path, v, exc)
    return out.convert("RGB") if out.mode != "RGB" else out


def _decoded_anyway(path, v: VerifySettings, exc: BaseException):
    """The picture of a file its reader refused, by :func:`decode` (which drops refused metadata); else why not, in
    the build's words: :class:`dsbuild.formats.Refused` with verification's reason and detail (a cut JPEG is
    ``truncated`` here as in the build and the app, not ``corrupt: JPEG header cannot be read`` — trial 10)."""
    from dsbuild.formats import Refused

    try:
        with open(path, "rb") as fh:
            data = fh.read(v.max_bytes + 1)
        img, _info = decode(data, v, analysis_side=None)
    except Rejected as rej:
        raise Refused(rej.reason, rej.detail, rej.info) from None
    except OSError:
        raise exc from None
    return img
