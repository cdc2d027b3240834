"""A catalog built by an older dsbuild is verified again when dsbuild's own checks changed (the verifier revision).

Kind of fault: a user who built with an older dsbuild and upgraded kept every
image the old verifier accepted (a JPEG with junk inside its scan data, which
Pillow decodes silently) and kept rejected the ones the new verifier repairs (a
JPEG whose only fault is a short JFIF header); ``dsbuild build`` said nothing
changed, because a build re-evaluated outcomes only when the dataset's own
settings changed.

The honest way to get an older catalog: build with today's dsbuild, then write
into the catalog what the older dsbuild wrote — the verify section of the
dataset's recorded settings without a revision (a bare digest), and the outcomes
the older verifier gave those two files (the junk JPEG accepted, with a split and
its bytes in the store; the short JFIF rejected). Then ``build`` again: one line
says dsbuild's checks changed, how many images were re-checked and which
outcomes changed; the files are verified again from disk (folder files from
their folder, downloads from the store — the server sees no second request).

Inputs: real photos (``skimage.data``) encoded by Pillow and damaged byte by byte;
a real loopback HTTP server; the real DuckDB catalog (read and written with ``duckdb``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from hostile_kit import Project, encode, jpeg_scan_start, photo

from dsbuild.verify.decode import VERIFIER_REVISION

JUNK = bytes((i * 73 + 41) % 255 for i in range(20))  # 20 bytes, no 0xFF: nothing libjpeg could take for a marker
GOOD = {"a": ["astronaut", "coffee", "chelsea"], "b": ["rocket", "camera", "coins"]}
RECHECK = re.compile(r"dsbuild's image checks changed \(verifier revision 1 → \d+\) — re-checked (\d+) catalogued "
                     r"images from the files on disk, nothing downloaded again: (.*?)(?: ds: |$)")


def _junk_inside_scan() -> bytes:
    """20 junk bytes inserted into a baseline scan at 40 %: the rest decodes out of step; Pillow says nothing."""
    data = encode(photo("moon", (320, 240)), "JPEG", quality=90)
    start = jpeg_scan_start(data)
    at = start + int((len(data) - start) * 0.4)
    return data[:at] + JUNK + data[at:]


def _jfif_short() -> bytes:
    """A JFIF APP0 segment of 6 bytes (needs 16): only metadata is wrong; the picture data is whole."""
    data = encode(photo("clock", (200, 150)).rotate(180), "JPEG")
    assert data[2:4] == b"\xff\xe0"
    body = b"JFIF\x00\x01"
    return data[:2] + bytes([0xFF, 0xE0]) + struct.pack(">H", len(body) + 2) + body + data[20:]


def _good(name: str, k: int) -> bytes:
    return encode(photo(name, (180 + 8 * k, 140)), "JPEG", quality=90)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_built_by_an_older_dsbuild(proj: Project, origins: dict[str, tuple[str, str | None, bytes]]) -> None:
    """Write into ``proj``'s catalog what an older dsbuild (no verifier revision recorded) wrote for it.

    The dataset's recorded settings sections get the verify section an older dsbuild wrote: the settings'
    digest alone (a JSON string, no revision). ``origins``: item origin → (status, reason, the bytes that
    older build verified) — an accepted one gets a split and its bytes in the store with a ``blobs`` row, as
    that build's store and regrouping left them; a rejected one has no split (and a download's no stored copy)."""
    con = duckdb.connect(str(proj.catalog))
    try:
        key = f"settings-sections:{proj.dataset}"
        sections = json.loads(con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()[0])
        verify = json.loads(sections["verify"])
        digest = verify["settings"] if isinstance(verify, dict) else verify
        assert digest == con.execute("SELECT value FROM meta WHERE key = ?",
                                     [f"settings:{proj.dataset}"]).fetchone()[0]
        sections["verify"] = json.dumps(digest)
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [json.dumps(sections, sort_keys=True), key])
        store = Path(con.execute("SELECT path FROM blobs LIMIT 1").fetchone()[0]).parents[1]  # <store>/ab/abcd….jpg
        for origin, (status, reason, data) in origins.items():
            sha = _sha(data)
            if status == "ok":
                with Image.open(io.BytesIO(data)) as img:  # what the older verifier read: Pillow, silent
                    img.load()
                    width, height, mode = img.width, img.height, img.mode
                path = store / sha[:2] / f"{sha}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                con.execute("INSERT INTO blobs (sha256, path, bytes, format, width, height, mode, frames, pixel_sha, "
                            "created_at) SELECT ?, ?, ?, 'JPEG', ?, ?, ?, 1, ?, now() WHERE ? NOT IN (SELECT sha256 FROM blobs)",
                            [sha, str(path), len(data), width, height, mode, "old-" + sha, sha])
                con.execute("UPDATE items SET status = 'ok', reason = NULL, detail = NULL, sha256 = ?, "
                            "split = 'train', width = ?, height = ? WHERE origin = ?", [sha, width, height, origin])
            else:
                con.execute("UPDATE items SET status = ?, reason = ?, detail = 'as an older dsbuild said', "
                            "sha256 = ?, split = NULL, dup_group = NULL, dup_of = NULL WHERE origin = ?",
                            [status, reason, sha, origin])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _items(proj: Project) -> dict[str, dict]:
    return {r["origin"]: r for r in proj.rows("SELECT origin, status, reason, detail, split, sha256 FROM items "
                                              "WHERE dataset = ?", proj.dataset)}


def _said(out: str) -> str:
    """The build's output with its lines joined (a note longer than the console, 160 columns in a pipe, wraps)."""
    return " ".join(out.split())


