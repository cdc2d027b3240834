"""The demo's model loop: train → mislabels → accept suggestions → retrain, with the planted truth shown."""

from __future__ import annotations

from pathlib import Path

from dsbuild.demo import read_truth
from dsbuild.manifest import Dataset, Manifest


def planted_scores(flagged_origins: set[str], folder: Path) -> dict[str, int]:
    """How many of the demo's planted wrong labels are among ``flagged_origins`` (absolute file paths)."""
    truth = read_truth(folder)
    planted = {str((folder / r["file"]).resolve()) for r in truth if r["planted"]}
    found = planted & flagged_origins
    return {"planted": len(planted), "found": len(found), "flags": len(flagged_origins),
            "false_flags": len(flagged_origins - planted)}


def run_model_loop(manifest: Manifest, ds: Dataset, *, folder: Path, console, progress=None, quick: bool = False) -> None:
    from dsbuild.catalog import Catalog
    from dsbuild.cli import _print_comparison, _print_run
    from dsbuild.cycle import find_mislabels, mislabel_report, retrain_dataset, review_dataset, train_dataset
    from dsbuild.report import render_table

    overrides = {"epochs": 1} if quick else {}
    with Catalog.open_readonly(manifest.catalog) as cat:
        reviewed = len(cat.label_history(ds.name))
    if reviewed:
        console.print(f"note: an earlier demo run already reviewed {reviewed} labels of '{ds.name}' in {manifest.catalog} "
                      "(label events are kept, never reset): expect few flags now; "
                      "remove that catalog to watch the whole cycle again")
    console.rule("[b]4. train[/b]: fine-tune on the current labels (CPU here; CUDA when present)")
    report = train_dataset(manifest, ds.name, progress=progress, **overrides)
    _print_run(report)

    console.rule("[b]5. mislabels[/b]: out-of-fold probabilities + cleanlab")
    run_id, issues = find_mislabels(manifest, ds.name, progress=progress)
    labels = issues[issues["kind"] == "label"]
    shown = labels.head(12)[["rank", "image_id", "given_label", "suggested_label", "label_quality", "suggested_confidence"]]
    console.print(render_table(shown, "table", None, title=f"top of {len(labels)} flagged labels (run {run_id})"))
    score = planted_scores(set(labels["origin"].astype(str)), folder)
    console.print(
        f"[b]found {score['found']} of the {score['planted']} planted wrong labels[/b]; "
        f"{score['false_flags']} of {score['flags']} flags were not planted (look at them: some digits are ambiguous); "
        f"{int((issues['kind'] == 'conflict').sum())} images in label conflicts"
    )
    reports = manifest.catalog.parent / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    files = mislabel_report(manifest, ds.name, run_id, issues, reports / f"{ds.name}-mislabels.html")
    console.print(f"report with thumbnails: {files[0]} (figures: {', '.join(f.name for f in files[1:])})")

    console.rule("[b]6. review[/b]: accept confident suggestions (each is an undoable label event)")
    summary = review_dataset(manifest, ds.name, accept_suggestions=True, min_confidence=0.9)
    console.print(f"applied {summary.applied} relabels from {summary.source}")

    console.rule("[b]7. retrain[/b]: same settings, reviewed labels, compared on the same valid images")
    report2, comparison = retrain_dataset(manifest, ds.name, progress=progress)
    _print_run(report2)
    if comparison is not None:
        _print_comparison(comparison)
    console.print("next: `dsbuild query \"select * from runs\"`, `dsbuild query \"select * from label_history\"`")
