"""Find likely mislabeled images: out-of-sample probabilities from fine-tuned fastai models + cleanlab.

cleanlab's confident learning needs *out-of-sample* predicted probabilities: a model
that trained on an image's label has memorised it, so in-sample scores (the seeds'
``plot_top_losses``) hide exactly the mistakes we look for. :func:`out_of_fold_probs`
scores every labelled image with models that never trained on its label, and records
which labels each scoring model used, so the guarantee can be checked
(:meth:`OOFResult.check_out_of_sample`).

Strategies (``ModelSettings.oof_method``):

``crossfit`` (default)
    Split the images into G stratified groups (``oof_groups``, default 2: halves A and B).
    Fine-tune the fastai model on the other groups' labels (A); its body now knows the
    domain but has never seen a label of B. Score B: stratified K-fold *within* B, each
    fold by a logistic-regression head fitted on the fine-tuned features of B's other
    folds. Then the same for every group. An image in B fold k is scored by a model whose
    labels were A ∪ (B − fold k): never its own. Cost ≈ G−1 fine-tunings of the whole
    set per round.
``kfold``
    Fine-tune one fastai model per stratified fold on the other K−1 folds; score the fold.
    The textbook recipe; cost ≈ K−1 fine-tunings.
``frozen``
    Logistic-regression heads per fold on ImageNet features of the pretrained body (no
    fine-tuning). Cheap, and weak when the images look nothing like ImageNet.

:func:`find_label_issues` then runs ``cleanlab.filter.find_label_issues`` and
``cleanlab.rank.get_label_quality_scores`` on those probabilities, adds cleanlab's
out-of-distribution score, suggests the best out-of-sample class, and honours earlier
``keep`` reviews.

Rounds (``ModelSettings.oof_rounds``, default 2): round 2 scores again with the images
round 1 flagged left out of every training set (cleaner labels → more accurate scoring
models). The images to leave out were chosen from round-1 scores, which other models
produced; no round-2 model trains on the label of an image it scores.

Heavy imports (torch, fastai, sklearn, cleanlab) happen inside functions.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from dsbuild.errors import DsbuildError
from dsbuild.train import ImageLoader, ModelSettings, _progress


@dataclass(frozen=True, kw_only=True)
class OOFResult:
    """Out-of-sample predicted probabilities for every labelled image.

    image_ids / labels: the images (input order) and the labels they were scored against.
    classes: column order of ``probs``.
    probs: ``n × len(classes)`` float array; row i comes from a model that never saw image i's label.
    fold: ``n`` ints: the scoring unit (model) that produced row i.
    trained_on: per scoring unit, the image_ids whose labels that unit's model used
        (fine-tuned body and head together).
    method: the strategy (``crossfit``, ``kfold``, ``frozen``).
    fold_accuracy: per scoring unit, accuracy of its predictions against the given labels.
    duration_s: wall time.
    """

    image_ids: tuple[str, ...]
    labels: tuple[str, ...]
    classes: tuple[str, ...]
    probs: Any = field(repr=False)
    fold: Any = field(repr=False)
    trained_on: tuple[frozenset[str], ...] = field(repr=False)
    method: str
    fold_accuracy: tuple[float, ...]
    duration_s: float

    def check_out_of_sample(self) -> int:
        """Number of images scored by a model that trained on their label (0 when the guarantee holds)."""
        return sum(1 for image_id, unit in zip(self.image_ids, self.fold) if image_id in self.trained_on[int(unit)])

    def label_index(self) -> Any:
        """Given labels as integer class indices (numpy int64)."""
        import numpy as np

        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)


# --------------------------------------------------------------------------- out-of-fold probabilities


def out_of_fold_probs(df: Any, settings: ModelSettings, *, progress: Any = None) -> OOFResult:
    """Out-of-sample probabilities for every row of ``df`` (all splits: a wrong label hurts anywhere).

    ``df``: columns ``image_id``, ``path``, ``label`` (``split`` is ignored). Each class
    needs at least ``settings.folds`` images (``oof_groups × folds`` for ``crossfit``). Runs
    ``settings.oof_rounds`` rounds: round 2 repeats round 1 with the images that round 1
    flagged (cleanlab, ``prune_by_noise_rate``) left out of every *training* set, so the
    scoring models learn from cleaner labels; every image is still scored, and never by a
    model that trained on its label. Returns an :class:`OOFResult` whose ``probs`` rows
    follow ``df``'s row order; ``trained_on`` lists the labels the final round's models
    actually trained on (read back from their DataLoaders and head fits).
    """
    import numpy as np

    t0 = time.perf_counter()
    for col in ("image_id", "path", "label"):
        if col not in df.columns:
            raise DsbuildError(f"mislabel scoring needs column {col} — pass image_id, path, label")
    frame = df[["image_id", "path", "label"]].reset_index(drop=True).copy()
    frame["image_id"] = frame["image_id"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame["path"] = frame["path"].astype(str)
    if frame["image_id"].duplicated().any():
        raise DsbuildError("duplicate image_id values in the mislabel table — each image must appear once")
    classes = tuple(sorted(frame["label"].unique()))
    if len(classes) < 2:
        raise DsbuildError("mislabel scoring needs at least two labels")
    need = settings.folds * (settings.oof_groups if settings.oof_method == "crossfit" else 1)
    counts = frame["label"].value_counts()
    small = counts[counts < need]
    if len(small):
        listing = ", ".join(f"{k} ({v})" for k, v in sorted(small.items()))
        raise DsbuildError(
            f"too few images to score out of fold with {settings.oof_method} and folds = {settings.folds}: {listing} "
            f"— each class needs at least {need}; lower model.folds or add images"
        )
    y = np.array([classes.index(v) for v in frame["label"]], dtype=np.int64)
    loader = ImageLoader(settings.size, cache=True)
    runner = {"crossfit": _crossfit, "kfold": _kfold, "frozen": _frozen}[settings.oof_method]
    rounds = 1 if settings.oof_method == "frozen" else settings.oof_rounds
    exclude = np.zeros(len(frame), dtype=bool)
    for r in range(rounds):
        tag = f" (round {r + 1}/{rounds})" if rounds > 1 else ""
        probs, unit, trained_on = runner(frame, y, classes, settings, loader, _progress(progress), exclude, tag)
        if r + 1 < rounds:
            exclude = _flags(y, probs)
    ids = frame["image_id"].tolist()
    acc = tuple(float((probs[unit == u].argmax(1) == y[unit == u]).mean()) for u in range(len(trained_on)))
    return OOFResult(
        image_ids=tuple(ids), labels=tuple(frame["label"]), classes=classes, probs=probs.astype(np.float32),
        fold=unit.astype(np.int64), trained_on=tuple(frozenset(t) for t in trained_on),
        method=settings.oof_method, fold_accuracy=acc, duration_s=round(time.perf_counter() - t0, 3),
    )


def _flags(y: Any, probs: Any) -> Any:
    """cleanlab's issue mask (recall-leaning ``prune_by_noise_rate``): what round 2 leaves out of training."""
    import numpy as np
    from cleanlab.filter import find_label_issues as cl_find

    return np.asarray(cl_find(labels=y, pred_probs=probs / probs.sum(1, keepdims=True), filter_by="prune_by_noise_rate"))


