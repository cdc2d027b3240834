"""The executor: every job gets its record, in job order, in-process or in a pool; a killed worker costs nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from skimage import data as skdata

from dsbuild.executor import InlineExecutor, LocalPoolExecutor, VerifyJob, make_executor, run_job
from dsbuild.errors import DsbuildError
from dsbuild.manifest import DedupSettings, VerifySettings


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> list[VerifyJob]:
    """70 real photos (rotations of skimage's astronaut, small JPEGs and PNGs) plus two bad files."""
    root = tmp_path_factory.mktemp("executor")
    photo = Image.fromarray(skdata.astronaut()).resize((96, 96))
    out = []
    for k in range(70):
        path = root / f"p{k:03d}.{'png' if k % 3 == 0 else 'jpg'}"
        photo.rotate(k * 5).save(path)
        out.append(VerifyJob(f"k{k:03d}", str(path), VerifySettings(), DedupSettings()))
    (root / "html.jpg").write_bytes(b"<!doctype html><html>not found</html>")
    out.insert(10, VerifyJob("html", str(root / "html.jpg"), VerifySettings(), DedupSettings()))
    body = (root / "p001.jpg").read_bytes()
    out.insert(40, VerifyJob("body", body, VerifySettings(), DedupSettings()))
    return out


def test_map_gives_every_record_in_job_order_inline_and_in_a_pool(jobs) -> None:
    expected = [run_job(job) for job in jobs]
    assert [r.reason for r in expected].count("not an image") == 1 and sum(r.ok for r in expected) == len(jobs) - 1
    inline = list(InlineExecutor().map(jobs))
    assert [job.key for job, _ in inline] == [job.key for job in jobs]
    assert [rec for _, rec in inline] == expected
    # Small batches and a small window: many more batches than are ever in flight at once.
    with LocalPoolExecutor(2) as pool:
        pooled = list(pool.map(jobs, batch_size=3, window=2))
    assert [job.key for job, _ in pooled] == [job.key for job in jobs]
    assert [rec for _, rec in pooled] == expected


def test_a_killed_worker_costs_nothing(tmp_path: Path) -> None:
    """SIGKILL (as a decoder crash or the OOM killer would) breaks the pool: every batch still gets its records."""
    photo = Image.fromarray(skdata.astronaut())
    big = []
    for k in range(32):
        path = tmp_path / f"big{k}.png"
        photo.rotate(k).save(path)  # 512×512 PNGs decode slowly enough for the kill to land mid-work
        big.append(VerifyJob(f"b{k}", str(path), VerifySettings(), DedupSettings()))
    expected = {job.key: run_job(job) for job in big}
    with LocalPoolExecutor(2) as executor:
        first_pool = executor.pool
        batches = [executor.submit(big[i : i + 4]) for i in range(0, len(big), 4)]
        os.kill(next(iter(first_pool._processes)), signal.SIGKILL)  # noqa: SLF001 - reach into the pool to kill a worker
        got = {job.key: rec for batch in batches for job, rec in zip(batch.jobs, batch.result())}
        assert got == expected and all(rec.ok for rec in got.values())
        assert executor.pool is not first_pool  # the broken pool was replaced
        late = executor.submit(big[:2])  # and new batches still run in worker processes
        assert late.future is not None and late.result() == [expected["b0"], expected["b1"]]


def test_backends_by_name(jobs) -> None:
    # Every image runs in a worker process (stderr captured per image, time limit, crashes isolated);
    # a few images get one worker, not a pool's worth.
    with make_executor(len(jobs[:5]), workers=2) as small:
        assert isinstance(small, LocalPoolExecutor) and small.workers == 1
    with make_executor(100, workers=2) as big:
        assert isinstance(big, LocalPoolExecutor) and big.workers == 2
    with make_executor(100, workers=1) as one:
        assert isinstance(one, LocalPoolExecutor) and one.workers == 1
    with pytest.raises(DsbuildError, match=r"^unknown executor backend 'lcoal' \(did you mean 'local'\?\) — known: local, ray$"):
        make_executor(10, settings=SimpleNamespace(backend="lcoal"))