def _recheck_line(out: str) -> str:
    """What follows the one ``dsbuild's image checks changed …`` line's colon, up to the next note."""
    text = _said(out)
    assert text.count("image checks changed") == 1, out
    m = RECHECK.search(text)
    assert m, out
    return m


# --------------------------------------------------------------------------- folder sources


def _good_project(root: Path) -> Project:
    """A project whose class folders hold the :data:`GOOD` photos."""
    proj = Project(root)
    for label, names in GOOD.items():
        for k, name in enumerate(names):
            proj.add(label, f"{name}.jpg", _good(name, k))
    return proj


def test_an_older_catalog_of_folder_files_is_verified_again_after_an_upgrade(tmp_path: Path) -> None:
    proj = _good_project(tmp_path)
    proj.set("dedup", near=False)
    junk = proj.add("a", "junk_in_scan.jpg", _junk_inside_scan())
    jfif = proj.add("b", "jfif_short.jpg", _jfif_short())
    code, out, err = proj.build()
    assert code == 0, out + err
    now = _items(proj)
    assert (now[str(junk)]["status"], now[str(junk)]["reason"]) == ("rejected", "corrupt")  # today's verifier
    assert now[str(jfif)]["status"] == "ok"

    as_built_by_an_older_dsbuild(proj, {str(junk): ("ok", None, junk.read_bytes()),
                                        str(jfif): ("rejected", "corrupt", jfif.read_bytes())})
    before = _items(proj)
    good = {o: r["split"] for o, r in before.items() if o not in (str(junk), str(jfif))}
    assert len(good) == 6 and set(good.values()) <= {"train", "valid"} and None not in good.values()

    code, out, err = proj.build()
    assert code == 0, out + err
    line = _recheck_line(out)
    assert line.group(1) == "8"  # every catalogued image, the rejected one too
    assert line.group(2) == "2 changed outcome (corrupt → ok 1; ok → corrupt 1)", line.group(0)
    after = _items(proj)
    assert (after[str(junk)]["status"], after[str(junk)]["reason"]) == ("rejected", "corrupt")
    assert "extraneous bytes" in after[str(junk)]["detail"]
    assert after[str(junk)]["split"] is None  # no longer accepted: out of its split
    assert after[str(jfif)]["status"] == "ok" and after[str(jfif)]["split"] in ("train", "valid")  # split as a new one
    assert {o: after[o]["split"] for o in good} == good  # the rest keep their splits
    old_blob = proj.rows("SELECT path FROM blobs WHERE sha256 = ?", _sha(junk.read_bytes()))
    assert len(old_blob) == 1 and Path(old_blob[0]["path"]).exists()  # nothing deleted

    code, out, err = proj.build()  # recorded now: the next build has nothing to re-check
    assert code == 0, out + err
    assert "image checks changed" not in out and "up to date" in out, out