def _folds(y: Any, k: int, seed: int) -> list[Any]:
    """Stratified K-fold test indices (deterministic for ``seed``)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [np.asarray(test) for _, test in skf.split(np.zeros(len(y)), y)]


def _finetune(frame: Any, train_idx: Any, score_idx: Any, classes: tuple[str, ...], settings: ModelSettings,
              loader: ImageLoader, progress: Any, name: str) -> tuple[Any, set[str]]:
    """A fastai learner fine-tuned on ``frame.iloc[train_idx]`` only, and the image_ids its DataLoader trained on.

    ``score_idx`` rows are its validation set (metrics only, never a gradient).
    """
    from dsbuild.train import fit, make_learner

    learn, _ = make_learner(frame.iloc[train_idx].reset_index(drop=True), frame.iloc[score_idx].reset_index(drop=True),
                            classes, settings, loader=loader)
    fit(learn, settings, epochs=settings.oof_epochs, progress=progress, name=name)
    # Read back what the model really trained on, rather than trusting the index arithmetic.
    return learn, set(learn.dls.train.items["image_id"])


def _heads(features: Any, y: Any, n_classes: int, folds: list[Any], usable: Any, seed: int) -> tuple[Any, list[Any]]:
    """Per-fold multinomial logistic-regression heads on ``features``.

    Rows of fold k are predicted by a head fitted on the ``usable`` rows of the other
    folds. Returns (probabilities, per fold the row indices its head was fitted on).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    out = np.zeros((len(y), n_classes), dtype=np.float64)
    fitted = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        train = train[usable[train]]
        scaler = StandardScaler().fit(features[train])
        # Strong L2 (C=0.05, measured on the digits benchmark): the head must not chase noisy labels.
        clf = LogisticRegression(C=0.05, max_iter=1000, random_state=seed)
        clf.fit(scaler.transform(features[train]), y[train])
        proba = np.full((len(test), n_classes), 1e-6)
        proba[:, clf.classes_] = clf.predict_proba(scaler.transform(features[test]))
        out[test] = proba / proba.sum(1, keepdims=True)
        fitted.append(train)
    return out, fitted


