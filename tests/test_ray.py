"""The ``ray`` executor on a real Ray cluster: two nodes on this machine, started and stopped by the fixture.

``ray start --head`` plus a second node joining it over loopback, one CPU each,
a small object store, short temp folders (:mod:`ray_cluster`); every build runs
the real CLI against it (``--executor ray --ray-address HOST:PORT``) and is
compared row for row with a build of the same sources by the local backend:
items, blobs and fetches, all columns but timestamps, build ids and where the
store lives. Select these tests with ``-m ray``; they run in ``make test``.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from fake_engines import FakeEngineServer
from helpers import kill_after_first_commit
from hostile_kit import REPO, cut_scan, encode, photo
from hostile_server import HostileServer
from ray_cluster import RAY_ENV, LocalRayCluster, free_port

from dsbuild.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

VOLATILE = {"first_seen", "updated_at", "build_id", "created_at", "fetched_at", "elapsed_s"}
KEYS = {"items": ["dataset", "image_id"], "blobs": ["sha256"], "fetches": ["dataset", "url"]}


@pytest.fixture(scope="module", autouse=True)
def ray_env():
    """This process and the builds it starts use the test clusters' environment (:data:`ray_cluster.RAY_ENV`)."""
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(ray_env):
    """A two-node Ray cluster (head + one worker node, one CPU each) for the whole module."""
    with LocalRayCluster(nodes=2, cpus_per_node=1) as c:
        try:
            yield c
        finally:
            from dsbuild.executor import release_backends

            release_backends()  # the driver lets go of the cluster before it stops


# --------------------------------------------------------------------------- helpers


def cli(*args: str) -> tuple[int, str, str]:
    """``dsbuild ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def write_manifest(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datasets.toml"
    path.write_text('catalog = "cat/dsbuild.duckdb"\n' + body)
    return path


def table(manifest: Path, name: str) -> pd.DataFrame:
    """Table ``name`` of the manifest's catalog, volatile columns dropped, store paths relative, sorted by key."""
    folder = manifest.parent
    with duckdb.connect(str(folder / "cat" / "dsbuild.duckdb"), read_only=True) as con:
        df = con.execute(f"SELECT * FROM {name}").df()  # noqa: S608 - a table name of this test
    df = df.drop(columns=[c for c in df.columns if c in VOLATILE])
    if "path" in df.columns:
        store = str(folder / "cat" / "store")
        assert df["path"].str.startswith(store).all(), df["path"]
        df["path"] = df["path"].str.slice(len(store))
    return df.sort_values(KEYS[name]).reset_index(drop=True)


COMPARED = {  # what "the same catalog" must cover (issue 14): statuses, reasons, hashes, quality, groups, splits
    "items": {"status", "reason", "detail", "sha256", "phash", "dup_group", "dup_of", "dup_distance", "conflict", "split"},
    "blobs": {"sha256", "pixel_sha", "bytes", "format", "width", "height", "q_dark", "q_light", "q_blurry",
              "q_low_information", "q_grayscale", "q_odd_aspect_ratio"},
    "fetches": {"url", "outcome", "reason", "http_status", "bytes", "sha256"},
}


def assert_same_catalog(local: Path, ray: Path) -> None:
    """The two builds' catalogs hold the same rows (items, blobs, fetches), row for row, every column but the
    volatile ones; the store holds the same files."""
    for name in KEYS:
        a, b = table(local, name), table(ray, name)
        assert COMPARED[name] <= set(a.columns), COMPARED[name] - set(a.columns)
        assert len(a) == len(b), (name, len(a), len(b))
        pd.testing.assert_frame_equal(a, b, obj=name)
    store = {p.relative_to(local.parent / "cat" / "store") for p in (local.parent / "cat" / "store").rglob("*") if p.is_file()}
    other = {p.relative_to(ray.parent / "cat" / "store") for p in (ray.parent / "cat" / "store").rglob("*") if p.is_file()}
    assert store == other and not any(p.name.startswith(".tmp-") or p.suffix == ".part" for p in other)


