"""Near duplicates from two signals (phash views + embeddings), outliers and "similar", on real pictures.

Real photos (scikit-image) with planted hard copies — mirror, 90° rotation, 80 % central crop,
grayscale — must each form exactly one group; real digits (scikit-learn's load_digits, rendered
at 48 px, bicubic and nearest-neighbour) must not collapse with the default settings; planted
photos among the digits must be the outliers; the embedding cache is reused, not recomputed;
bad inputs get clear errors. One build of two small datasets (~270 images) serves the module.
"""

from __future__ import annotations

import io

import dataclasses
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
import pytest
from helpers import photo_quadrant, run_cli, skimage_photo
from PIL import Image

from dsbuild.catalog import Catalog
from dsbuild.dedup import align, neardup
from dsbuild.dedup.settings import DedupSettings
from dsbuild.errors import SettingsError
from dsbuild.manifest import load_manifest

PHOTOS = {"a": ("astronaut", "coffee", "chelsea"), "b": ("rocket", "camera", "coins")}
COPIES = ("flip", "rot90", "crop80", "gray")
OUTLIER_PHOTOS = ("rocket", "coffee", "chelsea")


def _copies(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    dx, dy = round(w * 0.1), round(h * 0.1)
    return {"flip": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "rot90": img.transpose(Image.Transpose.ROTATE_90),
            "crop80": img.crop((dx, dy, w - dx, h - dy)), "gray": img.convert("L")}


def _digits(n: int) -> list[tuple[int, Image.Image]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for k in range(n):
        arr = (d.images[k] * (255.0 / 16.0)).round().astype(np.uint8)
        resample = Image.Resampling.BICUBIC if k % 2 == 0 else Image.Resampling.NEAREST
        out.append((int(d.target[k]), Image.fromarray(arr, mode="L").resize((48, 48), resample)))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A manifest with ``photos`` (6 photos × 5 files) and ``digits`` (240 digits + 3 planted photos), built once."""
    from dsbuild.pipeline import build

    root = tmp_path_factory.mktemp("semantic")
    for label, names in PHOTOS.items():
        folder = root / "photos" / label
        folder.mkdir(parents=True)
        for name in names:
            img = skimage_photo(name).convert("RGB")
            img.save(folder / f"{name}.png")
            for var, copy in _copies(img).items():
                copy.save(folder / f"{name}_{var}.jpg" if var != "gray" else folder / f"{name}_{var}.png", quality=92)
    for k, (digit, img) in enumerate(_digits(240)):
        folder = root / "digits" / ("even" if digit % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"digit{k:04d}.png")
    for name in OUTLIER_PHOTOS:
        skimage_photo(name).convert("RGB").resize((96, 96)).save(root / "digits" / "even" / f"photo_{name}.png")
    manifest = root / "datasets.toml"
    manifest.write_text(
        '[datasets.photos]\nclasses = { a = { folders = ["photos/a"] }, b = { folders = ["photos/b"] } }\n'
        '[datasets.digits]\nclasses = { even = { folders = ["digits/even"] }, odd = { folders = ["digits/odd"] } }\n')
    m = load_manifest(manifest)
    summary = build(m, workers=2)
    return m, summary


def _images(m, dataset: str):
    with Catalog.open_readonly(m.catalog) as cat:
        return cat.images(dataset)


def test_hard_copies_of_photos_are_found_and_never_cross_pictures(built):
    m, _ = built
    df = _images(m, "photos")
    df["picture"] = [Path(o).stem.split("_")[0] for o in df["origin"]]
    assert (df["status"] != "rejected").all()
    whole = []
    for picture, grp in df.groupby("picture"):
        assert grp["split"].nunique() == 1, picture  # every copy is linked: one split unit, no leakage
        if grp["dup_group"].notna().all() and grp["dup_group"].nunique() == 1:
            whole.append(picture)
            assert (grp["status"] == "ok").sum() == 1 and (grp["status"] == "duplicate").sum() == len(COPIES)
    groups = df.dropna(subset=["dup_group"]).groupby("dup_group")["picture"].nunique()
    assert (groups == 1).all()  # no group mixes two photos
    assert not df["conflict"].any()
    # Every duplicate is a copy of its own picture. (Groups form around representatives, dsbuild.dedup.grouping:
    # the sharpest first, then the one with fewer links — with hash views a family of edits splits into several
    # groups in one split unit; measured: 1 of 6 families here is one group. Issue 17's report: order by most
    # links, as bench/dup_semantic.py groups, and every family is one group.)
    pictures = dict(zip(df["image_id"], df["picture"]))
    dups = df[df["status"] == "duplicate"]
    assert len(dups) >= len(PHOTOS["a"]) + len(PHOTOS["b"])
    assert all(pictures[rep] == pic for rep, pic in zip(dups["dup_of"], dups["picture"]))
    assert "astronaut" in whole


def test_digits_are_not_collapsed_with_the_defaults(built):
    m, summary = built
    df = _images(m, "digits")
    near = df[df["reason"] == "near duplicate"]
    # 243 real, different pictures: with the phash alone (the old default) 76 of them were marked near duplicates.
    assert len(near) == 0, near[["origin", "dup_of", "dup_distance"]]
    digits_summary = next(s for s in summary.datasets if s.dataset == "digits")
    assert not any("near duplicates, more than" in n for n in digits_summary.notes)


def test_phash_alone_would_collapse_the_same_digits(built):
    """The baseline the defaults fix, measured on the same catalog rows: phash ≤ 10 links many different digits."""
    m, _ = built
    from dsbuild.pipeline import near_pairs_for

    ds = dataclasses.replace(m.dataset("digits"), dedup=DedupSettings(views=False, semantic=False))
    with Catalog.open_readonly(m.catalog) as cat:
        items = cat.dataset_items("digits")
    pairs = near_pairs_for(items, ds)
    assert pairs is not None and len({int(i) for p in pairs for i in p[:2]}) > 50


def test_planted_photos_are_the_outliers_of_the_digits(built):
    m, _ = built
    df = _images(m, "digits").sort_values("outlier_score")
    lowest = [Path(o).name for o in df["origin"].head(len(OUTLIER_PHOTOS))]
    assert sorted(lowest) == sorted(f"photo_{n}.png" for n in OUTLIER_PHOTOS)
    assert df.loc[df["origin"].str.contains("photo_"), "is_outlier"].all()
    assert df["outlier_score"].between(0, 1).all()


def test_signals_and_embeddings_are_stored_once_per_blob_and_reused(built):
    m, _ = built
    from dsbuild.model.embeddings import FeatureCache, FeatureSpec, features_root
    from dsbuild.pipeline import build

    spec = FeatureSpec()
    folder = features_root(m.catalog) / spec.key()
    shards = sorted(p.name for p in folder.glob("part-*.parquet"))
    cache = FeatureCache(features_root(m.catalog), spec)
    with Catalog.open_readonly(m.catalog) as cat:
        items = cat.dataset_items("digits")
    assert items["phash_views"].notna().all() and items["eff_side"].notna().all()
    from dsbuild.dedup.signals import emb_keys

    assert not cache.missing(emb_keys(items))  # each image's rows under its blob and the pixels read from it
    assert cache.get(list(emb_keys(items)[:3])).shape == (3, 1280)
    build(m, workers=2)  # nothing new: no image is decoded or embedded again
    assert sorted(p.name for p in folder.glob("part-*.parquet")) == shards


def test_similar_finds_the_copies_of_a_photo(built, capsys):
    m, _ = built
    query = m.root / "photos" / "a" / "astronaut.png"
    code, out, err = run_cli(capsys, m.path, "similar", "photos", str(query), "-k", "4", "--format", "csv")
    assert code == 0, err
    lines = out.strip().splitlines()[1:]
    assert len(lines) == 4 and all("astronaut_" in line for line in lines)
    # An outside file (not in the dataset) is verified and embedded the same way.
    outside = m.root / "outside.jpg"
    skimage_photo("coffee").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(outside, quality=80)
    code, out, err = run_cli(capsys, m.path, "similar", "photos", str(outside), "-k", "1", "--format", "csv")
    assert code == 0 and "coffee" in out.splitlines()[1], (out, err)
    # SQL users get the same neighbours from the build's search (the `neighbours` view, `@similar`).
    df = _images(m, "photos")
    astro = df.loc[df["origin"] == str(query.resolve()), "image_id"].iloc[0]
    code, out, err = run_cli(capsys, m.path, "query", f"SELECT n.origin FROM neighbours k JOIN images n ON "
                             f"n.image_id = k.neighbour_id WHERE k.image_id = '{astro}' AND k.rank <= 4", "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == 5 and out.count("astronaut_") == 4, (out, err)
    assert run_cli(capsys, m.path, "query", "@similar", "--format", "csv")[0] == 0


@pytest.mark.parametrize("args, message", [
    (("similar", "photos", "no-such-id"), "is neither an image_id (or the start of one) of dataset 'photos' nor an image file"),
    (("similar", "photos", "{text}"), "is not an image dsbuild accepts"),
    (("similar", "photos", "{astronaut}", "-k", "0"), "-k must be a whole number ≥ 1"),
    (("similar", "nope", "x"), "no dataset 'nope'"),
    (("embed", "nope"), "no dataset 'nope'"),
])
def test_bad_inputs_get_clear_errors(built, capsys, args, message):
    m, _ = built
    text = m.root / "notes.jpg"
    text.write_text("not an image at all")
    args = tuple(a.format(text=text, astronaut=m.root / "photos" / "a" / "astronaut.png") for a in args)
    code, out, err = run_cli(capsys, m.path, *args)
    assert code != 0 and err.startswith("Error: ") and message in err and "Traceback" not in err


def test_embed_fills_the_cache_of_a_dataset_built_without_semantic(tmp_path, capsys):
    for k, (digit, img) in enumerate(_digits(12)):
        folder = tmp_path / ("even" if digit % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        img.save(folder / f"d{k}.png")
    manifest = tmp_path / "datasets.toml"
    manifest.write_text('[datasets.d]\nclasses = { even = { folders = ["even"] }, odd = { folders = ["odd"] } }\n'
                        '[datasets.d.dedup]\nsemantic = false\n')
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    code, out, err = run_cli(capsys, manifest, "similar", "d", "x")
    assert code == 2 or code == 1
    assert "has no embeddings yet — run `dsbuild embed d`" in err
    code, out, err = run_cli(capsys, manifest, "embed", "d", "-q")
    assert code == 0, err
    m = load_manifest(manifest)
    df = _images(m, "d")
    assert df["outlier_score"].notna().sum() == (df["status"] == "ok").sum() == 12
    code, out, err = run_cli(capsys, manifest, "similar", "d", df["image_id"].iloc[0], "-k", "3", "--format", "json")
    assert code == 0 and out.count('"image_id"') == 3


# --------------------------------------------------------------------------- pure functions


def test_views_find_mirror_rotation_and_crop_that_the_phash_misses():
    from dsbuild.verify.hashing import compute_hash, hash_to_int

    img = skimage_photo("chelsea").convert("RGB")
    full = neardup.phash_views(img)["full"]
    assert full == hash_to_int(compute_hash(img))  # the same phash as the build's
    for name, copy in _copies(img).items():
        other = hash_to_int(compute_hash(copy))
        plain = int(np.bitwise_count(np.uint64(full) ^ np.uint64(other)))
        views = neardup.phash_views(img)
        best = min(int(np.bitwise_count(np.uint64(views[v]) ^ np.uint64(other))) for v in ("full", *neardup.VIEW_NAMES))
        if name != "gray":
            assert plain > 10, name  # the phash alone misses it
        assert best <= 6, (name, best)


def test_effective_side_sees_through_upscaling():
    digits = [img for _, img in _digits(6)]
    assert all(neardup.effective_side(d) <= 16 for d in digits)  # 8 × 8 drawings rendered at 48 px
    photo = skimage_photo("astronaut").convert("RGB")
    assert neardup.effective_side(photo.resize((128, 128))) >= 64
    tiny = photo.resize((32, 32), Image.Resampling.BOX)
    assert neardup.effective_side(tiny.resize((256, 256), Image.Resampling.BICUBIC)) <= 64


def test_window_match_accepts_an_off_centre_crop_and_rejects_another_quadrant():
    img = skimage_photo("astronaut").convert("RGB")  # (coffee's off-centre crop misses the window grid by 4 bits:
    w, h = img.size                                    # bench/dup_semantic.py measures how often that happens)
    cw, ch = round(w * 0.8), round(h * 0.8)  # an 80 % crop whose centre moved 7 % right and down: off the view grid
    x0, y0 = round((w - cw) / 2 + 0.07 * w), round((h - ch) / 2 + 0.07 * h)
    off = img.crop((x0, y0, x0 + cw, y0 + ch))
    quad = img.crop((0, 0, w // 2, h // 2))
    thumbs = [neardup.thumbnail(x) for x in (img, off, quad, img.crop((w // 2, h // 2, w, h)))]
    ok = neardup.window_match(lambda i: thumbs[i], np.array([[0, 1], [2, 3]]))
    assert ok.tolist() == [True, False]


def test_similar_is_exact_and_leaves_the_query_out():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    exclude = np.zeros(50, dtype=bool)
    exclude[7] = True
    rows, sims = neardup.similar(emb, emb[7], 5, exclude=exclude)
    brute = np.argsort(-(emb @ emb[7]))[1:6]
    assert rows.tolist() == brute.tolist() and 7 not in rows and np.all(np.diff(sims) <= 0)


@pytest.mark.parametrize("table, message", [
    ('embed_arch = "efficientnet_lit0"', "did you mean 'efficientnet_lite0'?"),
    ('view_treshold = 3', "did you mean 'view_threshold'"),
    ('semantic = "yes"', "must be true or false"),
    ('confirm = [0.9, 0.5]', "confirm_sides: must have one entry fewer than confirm"),
    ('confirm_sides = [64, 24, 12]', "confirm_sides: must be increasing positive sides"),
    ('similarity = 1.5', "similarity: must be a cosine between 0 and 1"),
    ('confirm = "high"', "confirm: must be a list of numbers"),
    ('embed_size = 16', "embed_size: must be between 64 and 512"),
    ('pixel_confirm = 1.5', "pixel_confirm: must be a correlation between 0 and 1, not 1.5"),
    ('pixel_confirm = "high"', "pixel_confirm: must be a number, not 'high'"),
    ('pixel_confirm_side = 0', "pixel_confirm_side: must be a positive side in px, not 0"),
    ('pixel_confim_side = 12', "did you mean 'pixel_confirm_side'?"),
    ('detail_confirm = -0.1', "detail_confirm: must be a correlation between 0 and 1 (0: off), not -0.1"),
    ('detail_confirm = true', "detail_confirm: must be a number, not True"),
    ('detail_confirm_side = -4', "detail_confirm_side: must be a positive side in px, not -4"),
    ('detail_confrm = 0.9', "did you mean 'detail_confirm'?"),
])
def test_dedup_settings_are_checked_at_load(tmp_path, table, message):
    from dsbuild.errors import ManifestError

    (tmp_path / "a").mkdir()
    manifest = tmp_path / "datasets.toml"
    manifest.write_text(f'[datasets.d]\nclasses = {{ x = {{ folders = ["a"] }}, y = {{ folders = ["a"] }} }}\n'
                        f'[datasets.d.dedup]\n{table}\n')
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest)
    assert "datasets.d.dedup." in str(err.value) and message in str(err.value)


def test_confirmation_is_stricter_for_less_detail():
    s = DedupSettings()
    assert [s.confirm_for(x) for x in (8, 12, 32, 64, 500)] == [0.99, 0.97, 0.80, 0.40, 0.40]
    with pytest.raises(SettingsError):
        DedupSettings(confirm=(0.9,), confirm_sides=(10.0,))


def test_feature_cache_round_trip_is_float16_and_atomic(tmp_path):
    from dsbuild.model.embeddings import FeatureCache, FeatureSpec

    spec = FeatureSpec()
    cache = FeatureCache(tmp_path, spec)
    rows = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    cache.put(["a", "b", "c"], rows)
    again = FeatureCache(tmp_path, spec)
    assert len(again) == 3 and again.missing(["a", "z", "z"]) == ["z"]
    assert np.allclose(again.get(["c", "a"]), rows[[2, 0]], atol=1e-2)
    assert not list((tmp_path / spec.key()).glob(".*tmp"))
    with pytest.raises(ValueError):
        FeatureSpec(resize="stretch")
    with pytest.raises(ValueError):
        cache.put(["x"], rows)
    # A run's shards (one per chunk) are merged into one at its end; the rows read back the same.
    shards = [cache.put([f"m{i}"], rows[i:i + 1]) for i in range(3)]
    cache.merge(shards)
    assert [p.exists() for p in shards] == [False] * 3
    assert len(list((tmp_path / spec.key()).glob("part-*.parquet"))) == 2
    merged = FeatureCache(tmp_path, spec)
    assert len(merged) == 6 and np.array_equal(merged.get(["m0", "m1", "m2"]), again.get(["a", "b", "c"]))


# --------------------------------------------------------------------------- copies of 32-px photos


SMALL = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "camera", "coins")


def _warm(img: Image.Image) -> Image.Image:
    """A strong warm filter (bench/planted_hard.py's colour shift): R ×1.25, B ×0.75, saturation ×1.4, contrast ×1.2."""
    from PIL import ImageEnhance

    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    arr = np.clip(arr * np.array([1.25, 1.0, 0.75], dtype=np.float32), 0, 255).astype(np.uint8)
    return ImageEnhance.Contrast(ImageEnhance.Color(Image.fromarray(arr)).enhance(1.4)).enhance(1.2)


@pytest.fixture(scope="module")
def small_built(tmp_path_factory):
    """8 real photos shrunk to 32 × 32 (CIFAR's size), each with a colour-shifted, a grayscale, a rotated and a
    mirrored copy, in two classes; built with the default settings."""
    from dsbuild.pipeline import build

    root = tmp_path_factory.mktemp("small")
    for k, name in enumerate(SMALL):
        folder = root / "thumbs" / ("a" if k % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        img = skimage_photo(name).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
        img.save(folder / f"{name}.png")
        _warm(img).save(folder / f"{name}_colour.png")
        img.convert("L").save(folder / f"{name}_gray.png")
        img.transpose(Image.Transpose.ROTATE_90).save(folder / f"{name}_rot90.png")
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{name}_flip.png")
    manifest = root / "datasets.toml"
    manifest.write_text('[datasets.thumbs]\nclasses = { a = { folders = ["thumbs/a"] }, b = { folders = ["thumbs/b"] } }\n'
                        '[datasets.thumbs.verify]\nmin_side = 16\n')
    m = load_manifest(manifest)
    build(m, workers=2)
    return m


def test_copies_of_32px_photos_are_found_by_their_pixels_and_never_cross_pictures(small_built):
    df = _images(small_built, "thumbs")
    df["picture"] = [Path(o).stem.split("_")[0] for o in df["origin"]]
    assert len(df) == 5 * len(SMALL) and (df["status"] != "rejected").all()
    # every copy is a near duplicate of its own picture: 4 per picture, one image of each picture stays
    assert (df.groupby("picture")["status"].apply(lambda s: (s == "ok").sum()) == 1).all()
    dups = df[df["status"] == "duplicate"]
    pictures = dict(zip(df["image_id"], df["picture"]))
    assert len(dups) == 4 * len(SMALL)
    assert all(pictures[rep] == pic for rep, pic in zip(dups["dup_of"], dups["picture"]))
    assert (df.groupby("picture")["split"].nunique() == 1).all()  # one split unit per picture: no leakage


def test_pixel_confirmation_tells_a_copy_from_another_small_photo():
    photo = skimage_photo("chelsea").convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    other = skimage_photo("coffee").convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    t = {k: neardup.thumbnail(v) for k, v in {"photo": photo, "warm": _warm(photo), "other": other,
                                              "rot": photo.transpose(Image.Transpose.ROTATE_270)}.items()}
    detail = neardup.effective_side(photo)
    threshold = DedupSettings().pixel_confirm
    assert neardup.aligned_correlation(t["photo"], t["warm"], detail) >= threshold
    assert neardup.aligned_correlation(t["photo"], t["rot"], detail) >= threshold
    assert neardup.aligned_correlation(t["photo"], t["other"], detail) < 0.9
    flat = np.full((64, 64), 128, dtype=np.uint8)
    assert neardup.aligned_correlation(t["photo"], flat, detail) == 0.0


def _scenes() -> dict[str, Image.Image]:
    """Hard negatives from scikit-image: the two views of a stereo pair (one scene, a small parallax) and the top
    two quadrants of a fundus photo (each nearly the other's mirror image)."""
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    retina = Image.fromarray(skimage.data.retina())
    w, h = retina.size
    return {"stereoL": Image.fromarray(left), "stereoR": Image.fromarray(right),
            "retinaTL": retina.crop((0, 0, w // 2, h // 2)), "retinaTR": retina.crop((w // 2, 0, w, h // 2))}


def _hard_copies(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    dx, dy = round(w * 0.1), round(h * 0.1)
    return {"crop80": img.crop((dx, dy, w - dx, h - dy)), "flip": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            "gray": img.convert("L"), "warm": _warm(img)}


@pytest.fixture(scope="module")
def scenes_built(tmp_path_factory):
    """The four hard negatives of :func:`_scenes`, each with a central crop (80 %), a mirrored, a grayscale and a
    colour-shifted copy, as dataset ``scenes`` (defaults) and ``loose`` (the same folders, ``detail_confirm = 0``)."""
    from dsbuild.pipeline import build

    root = tmp_path_factory.mktemp("scenes")
    for k, (name, img) in enumerate(_scenes().items()):
        folder = root / "scenes" / ("a" if k % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        img = img.convert("RGB")
        img.save(folder / f"{name}.png")
        for var, copy in _hard_copies(img).items():
            copy.save(folder / f"{name}_{var}.jpg", quality=90)
    classes = 'classes = { a = { folders = ["scenes/a"] }, b = { folders = ["scenes/b"] } }\n'
    manifest = root / "datasets.toml"
    manifest.write_text(f"[datasets.scenes]\n{classes}"
                        f"[datasets.loose]\n{classes}[datasets.loose.dedup]\ndetail_confirm = 0\n")
    m = load_manifest(manifest)
    build(m, workers=2)
    return m


def _families(m, dataset: str):
    df = _images(m, dataset)
    df["picture"] = [Path(o).stem.split("_")[0] for o in df["origin"]]
    rep = df["dup_of"].fillna(df["image_id"])
    return df, df.assign(rep=rep).groupby("rep")["picture"].agg(lambda p: tuple(sorted(set(p))))


def test_a_stereo_pair_and_mirrored_quadrants_stay_apart_while_their_copies_are_found(scenes_built):
    df, groups = _families(scenes_built, "scenes")
    assert len(df) == 20 and (df["status"] != "rejected").all()
    # exactly one image of each picture stays; its four copies are its near duplicates, in its split
    assert sorted(groups.tolist()) == [("retinaTL",), ("retinaTR",), ("stereoL",), ("stereoR",)]
    assert (df.groupby("picture")["status"].apply(lambda s: (s == "duplicate").sum()) == 4).all()
    assert (df.groupby("picture")["split"].nunique() == 1).all()
    assert not df["conflict"].any()
    # without the detail check the same images collapse across pictures (this test can fail)
    _, loose = _families(scenes_built, "loose")
    assert any(len(pics) > 1 for pics in loose)


def test_detail_correlation_tells_a_copy_from_a_picture_of_the_same_layout():
    scenes = {k: neardup.thumbnail(v) for k, v in _scenes().items()}
    threshold = DedupSettings().detail_confirm
    for name, img in _scenes().items():
        for var, copy in _hard_copies(img.convert("RGB")).items():
            assert align.detail_correlation(scenes[name], neardup.thumbnail(copy)) >= threshold, (name, var)
    # two crops of one photo that each keep a part the other lost: compared where they overlap
    photo = _scenes()["stereoL"]
    w, h = photo.size
    central = photo.crop((round(w * 0.075), round(h * 0.075), round(w * 0.925), round(h * 0.925)))
    off = photo.crop((round(w * 0.17), round(h * 0.17), round(w * 0.97), round(h * 0.97)))
    mirrored = central.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert align.detail_correlation(neardup.thumbnail(central), neardup.thumbnail(off)) >= threshold
    assert align.detail_correlation(neardup.thumbnail(off), neardup.thumbnail(mirrored)) >= threshold
    assert align.detail_correlation(scenes["stereoL"], scenes["stereoR"]) < threshold - 0.2
    assert align.detail_correlation(scenes["retinaTL"], scenes["retinaTR"]) < threshold
    flat = np.full((64, 64), 128, dtype=np.uint8)
    assert align.detail_correlation(scenes["stereoL"], flat) == 0.0


def test_32px_mirrored_quadrant_twins_stay_below_the_detail_threshold():
    """Guard (2026-12-01, the easy-set study): at 32 px a fundus quadrant and its neighbour's mirror image sit 0–4
    phash bits apart and correlate 0.83–0.91 when laid on each other unturned over the whole picture — as much as
    a JPEG q40 copy of a 32-px photo (0.81–0.85). The defaults keep them apart only because their alignment
    (a view, then a crop box) never lines a picture up with its neighbour's mirror that way: a more thorough
    alignment search must keep these apart too."""
    import skimage.data

    threshold = DedupSettings().detail_confirm
    retina = Image.fromarray(skimage.data.retina()).convert("RGB")
    w, h = retina.size
    quads = {"TL": retina.crop((0, 0, w // 2, h // 2)), "BL": retina.crop((0, h // 2, w // 2, h)),
             "BR": retina.crop((w // 2, h // 2, w, h))}
    small = {k: v.resize((32, 32), Image.Resampling.LANCZOS) for k, v in quads.items()}
    for a, b in (("TL", "BL"), ("BL", "BR")):
        twin = small[b].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for q in (None, 50):
            shown = twin if q is None else _reopened(twin, q)
            corr = align.detail_correlation(neardup.thumbnail(small[a]), neardup.thumbnail(shown))
            assert corr < threshold, (a, b, q, corr)


def _reopened(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_a_watermarked_small_copy_shares_most_of_its_detail_blocks():
    """A 32-px photo with a caption over a third of it: the caption spoils the detail of the whole (below the
    threshold) but not of most blocks, so the block median links it; the hard negatives stay apart by it too."""
    from PIL import ImageDraw, ImageFont

    threshold = DedupSettings().detail_confirm
    small = _scenes()["stereoL"].convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    marked = small.copy()  # a stock-photo mark, as web copies carry (white text, black outline, bottom right)
    draw = ImageDraw.Draw(marked)
    draw.text((1, 20), "© stock", font=ImageFont.load_default(size=10), fill=(255, 255, 255), stroke_width=1,
              stroke_fill=(0, 0, 0))
    a, b = neardup.thumbnail(small), neardup.thumbnail(marked)
    whole = max(align._pearson(x - gaussian_filter(x, align.DETAIL_SIGMA), y - gaussian_filter(y, align.DETAIL_SIGMA))
                for x, y in align.alignments(a, b))
    assert whole < threshold  # the caption spoils the whole thumbnail's detail …
    assert align.detail_correlation(a, b) >= threshold  # … not most blocks'
    scenes = {k: neardup.thumbnail(v) for k, v in _scenes().items()}
    for x, y in (("stereoL", "stereoR"), ("retinaTL", "retinaTR")):
        da, db = (t.astype(np.float32) - gaussian_filter(t.astype(np.float32), align.DETAIL_SIGMA) for t in (scenes[x], scenes[y]))
        assert align.block_median(da, db) < threshold, (x, y)
    flat = np.zeros((64, 64), dtype=np.float32)
    assert align.block_median(flat, flat) == 0.0  # no block with detail: no verdict


def _clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors in 8 clusters plus a few far-off rows (outliers), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    x = centres[rng.integers(0, 8, n)] + rng.normal(scale=0.6, size=(n, dim))
    x[:5] = rng.normal(scale=3.0, size=(5, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_outlier_scores_from_the_faiss_graph_equal_cleanlabs_own_search():
    import warnings

    from cleanlab.outlier import OutOfDistribution

    from dsbuild.dedup.signals import outlier_scores

    emb = _clustered(600)
    ours, flags = outlier_scores(emb, k=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = OutOfDistribution({"k": 60}).fit_score(features=emb, verbose=False)  # scikit-learn, brute force
    assert np.abs(ours - theirs).max() < 1e-5
    assert set(np.argsort(ours)[:5]) == set(range(5)) and flags[:5].all()  # the far-off rows come first


def test_a_class_more_varied_than_the_rest_is_not_an_outlier_as_a_whole():
    """Fresh-user trial 8: 21 varied photos beside three digit classes were all flagged — Datalab's rule over the whole
    dataset takes a class's own spread for oddness. Judged within each class (of ≥ OUTLIER_MIN_CLASS images), the
    varied class keeps its images, and a row unlike its own class is still flagged. (Tight classes: digits; the
    varied one: photos; vectors stand in for the embeddings.)"""
    from dsbuild.dedup.signals import OUTLIER_MIN_CLASS, outlier_scores

    rng = np.random.default_rng(3)
    dim = 64
    centres = rng.normal(size=(4, dim)) * 3
    tight = [centres[c] + rng.normal(scale=0.5, size=(60, dim)) for c in range(3)]
    varied = centres[3] + rng.normal(scale=2.5, size=(25, dim))
    odd = rng.normal(scale=3.0, size=(1, dim))  # filed under class 0, like nothing
    x = np.vstack([*tight, varied, odd])
    emb = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = np.array(["zero"] * 60 + ["one"] * 60 + ["seven"] * 60 + ["photo"] * 25 + ["zero"])
    assert (labels == "photo").sum() >= OUTLIER_MIN_CLASS
    scores, whole = outlier_scores(emb, k=60)
    assert whole[labels == "photo"].mean() > 0.8  # the scenario: the global rule flags the varied class
    same, by_class = outlier_scores(emb, k=60, labels=labels)
    assert np.array_equal(scores, same)  # the scores do not depend on the labels
    assert by_class[labels == "photo"].sum() <= 2 and by_class[-1]


def test_neighbour_graph_leaves_each_row_out_also_with_hnsw(monkeypatch):
    emb = _clustered(400)
    exact = neardup.NeighbourGraph(emb, 10)
    monkeypatch.setattr(neardup, "EXACT_MAX", 100)  # HNSW from 100 rows on
    approx = neardup.NeighbourGraph(emb, 10)
    assert exact.exact and not approx.exact
    for g in (exact, approx):
        dist, ids = g.kneighbors()
        assert ids.shape == (400, 10) and not (ids == np.arange(400)[:, None]).any() and (ids >= 0).all()
        assert (np.diff(dist, axis=1) >= -1e-6).all()  # nearest first
    # HNSW finds (almost) the same neighbours as the exact search
    dist_e, ids_e = exact.kneighbors()
    _, ids_a = approx.kneighbors()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_e, ids_a)])
    assert overlap > 0.9
    i, j = 7, ids_e[7, 0]
    assert abs(dist_e[7, 0] - (1 - float(emb[i] @ emb[j]))) < 1e-5


def test_outlier_scores_from_the_builds_search_equal_a_search_of_the_representatives_alone():
    """The build searches every embedded image once (near duplicates) and the outlier scores reuse that search
    for the accepted representatives, a subset: the neighbours found must be those of a search of the subset."""
    from dsbuild.dedup.signals import outlier_scores

    emb = _clustered(700, seed=3)
    rows = np.arange(700)
    first: list = []
    neardup.embedding_pairs(emb, 0.85, first=first, first_k=60)
    sims, ids, index = first[0]
    assert ids.shape == (700, 61)
    search = neardup.KnnSearch(emb=emb, rows=rows, ids=ids, sims=sims, index=index)
    rng = np.random.default_rng(0)
    # a subset missing 40 % of the rows: many rows' 61 columns hold fewer than 60 subset rows (searched again)
    subset = np.sort(rng.choice(700, 420, replace=False))
    dist, pos = search.within(subset, 60)
    own_dist, own_ids = neardup.NeighbourGraph(emb[subset], 60).kneighbors()
    assert pos.shape == (420, 60) and (pos >= 0).all() and not (pos == np.arange(420)[:, None]).any()
    assert np.abs(dist - own_dist).max() < 1e-5
    assert np.mean([set(a) == set(b) for a, b in zip(pos, own_ids)]) > 0.99  # ties may swap the last one
    shared, _ = outlier_scores(emb[subset], 60, neighbours=(dist, pos))
    alone, _ = outlier_scores(emb[subset], 60)
    assert np.abs(shared - alone).max() < 1e-6
    # rows outside the search: no reuse
    assert neardup.KnnSearch(emb=emb, rows=rows[:600], ids=ids[:600], sims=sims[:600], index=index).within(subset, 60) is None
    with pytest.raises(ValueError, match="neighbours must be"):
        neardup.NeighbourGraph(emb[subset], 60, neighbours=(dist[:, :10], pos[:, :10]))


def test_links_do_not_depend_on_the_order_of_the_rows(tmp_path):
    """A resumed build sees its images in another order than a fresh build of the same folders (items are read in
    first-seen order). The pixel checks are not symmetric — one image's box is refined on the other — so each pair
    must be checked in an order of its content, not of its rows. These four pairs of turned photos (from
    tests/test_ray.py's 600) were linked in one row order and not in the other before."""
    from hostile_kit import encode, photo

    from dsbuild.dedup.signals import dataset_signals
    from dsbuild.pipeline import _verified, build, features_root_of, near_links_for

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock")
    for label, k in (("dog", 174), ("cat", 71), ("cat", 103), ("dog", 206), ("cat", 191), ("cat", 15), ("cat", 199),
                     ("dog", 198)):
        c = 0 if label == "cat" else 1
        img = photo(names[(k + c) % len(names)], (96 + k % 7 * 8, 72 + k % 5 * 8)).rotate(k * 7 + c)
        fmt, ext = ("PNG", "png") if k % 4 == 0 else ("JPEG", "jpg")
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / f"{label}{k:03d}.{ext}").write_bytes(encode(img, fmt))
    manifest = tmp_path / "datasets.toml"
    manifest.write_text('[datasets.turned]\nclasses = { cat = { folders = ["cat"] }, dog = { folders = ["dog"] } }\n')
    m = load_manifest(manifest)
    build(m, workers=1)
    ds = m.dataset("turned")
    with Catalog.open_readonly(m.catalog) as cat:
        items = cat.dataset_items("turned")
        features = features_root_of(cat)

    def links(frame) -> set[tuple[str, str]]:
        frame = frame.reset_index(drop=True)
        sig = dataset_signals(frame, np.flatnonzero(_verified(frame).to_numpy()), ds.dedup, ds.verify,
                              features_dir=features, embed=True, threads=1)
        found = near_links_for(frame, ds, sig)
        ids = frame["image_id"].to_numpy()
        return {tuple(sorted((ids[i], ids[j]))) for i, j in zip(found.i, found.j)}

    forward, backward = links(items), links(items.iloc[::-1])  # every pair seen the other way round
    assert forward == backward
    assert forward  # the turned copies of one photo that do line up are linked


@pytest.mark.parametrize("kernel, resample", [("lanczos", Image.Resampling.LANCZOS), ("box", Image.Resampling.BOX)])
def test_resample_weights_equal_pillows_float_resize(kernel, resample):
    """The detail check cuts by ``W_y @ t @ W_x.T`` with cached weights instead of a Pillow resize per cut: the
    weights must be Pillow's own (its mode-F resize, no 8-bit rounding), for growing and shrinking boxes."""
    t = np.asarray(skimage_photo("camera").convert("L").resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float32)
    im = Image.fromarray(t, mode="F")
    rng = np.random.default_rng(0)
    for _ in range(60):
        w = float(rng.uniform(20, 64))
        x, y = (float(v) for v in rng.uniform(0, 64 - w, 2))
        size = (int(rng.integers(8, 72)), int(rng.integers(8, 72)))
        ours = align.resample_weights(y, y + w, 64, size[1], kernel) @ t @ align.resample_weights(x, x + w, 64, size[0], kernel).T
        theirs = np.asarray(im.resize(size, resample, box=(x, y, x + w, y + w)), dtype=np.float32)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 0.01, (kernel, x, y, w, size)
    with pytest.raises(ValueError, match="kernel must be"):
        align.resample_weights(0.0, 8.0, 64, 8, "bicubic")


# --------------------------------------------------------------------------- off-centre crops of 32-px photos

OFFCENTRE = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "camera", "coins", "moon",
             "horse")


def _offcentre_copy(img: Image.Image) -> Image.Image:
    """26 × 26 px of a 32-px photo, 5 px in from the left and 4 from the top (~81 % of each side, off centre), resized
    back to 32 px (bicubic): the hash views (central crops) miss it by 10–36 bits, and the embeddings' cosine is
    0.66–0.88 — below ``similarity`` for most of these photos (trial 5, finding 3: CIFAR photos so cropped)."""
    return img.crop((5, 4, 31, 30)).resize(img.size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def offcentre_built(tmp_path_factory):
    """10 real photos shrunk to 32 px, each with an off-centre crop copy, and the two top quadrants of the fundus photo
    (each nearly the other's mirror: a layout shared, not a copy), built with the nearest neighbour's detail check
    from cosine 0.6 (``now``) and off (``before``: ``detail_similarity = similarity``, the rule before it)."""
    from dsbuild.pipeline import build

    root = tmp_path_factory.mktemp("offcentre")
    for k, name in enumerate(OFFCENTRE):
        folder = root / "photos" / ("a" if k % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        img = skimage_photo(name).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
        img.save(folder / f"{name}.png")
        _offcentre_copy(img).save(folder / f"{name}_crop.png")
    for key, quad in (("retinaTL", 0), ("retinaTR", 1)):
        photo_quadrant("retina", quad, 32).save(root / "photos" / "a" / f"{key}.png")
    classes = 'classes = { a = { folders = ["photos/a"] }, b = { folders = ["photos/b"] } }'
    off = DedupSettings().similarity
    (root / "datasets.toml").write_text(
        f'[datasets.now]\n{classes}\n[datasets.now.verify]\nmin_side = 16\n[datasets.now.dedup]\ndetail_similarity = 0.6\n'
        f'[datasets.before]\n{classes}\n[datasets.before.verify]\nmin_side = 16\n'
        f'[datasets.before.dedup]\ndetail_similarity = {off}\n')
    m = load_manifest(root / "datasets.toml")
    build(m, workers=2)
    return m


def test_offcentre_crops_of_32px_photos_are_grouped_with_their_photo_and_nothing_else(offcentre_built):
    df, fam = _families(offcentre_built, "now")
    assert len(df) == 2 * len(OFFCENTRE) + 2 and (df["status"] != "rejected").all()
    expected = sorted([(name,) for name in OFFCENTRE] + [("retinaTL",), ("retinaTR",)])
    assert sorted(fam.tolist()) == expected  # each photo with its copy, one family each; the quadrants alone
    assert (df.groupby("picture").size()[list(OFFCENTRE)] == 2).all()
    assert (df.groupby("picture")["status"].apply(lambda s: (s == "duplicate").sum())[list(OFFCENTRE)] == 1).all()
    assert (df.groupby("picture")["split"].nunique() == 1).all()  # no copy in the other split
    _, before = _families(offcentre_built, "before")
    assert len(before) > len(fam)  # the rule before missed some of these copies: the test can fail


def test_hnsw_index_holds_float16_vectors_and_pairs_keep_float32_similarities(monkeypatch):
    """Above EXACT_MAX the index stores the vectors as float16 (HNSW_STORAGE: half the memory, the 100,000 graph
    1.19× faster in bench/knn_scale.py); the search's similarities are the float16 vectors' (within 1e-3), and the
    pairs embedding_pairs returns carry their float32 cosine."""
    import faiss

    emb = _clustered(400)
    monkeypatch.setattr(neardup, "EXACT_MAX", 100)
    index = neardup.knn_index(emb, exact_max=100)
    assert isinstance(index, faiss.IndexHNSWSQ) and index.ntotal == 400
    sims, ids = neardup.knn(emb, 5, index=index)
    exact = np.einsum("ij,ij->i", emb[np.repeat(np.arange(400), 5)], emb[ids.ravel()]).reshape(400, 5)
    assert np.abs(sims - exact).max() < 1e-3
    pairs, psims = neardup.embedding_pairs(emb, 0.85, exact_max=100)
    assert len(pairs) > 0
    assert np.array_equal(psims, np.einsum("ij,ij->i", emb[pairs[:, 0]], emb[pairs[:, 1]]).astype(np.float32))
    monkeypatch.setattr(neardup, "HNSW_STORAGE", "float32")
    assert isinstance(neardup.knn_index(emb, exact_max=100), faiss.IndexHNSWFlat)
