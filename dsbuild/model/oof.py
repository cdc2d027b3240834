"""Out-of-sample predicted probabilities from fine-tuned fastai models (what cleanlab needs to find mislabels).

cleanlab's confident learning needs *out-of-sample* predicted probabilities: a model
that trained on an image's label has memorised it, so in-sample scores (the seeds'
``plot_top_losses``) hide exactly the mistakes we look for. :func:`out_of_fold_probs`
scores every labelled image with models that never trained on its label, and records
which labels each scoring model used, so the guarantee can be checked
(:meth:`OOFResult.check_out_of_sample`).

Strategies (``ModelSettings.oof_method``):

``frozen`` (default)
    K stratified folds of logistic heads on the frozen ImageNet backbone's features
    (:func:`dsbuild.model.features.features`, cached per image and shared with ``train``):
    the backbone never saw a label, so only the heads are fitted out of fold. Cost: one
    forward pass per image (none when ``train`` already cached it) plus seconds of fitting.
    Measured (issue 16): digits with 10–20 % planted noise AUROC 0.9999; CIFAR-10N ``worse``
    AUROC 0.91 with efficientnet_lite0 (see bench/real_noise.py for the current figures).
``crossfit``
    Split the images into G stratified groups (``oof_groups``, default 2: halves A and B),
    and each group into K stratified folds. Fine-tune the fastai model on the other groups'
    labels (A); its body now knows the domain but has never seen a label of B. Score B
    fold k with logistic-regression heads fitted on B's other folds, on three *views*:
    the fine-tuned body's stride-8 map pooled to a small spatial grid; its stride-16 map
    (pooled) together with the penultimate features of its head; and the
    ImageNet-pretrained body's stride-8 + stride-16 maps
    (:func:`dsbuild.model.features.get_stage_features`; that head may also learn from fold ≠ k
    of A: this body never trained on any label). The image's probabilities are the three
    heads' product of experts (renormalised). An image in B fold k is scored only by
    models whose labels were A ∪ (everything but fold k): never its own. Cost ≈ G−1 fine-tunings of
    the whole set, plus one forward pass for the ImageNet features.
``kfold``
    Fine-tune one fastai model per stratified fold on the other K−1 folds; score the fold
    with its softmax. The textbook recipe; cost ≈ K−1 fine-tunings.
Why mid-level maps and several views: a short fine-tune on a few hundred images per
class moves the last layers only a little, and a global pool throws away *where* a
pattern is (a stroke at the top or at the bottom makes a 7 or an L). Measured on the
digits benchmark (20% planted noise, out-of-sample images, against their true digit):
the network fine-tuned on the other half, its own softmax 88–90% right; a head on its
penultimate features 93%; heads on 4×4 grids of single mid-level stages 96–97%; the
three views above together 98%. The heads are strongly L2-regularised (:data:`HEAD_C`): a head that can bend to fit
noisy labels stops pointing at them.

:func:`dsbuild.issues.label.find_label_issues` then runs ``cleanlab.filter.find_label_issues`` and
``cleanlab.rank.get_label_quality_scores`` on those probabilities, adds cleanlab's
out-of-distribution score, suggests the best out-of-sample class, and honours earlier
``keep`` reviews.

Rounds (``ModelSettings.oof_rounds``, default 2): each later round scores again with the
images the previous round flagged left out of every training set (cleaner labels → more
accurate scoring models). ``crossfit`` and ``frozen`` refit only their heads (seconds);
``kfold`` fine-tunes again. The images to leave out were chosen from the previous round's
scores, which other models produced; no model of any round trains on the label of an
image it scores.

Heavy imports (torch, fastai, sklearn, cleanlab) happen inside functions.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from dsbuild.errors import DsbuildError
from dsbuild.model.settings import ModelSettings
from dsbuild.model.train import ImageLoader, with_size
from dsbuild.progress import silent


@dataclass(frozen=True, kw_only=True)
class OOFResult:
    """Out-of-sample predicted probabilities for every labelled image.

    image_ids / labels: the images (input order) and the labels they were scored against.
    classes: column order of ``pred_probs``.
    pred_probs: ``n × len(classes)`` float32 array (cleanlab's name); row i comes from a model that never
        saw image i's label. ``probs`` is the same array under its old name (deprecated).
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
    pred_probs: Any = field(repr=False)
    fold: Any = field(repr=False)
    trained_on: tuple[frozenset[str], ...] = field(repr=False)
    method: str
    fold_accuracy: tuple[float, ...]
    duration_s: float

    @property
    def probs(self) -> Any:
        """Deprecated name of :attr:`pred_probs`."""
        return self.pred_probs

    def check_out_of_sample(self) -> int:
        """Number of images scored by a model that trained on their label (0 when the guarantee holds)."""
        return sum(1 for image_id, unit in zip(self.image_ids, self.fold) if image_id in self.trained_on[int(unit)])

    def label_index(self) -> Any:
        """Given labels as integer class indices (numpy int64)."""
        import numpy as np

        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)