def _crossfit(frame: Any, y: Any, classes: tuple[str, ...], settings: ModelSettings, loader: ImageLoader,
              progress: Any, exclude: Any, tag: str) -> tuple[Any, Any, list[set[str]]]:
    import numpy as np

    from dsbuild.train import get_features

    n, k, g = len(frame), settings.folds, settings.oof_groups
    ids = frame["image_id"].to_numpy()
    groups = _folds(y, g, settings.seed)
    probs = np.zeros((n, len(classes)))
    unit = np.full(n, -1)
    trained_on: list[set[str]] = []
    for h, score_idx in enumerate(groups):
        body_idx = np.sort(np.concatenate([part for j, part in enumerate(groups) if j != h]))
        learn, body_ids = _finetune(frame, body_idx[~exclude[body_idx]], score_idx, classes, settings, loader, progress,
                                    name=f"mislabels: group {h + 1}/{g}{tag}")
        feats = get_features(learn, frame.iloc[score_idx].reset_index(drop=True))
        local_folds = _folds(y[score_idx], k, settings.seed + 1 + h)
        head, fitted = _heads(feats, y[score_idx], len(classes), local_folds, ~exclude[score_idx], settings.seed)
        probs[score_idx] = head
        for local, rows in zip(local_folds, fitted):
            unit[score_idx[local]] = len(trained_on)
            trained_on.append(body_ids | set(ids[score_idx[rows]]))
    return probs, unit, trained_on


def _kfold(frame: Any, y: Any, classes: tuple[str, ...], settings: ModelSettings, loader: ImageLoader,
           progress: Any, exclude: Any, tag: str) -> tuple[Any, Any, list[set[str]]]:
    import numpy as np

    from dsbuild.train import get_probs

    n = len(frame)
    probs = np.zeros((n, len(classes)))
    unit = np.full(n, -1)
    trained_on: list[set[str]] = []
    for f, test in enumerate(_folds(y, settings.folds, settings.seed)):
        train = np.setdiff1d(np.arange(n), test)
        learn, used = _finetune(frame, train[~exclude[train]], test, classes, settings, loader, progress,
                                name=f"mislabels: fold {f + 1}/{settings.folds}{tag}")
        probs[test] = get_probs(learn, frame.iloc[test].reset_index(drop=True))
        unit[test] = f
        trained_on.append(used)
    return probs, unit, trained_on