def photo_folders(root: Path, per_class: int, *, hostile: bool = False) -> Path:
    """``root/cat`` and ``root/dog`` of real photos (crops of skimage's photos, JPEG and PNG); with ``hostile``
    a few bad files among them: an HTML page called .jpg, a JPEG cut mid-scan, an empty file, a
    decompression bomb, and a PNG that takes longer than the time limit to decode."""
    from PIL import Image

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock")
    for c, label in enumerate(("cat", "dog")):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = photo(names[(k + c) % len(names)], (96 + k % 7 * 8, 72 + k % 5 * 8)).rotate(k * 7 + c)
            fmt, ext = ("PNG", "png") if k % 4 == 0 else ("JPEG", "jpg")
            (folder / f"{label}{k:03d}.{ext}").write_bytes(encode(img, fmt))
    if hostile:
        (root / "cat" / "page.jpg").write_bytes(b"<!doctype html><html><body>404</body></html>")
        (root / "cat" / "cut.jpg").write_bytes(cut_scan(encode(photo("coffee", (200, 150)), "JPEG"), 0.4))
        (root / "dog" / "empty.png").write_bytes(b"")
        bomb = encode(Image.new("L", (12000, 12000)), "PNG")  # 144 Mpx > max_pixels
        (root / "dog" / "bomb.png").write_bytes(bomb)
        slow = encode(photo("coffee", (60, 60)).resize((6000, 6000), Image.Resampling.NEAREST), "PNG")
        (root / "dog" / "slow.png").write_bytes(slow)
    return root


FOLDER_DATASET = """
[datasets.pets]
[datasets.pets.verify]
time_limit = 0.5
[datasets.pets.classes]
cat = {{ folders = "{root}/cat" }}
dog = {{ folders = "{root}/dog" }}
"""


# --------------------------------------------------------------------------- same catalog as the local backend


def test_a_folder_dataset_built_on_the_cluster_equals_the_local_build(cluster, tmp_path: Path) -> None:
    images = photo_folders(tmp_path / "images", 40, hostile=True)
    body = FOLDER_DATASET.format(root=images)
    local = write_manifest(tmp_path / "local", body)
    ray = write_manifest(tmp_path / "ray", body)

    code, out, err = cli("-m", str(local), "build", "-q")
    assert (code, err) == (0, ""), err
    code, out, err = cli("-m", str(ray), "build", "-q", "--executor", "ray", "--ray-address", cluster.address)
    assert (code, err) == (0, ""), err
    assert "Traceback" not in out

    assert_same_catalog(local, ray)
    items = table(ray, "items").set_index("origin")
    reasons = {Path(o).name: (r.status, r.reason) for o, r in items.iterrows() if r.status == "rejected"}
    # one bad image = one reject row, with the same reason as on this machine
    assert reasons == {"page.jpg": ("rejected", "not an image"), "cut.jpg": ("rejected", "truncated"),
                       "empty.png": ("rejected", "empty file"), "bomb.png": ("rejected", "decompression bomb"),
                       "slow.png": ("rejected", "timeout")}
    assert items["status"].isin(["ok", "duplicate"]).sum() == 80 and (items["status"] == "duplicate").sum() > 0
    accepted = items[items["status"].isin(["ok", "duplicate"])]
    assert accepted["split"].notna().all() and accepted["phash"].notna().all()  # compared above, and not all empty
    assert accepted["dup_group"].notna().any()
    blobs = table(ray, "blobs")
    assert blobs["q_blurry"].notna().all() and len(blobs) > 0


HOSTILE_ROUTES = {
    "alpha": ["/img/coffee.jpg", "/img/chelsea.png", "/img/rocket.gif", "/same/a.jpg", "/same/b.jpg",
              "/unicode/café ü.jpg", "/html-as-jpeg.jpg", "/status/404", "/status/500", "/stall-body.jpg",
              "/short.jpg", "/reset.jpg"],
    "beta": ["/img/rocket.webp", "/img/astronaut.bmp", "/img/coffee.tiff", "/redirect/loop-a",
             "/redirect/to?url=file:///etc/passwd", "/endless.jpg", "/gzip-bomb.jpg", "/noai.jpg", "/bomb.png"],
}