# --------------------------------------------------------------------------- out-of-fold probabilities


def out_of_fold_probs(df: Any, settings: ModelSettings, *, progress: Any = None,
                      cache_dir: Any = None) -> OOFResult:
    """Out-of-sample probabilities for every row of ``df`` (all splits: a wrong label hurts anywhere).

    ``df``: columns ``image_id``, ``path``, ``label`` (``split`` is ignored). Each class
    needs at least ``settings.folds`` images (``oof_groups × folds`` for ``crossfit``). Runs
    ``settings.oof_rounds`` rounds: each later round repeats the previous one with the
    images it flagged (cleanlab, ``prune_by_noise_rate``) left out of every *training*
    set, so the scoring models learn from cleaner labels (``crossfit`` and ``frozen`` refit
    only their logistic heads, which costs seconds; ``kfold`` fine-tunes again). Every
    image is still scored, and never by a model that trained on its label. Returns an
    :class:`OOFResult` whose ``probs`` rows follow ``df``'s row order; ``trained_on`` lists
    the labels the final round's models actually trained on (read back from their
    DataLoaders and head fits).
    """
    import numpy as np

    from dsbuild.model.features import feature_keys

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
    too_few = too_few_for_folds(frame["label"].value_counts(), settings)
    if too_few:
        raise DsbuildError(too_few)
    y = np.array([classes.index(v) for v in frame["label"]], dtype=np.int64)
    settings = with_size(settings)
    prog = silent(progress)
    if settings.oof_method == "frozen":
        probs, unit, trained_on = _frozen_heads(frame, y, classes, settings, prog, cache_dir, feature_keys(df))
        return _result(frame, y, classes, probs, unit, trained_on, settings, t0)
    loader = ImageLoader(settings.size, cache=True)
    if settings.oof_method == "kfold":
        exclude = np.zeros(len(frame), dtype=bool)
        for r in range(settings.oof_rounds):
            tag = f" (round {r + 1}/{settings.oof_rounds})" if settings.oof_rounds > 1 else ""
            probs, unit, trained_on = _kfold(frame, y, classes, settings, loader, prog, exclude, tag)
            if r + 1 < settings.oof_rounds:
                exclude = _flags(y, probs)
    else:
        views, unit = _crossfit_views(frame, y, classes, settings, loader, prog)
        probs, trained_on = _score_views(views, unit, y, len(classes), frame["image_id"].to_numpy(), settings)
    return _result(frame, y, classes, probs, unit, trained_on, settings, t0)


def _result(frame: Any, y: Any, classes: tuple[str, ...], probs: Any, unit: Any, trained_on: list[set[str]],
            settings: ModelSettings, t0: float) -> OOFResult:
    import numpy as np

    ids = frame["image_id"].tolist()
    acc = tuple(float((probs[unit == u].argmax(1) == y[unit == u]).mean()) for u in range(len(trained_on)))
    return OOFResult(
        image_ids=tuple(ids), labels=tuple(frame["label"]), classes=classes, pred_probs=probs.astype(np.float32),
        fold=unit.astype(np.int64), trained_on=tuple(frozenset(t) for t in trained_on),
        method=settings.oof_method, fold_accuracy=acc, duration_s=round(time.perf_counter() - t0, 3),
    )


