"""Benchmark: dsbuild's downloader vs bing-image-downloader's and icrawler's, same server, same URLs.

Setup (all loopback, nothing leaves the machine):

* **Images**: ``--n`` (default 2,000) real-sized JPEGs, 640×480 up to 1024×768, each a
  random crop of a real photo shipped offline (scikit-image's astronaut, coffee, chelsea,
  rocket, retina, hubble_deep_field, immunohistochemistry; scikit-learn's china and
  flower), randomly mirrored and brightened, JPEG quality 80–92, seeded. Cached under
  ``bench/_data/crawl-v1-N/`` (generated once, ~20 s).
* **Server**: a separate process (so it never competes for the downloader's GIL) running
  an asyncio HTTP/1.1 server with keep-alive on 16 loopback addresses (127.0.0.1 …
  127.0.0.16: a crawl spreads over many hosts, and dsbuild's per-host limit applies),
  answering every image request after ``--latency`` seconds (default 0.1: a typical
  web round trip plus server time).
* **URLs**: ``http://127.0.0.H:PORT/img/NNNNN.jpg``, spread over the 16 hosts.

Measured in the same run (wall img/s and the client process's CPU seconds per image):

0. a whole ``dsbuild build`` of a two-class web dataset (fake-Bing discovery → download →
   verify + hash + quality in worker processes → store → catalog → dedup + split), its worker
   processes' CPU included (skip it with ``--no-build``); then that build's verify + hash +
   quality + store stage alone, on the same bodies already in memory with nothing downloading:
   the ceiling of the whole build on this machine;
1. ``dsbuild.fetch.fetch_all`` with ``--concurrency`` in flight (default 128; 8 per host),
   again with the shipped default settings (32 in flight) — bodies kept in memory, as a build
   does — and once more writing every body to a file, as the other tools do;
2. icrawler 0.6.10's own downloader (``UrlListCrawler``: its ``ImageDownloader`` with 16
   threads, the thread count the issue measured);
3. bing-image-downloader's own sequential loop (``Bing.download_image`` → ``save_image``,
   what its ``run`` calls for each link).

The baselines are slow, so they run on the first ``--baseline-n`` URLs (default 600 for
icrawler, a quarter of that for bing-image-downloader); img/s is comparable across sizes.

``--through-engine`` puts link discovery in front: the URLs are planted in a fake Bing
(``tests/fake_engines.py``, Bing's real async page format) and dsbuild's ``bing`` engine
discovers them before the downloads start; the timed dsbuild figure then includes
discovery. (The verify + hash stage alone is timed by ``bench/hashing.py``.)

``--executor ray`` adds a whole build on Ray beside the local one, interleaved run by run (local, Ray,
local, Ray, …: the machine's drifting speed hits both alike): a one-node Ray cluster with this
machine's CPUs (``ray start --head``, started before and stopped after the timing; the driver
connects once, before the first run; one build of each backend warms the workers first), where each
task downloads, verifies, hashes, scores and stores a batch of 64 URLs (``[executor] backend =
"ray"``). Its CPU figure counts every process of the cluster (GCS, raylet, agents, workers) beside
the driver's own: Ray's whole added cost. The idle cluster's CPU per second is measured before the
runs, so the part of that cost that is a fixed background per second is printed apart.
(``bench/ray_modes.py`` measures folder builds, Ray Core vs Ray Data and rows vs Parquet shards.)

``--workdir DIR`` puts the downloads and the build's catalog and store in ``DIR`` instead of
the system temp folder: on some disks creating a file costs far more in one folder than in
another (on the development VM ~1 ms of CPU per file under /tmp, ~0.05 ms under the project),
and the build creates one store file per image.

    .venv/bin/python bench/crawl.py                  # 2,000 images (~1 min after the first run)
    .venv/bin/python bench/crawl.py --quick          # 500 images, smaller baselines
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the fake Bing (tests/fake_engines.py)
DATA = ROOT / "bench" / "_data"
SEED = 42
HOSTS = 16
SIZES = ((640, 480), (800, 600), (1024, 768), (480, 640))


# --------------------------------------------------------------------------- images


def make_images(n: int) -> Path:
    """``n`` distinct real-photo JPEGs in ``bench/_data/crawl-v1-N/`` (cached)."""
    out = DATA / f"crawl-v1-{n}"
    if out.is_dir() and len(list(out.glob("*.jpg"))) == n:
        return out
    import numpy as np
    import skimage.data as sk
    from PIL import Image, ImageEnhance, ImageOps
    from sklearn.datasets import load_sample_images

    print(f"generating {n} JPEGs into {out} (once) …", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        srcs = [Image.fromarray(getattr(sk, name)()).convert("RGB") for name in
                ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry")]
        srcs += [Image.fromarray(a) for a in load_sample_images().images]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    for i in range(n):
        src = srcs[i % len(srcs)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch)).resize(SIZES[int(rng.integers(len(SIZES)))], Image.BILINEAR)
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
        img.save(tmp / f"{i:05d}.jpg", format="JPEG", quality=int(rng.integers(80, 93)))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# --------------------------------------------------------------------------- the server (own process)


def serve(folder: Path, latency: float, hosts: int) -> None:
    """Serve ``folder/*.jpg`` at ``/img/NAME`` on 127.0.0.1..hosts after ``latency`` s; print the ports."""
    files = {p.name.encode(): p.read_bytes() for p in folder.glob("*.jpg")}
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n%s\r\n"
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                request, self.buf = self.buf[:end], self.buf[end + 4 :]
                line = request.split(b"\r\n", 1)[0].split(b" ")
                name = line[1].rsplit(b"/", 1)[-1].split(b"?")[0] if len(line) > 1 else b""
                close = b"connection: close" in request.lower()
                loop.call_later(latency, self.reply, files.get(name), close)

        def reply(self, body: bytes | None, close: bool) -> None:
            if self.t.is_closing():
                return
            if body is None:
                self.t.write(missing)
            else:
                self.t.write(head % (len(body), b"Connection: close\r\n" if close else b"") + body)
            if close:
                self.t.close()

    async def main() -> None:
        servers = []
        for h in range(1, hosts + 1):
            servers.append(await loop.create_server(Proto, f"127.0.0.{h}", 0, backlog=2048))
        print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
        await asyncio.Event().wait()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())


class Server:
    """The image server in its own process; ``urls`` spread over the hosts."""

    def __init__(self, folder: Path, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(folder), "--latency", str(latency)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.ports = [int(p) for p in self.proc.stdout.readline().split()]
        names = sorted(p.name for p in folder.glob("*.jpg"))
        self.urls = [f"http://127.0.0.{i % HOSTS + 1}:{self.ports[i % HOSTS]}/img/{name}"
                     for i, name in enumerate(names)]

    def cpu(self) -> float:
        """CPU seconds the server process has used (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- the contenders


def timed(fn, n: int, *, last_saved=None) -> dict:
    """Run ``fn()`` → number of images saved; wall and process CPU time.

    ``last_saved()``, when given, returns the epoch time the last image was written: the
    wall time then ends there (``returned`` keeps when ``fn`` returned). icrawler needs it:
    its ``crawl()`` returns ~5 s after the last download, whatever the number of images
    (each downloader thread waits out a 5 s queue timeout, then the crawler polls each 1 s),
    which would otherwise make its img/s a function of ``--baseline-n``.
    """
    c0, t0, e0 = time.process_time(), time.perf_counter(), time.time()
    ok = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = {"n": n, "ok": ok, "wall": wall, "returned": wall}
    last = last_saved() if last_saved is not None else None
    if last is not None:
        res["wall"] = wall = max(min(wall, last - e0), 1e-6)
    res.update(img_s=ok / wall if wall else 0.0, cpu_img=cpu / max(ok, 1))
    return res


def forkserver_cpu() -> float:
    """CPU seconds of multiprocessing's forkserver and its reaped children (the verify workers); 0 if none runs."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    except (OSError, IndexError, ValueError):
        return 0.0


def last_mtime(folder: Path) -> float | None:
    """Epoch time of the newest file in ``folder`` (None when empty)."""
    return max((p.stat().st_mtime for p in folder.glob("*")), default=None)


def run_dsbuild(urls: list[str], out: Path, *, concurrency: int | None, discover=None, in_memory: bool = True) -> int:
    """dsbuild's downloader; ``in_memory``: bodies stay in memory as in a build (else each becomes a file)."""
    from dsbuild.sources.web import in_memory_limit
    from dsbuild.fetch import FetchRequest, FetchSettings, fetch_all

    kw = {} if concurrency is None else {"concurrency": concurrency}
    settings = FetchSettings(allow_private_hosts=True, **kw)
    if discover is not None:
        urls = discover()
    results = fetch_all((FetchRequest(u) for u in urls), settings=settings, dest_dir=out,
                        in_memory=in_memory_limit(settings.concurrency) if in_memory else 0)
    bad = [r for r in results if not r.ok]
    if bad:
        print(f"  dsbuild: {len(bad)} not ok, e.g. {bad[0].reason} {bad[0].url}")
    return len(results) - len(bad)


def run_icrawler(urls: list[str], out: Path, threads: int = 16) -> int:
    from icrawler.builtin import UrlListCrawler

    out.mkdir(parents=True, exist_ok=True)
    listing = out / "urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    crawler = UrlListCrawler(downloader_threads=threads, storage={"root_dir": str(out / "images")},
                             log_level=logging.CRITICAL)
    crawler.crawl(str(listing), max_num=len(urls))
    return len(list((out / "images").glob("*")))


def run_bing_image_downloader(urls: list[str], out: Path) -> int:
    from bing_image_downloader.bing import Bing

    out.mkdir(parents=True, exist_ok=True)
    bing = Bing("bench", len(urls), out, "on", 60, verbose=False)
    for link in urls:  # what Bing.run does with each link of a results page
        bing.download_image(link)
    return len(list(out.glob("*")))


def verify_stage(folder: Path, out: Path, workers: int) -> dict:
    """The build's verify + hash + quality + store stage alone: every body already in memory, nothing
    downloading, ``workers`` worker processes (warm). Its img/s is the ceiling of a whole build here."""
    import queue
    from types import SimpleNamespace

    from dsbuild.sources.web import BodyVerifier
    from dsbuild.manifest import load_manifest

    bodies = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "datasets.toml").write_text('[datasets.d.classes]\na = "x"\nb = "y"\n')
    done: queue.Queue = queue.Queue()
    verifier = BodyVerifier(load_manifest(out / "datasets.toml").dataset("d"), done, workers=workers, use_pool=True,
                         store=out / "store")

    def run(items: list[bytes]) -> int:
        for k, data in enumerate(items):
            verifier.add(SimpleNamespace(url=str(k), path=None, data=data))
        verifier.flush()
        ok = seen = 0
        while seen < len(items):
            _, (batch, fut) = done.get()
            records = verifier.records(batch, fut)
            seen += len(records)
            ok += sum(rec.ok for rec in records)
        return ok

    try:
        run(bodies[:4 * workers])  # warm: the forkserver and the workers start outside the timing
        children0, fs0 = resource.getrusage(resource.RUSAGE_CHILDREN), forkserver_cpu()
        res = timed(lambda: run(bodies), len(bodies))
        verifier.shutdown()  # reaps the workers: their CPU becomes countable
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
        res["cpu_img"] += (child_cpu + forkserver_cpu() - fs0) / max(res["ok"], 1)
        return res
    finally:
        verifier.shutdown()
        shutil.rmtree(out, ignore_errors=True)


def run_build(urls: list[str], out: Path, *, concurrency: int, fake, executor=None) -> tuple[int, int]:
    """A whole ``dsbuild build``: fake-Bing discovery → download → verify + hash (worker processes) → store → catalog → dedup + split.

    Two classes, half the URLs planted under each class's query. Returns (images ok, images catalogued).
    """
    from dsbuild.pipeline import build
    from dsbuild.manifest import load_manifest

    half = len(urls) // 2
    fake.plant("bench class a", urls[:half])
    fake.plant("bench class b", urls[half:])
    out.mkdir(parents=True, exist_ok=True)
    (out / "datasets.toml").write_text(f"""
[datasets.bench]
engine = "bing"
endpoint = "{fake.url}"
allow_private_hosts = true
per_query = {max(half, len(urls) - half)}

[datasets.bench.fetch]
concurrency = {concurrency}

[datasets.bench.classes]
a = "bench class a"
b = "bench class b"
""")
    summary = build(load_manifest(out / "datasets.toml"), ["bench"], executor=executor)
    d = summary.datasets[0]
    return d.ok + d.duplicates, d.new


def through_engine(urls: list[str]):
    """A discovery function: plant ``urls`` in a fake Bing and let dsbuild's bing engine find them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_engines import FakeEngineServer

    from dsbuild.sources.engines import EngineOptions, get_engine

    fake = FakeEngineServer(bing_max_count=150).start()
    fake.plant("bench", urls)

    def discover() -> list[str]:
        opts = EngineOptions(limit=len(urls), endpoint=fake.url, allow_private_hosts=True, max_pages=200)
        found = [link.url for link in get_engine("bing").links("bench", opts)]
        if len(found) != len(urls):
            print(f"  engine found {len(found)} of {len(urls)} links")
        return found

    return discover, fake


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--latency", type=float, default=0.1, help="server latency per image in s (default 0.1)")
    ap.add_argument("--concurrency", type=int, default=128, help="dsbuild downloads in flight (default 128)")
    ap.add_argument("--baseline-n", type=int, default=600, help="URLs for icrawler (bing-image-downloader: a quarter)")
    ap.add_argument("--through-engine", action="store_true", help="discover the URLs through a fake Bing first")
    ap.add_argument("--quick", action="store_true", help="500 images, 200 for the baselines")
    ap.add_argument("--no-build", action="store_true", help="skip the whole-build row")
    ap.add_argument("--repeat", type=int, default=1, help="whole builds to run; the median is reported (default 1)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="ray: also a whole build on a one-node Ray cluster, interleaved with the local ones")
    ap.add_argument("--only-builds", action="store_true", help="the whole-build rows only (no downloader or baseline rows)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="folder for downloads and the build's catalog and store (default: the system temp folder)")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.latency, HOSTS)
    if args.quick:
        args.n, args.baseline_n = 500, 200

    folder = make_images(args.n)
    sizes = [p.stat().st_size for p in folder.glob("*.jpg")]
    print(f"{args.n} JPEGs, mean {sum(sizes) / len(sizes) / 1e3:.0f} KB; latency {args.latency * 1e3:.0f} ms; "
          f"{HOSTS} loopback hosts; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    server = Server(folder, args.latency)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dsbuild-bench-crawl-", dir=args.workdir))
    print(f"work folder {work}")
    fake = None
    rows: list[tuple[str, dict]] = []
    try:
        urls = server.urls
        discover = None
        if args.through_engine:
            discover, fake = through_engine(urls)
        # Warm-up: imports and the server's first connections, not timed.
        run_dsbuild(urls[:32], work / "warm", concurrency=32)

        def dsb(concurrency: int | None, label: str, in_memory: bool = True) -> None:
            out = work / label.replace(" ", "_").replace("/", "_")
            s0 = server.cpu()
            res = timed(lambda: run_dsbuild(urls, out, concurrency=concurrency, discover=discover, in_memory=in_memory),
                        len(urls))
            res["server_cpu_img"] = (server.cpu() - s0) / max(res["ok"], 1)
            rows.append((label, res))
            shutil.rmtree(out, ignore_errors=True)

        via = " + bing discovery" if args.through_engine else ""
        if not args.only_builds:
            dsb(args.concurrency, f"dsbuild fetch_all ({args.concurrency} in flight, 8/host){via}")
            dsb(None, f"dsbuild fetch_all (defaults: 32 in flight){via}")
            dsb(args.concurrency, f"dsbuild fetch_all ({args.concurrency} in flight, every body a file){via}", in_memory=False)
        if not args.no_build:
            build_rows(args, urls, work, rows)
        if args.only_builds:
            return report(rows)
        nb = min(args.baseline_n, len(urls))
        rows.append(("icrawler 0.6.10 (16 threads)", timed(lambda: run_icrawler(urls[:nb], work / "icrawler"), nb,
                                                           last_saved=lambda: last_mtime(work / "icrawler" / "images"))))
        nq = max(20, nb // 4)
        rows.append(("bing-image-downloader (sequential)",
                     timed(lambda: run_bing_image_downloader(urls[:nq], work / "bing"), nq)))
    finally:
        server.close()
        if fake is not None:
            fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(rows)


def build_rows(args, urls: list[str], work: Path, rows: list) -> None:
    """Whole builds (``--repeat`` each; the median reported), local and — with ``--executor ray`` — on Ray, interleaved."""
    from fake_engines import FakeEngineServer
    from ray_modes import ClusterCpu, Meter

    cluster = None
    executors: list[tuple[str, object]] = [("local", None)]
    if args.executor == "ray":
        import ray
        from ray_cluster import RAY_ENV, LocalRayCluster

        from dsbuild.executor_settings import ExecutorSettings

        print("starting a one-node Ray cluster (not timed) …", flush=True)
        os.environ.update(RAY_ENV)  # the driver as the nodes: a loopback cluster without token authentication
        cluster = LocalRayCluster(nodes=1, cpus_per_node=os.cpu_count() or 1).start()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        executors.append(("ray", ExecutorSettings(backend="ray", address=cluster.address)))
    engine = FakeEngineServer(bing_max_count=150).start()
    runs: dict[str, list[dict]] = {name: [] for name, _ in executors}
    idle_rate = 0.0
    try:
        for name, executor in executors:  # warm both: the forkserver's and the Ray workers' imports, the server
            run_build(urls[:256], work / f"warm-{name}", concurrency=args.concurrency, fake=engine, executor=executor)
            shutil.rmtree(work / f"warm-{name}", ignore_errors=True)
        if cluster is not None:
            with ClusterCpu(cluster) as idle:
                t0 = time.perf_counter()
                time.sleep(10)
                idle_s = time.perf_counter() - t0
            idle_rate = sum(idle.split.values()) / idle_s
            print(f"  idle cluster: {idle_rate * 1e3:.1f} CPU ms per second", flush=True)
        for k in range(args.repeat):
            for name, executor in executors:
                out = work / f"build-{name}-{k}"
                children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                with Meter(cluster if executor is not None else None) as m:
                    ok, catalogued = run_build(urls, out, concurrency=args.concurrency, fake=engine, executor=executor)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                # workers that are this process's own children (not the forkserver's): count them too
                m.workers += (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
                res = {"n": len(urls), "ok": ok, "wall": m.wall, "returned": m.wall, "img_s": ok / m.wall,
                       "cpu_img": (m.driver + m.workers + m.ray) / max(ok, 1), "split": m.row(max(ok, 1))}
                if catalogued != len(urls):
                    print(f"  build catalogued {catalogued} of {len(urls)} links")
                print(f"  {name} build {k + 1}/{args.repeat}: {res['img_s']:.1f} img/s, "
                      f"{res['cpu_img'] * 1e3:.2f} CPU ms/img (load {os.getloadavg()[0]:.1f})", flush=True)
                runs[name].append(res)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        engine.stop()
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.stop()
    at = 0
    picked = {}
    for name, _ in executors:
        res = picked[name] = sorted(runs[name], key=lambda r: r["img_s"])[len(runs[name]) // 2]  # the median run
        where = "worker processes" if name == "local" else "Ray tasks, 1 node"
        label = f"dsbuild build ({name}: {where}; {args.concurrency} in flight)"
        if args.repeat > 1:
            label += f", median of {args.repeat}"
        rows.insert(at, (label, res))
        at += 1
    for name, res in picked.items():
        sp = res["split"]
        print(f"  {name} build CPU ms/img: driver {sp['driver']:.2f}, workers {sp['workers']:.2f}, "
              f"Ray's own processes {sp['ray']:.2f}")
    if "ray" in picked:
        lo, ra = picked["local"], picked["ray"]
        background = idle_rate * ra["wall"] / ra["ok"]
        print(f"  ray / local: {ra['img_s'] / lo['img_s']:.2f} of the throughput; Ray's added CPU "
              f"{(ra['cpu_img'] - lo['cpu_img']) * 1e3:+.2f} ms/img, of which the idle cluster's background over the "
              f"build's {ra['wall']:.1f} s: {background * 1e3:.2f} ms/img", flush=True)
    if not args.only_builds:
        workers = os.cpu_count() or 1
        rows.insert(at, (f"  its verify+hash+store stage alone ({workers} workers, no downloads)",
                         verify_stage(make_images(args.n), work / "verify", workers)))


def report(rows: list) -> None:
    ref = rows[0][1]["img_s"]
    print()
    width = max(44, max(len(label) for label, _ in rows) + 1)
    print(f"{'tool':{width}} {'images':>7} {'ok':>6} {'img/s':>8} {'dsbuild ×':>10} {'CPU ms/img':>11}")
    for label, r in rows:
        ratio = ref / r["img_s"] if r["img_s"] else float("inf")
        print(f"{label:{width}} {r['n']:>7} {r['ok']:>6} {r['img_s']:>8.1f} {ratio:>9.1f}× {r['cpu_img'] * 1e3:>11.2f}")
    server_cpu = next((r["server_cpu_img"] for _, r in rows if "server_cpu_img" in r), None)
    server = f"server process: {server_cpu * 1e3:.2f} CPU ms/img; " if server_cpu is not None else ""
    print(f"\n({server}"
          f"'dsbuild ×' = the first row's img/s over the row's; CPU = the client process, all its threads, "
          f"plus the build's verify + hash worker processes and, on Ray, every process of the cluster)")
    for label, r in rows:
        if r["returned"] - r["wall"] > 0.5:
            print(f"({label}: timed to its last saved image, {r['wall']:.1f} s; the call returned after "
                  f"{r['returned']:.1f} s)")


if __name__ == "__main__":
    main()