WEB_DATASET = """
[datasets.web]
engine = "bing"
endpoint = "{endpoint}"
allow_private_hosts = true
per_query = 50
[datasets.web.dedup]
near = false
[datasets.web.fetch]
connect_timeout = 1.0
read_timeout = 0.5
deadline = 2.0
retries = 1
backoff_base = 0.05
retry_after_max = 2.0
max_bytes = 1000000
[datasets.web.classes]
alpha = "alpha things"
beta = "beta things"
"""


def test_a_web_dataset_built_on_the_cluster_equals_the_local_build(cluster, tmp_path: Path) -> None:
    """Loopback search engine + hostile image server: downloads run on the Ray workers; every URL gets the same
    fetch row and image row as when this machine downloads it (a hostile URL: the same reject row)."""
    with HostileServer() as images, FakeEngineServer() as engine:
        for label, routes in HOSTILE_ROUTES.items():
            engine.plant(f"{label} things", [images.url + r for r in routes])
        body = WEB_DATASET.format(endpoint=engine.url)
        local = write_manifest(tmp_path / "local", body)
        ray = write_manifest(tmp_path / "ray", body)
        code, out, err = cli("-m", str(local), "build", "-q")
        assert (code, err) == (0, ""), err
        served_locally = len(images.requests)
        code, out, err = cli("-m", str(ray), "build", "-q", "--executor", "ray", "--ray-address", cluster.address)
        assert (code, err) == (0, ""), err
        assert len(images.requests) - served_locally == served_locally  # the same requests, made by the workers

    assert_same_catalog(local, ray)
    fetches = table(ray, "fetches")
    assert set(fetches["outcome"]) == {"ok", "failed", "rejected"}
    assert {"too large", "noai", "redirect loop", "bad scheme", "not an image (html)"} <= set(fetches["reason"])
    assert not (ray.parent / "cat" / "store" / ".incoming").exists() or not any((ray.parent / "cat" / "store" / ".incoming").iterdir())


# --------------------------------------------------------------------------- failures


def test_a_batch_that_kills_its_worker_every_time_costs_one_image(cluster, tmp_path: Path) -> None:
    """A job that ends its Ray worker process whenever it runs (as a decoder crash would): Ray retries its
    batch, then the batch runs image by image, and only that image is rejected (``corrupt``)."""
    from dsbuild.executor import VerifyJob, run_batch
    from dsbuild.executor_settings import ExecutorSettings
    from dsbuild.manifest import DedupSettings, VerifySettings
    from dsbuild.ray_backend import RayExecutor

    folder = photo_folders(tmp_path / "images", 4)
    files = sorted(folder.rglob("*.*"))
    jobs = [VerifyJob(f.name, str(f), VerifySettings(), DedupSettings()) for f in files]
    killer = VerifyJob("killer", KillsItsProcess(files[0]), VerifySettings(), DedupSettings())
    jobs.insert(3, killer)
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    executor = RayExecutor(ExecutorSettings(backend="ray", address=cluster.address, batch_size=4))
    try:
        got = {job.key: rec for job, rec in executor.map(jobs)}
    finally:
        executor.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (got["killer"].ok, got["killer"].reason) == (False, "corrupt")
    assert got["killer"].detail == "the decoder crashed on this file"
    assert len(got) == len(jobs)
    assert [got[j.key] for j in jobs if j is not killer] == run_batch([j for j in jobs if j is not killer])


