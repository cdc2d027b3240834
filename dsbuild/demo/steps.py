"""``dsbuild demo``: the offline end-to-end showcase on the manifest's ``demo`` dataset.

The steps: build → status → a query, then the model loop (train → mislabels →
accept suggestions → retrain) with the planted truth shown beside what was found.
"""

from __future__ import annotations

from pathlib import Path

from dsbuild.demo.data import DIGIT_NAMES, ensure_demo_data, read_truth
from dsbuild.errors import DsbuildError
from dsbuild.manifest import Dataset, Manifest
from dsbuild.render.console import print_build_summary, print_comparison, print_run, print_status
from dsbuild.render.tables import render_table
from dsbuild.stats import mcnemar_exact  # the demo's check against the truth; retrain's on the current labels

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


DEMO_PROJECT = "dsbuild-demo"


def demo_manifest(path: Path) -> tuple[Manifest, str | None]:
    """The manifest the demo runs on, and a line saying where when it is not ``path``.

    ``path`` with a ``demo`` dataset is used as it is. Without one (no manifest there,
    or one without the demo) the demo runs anywhere: in ``./dsbuild-demo/``, a starter
    project (:func:`dsbuild.init.init_project`) made on first use and reused after.
    A manifest that exists but is invalid is an error, as for every command.
    """
    from dsbuild.init import init_project
    from dsbuild.manifest import load_manifest

    path = Path(path)
    if path.is_file():
        manifest = load_manifest(path)
        if DEMO in manifest.datasets:
            return manifest, None
    project = Path.cwd() / DEMO_PROJECT
    target = project / "datasets.toml"
    if not target.is_file():
        project.mkdir(exist_ok=True)
        init_project(target)
    return load_manifest(target), f"no {path.name} with a demo dataset here: the demo runs in {project}"


def run_demo(manifest: Manifest, *, progress, console, quick: bool = False, build_only: bool = False) -> None:
    from dsbuild.pipeline import build
    from dsbuild.catalog import sandboxed_query
    from dsbuild.status import dataset_status

    ds, root = demo_root(manifest)
    folder = ensure_demo_data(root, classes=tuple(c.name for c in ds.classes))
    console.rule("[b]1. build[/b]: import the digits folders → verify → dedup → split → catalog")
    console.print(f"demo images: {folder} (real handwritten digits, 5% planted wrong labels, 4 bad files)")
    summary = build(manifest, [DEMO], progress=progress)
    print_build_summary(summary)
    console.rule("[b]2. status[/b]")
    print_status(dataset_status(manifest.catalog, DEMO))
    console.rule("[b]3. query[/b]: the catalog is SQL (dsbuild query)")
    sql = ("select status, reason, label, count(*) as n from images where dataset = 'demo' "
           "and status <> 'ok' group by all order by n desc")
    console.print(f"$ dsbuild query \"{sql}\"")
    console.print(render_table(sandboxed_query(manifest.catalog, sql), "table", None))
    if build_only:
        return
    run_model_loop(manifest, ds, folder=folder, console=console, progress=progress, quick=quick)


def planted_scores(flagged_origins: set[str], folder: Path, conflict_origins: set[str] = frozenset()) -> dict[str, int]:
    """How many of the demo's planted wrong labels are among ``flagged_origins`` (absolute file paths), and how many
    of the others are in a label conflict (``conflict_origins``: the report lists those for review too — a planted
    wrong label that is a near copy of a digit of its true class is a duplicate in a conflict, not scored)."""
    truth = read_truth(folder)
    planted = {str((folder / r["file"]).resolve()) for r in truth if r["planted"]}
    found = planted & flagged_origins
    return {"planted": len(planted), "found": len(found), "flags": len(flagged_origins),
            "false_flags": len(flagged_origins - planted), "in_conflicts": len((planted - found) & conflict_origins)}


def truth_by_origin(folder: Path) -> dict[str, str]:
    """Absolute file path → the true digit name, from ``TRUTH.csv``."""
    return {str((folder / r["file"]).resolve()): r["true_label"] for r in read_truth(folder)}


def accepted_relabels(manifest: Manifest, name: str, source: str, folder: Path) -> dict[str, int]:
    """How many label events from ``source`` (the accepted suggestions) set the true digit, and how many did not."""
    from dsbuild.catalog import Catalog

    truth = truth_by_origin(folder)
    with Catalog.open_readonly(manifest.catalog) as cat:
        events = cat.label_history(name)
        images = cat.review_candidates(name)
    origin = dict(zip(images["image_id"], images["origin"].astype(str)))
    mine = events[(events["source"] == source) & (events["action"] == "relabel")]
    right = sum(truth.get(str(Path(origin.get(i, "")).resolve())) == new for i, new in zip(mine["image_id"], mine["new_label"]))
    return {"accepted": len(mine), "right": int(right), "wrong": int(len(mine) - right)}


def truth_hits(manifest: Manifest, name: str, result, folder: Path) -> dict[str, bool]:
    """Per valid image of a training result (image_id → right?): its prediction against the planted truth (not the
    given, possibly wrong, label); images without a planted truth are left out."""
    import numpy as np

    from dsbuild.catalog import Catalog

    truth = truth_by_origin(folder)
    with Catalog.open_readonly(manifest.catalog) as cat:
        images = cat.review_candidates(name)
    origin = dict(zip(images["image_id"], images["origin"].astype(str)))
    pred = np.asarray(result.valid_probs).argmax(1)
    hits = {}
    for i, p in zip(result.valid_image_ids, pred):
        where = str(Path(origin[i]).resolve())
        if where in truth:
            hits[i] = truth[where] == result.classes[p]
    return hits


