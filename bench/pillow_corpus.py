"""Build Pillow's own test images (its sdist's ``Tests/images``) and check that every file gets a clean outcome.

    python bench/pillow_corpus.py [--workers N] [--keep DIR]

Pillow's test suite holds ~1,060 odd files: every format Pillow reads, fuzzer
finds, truncated and damaged files, bombs, metadata oddities. The script fetches
the sdist of the installed Pillow version with ``pip download --no-binary :all:``
into ``bench/_data/pillow/`` (git-ignored; done once), copies ``Tests/images``
into two class folders (alternating, sorted by path), runs ``dsbuild -q build``
in a subprocess and reports, next to the target of each:

* tracebacks on stdout/stderr (target 0);
* stderr lines at all: with ``-q`` dsbuild prints nothing on stderr for a
  successful build, so every line is a decoder message that reached the
  terminal without its file (target 0);
* accepted files (``ok`` or ``duplicate``) whose stored file Pillow's full
  decode (``Image.open(path).load()``, default settings) fails on (target 0);
* details that are a Python repr (``object at 0x``; target 0);
* the outcome table: status × reason, and format × status.

Exit code 0 when all four targets are met, 1 otherwise. Wall and CPU seconds of
the build are printed with the machine's load (the corpus is small, the figures
are for orientation, not a benchmark of speed).
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "_data" / "pillow"


def corpus() -> Path:
    """``Tests/images`` of the installed Pillow's sdist, extracted under ``bench/_data/pillow`` (fetched once)."""
    import PIL

    version = PIL.__version__
    images = CACHE / f"images-{version}"
    if images.is_dir():
        return images
    CACHE.mkdir(parents=True, exist_ok=True)
    sdists = sorted(CACHE.glob(f"pillow-{version}.tar.gz"))
    if not sdists:
        print(f"fetching the Pillow {version} sdist (pip download --no-binary :all:) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"pillow=={version}", "-d", str(CACHE)], check=True, stdout=subprocess.DEVNULL)
        sdists = sorted(CACHE.glob(f"pillow-{version}.tar.gz"))
    prefix = f"pillow-{version}/Tests/images/"
    tmp = CACHE / f".images-{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdists[0]) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix):
                member.name = member.name[len(prefix):]
                tar.extract(member, tmp, filter="data")
    tmp.rename(images)
    return images


def _decodes(path: str, *, all_frames: bool = False) -> str | None:
    """None when Pillow fully decodes ``path`` (its first frame, or every frame) with default settings, else why not."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                for frame in range(1, getattr(im, "n_frames", 1) if all_frames else 1):
                    im.seek(frame)
                    im.load()
    except Exception as exc:  # noqa: BLE001 - the point is to find any
        return f"{type(exc).__name__}: {exc}"[:160]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="work folder to use and keep (default: a fresh one under bench/_data)")
    args = ap.parse_args(argv)

    images = corpus()
    files = sorted(p for p in images.rglob("*") if p.is_file())
    work = args.keep or CACHE / "work"
    shutil.rmtree(work, ignore_errors=True)
    for i, src in enumerate(files):
        dest = work / ("a" if i % 2 == 0 else "b") / str(src.relative_to(images)).replace(os.sep, "__")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    manifest = work / "datasets.toml"
    manifest.write_text('catalog = "cat/dsbuild.duckdb"\n[datasets.pillow.classes]\na = { folders = "a" }\n'
                        'b = { folders = "b" }\n')

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "dsbuild", "-q", "-m", str(manifest), "build", "--workers",
                          str(args.workers)], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    import duckdb

    con = duckdb.connect(str(work / "cat" / "dsbuild.duckdb"), read_only=True)
    rows = con.execute("SELECT origin, status, reason, detail, format, path FROM images").fetchall()
    con.close()

    tracebacks = (run.stdout + run.stderr).count("Traceback")
    stderr_lines = [line for line in run.stderr.splitlines() if line.strip()]
    accepted = [r for r in rows if r[1] in ("ok", "duplicate")]
    undecodable = [(Path(r[0]).name, why) for r in accepted if (why := _decodes(r[5])) is not None]
    reprs = [(Path(r[0]).name, r[3]) for r in rows if r[3] and "object at 0x" in r[3]]
    later = [(Path(r[0]).name, why) for r in accepted if (why := _decodes(r[5], all_frames=True)) is not None]

    print(f"Pillow {images.name.split('-', 1)[1]} Tests/images: {len(files)} files → {len(rows)} rows; "
          f"build exit {run.returncode}, {wall:.1f} s wall, {cpu:.1f} s CPU (children), load {os.getloadavg()[0]:.1f}")
    print(f"{'check':<44} {'measured':>8} {'target':>7}")
    checks = [("tracebacks", tracebacks), ("stderr lines (decoder output without its file)", len(stderr_lines)),
              ("accepted files Pillow cannot fully decode", len(undecodable)), ("details that are a Python repr", len(reprs))]
    for name, value in checks:
        print(f"{name:<44} {value:>8} {0:>7}")
    for line in stderr_lines[:10]:
        print("  stderr:", line[:150])
    for name, why in undecodable[:10]:
        print("  undecodable:", name, why)
    for name, detail in reprs[:5]:
        print("  repr:", name, detail[:120])
    print(f"(for information: {len(later) - len(undecodable)} accepted multi-frame files have a later frame that "
          "Pillow cannot decode; dsbuild verifies the first frame, the one loaders read, and the declared size of every frame)")

    print("\noutcomes (status, reason):")
    for (status, reason), n in sorted(collections.Counter((r[1], r[2]) for r in rows).items(),
                                      key=lambda kv: -kv[1]):
        print(f"  {n:>5}  {status:<10} {reason or ''}")
    print("\nformats (format: status counts):")
    by_format: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        by_format[r[4] or "(none)"][r[1]] += 1
    for fmt, counts in sorted(by_format.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"  {fmt:<12} " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    ok = run.returncode == 0 and all(value == 0 for _, value in checks)
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