class KillsItsProcess:
    """A path (``os.PathLike``) that ends the process opening it (SIGKILL, as the OOM killer or a decoder crash would)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __fspath__(self) -> str:
        os.kill(os.getpid(), signal.SIGKILL)
        return self.path  # pragma: no cover - never reached


def test_an_unreachable_address_fails_fast_in_one_line(tmp_path: Path) -> None:
    images = photo_folders(tmp_path / "images", 2)
    manifest = write_manifest(tmp_path / "p", FOLDER_DATASET.format(root=images))
    closed = free_port()  # nothing listens there
    t0 = time.monotonic()
    code, out, err = cli("-m", str(manifest), "build", "-q", "--ray-address", f"127.0.0.1:{closed}")
    assert time.monotonic() - t0 < 15
    assert code == 2
    assert err == (f"Error: cannot reach the Ray cluster at 127.0.0.1:{closed}: connection refused — start it "
                   "(`ray start --head` on the head node) or fix [executor] address / --ray-address\n")
    assert not (manifest.parent / "cat").exists()  # nothing written: no catalog, no lock, no build row


def ray_children() -> list[str]:
    """Command lines of this process's children that are Ray's own processes (a runtime ``ray.init`` started)."""
    import ray
    from ray_cluster import proc_stat

    ray_dir = str(Path(ray.__file__).parent) + os.sep  # raylet, gcs_server, monitors and agents run from here
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := proc_stat(int(name))) is not None and fields[0] != "Z" \
                and int(fields[1]) == os.getpid():
            try:
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if ray_dir in cmd or cmd.startswith("ray::"):
                out.append(cmd[:120])
    return out


def test_without_an_address_a_build_starts_a_ray_runtime_and_stops_it(tmp_path: Path) -> None:
    """``--executor ray`` and no address: the build starts a Ray runtime on this machine, builds the same catalog
    as the local backend, and leaves no Ray process behind. Its progress (no terminal: lines) says the runtime's
    start-up once, on its own line, and times the per-image rate from then: the first rate counted the start-up's
    seconds as per-image time ("12/12 … 0.6 s each" for images that took a tenth of that)."""
    import re

    images = photo_folders(tmp_path / "images", 6)
    body = FOLDER_DATASET.format(root=images)
    local = write_manifest(tmp_path / "local", body)
    ray = write_manifest(tmp_path / "ray", body)
    code, out, err = cli("-m", str(local), "build", "-q")
    assert (code, err) == (0, ""), err
    assert not ray_children()
    code, out, err = cli("-m", str(ray), "build", "--executor", "ray")
    assert code == 0, err
    lines = err.splitlines()
    ready = [float(m.group(1)) for m in map(re.compile(r"ray: cluster ready in (\d+\.\d) s").fullmatch, lines) if m]
    assert len(ready) == 1 and ready[0] > 0 and lines[0].startswith("ray: cluster ready in "), err  # ~8 s on 2 cores; said however short
    # the step's last line (a slow machine also prints one on the way: "1/12 … 10.1 s each 28.5 s")
    verify_lines = [line for line in lines if line.startswith("pets: verify + hash ")]
    assert lines[1] == verify_lines[0], err
    verify = re.fullmatch(r"pets: verify \+ hash 12/12 ok \d+ rejected \d+ (?:(\d+)/s|(\d+\.\d) s each) (\d+\.\d) s",
                          verify_lines[-1])
    assert verify, err
    per_s, each, elapsed = verify.groups()
    seconds = 12 / int(per_s) if per_s else 12 * float(each)  # what the shown rate says the 12 images took
    assert float(elapsed) >= ready[0] and seconds <= (float(elapsed) - ready[0]) * 1.3 + 0.2, err
    assert all(line.startswith("pets: ") for line in lines[1:]), err  # progress lines only: no Ray log line
    assert_same_catalog(local, ray)
    deadline = time.monotonic() + 30
    while ray_children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_children()


def subprocess_build(manifest: Path, *args: str) -> subprocess.Popen:
    """``python -m dsbuild -m MANIFEST build -q ARGS`` in its own process group (SIGKILL reaches all of it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dsbuild", "-m", str(manifest), "build", "-q", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def stored(manifest: Path) -> int:
    store = manifest.parent / "cat" / "store"
    return sum(1 for p in store.glob("*/*") if not p.name.startswith(".")) if store.exists() else 0


def wait_until(proc: subprocess.Popen, manifest: Path, files: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while stored(manifest) < files and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the build ended before it stored {files} files: {proc.communicate()[1][-3000:]}"
    assert stored(manifest) >= files, "the build stored too little in time"


def tile_folders(root: Path, per_class: int) -> Path:
    """``root/cat`` and ``root/dog``: ``per_class`` real photos each, every one a different part of a skimage photo
    (non-overlapping 80 × 60 tiles, resized to 96–144 × 72–104 px, every fourth a PNG, the rest JPEG)."""
    from hostile_kit import _photo
    from PIL import Image

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock", "immunohistochemistry",
             "hubble_deep_field", "retina", "page", "text", "horse", "colorwheel", "moon", "logo")
    tiles = []
    for name in names:
        im = _photo(name)
        tiles += [(im, (x, y, x + 80, y + 60)) for y in range(0, im.height - 59, 60) for x in range(0, im.width - 79, 80)]
    assert len(tiles) >= 2 * per_class
    for c, label in enumerate(("cat", "dog")):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            im, box = tiles[(2 * k + c) * 7 % len(tiles)]  # 7 is prime to the tile count: every tile at most once
            img = im.crop(box).resize((96 + k % 7 * 8, 72 + k % 5 * 8), Image.Resampling.LANCZOS)
            fmt, ext = ("PNG", "png") if k % 4 == 0 else ("JPEG", "jpg")
            (folder / f"{label}{k:03d}.{ext}").write_bytes(encode(img, fmt))
    return root


# The kill tests are about the executor: the near-duplicate signals and the pixel checks run in the driver after
# every image is verified, the same code on either backend (the folder dataset above compares them with the
# default settings). Without embeddings a build of these 600 photos takes ~5 s of driver time instead of ~45.
MANY = """
[executor]
batch_size = 8
[datasets.many]
[datasets.many.dedup]
semantic = false
[datasets.many.classes]
cat = {{ folders = "{root}/cat" }}
dog = {{ folders = "{root}/dog" }}
"""


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, Path]:
    """(images, a local build of them): 600 real photos, the reference every cluster build is compared with."""
    root = tmp_path_factory.mktemp("many")
    images = tile_folders(root / "images", 300)
    local = write_manifest(root / "local", MANY.format(root=images).replace("[executor]\nbatch_size = 8\n", ""))
    code, out, err = cli("-m", str(local), "build", "-q")
    assert (code, err) == (0, ""), err
    return images, local


