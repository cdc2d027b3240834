"""Perceptual hashes of an already-decoded image, identical to imagehash's.

The build decodes each image once (:mod:`dsbuild.verify`, JPEGs possibly in
draft mode) and hands the normalised RGB/L image here. :func:`compute_hash`
returns the same hex string as ``str(imagehash.<kind>(img, hash_size))`` for
that image — the same Pillow conversion and LANCZOS resize, the same DCT /
Haar transform and median — so hashes stored in the catalog can be compared
with hashes computed by imagehash anywhere else. What is saved is imagehash's
per-call overhead (``ImageHash`` objects, a Python string of bits per hash)
and, mostly, the full-size decode, which is the caller's part.

For 64-bit hashes (``hash_size=8``) :func:`hash_to_int` gives the integer that
:func:`dsbuild.dedup.search.find_pairs` searches; :func:`hex_to_bits` serves any size.
:func:`is_degenerate` says which hashes (blank and solid images) are no
evidence of duplication.
"""

from __future__ import annotations

import numpy as np

from dsbuild.verify.settings import HASH_KINDS  # the kinds computed here, named as in the manifest (dedup.hash)

DEGENERATE_FRACTION = 1 / 8
"""A hash with at most this fraction of its bits set (or unset) is degenerate.

Measured (bench/dup_quality.py, tests/test_hashing.py): solid colours hash to
``8000000000000000`` (phash) or all zeros (dhash, ahash, whash); near-blank images
with faint noise hash to random-looking 32-bit-popcount phashes, harmless because
they are far from each other. Real photos' phashes always have 32 bits set (a median
split), and their dhash/ahash/whash popcounts stay above 8 of 64 on the photo set.
Any two hashes with at most 8 bits set are within 16 of each other and of the
all-zero hash, so keeping them would chain unrelated blank images into one group at
any threshold up to 16.
"""


def bits_to_hex(bits: np.ndarray) -> str:
    """imagehash's hex form of a boolean bit array: the bits, row-major, as one big number in ceil(n/4) hex digits."""
    flat = np.ascontiguousarray(bits, dtype=bool).ravel()
    n = flat.size
    packed = np.packbits(flat)  # big-endian within bytes, zero-padded at the end
    value = int.from_bytes(packed.tobytes(), "big") >> (packed.size * 8 - n)
    return format(value, f"0{(n + 3) // 4}x")


def hex_to_bits(hexstr: str, hash_size: int | None = None) -> np.ndarray:
    """The bits of an imagehash hex string as a flat bool array (row-major, as :func:`compute_hash` made them).

    ``hash_size`` gives the bit count (``hash_size**2``); without it the count is
    guessed as the largest square that fits ``4 * len(hexstr)`` bits, which is
    right for every hash_size imagehash produces.
    """
    if hash_size is None:
        hash_size = int(np.sqrt(len(hexstr) * 4))
    n = hash_size * hash_size
    value = int(hexstr, 16)
    nbytes = (n + 7) // 8
    raw = np.frombuffer((value << (nbytes * 8 - n)).to_bytes(nbytes, "big"), dtype=np.uint8)
    return np.unpackbits(raw)[:n].astype(bool)


def hash_to_int(hexstr: str) -> int:
    """A 64-bit hash (``hash_size=8``, 16 hex digits) as an int in [0, 2**64), for a ``uint64`` array.

    Bit order is imagehash's: the first hash bit is the most significant, so
    Hamming distance is ``popcount(a ^ b)`` either way.
    """
    if len(hexstr) != 16:
        raise ValueError(f"hash_to_int takes 64-bit hashes (16 hex digits), not {len(hexstr)} digits: {hexstr!r}")
    return int(hexstr, 16)


def hashes_to_uint64(hexes) -> np.ndarray:
    """Many 64-bit hex hashes as a ``uint64`` array of shape (n,), vectorised (no Python int per hash)."""
    arr = np.asarray(list(hexes), dtype="U16")
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    # 16 hex digits -> 8 bytes, big-endian; bytes.fromhex on the joined string is one C call.
    raw = bytes.fromhex("".join(arr.tolist()))
    if len(raw) != 8 * arr.size:
        raise ValueError("hashes_to_uint64 takes 64-bit hashes (16 hex digits each)")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def hashes_to_words(hexes, hash_size: int) -> np.ndarray:
    """Hashes of any size as a ``uint64`` array of shape (n, ceil(hash_size**2 / 64)), bits left-aligned.

    Hamming distance is the sum over words of ``popcount(a ^ b)``; this is the input
    of :func:`dsbuild.dedup.search.find_pairs_words`.
    """
    nbits = hash_size * hash_size
    words = (nbits + 63) // 64
    hexes = list(hexes)
    out = np.zeros((len(hexes), words), dtype=np.uint64)
    for row, h in enumerate(hexes):
        value = int(h, 16) << (words * 64 - nbits)
        for w in range(words):
            out[row, w] = (value >> (64 * (words - 1 - w))) & 0xFFFFFFFFFFFFFFFF
    return out