def too_few_for_folds(counts: Any, settings: ModelSettings) -> str | None:
    """The refusal for classes too small for ``settings``' stratified folds, with the fix that works; None if none.

    ``counts``: images per class (a pandas Series). ``crossfit`` needs ``folds × oof_groups``
    images in every class, the others ``folds``. The fix is the largest ``folds`` every class
    allows, or, below 2 folds, adding images to the classes named.
    """
    per = settings.oof_groups if settings.oof_method == "crossfit" else 1
    need = settings.folds * per
    small = counts[counts < need].sort_index()
    if not len(small):
        return None
    shown = ", ".join(f"{k} ({v})" for k, v in list(small.items())[:12])
    more = f" and {len(small) - 12} more" if len(small) > 12 else ""
    what = (f"{len(small)} {'classes have' if len(small) != 1 else 'class has'} fewer images than out-of-fold scoring needs "
            f"({settings.oof_method}, folds = {settings.folds}: {need} per class): {shown}{more}")
    most = int(counts.min()) // per
    if most >= 2:
        return f"{what} — set folds = {most} in the dataset's [model] table (the most every class allows), or add images"
    tiny = counts[counts < 2 * per].sort_index()
    names = ", ".join(f"{k} ({v})" for k, v in tiny.items())
    return (f"{what} — add images to {names}: each class needs at least {2 * per} even with folds = 2 "
            "(or remove those classes), then rebuild")