def test_a_killed_driver_resumes_with_dsbuild_build(cluster, many, tmp_path: Path) -> None:
    images, local = many
    manifest = write_manifest(tmp_path / "ray", MANY.format(root=images))
    args = ("--executor", "ray", "--ray-address", cluster.address)
    catalog = manifest.parent / "cat" / "dsbuild.duckdb"
    proc = subprocess_build(manifest, *args)
    try:
        wait_until(proc, manifest, 150)
        # Kill the driver just after a commit of item rows it has made, on any machine.
        committed = kill_after_first_commit(proc, catalog, tmp_path / "snapshot", time.monotonic() + 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    with duckdb.connect(str(catalog), read_only=True) as con:
        saved = con.execute("SELECT count(*) FROM items").fetchone()[0]
    assert 0 < committed <= saved < 600, (committed, saved)  # killed mid-build; every commit seen survived

    code, out, err = cli("-m", str(manifest), "build", *args)
    assert code == 0, err
    assert "Traceback" not in out + err
    assert_same_catalog(local, manifest)


def test_a_node_killed_mid_build_loses_nothing_and_duplicates_nothing(cluster, many, tmp_path: Path) -> None:
    """SIGKILL the second node's raylet while the build runs (its workers die with it): Ray re-runs the lost
    batches on the head node; the build ends normally with the same catalog as the local build. Meanwhile
    ``dsbuild status`` shows the running build."""
    images, local = many
    manifest = write_manifest(tmp_path / "ray", MANY.format(root=images))
    proc = subprocess_build(manifest, "--executor", "ray", "--ray-address", cluster.address)
    try:
        wait_until(proc, manifest, 100)
        code, out, err = cli("-m", str(manifest), "status")
        assert code == 0 and "Traceback" not in out + err, err
        assert f"is running (PID {proc.pid}, executor ray ({cluster.address}))" in out
        assert "many: verify + hash: " in out
        assert cluster.worker_pids(1), "the second node runs no worker: nothing of the build to lose there"
        cluster.kill_raylet(1)
        killed_at = stored(manifest)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cluster.add_node()  # the next test gets two nodes again
    assert proc.returncode == 0, err[-3000:]
    assert killed_at < 600  # the node died mid-build
    assert "Traceback" not in out + err
    assert_same_catalog(local, manifest)