def test_a_settings_change_with_an_upgrade_says_both_in_one_line(tmp_path: Path) -> None:
    proj = _good_project(tmp_path)
    proj.set("dedup", near=False)
    assert proj.build()[0] == 0
    as_built_by_an_older_dsbuild(proj, {})
    proj.set("verify", min_side=150)  # the 140-px photos are too small now
    code, out, err = proj.build()
    assert code == 0, out + err
    assert (f"ds: dsbuild's image checks and the dataset's settings changed (verifier revision 1 → {VERIFIER_REVISION}) — re-checked 6 "
            "catalogued images from the files on disk: 6 changed outcome (ok → too small 6)") in _said(out), out
    assert "re-tried" not in out, out  # one line, not one per reason


# --------------------------------------------------------------------------- downloads


@pytest.fixture()
def server():
    """The loopback image server of tests/fake_engines.py: ``bodies`` (path under ``base`` → JPEG bytes) served,
    ``seen`` every path asked for (under ``/photo``)."""
    from types import SimpleNamespace

    from fake_engines import FakeEngineServer

    bodies = {f"/{label}/{name}.jpg": _good(name, k) for label, names in GOOD.items() for k, name in enumerate(names)}
    bodies |= {"/a/junk_in_scan.jpg": _junk_inside_scan(), "/b/jfif_short.jpg": _jfif_short()}
    with FakeEngineServer() as fake:
        for path, data in bodies.items():
            fake.serve(path[1:], data)
        yield SimpleNamespace(base=f"{fake.url}/photo", bodies=bodies, seen=fake.requests)


def test_an_older_catalog_of_downloads_is_verified_again_from_the_store_without_a_request(tmp_path: Path,
                                                                                          server) -> None:
    proj = Project(tmp_path)
    (tmp_path / "lists").mkdir()
    for label in GOOD:
        urls = [server.base + p for p in server.bodies if p.startswith(f"/{label}/")]
        (tmp_path / "lists" / f"{label}.txt").write_text("\n".join(urls) + "\n")
        proj.classes[label] = {"urls": [f"lists/{label}.txt"]}
    proj.set("", allow_private_hosts=True)
    proj.set("dedup", near=False)
    code, out, err = proj.build()
    assert code == 0, out + err
    assert sorted(server.seen) == sorted("/photo" + p for p in server.bodies)  # each URL once
    junk, jfif = server.base + "/a/junk_in_scan.jpg", server.base + "/b/jfif_short.jpg"
    now = _items(proj)
    assert (now[junk]["status"], now[junk]["reason"]) == ("rejected", "corrupt") and now[jfif]["status"] == "ok"

    # The older dsbuild accepted the junk JPEG (its bytes stored) and rejected the short JFIF (nothing stored).
    as_built_by_an_older_dsbuild(proj, {junk: ("ok", None, server.bodies["/a/junk_in_scan.jpg"]),
                                        jfif: ("rejected", "corrupt", server.bodies["/b/jfif_short.jpg"])})
    before = _items(proj)
    good = {o: r["split"] for o, r in before.items() if o not in (junk, jfif)}
    assert len(good) == 6 and None not in good.values()
    server.seen.clear()

    code, out, err = proj.build()
    assert code == 0, out + err
    assert server.seen == []  # verified again from the store: no request reached the server
    line = _recheck_line(out)
    assert line.group(1) == "7"  # six accepted downloads and the junk JPEG; the short JFIF has no stored copy
    assert line.group(2) == ("1 changed outcome (ok → corrupt 1); 1 image not re-checked: rejected downloads, "
                             "no copy of them stored (not downloaded again)"), line.group(0)
    after = _items(proj)
    assert (after[junk]["status"], after[junk]["reason"], after[junk]["split"]) == ("rejected", "corrupt", None)
    assert (after[jfif]["status"], after[jfif]["reason"]) == ("rejected", "corrupt")  # kept as it was, said so
    assert {o: after[o]["split"] for o in good} == good
    stored = proj.rows("SELECT path FROM blobs WHERE sha256 = ?", after[junk]["sha256"])
    assert len(stored) == 1 and Path(stored[0]["path"]).exists()  # its stored copy is kept, not lost

    code, out, err = proj.build()
    assert code == 0, out + err
    assert server.seen == [] and "image checks changed" not in out and "up to date" in out, out


# --------------------------------------------------------------------------- how pixels are read


def _twelve_bit_png() -> bytes:
    """A 16-bit greyscale PNG holding 12-bit data (a camera's raw range): revision 2 scales it by 4095, not 65535."""
    import numpy as np

    grey = np.asarray(photo("camera", (200, 160)).convert("L"), dtype=np.uint16) * 16  # 0 … 4080
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")  # uint16: mode I;16
    return buf.getvalue()