def popcount_hex(hexstr: str) -> int:
    """Number of set bits of a hex hash."""
    return int(hexstr, 16).bit_count()


def is_degenerate(hexstr: str, hash_size: int | None = None) -> bool:
    """True when a hash is no evidence of duplication: at most 1/8 of its bits set, or unset.

    Solid and blank images hash to (nearly) all zeros — ``8000000000000000`` for
    phash, ``0`` for dhash/ahash/whash — so any two of them would look identical.
    See :data:`DEGENERATE_FRACTION` for the measurement behind the cut.
    """
    if hash_size is None:
        hash_size = int(np.sqrt(len(hexstr) * 4))  # imagehash pads n bits to ceil(n/4) hex digits
    nbits = hash_size * hash_size
    k = int(nbits * DEGENERATE_FRACTION)
    pop = popcount_hex(hexstr)
    return pop <= k or pop >= nbits - k


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS


def to_gray(img):
    """``img`` as mode L, exactly as imagehash converts it (``img.convert("L")``); an L image is returned as is.

    Pass the result as ``gray=`` to :func:`compute_hash` and
    :func:`dsbuild.verify.quality.scores` so one image is converted once (~0.2 ms at 640×480).
    """
    return img if img.mode == "L" else img.convert("L")


_gray = to_gray


def _phash_bits(img, hash_size: int) -> np.ndarray:
    import scipy.fftpack  # the very transform imagehash uses: float-identical coefficients, ties included

    size = hash_size * 4
    pixels = np.asarray(_gray(img).resize((size, size), _lanczos()))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:hash_size, :hash_size]
    return low > np.median(low)


def _dhash_bits(img, hash_size: int) -> np.ndarray:
    pixels = np.asarray(_gray(img).resize((hash_size + 1, hash_size), _lanczos()))
    return pixels[:, 1:] > pixels[:, :-1]


def _ahash_bits(img, hash_size: int) -> np.ndarray:
    pixels = np.asarray(_gray(img).resize((hash_size, hash_size), _lanczos()))
    return pixels > pixels.mean()


def _whash_bits(img, hash_size: int) -> np.ndarray:
    import pywt

    # imagehash.whash(image, hash_size) with its defaults: image_scale from the image's
    # shorter side, haar, the lowest LL band removed. Same operations, same floats.
    if hash_size & (hash_size - 1):
        raise ValueError(f"whash needs a power-of-two hash_size, not {hash_size}")
    natural = 2 ** int(np.log2(min(img.size)))
    scale = max(natural, hash_size)
    ll_max_level = int(np.log2(scale))
    level = int(np.log2(hash_size))
    pixels = np.asarray(_gray(img).resize((scale, scale), _lanczos())) / 255.0
    coeffs = list(pywt.wavedec2(pixels, "haar", level=ll_max_level))
    coeffs[0] *= 0
    pixels = pywt.waverec2(coeffs, "haar")
    low = pywt.wavedec2(pixels, "haar", level=ll_max_level - level)[0]
    return low > np.median(low)


_BITS = {"phash": _phash_bits, "dhash": _dhash_bits, "whash": _whash_bits, "ahash": _ahash_bits}


def compute_bits(img, *, kind: str = "phash", hash_size: int = 8, gray=None) -> np.ndarray:
    """The hash of ``img`` as a bool array of shape (hash_size, hash_size); ``gray``: :func:`to_gray` of it, if at hand."""
    try:
        fn = _BITS[kind]
    except KeyError:
        raise ValueError(f"unknown hash kind {kind!r}; known: {', '.join(HASH_KINDS)}") from None
    if hash_size < 2:
        raise ValueError(f"hash_size must be at least 2, not {hash_size}")
    # Every kind starts from the L image; whash also reads the size, which L keeps.
    return fn(gray if gray is not None else to_gray(img), hash_size)


def compute_hash(img, *, kind: str = "phash", hash_size: int = 8, gray=None) -> str:
    """Perceptual hash of a decoded PIL image (mode RGB or L) as imagehash's hex string.

    ``kind`` is one of :data:`HASH_KINDS` (default ``"phash"``); ``hash_size``
    (default 8) gives ``hash_size**2`` bits, i.e. ``ceil(hash_size**2 / 4)`` hex
    digits. Equal to ``str(imagehash.<kind>(img, hash_size))`` for the same image.
    ``gray`` is ``to_gray(img)`` when the caller already has it (it is shared with
    :func:`dsbuild.verify.quality.scores`); it must be that exact image.
    """
    return bits_to_hex(compute_bits(img, kind=kind, hash_size=hash_size, gray=gray))
