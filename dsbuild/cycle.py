"""The model loop over the catalog: train, find mislabels, review, retrain, predict.

Each function reads what it needs from the catalog, runs the model code in
:mod:`dsbuild.model` and the issue finders of :mod:`dsbuild.issues` with no database connection
open (so ``status`` and ``query`` keep working during a long training), and
writes its results back: a ``runs`` row per run (params, per-epoch metrics,
confusion matrix, model path), ``label_issues`` rows per mislabel run, and
append-only ``label_events`` per review decision.

Writers hold the catalog's lock file for their whole duration, so a build and
a training never interleave.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbuild.catalog import BuildLock, Catalog, open_for_writing, utcnow
from dsbuild.errors import DsbuildError, SettingsError
from dsbuild.formats import not_regular
from dsbuild.manifest import Dataset, Manifest

if TYPE_CHECKING:  # pragma: no cover
    from dsbuild.decisions import Decision

TRAINABLE = ("ok",)


def model_settings(ds: Dataset, **overrides):
    """The dataset's :class:`dsbuild.model.settings.ModelSettings` (checked at manifest load), with command-line overrides,
    ``size`` and ``resize`` resolved (:func:`dsbuild.model.train.with_size`: by default a head trains on the build's
    embedding input, whose features the build's pass wrote)."""
    from dsbuild.model.train import with_size

    settings = ds.model_settings
    if overrides:
        try:
            settings = dataclasses.replace(settings, **overrides)
        except SettingsError as exc:
            raise DsbuildError(f"{'; '.join(str(p) for p in exc.problems)} (given on the command line)",
                               exit_code=2) from None
    return with_size(settings, ds.dedup)


def models_dir(manifest: Manifest) -> Path:
    return manifest.catalog.parent / "models"


def reports_dir(manifest: Manifest) -> Path:
    """Where HTML reports go unless told otherwise: ``reports/`` beside the catalog."""
    return manifest.catalog.parent / "reports"


def features_dir(manifest: Manifest) -> Path:
    """The per-blob feature cache beside the catalog (:func:`dsbuild.model.features.features`)."""
    return manifest.catalog.parent / "features"


#: Exit status of ``train``/``retrain`` when the model did not learn, and of a refused ``mislabels``.
DID_NOT_LEARN_EXIT = 3


def new_run_id(dataset: str, kind: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{dataset}-{kind}-{stamp}-{secrets.token_hex(2)}"


def dataset_classes(cat: Catalog, ds: Dataset) -> list[str]:
    """The classes of dataset ``ds`` now: the labels a review may give, the only place that says so.

    The manifest's classes, in manifest order; for an ``imagefolder`` (or ``labels_csv``) dataset, sorted, the
    class folders (labels) its sources give today and the classes the manifest adds (``classes`` beside ``imagefolder``): items set aside
    because their source was removed (a folder renamed or deleted) do not count, and neither does a label that
    only review events gave. ``review --decisions``, ``review --accept-suggestions``, the review app's keys
    and its ``/api/decide`` all check a relabel against this list, and ``predict`` compares a model's classes
    with it.
    """
    if ds.imagefolder is None and ds.labels_csv is None:
        return list(ds.labels)
    from dsbuild.sources import SOURCE_REMOVED

    return sorted(set(ds.labels) | set(cat.source_labels(ds.name, set_aside=SOURCE_REMOVED)))


def former_classes(cat: Catalog, ds: Dataset, classes: list[str]) -> list[str]:
    """Labels that were classes of ``ds`` and are not among ``classes`` (:func:`dataset_classes`) now: those of
    items set aside because their source was removed (a class folder renamed or deleted, a class dropped from
    the manifest), and any label an image still carries. Only for messages: a relabel to one is refused."""
    from dsbuild.sources import SOURCE_REMOVED

    known = set(cat.set_aside_labels(ds.name, reason=SOURCE_REMOVED)) | set(cat.dataset_labels(ds.name))
    return sorted(known - set(classes))


def training_frame(cat: Catalog, dataset: str, *, split=None, classes: tuple[str, ...] = (), min_per_class: int = 1):
    """Images a model may learn from: status ok, with a split; columns image_id, path, label, split, origin, sha256,
    pixel_sha (the last two: the key of its cached features).

    ``split``: the dataset's :class:`dsbuild.split.SplitSettings` (for the fix the error names).
    ``classes``: the manifest's classes, each of which needs ``min_per_class`` such images
    (out-of-fold scoring checks its folds itself: :func:`dsbuild.model.oof.too_few_for_folds`);
    a class below that is named in the error, so a model never trains silently without it.
    """
    df = cat.trainable_images(dataset)
    if df.empty:
        raise DsbuildError(f"dataset '{dataset}' has no accepted images in the catalog — run `dsbuild build {dataset}` first")
    counts = df["label"].value_counts()
    short = [(c, int(counts.get(c, 0))) for c in classes if int(counts.get(c, 0)) < min_per_class]
    if short:
        listed = ", ".join(f"{c} {n}" for c, n in short)
        raise DsbuildError(f"dataset '{dataset}' has classes with too few accepted images to train: {listed} "
                           f"(each needs at least {min_per_class}) — add images to them or remove them "
                           "from the manifest, then rebuild")
    if df["label"].nunique() < 2:
        raise DsbuildError(f"dataset '{dataset}' has fewer than two labels with accepted images — nothing to learn")
    if (df["split"] == "valid").sum() == 0:
        raise DsbuildError(no_valid_message(dataset, split, cat.given_splits(dataset), int(df["label"].value_counts().max())))
    return df


def no_valid_message(dataset: str, split, given: list[str], largest: int) -> str:
    """Why ``dataset`` has no valid images, and the manifest change (+ ``build --resplit``) that gives it some.

    ``split``: its :class:`dsbuild.split.SplitSettings`; ``given``: the splits its
    ImageFolder tree gave (a tree without ``valid/`` needs a carve); ``largest``: images
    in its largest class.
    """
    rebuild = f"then run `dsbuild build {dataset} --resplit`"
    carving = split is not None and split.carve is not None and split.carve.valid > 0
    if given and "valid" not in given and not carving:
        source = "train" if "train" in given else given[0]
        return (f"dataset '{dataset}' has no valid images: its folder gives {' and '.join(given)} and no valid — "
                f"carve one out of {source}: add carve = {{ from = \"{source}\", valid = 0.2 }} to "
                f"[datasets.{dataset}.split], {rebuild}")
    if not given and split is not None and split.valid == 0:
        return (f"dataset '{dataset}' has no valid images — set valid = 0.2 (and train = {round(split.train - 0.2, 9):g}) "
                f"in [datasets.{dataset}.split], {rebuild}")
    return (f"dataset '{dataset}' has no valid images: its largest class has {largest} image(s), too few to set one "
            f"aside — add images (a class gets its first valid image at 3 with valid = 0.2), then run "
            f"`dsbuild build {dataset}`")


class _Writer:
    """Holds the catalog lock; opens the database only for short writes.

    ``command``: what runs (``"dsbuild train"``), named in the lock file for the commands it refuses.
    The connection opened on entry (to mark runs whose process died) is handed to the first
    :meth:`open`, so a short write — a review app's one decision — opens the file once.
    """

    def __init__(self, manifest: Manifest, command: str) -> None:
        self.manifest = manifest
        self.command = command
        self.lock: BuildLock | None = None
        self._first: Catalog | None = None

    def __enter__(self) -> "_Writer":
        if not manifest_catalog_exists(self.manifest):
            raise DsbuildError(f"no catalog at {self.manifest.catalog} — run `dsbuild build` first")
        self.lock, self._first = open_for_writing(self.manifest.catalog, command=self.command)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._first is not None:
                self._first.close()
                self._first = None
        finally:
            if self.lock is not None:
                self.lock.release()

    def open(self) -> Catalog:
        """The catalog, read-write (close it, e.g. ``with w.open() as cat:``, before long work)."""
        if self._first is not None:
            cat, self._first = self._first, None
            return cat
        return Catalog.open(self.manifest.catalog)


def manifest_catalog_exists(manifest: Manifest) -> bool:
    return Path(manifest.catalog).exists()


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class RunReport:
    """A recorded train/retrain run. ``learned`` is False when the valid accuracy is not
    significantly above always answering the commonest label (``result.learned`` has the
    numbers): the CLI then warns and exits with :data:`DID_NOT_LEARN_EXIT`. When the valid
    split is too small for the test to tell (``inconclusive``), the CLI warns and exits 0:
    the model may well have learned, nothing says it did not."""

    run_id: str
    dataset: str
    kind: str
    result: object  # dsbuild.model.train.TrainResult
    parent_run: str | None = None

    @property
    def learned(self) -> bool:
        check = getattr(self.result, "learned", None)
        return check is None or bool(check.learned)

    @property
    def inconclusive(self) -> bool:
        """True when the valid split has too few images to tell whether the model learned."""
        check = getattr(self.result, "learned", None)
        return check is not None and not check.learned and not getattr(check, "conclusive", True)

    def warning(self) -> str | None:
        """The did-not-learn (or too-few-images) warning with the numbers and what to try; None when it learned."""
        check = getattr(self.result, "learned", None)
        if check is None or check.learned:
            return None
        if self.inconclusive:
            return f"cannot tell whether the model learned: {check.message('valid')}"
        return f"the model did not learn: {check.message('valid')}"


def train_dataset(manifest: Manifest, name: str, *, kind: str = "train", parent_run: str | None = None,
                  progress=None, **overrides) -> RunReport:
    """Fine-tune on the catalog's current labels and splits; record the run; return its report."""
    from dsbuild.model.features import adopt_blob_keyed
    from dsbuild.model.train import train

    ds = manifest.dataset(name)
    settings = model_settings(ds, **overrides)
    _check_epochs(settings, name, from_cli="epochs" in overrides)
    run_id = new_run_id(name, kind)
    with _Writer(manifest, f"dsbuild {kind}") as w:
        with w.open() as cat:
            df = training_frame(cat, name, split=ds.split, classes=ds.labels)
            adopt_blob_keyed(features_dir(manifest), cat.current_pixel_keys)
            cat.start_run(run_id=run_id, dataset=name, kind=kind, arch=settings.arch,
                          params=_params(settings), parent_run=parent_run)
        out_dir = models_dir(manifest) / name / run_id
        try:
            result = train(df, settings, out_dir=out_dir, progress=progress, cache_dir=features_dir(manifest))
        except BaseException as exc:
            _end_failed_run(w, run_id, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise _interrupted(manifest, kind, name, run_id, "no model was saved",
                                   cached=not settings.finetune) from None
            raise
        valid_ids = df.loc[df["split"] == "valid", "image_id"].tolist()
        train_ids = df.loc[df["split"] == "train", "image_id"].tolist()  # what the model learned from
        with w.open() as cat:
            cat.finish_run(
                run_id, n_train=result.n_train, n_valid=result.n_valid, error_rate=result.error_rate,
                accuracy=result.accuracy, model_path=str(result.model_path), epochs=result.epochs,
                confusion={"classes": list(result.classes), "matrix": result.confusion},
                per_class=result.per_class_accuracy, valid_ids=valid_ids, train_ids=train_ids,
                duration_s=result.duration_s,
                params=result.params | {"learn_check": _check_json(result.learned)},
            )
    return RunReport(run_id=run_id, dataset=name, kind=kind, result=result, parent_run=parent_run)


def _check_epochs(settings, name: str, *, from_cli: bool) -> None:
    """Refuse, before any work, a fine-tune with no epoch at all, and ``--epochs`` where nothing has epochs (the
    default recipe fits a logistic head on frozen features: :func:`dsbuild.model.train.train_head`)."""
    if not settings.finetune:
        if from_cli:
            raise DsbuildError(f"--epochs applies to fine-tuning only: datasets.{name}.model trains a logistic head on "
                               "frozen features, which has no epochs — set finetune = true in that table to "
                               "fine-tune the whole network", exit_code=2)
        return
    frozen = settings.freeze_epochs if settings.pretrained else 0
    if settings.epochs + frozen > 0:
        return
    if from_cli:
        why = (f"datasets.{name}.model.freeze_epochs = {settings.freeze_epochs}" if settings.pretrained
               else f"datasets.{name}.model.pretrained = false")
        raise DsbuildError(f"--epochs 0 with {why} leaves nothing to train — give --epochs 1 or more", exit_code=2)
    raise DsbuildError(f"datasets.{name}.model: epochs = 0 and freeze_epochs = 0 leave nothing to train — "
                       "set epochs to 1 or more", exit_code=2)


def _end_failed_run(w: "_Writer", run_id: str, exc: BaseException) -> None:
    """Record how a run ended early: ``interrupted`` (Ctrl-C, SIGTERM) or ``failed`` with the error."""
    with w.open() as cat:
        if isinstance(exc, KeyboardInterrupt):
            cat.finish_run(run_id, status="interrupted", error=str(exc)[:2000] or "interrupted")
        else:
            cat.finish_run(run_id, status="failed", error=str(exc)[:2000] or type(exc).__name__)


def _interrupted(manifest: Manifest, command: str, name: str, run_id: str, lost: str, *, cached: bool) -> DsbuildError:
    """The error for a run stopped by Ctrl-C (or SIGTERM): what was kept and how to go on, as a build says it.

    ``cached``: the recipe reads the per-blob feature cache, which keeps every chunk finished before the stop
    (:func:`dsbuild.model.features.features`), so running the command again picks up from there; a fine-tuning
    keeps no checkpoint and starts over. Raised ``from None`` inside the handler: the CLI still sees the
    interrupt (``__context__``) and answers a SIGTERM as it answers every other command's.
    """
    again = f"`dsbuild {command} {name}`"
    if cached:
        how = f"the image features computed so far are kept in {features_dir(manifest)}: {again} goes on from them"
    else:
        how = f"{again} starts again from the first epoch (fine-tuning keeps no checkpoint)"
    return DsbuildError(f"{command} interrupted — run {run_id} is recorded as interrupted and {lost}; {how}",
                        exit_code=130)


def _check_json(check) -> dict | None:
    return None if check is None else dataclasses.asdict(check)


def _params(settings) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}


def last_run(manifest: Manifest, name: str, *, kinds=("train", "retrain")):
    """The latest successful train/retrain run row of ``name`` (a pandas Series), or None."""
    with Catalog.open_readonly(manifest.catalog) as cat:
        runs = cat.runs(name, kind=tuple(kinds))
    return None if runs.empty else runs.iloc[-1]


def model_run(manifest: Manifest, name: str, run_id: str):
    """The ``model_runs`` row (a pandas Series) of train/retrain run ``run_id`` of ``name`` whose model exists;
    DsbuildError (exit 2) otherwise, naming the runs that have one (latest first) and the closest id."""
    from dsbuild.errors import closest

    if not manifest_catalog_exists(manifest):
        raise DsbuildError(f"no catalog at {manifest.catalog} — run `dsbuild build` first")
    with Catalog.open_readonly(manifest.catalog) as cat:
        runs = cat.runs(name)
    runs = runs[runs["model_path"].map(lambda p: isinstance(p, str) and Path(p).exists())]
    hit = runs[runs["run_id"] == run_id]
    if len(hit):
        return hit.iloc[-1]
    ids = list(runs["run_id"].astype(str))[::-1]
    if not ids:
        raise DsbuildError(f"'{name}' has no train or retrain run with a model — run `dsbuild train {name}` first",
                           exit_code=2)
    near = closest(run_id, ids)
    listed = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more (the runs view)" if len(ids) > 5 else "")
    raise DsbuildError(f"--run {run_id}: no train or retrain run of '{name}' with a model has this id"
                       + (f" (did you mean {near}?)" if near else "") + f" — its runs with a model, latest first: {listed}",
                       exit_code=2)


# --------------------------------------------------------------------------- mislabels


def find_issues(manifest: Manifest, name: str, *, progress=None):
    """Out-of-fold probabilities + cleanlab on every labelled image; record a ``mislabels`` run.

    The issue finders of :mod:`dsbuild.issues` (label, conflict) run on the images'
    out-of-fold probabilities — unless those are too weak to trust
    (:func:`dsbuild.model.trust.learn_check`: accuracy not significantly above always
    answering the commonest label, or Cohen's kappa < 0.2): then the run is recorded with
    status ``refused``, no flag is written, and DsbuildError (exit 3) gives the numbers and
    what to try. A trusted run records in its params ``trust``: out-of-fold accuracy, the
    check, and the expected number of right flags (:func:`run_trust`). Returns ``(run_id, issues)``: issues is a DataFrame with
    the ``label_issues`` view's columns (:data:`dsbuild.rows.LABEL_ISSUE_COLUMNS`:
    given_label, suggested_label, label_quality, kind = label | conflict | outlier,
    suggested_confidence, outlier_score, ...) — flagged rows only, most likely wrong first.
    ``find_mislabels`` is the same function under its old name.
    """
    from dsbuild.issues import IssueContext, run_finders
    from dsbuild.model.features import adopt_blob_keyed
    from dsbuild.model.oof import out_of_fold_probs, too_few_for_folds
    from dsbuild.model.trust import learn_check

    ds = manifest.dataset(name)
    settings = model_settings(ds)
    run_id = new_run_id(name, "mislabels")
    with _Writer(manifest, "dsbuild mislabels") as w:
        with w.open() as cat:
            df = training_frame(cat, name, split=ds.split, classes=ds.labels)
            too_few = too_few_for_folds(df["label"].value_counts(), settings)
            if too_few:  # before any run is recorded: nothing was tried
                raise DsbuildError(too_few)
            adopt_blob_keyed(features_dir(manifest), cat.current_pixel_keys)
            keep = _reviewed_keep(cat, name)
            members = cat.conflict_members(name)
            outliers = cat.outliers(name)
            cat.start_run(run_id=run_id, dataset=name, kind="mislabels", arch=settings.arch, params=_params(settings),
                          inputs_digest=mislabel_inputs(df, settings, keep, members))
        try:
            oof = out_of_fold_probs(df, settings, progress=progress, cache_dir=features_dir(manifest))
            check = learn_check(oof.label_index(), oof.pred_probs)
            rows = None
            if check.learned:
                rows = run_finders(IssueContext(images=df, oof=oof, reviewed_keep=keep, conflict_members=members,
                                                outliers=outliers))
        except BaseException as exc:
            _end_failed_run(w, run_id, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise _interrupted(manifest, "mislabels", name, run_id, "no flag was written",
                                   cached=settings.oof_method == "frozen") from None
            raise
        matrix = oof_confusion(oof)
        accuracy = sum(matrix[i][i] for i in range(len(matrix))) / max(1, len(df))
        done = dict(n_train=len(df), n_valid=0, duration_s=getattr(oof, "duration_s", None),
                    accuracy=accuracy, error_rate=1 - accuracy, confusion={"classes": list(oof.classes), "matrix": matrix})
        if rows is None:
            message = (f"mislabels refused to flag labels of '{name}': {check.message('out-of-fold')} — "
                       "flags from these probabilities would be guesses; nothing was written")
            with w.open() as cat:
                cat.finish_run(run_id, status="refused", error=message[:2000],
                               params=_params(settings) | {"trust": {"learn_check": _check_json(check)}}, **done)
            raise DsbuildError(message, exit_code=DID_NOT_LEARN_EXIT)
        trust = _trust(oof, rows, check)
        with w.open() as cat:
            cat.insert_issue_rows(run_id, name, rows)
            # The run's confusion and accuracy: out-of-fold predictions against the given labels.
            cat.finish_run(run_id, params=_params(settings) | {"trust": trust}, **done)
            issues = cat.run_issues(run_id)
    return run_id, issues


def _trust(oof, rows, check) -> dict:
    """How far to trust a mislabel run's flags (no ground truth): see :func:`run_trust`."""
    import numpy as np

    from dsbuild.model.trust import label_posterior, trust_estimate

    labels = oof.label_index()
    flagged_ids = set(rows.loc[(rows["kind"] == "label") & rows["is_issue"].astype(bool), "image_id"]) if len(rows) else set()
    flags = np.array([i in flagged_ids for i in oof.image_ids], dtype=bool)
    probs = np.asarray(oof.pred_probs, dtype=np.float64)
    est = trust_estimate(labels, label_posterior(labels, probs), flags, pred_probs=probs)
    return {"oof_accuracy": check.accuracy, "learn_check": _check_json(check), "n_flagged": est.n_flagged,
            "expected_right": est.expected_right, "expected_precision": est.expected_precision,
            "expected_wrong_labels": est.expected_wrong_labels, "expected_recall": est.expected_recall,
            "expected_right_low": est.expected_right_low, "expected_right_high": est.expected_right_high,
            "expected_wrong_labels_low": est.expected_wrong_labels_low,
            "expected_wrong_labels_high": est.expected_wrong_labels_high,
            "posterior_noise_rate": est.posterior_noise_rate, "anchor_noise_rate": est.anchor_noise_rate,
            "model_mistake_rate": est.model_mistake_rate}


def run_trust(manifest: Manifest, run_id: str) -> dict | None:
    """The trust figures of mislabel run ``run_id``: ``oof_accuracy`` (out-of-fold predictions vs
    given labels), ``learn_check`` (:class:`dsbuild.model.trust.LearnCheck` as a dict),
    ``n_flagged``, ``expected_right`` (expected number of flags whose label really is wrong: the point estimate of
    :func:`dsbuild.model.trust.trust_estimate`) and the two estimates it is the middle of, ``expected_right_low``
    and ``expected_right_high`` (not bounds), ``expected_precision``, ``expected_wrong_labels`` (in the whole dataset;
    ``_low``, ``_high``), ``expected_recall``, ``posterior_noise_rate`` and ``anchor_noise_rate`` (the two noise-rate
    estimates those come from). None for a run recorded before these figures existed; a run recorded before the two
    estimates (before branch ``trust``) has no ``_low``/``_high`` and its point estimate is the old, posterior one."""
    import json

    with Catalog.open_readonly(manifest.catalog) as cat:
        run = cat.run_row(run_id)
    if run is None or not run.get("params"):
        return None
    return json.loads(run["params"]).get("trust")


def trust_line(trust: dict | None) -> str:
    """One line for people: out-of-fold accuracy, how many flags are expected to be right (a point estimate, the
    middle of two estimates that are no bounds: :func:`dsbuild.model.trust.trust_estimate`) and how many wrong labels
    there are in all; a caution when
    the model's own mistakes are many (``model_mistake_rate`` ≥ :data:`dsbuild.model.trust.MODEL_MISTAKE_CAUTION`):
    a weak model's mistakes look like label errors, and the estimate then runs high."""
    from dsbuild.model.trust import MODEL_MISTAKE_CAUTION

    if not trust or "n_flagged" not in trust:
        return "no trust figures for this run (scored before they were recorded) — run mislabels again"
    n = trust["n_flagged"]
    right = trust["expected_right"]
    share = f" ({right / n:.0%})" if n else ""
    head = f"out-of-fold accuracy {trust['oof_accuracy']:.1%} against the given labels; "
    if "expected_right_low" not in trust:  # recorded before the range: the posterior's figure, an upper one
        return (head + f"of {n} flags about {right:.0f}{share} are expected to be real label errors; "
                f"about {trust['expected_wrong_labels']:.0f} wrong labels estimated in all")
    lo, hi = trust["expected_right_low"], trust["expected_right_high"]
    wlo, whi = trust["expected_wrong_labels_low"], trust["expected_wrong_labels_high"]
    # Not a range: on the trust benchmark the truth lies between the two in 5 of 15 regimes.
    two = (f", the middle of two estimates (neither a bound): {lo:.0f} ({lo / n:.0%}) from the noise among the "
           f"model's surest predictions, {hi:.0f} ({hi / n:.0%}) from cleanlab's noise matrix"
           if n and round(lo) != round(hi) else "")  # a strong model's two estimates are one number
    wrong = f"{trust['expected_wrong_labels']:.0f} wrong labels in all" + (
        f" (the two: {wlo:.0f} and {whi:.0f})" if round(wlo) != round(whi) else "")
    line = head + f"of {n} flags roughly {right:.0f}{share} are expected to be real label errors{two}; roughly {wrong}"
    mistakes = trust.get("model_mistake_rate", float("nan"))
    if mistakes >= MODEL_MISTAKE_CAUTION:
        line += (f" — caution: the model itself seems wrong on {mistakes:.0%} or more of the images, and its "
                 "mistakes look like label errors: fewer flags may be real; review the lowest label_quality first")
    return line


SUGGESTION_CAUTION_ACCURACY = 0.9
"""Out-of-fold accuracy (against the given labels) below which accepting a mislabel run's suggestions says to check
them. Measured in fresh-user trial 9 (1,000 CIFAR-10N photos with one annotator's labels, a model 62 % accurate
out of fold): of the 12 relabels ``--accept-suggestions --min-confidence 0.9`` applied, 3 made a right label wrong —
a weak model's confidence is not the chance that its suggestion is right. Labels with much noise cap this accuracy
too (20 % wrong labels: 80 % at best), so the line is a caution, not a refusal."""


def suggestions_caution(run: dict | None, dataset: str, source: str, relabels: int) -> str | None:
    """The note after ``review --accept-suggestions`` applied ``relabels`` relabels from mislabel run ``run`` (its
    ``model_runs`` row) when the run's recorded out-of-fold accuracy is below :data:`SUGGESTION_CAUTION_ACCURACY`:
    how accurate the model was and the query that lists what ``source`` wrote. None otherwise, and for a run
    recorded without trust figures."""
    if not relabels or not run:
        return None
    acc = (json.loads(run.get("params") or "{}").get("trust") or {}).get("oof_accuracy")
    if acc is None or acc >= SUGGESTION_CAUTION_ACCURACY:
        return None
    return (f"{'this relabel comes' if relabels == 1 else f'these {relabels} relabels come'} from mislabel "
            f"run {run['run_id']}, whose model is {acc:.0%} accurate out of fold against the given labels — its "
            "confidence is not the chance that a suggestion is right: check them (`dsbuild query \"SELECT image_id, "
            f"old_label, new_label, changed_at FROM label_history WHERE dataset = '{dataset}' AND source = "
            f"'{source}'\"`) and undo a wrong one with an undo row in a decisions file")


find_mislabels = find_issues  # the old name (``dsbuild mislabels`` keeps it on the command line)


def mislabel_inputs(df, settings, keep: dict[str, float], members) -> str:
    """A digest of everything a mislabel run's result depends on: the images it scores (id, file, label,
    split, and the content and pixels its features are computed from: ``sha256`` and ``pixel_sha``, the
    features cache's key — a re-check that reads other pixels from a file makes the run stale), the model
    settings, the reviewers' standing ``keep`` decisions and the conflicting groups."""
    import hashlib
    import json

    images = sorted(zip(df["image_id"].astype(str), df["path"].astype(str), df["label"].astype(str),
                        df["split"].astype(str), df["sha256"].astype(str), df["pixel_sha"].astype(str)))
    groups = sorted(zip(members["image_id"].astype(str), members["dup_group"].astype(str), members["label"].astype(str),
                        members["status"].astype(str))) if len(members) else []
    data = {"images": images, "settings": _params(settings), "keep": sorted(keep.items()), "conflicts": groups}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def fresh_mislabels(manifest: Manifest, name: str):
    """``(run_id, issues)`` of the latest mislabel run if it scored exactly today's inputs (the same images,
    labels, splits, settings and reviews: a no-op build or a training changes none of them), else None."""
    if not manifest_catalog_exists(manifest):
        return None
    ds = manifest.dataset(name)
    settings = model_settings(ds)
    with Catalog.open_readonly(manifest.catalog) as cat:
        df = cat.trainable_images(name)
        if df.empty:
            return None
        digest = mislabel_inputs(df, settings, _reviewed_keep(cat, name), cat.conflict_members(name))
        run_id = cat.fresh_mislabel_run(name, digest)
        if run_id is None:
            return None
        issues = cat.run_issues(run_id)
    return run_id, issues


def oof_confusion(oof) -> list[list[int]]:
    """``[given][predicted]`` counts of the out-of-fold predictions (class order: ``oof.classes``)."""
    import numpy as np

    k = len(oof.classes)
    given, pred = oof.label_index(), np.asarray(oof.pred_probs).argmax(axis=1)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (given, pred), 1)
    return matrix.tolist()


def mislabel_report(manifest: Manifest, name: str, run_id: str, issues, out: Path) -> list[Path]:
    """The self-contained HTML report of a mislabel run (both figures embedded), plus ``<out>-confusion.png`` and
    ``<out>-top-losses.png``.

    The confusion matrix is the run's out-of-fold one (given label × best out-of-sample
    class); the top-losses grid shows the 16 flagged images with the lowest label quality.
    Returns the files written.
    """
    import json

    from dsbuild.render.figures import confusion_png, top_losses_bytes
    from dsbuild.render.html import mislabel_html
    from dsbuild.store import atomic_write

    with Catalog.open_readonly(manifest.catalog) as cat:
        run = cat.run_row(run_id)
    info = {"run_id": run_id}
    if run is not None:
        info["arch"] = run["arch"]
        if run["confusion"]:
            conf = json.loads(run["confusion"])
            info["confusion"], info["classes"] = conf["matrix"], conf["classes"]
            info["out-of-fold accuracy"] = f"{run['accuracy']:.2%}" if run["accuracy"] == run["accuracy"] else "?"
        trust = json.loads(run["params"]).get("trust") if run.get("params") else None
        info["trust"] = trust_line(trust)
    tally = review_tally(issues)
    if tally:
        info["review so far"] = tally.removeprefix("reviewed by a person so far: ")
    out = Path(out)
    labels = issues[issues["kind"] == "label"] if "kind" in issues else issues
    losses = top_losses_bytes(labels, n=16)
    written = [mislabel_html(issues, dataset=name, run=info, out=out, top_losses=losses)]
    stem = out.with_suffix("")
    if "confusion" in info:
        written.append(confusion_png(info["confusion"], info["classes"], Path(f"{stem}-confusion.png")))
    written.append(atomic_write(Path(f"{stem}-top-losses.png"), losses))
    return written


def with_reviewed(manifest: Manifest, name: str, issues):
    """A copy of a mislabel run's ``issues`` whose ``reviewed`` column says the review decision that stands on each
    flagged image now (:meth:`dsbuild.decisions.Standing.words`: ``relabelled by a person 2026-12-02``,
    ``relabelled by suggestions@0.9 2026-12-02``; a decision a build carried over is its maker's), "" when none: a
    new run flags reviewed images again (their labels are still scored), and the report says so."""
    from dsbuild.decisions import standing_decisions

    out = issues.copy()
    if out.empty:
        out["reviewed"] = []
        return out
    with Catalog.open_readonly(manifest.catalog) as cat:
        standing = standing_decisions(cat.label_history(name))
    out["reviewed"] = [standing[str(i)].words() if str(i) in standing else "" for i in out["image_id"]]
    label_flags = out.assign(kind=out.get("kind", "label"))["kind"].eq("label")  # no kind column: every flag a label flag
    people = [standing[str(i)] for i in out.loc[label_flags, "image_id"] if str(i) in standing and standing[str(i)].by_person]
    out.attrs["person_review"] = {"flags": int(label_flags.sum()),
                                  "actions": {a: sum(s.action == a for s in people) for a in ("relabel", "remove", "keep")}}
    return out


def review_tally(issues) -> str | None:
    """The people's verdict on a mislabel run's label flags so far, beside the run's estimate (:func:`trust_line`),
    or None when no person has decided on any: ``reviewed by a person so far: 20 of 88 label flags — 15 relabelled
    or removed, 5 kept (75% of the reviewed flags were wrong labels); …``. From the ``person_review`` that
    :func:`with_reviewed` leaves in ``issues.attrs``. A relabel or a removal counts as a wrong label, a keep as a
    right one (a removal may be for another fault than the label). Measured figures, not an estimate; reviews go
    by lowest ``label_quality`` first (the app's queue, the report's order), and the flags least likely to be right
    come later — so the share of the rest is lower: on the trust benchmark's 14 regimes, the 20 flags with the lowest
    label quality were wrong labels 0–54 points more often than the rest (bench/trust_calibration.py
    ``--reviewed``). Scaling the estimate of the rest by the reviewed flags' measured/estimated ratio was measured
    there too and not taken: mean error of the rest's precision 0.147 → 0.138 (20 reviewed), worse for two of six
    CIFAR label sets."""
    review = issues.attrs.get("person_review") if hasattr(issues, "attrs") else None
    if not review:
        return None
    acts = review["actions"]
    wrong, kept = acts.get("relabel", 0) + acts.get("remove", 0), acts.get("keep", 0)
    if not wrong + kept:
        return None
    share = wrong / (wrong + kept)
    return (f"reviewed by a person so far: {wrong + kept} of {review['flags']} label flags — {wrong} relabelled or "
            f"removed, {kept} kept ({share:.0%} of the reviewed flags were wrong labels; the lowest label_quality "
            "are reviewed first, so expect fewer among the rest)")


def reviewed_note(issues) -> str:
    """``; 23 of these were already reviewed (see the reviewed column)`` for a report's title, "" when none were."""
    if "reviewed" not in issues or issues.empty:
        return ""
    n = int((issues["reviewed"].astype(str) != "").sum())
    if not n:
        return ""
    people = int(issues["reviewed"].astype(str).str.contains(" by a person ").sum())
    return (f"; {n} of these {'was' if n == 1 else 'were'} already reviewed ({people} by a person; "
            "see the reviewed column)")


def _reviewed_keep(cat: Catalog, name: str) -> dict[str, float]:
    """image_id → label quality when a reviewer last chose ``keep`` for it (and nothing since)."""
    rows = cat.kept_in_review(name)
    return {r.image_id: (float(r.label_quality) if r.label_quality == r.label_quality and r.label_quality is not None else 1.0)
            for r in rows.itertuples(index=False)}


# --------------------------------------------------------------------------- review


@dataclass(frozen=True)
class ReviewSummary:
    """What a review did: ``applied`` events (``by_action``: per action) from ``source``.

    ``already_applied``: decisions that already stood (a decisions file run again), no event written.
    ``skipped``: with ``accept_suggestions``, reason → how many confident suggestions were not applied
    (``"reviewed since the mislabel run"``, ``"not ok or duplicate now"``, ``"suggesting an unknown label
    'horse' (labels of this dataset: …)"`` for a class renamed, merged or removed since the run); with a
    decisions file, its undo rows that had undone their image's decision on an earlier run (:data:`UNDO_AGAIN`).
    ``notes``: warnings for people, e.g. that the mislabel run scored other classes than the dataset has now.
    """

    dataset: str
    applied: int
    by_action: dict[str, int]
    source: str
    already_applied: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    left_for_people: tuple[int, int] | None = None
    """With ``accept_suggestions``: ``(below, flags)`` — of the run's ``flags`` label flags, ``below`` have no suggestion
    at ``min_confidence`` or above and were left for a person (trial 11: 26 applied of 243 flags, and nothing said how
    few); else None."""


def review_dataset(manifest: Manifest, name: str, *, decisions: "Path | str | Iterable[Decision] | None" = None,
                   accept_suggestions: bool = False, min_confidence: float = 0.9, overrule_people: bool = False,
                   source: str | None = None, on_commit: "Callable[[Catalog], Any] | None" = None,
                   catalog: "Catalog | None" = None, bulk_accept: bool = False) -> ReviewSummary:
    """Apply review decisions as append-only label events; all or nothing.

    ``decisions``: a decisions CSV file (:func:`dsbuild.decisions.parse_decisions`) or any
    iterable of :class:`dsbuild.decisions.Decision` (a review app's choices; recorded with
    ``source``, default ``review:api``); or ``accept_suggestions`` at ``min_confidence``: every
    confident suggestion of the latest mislabel run except those for images someone decided
    about since that run started (any label event: keep, remove, relabel, undo) and those whose
    standing decision is a person's, however old (:func:`dsbuild.decisions.standing_decisions`: a decisions file,
    the review app, or carried over from one by a build; :data:`PERSON_DECIDED`) unless ``overrule_people``, which are
    skipped and counted, as are suggestions to a label that is not a class of the dataset now
    (renamed, merged or removed since the run: ``notes`` then says the run scored other classes).
    A decision that already stands (a decisions file run again) writes no
    event and counts as already applied.
    ``on_commit``: called with the open catalog once the events are committed, before it
    closes (a review app reads the images' new states without opening the file again).
    ``catalog``: apply on this open read-write catalog, whose opener holds the writers' lock
    (a review app's :class:`~dsbuild.catalog.held.HeldCatalog`); by default the catalog is
    opened, locked and closed here. ``bulk_accept``: the given ``decisions`` take suggestions for many images at
    once (the review app's grid selection + Enter): as ``--accept-suggestions``, those on images whose standing
    decision is a person's are skipped (:data:`PERSON_DECIDED_BULK`); one card's Enter is a person's own decision.
    """
    from dsbuild.decisions import (COMPANION, REVIEWABLE, SAME_LABEL_KEEP, check_decisions, label_list, parse_decisions,
                                   plan_events, same_label_keep, standing_decisions, suggested_decisions, undo_stacks)
    from dsbuild.dedup.reviewed import regroup_reviewed

    ds = manifest.dataset(name)
    if (decisions is None) == (not accept_suggestions):
        raise DsbuildError("give either --decisions FILE.csv or --accept-suggestions", exit_code=2)
    if overrule_people and not accept_suggestions:
        raise DsbuildError("--overrule-people goes with --accept-suggestions (a decisions file is a person's own: it "
                           "applies as written)", exit_code=2)
    # Decision objects name their images: only those images' rows, events and flags are read (a review app
    # applies one decision per key press on a large catalog). A file may name images by path: read them all.
    given = decisions is not None and not isinstance(decisions, (str, os.PathLike))
    if given:
        decisions = list(decisions)
    ids = sorted({str(getattr(d, "image_id", "")) for d in decisions}) if given else None
    skipped: dict[str, int] = {}
    notes: list[str] = []
    left: tuple[int, int] | None = None

    def apply(cat: Catalog) -> tuple[list[dict], int, str]:
        nonlocal decisions, source, left
        # Named images: their current label and status from their rows and events (the images view's rules,
        # ≈2 ms, where the view takes ≈12: a review app applies one decision per key press).
        images = cat.current_states(name, ids) if given else cat.review_candidates(name)
        if images.empty and (ids is None or name not in cat.datasets_in_catalog()):
            raise DsbuildError(f"dataset '{name}' is not in the catalog — run `dsbuild build {name}` first")
        history = cat.label_history(name, image_ids=ids)
        # A review app's decisions need only the flags' label_quality (recorded with each event).
        issues = None if given else cat.latest_issues(name, image_ids=ids)
        run = cat.latest_mislabel_run(name)
        run_row = cat.run_row(run) if run is not None else None
        run_at = (run_row or {}).get("started_at")
        if given and bulk_accept:
            people = person_decided(cat, name, ids)
            n_before = len(decisions)
            decisions = [d for d in decisions if str(d.image_id) not in people]
            if len(decisions) < n_before:
                skipped[PERSON_DECIDED_BULK] = n_before - len(decisions)
        if given:
            classes = dataset_classes(cat, ds)
            unknown = any(getattr(d, "new_label", None) not in (None, *classes) for d in decisions)
            chosen = check_decisions(decisions, labels=classes, former=former_classes(cat, ds, classes) if unknown else ())
            # A relabel to the label the image has is a keep, as in a decisions file (one rule: same_label_keep).
            label_now = dict(zip(images["image_id"].astype(str), images["label"].astype(str)))
            stacks = undo_stacks(history)
            chosen = [same_label_keep(d, label=label_now.get(d.image_id), stack=stacks.get(d.image_id, []),
                                      last_run_at=run_at) for d in chosen]
            same = [d for d in chosen if (d.note or "").startswith(SAME_LABEL_KEEP)]
            if same:
                notes.append(same_label_note(same, images, fix="press another class's key" if source == "ui"
                                             else "relabel it to another class"))
            source = source or "review:api"
        elif decisions is not None:
            if not Path(decisions).is_file():
                what = not_regular(decisions) if Path(decisions).exists() else None
                raise DsbuildError(f"decisions file {decisions} " + (f"is {what} — give the CSV file of decisions"
                                                                      if what else "does not exist"), exit_code=2)
            classes = dataset_classes(cat, ds)
            source = f"review:{Path(decisions).name}"
            chosen = parse_decisions(Path(decisions), images=images, labels=classes, history=history,
                                     last_run_at=run_at, former=former_classes(cat, ds, classes), source=source,
                                     source_dirs=source_dirs(ds, manifest))
            same = [d for d in chosen if (d.note or "").startswith(SAME_LABEL_KEEP)]
            if same:
                notes.append(same_label_note(same, images))
        else:
            last = cat.last_attempt(name, "mislabels")
            if last is not None and last["status"] == "refused":
                raise DsbuildError(
                    f"the latest mislabel run of '{name}' ({last['run_id']}) was refused: its out-of-fold model did "
                    "not learn the labels, so it has no suggestions to accept — fix the data or the model settings "
                    f"and run `dsbuild mislabels {name}` again")
            if issues.empty and run is None:
                raise DsbuildError(f"no mislabel run for '{name}' yet — run `dsbuild mislabels {name}` first")
            # A build since the run may have renamed, merged or split a class: a flag follows its picture to its
            # item now, a suggestion of a renamed class names it as it is called now (run_flags_now, as the app's
            # queue does).
            now = run_flags_now(cat, ds, run, flagged=[str(i) for i in issues["image_id"]])
            issues = now.apply(issues, dict(zip(images["image_id"].astype(str), images["label"].astype(str))))
            # A run that flagged nothing leaves nothing to accept: zero events, not an error. An image someone
            # decided about since the run started (keep, remove, relabel, undo) keeps that decision: the run's
            # suggestion predates it (an earlier accept counts too). A build's events (decisions carried to an
            # item's successor, a relabel following a renamed class) are not a decision: the one they carry is
            # on the old item, which the flag followed.
            if run_at is None or history.empty:
                since = set()
            else:
                recent = history[(history["changed_at"] >= run_at) & ~history["source"].astype(str).str.startswith("build:")]
                since = {now.moved.get(i, i) for i in recent["image_id"].astype(str)}
            # An image whose standing decision is a person's (a decisions file, the review app, or one a build carried
            # over from those) keeps it, however old: a suggestion is a machine's and does not overrule a person
            # (unless asked: overrule_people). Decisions since the run are skipped either way.
            people = set() if overrule_people else {
                now.moved.get(i, i) for i, d in standing_decisions(history).items() if d.by_person}
            chosen, reviewed = suggested_decisions(issues[issues["kind"] == "label"], min_confidence=min_confidence,
                                                   reviewed=since | people)
            by_person = [i for i in reviewed if i in people and i not in since]  # since the run: said so, as before
            reviewed = [i for i in reviewed if i not in by_person]
            # A build since the run may have rejected or failed a flagged image, or set it aside with its source
            # (its picture under no class now): nothing a person can fix here.
            from dsbuild.sources import SOURCE_REMOVED

            status = dict(zip(images["image_id"].astype(str), images["status"].astype(str)))
            reason = dict(zip(images["image_id"].astype(str), images["reason"]))
            out = [d for d in chosen if status.get(d.image_id) not in REVIEWABLE]
            chosen = [d for d in chosen if status.get(d.image_id) in REVIEWABLE]
            removed = [d for d in out if reason.get(d.image_id) == SOURCE_REMOVED]
            # A class removed or split since the run: its suggestions name a label `review --decisions` refuses.
            # Only those are skipped (RunFlagsNow.note says why the others still stand).
            labels = dataset_classes(cat, ds)
            dead = [d for d in chosen if d.new_label not in labels]
            chosen = [d for d in chosen if d.new_label in labels]
            unknown: dict[str, int] = {}
            for d in dead:
                label = str(d.new_label)
                why = (f"suggesting '{label}', which is no longer a class ({now.gone[label]}; labels of this dataset: "
                       f"{label_list(labels)})" if label in now.gone else
                       f"suggesting an unknown label '{label}' (labels of this dataset: {label_list(labels)})")
                unknown[why] = unknown.get(why, 0) + 1
            skipped.update({k: n for k, n in (
                (PERSON_DECIDED, len(by_person)),
                ("reviewed since the mislabel run", len(reviewed)),
                ("set aside by a build since the run (source removed), their picture under no class now", len(removed)),
                ("not ok or duplicate now", len(out) - len(removed)), *unknown.items()) if n})
            note = now.note("were skipped")
            if note:
                notes.append(note)
            source = f"review:suggestions@{min_confidence:g}"
            label_flags = issues[issues["kind"] == "label"]
            confident = label_flags["suggested_confidence"].astype("float64") >= float(min_confidence)
            left = (int((~confident).sum()), len(label_flags))
        quality = (cat.latest_label_quality(name, ids) if issues is None
                   else dict(zip(issues["image_id"], issues["label_quality"])))
        events = plan_events(chosen, current=images, history=history, source=source, at=utcnow(), last_run_at=run_at,
                             from_file=not given and decisions is not None)
        for ev in events:
            ev.setdefault("label_quality", quality.get(ev["image_id"]))
        # One event per decision, but an undo's companions (the undo of a build's follow-up of a class change, written
        # with the undo of the decision under it; that follow-up applied again) are no decision of their own.
        decided = [e for e in events if not e.get(COMPANION)]
        if not given and decisions is not None:
            # A file's undo rows that wrote nothing: each had undone its image's decision on an earlier run.
            again = sum(d.action == "undo" for d in chosen) - sum(e["action"] == "undo" for e in decided)
            if again:
                skipped[UNDO_AGAIN] = again
        cat.append_label_events(name, events)
        if accept_suggestions:
            caution = suggestions_caution(cat.run_row(run) if run else None, name, source,
                                          sum(e["action"] == "relabel" for e in decided))
            if caution:
                notes.append(caution)
        ghost = ghost_label_note(cat, ds, undone=[e for e in decided if e["action"] == "undo"])
        if ghost:
            notes.append(ghost)
        # A remove takes an image out of its duplicate group, an undo of it puts it back: regroup those groups
        # now, so that a copy of a removed representative is not left out of export and training until a build.
        regroup_reviewed(cat, ds, sorted({str(e["image_id"]) for e in events if e["action"] == "remove" or (
            e["action"] == "undo" and "rejected" in (e["old_status"], e["new_status"]))}))
        if on_commit is not None:
            on_commit(cat)
        return decided, len(chosen) - len(decided) - skipped.get(UNDO_AGAIN, 0), source

    if catalog is not None:
        events, already, source = apply(catalog)
    else:
        with _Writer(manifest, "dsbuild review") as w, w.open() as cat:
            events, already, source = apply(cat)
    by_action: dict[str, int] = {}
    for ev in events:
        by_action[ev["action"]] = by_action.get(ev["action"], 0) + 1
    return ReviewSummary(dataset=name, applied=len(events), by_action=by_action, source=source,
                         already_applied=already, skipped=skipped, notes=tuple(notes), left_for_people=left)


def source_dirs(ds: Dataset, manifest: Manifest) -> list[Path]:
    """The folders ``ds``'s sources give paths in — its labels CSV's folder (and ``labels_root``), its imagefolder,
    its class folders — then the manifest's folder: a decisions file's path is looked up in each."""
    dirs = [ds.labels_csv.parent] if ds.labels_csv is not None else []
    dirs += [d for d in (ds.labels_root, ds.imagefolder) if d is not None]
    dirs += [f for c in ds.classes for f in c.folders]
    return [*dirs, manifest.root]


def same_label_note(rows: "list", images: "pandas.DataFrame", *,
                    fix: str = "give another new_label and run the file again") -> str:
    """``review``'s line for relabels (:class:`~dsbuild.decisions.Decision`: a decisions file's rows, or a review app's
    keys) to the label their image already has, applied as keeps (:func:`dsbuild.decisions.same_label_keep`): which
    lines (a file's rows have them), which images, which labels; ``fix``: how to change the label instead."""
    from dsbuild.render.values import counted

    label = dict(zip(images["image_id"].astype(str), images["label"].astype(str)))
    shown = "; ".join(f"{'' if d.line is None else f'line {d.line}: '}image {d.image_id} has label "
                      f"'{label.get(d.image_id, '?')}'" for d in rows[:5])
    more = f"; … ({len(rows) - 5} more)" if len(rows) > 5 else ""
    one = len(rows) == 1
    return (f"{counted(len(rows), 'relabel' if rows[0].line is None else 'relabel row')} named the label "
            f"{'its image has' if one else 'their images have'} already ({shown}{more}): applied as "
            f"{'a keep' if one else 'keeps'}, which confirm{'s' if one else ''} the label — to change "
            f"{'it' if one else 'them'}, {fix}")


def ghost_labels(cat: Catalog, ds: Dataset, *, image_ids: "Iterable[str] | None" = None,
                 labels: "Iterable[str] | None" = None) -> list[tuple[str, str]]:
    """(image_id, label) of the accepted images of ``ds`` (among ``image_ids`` when given) whose label is no class
    of the dataset now (:func:`dataset_classes`): a relabel a build had followed when its class was merged or
    renamed, undone, gives the image back the label that is gone, and export and training would take it as a class
    of its own. ``labels``: the labels to look for (default: every label an image carries). The one definition
    behind the lines of ``review``, ``build`` and ``status`` (:func:`ghost_label_line`)."""
    known = set(dataset_classes(cat, ds))
    gone = sorted(set(cat.dataset_labels(ds.name) if labels is None else labels) - known)
    if not gone:
        return []
    return cat.accepted_under(ds.name, gone, image_ids=None if image_ids is None else sorted(set(image_ids)))


def ghost_label_line(dataset: str, ghosts: "list[tuple[str, str]]", *, undone: bool = False) -> str | None:
    """The line naming ``ghosts`` (:func:`ghost_labels`) and how to fix them, None if none: ``1 image undone to
    label 'two', …`` when ``undone`` (the review that wrote the undo), else ``1 accepted image has label 'two', …``
    (the build summary and ``status``, as long as any is left)."""
    from dsbuild.carryover import MAX_IDS
    from dsbuild.render.values import counted

    if not ghosts:
        return None
    gone = sorted({label for _, label in ghosts})
    labels = ", ".join(f"'{g}'" for g in gone)
    ids = [i for i, _ in ghosts]
    shown = ", ".join(ids[:MAX_IDS]) + (f", … ({len(ids) - MAX_IDS} more)" if len(ids) > MAX_IDS else "")
    n = len(ghosts)
    one = n == 1
    if undone:
        head = f"{counted(n, 'image')} undone to label {labels}, which is no longer a class of this dataset"
    else:
        which = "which is no longer a class" if len(gone) == 1 else "which are no longer classes"
        head = (f"{counted(n, 'accepted image')} {'has' if one else 'have'} label{'s' if len(gone) > 1 else ''} "
                f"{labels}, {which} of this dataset")
    # A user-facing query, in lower case (the catalog's own SQL is in capitals); a quote in a label is doubled.
    literals = [g.replace("'", "''") for g in gone]
    where = " or ".join(f"label = '{g}'" for g in literals)
    where = f"({where})" if len(gone) > 1 else where
    see = (f"`dsbuild query \"select image_id, label, origin from images where dataset = '{dataset}' and status = 'ok' "
           f"and {where}\"` lists {'it' if one else 'them'}")
    return (f"{head}: {shown} — export and training would take {'it' if one else 'them'} as a class of "
            f"{'its' if one else 'their'} own; relabel {'it' if one else 'them'} in a decisions CSV "
            f"(image_id,action,new_label: <id>,relabel,<class>) and run `dsbuild review {dataset} --decisions FILE`; "
            f"{see}")


def ghost_label_note(cat: Catalog, ds: Dataset, *, undone: "list[dict]") -> str | None:
    """``review``'s line for ``undone`` events (undo, as :func:`dsbuild.decisions.plan_events` writes them) that gave
    an accepted image back a label that is no longer a class (:func:`ghost_labels`), else None."""
    labels = {str(e["new_label"]) for e in undone if e.get("new_label") is not None}
    if not labels:
        return None
    ghosts = ghost_labels(cat, ds, image_ids=[str(e["image_id"]) for e in undone], labels=labels)
    return ghost_label_line(ds.name, ghosts, undone=True)


PERSON_DECIDED = ("whose standing decision is a person's (a decisions file or the review app, or carried over from one "
                  "by a build): a suggestion does not overrule a person — add --overrule-people to include them")
"""The skip reason of ``review --accept-suggestions`` for images whose standing decision is a person's."""

PERSON_DECIDED_BULK = ("whose standing decision is a person's: accepting the suggestions of a selection does not "
                       "overrule a person — focus one of them and press Enter to change it")
"""The skip reason of the review app's bulk accept (grid selection + Enter) for images a person decided."""


def person_decided(cat: Catalog, name: str, ids: "Iterable[str] | None") -> set[str]:
    """The images among ``ids`` (all when None) whose standing decision is a person's
    (:func:`dsbuild.decisions.standing_decisions`), reading the history of the items a build carried it from too."""
    import pandas as pd

    from dsbuild.decisions import CARRIED_NOTE, standing_decisions

    if ids is None:
        history = cat.label_history(name)
    else:
        ids = sorted(set(map(str, ids)))
        history = cat.label_history(name, image_ids=ids)
        loaded = set(ids)
        for _ in range(20):  # a class renamed twice: the carry-over of a carry-over
            notes = history.loc[history["source"].astype(str).str.startswith("build:"), "note"].dropna().astype(str)
            olds = {m.group(1) for m in map(CARRIED_NOTE.match, notes) if m} - loaded
            if not olds:
                break
            loaded |= olds
            history = pd.concat([history, cat.label_history(name, image_ids=sorted(olds))], ignore_index=True)
    wanted = None if ids is None else set(ids)
    return {i for i, d in standing_decisions(history).items() if d.by_person and (wanted is None or i in wanted)}


UNDO_AGAIN = ("whose undo this file applied on an earlier run (an undo row applies once per file; to undo further, "
              "use another file or u in the review app)")
"""The skip reason of a decisions file's undo row run again (:func:`dsbuild.decisions.plan_events`, ``from_file``)."""


@dataclass(frozen=True)
class RunFlagsNow:
    """How the flags of mislabel run ``run_id`` read against dataset ``dataset`` today (:func:`run_flags_now`): a build
    since the run may have renamed, merged, split or removed a class (an ``imagefolder``'s folder, a manifest's
    class), which sets the old items aside and gives their pictures new items.

    ``moved``: flagged image_id set aside since → the item its picture is now (the carry-over's pairing);
    ``follow``: a class the run scored that is gone → the one class its pictures went to (renamed, merged into):
    a suggestion of it means that class now, as a relabel to it follows the rename
    (:func:`dsbuild.carryover.follow_classes`); ``gone``: a class the run scored that is gone with no one
    successor (removed, or split: which part is not guessed) → why, in words: a suggestion of it cannot be
    taken; ``scored``: the run's classes; ``classes``: the dataset's now (:func:`dataset_classes`).
    """

    dataset: str
    run_id: str | None
    moved: dict[str, str] = dataclasses.field(default_factory=dict)
    follow: dict[str, str] = dataclasses.field(default_factory=dict)
    gone: dict[str, str] = dataclasses.field(default_factory=dict)
    scored: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    changes: dict[str, str] = dataclasses.field(default_factory=dict)

    def apply(self, flags, current: dict[str, str] | None = None):
        """A copy of ``flags`` (``label_issues`` rows of the run) as they read today: ``image_id`` of a moved
        picture is its item now, ``given_label`` and ``suggested_label`` of a followed class its successor
        (``scored_suggestion`` keeps what the run said); with ``current`` (image_id → label now), the moved
        rows' ``current_label`` is that of their new item."""
        out = flags.copy()
        if "suggested_label" in out:
            out["scored_suggestion"] = out["suggested_label"]
        if out.empty:
            return out
        if self.moved:
            moved = out["image_id"].isin(set(self.moved))
            out.loc[moved, "image_id"] = out.loc[moved, "image_id"].map(self.moved)
            if current is not None and "current_label" in out:
                out.loc[moved, "current_label"] = out.loc[moved, "image_id"].map(current)
        for col in ("given_label", "suggested_label"):
            if self.follow and col in out:
                out[col] = out[col].map(lambda v: self.follow.get(v, v) if isinstance(v, str) else v)
        return out

    def note(self, skipped: str = "cannot be accepted") -> str | None:
        """What to tell people when the run scored other classes than the dataset has now; else None. Its
        suggestions of a renamed or merged class follow it (the probability that a picture is a ``dog`` does not
        change when the folder is called ``hound``: refusing them would make a rename cost a full mislabel run);
        those of a class removed or split ``skipped`` (the CLI: "were skipped"); a new class it never suggested."""
        if not self.scored or set(self.scored) == set(self.classes):
            return None
        parts = []
        if self.follow:
            parts.append("its suggestions of " + ", ".join(
                f"'{old}' name '{new}' now ({self.changes[old]})" for old, new in sorted(self.follow.items())))
        if self.gone:
            names = ", ".join(f"'{old}' ({why})" for old, why in sorted(self.gone.items()))
            parts.append(f"its suggestions of {names} {skipped}")
        unseen = [c for c in self.classes if c not in self.scored and c not in self.follow.values()]
        if unseen:
            parts.append("it never suggested " + ", ".join(f"'{c}'" for c in unseen))
        change = class_set_change(list(self.scored), list(self.classes))
        return (f"the latest mislabel run of '{self.dataset}' ({self.run_id}) scored the classes "
                f"{', '.join(self.scored)}; the dataset's classes are {', '.join(self.classes)} now ({change})"
                + (f" — {'; '.join(parts)}" if parts else "")
                + f": run `dsbuild mislabels {self.dataset}` again to score the current classes")


def run_flags_now(cat: Catalog, ds: Dataset, run_id: str | None, *, flagged: list[str] | None = None) -> RunFlagsNow:
    """How mislabel run ``run_id``'s flags read against dataset ``ds`` today (:class:`RunFlagsNow`): the one mapping
    the review app's queue and ``review --accept-suggestions`` apply. ``flagged``: the run's flagged image ids
    (read from the catalog when not given). Pictures are followed by the pairing of a build's carry-over
    (:func:`dsbuild.carryover.successors_now`: same content, same origin or the file moved)."""
    from dsbuild.carryover import successors_now

    classes = tuple(dataset_classes(cat, ds))
    row = cat.run_row(run_id) if run_id is not None else None
    if row is None:
        return RunFlagsNow(ds.name, run_id, classes=classes)
    conf = row.get("confusion")
    scored = tuple(str(c) for c in json.loads(conf).get("classes", [])) if isinstance(conf, str) and conf else ()
    lost = [c for c in scored if c not in classes]
    if flagged is None:
        flagged = [str(i) for i in cat.run_issues(run_id)["image_id"]]
    pairs = successors_now(cat, ds, flagged, lost)
    moved = {str(o): str(n) for o, n in zip(pairs["old_id"], pairs["image_id"])}
    went: dict[str, set[str]] = {}
    for old, new in zip(pairs["old_label"], pairs["class_label"]):
        if old in lost and new in classes:
            went.setdefault(str(old), set()).add(str(new))
    follow, gone, changes = {}, {}, {}
    for old in lost:
        to = sorted(went.get(old, ()))
        if len(to) == 1:
            follow[old] = to[0]
            changes[old] = (f"class '{old}' merged into '{to[0]}'" if to[0] in scored
                            else f"class '{old}' renamed '{to[0]}'")
        elif to:
            parts = ", ".join(f"'{t}'" for t in to)
            gone[old] = f"class '{old}' split into {parts}"
        else:
            gone[old] = f"class '{old}' removed"
    return RunFlagsNow(ds.name, run_id, moved=moved, follow=follow, gone=gone, scored=scored, classes=classes,
                       changes=changes)


def class_key_order(cat: Catalog, ds: Dataset, now: RunFlagsNow) -> tuple[tuple[str, ...], dict[str, str]]:
    """The order the review app deals its class keys in, and the classes gone since that order was set that a
    class of today succeeds (renamed, or merged into it): ``scored`` and ``follow`` of
    :func:`dsbuild.ui.app.class_keys`. Keys must not move while a person reviews, and a rename must not move them.

    * Manifest classes (no ``imagefolder``, no labels CSV): ``((), {})`` — the manifest's order, which a class
      renamed on its line keeps.
    * Folder or labels-CSV classes (listed by name, so a rename would move the keys of the classes after it), with a
      mislabel run (``now``, :func:`run_flags_now`): the run's classes and its renames — each run deals them again.
    * The same before any mislabel run: the classes in the order the catalog first saw them — the first build's by
      name, then each later build's new ones by name (``first_build`` of :meth:`Catalog.class_history`) — so what
      the user first saw stays. A class whose items are all set aside since (its folder renamed, merged, removed)
      keeps its place, and its successor (found as a run's are: :func:`dsbuild.carryover.successors_now`) takes
      it; the successor's own later place is dropped when it first came in the build that set the old class aside
      or after (a rename, or a rename of a rename: ``seven`` → ``7`` → ``sept`` keeps ``seven``'s key), not when it
      was a class before (a merge into an existing class: that class keeps its own key, the merged one's is left
      unused). Classes no item has come under (a manifest class beside the folders, still empty) come last.
    """
    if ds.imagefolder is None and ds.labels_csv is None:
        return (), {}
    if now.run_id is not None and now.scored:
        return now.scored, now.follow
    from dsbuild.carryover import successors_now
    from dsbuild.sources import SOURCE_REMOVED

    classes = set(now.classes)
    hist = cat.class_history(ds.name, set_aside=SOURCE_REMOVED)
    first = {str(c): int(b) for c, b in zip(hist["class_label"], hist["first_build"])}
    aside = hist[hist["gone_build"].notna()]
    gone = {str(c): int(b) for c, b in zip(aside["class_label"], aside["gone_build"]) if str(c) not in classes}
    follow: dict[str, str] = {}
    if gone:
        pairs = successors_now(cat, ds, [], list(gone))
        went: dict[str, set[str]] = {}
        for old, new in zip(pairs["old_label"], pairs["class_label"]):
            if old in gone and new in classes:
                went.setdefault(str(old), set()).add(str(new))
        follow = {old: next(iter(to)) for old, to in went.items() if len(to) == 1}
    order: list[str] = []
    for c in first:
        to = follow.get(c, c)  # where its pictures are today
        if any(p in gone and follow.get(p) == to and first[c] >= gone[p] for p in order):
            continue  # a later name of a class already placed
        order.append(c)
    return tuple(order), follow


# --------------------------------------------------------------------------- retrain + compare


@dataclass(frozen=True)
class Comparison:
    """Before/after on the same valid images with their current labels, none of which either model trained on.

    ``n_valid``: the images compared; ``n_current_valid``: today's valid split (accepted images);
    ``left_out``: why the others were left out (None when none were); ``refused``: why no image could be
    compared (then ``n_valid`` is 0, the errors are None and ``per_class`` is empty).
    ``per_class``: one dict per label: label, n, before_acc, after_acc (fractions 0..1).
    ``classes_differ``: the two models' classes when they are not the same set (a class renamed, merged,
    split, added or removed between the runs), else None.
    ``better`` / ``worse``: compared images the new model gets right and the old one wrong / the other way
    (against the current labels); ``p_value``: the exact McNemar p of that difference (:func:`dsbuild.stats.mcnemar_exact`);
    per class, ``better``, ``worse`` and ``p_value`` too. The labels themselves: ``n_suggested`` compared images
    whose label stands from an accepted suggestion (a model wrote it, no person: :func:`dsbuild.decisions.standing_decisions`);
    ``n_flagged``: compared images the latest mislabel run flags as label issues and nobody has reviewed.
    """

    before_run: str
    after_run: str
    n_valid: int
    before_error: float | None
    after_error: float | None
    per_class: list[dict]
    n_current_valid: int = 0
    left_out: str | None = None
    refused: str | None = None
    classes_differ: str | None = None
    classes_followed: str | None = None
    """How the earlier run's classes renamed or merged since read (``run … 's predictions of 'dog' count as 'hound'
    (class 'dog' renamed 'hound')``), else None."""
    better: int = 0
    worse: int = 0
    p_value: float | None = None
    n_suggested: int = 0
    n_flagged: int = 0
    c_changed: tuple[float, float] | None = None
    """``(before, after)``: the head's L2 setting ``C`` of each run when they differ (each run chooses it by inner
    cross-validation on its own labels, :func:`dsbuild.model.head.choose_c`), else None — trial 11: a review's
    cleaner labels took C 0.005 → 0.02, and the before/after mixes the labels' effect with that choice."""


def _head_c(row) -> float | None:
    """The ``C`` a run's params record (a head run), else None."""
    try:
        c = json.loads(row["params"] or "{}").get("C") if row is not None else None
    except (TypeError, ValueError):
        return None
    return float(c) if isinstance(c, (int, float)) else None


def retrain_dataset(manifest: Manifest, name: str, *, progress=None) -> tuple[RunReport, Comparison | None]:
    """Train again with the same settings on the current labels; compare with the previous run.

    Refused when there is no earlier train/retrain run with a model: there would be nothing to compare with.
    The comparison (:func:`compare_runs`) may itself be refused (``Comparison.refused``) while the
    retrain run stands.
    """
    manifest.dataset(name)
    prev = last_run(manifest, name) if manifest_catalog_exists(manifest) else None
    if prev is None or not prev["model_path"]:
        if not manifest_catalog_exists(manifest):
            raise DsbuildError(f"no catalog at {manifest.catalog} — run `dsbuild build` first")
        raise DsbuildError(f"no earlier run of '{name}' to compare with — run `dsbuild train {name}` first "
                           "(retrain trains again on the reviewed labels and compares with the last run)")
    report = train_dataset(manifest, name, kind="retrain", parent_run=prev["run_id"], progress=progress)
    return report, compare_runs(manifest, name, prev, report)


def compare_runs(manifest: Manifest, name: str, prev, report: RunReport) -> Comparison:
    """Both models on today's valid images that neither trained on, with their current labels.

    ``prev``: the earlier run's row (``model_runs`` columns; a pandas Series or dict). A valid image is left
    out when the earlier run trained on it (``build --resplit`` moved it from train to valid), or on a copy of
    it (same content or duplicate group), or — for a run recorded before runs kept their training images
    (schema 6) — when it was not in that run's valid split: only those are known to be unseen. Labels are
    the current ones on purpose (a review between the runs is what retrain measures); removed images are no
    longer valid images at all. When the two models have different classes (a class renamed, merged or
    split in between), an image whose current label one of them does not have is left out too: that model
    could never be right on it (``pony`` is a fake 0 % → 92 % for a model that knew it as ``horse``) — unless
    the class was renamed or merged into one class (:func:`run_flags_now`'s ``follow``, the carry-over's pairing):
    then the earlier model's predictions of it count as that class, and ``left_out`` says so.
    """
    with Catalog.open_readonly(manifest.catalog) as cat:
        valid = cat.valid_images(name)
        after_row = cat.run_row(report.run_id)
        seen_before, why = _seen_by(cat, name, prev, valid)
        seen_after = _seen_by(cat, name, after_row, valid)[0] if after_row is not None else None
        # a class of the earlier run renamed or merged since: its predictions of it read as the class it is now
        now = run_flags_now(cat, manifest.dataset(name), str(prev["run_id"]), flagged=[])
    before_run, after_run, n_current = str(prev["run_id"]), report.run_id, len(valid)
    if seen_before is None:
        return Comparison(before_run, after_run, 0, None, None, [], n_current_valid=n_current,
                          refused=f"not compared with run {before_run}: {why}")
    seen = seen_before | (seen_after or set())
    left = [i for i in valid["image_id"] if i in seen]
    kept = valid[~valid["image_id"].isin(seen)].reset_index(drop=True)
    n_before = sum(i in seen_before for i in left)
    parts = [f"{n_before} of {n_current} valid images {why}"] if n_before else []
    if n_before < len(left):  # a build between the new run's training and this comparison moved the split
        parts.append(f"{len(left) - n_before} of {n_current} valid images were in the new run's training set "
                     "(a build changed the split during the retrain)")
    follow = now.follow
    before_classes = list(dict.fromkeys(follow.get(c, c) for c in _model_classes(Path(prev["model_path"]).parent, prev)))
    after_classes = [str(c) for c in report.result.classes]
    followed = "; ".join(f"run {before_run}'s predictions of '{old}' count as '{new}' "
                         f"({now.changes.get(old, f'class {old!r} now {new!r}')})"
                         for old, new in sorted(follow.items())) or None
    differ = None
    n_unseen = len(kept)
    if before_classes and set(before_classes) != set(after_classes):  # no classes known: nothing to tell
        differ = (f"the class sets differ: run {before_run} has {', '.join(before_classes)}; run {after_run} has "
                  f"{', '.join(after_classes)}")
        for run_id, classes in ((before_run, before_classes), (after_run, after_classes)):
            unknown = ~kept["label"].isin(classes)
            if unknown.any():
                names = ", ".join(sorted(set(kept.loc[unknown, "label"].astype(str))))
                parts.append(f"{int(unknown.sum())} of {n_current} valid images are labelled {names}, which run "
                             f"{run_id} cannot predict")
                kept = kept[~unknown].reset_index(drop=True)
    left_out = "; ".join(parts) or None
    if kept.empty:
        nothing = ("no valid image is unseen by both models" if len(kept) == n_unseen
                   else "no valid image is left that both models can predict and neither trained on")
        refused = (f"not compared with run {before_run}: {differ + '; ' if differ else ''}"
                   f"{left_out or 'there are no valid images'}, so {nothing} — the next `dsbuild retrain {name}` "
                   "compares with this run on today's split")
        return Comparison(before_run, after_run, 0, None, None, [], n_current_valid=n_current, left_out=left_out,
                          refused=refused, classes_differ=differ, classes_followed=followed)
    if left_out:
        left_out += f": compared on the other {len(kept)}"
    before = _valid_labels(manifest, Path(prev["model_path"]).parent, kept)
    kept = kept.assign(before=[follow.get(str(c), c) for c in before] if follow else before,
                       after=_valid_labels(manifest, Path(report.result.model_path).parent, kept))
    from dsbuild.stats import mcnemar_exact

    def changed(df) -> tuple[int, int, float]:
        was, now = df["before"] == df["label"], df["after"] == df["label"]
        better, worse = int((now & ~was).sum()), int((was & ~now).sum())
        return better, worse, mcnemar_exact(worse, better)

    per_class = []
    for label, grp in kept.groupby("label"):
        b, w, p = changed(grp)
        per_class.append({"label": label, "n": len(grp), "before_acc": float((grp["before"] == label).mean()),
                          "after_acc": float((grp["after"] == label).mean()), "better": b, "worse": w, "p_value": p})
    better, worse, p = changed(kept)
    n_suggested, n_flagged = _label_sources(manifest, name, set(kept["image_id"].astype(str)))
    c_before, c_after = _head_c(prev), _head_c(after_row)
    return Comparison(
        before_run=before_run, after_run=after_run, n_valid=len(kept),
        before_error=float((kept["before"] != kept["label"]).mean()),
        after_error=float((kept["after"] != kept["label"]).mean()), per_class=per_class,
        n_current_valid=n_current, left_out=left_out, classes_differ=differ, classes_followed=followed,
        better=better, worse=worse, p_value=p, n_suggested=n_suggested, n_flagged=n_flagged,
        c_changed=(c_before, c_after) if None not in (c_before, c_after) and c_before != c_after else None,
    )


def _label_sources(manifest: Manifest, name: str, ids: set[str]) -> tuple[int, int]:
    """Of the images ``ids``: how many have a label that stands from an accepted suggestion (a model's relabel, no
    person's decision since), and how many the latest mislabel run flags as label issues with no decision standing."""
    from dsbuild.decisions import standing_decisions

    with Catalog.open_readonly(manifest.catalog) as cat:
        standing = standing_decisions(cat.label_history(name))
        flags = cat.latest_issues(name, image_ids=sorted(ids))
    suggested = sum(1 for i in ids if i in standing and not standing[i].by_person and standing[i].action == "relabel")
    flagged = set(flags.loc[flags["kind"] == "label", "image_id"].astype(str)) if not flags.empty else set()
    return suggested, len({i for i in flagged if i not in standing})


def _model_classes(model_dir: Path, run) -> list[str]:
    """The classes a run's model can predict: its ``model.json`` (else the run's recorded confusion matrix)."""
    try:
        return [str(c) for c in json.loads((model_dir / "model.json").read_text())["classes"]]
    except (OSError, ValueError, KeyError):
        conf = run.get("confusion") if hasattr(run, "get") else None
        return [str(c) for c in json.loads(conf)["classes"]] if isinstance(conf, str) and conf else []


def _ids(value) -> list[str] | None:
    """A run's recorded image ids (a JSON list in ``model_runs``), or None when the run has no such record."""
    if value is None or (isinstance(value, float) and value != value):  # NULL (pandas reads it as NaN or None)
        return None
    return [str(i) for i in (json.loads(value) if isinstance(value, str) else value)]


def _seen_by(cat: Catalog, name: str, run, valid) -> tuple[set[str] | None, str]:
    """The ids among ``valid`` that ``run`` may have learned from, and the reason to tell people.

    With the run's ``train_ids``: those images and any valid image sharing their content (sha256) or duplicate
    group. Without (a run recorded before schema 6): every valid image not in the run's ``valid_ids``.
    ``(None, why)`` when the run recorded neither: nothing is known to be unseen.
    """
    run_id = run["run_id"]
    train_ids = _ids(run.get("train_ids"))
    if train_ids is not None:
        copies = cat.image_copies(name, train_ids)
        shas = set(copies["sha256"].dropna())
        groups = set(copies["dup_group"].dropna())
        ids = set(train_ids)
        seen = {i for i, sha, group in zip(valid["image_id"], valid["sha256"], valid["dup_group"])
                if i in ids or sha in shas or (group is not None and group == group and group in groups)}
        return seen, "were in the previous run's training set (the split changed since)"
    valid_ids = _ids(run.get("valid_ids"))
    if valid_ids is None:
        return None, (f"run {run_id} recorded neither the images it trained on nor its valid split, so no valid image "
                      "is known to be unseen by it")
    was_valid = set(valid_ids)
    return ({i for i in valid["image_id"] if i not in was_valid},
            f"were not in the valid split of the previous run, which predates the record of training images "
            "(it may have trained on them)")


def _valid_labels(manifest: Manifest, model_dir: Path, valid) -> "Any":
    """The model's labels for the ``valid`` images: from the feature cache for a head model (no backbone pass:
    :func:`dsbuild.model.predict.head_probs_from_cache`), else by :func:`dsbuild.model.predict.predict`."""
    import numpy as np

    from dsbuild.model.features import feature_keys
    from dsbuild.model.predict import head_probs_from_cache, predict

    paths = [Path(p) for p in valid["path"]]
    keys = feature_keys(valid)
    if keys is not None:
        probs = head_probs_from_cache(model_dir, paths, keys, features_dir(manifest))
        if probs is not None:
            classes = json.loads((model_dir / "model.json").read_text())["classes"]
            return np.asarray(classes, dtype=object)[probs.argmax(1)]
    return predict(model_dir, paths)["label"].to_numpy()


# --------------------------------------------------------------------------- predict


@dataclass(frozen=True)
class Predictions:
    """What ``predict`` answered and with which model: ``run_id`` / ``kind`` of the run whose model it used."""

    run_id: str
    kind: str
    frame: object  # pandas DataFrame, see predict_images
    note: str | None = None  # a warning for people: the model knows other classes than the dataset has now
    warning: str | None = None  # a warning for people: the model did not learn (:func:`did_not_learn_note`)


def predict_images(manifest: Manifest, name: str, inputs: list[str], *, top: int | None = None,
                   run_id: str | None = None) -> Predictions:
    """Label + probability for images (files or folders) with the latest trained model of ``name``, or the model of
    train/retrain run ``run_id`` (DsbuildError, exit 2, naming the dataset's runs with a model when it is none of them).

    ``frame``: one row per image — ``run_id``, ``path``, ``label`` (best class), ``probability``,
    ``error`` and ``prob_<class>`` per class (:func:`dsbuild.model.predict.predict`); with ``top=K``,
    the K best classes per image instead (the fastai book's top-5): ``run_id``, ``path``, ``rank``
    (1 = best), ``label``, ``probability``, plus ``error`` when an image could not be read.
    """
    from dsbuild.model.predict import folder_entries, predict

    manifest.dataset(name)
    if top is not None and top < 1:
        raise DsbuildError(f"--top must be 1 or more, not {top}", exit_code=2)
    run = last_run(manifest, name) if run_id is None else model_run(manifest, name, run_id)
    if run is None or not run["model_path"]:
        raise DsbuildError(f"no trained model for '{name}' — run `dsbuild train {name}` first")
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            # Every file, whatever its name: the content decides (an EPS named .jpg gets an error row, a JPEG
            # without a suffix is predicted; a named pipe or a device, "not a regular file"); hidden files and
            # folders are skipped, as a build skips them.
            paths.extend(folder_entries(p))
        elif p.exists():
            paths.append(p)  # a file; a named pipe or a device gets its error row, "not a regular file"
        else:
            raise DsbuildError(f"{item} does not exist", exit_code=2)
    # One row per file however often it was given (a folder and a file in it, a folder twice, `dir` and `dir/`).
    seen: set[str] = set()
    paths = [p for p in paths if not (os.path.abspath(p) in seen or seen.add(os.path.abspath(p)))]
    if not paths:
        raise DsbuildError("no images to predict — give image files or folders with images", exit_code=2)
    out = predict(Path(run["model_path"]).parent, paths, verify=manifest.dataset(name).verify)
    out.insert(0, "run_id", run["run_id"])
    with Catalog.open_readonly(manifest.catalog) as cat:
        classes = dataset_classes(cat, manifest.dataset(name))
    note = model_classes_note(name, str(run["run_id"]), [c[len("prob_"):] for c in out.columns if c.startswith("prob_")],
                              classes)
    if top is not None:
        out = _top_k(out, top)
    return Predictions(run_id=str(run["run_id"]), kind=str(run["kind"]), frame=out, note=note,
                       warning=did_not_learn_note(name, run))


def did_not_learn_note(name: str, run) -> str | None:
    """The warning for predictions made with the model of train/retrain run ``run`` (a ``model_runs`` row: a pandas
    Series or dict) when ``train`` found that it did not learn: the verdict ``train`` recorded in the run's params
    (``learn_check``, :func:`dsbuild.model.trust.learn_check` on the valid split — the test that makes ``train``
    exit 3 and ``mislabels`` refuse). None when it learned, when the valid split was too small to tell, and for a
    run recorded before the verdict was kept. The run stays ``ok``: its model exists, and a user may want to see
    what it answers."""
    from dsbuild.model.trust import LearnCheck

    params = run.get("params") if hasattr(run, "get") else None
    try:
        check = json.loads(params).get("learn_check") if isinstance(params, str) and params else None
        verdict = LearnCheck(**check) if isinstance(check, dict) else None
    except (ValueError, TypeError):
        return None
    if verdict is None or verdict.learned or not verdict.conclusive:
        return None
    return (f"the model of run {run['run_id']} did not learn, so its answers are no better than guessing: "
            f"{verdict.message('valid')}; then run `dsbuild train {name}` again")


def saved_model_classes(model_path: "str | Path") -> list[str]:
    """The classes a saved model answers with (``model.json`` beside ``model_path``), or [] when unreadable."""
    try:
        return [str(c) for c in json.loads((Path(model_path).parent / "model.json").read_text())["classes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def class_set_change(before: list[str], now: list[str]) -> str:
    """The classes of ``before`` that ``now`` lacks and those it adds, in words: ``gone: a, b; new: c``."""
    gone = [c for c in before if c not in now]
    new = [c for c in now if c not in before]
    return "; ".join(part for part in (f"gone: {', '.join(gone)}" if gone else "",
                                       f"new: {', '.join(new)}" if new else "") if part)


def model_classes_note(name: str, run_id: str, model_classes: list[str], classes: list[str]) -> str | None:
    """A warning when the model of run ``run_id`` was trained on other classes than dataset ``name`` has now
    (``classes``: :func:`dataset_classes`), else None: its answers may name a class that is gone and never name a
    new one (a class renamed, merged or removed since, in the manifest or as a class folder)."""
    if not classes or not model_classes or set(model_classes) == set(classes):
        return None
    change = class_set_change(model_classes, classes)
    return (f"the model of run {run_id} was trained on the classes {', '.join(model_classes)}; the dataset's classes "
            f"are {', '.join(classes)} now ({change}) — its answers may name a class the dataset no longer has and "
            f"never name a new one: run `dsbuild train {name}` to train on the current classes")


def _top_k(frame, k: int):
    """The ``k`` most probable classes of each image, best first (long format)."""
    import pandas as pd

    classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    rows = []
    for r in frame.to_dict("records"):
        if isinstance(r.get("error"), str):  # None when the image was read (NaN would be truthy)
            rows.append({"run_id": r["run_id"], "path": r["path"], "rank": None, "label": None, "probability": None,
                         "error": r["error"]})
            continue
        ranked = sorted(classes, key=lambda c: (-float(r[f"prob_{c}"]), c))[:k]
        rows += [{"run_id": r["run_id"], "path": r["path"], "rank": i + 1, "label": c,
                  "probability": float(r[f"prob_{c}"]), "error": None} for i, c in enumerate(ranked)]
    out = pd.DataFrame(rows, columns=["run_id", "path", "rank", "label", "probability", "error"])
    out["rank"] = out["rank"].astype("Int64")
    return out if out["error"].notna().any() else out.drop(columns="error")