def test_a_blob_verified_again_takes_the_pixels_the_new_checks_read(tmp_path: Path) -> None:
    """What verification read from a stored file (the exact-duplicate key, quality scores) is refreshed by the re-check,
    and the near-duplicate signals of pixels read otherwise are computed again: the blob row of a 12-bit PNG as
    revision 1 wrote it (its pixels read as /65535: near black) becomes what a first build by today's dsbuild writes."""
    def project(root: Path) -> tuple[Project, Path]:
        proj = _good_project(root)
        return proj, proj.add("a", "twelve_bit.png", _twelve_bit_png())

    fresh, _ = project(tmp_path / "fresh")
    assert fresh.build()[0] == 0
    proj, png = project(tmp_path / "upgraded")
    assert proj.build()[0] == 0
    sha = _sha(png.read_bytes())
    columns = "pixel_sha, q_dark, q_light, q_low_information, phash_views, eff_side"
    want = fresh.rows(f"SELECT {columns} FROM blobs WHERE sha256 = ?", sha)
    assert len(want) == 1 and want[0]["phash_views"] is not None

    as_built_by_an_older_dsbuild(proj, {})
    con = duckdb.connect(str(proj.catalog))
    try:  # what revision 1 read: the picture near black, its own pixel key, signals computed from that picture
        con.execute("UPDATE blobs SET pixel_sha = 'read by revision 1', q_dark = 0.0, q_light = 1.0, "
                    "q_low_information = 0.0, phash_views = [1, 2, 3, 4, 5, 6, 7], eff_side = 3.0 "
                    "WHERE sha256 = ?", [sha])
        con.execute("CHECKPOINT")
    finally:
        con.close()

    code, out, err = proj.build()
    assert code == 0, out + err
    assert _recheck_line(out).group(1) == "7"
    assert proj.rows(f"SELECT {columns} FROM blobs WHERE sha256 = ?", sha) == want


# --------------------------------------------------------------------------- embeddings of the pixels read

SIGNALS = re.compile(r"near-duplicate signals (\d+)/(\d+) computed (\d+)")


def _as_an_older_cache(proj: Project, plant: dict[str, str] | None = None) -> dict[str, object]:
    """Rewrite ``proj``'s embedding cache as a dsbuild before this one wrote it — one row per blob, keyed by its
    sha256 alone (the vectors as they are) — with the row of each blob of ``plant`` (sha256 → sha256 of another blob)
    replaced by that other blob's vector: what an older verifier that read other pixels from it embedded. Returns
    sha256 → the vector each blob had before."""
    import numpy as np

    folder = proj.catalog.parent / "features" / "efficientnet_lite0-160-squash-v1"
    shards = sorted(folder.glob("part-*.parquet"))
    rows = {}
    for shard in shards:
        for key, blob in duckdb.read_parquet(str(shard)).fetchall():
            rows[key.split(":")[0]] = blob
    before = {sha: np.frombuffer(blob, dtype="<f2").astype("float32") for sha, blob in rows.items()}
    for sha, other in (plant or {}).items():
        rows[sha] = rows[other]
    for shard in shards:
        shard.unlink()
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE t (sha256 VARCHAR, emb BLOB)")
        con.executemany("INSERT INTO t VALUES (?, ?)", list(rows.items()))
        con.execute(f"COPY t TO '{folder / 'part-000000-old.parquet'}' (FORMAT PARQUET)")
    finally:
        con.close()
    return before


def _neighbour_similarity(proj: Project, a: str, b: str) -> float | None:
    """The cosine the ``neighbours`` view gives between the images of origins ending in ``a`` and ``b``."""
    rows = proj.rows("SELECT n.similarity FROM neighbours n JOIN items x ON x.image_id = n.image_id "
                     "JOIN items y ON y.image_id = n.neighbour_id WHERE x.origin LIKE ? AND y.origin LIKE ?",
                     f"%{a}", f"%{b}")
    return rows[0]["similarity"] if rows else None