def cycle_change(before: dict[str, bool], after: dict[str, bool]) -> str:
    """How the retrained model differs from the first on the same valid images, against the planted truth: the images
    each gets right that the other does not, and whether that is evidence of a change (exact McNemar test)."""
    common = before.keys() & after.keys()
    worse = sum(before[i] and not after[i] for i in common)
    better = sum(after[i] and not before[i] for i in common)
    p = mcnemar_exact(worse, better)
    verdict = "no evidence of a change either way" if p >= 0.05 else ("a real gain" if better > worse else "a real loss")
    return (f"the two models disagree on {worse + better} of {len(common)} valid images — {better} now right, {worse} "
            f"now wrong; exact McNemar p = {p:.2f}: {verdict}")


def run_model_loop(manifest: Manifest, ds: Dataset, *, folder: Path, console, progress=None, quick: bool = False) -> None:
    from dsbuild.catalog import Catalog
    from dsbuild.cycle import (find_issues, mislabel_report, reports_dir, retrain_dataset, review_dataset, run_trust,
                               train_dataset, trust_line)
    from dsbuild.render.values import counted, readable_probabilities

    overrides = {"epochs": 1} if quick else {}
    with Catalog.open_readonly(manifest.catalog) as cat:
        reviewed = len(cat.label_history(ds.name))
    if reviewed:
        console.print(f"note: an earlier demo run already reviewed {reviewed} labels of '{ds.name}' in {manifest.catalog} "
                      "(label events are kept, never reset): expect few flags now; "
                      "remove that catalog to watch the whole cycle again")
    console.rule("[b]4. train[/b]: a head on the frozen backbone's features (cached per image) on the current labels")
    report = train_dataset(manifest, ds.name, progress=progress, **overrides)
    print_run(report)
    if report.warning():
        console.print(f"[b]warning:[/b] {report.warning()}")
    first = truth_hits(manifest, ds.name, report.result, folder)
    before = sum(first.values()) / len(first) if first else float("nan")
    console.print(f"valid accuracy against the planted truth (not the given labels): {before:.2%}")

    console.rule("[b]5. mislabels[/b]: out-of-fold probabilities + cleanlab label quality")
    run_id, issues = find_issues(manifest, ds.name, progress=progress)
    console.print(trust_line(run_trust(manifest, run_id)))
    labels = issues[issues["kind"] == "label"]
    shown = labels.head(12)[["rank", "image_id", "given_label", "suggested_label", "label_quality", "suggested_confidence"]]
    console.print(render_table(readable_probabilities(shown), "table", None,
                               title=f"top of {counted(len(labels), 'flagged label')} (run {run_id})"))
    conflicts = set(issues.loc[issues["kind"] == "conflict", "origin"].astype(str))
    score = planted_scores(set(labels["origin"].astype(str)), folder, conflicts)
    more = f" (and {score['in_conflicts']} more in label conflicts)" if score["in_conflicts"] else ""
    console.print(
        f"[b]found {score['found']} of the {score['planted']} planted wrong labels[/b]{more}; "
        f"{score['false_flags']} of {score['flags']} flags were not planted (look at them: some digits are ambiguous); "
        f"{counted(int((issues['kind'] == 'conflict').sum()), 'image')} in label conflicts"
    )
    files = mislabel_report(manifest, ds.name, run_id, issues, reports_dir(manifest) / f"{ds.name}-mislabels.html")
    console.print(f"report with thumbnails: {files[0]} (figures: {', '.join(f.name for f in files[1:])})")

    console.rule("[b]6. review[/b]: accept confident suggestions (each is an undoable label event)")
    summary = review_dataset(manifest, ds.name, accept_suggestions=True, min_confidence=0.9)
    checked = accepted_relabels(manifest, ds.name, summary.source, folder)
    console.print(f"applied {counted(summary.applied, 'relabel')} from {summary.source}; "
                  f"[b]against TRUTH.csv: {checked['right']} right, {checked['wrong']} wrong[/b]")

    console.rule("[b]7. retrain[/b]: same settings, reviewed labels, compared on the same valid images")
    report2, comparison = retrain_dataset(manifest, ds.name, progress=progress)
    print_run(report2)
    if comparison is not None:
        print_comparison(comparison)
    second = truth_hits(manifest, ds.name, report2.result, folder)
    after = sum(second.values()) / len(second) if second else float("nan")
    console.print(f"[b]valid accuracy against the planted truth: {before:.2%} before the cycle → {after:.2%} after "
                  f"({after - before:+.2%})[/b] — {cycle_change(first, second)} (the table above compares with the "
                  "current labels, which the review changed)")
    console.print("next: `dsbuild query \"select * from runs\"`, `dsbuild query \"select * from label_history\"`")
    console.print(f"try next: [b]dsbuild ui {ds.name}[/b] — review the flagged images by keyboard in your browser "
                  "(every decision is a label event at once)")
