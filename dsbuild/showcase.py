"""``dsbuild demo``: the offline end-to-end showcase on the manifest's ``demo`` dataset."""

from __future__ import annotations

from dsbuild.demo import DIGIT_NAMES, ensure_demo_data
from dsbuild.errors import DsbuildError
from dsbuild.manifest import Manifest

DEMO = "demo"


def demo_root(manifest: Manifest):
    """The folder that holds ``digits/`` for the manifest's demo dataset."""
    ds = manifest.dataset(DEMO) if DEMO in manifest.datasets else None
    if ds is None:
        raise DsbuildError(
            f"{manifest.path.name} has no [datasets.demo] — run `dsbuild init` in an empty folder to get a manifest with the demo"
        )
    unknown = [c.name for c in ds.classes if c.name not in DIGIT_NAMES]
    folders = [f for c in ds.classes for f in c.folders]
    if unknown or not folders or any(f.parent.name != "digits" for f in folders):
        raise DsbuildError(
            "the demo dataset must use classes named zero…nine with folders demo_data/digits/<class> — see `dsbuild init`"
        )
    return ds, folders[0].parent.parent


def run_demo(manifest: Manifest, *, progress, console, quick: bool = False, build_only: bool = False) -> None:
    from dsbuild.build import build
    from dsbuild.catalog import sandboxed_query
    from dsbuild.cli import _print_build_summary, _print_status
    from dsbuild.report import render_table
    from dsbuild.status import dataset_status

    ds, root = demo_root(manifest)
    folder = ensure_demo_data(root, classes=tuple(c.name for c in ds.classes))
    console.rule("[b]1. build[/b]: import the digits folders → verify → dedup → split → catalog")
    console.print(f"demo images: {folder} (real handwritten digits, 5% planted wrong labels, 4 bad files)")
    summary = build(manifest, [DEMO], progress=progress)
    _print_build_summary(summary)
    console.rule("[b]2. status[/b]")
    _print_status(dataset_status(manifest.catalog, DEMO))
    console.rule("[b]3. query[/b]: the catalog is SQL (dsbuild query)")
    sql = ("select status, reason, label, count(*) as n from images where dataset = 'demo' "
           "and status <> 'ok' group by all order by n desc")
    console.print(f"$ dsbuild query \"{sql}\"")
    console.print(render_table(sandboxed_query(manifest.catalog, sql), "table", None))
    if build_only:
        return
    from dsbuild.loop import run_model_loop

    run_model_loop(manifest, ds, folder=folder, console=console, progress=progress, quick=quick)
