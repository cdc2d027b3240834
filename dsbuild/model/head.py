"""Linear heads on frozen backbone features: fitting, choosing the penalty, folding into a network.

The default model of ``dsbuild train`` (``model.finetune = false``): a multinomial logistic
regression on the standardised frozen-backbone features of :func:`dsbuild.model.features.features`
(the stage-grid view by default, :data:`DEFAULT_VIEW`). Why a head and not a CPU fine-tune
(issue 16, measured on the CIFAR-10N dev set, 2 CPU cores): fastai ``fine_tune`` with the
defaults reached 33–56 % valid accuracy after 180–580 CPU-s; the frozen head 79–80 % after one
forward pass per image and seconds of fitting, and the same cached features serve the
out-of-fold heads of ``mislabels`` (:mod:`dsbuild.model.oof`).

* :func:`fit_head` — sklearn ``LogisticRegression`` (lbfgs, multinomial) on ``(X − mean) / scale``;
* :func:`choose_c` — the L2 setting ``C`` with the lowest inner-CV log-loss on the rows given
  (3 stratified folds over :data:`C_GRID`): strong penalties win on small or noisy data, and
  a head that cannot bend around wrong labels keeps pointing at them;
* :func:`head_classifier` — the fitted head folded into one ``nn.Linear`` after a
  :class:`~dsbuild.model.features.FrozenBody` (``W' = W / scale``, ``b' = b − W' · mean``),
  so a saved model is tensors only (``torch.load(weights_only=True)``) and ``predict`` needs no sklearn.

Shapes: ``X`` ``n × d`` float32; ``y`` ``n`` int64 in ``[0, K)``; probabilities ``n × K``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Inverse L2 strengths tried by :func:`choose_c`, in increasing order (sklearn ``C`` on standardised
#: features; issue 16 measured 0.005–0.05 best on CIFAR and digits, up to 0.1+ on small sets).
C_GRID: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Feature view the heads use (:data:`dsbuild.model.features.VIEW_SETS`). Measured (issue 16,
#: efficientnet_lite0 @224, linear probe, stratified 80/20): CIFAR-10 0.795 stages vs 0.774 pool,
#: digits 0.994 vs 0.961 — a grid keeps *where* a pattern is.
DEFAULT_VIEW = "stages"


def stratified_folds(y: Any, k: int, seed: int) -> list[Any]:
    """``k`` stratified folds (sorted test indices), deterministic for ``seed``; classes smaller than ``k`` go round-robin."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    counts = np.bincount(y)
    if counts[counts > 0].min() >= k:
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [np.sort(test) for _, test in skf.split(np.zeros(len(y)), y)]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)
    return [np.flatnonzero(fold == f) for f in range(k)]


@dataclass(frozen=True)
class Head:
    """A fitted linear head: ``softmax(((X − mean) / scale) @ coef.T + intercept)``.

    mean / scale: ``d``; coef: ``K × d``; intercept: ``K``; C: the L2 setting used. A class
    absent from the training rows gets a zero row and intercept −30 (probability ≈ 0).
    """

    mean: Any
    scale: Any
    coef: Any
    intercept: Any
    C: float

    def logits(self, X: Any) -> Any:
        return ((X - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, X: Any) -> Any:
        import numpy as np

        z = self.logits(np.asarray(X, dtype=np.float64))
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)


def fit_head(X: Any, y: Any, n_classes: int, C: float, *, seed: int = 0, max_iter: int = 300) -> Head:
    """Multinomial logistic regression (sklearn lbfgs, tol 1e-3) on standardised ``X`` → :class:`Head`."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(0)
    scale = X.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # sklearn's guess that many classes over few samples "could represent a regression problem": here y is
        # always class indices (a 50-class dataset with 5 images a class fits a fold of 2 a class).
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        clf.fit((X - mean) / scale, y)
    coef = np.zeros((n_classes, X.shape[1]))
    intercept = np.full(n_classes, -30.0)
    if len(clf.classes_) == 2:  # sklearn's binary form: one row, for classes_[1]
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        coef[clf.classes_[0]], intercept[clf.classes_[0]] = 0.0, 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    return Head(mean, scale, coef, intercept, float(C))


def choose_c(X: Any, y: Any, n_classes: int, *, grid: Sequence[float] = C_GRID, folds: int = 3,
             seed: int = 0) -> tuple[float, dict[float, float]]:
    """The ``C`` of ``grid`` with the lowest mean inner-CV log-loss against ``y`` (ties → the smaller C).

    Uses only the rows given (call it on training rows to keep other rows out of sample).
    ``grid`` is scanned in increasing order and the scan stops once two values in a row are
    worse than the best so far (the log-loss is unimodal in C in every issue-16 measurement;
    larger C also costs more lbfgs iterations). Fewer than 2 rows per fold → the middle of
    the grid. Returns ``(C, {C: log-loss of the values tried})``.
    """
    import numpy as np

    y = np.asarray(y)
    k = int(min(folds, max(2, np.bincount(y)[np.bincount(y) > 0].min())))
    if len(y) < 2 * k:
        return float(grid[len(grid) // 2]), {}
    inner = stratified_folds(y, k, seed + 7919)
    losses: dict[float, float] = {}
    for C in grid:
        total = 0.0
        for test in inner:
            train = np.setdiff1d(np.arange(len(y)), test)
            p = fit_head(X[train], y[train], n_classes, C, seed=seed).predict_proba(X[test])
            total += -np.log(np.clip(p[np.arange(len(test)), y[test]], 1e-12, 1)).sum()
        losses[float(C)] = total / len(y)
        tried = list(losses.values())
        if len(tried) >= 3 and min(tried[-2:]) > min(tried):
            break
    best = min(losses.values())
    return min(c for c, v in losses.items() if v <= best + 1e-9), losses


def head_classifier(body: Any, view_names: Sequence[str], head: Head | None, n_classes: int, n_features: int) -> Any:
    """``nn.Module``: :class:`~dsbuild.model.features.FrozenBody` → the views ``view_names`` concatenated → one
    ``nn.Linear`` (the head with its standardisation folded in). Input: ``n × 3 × H × W`` pixel values 0–255;
    output: ``n × n_classes`` logits. ``head=None`` leaves the Linear empty (to load a saved state)."""
    import torch
    import torch.nn as nn

    class HeadClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            self.views = tuple(view_names)
            self.linear = nn.Linear(n_features, n_classes)

        def forward(self, x: Any) -> Any:
            feats = self.body(x)
            return self.linear(torch.cat([feats[v] for v in self.views], dim=1))

    model = HeadClassifier()
    if head is not None:
        weight = head.coef / head.scale[None, :]
        bias = head.intercept - weight @ head.mean
        with torch.no_grad():
            model.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            model.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return model.eval()