def test_an_upgrade_that_reads_the_same_pixels_embeds_nothing_again(tmp_path: Path) -> None:
    """A catalog and embedding cache an older dsbuild wrote (rows keyed by the blob alone), re-checked after an
    upgrade that reads every picture as before: no image is embedded again (the stage computes 0), the neighbours
    stay as they were, and the cache's rows are kept under the pixels they were computed from."""
    proj = _good_project(tmp_path)
    assert proj.build()[0] == 0
    neighbours = proj.rows("SELECT image_id, neighbour_id, similarity FROM neighbours ORDER BY ALL")
    assert neighbours
    before = _as_an_older_cache(proj)
    as_built_by_an_older_dsbuild(proj, {})

    code, out, err = proj.build()
    assert code == 0, out + err
    assert _recheck_line(out).group(1) == "6"
    assert SIGNALS.search(err).groups() == ("6", "6", "0"), err  # 6 images, 0 computed: nothing embedded again
    assert proj.rows("SELECT image_id, neighbour_id, similarity FROM neighbours ORDER BY ALL") == neighbours
    code, out, err = proj.build()  # and the next build neither
    assert code == 0 and SIGNALS.search(err) is None or SIGNALS.search(err).group(3) == "0", err
    folder = proj.catalog.parent / "features" / "efficientnet_lite0-160-squash-v1"
    keys = [k for shard in folder.glob("part-*.parquet") for k, _ in duckdb.read_parquet(str(shard)).fetchall()]
    pixels = {r["sha256"]: r["pixel_sha"] for r in proj.rows("SELECT sha256, pixel_sha FROM blobs")}
    assert sorted(keys) == sorted(f"{sha}:{pixels[sha]}" for sha in before)


def _as_read_by_revision_1(proj: Project, sha: str) -> None:
    """``proj``'s catalog as an older dsbuild wrote it (:func:`as_built_by_an_older_dsbuild`), with what revision 1
    read from the 12-bit PNG of blob ``sha``: the picture near black, its own pixel key, signals computed from it."""
    as_built_by_an_older_dsbuild(proj, {})
    con = duckdb.connect(str(proj.catalog))
    try:
        con.execute("UPDATE blobs SET pixel_sha = 'read by revision 1', phash_views = [1, 2, 3, 4, 5, 6, 7], "
                    "eff_side = 3.0 WHERE sha256 = ?", [sha])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def test_an_image_whose_pixels_a_recheck_reads_otherwise_is_embedded_again(tmp_path: Path) -> None:
    """The 12-bit PNG whose pixels revision 1 read as near black: its blob's pixel key and near-duplicate signals
    were refreshed by the re-check, but its embedding (of the old pixels: here, planted as the astronaut's) was kept
    — the neighbours said it was the astronaut photo (cosine 1.0). Now it is embedded again from the pixels read
    today, the only image that is: the neighbours are those of a fresh build."""
    fresh = _good_project(tmp_path / "fresh")
    fresh.add("a", "twelve_bit.png", _twelve_bit_png())
    assert fresh.build()[0] == 0
    proj = _good_project(tmp_path / "upgraded")
    png = proj.add("a", "twelve_bit.png", _twelve_bit_png())
    assert proj.build()[0] == 0
    sha, astronaut = _sha(png.read_bytes()), _sha(_good("astronaut", 0))
    before = _as_an_older_cache(proj, plant={sha: astronaut})
    _as_read_by_revision_1(proj, sha)

    code, out, err = proj.build()
    assert code == 0, out + err
    assert SIGNALS.search(err).groups() == ("7", "7", "1"), err  # the PNG only
    similarity = _neighbour_similarity(proj, "twelve_bit.png", "astronaut.jpg")
    assert similarity is None or similarity < 0.99, similarity
    assert _neighbour_similarity(proj, "twelve_bit.png", "astronaut.jpg") == \
        _neighbour_similarity(fresh, "twelve_bit.png", "astronaut.jpg")
    import numpy as np

    from dsbuild.model.embeddings import FeatureCache, FeatureSpec, emb_key

    pixel = proj.rows("SELECT pixel_sha FROM blobs WHERE sha256 = ?", sha)[0]["pixel_sha"]
    row = FeatureCache(proj.catalog.parent / "features", FeatureSpec()).get([emb_key(sha, pixel)])[0]
    assert np.allclose(row, before[sha], atol=2e-3)  # what a fresh build embeds for it


# --------------------------------------------------------------------------- training features of the pixels read

TRAIN_FEATURES = "efficientnet_lite0-32-v1"  # the model stage's frozen-feature cache at [model] size = 32


