"""Benchmark: the ray executor beside the local one, and the two choices issue 14 asks to make by measurement.

Setup: ``--n`` (default 1,000) real-photo JPEGs 640×480…1024×768 (``bench/crawl.py``'s images, cached
under ``bench/_data/``), a one-node Ray cluster with this machine's CPUs (``ray start --head`` over
loopback, ``tests/ray_cluster.py``; started before the timing, stopped after it). Three parts, one run:

1. **Whole folder builds, local vs Ray Core tasks** (``dsbuild build``: scan → verify + hash + quality
   + store → catalog → dedup + split; two classes), interleaved run by run (local, Ray, local, Ray …:
   the machine's drifting speed hits both alike), ``--repeat`` each, the median reported. CPU is split
   by where it runs: the driver (this process), the workers (the local backend's forkserver workers;
   Ray's ``ray::`` worker processes) and Ray's own processes (GCS, raylet, agents, monitors). Ray's
   processes cost CPU even when no build runs: their idle rate is measured first (``--idle`` s) and
   reported apart, so "Ray's added CPU per image" is the difference in CPU per image of the two
   builds, and "of which idle background" the part that is a fixed cost per second of a cluster.
2. **The per-image stage alone, Ray Core tasks vs Ray Data ``map_batches``** (and the local
   process pool as the baseline): the same VerifyJobs (verify + hash + quality + store write), batches
   of 64, records back to the driver. Ray Data needs ``pyarrow`` (``pip install 'ray[data]'``); the
   row is skipped with a note when it is missing.
3. **Rows into the catalog: driver transactions vs worker-written Parquet shards**, with the real
   records of part 2 repeated to ``--rows`` rows (distinct ids and hashes): (a) what a build does
   today — ``item_row``/``blob_row`` dicts → ``RowWriter`` (500 rows per DuckDB transaction); (b)
   each batch of 64 rows written as a Parquet shard where the worker runs (DuckDB's writer, timed
   here as the workers' CPU), the driver ingesting 8 shards per transaction with ``read_parquet``
   and the same upsert. The figure that matters is the driver's CPU per row: the driver is the one
   serial part of a cluster build.

A local cluster on 2 cores cannot show scale-out (Ray's workers share the cores with the driver and
with Ray's own processes): what this measures is Ray's cost per image, which is what scales.

    .venv/bin/python bench/ray_modes.py            # 1,000 images, 3 builds each
    .venv/bin/python bench/ray_modes.py --quick    # 500 images, 1 build each
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the real local cluster (tests/ray_cluster.py)
sys.path.insert(2, str(ROOT / "bench"))  # crawl.py's images
BATCH = 64


# --------------------------------------------------------------------------- CPU accounting


class ClusterCpu:
    """CPU seconds of the cluster's processes over a window, split into ``workers`` (``ray::`` task processes) and
    ``ray`` (everything else: GCS, raylet, agents, monitors).

    Ray starts and ends worker processes as it likes (idle ones above the CPU count end after a while), and an
    ended worker's CPU time cannot be read any more: every process is sampled every ``every`` s while the window
    is open, and each counts its own CPU (utime + stime; never its reaped children's, which are counted by
    themselves) from the window's start, or from 0 when it started inside it. A process that ends between two
    samples loses at most ``every`` s of its CPU."""

    def __init__(self, cluster, every: float = 0.1) -> None:
        import threading

        self.cluster, self.every = cluster, every
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, tuple[str, float]]:
        from ray_cluster import proc_stat

        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for pid in self.cluster.pids():
            fields = proc_stat(pid)
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            if fields is not None:
                kind = "workers" if title.startswith(b"ray::") and not title.endswith(b"Agent") else "ray"
                out[pid] = (kind, (int(fields[11]) + int(fields[12])) / tick)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.last.update(self._sample())
        self.own += time.thread_time()

    def __enter__(self) -> "ClusterCpu":
        self.own = 0.0  # CPU seconds of this process spent sampling (subtracted from the driver's)
        c0 = time.thread_time()
        self.first = {pid: cpu for pid, (_, cpu) in self._sample().items()}
        self.own += time.thread_time() - c0
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        c0 = time.thread_time()
        self._stop.set()
        self._thread.join()
        self.last.update(self._sample())
        self.own += time.thread_time() - c0
        self.split = {"workers": 0.0, "ray": 0.0}
        for pid, (kind, cpu) in self.last.items():
            self.split[kind] += cpu - self.first.get(pid, 0.0)


def local_worker_cpu() -> float:
    from crawl import forkserver_cpu

    return forkserver_cpu()


class Meter:
    """Wall and CPU of one timed run, split into driver / workers / ray."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster

    def __enter__(self) -> "Meter":
        self.cpu = ClusterCpu(self.cluster).__enter__() if self.cluster is not None else None
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.l0 = local_worker_cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.driver = time.process_time() - self.c0
        self.workers, self.ray = local_worker_cpu() - self.l0, 0.0
        if self.cpu is not None:
            self.cpu.__exit__()
            self.driver -= self.cpu.own  # the sampling is the benchmark's, not the build's
            self.workers += self.cpu.split["workers"]
            self.ray = self.cpu.split["ray"]

    def row(self, n: int) -> dict:
        return {"n": n, "wall": self.wall, "img_s": n / self.wall, "driver": self.driver / n * 1e3,
                "workers": self.workers / n * 1e3, "ray": self.ray / n * 1e3,
                "cpu": (self.driver + self.workers + self.ray) / n * 1e3}


