"""`similar`, the `neighbours` view and `embed` after review decisions, on real pictures (scikit-image, scikit-learn).

One small imagefolder dataset per test (6 photos and 14 digits in two classes), built with the real
embedding backbone; review decisions through the CLI's decisions file; the catalog read back with DuckDB.
"""

from __future__ import annotations

import re

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, skimage_photo, sql
from PIL import Image

from dsbuild.rows import image_id_for

PHOTOS = {"a": ("astronaut", "coffee", "chelsea"), "b": ("rocket", "camera", "coins")}


def _colliding_names(root: Path, label: str) -> tuple[str, str]:
    """Two file names under ``root/photos/label`` whose image_ids start with the same 4 hex digits."""
    seen: dict[str, str] = {}
    for k in range(20000):
        name = f"twin{k:05d}.png"
        iid = image_id_for("pets", label, str(root / "photos" / label / name))
        if iid[:4] in seen:
            return seen[iid[:4]], name
        seen[iid[:4]] = name
    raise AssertionError("no two ids share 4 hex digits")


def _project(root: Path, *, semantic: bool = True) -> Path:
    from sklearn.datasets import load_digits

    root = root.resolve()
    for label, names in PHOTOS.items():
        folder = root / "photos" / label
        folder.mkdir(parents=True)
        for name in names:
            skimage_photo(name).convert("RGB").resize((128, 128)).save(folder / f"{name}.png")
    d = load_digits()
    twins = _colliding_names(root, "a")
    for k in range(14):
        arr = (d.images[k] * (255.0 / 16.0)).round().astype(np.uint8)
        img = Image.fromarray(arr, mode="L").resize((48, 48), Image.Resampling.BICUBIC)
        label = "a" if k % 2 == 0 else "b"
        name = twins[k // 2] if k in (0, 2) else f"digit{k:02d}.png"
        img.save(root / "photos" / label / name)
    manifest = root / "datasets.toml"
    manifest.write_text(f'[datasets.pets]\nimagefolder = "photos"\n[datasets.pets.dedup]\n'
                        f'semantic = {"true" if semantic else "false"}\n')
    return manifest


def _review(capsys, manifest: Path, rows: str) -> None:
    decisions = manifest.parent / "d.csv"
    decisions.write_text("image_id,action,new_label,note\n" + rows)
    code, out, err = run_cli(capsys, manifest, "review", "pets", "--decisions", str(decisions))
    assert code == 0, err


def _similar(capsys, manifest: Path, image: str, k: int = 10) -> list[tuple[str, float]]:
    code, out, err = run_cli(capsys, manifest, "similar", "pets", image, "-k", str(k), "--format", "csv")
    assert code == 0, err
    return [(line.split(",")[1], float(line.split(",")[2])) for line in out.strip().splitlines()[1:]]


def _view(manifest: Path, image: str) -> list[tuple[str, float]]:
    return [(n, float(s)) for n, s in sql(manifest, "SELECT neighbour_id, similarity FROM neighbours "
                                                    "WHERE image_id = ? ORDER BY rank", [image])]


def _agree(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    assert np.allclose([s for _, s in a], [s for _, s in b], atol=2e-4)


def test_similar_and_the_neighbours_view_agree_after_a_review_removal(tmp_path, capsys):
    manifest = _project(tmp_path)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    subject = sql(manifest, "SELECT image_id FROM images WHERE origin LIKE '%astronaut.png'")[0][0]
    gone = sql(manifest, "SELECT neighbour_id FROM neighbours WHERE image_id = ? AND rank = 1", [subject])[0][0]
    _agree(_similar(capsys, manifest, subject), _view(manifest, subject))
    _review(capsys, manifest, f"{gone},remove,,\n")
    for when in ("after the review", "after a build"):
        view = _view(manifest, subject)
        assert len(view) == 10 and gone not in [i for i, _ in view], when  # a spare neighbour takes its place
        _agree(_similar(capsys, manifest, subject), view)
        assert sql(manifest, "SELECT count(*) FROM neighbours WHERE image_id = ? OR neighbour_id = ?", [gone, gone]) \
            == [(0,)], when
        assert sql(manifest, "SELECT count(*) FROM neighbours WHERE neighbour_status NOT IN ('ok', 'duplicate')") \
            == [(0,)], when
        ranks = sql(manifest, "SELECT list(rank ORDER BY rank) FROM neighbours WHERE image_id = ?", [subject])[0][0]
        assert list(ranks) == list(range(1, 11)), when
        assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    _review(capsys, manifest, f"{gone},undo,,\n")
    assert _view(manifest, subject)[0][0] == gone == _similar(capsys, manifest, subject)[0][0]


def test_similar_in_one_process_sees_images_a_later_build_embedded(tmp_path, capsys):
    """The review app asks `similar` many times in one process, which keeps the embeddings it read while the
    cache's shard files stay the same: a build that embeds a new image (a new shard) is seen by the next call."""
    manifest = _project(tmp_path)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    subject = sql(manifest, "SELECT image_id FROM images WHERE origin LIKE '%astronaut.png'")[0][0]
    before = _similar(capsys, manifest, subject)
    skimage_photo("astronaut").convert("RGB").resize((120, 120)).save(tmp_path / "photos" / "a" / "again.png")
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    again = sql(manifest, "SELECT image_id FROM images WHERE origin LIKE '%again.png'")[0][0]
    after = _similar(capsys, manifest, subject)
    assert again not in [i for i, _ in before] and after[0][0] == again and after[0][1] > 0.95
    _agree(after, _view(manifest, subject))


def test_similar_of_a_removed_image_says_so_and_what_to_do(tmp_path, capsys):
    manifest = _project(tmp_path)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    gone, origin = sql(manifest, "SELECT image_id, origin FROM images WHERE origin LIKE '%coffee.png'")[0]
    _review(capsys, manifest, f"{gone},remove,,\n")
    code, out, err = run_cli(capsys, manifest, "similar", "pets", gone)
    assert code == 2 and out == ""
    assert err == (f"Error: image {gone} of dataset 'pets' was removed in review (status rejected) — `similar` "
                   f"searches the accepted images (ok, duplicate); undo the remove (the row `{gone},undo,,` in "
                   f"`dsbuild review pets --decisions FILE.csv`) or pass its file: `dsbuild similar pets {origin}`\n")
    # Its file, as told, is searched as any image file: the removed image is not among the answers.
    rows = _similar(capsys, manifest, origin, k=3)
    assert len(rows) == 3 and gone not in [i for i, _ in rows]
    # A file moved away from the dataset sets its image aside: the same answer names the reason.
    astro = tmp_path / "photos" / "a" / "astronaut.png"
    astro_id = sql(manifest, "SELECT image_id FROM images WHERE origin = ?", [str(astro.resolve())])[0][0]
    astro.rename(tmp_path / "astronaut.png")
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    stored = sql(manifest, "SELECT path FROM images WHERE image_id = ?", [astro_id])[0][0]
    code, out, err = run_cli(capsys, manifest, "similar", "pets", astro_id)
    assert code == 2 and err == (f"Error: image {astro_id} of dataset 'pets' is set aside (status rejected: source "
                                 f"removed) — `similar` searches the accepted images (ok, duplicate); pass its file: "
                                 f"`dsbuild similar pets {stored}`\n")


def test_similar_takes_a_unique_start_of_an_image_id_and_lists_an_ambiguous_one(tmp_path, capsys):
    manifest = _project(tmp_path)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    subject = sql(manifest, "SELECT image_id FROM images WHERE origin LIKE '%chelsea.png'")[0][0]
    ids = [r[0] for r in sql(manifest, "SELECT image_id FROM images")]
    start = next(subject[:n] for n in range(4, 17) if sum(i.startswith(subject[:n]) for i in ids) == 1)
    assert _similar(capsys, manifest, start, k=5) == _similar(capsys, manifest, subject, k=5)
    code, out, err = run_cli(capsys, manifest, "similar", "pets", start, "-k", "5")  # the table: 4 decimals each
    cells = [line.split("│")[3].strip() for line in out.splitlines() if line.count("│") >= 7]
    assert code == 0 and len(cells) == 5 and all(re.fullmatch(r"[01]\.\d{4}", c) for c in cells), out
    assert f"5 images of 'pets' most similar to {subject}" in " ".join(out.split()), out  # the whole id (trial 9)
    twins = sql(manifest, "SELECT image_id, label, status FROM images WHERE origin LIKE '%twin%' ORDER BY image_id")
    assert len(twins) == 2 and twins[0][0][:4] == twins[1][0][:4]
    prefix = twins[0][0][:4]
    code, out, err = run_cli(capsys, manifest, "similar", "pets", prefix)
    assert code == 2 and err == (f"Error: '{prefix}' is the start of 2 image_ids of dataset 'pets': "
                                 f"{twins[0][0]} ({twins[0][1]}, {twins[0][2]}), {twins[1][0]} ({twins[1][1]}, "
                                 f"{twins[1][2]}) — give more of the id\n")
    code, out, err = run_cli(capsys, manifest, "similar", "pets", "zz-not-an-id")
    assert code == 2 and err == ("Error: 'zz-not-an-id' is neither an image_id (or the start of one) of dataset 'pets' "
                                 "nor an image file — give a path, or an id from `dsbuild query \"SELECT image_id, "
                                 "origin FROM images WHERE dataset = 'pets'\"`\n")


def test_similar_of_a_named_pipe_or_a_device_says_it_is_not_a_regular_file(tmp_path, capsys):
    """Variant hunt finding 9: `similar` on a named pipe or a symlink to /dev/zero said "is a folder"."""
    import os

    manifest = _project(tmp_path, semantic=False)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    assert run_cli(capsys, manifest, "embed", "pets")[0] == 0
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    tail = "— give one image file or an image_id of dataset 'pets'\n"
    for path, what in ((fifo, "a named pipe (FIFO), not a regular file"), (zero, "a character device, not a regular file"),
                       (tmp_path / "photos", "a folder")):
        code, out, err = run_cli(capsys, manifest, "similar", "pets", str(path))
        assert (code, err) == (2, f"Error: {path} is {what} {tail}"), err


def _digits_project(root: Path, n: int, *, semantic: bool = False) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    for k in range(n):
        arr = (d.images[k] * (255.0 / 16.0)).round().astype(np.uint8)
        folder = root / "digits" / ("even" if d.target[k] % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        resample = Image.Resampling.BICUBIC if k % 2 == 0 else Image.Resampling.NEAREST
        Image.fromarray(arr, mode="L").resize((48, 48), resample).save(folder / f"d{k:04d}.png")
    manifest = root / "datasets.toml"
    manifest.write_text('[datasets.pets]\nimagefolder = "digits"\n[datasets.pets.dedup]\n'
                        f'semantic = {"true" if semantic else "false"}\n')
    return manifest


def _cached(catalog_dir: Path) -> int:
    from dsbuild.model.embeddings import FeatureCache, FeatureSpec, features_root

    return len(FeatureCache(features_root(catalog_dir / "dsbuild.duckdb"), FeatureSpec()))


def _interrupt_once_saved(manifest: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``dsbuild ARGS`` and send it a real SIGINT a second after its first chunk of embeddings is saved."""
    from dsbuild.model.embeddings import FeatureSpec

    shards = manifest.parent / "catalog" / "features" / FeatureSpec().key()
    # SIGINT as a terminal delivers it (a test run started in the background ignores SIGINT, and so would its child).
    proc = subprocess.Popen([sys.executable, "-m", "dsbuild", "-m", str(manifest), *args], cwd=manifest.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not list(shards.glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # past the chunk's own writes; the next chunk takes seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_during_a_build_keeps_the_finished_chunks_of_embeddings_and_the_next_build_goes_on(tmp_path, capsys):
    """The same in a build's near-duplicate stage (local here; a Ray build runs the same stage in its driver): the
    re-run computes only the images not embedded yet — their pixel signals were saved with each chunk too."""
    from dsbuild.model.embeddings import EMBED_CHUNK

    n = 3 * EMBED_CHUNK
    manifest = _digits_project(tmp_path, n, semantic=True)
    run = _interrupt_once_saved(manifest, "build", "pets", "--workers", "1")
    assert run.returncode in (130, -signal.SIGINT), (run.returncode, run.stderr)
    assert run.stderr.strip().splitlines()[-1] == ("Error: build interrupted — everything finished so far is saved; "
                                                   "run the same command to resume")
    kept = _cached(tmp_path / "catalog")
    assert kept % EMBED_CHUNK == 0 and EMBED_CHUNK <= kept < n, kept
    code, out, err = run_cli(capsys, manifest, "build", "pets", "--workers", "1")
    assert code == 0, err
    assert f"pets: near-duplicate signals {n}/{n} computed {n - kept} reused {kept}" in err


def test_ctrl_c_during_embed_keeps_the_finished_chunks_and_the_next_embed_goes_on(tmp_path, capsys):
    """A real SIGINT once the first chunk is in the cache: the chunks finished are kept, the progress line says
    how far it got, and the next `embed` computes only the rest (it used to keep nothing: one chunk of 512)."""
    from dsbuild.model.embeddings import EMBED_CHUNK, FeatureSpec

    n = 5 * EMBED_CHUNK
    manifest = _digits_project(tmp_path, n)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    shards = tmp_path / "catalog" / "features" / FeatureSpec().key()
    run = _interrupt_once_saved(manifest, "embed", "pets", "--workers", "1")
    assert run.returncode in (130, -signal.SIGINT), (run.returncode, run.stderr)
    kept = _cached(tmp_path / "catalog")
    assert kept % EMBED_CHUNK == 0 and EMBED_CHUNK <= kept < n, kept
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == (f"Error: embed interrupted — {kept} of {n} images of pets have their embedding saved (they "
                         f"are saved every {EMBED_CHUNK} images); the next `dsbuild embed pets` goes on with the other "
                         f"{n - kept}")
    # The progress line moved with each chunk (the chunk being written when the signal came may be one behind).
    done = [int(line.split()[3].split("/")[0]) for line in lines if line.startswith("pets: near-duplicate signals ")]
    assert done and done[-1] in (kept, kept - EMBED_CHUNK), lines
    code, out, err = run_cli(capsys, manifest, "embed", "pets", "--workers", "1")
    assert code == 0, err
    assert f"pets: near-duplicate signals {n}/{n} computed {n - kept} reused {kept}" in err
    assert _cached(tmp_path / "catalog") == n
    assert len(list(shards.glob("part-*.parquet"))) <= 1 + kept // EMBED_CHUNK  # the run's own shards merged into one


def test_ctrl_c_during_embed_before_the_first_chunk_says_nothing_was_saved(tmp_path, capsys):
    """A real SIGINT as soon as the embedding backbone starts loading (torch mapped into the process), seconds
    before the first chunk can be saved: the message says no embedding was saved — it used to say "the embeddings
    finished so far are kept" — and the cache is indeed empty."""
    from dsbuild.model.embeddings import EMBED_CHUNK

    n = EMBED_CHUNK + 8
    manifest = _digits_project(tmp_path, n)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    proc = subprocess.Popen([sys.executable, "-m", "dsbuild", "-m", str(manifest), "embed", "pets", "--workers", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and "libtorch" not in maps.read_text():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == (
        f"Error: embed interrupted before the first {EMBED_CHUNK} images of pets were embedded — no embedding was "
        f"saved yet (they are saved every {EMBED_CHUNK} images), so the next `dsbuild embed pets` starts from the "
        "beginning")
    assert _cached(tmp_path / "catalog") == 0


def test_the_embed_interrupted_message_counts_what_the_cache_holds():
    """The three cases of the message, with the counts `embedding_counts` reads from the cache after a stop."""
    from dsbuild.pipeline import embed_interrupted

    assert embed_interrupted("pets", ["pets", "cars"], 0, 20, chunk=64) == (
        "embed interrupted before the first 20 images of pets were embedded — no embedding was saved yet (they are "
        "saved every 64 images), so the next `dsbuild embed pets cars` starts from the beginning")
    assert embed_interrupted("pets", ["pets"], 128, 300, chunk=64) == (
        "embed interrupted — 128 of 300 images of pets have their embedding saved (they are saved every 64 images); "
        "the next `dsbuild embed pets` goes on with the other 172")
    assert embed_interrupted("pets", ["pets"], 300, 300, chunk=64) == (
        "embed interrupted after all 300 images of pets were embedded — the embeddings are saved; the next "
        "`dsbuild embed pets` reuses them and only regroups the dataset")


def test_embed_with_semantic_false_stores_the_neighbours_and_builds_keep_them_with_the_outlier_scores(tmp_path, capsys):
    manifest = _project(tmp_path, semantic=False)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    assert sql(manifest, "SELECT count(*) FROM neighbours") == [(0,)]
    code, out, err = run_cli(capsys, manifest, "embed", "pets", "-q", "--workers", "1")
    assert code == 0, err
    (accepted, ok), = sql(manifest, "SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM images "
                                    "WHERE status IN ('ok', 'duplicate')")
    lines = out.strip().splitlines()
    assert lines[1:] == [
        f"pets: neighbours of {accepted} of {accepted} accepted images stored (the `neighbours` view, `@similar`), "
        f"outlier scores of {ok} (duplicates get none)",
        "pets: dedup.semantic = false: the embeddings serve `similar`, the `neighbours` view and the outlier scores, "
        "not the near-duplicate search; a build keeps them for the images embedded and embeds no new one — run "
        "`dsbuild embed pets` again after adding images"]
    counts = "SELECT (SELECT count(*) FROM neighbours), count(outlier_score) FROM images"
    assert sql(manifest, counts) == [(10 * accepted, ok)]
    subject = sql(manifest, "SELECT image_id FROM images WHERE origin LIKE '%camera.png'")[0][0]
    _agree(_similar(capsys, manifest, subject), _view(manifest, subject))
    # A later build (semantic = false) keeps both, and an image added since has neither (nor is `similar` of it).
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    assert sql(manifest, counts) == [(10 * accepted, ok)]
    skimage_photo("astronaut").convert("RGB").resize((64, 64)).rotate(45).save(tmp_path / "photos" / "b" / "new.png")
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    assert sql(manifest, "SELECT outlier_score IS NULL, (SELECT count(*) FROM neighbours n WHERE n.image_id = i.image_id "
                         "OR n.neighbour_id = i.image_id) FROM images i WHERE origin LIKE '%new.png'") == [(True, 0)]
    assert sql(manifest, counts) == [(10 * accepted, ok)]


def test_an_image_removed_in_review_has_no_outlier_score(tmp_path, capsys):
    manifest = _project(tmp_path)
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0
    gone = sql(manifest, "SELECT image_id FROM images WHERE status = 'ok' ORDER BY outlier_score LIMIT 1")[0][0]
    _review(capsys, manifest, f"{gone},remove,,\n")
    assert sql(manifest, "SELECT outlier_score, is_outlier FROM images WHERE image_id = ?", [gone]) == [(None, None)]
    assert run_cli(capsys, manifest, "build", "-q", "--workers", "1")[0] == 0  # scored again without it
    assert sql(manifest, "SELECT outlier_score, is_outlier FROM items WHERE image_id = ?", [gone]) == [(None, None)]
    assert sql(manifest, "SELECT count(*) = count(outlier_score) FROM images WHERE status = 'ok'") == [(True,)]
    _review(capsys, manifest, f"{gone},undo,,\n")
    code, out, err = run_cli(capsys, manifest, "embed", "pets", "-q", "--workers", "1")
    assert code == 0, err
    assert sql(manifest, "SELECT outlier_score IS NOT NULL FROM images WHERE image_id = ?", [gone]) == [(True,)]


def test_embedders_share_one_frozen_backbone_and_embed_as_a_freshly_loaded_model_does():
    """One model per process (built once: ~1–2 s), frozen, giving the embeddings of a model loaded on its own."""
    import torch

    from dsbuild.model.embeddings import TIMM_MODELS, Embedder, FeatureSpec
    from dsbuild.model.weights import load_backbone

    first, second = Embedder(FeatureSpec()), Embedder(FeatureSpec())
    assert first.model is second.model
    assert not first.model.training
    assert not any(p.requires_grad for p in first.model.parameters())
    photos = [skimage_photo("chelsea"), skimage_photo("coffee").convert("L")]
    shared = first.embed(photos)
    _, fresh = load_backbone("timm/" + TIMM_MODELS[FeatureSpec().arch])
    second.model = fresh.eval()
    with torch.inference_mode():
        alone = second.embed(photos)
    assert shared.shape == (2, first.dim) and np.allclose(shared, alone, atol=1e-6)
    assert first.model is not second.model and first.embed(photos).tobytes() == shared.tobytes()