def _flags(y: Any, probs: Any) -> Any:
    """cleanlab's issue mask (recall-leaning ``prune_by_noise_rate``): what the next round leaves out of training."""
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

    The first ``batch_size`` of the ``score_idx`` rows are its validation set (fastai wants
    one; metrics only, never a gradient). Validating on all of them every epoch would add a
    forward pass over the scored images per epoch (about a fifth of the fine-tune's time)
    for figures nobody reads: the images are scored once, afterwards.
    """
    from dsbuild.model.train import fit, make_learner

    learn, _ = make_learner(frame.iloc[train_idx].reset_index(drop=True),
                            frame.iloc[score_idx[:settings.batch_size]].reset_index(drop=True),
                            classes, settings, loader=loader)
    fit(learn, settings, epochs=settings.oof_epochs, progress=progress, name=name)
    # Read back what the model really trained on, rather than trusting the index arithmetic.
    return learn, set(learn.dls.train.items["image_id"])


#: Strength of the heads' L2 penalty: C = HEAD_C / rows fitted (sklearn's C multiplies the summed
#: data loss, so this keeps the penalty's weight against the data the same at any dataset size).
#: Strong on purpose: a head that can bend to fit noisy labels stops pointing at them. Measured on
#: 20%-noisy digits (bench/mislabels.py): C·n ≈ 1–3 beats C·n ≈ 30 by 0.05–0.1 F1.
HEAD_C = 2.5


def _heads(features: Any, y: Any, n_classes: int, folds: list[Any], usable: Any, seed: int) -> tuple[Any, list[Any]]:
    """Per-fold multinomial logistic-regression heads on ``features`` (rows: the images ``folds`` index).

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
        clf = LogisticRegression(C=HEAD_C / max(1, len(train)), max_iter=1000, random_state=seed)
        clf.fit(scaler.transform(features[train]), y[train])
        proba = np.full((len(test), n_classes), 1e-6)
        proba[:, clf.classes_] = clf.predict_proba(scaler.transform(features[test]))
        out[test] = proba / proba.sum(1, keepdims=True)
        fitted.append(train)
    return out, fitted


@dataclass(frozen=True)
class _View:
    """One feature view: ``features`` of the images ``rows`` (frame indices), K-fold heads over ``folds``
    (indices into ``rows``), and the labels its features already learned from (``base``: a fine-tuned body)."""

    rows: Any
    features: Any
    folds: list[Any]
    base: frozenset[str]


def _score_views(views: list[_View], unit: Any, y: Any, n_classes: int, ids: Any,
                 settings: ModelSettings) -> tuple[Any, list[set[str]]]:
    """The views' out-of-fold head probabilities combined as a product of experts, over ``settings.oof_rounds`` rounds.

    Product of experts: probabilities ∝ ∏ over views of that view's probabilities (a
    class must convince every view). The strongly regularised heads are each cautious;
    their product is as confident as their agreement. Measured on the digits benchmark
    (10% symmetric noise, 2 rounds): F1 0.93 with the mean of the views, 0.97 with their product.
    Round r+1 refits every head without the images round r flagged. Returns the final
    probabilities and, per scoring unit, every label any of its heads or bodies used.
    """
    import numpy as np

    n = len(y)
    exclude = np.zeros(n, dtype=bool)
    for r in range(settings.oof_rounds):
        logp = np.zeros((n, n_classes))
        used: dict[int, set[str]] = {}
        for view in views:
            rows = view.rows
            probs, fitted = _heads(view.features, y[rows], n_classes, view.folds, ~exclude[rows], settings.seed)
            logp[rows] += np.log(np.clip(probs, 1e-12, 1.0))
            for test, train in zip(view.folds, fitted):
                for u in np.unique(unit[rows[test]]):
                    used.setdefault(int(u), set()).update(view.base, ids[rows[train]])
        logp -= logp.max(1, keepdims=True)
        probs = np.exp(logp)
        probs /= probs.sum(1, keepdims=True)
        if r + 1 < settings.oof_rounds:
            exclude = _flags(y, probs)
    return probs, [used.get(u, set()) for u in range(int(unit.max()) + 1)]


def _frozen_learner(frame: Any, classes: tuple[str, ...], settings: ModelSettings, loader: ImageLoader) -> Any:
    """A learner that never trains: the ImageNet-pretrained body (valid transforms only)."""
    from dsbuild.model.train import make_learner

    plain = dataclasses.replace(settings, augment=False)
    learn, _ = make_learner(frame.iloc[:2], frame.iloc[:2], classes, plain, loader=loader)
    return learn


def _frozen_view(frame: Any, classes: tuple[str, ...], settings: ModelSettings, loader: ImageLoader, progress: Any,
                 folds: list[Any]) -> _View:
    """ImageNet body, stride-8 and stride-16 stage grids (concatenated), heads over all images."""
    import numpy as np

    from dsbuild.model.features import get_stage_features

    learn = _frozen_learner(frame, classes, settings, loader)
    with progress.stage("mislabels: ImageNet features", 1) as stage:
        feats = get_stage_features(learn, frame, size=settings.size)
        stage.advance(1)
    x = np.concatenate([feats[k] for k in sorted(feats)], 1)
    return _View(rows=np.arange(len(frame)), features=x, folds=folds, base=frozenset())


def _frozen_heads(frame: Any, y: Any, classes: tuple[str, ...], settings: ModelSettings, progress: Any,
                  cache_dir: Any, keys: list[str] | None) -> tuple[Any, Any, list[set[str]]]:
    """``frozen``: K-fold logistic heads on the frozen backbone's cached features, ``oof_rounds`` rounds.

    The backbone never saw a label, so only the heads must be fitted out of fold: head k
    is fitted on every fold but k and scores fold k. The L2 setting ``C`` is chosen once by
    3-fold inner cross-validation (log-loss) over all the given labels (one scalar for every
    head). Round r+1 refits every head without the images round r flagged
    (:func:`dsbuild.model.trust.flag_label_issues`). Returns (probabilities, fold per image,
    per fold the image_ids its final head was fitted on).
    """
    import numpy as np

    from dsbuild.model.features import features, view_matrix
    from dsbuild.model.head import choose_c, fit_head, stratified_folds
    from dsbuild.model.train import feature_spec
    from dsbuild.model.trust import flag_label_issues

    if not settings.pretrained:
        raise DsbuildError("model.pretrained = false needs oof_method = kfold or crossfit — frozen random features learn nothing")
    feats = features(frame["path"].tolist(), feature_spec(settings), cache_dir, keys=keys, progress=progress)
    X = view_matrix(feats, settings.view)
    n, k = len(frame), len(classes)
    folds = stratified_folds(y, settings.folds, settings.seed)
    unit = np.full(n, -1)
    for f, test in enumerate(folds):
        unit[test] = f
    ids = frame["image_id"].to_numpy()
    exclude = np.zeros(n, dtype=bool)
    probs = np.zeros((n, k))
    trained_on: list[set[str]] = []
    with progress.stage("mislabels: out-of-fold heads", settings.oof_rounds * len(folds) + 1) as stage:
        C, _ = choose_c(X, y, k, seed=settings.seed)
        stage.advance(1)
        for r in range(settings.oof_rounds):
            trained_on = []
            for test in folds:
                train = np.setdiff1d(np.arange(n), test)
                train = train[~exclude[train]]
                probs[test] = fit_head(X[train], y[train], k, C, seed=settings.seed).predict_proba(X[test])
                trained_on.append(set(ids[train]))
                stage.advance(1)
            if r + 1 < settings.oof_rounds:
                exclude = flag_label_issues(y, probs)
    return probs, unit, trained_on


def _crossfit_views(frame: Any, y: Any, classes: tuple[str, ...], settings: ModelSettings, loader: ImageLoader,
                    progress: Any) -> tuple[list[_View], Any]:
    """G fine-tuned bodies (each on the other groups' labels) and the ImageNet body, as head views.

    Scoring unit (g, k): the images of group g in head fold k. Views: (1) the ImageNet
    body's stage grids, heads over all images with fold k = the union of every group's
    fold k; per group g, from the body fine-tuned without g's labels, (2) its stride-8
    grid and (3) its stride-16 grid + penultimate features, heads within g. Every head
    for unit (g, k) was fitted without fold k of any group; every body it reads was
    fine-tuned without group g.
    """
    import numpy as np

    from dsbuild.model.features import get_stage_features

    n, k, g = len(frame), settings.folds, settings.oof_groups
    groups = _folds(y, g, settings.seed)
    fold_of = np.full(n, -1)
    local_folds = []
    for h, idx in enumerate(groups):
        local = _folds(y[idx], k, settings.seed + 1 + h)
        local_folds.append(local)
        for f, part in enumerate(local):
            fold_of[idx[part]] = f
    group_of = np.full(n, -1)
    for h, idx in enumerate(groups):
        group_of[idx] = h
    unit = group_of * k + fold_of
    views = [_frozen_view(frame, classes, settings, loader, progress,
                          [np.flatnonzero(fold_of == f) for f in range(k)])]
    for h, score_idx in enumerate(groups):
        body_idx = np.sort(np.concatenate([part for j, part in enumerate(groups) if j != h]))
        learn, body_ids = _finetune(frame, body_idx, score_idx, classes, settings, loader, progress,
                                    name=f"mislabels: group {h + 1}/{g}")
        feats = get_stage_features(learn, frame.iloc[score_idx].reset_index(drop=True), size=settings.size,
                                   penultimate=True)
        top = np.concatenate([feats[key] for key in sorted(feats) if key != "r8"], 1)
        base = frozenset(body_ids)
        if "r8" in feats:
            views.append(_View(rows=score_idx, features=feats["r8"], folds=local_folds[h], base=base))
        views.append(_View(rows=score_idx, features=top, folds=local_folds[h], base=base))
    return views, unit


def _kfold(frame: Any, y: Any, classes: tuple[str, ...], settings: ModelSettings, loader: ImageLoader,
           progress: Any, exclude: Any, tag: str) -> tuple[Any, Any, list[set[str]]]:
    import numpy as np

    from dsbuild.model.features import get_probs

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