def median(rows: list[dict]) -> dict:
    return sorted(rows, key=lambda r: r["img_s"])[len(rows) // 2]


# --------------------------------------------------------------------------- 1. whole builds


def class_folders(images: Path, work: Path) -> Path:
    """``work/images/{a,b}``: the JPEGs split into two classes (hard links where the disk allows)."""
    root = work / "images"
    for k, src in enumerate(sorted(images.glob("*.jpg"))):
        dst = root / "ab"[k % 2] / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return root


def whole_build(root: Path, out: Path, executor) -> int:
    from dsbuild.manifest import load_manifest
    from dsbuild.pipeline import build

    out.mkdir(parents=True)
    (out / "datasets.toml").write_text(f"""catalog = "cat/dsbuild.duckdb"
[datasets.bench.classes]
a = {{ folders = "{root / 'a'}" }}
b = {{ folders = "{root / 'b'}" }}
""")
    summary = build(load_manifest(out / "datasets.toml"), ["bench"], executor=executor)
    d = summary.datasets[0]
    return d.ok + d.duplicates + d.rejected


def builds(args, root: Path, work: Path, cluster, ray_settings) -> list[tuple[str, dict]]:
    n = len(list(root.rglob("*.jpg")))
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    whole_build(root, work / "warm-local", None)  # warm both: the forkserver's and the Ray workers' imports
    whole_build(root, work / "warm-ray", ray_settings)
    for k in range(args.repeat):
        for name, settings in (("local", None), ("ray", ray_settings)):
            out = work / f"build-{name}-{k}"
            with Meter(cluster if name == "ray" else None) as m:
                done = whole_build(root, out, settings)
            assert done == n, (name, done, n)
            runs[name].append(m.row(n))
            print(f"  {name} build {k + 1}/{args.repeat}: {runs[name][-1]['img_s']:.1f} img/s, "
                  f"{runs[name][-1]['cpu']:.2f} CPU ms/img (load {os.getloadavg()[0]:.1f})", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    label = f", median of {args.repeat}" if args.repeat > 1 else ""
    return [(f"folder build, local (2 worker processes){label}", median(runs["local"])),
            (f"folder build, ray (Core tasks of {BATCH}, 1 node){label}", median(runs["ray"]))]


# --------------------------------------------------------------------------- 2. Core tasks vs Data map_batches


def jobs_for(images: Path, store: Path) -> list:
    from dsbuild.executor import VerifyJob
    from dsbuild.manifest import DedupSettings, VerifySettings

    return [VerifyJob(p.name, str(p), VerifySettings(), DedupSettings(), store) for p in sorted(images.glob("*.jpg"))]


def stage_local(jobs: list) -> list:
    from dsbuild.executor import LocalPoolExecutor

    with LocalPoolExecutor(os.cpu_count() or 1) as ex:
        return [rec for _, rec in ex.map(jobs, batch_size=BATCH)]


def stage_core(jobs: list, settings) -> list:
    from dsbuild.ray_backend import RayExecutor

    ex = RayExecutor(settings)
    try:
        return [rec for _, rec in ex.map(jobs, batch_size=BATCH, ordered=False)]
    finally:
        ex.shutdown()


def _data_batch(batch: dict) -> dict:
    """Ray Data ``map_batches`` function: the same run_batch on the same jobs; records pickled into a column."""
    import numpy as np

    from dsbuild.executor import run_batch, worker_start

    if not getattr(worker_start, "_bench_ready", False):
        worker_start()
        worker_start._bench_ready = True
    jobs = [pickle.loads(b) for b in batch["job"]]
    recs = run_batch(jobs)
    return {"key": batch["key"], "record": np.array([pickle.dumps(r) for r in recs], dtype=object)}


def stage_data(jobs: list) -> list:
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.from_items([{"key": j.key, "job": pickle.dumps(j)} for j in jobs], override_num_blocks=max(1, len(jobs) // BATCH))
    ds = ds.map_batches(_data_batch, batch_size=BATCH, batch_format="numpy", num_cpus=1)
    return [pickle.loads(r) for batch in ds.iter_batches(batch_size=None, batch_format="numpy") for r in batch["record"]]


def stages(images: Path, work: Path, cluster, ray_settings) -> tuple[list[tuple[str, dict]], list]:
    rows = []
    variants = [("verify stage, local process pool (baseline)", None, lambda j: stage_local(j)),
                (f"verify stage, Ray Core tasks ({BATCH}/task)", cluster, lambda j: stage_core(j, ray_settings))]
    try:
        import pyarrow  # noqa: F401 - Ray Data needs it

        variants.append((f"verify stage, Ray Data map_batches ({BATCH}/batch)", cluster, stage_data))
    except ImportError:
        print("  (no pyarrow: the Ray Data row is skipped — pip install 'ray[data]')")
    records = None
    for warm in (True, False):
        for label, meter_cluster, fn in variants:
            store = work / f"store-{len(rows)}-{warm}"
            jobs = jobs_for(images, store)
            with Meter(meter_cluster) as m:
                recs = fn(jobs)
            assert len(recs) == len(jobs) and all(r.ok for r in recs), label
            if records is None:
                records = recs
            elif sorted(r.sha256 for r in recs) != sorted(r.sha256 for r in records):
                raise SystemExit(f"{label}: other records than the baseline's")
            if not warm:
                rows.append((label, m.row(len(jobs))))
                print(f"  {label}: {rows[-1][1]['img_s']:.1f} img/s, {rows[-1][1]['cpu']:.2f} CPU ms/img", flush=True)
            shutil.rmtree(store, ignore_errors=True)
    return rows, records


# --------------------------------------------------------------------------- 3. rows into the catalog


def rows_of(records: list, n: int) -> list[tuple[dict, dict]]:
    """``n`` (item, blob) row pairs from real records, ids and hashes made distinct."""
    import dataclasses
    import hashlib

    from dsbuild.catalog import utcnow
    from dsbuild.rows import blob_row, item_row

    now = utcnow()
    out = []
    for k in range(n):
        rec = records[k % len(records)]
        sha = hashlib.sha256(f"{rec.sha256}{k}".encode()).hexdigest()
        rec = dataclasses.replace(rec, sha256=sha, store_path=f"/store/{sha[:2]}/{sha}.jpg")
        item = item_row(dataset="bench", image_id=f"{k:016x}", origin=f"/images/{k}.jpg", source="folder",
                        label="ab"[k % 2], rec=rec, src_size=rec.bytes, src_mtime_ns=k, build_id=1, now=now)
        out.append((item, blob_row(rec, now)))
    return out


def catalog_paths(rows: list, work: Path) -> list[tuple[str, dict]]:
    import duckdb
    import pandas as pd

    from dsbuild.catalog import Catalog
    from dsbuild.pipeline import RowWriter

    n = len(rows)
    out = []
    # (a) driver transactions: what a build does today with the records a task returns
    cat = Catalog.open(work / "a.duckdb")
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        writer = RowWriter(cat)
        for item, blob in rows:
            writer.add(item=item, blob=blob)
        writer.flush()
        driver, wall = time.process_time() - c0, time.perf_counter() - t0
        assert cat.con.execute("SELECT count(*) FROM items").fetchone()[0] == n
    finally:
        cat.close()
    out.append(("rows → catalog: driver transactions (500 rows each)",
                {"n": n, "wall": wall, "img_s": n / wall, "driver": driver / n * 1e3, "workers": 0.0, "ray": 0.0,
                 "cpu": driver / n * 1e3}))
    # (b) Parquet shards: a worker writes one per batch, the driver ingests 8 per transaction
    shards = work / "shards"
    shards.mkdir()
    c0 = time.process_time()
    paths = []
    for s in range(0, n, BATCH):
        chunk = rows[s : s + BATCH]
        for kind, col in (("items", 0), ("blobs", 1)):
            path = shards / f"{kind}-{s // BATCH:06d}.parquet"
            duckdb.from_df(pd.DataFrame([r[col] for r in chunk])).write_parquet(str(path))
        paths.append(s // BATCH)
    worker = time.process_time() - c0
    cat = Catalog.open(work / "b.duckdb")
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        for g in range(0, len(paths), 8):
            group = paths[g : g + 8]
            items = [str(shards / f"items-{p:06d}.parquet") for p in group]
            blobs = [str(shards / f"blobs-{p:06d}.parquet") for p in group]
            cols = [c for c in rows[0][0]]
            bcols = [c for c in rows[0][1]]
            with cat.transaction():  # the statements of Catalog.insert_blobs / upsert_items, over the shards
                cat.con.execute(f"INSERT INTO blobs ({', '.join(bcols)}) SELECT {', '.join(bcols)} FROM "
                                "(SELECT DISTINCT ON (sha256) * FROM read_parquet(?)) n WHERE n.sha256 NOT IN "
                                "(SELECT sha256 FROM blobs)", [blobs])
                cat.con.execute("CREATE OR REPLACE TEMP VIEW _new_items AS SELECT * FROM read_parquet(?)".replace("?", repr(items)))
                cat.con.execute("CREATE OR REPLACE TEMP TABLE _old_first AS SELECT i.dataset, i.image_id, i.first_seen "
                                "FROM items i JOIN _new_items n USING (dataset, image_id)")
                cat.con.execute("DELETE FROM items WHERE (dataset, image_id) IN (SELECT (dataset, image_id) FROM _new_items)")
                cat.con.execute(f"INSERT INTO items ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _new_items")
                cat.con.execute("UPDATE items SET first_seen = o.first_seen FROM _old_first o "
                                "WHERE items.dataset = o.dataset AND items.image_id = o.image_id")
        driver, wall = time.process_time() - c0, time.perf_counter() - t0
        assert cat.con.execute("SELECT count(*) FROM items").fetchone()[0] == n
    finally:
        cat.close()
    out.append((f"rows → catalog: Parquet shards ({BATCH} rows, written by workers; 8 per transaction)",
                {"n": n, "wall": wall, "img_s": n / wall, "driver": driver / n * 1e3, "workers": worker / n * 1e3,
                 "ray": 0.0, "cpu": (driver + worker) / n * 1e3}))
    return out


# --------------------------------------------------------------------------- main


def report(title: str, rows: list[tuple[str, dict]], unit: str = "img") -> None:
    ref = rows[0][1]
    width = max(len(label) for label, _ in rows) + 1
    print(f"\n{title}")
    print(f"{'':{width}} {unit + 's':>7} {unit + '/s':>8} {'× base':>7}  {'CPU ms/' + unit:>11} "
          f"{'driver':>7} {'workers':>8} {'ray':>6} {'+ms/' + unit:>8}")
    for label, r in rows:
        print(f"{label:{width}} {r['n']:>7} {r['img_s']:>8.1f} {r['img_s'] / ref['img_s']:>6.2f}×  {r['cpu']:>11.3f} "
              f"{r['driver']:>7.3f} {r['workers']:>8.3f} {r['ray']:>6.3f} {r['cpu'] - ref['cpu']:>+8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="images (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="whole builds of each backend; the median is reported (default 3)")
    ap.add_argument("--rows", type=int, default=20000, help="rows for the catalog comparison (default 20000)")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds the idle cluster is measured (default 10)")
    ap.add_argument("--quick", action="store_true", help="500 images, 1 build each, 5,000 rows")
    ap.add_argument("--workdir", type=Path, default=None, help="folder for the builds (default: the system temp folder)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat, args.rows = 500, 1, 5000

    import ray
    from crawl import make_images
    from ray_cluster import RAY_ENV, LocalRayCluster

    os.environ.update(RAY_ENV)  # the driver as the nodes: a loopback cluster without token authentication

    from dsbuild.executor_settings import ExecutorSettings

    images = make_images(args.n)
    cpus = os.cpu_count() or 1
    print(f"{args.n} JPEGs from {images}; {cpus} CPUs, load {os.getloadavg()[0]:.1f}; Ray {ray.__version__}")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dsbuild-bench-ray-", dir=args.workdir)).resolve()
    print(f"starting a one-node Ray cluster with {cpus} CPUs (not timed) …", flush=True)
    cluster = LocalRayCluster(nodes=1, cpus_per_node=cpus).start()
    try:
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        settings = ExecutorSettings(backend="ray", address=cluster.address, batch_size=BATCH)
        with ClusterCpu(cluster) as sampled:
            t0 = time.perf_counter()
            time.sleep(args.idle)
            idle_s = time.perf_counter() - t0
        idle = sum(sampled.split.values())
        print(f"idle cluster: {idle / idle_s * 1e3:.1f} CPU ms per second (Ray's own processes and idle workers, "
              f"{idle_s:.0f} s measured)", flush=True)

        build_rows = builds(args, class_folders(images, work), work, cluster, settings)
        stage_rows, records = stages(images, work, cluster, settings)
        catalog_rows = catalog_paths(rows_of(records, args.rows), work)
    finally:
        ray.shutdown()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n(load {os.getloadavg()[0]:.1f}; CPU ms per image: driver = this process, workers = the local pool's "
          "processes or Ray's task processes, ray = Ray's own processes; '+ms' = CPU ms per image over the first row's)")
    report("1. whole folder builds", build_rows)
    lr, rr = build_rows[0][1], build_rows[1][1]
    background = idle / idle_s * rr["wall"] / rr["n"] * 1e3
    print(f"   Ray / local throughput: {rr['img_s'] / lr['img_s']:.2f}; Ray's added CPU: {rr['cpu'] - lr['cpu']:+.3f} ms "
          f"per image, of which the idle cluster's background over the build's {rr['wall']:.1f} s: {background:.3f} ms")
    report("2. the per-image stage alone", stage_rows)
    report("3. rows into the catalog", catalog_rows, unit="row")


if __name__ == "__main__":
    main()
