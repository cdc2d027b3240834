"""The ``dsbuild`` command line: argument parsing and printing only.

Each command loads its inputs, calls one library function and renders the
result. :class:`~dsbuild.errors.DsbuildError` is caught once in :func:`main`:
``Error: <message>`` on stderr, a non-zero exit code, and a traceback only with
``--debug``. Heavy libraries (torch, fastai) are imported only by the commands
that train or predict, so ``--help``, ``status`` and ``query`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from dsbuild import __version__
from dsbuild.errors import DsbuildError
from dsbuild.render.console import (RichProgress, make_console, print_build_summary, print_comparison, print_live_build,
                                    print_run, print_status)
from dsbuild.render.values import counted, is_missing, readable_probabilities

OUTPUT_FORMATS = ("table", "csv", "json")


# --------------------------------------------------------------------------- helpers


def _load(args):
    from dsbuild.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    if args.catalog:
        import dataclasses

        catalog = Path(args.catalog).resolve()
        manifest = dataclasses.replace(manifest, catalog=catalog)
    return manifest


def _warn_unused_settings(manifest, names) -> None:
    """``Warning: …`` on stderr for each setting of the named datasets that nothing will use (``Dataset.warnings``)."""
    for ds in manifest.select(names):
        for warning in ds.warnings:
            make_console(stderr=True).print(f"Warning: {warning}", markup=False, highlight=False, soft_wrap=True)


def _emit(df, args, *, title: str | None = None) -> None:
    """Render a DataFrame with the shared --format/--out options."""
    from dsbuild.render.tables import render_table

    text = render_table(df, args.format, Path(args.out) if args.out else None, title=title)
    if args.out:
        make_console(stderr=True).print(f"wrote {counted(len(df), 'row')} to {args.out}")
    elif text is not None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------- commands


def cmd_init(args) -> int:
    import os

    from dsbuild.init import init_project

    path, folder, files = init_project(Path(args.manifest), force=args.force)
    data = os.path.relpath(folder, path.parent)
    print(f"wrote {path} and the demo's images ({data}, {files} files) — `dsbuild build` builds the demo dataset, "
          "`dsbuild demo` runs the whole showcase; add your datasets to the manifest")
    return 0


def cmd_build(args) -> int:
    from dsbuild.pipeline import PartialBuild, build

    manifest = _load(args)
    executor = None
    if args.executor or args.ray_address:
        import dataclasses

        if args.executor == "local" and args.ray_address:
            raise DsbuildError("--ray-address needs --executor ray (or no --executor)", exit_code=2)
        backend = args.executor or "ray"
        top = manifest.executor  # the manifest's top-level [executor]: its address and batch_size stay unless replaced
        address = args.ray_address or (top.address if top.backend == backend else None)
        from dsbuild.errors import SettingsError

        try:
            executor = dataclasses.replace(top, backend=backend, address=address)
        except SettingsError as exc:  # only --ray-address can be bad here (--executor has choices)
            raise DsbuildError(f"--ray-address {exc.problems[0].message}", exit_code=2) from None
    _warn_unused_settings(manifest, args.datasets)
    try:
        summary = build(manifest, args.datasets, retry_failed=args.retry_failed, progress=RichProgress(args.quiet),
                        workers=args.workers, executor=executor, resplit=args.resplit)
    except PartialBuild as partial:  # what was built, then the datasets that were not (the error, exit code 2)
        print_build_summary(partial.summary)
        raise
    print_build_summary(summary)
    return 0


def cmd_status(args) -> int:
    from dsbuild.status import dataset_status

    manifest = _load(args)
    if args.html:
        from dsbuild.status import duplicates_page

        if not args.dataset:
            raise DsbuildError("--html needs a DATASET — e.g. dsbuild status demo --html duplicates.html", exit_code=2)
        out, groups = duplicates_page(manifest.catalog, args.dataset, Path(args.html))
        print(f"wrote {out} ({groups} duplicate groups, label conflicts first)")
        return 0
    from dsbuild.errors import CatalogBusy

    try:
        status = dataset_status(manifest.catalog, args.dataset, manifest=manifest)
    except CatalogBusy:
        from dsbuild.status import running_build

        live = running_build(manifest.catalog)
        if live is None:
            raise
        print_live_build(live)
        return 0
    print_status(status)
    return 0


def cmd_query(args) -> int:
    from dsbuild.catalog import list_named_queries, resolve_named_query, sandboxed_query

    manifest = _load(args)
    if args.list:
        import pandas as pd

        rows = [{"name": "@" + k, "description": v} for k, v in list_named_queries(manifest.root).items()]
        _emit(pd.DataFrame(rows, columns=["name", "description"]), args)
        return 0
    if not args.sql:
        raise DsbuildError("give SQL or @name — e.g. dsbuild query \"select label, count(*) from images group by all\"", exit_code=2)
    sql = args.sql
    if sql.startswith("@"):
        sql = resolve_named_query(sql[1:], manifest.root)
    df = sandboxed_query(manifest.catalog, sql, timeout=args.timeout, manifest_root=manifest.root)
    _emit(df, args)
    return 0


def cmd_export(args) -> int:
    from dsbuild.exporters import export_dataset

    manifest = _load(args)
    manifest.dataset(args.dataset)
    summary = export_dataset(manifest.catalog, args.dataset, Path(args.to), fmt=args.format, manifest=manifest)
    splits = ", ".join(f"{k} {v}" for k, v in sorted(summary.per_split.items()))
    print(f"exported {summary.images} images of '{summary.dataset}' to {summary.out} ({summary.format}; {splits})")
    for line in summary.notes():
        print(line)
    for image_id, why in summary.skipped:
        make_console(stderr=True).print(f"skipped {image_id}: {why} — run `dsbuild build {summary.dataset}` after "
                                        "restoring or removing the file", highlight=False, soft_wrap=True)
    return 0


def cmd_demo(args) -> int:
    from dsbuild.demo.steps import demo_manifest, run_demo

    manifest, note = demo_manifest(Path(args.manifest))
    if args.catalog:
        import dataclasses

        manifest = dataclasses.replace(manifest, catalog=Path(args.catalog).resolve())
    console = make_console()
    if note:
        console.print(note, markup=False, soft_wrap=True)
    run_demo(manifest, progress=RichProgress(args.quiet), console=console, quick=args.quick, build_only=args.build_only)
    return 0


def cmd_train(args) -> int:
    from dsbuild.cycle import train_dataset

    manifest = _load(args)
    overrides = {"epochs": args.epochs} if args.epochs is not None else {}
    if not overrides:  # --epochs without finetune is refused, naming the same fix
        _warn_unused_settings(manifest, [args.dataset])
    report = train_dataset(manifest, args.dataset, progress=_model_progress(args), **overrides)
    print_run(report)
    return _did_it_learn(report)


def _did_it_learn(report) -> int:
    """Warn on stderr and return exit status 3 when the model did not learn; warn and return 0 when the valid
    split is too small to tell; else 0."""
    from dsbuild.cycle import DID_NOT_LEARN_EXIT

    warning = report.warning()
    if warning is None:
        return 0
    make_console(stderr=True).print(f"Warning: {warning}", markup=False)
    return 0 if report.inconclusive else DID_NOT_LEARN_EXIT


def _model_progress(args):
    """Per-stage rich progress bars (epochs, folds) on stderr; None with --quiet."""
    return None if args.quiet else RichProgress()


def cmd_mislabels(args) -> int:
    from dsbuild.cycle import find_issues, fresh_mislabels

    manifest = _load(args)
    _warn_unused_settings(manifest, [args.dataset])
    found = None if args.rerun else fresh_mislabels(manifest, args.dataset)
    if found is not None:
        make_console(stderr=True).print(f"showing mislabel run {found[0]} (labels, images and settings unchanged since; "
                                        "--rerun to score again)", markup=False)
    run_id, issues = found or find_issues(manifest, args.dataset, progress=_model_progress(args))
    from dsbuild.cycle import review_tally, reviewed_note, run_trust, trust_line, with_reviewed

    issues = with_reviewed(manifest, args.dataset, issues)

    err = make_console(stderr=True)
    err.print(trust_line(run_trust(manifest, run_id)), markup=False, highlight=False)
    tally = review_tally(issues)
    if tally:
        err.print(tally, markup=False, highlight=False)
    if args.format == "html":
        from dsbuild.cycle import mislabel_report, reports_dir

        out = Path(args.out) if args.out else reports_dir(manifest) / f"{args.dataset}-mislabels.html"
        files = mislabel_report(manifest, args.dataset, run_id, issues, out)
        print(f"wrote {', '.join(map(str, files))} ({counted(len(issues), 'flagged image')})")
        return 0
    from dsbuild.rows import REPORT_COLUMNS, REPORT_TABLE_COLUMNS

    view = issues[[c for c in REPORT_COLUMNS if c in issues]]
    if args.format == "table" and not args.out:
        view = readable_probabilities(view[list(REPORT_TABLE_COLUMNS)])
    _emit(view, args, title=mislabels_title(issues, args.dataset, run_id) + reviewed_note(issues))
    return 0


#: How each issue kind of the mislabel report is counted in its title.
_KIND_WORDS = {"label": "likely wrong label", "conflict": "label conflict", "outlier": "outlier"}


def mislabels_title(issues, dataset: str, run_id: str) -> str:
    """The mislabel table's title: ``N likely label problems in 'ds' (run …)`` when every flag is a label issue,
    else the flags by kind (``29 flagged images in 'ds' (run …): 2 likely wrong labels, 27 outliers``) — an outlier
    is an image that fits no class, not a label a person should change (fresh-user trial 8)."""
    head = f"in '{dataset}' (run {run_id})"
    kinds = issues["kind"].astype(str).value_counts() if "kind" in issues and len(issues) else None
    if kinds is None or set(kinds.index) <= {"label"}:
        return f"{counted(len(issues), 'likely label problem')} {head}"
    parts = [counted(int(kinds[k]), w) for k, w in _KIND_WORDS.items() if k in kinds]
    parts += [counted(int(n), f"{k} flag") for k, n in kinds.items() if k not in _KIND_WORDS]
    return f"{counted(len(issues), 'flagged image')} {head}: {', '.join(parts)}"


def cmd_review(args) -> int:
    from dsbuild.cycle import review_dataset

    manifest = _load(args)
    summary = review_dataset(manifest, args.dataset, decisions=Path(args.decisions) if args.decisions else None,
                             accept_suggestions=args.accept_suggestions, min_confidence=args.min_confidence,
                             overrule_people=args.overrule_people)
    actions = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_action.items())) or "nothing to apply"
    tail = [f"{summary.already_applied} already applied"] if summary.already_applied else []
    tail += [f"skipped {counted(n, 'image')} {why}" for why, n in summary.skipped.items()]
    print(f"applied {counted(summary.applied, 'decision')} to '{summary.dataset}' ({actions}) from {summary.source}"
          + "".join(f"; {t}" for t in tail))
    for note in summary.notes:
        make_console(stderr=True).print(f"Warning: {note}", markup=False, highlight=False, soft_wrap=True)
    if summary.left_for_people and summary.left_for_people[0]:
        below, flags = summary.left_for_people
        make_console(stderr=True).print(
            f"{below} of the mislabel run's {counted(flags, 'label flag')} had no suggestion at --min-confidence "
            f"{args.min_confidence:g} or above: left for a person (`dsbuild ui {summary.dataset}`, or a decisions file "
            f"from `dsbuild mislabels {summary.dataset} --format csv`)", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_retrain(args) -> int:
    from dsbuild.cycle import retrain_dataset

    manifest = _load(args)
    _warn_unused_settings(manifest, [args.dataset])
    report, comparison = retrain_dataset(manifest, args.dataset, progress=_model_progress(args))
    print_run(report)
    if comparison is not None:
        print_comparison(comparison)
    return _did_it_learn(report)


def cmd_embed(args) -> int:
    from dsbuild.pipeline import embed

    manifest = _load(args)
    summaries = embed(manifest, args.datasets, progress=RichProgress(args.quiet), workers=args.workers)
    for s in summaries:
        print(f"{s.dataset}: embeddings and near-duplicate signals up to date; {counted(s.duplicates, 'duplicate')} "
              f"in {counted(s.dup_groups, 'group')}, {counted(s.conflicts, 'label conflict')}"
              + (f", as {s.grouping_reused} grouped them (nothing they depend on changed)" if s.grouping_reused else "")
              + f" ({s.seconds:.0f} s)")
        for note in s.notes:
            print(f"{s.dataset}: {note}")
    return 0


def cmd_similar(args) -> int:
    from dsbuild.similar import similar_images

    manifest = _load(args)
    df = similar_images(manifest, args.dataset, args.image, k=args.k)
    query = df.attrs.get("query_id") or args.image  # an image id given by its start is titled by the whole id
    if args.format == "html":
        from dsbuild.render.html import similar_html

        out = Path(args.out or f"{args.dataset}-similar.html")
        similar_html(df, dataset=args.dataset, query=query, out=out)
        print(f"wrote {out} ({len(df)} images)")
        return 0
    if args.format == "table" and not args.out:
        df = df[["rank", "image_id", "similarity", "label", "split", "status", "origin"]].copy()
        # one width for the column (0.9, 0.782 and 0.8947 were printed as they came): 4 decimals, as predict's
        df["similarity"] = ["" if is_missing(v) else f"{v:.4f}" for v in df["similarity"]]
    _emit(df, args, title=f"{len(df)} images of '{args.dataset}' most similar to {query}")
    return 0


def cmd_predict(args) -> int:
    from dsbuild.cycle import predict_images

    manifest = _load(args)
    result = predict_images(manifest, args.dataset, args.images, top=args.top, run_id=args.run)
    make_console(stderr=True).print(f"model of run {result.run_id} ({result.kind})", markup=False)
    for warning in (result.warning, result.note):
        if warning:
            make_console(stderr=True).print(f"Warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    df = result.frame
    if args.format == "table" and not args.out:
        keep = [c for c in ("path", "rank", "label", "probability", "error") if c in df
                and (c != "error" or df[c].notna().any())]
        df = readable_probabilities(df[keep])
    _emit(df, args)
    return 0


def cmd_ui(args) -> int:
    from dsbuild.errors import Terminated
    from dsbuild.ui.server import serve

    manifest = _load(args)
    # A server is stopped on purpose, so its stop is no error: as uvicorn's own CLI, quietly, after the graceful
    # shutdown (every decision is already committed), with 0 on Ctrl-C and 143 (128 + SIGTERM) on SIGTERM.
    try:
        serve(manifest, args.dataset, host=args.host, port=args.port, allow_remote=args.allow_remote,
              open_browser=not args.no_browser)
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 0
    return 0


# --------------------------------------------------------------------------- parser


def _common_options(*, defaults: bool) -> argparse.ArgumentParser:
    """-m/--catalog/--debug/-q, accepted before and after the command name.

    The subcommands' copy has no defaults (SUPPRESS): argparse copies every
    subparser default over the top-level namespace, which would silently undo
    ``dsbuild -m other.toml build``.
    """
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-m", "--manifest", default=d("datasets.toml"), metavar="PATH",
                        help="the manifest (default: ./datasets.toml)")
    common.add_argument("--catalog", default=d(None), metavar="PATH", help="use this catalog file instead of the manifest's")
    common.add_argument("--debug", action="store_true", default=d(False), help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress bars")
    return common


def _shared_parents() -> dict[str, argparse.ArgumentParser]:
    common = _common_options(defaults=False)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--format", choices=OUTPUT_FORMATS, default="table", help="output format (default: table)")
    output.add_argument("--out", metavar="FILE", help="write to FILE instead of the terminal")
    return {"common": common, "output": output}


COMMANDS: dict[str, tuple[str, Callable]] = {}


def build_parser() -> argparse.ArgumentParser:
    parents = _shared_parents()
    common, output = parents["common"], parents["output"]
    parser = argparse.ArgumentParser(
        prog="dsbuild",
        description="Build clean image-classification datasets from a manifest (datasets.toml): "
        "crawl, verify, dedup, split, catalog (DuckDB), train, find mislabels, review, retrain.",
        parents=[_common_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"dsbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable, help: str, extra: list | None = None):
        p = sub.add_parser(name, help=help, description=help, parents=[common, *(extra or [])])
        p.set_defaults(func=func)
        COMMANDS[name] = (help, func)
        return p

    p = add("init", cmd_init, "write a starter datasets.toml that builds as written (the offline demo's digits, "
            "generated beside it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")

    p = add("build", cmd_build, "crawl/import → verify → dedup → split → catalog")
    p.add_argument("datasets", nargs="*", metavar="DATASET", help="datasets to build (default: all)")
    p.add_argument("--retry-failed", action="store_true", help="fetch again every download that failed (a timeout, a reset, "
                   "a 404, a 5xx...) and search again every query that found no results; a plain build tries neither")
    p.add_argument("--workers", type=int, default=None, help="worker processes for verification (default: CPU count)")
    p.add_argument("--resplit", action="store_true",
                   help="assign every image's split again from the manifest's [split] settings (after changing "
                        "fractions, seed or carve); says how many images moved")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="where the per-image work runs, for every dataset of this build (default: the manifest's "
                        "[executor] backend, else local)")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (implies --executor ray; "
                        "default: the manifest's [executor] address, else a Ray runtime started for the build)")

    p = add("status", cmd_status, "counts per class × split × status, and rejects by reason")
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="one dataset (default: all in the catalog)")
    p.add_argument("--html", metavar="FILE", help="write the dataset's duplicate groups and label conflicts as an "
                   "HTML page with thumbnails side by side")

    p = add("query", cmd_query, "read-only SQL on the catalog (or @name for catalog/queries/name.sql)", [output])
    p.add_argument("sql", nargs="?", metavar="SQL|@name", help="a SELECT, or @name of a named query")
    p.add_argument("--list", action="store_true", help="list the named queries")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="stop the query after S seconds (default 60)")

    p = add("export", cmd_export, "export accepted images as an ImageFolder tree or a CSV index")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--to", required=True, metavar="DIR|FILE.csv",
                   help="output folder (new, empty, or a previous export: exporting the same dataset in the same "
                        "format again replaces only what that export wrote — models/, export.pkl and other files "
                        "stay — and is refused, changing nothing, where it would overwrite anything else); with "
                        "--format csv, a path ending in .csv is the CSV file itself (else DIR/DATASET.csv, beside "
                        "whatever DIR holds)")
    p.add_argument("--format", choices=("imagefolder", "csv"), default="imagefolder", help="default: imagefolder")

    p = add("demo", cmd_demo, "the offline end-to-end showcase (digits with planted problems)")
    p.add_argument("--quick", action="store_true", help="smaller model settings for a fast run")
    p.add_argument("--build-only", action="store_true", help="stop after the build and summary")

    p = add("train", cmd_train, "train a model on the current labels (model.finetune: fastai); records a run; exit 3 if it did not learn")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--epochs", type=int, help="override model.epochs (finetune = true only)")

    p = add("mislabels", cmd_mislabels, "find likely mislabeled images (out-of-fold probabilities + cleanlab)")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--format", choices=(*OUTPUT_FORMATS, "html"), default="table", help="output format (default: table)")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of the terminal (html: default "
                   "reports/DATASET-mislabels.html beside the catalog)")
    p.add_argument("--rerun", action="store_true", help="score again even if the latest mislabel run scored the same images, labels and settings")

    p = add("review", cmd_review, "apply review decisions (relabel/remove/keep/undo) as label events")
    p.add_argument("dataset", metavar="DATASET")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--decisions", metavar="FILE.csv",
                   help="CSV with a header row, image_id,action,new_label,note (or a path column instead of image_id); "
                        "action: relabel, remove, keep, undo. Rows already applied are skipped, so a file can be run again")
    g.add_argument("--accept-suggestions", action="store_true",
                   help="relabel flagged images to the suggested label, except images decided about since the mislabel run "
                        "and images whose standing decision is a person's (a decisions file, the review app, or carried over from one)")
    p.add_argument("--min-confidence", type=float, default=0.9, metavar="X",
                   help="with --accept-suggestions: out-of-sample probability of the suggestion (default 0.9)")
    p.add_argument("--overrule-people", action="store_true",
                   help="with --accept-suggestions: also relabel images whose standing decision is a person's "
                        "(skipped by default); decisions since the mislabel run are still skipped")

    p = add("retrain", cmd_retrain, "train again on the reviewed labels and compare with the last run")
    p.add_argument("dataset", metavar="DATASET")

    p = add("embed", cmd_embed, "compute the missing embeddings and near-duplicate signals of built datasets, "
            "then regroup them and store their neighbours and outlier scores")
    p.add_argument("datasets", nargs="*", metavar="DATASET", help="datasets (default: all)")
    p.add_argument("--workers", type=int, default=None, help="torch threads (default: torch's)")

    p = add("similar", cmd_similar, "the accepted images of a dataset most similar to an image (embedding cosine)")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("image", metavar="IMAGE_OR_ID",
                   help="an image_id of the dataset (or its first 4+ hex digits, if no other id starts so), or an image file")
    p.add_argument("-k", type=int, default=20, help="how many (default 20)")
    p.add_argument("--format", choices=(*OUTPUT_FORMATS, "html"), default="table", help="output format (default: table)")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of the terminal")

    p = add("predict", cmd_predict, "label and probability for images or folders", [output])
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--top", type=int, metavar="K", help="the K most probable classes of each image, best first")
    p.add_argument("--run", metavar="RUN_ID", help="the model of this train/retrain run (default: the latest; the runs view lists "
                                                   "them: dsbuild query \"SELECT run_id, kind, accuracy FROM runs\")")

    p = add("ui", cmd_ui, "a local web app: review flagged images by keyboard, browse, runs, predict")
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="the dataset (default: the only one in the catalog)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host other than loopback (prints a warning)")
    p.add_argument("--no-browser", action="store_true", help="print the URL only; do not open a browser")
    return parser


TERMINATED = "Error: terminated (SIGTERM) — everything finished so far is kept; run the command again"


def _on_sigterm(signum, frame) -> None:
    from dsbuild.errors import Terminated, note_terminated

    note_terminated()
    raise Terminated()


def _redeliver_lost_stops(unraisable) -> None:
    """``sys.unraisablehook`` while a command runs: a stop that CPython swallowed is sent again.

    CPython cannot raise out of some callbacks (a weakref callback, ``__del__``, a GC callback): a
    :class:`KeyboardInterrupt` raised there by Ctrl-C's handler — or a :class:`~dsbuild.errors.Terminated` by
    SIGTERM's — is printed as "Exception ignored in …" and dropped, and the command goes on as if no key had been
    pressed. ``import`` runs such a callback (``_get_module_lock``'s), so a Ctrl-C in the first seconds of ``train``
    (importing torch and fastai) was lost about once in a loaded test run. Here the same signal is sent again from
    a short-lived thread, so that it lands in the command's own code a moment later (and again, should that one be
    swallowed too); other unraisable exceptions go to the default hook."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    import os
    import signal
    import threading

    from dsbuild.errors import Terminated

    signum = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
    again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
    again.daemon = True  # a command that ends first is not stopped after the fact
    again.start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    import signal
    import threading

    # SIGTERM (a process manager, `kill`, a CI timeout) stops a command as Ctrl-C does: what is finished is kept
    # and the build or run is marked interrupted, instead of the process dying with its rows still "running".
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver_lost_stops
    try:
        return _run(args)
    finally:
        sys.unraisablehook = previous_hook
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    from dsbuild.errors import Terminated

    try:
        return int(args.func(args) or 0)
    except Terminated:
        if args.debug:
            raise
        print(TERMINATED, file=sys.stderr)
        return 143
    except DsbuildError as exc:
        if args.debug:
            raise
        if isinstance(exc.__context__, Terminated):  # a stage turned the stop into its own message (build)
            print(TERMINATED, file=sys.stderr)
            return 143
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("Error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