def _training_features(proj: Project) -> dict[str, dict[str, object]]:
    """Every shard of ``proj``'s training-feature cache: shard name → {cache key → its views concatenated}."""
    import numpy as np

    folder = proj.catalog.parent / "features" / TRAIN_FEATURES
    shards = {}
    for shard in sorted(folder.glob("part-*.npz")):
        with np.load(shard) as z:
            views = sorted(k for k in z.files if k != "sha256")
            shards[shard.name] = {str(key): np.concatenate([z[v][i] for v in views]).astype("float32")
                                  for i, key in enumerate(z["sha256"])}
    return shards


def _as_an_older_training_cache(proj: Project, plant: dict[str, str]) -> None:
    """Rewrite ``proj``'s training-feature cache as a dsbuild before this one wrote it — one shard, each row keyed by
    its blob's sha256 alone — with the rows of each blob of ``plant`` (sha256 → sha256 of another blob) replaced by
    that other blob's: what an older verifier that read other pixels from it computed."""
    import numpy as np

    folder = proj.catalog.parent / "features" / TRAIN_FEATURES
    rows: dict[str, dict] = {}
    for shard in sorted(folder.glob("part-*.npz")):
        with np.load(shard) as z:
            views = [k for k in z.files if k != "sha256"]
            for i, key in enumerate(z["sha256"]):
                rows[str(key).split(":")[0]] = {v: z[v][i] for v in views}
        shard.unlink()
    for sha, other in plant.items():
        rows[sha] = rows[other]
    np.savez(folder / "part-20250101000000-0ld0.npz", sha256=np.array(list(rows)),
             **{v: np.stack([r[v] for r in rows.values()]) for v in views})


def test_an_image_whose_pixels_a_recheck_reads_otherwise_gets_new_training_features(tmp_path: Path) -> None:
    """The 12-bit PNG in the model stage: its frozen features (cached for train, mislabels and retrain) were of the
    pixels revision 1 read (planted: the astronaut photo's), keyed by the blob alone. After the upgrade's re-check,
    ``train`` computes that image's features again from the pixels read today — what a first training computes —
    and only it: the 5 unchanged images' rows, written by the older dsbuild, are taken over, not computed again."""
    import numpy as np

    proj = _good_project(tmp_path)
    (proj.root / "images" / "b" / "camera.jpg").unlink()  # the PNG is of that photo: both trained on, no duplicate
    png = proj.add("a", "twelve_bit.png", _twelve_bit_png())
    proj.set("model", arch="efficientnet_lite0", size=32)
    assert proj.build()[0] == 0
    code, out, err = proj.cli("train", proj.dataset)
    assert code in (0, 3) and "Traceback" not in out + err, out + err  # 6 images: whether it learned is not the point
    sha, astronaut = _sha(png.read_bytes()), _sha(_good("astronaut", 0))
    first = {k: v for rows in _training_features(proj).values() for k, v in rows.items()}
    assert len(first) == 6
    today = next(v for k, v in first.items() if k.startswith(sha))  # the PNG's features of today's pixels
    planted = next(v for k, v in first.items() if k.startswith(astronaut))
    assert not np.allclose(today, planted, atol=1e-2)
    _as_an_older_training_cache(proj, plant={sha: astronaut})
    _as_read_by_revision_1(proj, sha)

    code, out, err = proj.build()
    assert code == 0, out + err
    assert _recheck_line(out).group(1) == "6"
    built = _training_features(proj)
    code, out, err = proj.cli("train", proj.dataset)
    assert code in (0, 3) and "Traceback" not in out + err, out + err
    trained = _training_features(proj)
    pixels = {r["sha256"]: r["pixel_sha"] for r in proj.rows("SELECT sha256, pixel_sha FROM blobs")}
    assert pixels[sha] != "read by revision 1"
    computed = {k: v for name, rows in trained.items() if name not in built for k, v in rows.items()}
    assert list(computed) == [f"{sha}:{pixels[sha]}"]  # the PNG only: 1 image computed, 5 taken over
    assert np.allclose(computed[f"{sha}:{pixels[sha]}"], today, atol=1e-3)  # what a first training computes
    kept = {k for rows in built.values() for k in rows}
    assert {f"{s}:{pixels[s]}" for s in pixels if s != sha} <= kept  # the others under the pixels read now
