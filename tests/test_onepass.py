"""One forward pass per image for build and train: the build's embedding pass writes the training features too.

Real images only: real handwritten digits (``load_digits``, 64 px PNG), real photos (scikit-image, 96 px JPEG:
decoded at full size) and two 640 px JPEG photos (decoded reduced by JPEG draft for the build's signals: to ≥ 320 px
for its embedding pass, whose training rows stand for a full decode's). A real DuckDB catalog in tmp_path, the default model (a head on the
frozen efficientnet_lite0's features) on CPU, commands through :func:`dsbuild.cli.main`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import photo_quadrant, sql
from model_data import render_digit
from dsbuild.cli import main

SQUASH = "efficientnet_lite0-160-squash-views-v1"

MANIFEST = """
catalog = "catalog/dsbuild.duckdb"

[datasets.mix.classes]
digit = {{ folders = "data/digit" }}
photo = {{ folders = "data/photo" }}

[datasets.mix.dedup]
threshold = 2

[datasets.mix.split]
train = 0.75
valid = 0.25
seed = 1
{model}
"""


def _rows(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """key → view → row of every npz shard in ``folder`` (what :func:`dsbuild.model.features.features` reads)."""
    from dsbuild.model.features import _read_cache

    return _read_cache(folder) if folder.is_dir() else {}


def _project(root: Path, model: str = "") -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    (root / "data" / "digit").mkdir(parents=True)
    (root / "data" / "photo").mkdir(parents=True)
    for i in np.flatnonzero(digits.target == 0)[:24]:
        render_digit(digits.data[i], root / "data" / "digit" / f"d{i:04d}.png")
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera"):
        for k in range(4):
            buf = io.BytesIO()
            photo_quadrant(name, k, 96).save(buf, "JPEG", quality=90)
            (root / "data" / "photo" / f"{name}{k}.jpg").write_bytes(buf.getvalue())
    for name, k in (("retina", 0), ("hubble_deep_field", 1)):
        photo_quadrant(name, k, 640).save(root / "data" / "photo" / f"big-{name}.jpg", "JPEG", quality=90)
    manifest = root / "datasets.toml"
    manifest.write_text(MANIFEST.format(model=model))
    assert main(["-m", str(manifest), "-q", "build"]) == 0
    return manifest


def _used_keys(manifest: Path) -> dict[str, str]:
    """emb_key → origin of the images ``train`` uses (ok, in train or valid)."""
    from dsbuild.model.embeddings import emb_key

    rows = sql(manifest, "select b.sha256, b.pixel_sha, i.origin from images i join blobs b using (sha256) "
                         "where i.status = 'ok' and i.split in ('train', 'valid')")
    return {emb_key(s, p): o for s, p, o in rows}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _project(tmp_path_factory.mktemp("onepass"))


@pytest.mark.slow
def test_train_after_a_build_computes_no_features_not_even_for_large_jpegs(built: Path) -> None:
    """The build's one pass writes the training rows of every image — the two 640 px JPEGs too, decoded reduced to
    ≥ 320 px for that pass (before 2026-12-02: reduced to 128 px, so `train` decoded them in full and ran the network
    on them again)."""
    manifest = built
    features = manifest.parent / "catalog" / "features"
    used = _used_keys(manifest)
    big = {k for k, o in used.items() if "/big-" in o}
    assert len(used) >= 40 and len(big) == 2, (len(used), big)
    after_build = _rows(features / SQUASH)
    assert set(used) <= set(after_build), sorted(set(used) - set(after_build))[:3]
    assert len(list((features / SQUASH).glob("part-*.npz"))) == 1  # one shard, not one per chunk of 64 images
    shards = {p.name for p in features.rglob("*") if p.is_file()}

    assert main(["-m", str(manifest), "-q", "train", "mix"]) == 0
    after_train = _rows(features / SQUASH)
    assert set(after_train) == set(after_build)  # train computed no row
    new_files = {p.relative_to(features).as_posix() for p in features.rglob("*") if p.is_file() and p.name not in shards}
    assert all(f.startswith(SQUASH + "/") for f in new_files), new_files  # no pass at 224 px
    model_dir = Path(sql(manifest, "select model_path from runs where kind = 'train'")[0][0]).parent
    config = json.loads((model_dir / "model.json").read_text())
    assert (config["size"], config["settings"]["resize"], config["settings"]["features"]) == (160, "squash", SQUASH)


@pytest.mark.slow
def test_the_builds_rows_are_what_train_would_compute_itself(built: Path, tmp_path: Path) -> None:
    """Same pixels (the build's decode of a full-size PNG/JPEG = the trainer's load_rgb), same preprocessing, same
    network: the rows the build wrote equal rows computed afresh by :func:`dsbuild.model.features.features`."""
    from dsbuild.model.features import FeatureSpec, features

    manifest = built
    cached = _rows(manifest.parent / "catalog" / "features" / SQUASH)
    rows = sql(manifest, "select b.sha256, b.pixel_sha, b.path from images i join blobs b using (sha256) "
                         "where i.status = 'ok' order by i.origin like '%/big-%', i.origin")
    from dsbuild.model.embeddings import emb_key

    keys = [emb_key(s, p) for s, p, _ in rows]
    keys = [k for k in keys if k in cached]
    paths = {emb_key(s, p): path for s, p, path in rows}
    big = keys[-2:]  # the two 640 px JPEGs: the build decoded them reduced to ≥ 320 px, train would in full
    pick = keys[:6] + keys[-8:-2]  # digits (PNG) and photos (JPEG), decoded at full size by both
    fresh = features([paths[k] for k in pick + big], FeatureSpec(size=160, resize="squash"), tmp_path)
    for view, got in fresh.items():
        want = np.stack([cached[k][view] for k in pick + big]).astype(np.float32)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        n = len(pick)
        assert np.allclose(got[:n], want[:n], rtol=2e-2, atol=2e-2), (view, float(np.abs(got[:n] - want[:n]).max()))
        assert cos[:n].min() > 0.9999, (view, float(cos[:n].min()))
        # a reduced decode is not the full one's pixels: as close as bench/onepass.py --draft measured (≥ 0.9988)
        assert cos[n:].min() > 0.998, (view, cos[n:].tolist())


@pytest.mark.slow
def test_predict_of_a_squash_model_matches_its_cached_probabilities(built: Path) -> None:
    from dsbuild.model.embeddings import emb_key
    from dsbuild.model.predict import head_probs_from_cache, predict

    manifest = built
    if not sql(manifest, "select count(*) from runs where kind = 'train'")[0][0]:
        assert main(["-m", str(manifest), "-q", "train", "mix"]) == 0
    model_dir = Path(sql(manifest, "select model_path from runs where kind = 'train' and status = 'ok' "
                                   "order by started_at desc limit 1")[0][0]).parent
    rows = sql(manifest, "select b.sha256, b.pixel_sha, b.path from images i join blobs b using (sha256) "
                         "where i.status = 'ok' order by i.origin limit 4")
    paths = [Path(p) for _, _, p in rows]
    cached = head_probs_from_cache(model_dir, paths, [emb_key(s, p) for s, p, _ in rows],
                                   manifest.parent / "catalog" / "features")
    assert cached is not None
    frame = predict(model_dir, paths)
    classes = json.loads((model_dir / "model.json").read_text())["classes"]
    direct = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float32)
    assert np.abs(direct - cached).max() < 5e-3


@pytest.mark.parametrize("model, want", [
    ("", (160, "squash")),                                        # the default: the build's embedding input
    ("[datasets.mix.model]\nsize = 224\n", (224, "crop")),         # a size given: as before
    ("[datasets.mix.model]\nresize = \"crop\"\n", (224, "crop")),  # crop asked for: the native size
    ("[datasets.mix.dedup]\nsemantic = false\n", (224, "crop")),   # no embeddings: nothing to share
])
def test_the_default_input_follows_the_builds_embedding(tmp_path: Path, model: str, want: tuple[int, str]) -> None:
    from dsbuild.cycle import model_settings
    from dsbuild.manifest import load_manifest

    text = MANIFEST.format(model="")
    if "dedup" in model:
        text = text.replace("[datasets.mix.dedup]\n", model)
    else:
        text += model
    (tmp_path / "datasets.toml").write_text(text)
    settings = model_settings(load_manifest(tmp_path / "datasets.toml").dataset("mix"))
    assert (settings.size, settings.resize) == want


def test_a_head_model_saved_before_resize_existed_predicts_with_its_crop_input(tmp_path: Path) -> None:
    """A model.json without ``resize`` (every head trained before one-pass training) is a ``crop`` model: predict and
    the cached probabilities use its old input and cache folder, and agree with what it validated."""
    from model_data import digit_table
    from dsbuild.model.predict import predict
    from dsbuild.model.settings import ModelSettings
    from dsbuild.model.train import train

    df = digit_table(tmp_path / "img", 12, classes=(0, 1, 7))
    cache = tmp_path / "features"
    result = train(df, ModelSettings(arch="efficientnet_lite0", size=64), out_dir=tmp_path / "model", cache_dir=cache)
    config = json.loads((tmp_path / "model" / "model.json").read_text())
    assert config["settings"]["resize"] == "crop" and config["settings"]["features"] == "efficientnet_lite0-64-v1"
    del config["settings"]["resize"]  # as written before resize existed
    (tmp_path / "model" / "model.json").write_text(json.dumps(config))
    valid = df[df["split"] == "valid"].reset_index(drop=True)
    paths = [Path(p) for p in valid["path"]]
    frame = predict(tmp_path / "model", paths)
    direct = frame[[f"prob_{c}" for c in result.classes]].to_numpy(dtype=np.float32)
    assert np.abs(direct - result.valid_probs).max() < 5e-3
    assert sorted(p.name for p in cache.iterdir()) == ["efficientnet_lite0-64-v1"]