def _frozen(frame: Any, y: Any, classes: tuple[str, ...], settings: ModelSettings, loader: ImageLoader,
            progress: Any, exclude: Any, tag: str) -> tuple[Any, Any, list[set[str]]]:
    import numpy as np

    from dsbuild.train import get_features, make_learner

    # No training: the pooled output of the ImageNet-pretrained body, read through the (untrained) head.
    plain = dataclasses.replace(settings, augment=False)
    learn, _ = make_learner(frame.iloc[:2], frame.iloc[:2], classes, plain, loader=loader)
    with progress.stage("mislabels: ImageNet features", 1) as stage:
        feats = get_features(learn, frame, layer="pool")
        stage.advance(1)
    folds = _folds(y, settings.folds, settings.seed)
    probs, fitted = _heads(feats, y, len(classes), folds, ~exclude, settings.seed)
    ids = frame["image_id"].to_numpy()
    unit = np.full(len(frame), -1)
    for f, test in enumerate(folds):
        unit[test] = f
    return probs, unit, [set(ids[rows]) for rows in fitted]


# --------------------------------------------------------------------------- label issues


def find_label_issues(df: Any, oof: OOFResult, *, reviewed_keep: dict[str, float] | None = None,
                      keep_margin: float = 0.2, filter_by: str = "both") -> Any:
    """Rank likely label errors from out-of-sample probabilities.

    ``df``: the images (needs ``image_id``; its ``label`` column, when present, must match
    what ``oof`` was scored against, otherwise the labels changed since and the scores
    are stale). ``reviewed_keep``: image_id → label_quality when a person reviewed the
    image and kept its label; such an image is flagged again only when its new
    label_quality is below the old one minus ``keep_margin`` (default 0.2).
    ``filter_by``: cleanlab's ``find_label_issues`` method (``both``: measured best on the digits benchmark).

    Returns one row per image of ``oof`` (issues first, by rank) with columns:
    ``image_id``; ``kind`` (``"label"``); ``given_label``; ``suggested_label`` (best
    out-of-sample class; for a flagged image whose best class is its own label, the
    best other class); ``suggested_confidence`` (out-of-sample probability of the
    suggestion); ``label_quality`` (cleanlab self-confidence, 0–1, low = likely wrong);
    ``is_issue`` (cleanlab flags it and no keep review holds it back); ``suppressed``
    (cleanlab flags it but a keep review holds); ``ood_score`` (0–1, high = fits no class
    well: 1 − cleanlab's OutOfDistribution score on the probabilities); ``rank`` (1 = most
    likely wrong among issues; missing for non-issues).
    """
    import numpy as np
    import pandas as pd
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores

    if "label" in df.columns:
        current = dict(zip(df["image_id"].astype(str), df["label"].astype(str)))
        stale = [i for i, lab in zip(oof.image_ids, oof.labels) if i in current and current[i] != lab]
        if stale:
            raise DsbuildError(f"{len(stale)} image(s) changed label since they were scored (e.g. {stale[0]}) — score again")
    labels = oof.label_index()
    probs = np.asarray(oof.probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    flagged = cl_find(labels=labels, pred_probs=probs, filter_by=filter_by)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    ood = 1.0 - OutOfDistribution().fit_score(pred_probs=probs, labels=labels, verbose=False)
    best = probs.argmax(1)
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1.0
    suggested = np.where(flagged & (best == labels), other.argmax(1), best)
    keep = reviewed_keep or {}
    suppressed = np.array([
        bool(flag) and i in keep and not (q < float(keep[i]) - keep_margin)
        for i, flag, q in zip(oof.image_ids, flagged, quality)
    ])
    issue = flagged & ~suppressed
    out = pd.DataFrame({
        "image_id": list(oof.image_ids),
        "kind": "label",
        "given_label": list(oof.labels),
        "suggested_label": [oof.classes[j] for j in suggested],
        "suggested_confidence": probs[np.arange(len(labels)), suggested],
        "label_quality": quality,
        "is_issue": issue,
        "suppressed": suppressed,
        "ood_score": ood,
    })
    out = out.sort_values(["is_issue", "label_quality", "image_id"], ascending=[False, True, True], kind="stable")
    out["rank"] = pd.array([r + 1 if flag else None for r, flag in enumerate(out["is_issue"])], dtype="Int64")
    return out.reset_index(drop=True)
