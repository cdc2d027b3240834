"""Perceptual hashes: exact parity with imagehash on real photos, conversions, degenerate hashes."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from helpers import skimage_photo
from PIL import Image

from dsbuild.verify import hashing

SEED = 42
IMAGEHASH = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash, "ahash": imagehash.average_hash}




PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "retina", "coins")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    out = {name: skimage_photo(name) for name in PHOTOS}
    # The build's own input: a JPEG decoded in draft mode (reduced DCT scaling), as verify does it.
    buf = io.BytesIO()
    out["retina"].save(buf, "JPEG", quality=85)
    draft = Image.open(io.BytesIO(buf.getvalue()))
    draft.draft("RGB", (256, 256))
    draft.load()
    out["retina_draft"] = draft.convert("RGB") if draft.mode != "RGB" else draft
    return out


@pytest.mark.parametrize("kind", hashing.HASH_KINDS)
def test_hash_equals_imagehash_on_real_photos(photos, kind):
    sizes = (4, 8, 16) if kind == "whash" else (4, 6, 8, 12, 16)
    for name, img in photos.items():
        for variant in (img, img.resize((img.width // 3, img.height // 3))):
            for hash_size in sizes:
                expected = str(IMAGEHASH[kind](variant, hash_size))
                got = hashing.compute_hash(variant, kind=kind, hash_size=hash_size)
                assert got == expected, (name, variant.size, kind, hash_size)
                assert len(got) == (hash_size * hash_size + 3) // 4


def test_default_is_64_bit_phash(photos):
    img = photos["astronaut"]
    assert hashing.compute_hash(img) == str(imagehash.phash(img))
    assert len(hashing.compute_hash(img)) == 16
    assert hashing.compute_bits(img).shape == (8, 8)


def test_bits_hex_roundtrip_and_integer_forms(photos):
    hexes = [hashing.compute_hash(img) for img in photos.values()]
    for h in hexes:
        assert hashing.bits_to_hex(hashing.hex_to_bits(h)) == h
        assert hashing.hash_to_int(h) == int(h, 16)
    as_u64 = hashing.hashes_to_uint64(hexes)
    assert as_u64.dtype == np.uint64
    assert [int(v) for v in as_u64] == [int(h, 16) for h in hexes]
    # Multi-word form: bits left-aligned, popcount of xor == Hamming distance.
    big = [hashing.compute_hash(img, hash_size=12) for img in photos.values()]
    words = hashing.hashes_to_words(big, 12)
    assert words.shape == (len(big), 3)
    for a in range(len(big)):
        for b in range(len(big)):
            expected = imagehash.hex_to_flathash(big[a], 12) - imagehash.hex_to_flathash(big[b], 12)
            got = int(sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(words[a], words[b])))
            assert got == expected


def test_hash_to_int_rejects_other_sizes():
    with pytest.raises(ValueError, match="64-bit"):
        hashing.hash_to_int("abc")


def test_unknown_kind_and_bad_size():
    img = Image.new("RGB", (64, 64), (10, 20, 30))
    with pytest.raises(ValueError, match="unknown hash kind 'md5'"):
        hashing.compute_hash(img, kind="md5")
    with pytest.raises(ValueError, match="at least 2"):
        hashing.compute_hash(img, hash_size=1)
    with pytest.raises(ValueError, match="power-of-two"):
        hashing.compute_hash(img, kind="whash", hash_size=6)


SOLIDS = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 40), (12, 200, 90), (1, 1, 1), (250, 250, 245)]


@pytest.mark.parametrize("kind", hashing.HASH_KINDS)
def test_solid_colours_are_degenerate(kind):
    for colour in SOLIDS:
        for size in ((320, 240), (97, 131)):
            for mode in ("RGB", "L"):
                img = Image.new("RGB", size, colour).convert(mode)
                h = hashing.compute_hash(img, kind=kind)
                assert hashing.is_degenerate(h), (kind, colour, size, mode, h)


@pytest.mark.parametrize("kind", hashing.HASH_KINDS)
def test_real_photos_are_not_degenerate(photos, kind):
    for name, img in photos.items():
        h = hashing.compute_hash(img, kind=kind)
        assert not hashing.is_degenerate(h), (name, kind, h)


def test_near_blank_noise_is_far_apart():
    """Faint noise on a flat colour hashes to random-looking phashes: not degenerate, but never near each other."""
    from dsbuild.dedup.search import DEFAULT_THRESHOLD

    rng = np.random.default_rng(SEED)
    values = []
    for base in (20, 128, 240):
        for sigma in (0.5, 2.0, 6.0):
            arr = np.clip(base + rng.normal(0, sigma, (240, 320, 3)), 0, 255).astype(np.uint8)
            values.append(hashing.hash_to_int(hashing.compute_hash(Image.fromarray(arr))))
    dists = [(a ^ b).bit_count() for k, a in enumerate(values) for b in values[k + 1 :]]
    assert min(dists) > DEFAULT_THRESHOLD


def test_is_degenerate_counts_bits():
    assert hashing.is_degenerate("0000000000000000")
    assert hashing.is_degenerate("8000000000000000")
    assert hashing.is_degenerate("ffffffffffffffff")
    assert hashing.is_degenerate("00000000000000ff")  # 8 of 64 bits
    assert not hashing.is_degenerate("00000000000001ff")  # 9 of 64 bits
    assert not hashing.is_degenerate("dd09012f534d939f")
    assert hashing.is_degenerate("0" * 64, hash_size=16)
    assert hashing.is_degenerate("0001") and not hashing.is_degenerate("00f7")  # hash_size 4: 16 bits, cut at 2
